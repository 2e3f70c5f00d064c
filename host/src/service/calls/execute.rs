//! Running a recorded call under the session's boundary, and committing
//! its outcome.

use super::Turn;
use super::recovery::unstored;
use crate::caps::CallEnv;
use crate::model::{Call, CallError, CallStatus, Session, Usage};
use crate::runtime::invoke::Outcome;
use crate::service::{Result, Service, ServiceError};
use crate::store::{Abandoned, FinishedCall, HeldTurn, Link, Rejection, StoreError};
use crate::telemetry::TARGET as TRACE;
use crate::util;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

impl Service {
    /// `execute`, as an [`Execution`]. Not async, and boxed: the future is
    /// kilobytes, and built inside an async fn it would be part of the
    /// caller's future too, copied whole at every move.
    pub(in crate::service) fn start_execute(
        self: &Arc<Self>,
        call: Call,
        read: (Arc<Session>, Option<u64>),
        actor: String,
        run: (OwnedSemaphorePermit, Option<Turn>, Link),
    ) -> Execution {
        // Ids, names and sizes only: never the input or the output.
        let span = tracing::trace_span!(
            target: TRACE,
            "call",
            otel.name = format!("call {}", call.tool),
            bulkhead.session = %call.session,
            bulkhead.call = %call.id,
            bulkhead.tool = %call.tool,
            bulkhead.principal = %actor,
            bulkhead.status = tracing::field::Empty,
            bulkhead.fuel = tracing::field::Empty,
            bulkhead.wall_ms = tracing::field::Empty,
            bulkhead.memory_peak_bytes = tracing::field::Empty,
            bulkhead.state_bytes_written = tracing::field::Empty,
            bulkhead.egress_requests = tracing::field::Empty,
            bulkhead.egress_bytes = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        Execution(Some(Box::pin(self.clone().execute(call, read, actor, run, span))))
    }

    /// Runs a recorded call under the session's boundary: waits its turn
    /// for the tool's state, runs the tool, commits the outcome. `read` is
    /// the session with the boundary epoch read before it, if known; `run`
    /// the call's concurrency slot, its place in the tool's queue if it
    /// has one, and the outcome's link to the record.
    ///
    /// `span` is the call's trace span, made where the call was accepted
    /// (so an async call's span is still its request's child).
    ///
    /// Whatever ends it early, the call does not stay `running`: a panic
    /// in the host (a bug) is caught here and the call finished `failed`.
    pub(in crate::service) async fn execute(
        self: Arc<Self>,
        call: Call,
        read: (Arc<Session>, Option<u64>),
        actor: String,
        run: (OwnedSemaphorePermit, Option<Turn>, Link),
        span: tracing::Span,
    ) -> Result<Call> {
        let (session, id) = (call.session.clone(), call.id.clone());
        let run = self.clone().execute_recorded(call, read, actor, run).instrument(span.clone());
        let caught = util::catch_panic(run).await;
        if let Ok(Ok(call)) = &caught
            && !span.is_disabled()
        {
            let u = &call.usage;
            span.record("bulkhead.status", call.status.as_str());
            span.record("bulkhead.fuel", u.fuel as i64);
            span.record("bulkhead.wall_ms", u.wall_ms as i64);
            span.record("bulkhead.memory_peak_bytes", u.memory_peak_bytes as i64);
            span.record("bulkhead.state_bytes_written", u.state_bytes_written as i64);
            span.record("bulkhead.egress_requests", u.egress_requests as i64);
            span.record("bulkhead.egress_bytes", u.egress_bytes as i64);
            if call.status != CallStatus::Succeeded {
                span.record("otel.status_code", "error");
            }
        }
        caught.unwrap_or_else(|_| {
            tracing::error!("call {id} panicked in the host; it ends failed");
            let error =
                CallError { code: "internal_error".into(), message: "the host failed while running the call".into() };
            self.abandon(Abandoned::without_outcome(session, id, error));
            Err(ServiceError::Unavailable("a call task panicked".into()))
        })
    }

    pub(in crate::service) async fn execute_recorded(
        self: Arc<Self>,
        call: Call,
        read: (Arc<Session>, Option<u64>),
        actor: String,
        (slot, turn, link): (OwnedSemaphorePermit, Option<Turn>, Link),
    ) -> Result<Call> {
        let (session, epoch) = read;
        let queued = std::time::Instant::now();
        let queue_span = tracing::trace_span!(target: TRACE, "queue");
        let (turn, taken) = async {
            // New calls queued when they arrived; approved calls queue now.
            let turn = match turn {
                Some(turn) => turn.await,
                None => self.tool_lock(&session.id, &call.tool).lock_owned().await,
            };
            // Then its turn among the hosts sharing the store, if they do,
            // with the session and the tool's state as they stand under it.
            let taken = match self.caches() {
                true => Ok(None), // one host: its queue is the turn
                false => {
                    self.store.take_turn(&session.id, &call.tool, super::super::call_store::UNCACHED_LARGEST).await
                }
            };
            (turn, taken)
        }
        .instrument(queue_span)
        .await;
        let (held, fresh, prefetched) = match taken {
            Ok(Some(t)) => (Some(t.held), Some(t.session), Some(t.state)),
            Ok(None) => (None, None, None),
            Err(e) => {
                self.abandon(Abandoned::without_outcome(session.id.clone(), call.id.clone(), unstored()));
                return Err(e.into());
            }
        };
        let queue = queued.elapsed();
        // The boundary as it stands now: a PATCH or DELETE may have come
        // while this call waited its turn. When no boundary changed since
        // the session was read, that read is current (on this host alone:
        // with a shared store, the read made under the turn is).
        let session = if let Some(fresh) = fresh {
            Arc::new(fresh.ok_or_else(|| ServiceError::not_found("session"))?)
        } else if epoch == Some(self.boundary_epoch()) {
            session
        } else {
            match self.store.session(&session.id).await {
                Ok(Some(session)) => Arc::new(session),
                Ok(None) => return Err(ServiceError::not_found("session")),
                Err(e) => {
                    self.abandon(Abandoned::without_outcome(session.id.clone(), call.id.clone(), unstored()));
                    return Err(e.into());
                }
            }
        };
        // The tool as it is now: a call runs on the version current when its
        // turn came and keeps it to the end, whatever a reload does meanwhile.
        let tool = self.tool(&call.tool).filter(|_| session.tools.contains_key(&call.tool));
        let tool_version = tool.as_ref().map(|t| t.version());
        let outcome = match &tool {
            Some(tool) => {
                let run = tracing::trace_span!(target: TRACE, "run", bulkhead.tool_version = %tool.manifest.version);
                self.run(tool, &call, &session, prefetched).instrument(run).await
            }
            // Recorded `running` but never run: finish it, so it does not
            // wait for a restart to end `interrupted`.
            None => Outcome {
                status: CallStatus::Failed,
                output: None,
                error: Some(crate::model::CallError {
                    code: "tool_not_allowed".into(),
                    message: "the tool left the session's boundary before the call ran".into(),
                }),
                usage: Usage::default(),
                logs: Vec::new(),
                state_writes: BTreeMap::new(),
                notes: Vec::new(),
            },
        };
        let denials = outcome.notes.iter().filter(|n| n.is_denial()).count();
        // What must still be recorded if the outcome cannot be: usage and
        // the audit notes (secrets read, egress), without the state writes.
        // (Notes are usually none: cloning them allocates nothing.)
        let (id, usage, notes) = (call.id.clone(), outcome.usage, outcome.notes.clone());
        let (tool_name, committing) = (call.tool.clone(), std::time::Instant::now());
        let commit = tracing::trace_span!(target: TRACE, "commit");
        let result = self.record_outcome(call, outcome, tool_version, &actor, (link, held)).instrument(commit).await;
        match &result {
            Ok(call) => {
                self.metrics.record_timings(&tool_name, queue, committing.elapsed());
                // Free the slot and the tool's turn before waking long-polls:
                // a client that saw its call end may send the next at once.
                drop((slot, turn));
                self.count_call(call, denials);
                let _ = self.finished.send(call.id.clone());
            }
            // No record to finish: its request was refused, or its session deleted.
            Err(ServiceError::NotFound { .. }) => {}
            // Another host ended it `interrupted` (this host's lease had
            // expired): a call is finished once.
            Err(ServiceError::Conflict { code: "call_interrupted", .. }) => {
                tracing::warn!("call {id} was interrupted by another host while it ran; its outcome is dropped");
            }
            Err(e) => {
                tracing::error!("cannot record a call's outcome: {e}");
                let usage = Usage { state_bytes_written: 0, stored_bytes_delta: 0, ..usage };
                self.abandon(Abandoned { session: session.id.clone(), id, usage, notes, error: unstored() });
            }
        }
        result
    }

    /// Runs the tool in its sandbox under the session's effective grant.
    pub(in crate::service) async fn run(
        &self,
        tool: &crate::runtime::loader::LoadedTool,
        call: &Call,
        session: &Session,
        prefetched: Option<crate::store::state_cache::Committed>,
    ) -> Outcome {
        // The session's boundary met with this version's grants: a wider new
        // version never widens it, a narrower one narrows it.
        let grant =
            session.tools.get(&call.tool).map(|b| Service::effective_boundary(tool, b).grants).unwrap_or_default();
        let mounts = self.mounts(&session.id, &grant).await;
        let env = CallEnv {
            session: session.id.clone(),
            principal: session.principal.clone(),
            tool: call.tool.clone(),
            grant,
            session_env: session.env.clone(),
            store: self.call_store(&session.id, &call.tool, prefetched),
            secrets: self.secrets.clone(),
            state_quota_bytes: tool.limits.state_kb << 10,
            mounts,
            allow_private: self.allow_private.clone(),
        };
        self.runtime.invoke(tool, &call.input.to_string(), env).await
    }

    /// Step 5: one transaction with everything the call changed. Its JSON
    /// (columns and audit data) is built here, off the writer thread, which
    /// every call shares.
    pub(in crate::service) async fn record_outcome(
        &self,
        mut call: Call,
        outcome: Outcome,
        tool_version: Option<crate::events::ToolVersion>,
        actor: &str,
        (link, turn): (Link, Option<HeldTurn>),
    ) -> Result<Call> {
        call.status = outcome.status;
        call.output = outcome.output;
        call.error = outcome.error;
        call.usage = outcome.usage;
        call.logs = outcome.logs;
        call.finished_at = Some(util::now_rfc3339());
        let writes = outcome.state_writes;
        // Out of the cache until the writes are known committed (this call
        // holds the turn, so no one else reads or fills the entry meanwhile).
        let cached = match !writes.is_empty() && self.caches() {
            true => self.state_cache.take(&call.session, &call.tool),
            false => None,
        };
        let finished =
            FinishedCall { call, writes, notes: outcome.notes, actor: actor.to_string(), tool_version, turn };
        // The store hands the call and its writes back once committed.
        let FinishedCall { call, writes, .. } =
            self.store.submit_outcome(finished, link, self.busy())?.await.map_err(|e| match e {
                // The session was deleted while the call ran: its record went
                // with it, nothing else was written.
                StoreError::Rejected(Rejection::NotFound) => ServiceError::not_found("session"),
                other => other.into(),
            })?;
        if let Some(taken) = cached {
            self.state_cache.committed_writes(&call.session, &call.tool, taken, &writes);
        }
        Ok(call)
    }
}

/// A call's run, driven by the task that awaits it. Dropped before it ends
/// (its client disconnected), it goes on in a task of its own: a call never
/// stops half-way. It is not spawned up front because a spawn wakes a
/// parked runtime thread (about 10 µs on a small VM) and may move the call
/// to another core.
pub(in crate::service) struct Execution(Option<Pin<Box<dyn Future<Output = Result<Call>> + Send>>>);

impl Execution {
    /// Runs it in a task of its own, not awaited.
    pub(in crate::service) fn detach(mut self) {
        if let Some(run) = self.0.take() {
            tokio::spawn(run);
        }
    }

    /// Stops it where it is, for a call whose record was refused.
    pub(in crate::service) fn cancel(mut self) {
        self.0 = None;
    }
}

impl Future for Execution {
    type Output = Result<Call>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Result<Call>> {
        let Some(run) = self.0.as_mut() else {
            return Poll::Ready(Err(ServiceError::Unavailable("a call's run was polled after it ended".into())));
        };
        let finished = std::task::ready!(run.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(finished)
    }
}

impl Drop for Execution {
    fn drop(&mut self) {
        if let Some(run) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn(run)),
                Err(_) => tracing::error!("a call's run was dropped outside the runtime; it is left unfinished"),
            }
        }
    }
}
