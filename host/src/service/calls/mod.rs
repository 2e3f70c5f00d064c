//! Tool calls: the durable path from request to committed outcome.
//!
//! 1. Check the boundary and the input (nothing is written on a 4xx).
//! 2. Take a concurrency slot (429 when none), then the (session, tool)
//!    lock: calls sharing state run one at a time, in arrival order.
//! 3. Record the call `running` (with `call_requested`), checking
//!    `If-Match` and the idempotency key in the same transaction. A tool
//!    that can change nothing outside its state starts without waiting for
//!    this commit, and a short run's outcome commits with it (the fast
//!    path, see `call`).
//! 4. Run the tool in its sandbox.
//! 5. Commit the outcome, the state writes (only on success), usage and
//!    audit events in one transaction; answer only after that commit.
//!
//! - this file: admission (checks, slot, turn, the `running` record) and
//!   replays of an idempotency key;
//! - [`execute`]: running a recorded call and committing its outcome;
//! - [`recovery`]: calls the host could not finish: `interrupted` after a
//!   restart, `failed` when their outcome could not be stored;
//! - [`read`]: one call (with long-poll) and call listings.

mod execute;
mod read;
mod recovery;

pub(in crate::service) use recovery::AbandonedCalls;

use super::{Result, Service, ServiceError};
use crate::auth::Principal;
use crate::model::{Approval, Call, CallStatus, Usage};
pub(in crate::service) use crate::store::Started;
use crate::store::{Link, Pending, Rejection, StoreError};
use crate::util;
use serde::Deserialize;
use serde_json::{Value, json};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use tokio::sync::OwnedMutexGuard;

pub const MAX_IDEMPOTENCY_KEY: usize = 255;
/// The longest a `?wait=` long-poll holds a request.
pub const MAX_WAIT_SECONDS: u64 = 60;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCall {
    pub tool: String,
    #[serde(default = "empty_object")]
    pub input: Value,
    pub idempotency_key: Option<String>,
}

fn empty_object() -> Value {
    json!({})
}

/// The result of `call`: the call, and whether it is a replay of an earlier
/// request with the same idempotency key.
pub struct CallReply {
    pub call: Call,
    pub replayed: bool,
}

/// A place in a (session, tool) queue: resolves when the call's turn comes.
pub(in crate::service) type Turn = Pin<Box<dyn Future<Output = OwnedMutexGuard<()>> + Send>>;

/// How a call request wants to be answered.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallOptions {
    /// `If-Match`: the session version the caller last saw.
    pub if_match: Option<i64>,
    /// `Prefer: respond-async`: answer 202 at once, run in the background.
    pub respond_async: bool,
}

impl Service {
    pub async fn call(
        self: &Arc<Self>,
        p: &Principal,
        sid: &str,
        req: NewCall,
        opts: CallOptions,
    ) -> Result<CallReply> {
        super::sessions::require_agent(p)?;
        let (session, epoch) = self.session_for_call(p, sid).await?;
        let tool = self.tool(&req.tool).ok_or_else(|| ServiceError::NotFound {
            code: "unknown_tool",
            message: format!("no tool named {:?}", req.tool.chars().take(64).collect::<String>()),
        })?;
        // As this version of the tool gets it (see `Service::effective_boundary`).
        let Some(boundary) = session.tools.get(&req.tool).map(|b| Service::effective_boundary(&tool, b)) else {
            return Err(ServiceError::forbidden(
                "tool_not_allowed",
                format!("tool {} is not in this session's boundary", req.tool),
            ));
        };
        if let Some(key) = &req.idempotency_key
            && (key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY)
        {
            return Err(ServiceError::bad_request(format!("idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} bytes")));
        }
        if let Some(error) = tool.schema.iter_errors(&req.input).next() {
            let at = error.instance_path().to_string();
            let at = if at.is_empty() { "input".to_string() } else { format!("input{at}") };
            return Err(ServiceError::BadRequest { code: "invalid_input", message: format!("{at}: {error}") });
        }
        if let Some(key) = req.idempotency_key.clone()
            && let Some(first) = self.store.call_by_idempotency_key(&session.id, &key).await?
        {
            return Box::pin(self.replay(p, first, &req, opts)).await;
        }
        let slot = self.call_slots.clone().try_acquire_owned().map_err(|_| ServiceError::Busy)?;

        let now = util::now_rfc3339();
        let mut call = Call {
            id: util::new_id(),
            session: session.id.clone(),
            tool: req.tool.clone(),
            status: CallStatus::Running,
            input: req.input.clone(),
            output: None,
            error: None,
            created_at: now.clone(),
            started_at: None,
            finished_at: None,
            usage: Usage::default(),
            approval: None,
            idempotency_key: req.idempotency_key.clone(),
            logs: Vec::new(),
        };
        if boundary.approval_required {
            // Recorded and answered at once; nothing runs until decided.
            call.status = CallStatus::PendingApproval;
            call.approval =
                Some(Approval { required: true, decision: None, decided_by: None, reason: None, decided_at: None });
        } else {
            call.started_at = Some(now);
        }
        // The call queues for its turn on the tool's state here, in arrival
        // order, before its record is written: calls of one tool in one
        // session run in the order they came, whichever path they take.
        let turn = match call.status {
            CallStatus::Running => Some(self.queue_for_turn(&session.id, &call.tool).await),
            _ => None,
        };
        // A tool that can change nothing outside its own state (and reads
        // no secrets) starts while its `running` record commits: the writer
        // runs jobs in order, so the record commits before the outcome. The
        // only refusal left for such a record is a session deleted meanwhile;
        // then the outcome finds no record and nothing of the run is
        // written. Calls with an idempotency key or If-Match, async calls
        // and other tools wait for the record. The record and the outcome
        // are linked: the writer holds the record's commit a moment for the
        // outcome, so a short call commits once (`store::Link`).
        let pipelined = call.status == CallStatus::Running
            && call.idempotency_key.is_none()
            && opts.if_match.is_none()
            && !opts.respond_async
            && boundary.grants.changes_only_state()
            && boundary.grants.secrets.is_empty();
        // (A backend that does not order writes gives no link.)
        if let Some(link) = pipelined.then(|| self.store.new_link()).flatten() {
            let recorded = self.submit_request(&call, p, opts.if_match, Link::Leads(link))?;
            let run = (slot, turn, Link::Follows(link));
            let mut execution = self.start_execute(call.clone(), (session, Some(epoch)), p.name.clone(), run);
            // The tool runs while its record commits. The run cannot end
            // first (its outcome commits after the record) unless it found
            // no record.
            let recorded = tokio::select! {
                biased;
                recorded = recorded => recorded,
                finished = &mut execution => return Ok(CallReply { call: finished?, replayed: false }),
            };
            if let Err(e) = recorded {
                // Nothing of the run is written without its record.
                execution.cancel();
                return Err(e.into());
            }
            self.count_call(&call, 0);
            return Ok(CallReply { call: execution.await?, replayed: false });
        }
        if let Started::Existing(first) = self.record_request(&call, p, opts.if_match).await? {
            drop(turn);
            return Box::pin(self.replay(p, *first, &req, opts)).await;
        }
        self.count_call(&call, 0);
        if call.status == CallStatus::PendingApproval {
            return Ok(CallReply { call, replayed: false });
        }
        // A client that disconnects does not cancel the call half-way (see
        // `Execution`), and an async caller gets its answer at once.
        let run = (slot, turn, Link::Alone);
        let execution = self.start_execute(call.clone(), (session, Some(epoch)), p.name.clone(), run);
        if opts.respond_async {
            execution.detach();
            return Ok(CallReply { call, replayed: false });
        }
        Ok(CallReply { call: execution.await?, replayed: false })
    }

    /// The first call with this idempotency key, if the request matches it;
    /// a synchronous caller waits for it when it is still running.
    pub(in crate::service) async fn replay(
        &self,
        p: &Principal,
        first: Call,
        req: &NewCall,
        opts: CallOptions,
    ) -> Result<CallReply> {
        if first.tool != req.tool || first.input != req.input {
            return Err(StoreError::Rejected(Rejection::IdempotencyConflict).into());
        }
        let call = if first.status == CallStatus::Running && !opts.respond_async {
            self.get_call(p, &first.session, &first.id, Some(MAX_WAIT_SECONDS)).await?
        } else {
            first
        };
        Ok(CallReply { call, replayed: true })
    }

    /// Step 3: the `running` (or `pending_approval`) record, atomically with
    /// the version and idempotency checks.
    pub(in crate::service) async fn record_request(
        &self,
        call: &Call,
        p: &Principal,
        if_match: Option<i64>,
    ) -> Result<Started> {
        Ok(self.submit_request(call, p, if_match, Link::Alone)?.await?)
    }

    /// Queues the `running` record now; the future resolves on its commit.
    pub(in crate::service) fn submit_request(
        &self,
        call: &Call,
        p: &Principal,
        if_match: Option<i64>,
        link: Link,
    ) -> Result<Pending<Started>> {
        Ok(self.store.submit_request(call, &p.name, if_match, link, self.busy())?)
    }

    /// Whether other calls are in flight: their writes are about to come,
    /// so a call's write may wait to share their commit.
    pub(in crate::service) fn busy(&self) -> bool {
        self.calls_in_flight() > 1
    }

    /// Takes a place in the (session, tool) queue now, without waiting for
    /// the turn: the lock is FIFO and a waiter holds its place from its
    /// first poll, so polling once here fixes the arrival order.
    pub(in crate::service) async fn queue_for_turn(&self, session: &str, tool: &str) -> Turn {
        let mut turn: Turn = Box::pin(self.tool_lock(session, tool).lock_owned());
        match std::future::poll_fn(|cx| Poll::Ready(turn.as_mut().poll(cx))).await {
            Poll::Ready(guard) => Box::pin(std::future::ready(guard)),
            Poll::Pending => turn,
        }
    }
}
