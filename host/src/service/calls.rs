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

use super::sessions::page;
use super::{Result, Service, ServiceError};
use crate::auth::Principal;
use crate::caps::CallEnv;
use crate::events::{CallFinished, CallRequested, Event, StateCommitted};
use crate::model::{Approval, AuditEvent, Call, CallError, CallStatus, Session, Usage};
use crate::runtime::invoke::Outcome;
use crate::store::{Answer, Link, Rejection, StoreError, Tx, audit, calls, sessions, tool_state};
use crate::util;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit};

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
type Turn = Pin<Box<dyn Future<Output = OwnedMutexGuard<()>> + Send>>;

enum Started {
    New,
    Existing(Box<Call>),
}

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
        let (session, epoch) = self.session_for_call(p, sid)?;
        let tool = self.tools.get(&req.tool).cloned().ok_or_else(|| ServiceError::NotFound {
            code: "unknown_tool",
            message: format!("no tool named {:?}", req.tool.chars().take(64).collect::<String>()),
        })?;
        let Some(boundary) = session.tools.get(&req.tool).cloned() else {
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
        if let Some(key) = req.idempotency_key.clone() {
            let sid = session.id.clone();
            if let Some(first) = self.db.read_async(move |c| calls::by_idempotency_key(c, &sid, &key)).await? {
                return Box::pin(self.replay(p, first, &req, opts)).await;
            }
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
        if pipelined {
            let link = self.db.new_link();
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

    /// `execute`, as an [`Execution`]. Not async, and boxed: the future is
    /// kilobytes, and built inside an async fn it would be part of the
    /// caller's future too, copied whole at every move.
    pub(super) fn start_execute(
        self: &Arc<Self>,
        call: Call,
        read: (Arc<Session>, Option<u64>),
        actor: String,
        run: (OwnedSemaphorePermit, Option<Turn>, Link),
    ) -> Execution {
        Execution(Some(Box::pin(self.clone().execute(call, read, actor, run))))
    }

    /// Runs a recorded call under the session's boundary: waits its turn
    /// for the tool's state, runs the tool, commits the outcome. `read` is
    /// the session with the boundary epoch read before it, if known; `run`
    /// the call's concurrency slot, its place in the tool's queue if it
    /// has one, and the outcome's link to the record.
    ///
    /// Whatever ends it early, the call does not stay `running`: a panic
    /// in the host (a bug) is caught here and the call finished `failed`.
    async fn execute(
        self: Arc<Self>,
        call: Call,
        read: (Arc<Session>, Option<u64>),
        actor: String,
        run: (OwnedSemaphorePermit, Option<Turn>, Link),
    ) -> Result<Call> {
        let (session, id) = (call.session.clone(), call.id.clone());
        let caught = util::catch_panic(self.clone().execute_recorded(call, read, actor, run)).await;
        caught.unwrap_or_else(|_| {
            tracing::error!("call {id} panicked in the host; it ends failed");
            let error =
                CallError { code: "internal_error".into(), message: "the host failed while running the call".into() };
            self.abandon(Abandoned::without_outcome(session, id, error));
            Err(ServiceError::Unavailable("a call task panicked".into()))
        })
    }

    async fn execute_recorded(
        self: Arc<Self>,
        call: Call,
        read: (Arc<Session>, Option<u64>),
        actor: String,
        (_slot, turn, link): (OwnedSemaphorePermit, Option<Turn>, Link),
    ) -> Result<Call> {
        let (session, epoch) = read;
        // New calls queued when they arrived; approved calls queue now.
        let _turn = match turn {
            Some(turn) => turn.await,
            None => self.tool_lock(&session.id, &call.tool).lock_owned().await,
        };
        // The boundary as it stands now: a PATCH or DELETE may have come
        // while this call waited its turn. When no boundary changed since
        // the session was read, that read is current.
        let session = if epoch == Some(self.boundary_epoch()) {
            session
        } else {
            match self.db.read(|c| sessions::get(c, &session.id)) {
                Ok(Some(session)) => Arc::new(session),
                Ok(None) => return Err(ServiceError::not_found("session")),
                Err(e) => {
                    self.abandon(Abandoned::without_outcome(session.id.clone(), call.id.clone(), unstored()));
                    return Err(e.into());
                }
            }
        };
        let outcome = match self.tools.get(&call.tool).filter(|_| session.tools.contains_key(&call.tool)) {
            Some(tool) => self.run(tool, &call, &session).await,
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
        let result = self.record_outcome(call, outcome, &actor, link).await;
        match &result {
            Ok(call) => {
                self.count_call(call, denials);
                let _ = self.finished.send(call.id.clone());
            }
            // No record to finish: its request was refused, or its session deleted.
            Err(ServiceError::NotFound { .. }) => {}
            Err(e) => {
                tracing::error!("cannot record a call's outcome: {e}");
                let usage = Usage { state_bytes_written: 0, ..usage };
                self.abandon(Abandoned { session: session.id.clone(), id, usage, notes, error: unstored() });
            }
        }
        result
    }

    /// Runs the tool in its sandbox under the session's effective grant.
    async fn run(&self, tool: &crate::runtime::loader::LoadedTool, call: &Call, session: &Session) -> Outcome {
        let grant = session.tools.get(&call.tool).map(|b| b.grants.clone()).unwrap_or_default();
        let mounts = self.mounts(&session.id, &grant).await;
        let env = CallEnv {
            session: session.id.clone(),
            principal: session.principal.clone(),
            tool: call.tool.clone(),
            grant,
            session_env: session.env.clone(),
            store: self.call_store(&session.id, &call.tool),
            secrets: self.secrets.clone(),
            state_quota_bytes: tool.limits.state_kb << 10,
            mounts,
            allow_private: self.allow_private.clone(),
        };
        self.runtime.invoke(tool, &call.input.to_string(), env).await
    }

    /// The first call with this idempotency key, if the request matches it;
    /// a synchronous caller waits for it when it is still running.
    async fn replay(&self, p: &Principal, first: Call, req: &NewCall, opts: CallOptions) -> Result<CallReply> {
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
    async fn record_request(&self, call: &Call, p: &Principal, if_match: Option<i64>) -> Result<Started> {
        Ok(self.submit_request(call, p, if_match, Link::Alone)?.await?)
    }

    /// Queues the `running` record now; the future resolves on its commit.
    fn submit_request(&self, call: &Call, p: &Principal, if_match: Option<i64>, link: Link) -> Result<Answer<Started>> {
        let call = call.clone();
        let actor = p.name.clone();
        let encoded = calls::Encoded::of(&call);
        let requested: Event = CallRequested::of(&call, &encoded.input).into();
        Ok(self.submit_call_write(link, move |c| {
            if !sessions::exists(c, &call.session)? {
                return Err(Rejection::NotFound.into());
            }
            if let Some(key) = &call.idempotency_key
                && let Some(first) = calls::by_idempotency_key(c, &call.session, key)?
            {
                return Ok(Started::Existing(Box::new(first)));
            }
            sessions::check_version(c, &call.session, if_match)?;
            calls::insert(c, &call, &encoded, &actor)?;
            audit::append(c, &call.session, &actor, Some(&call.id), &requested)?;
            Ok(Started::New)
        })?)
    }

    /// Submits a call's write job. A lone call's job runs on its own thread
    /// when the writer is idle: nothing would join its commit, and handing
    /// it to the writer thread costs two thread wakes. While other calls are
    /// in flight their jobs are about to come, so it queues for the writer
    /// to share one commit with them.
    fn submit_call_write<T, F>(&self, link: Link, f: F) -> std::result::Result<Answer<T>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Tx) -> std::result::Result<T, StoreError> + Send + 'static,
    {
        match self.calls_in_flight() {
            0 | 1 => self.db.submit_linked(link, f),
            _ => self.db.submit_queued(link, f),
        }
    }

    /// Step 5: one transaction with everything the call changed. Its JSON
    /// (columns and audit data) is built here, off the writer thread, which
    /// every call shares.
    async fn record_outcome(&self, mut call: Call, outcome: Outcome, actor: &str, link: Link) -> Result<Call> {
        call.status = outcome.status;
        call.output = outcome.output;
        call.error = outcome.error;
        call.usage = outcome.usage;
        call.logs = outcome.logs;
        call.finished_at = Some(util::now_rfc3339());
        let writes = outcome.state_writes;
        let notes = outcome.notes;
        let actor = actor.to_string();
        let committed = (!writes.is_empty()).then(|| Event::from(StateCommitted::of(&call, &writes)));
        let finished = Event::from(CallFinished::of(&call));
        let encoded = calls::Encoded::of(&call);
        // Out of the cache until the writes are known committed (this call
        // holds the turn, so no one else reads or fills the entry meanwhile).
        let cached = match &committed {
            Some(_) => self.state_cache.take(&call.session, &call.tool),
            None => None,
        };
        // The job hands the call and its writes back once committed.
        let (call, writes) = self
            .submit_call_write(link, move |c| {
                // First, so a session deleted while the call ran is a clean
                // NotFound before anything else is touched.
                sessions::finish_call(c, &call.session, &call.usage)?;
                calls::finish(c, &call, &encoded)?;
                for note in &notes {
                    audit::append(c, &call.session, &actor, Some(&call.id), note)?;
                }
                if let Some(committed) = &committed {
                    tool_state::apply(c, &call.session, &call.tool, &writes)?;
                    audit::append(c, &call.session, &actor, Some(&call.id), committed)?;
                }
                audit::append(c, &call.session, &actor, Some(&call.id), &finished)?;
                Ok((call, writes))
            })?
            .await
            .map_err(|e| match e {
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

    /// Takes a place in the (session, tool) queue now, without waiting for
    /// the turn: the lock is FIFO and a waiter holds its place from its
    /// first poll, so polling once here fixes the arrival order.
    async fn queue_for_turn(&self, session: &str, tool: &str) -> Turn {
        let mut turn: Turn = Box::pin(self.tool_lock(session, tool).lock_owned());
        match std::future::poll_fn(|cx| Poll::Ready(turn.as_mut().poll(cx))).await {
            Poll::Ready(guard) => Box::pin(std::future::ready(guard)),
            Poll::Pending => turn,
        }
    }

    /// Marks calls left `running` by a stopped host as `interrupted`.
    pub async fn recover(&self) -> Result<usize> {
        Ok(self
            .db
            .write(|c| {
                let running = calls::running(c)?;
                for (session, id, _tool) in &running {
                    let Some(mut call) = calls::get(c, session, id)? else {
                        continue;
                    };
                    call.status = CallStatus::Interrupted;
                    call.error = Some(CallError {
                        code: "interrupted".into(),
                        message: "the host stopped while the call ran".into(),
                    });
                    call.finished_at = Some(util::now_rfc3339());
                    calls::finish(c, &call, &calls::Encoded::of(&call))?;
                    audit::append(c, session, "bulkhead", Some(id), &CallFinished::of(&call).into())?;
                }
                Ok(running.len())
            })
            .await?)
    }

    /// Finishes `running` calls as `failed` in one transaction (they ran,
    /// but their outcome could not be stored or the host failed meanwhile),
    /// with their usage and audit notes. A call no longer running (or
    /// gone with its session) is skipped: checked inside the write, so a
    /// finished call is never overwritten.
    async fn fail_abandoned(&self, batch: Vec<Abandoned>) -> Result<()> {
        let finished_at = util::now_rfc3339();
        let failed = self
            .db
            .write(move |c| {
                let mut failed = Vec::new();
                for a in batch.iter() {
                    let Some(mut call) = calls::get(c, &a.session, &a.id)? else { continue };
                    if call.status != CallStatus::Running {
                        continue;
                    }
                    call.status = CallStatus::Failed;
                    call.error = Some(a.error.clone());
                    call.usage = a.usage;
                    call.finished_at = Some(finished_at.clone());
                    sessions::finish_call(c, &call.session, &call.usage)?;
                    calls::finish(c, &call, &calls::Encoded::of(&call))?;
                    for note in &a.notes {
                        audit::append(c, &call.session, "bulkhead", Some(&call.id), note)?;
                    }
                    audit::append(c, &call.session, "bulkhead", Some(&call.id), &CallFinished::of(&call).into())?;
                    failed.push(call);
                }
                Ok(failed)
            })
            .await?;
        for call in &failed {
            self.count_call(call, 0);
            let _ = self.finished.send(call.id.clone());
        }
        Ok(())
    }

    /// Queues `a` to be finished `failed`; one task retries all queued
    /// calls together until storage takes them.
    fn abandon(self: &Arc<Self>, a: Abandoned) {
        let mut pending = self.abandoned.lock().expect("abandoned calls poisoned");
        pending.calls.push(a);
        if !pending.reaping {
            pending.reaping = true;
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }

    /// One call; with `wait`, holds until it leaves `pending_approval` or
    /// `running` or the wait ends (no database connection is held meanwhile).
    pub async fn get_call(&self, p: &Principal, sid: &str, cid: &str, wait: Option<u64>) -> Result<Call> {
        let session = self.owned_session(p, sid).await?;
        if !util::is_id(cid) {
            return Err(ServiceError::not_found("call"));
        }
        let mut finished = self.finished.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait.unwrap_or(0).min(MAX_WAIT_SECONDS));
        loop {
            let (sid, id) = (session.id.clone(), cid.to_string());
            let call = self
                .db
                .read_async(move |c| calls::get(c, &sid, &id))
                .await?
                .ok_or_else(|| ServiceError::not_found("call"))?;
            if !call.status.is_open() {
                return Ok(call);
            }
            // Wake on any finished call; re-read when it is this one (or the
            // channel lagged and it might have been).
            let woke = loop {
                match tokio::time::timeout_at(deadline, finished.recv()).await {
                    Err(_) => break false,
                    Ok(Ok(id)) if id != cid => continue,
                    Ok(_) => break true,
                }
            };
            if !woke {
                return Ok(call);
            }
        }
    }

    pub async fn list_calls(
        &self,
        p: &Principal,
        sid: &str,
        status: Option<&str>,
        after: Option<String>,
        limit: Option<u32>,
    ) -> Result<Vec<Call>> {
        let session = self.owned_session(p, sid).await?;
        let status = match status {
            None => None,
            Some(s) => Some(CallStatus::parse(s).ok_or_else(|| {
                ServiceError::bad_request(format!("unknown status {:?}", s.chars().take(32).collect::<String>()))
            })?),
        };
        let (after, limit) = (after.unwrap_or_default(), page(limit));
        Ok(self.db.read_async(move |c| calls::list(c, &session.id, status, &after, limit)).await?)
    }

    /// A tool's state in the session, values base64-encoded.
    pub async fn get_state(&self, p: &Principal, sid: &str, tool: &str) -> Result<BTreeMap<String, String>> {
        let session: Session = self.owned_session(p, sid).await?;
        if !session.tools.contains_key(tool) {
            return Err(ServiceError::not_found("tool"));
        }
        let tool = tool.to_string();
        let entries = self.db.read_async(move |c| tool_state::all(c, &session.id, &tool)).await?;
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok(entries.into_iter().map(|(k, v)| (k, b64.encode(v))).collect())
    }

    pub async fn list_audit(
        &self,
        p: &Principal,
        sid: &str,
        after: Option<i64>,
        limit: Option<u32>,
    ) -> Result<Vec<AuditEvent>> {
        let session = self.owned_session(p, sid).await?;
        let (after, limit) = (after.unwrap_or(0), page(limit));
        Ok(self.db.read_async(move |c| audit::list(c, &session.id, after, limit)).await?)
    }

    /// Tools `p` may use (all, for admins).
    pub fn visible_tools(&self, p: &Principal) -> Vec<Arc<crate::runtime::loader::LoadedTool>> {
        self.tools.values().filter(|t| p.is_admin() || p.may_use_tool(&t.manifest.name)).cloned().collect()
    }
}

/// A call left `running` that must end `failed`: it ran (or began to) but
/// its outcome could not be stored, or the host failed while it ran.
#[derive(Clone)]
struct Abandoned {
    session: String,
    id: String,
    usage: Usage,
    notes: Vec<Event>,
    error: CallError,
}

impl Abandoned {
    /// A call that ended before it had an outcome: no usage, no notes.
    fn without_outcome(session: String, id: String, error: CallError) -> Abandoned {
        Abandoned { session, id, usage: Usage::default(), notes: Vec::new(), error }
    }
}

/// Why a call whose outcome could not be stored failed.
fn unstored() -> CallError {
    CallError {
        code: "storage_unavailable".into(),
        message: "the call ran but its outcome could not be stored; its state changes were discarded".into(),
    }
}

/// At most this many abandoned calls are finished per write, so a long
/// outage's backlog does not hold the writer in one long transaction.
const REAP_BATCH: usize = 256;

/// Calls waiting to be finished `failed` (see `abandon`).
#[derive(Default)]
pub(super) struct AbandonedCalls {
    calls: Vec<Abandoned>,
    /// Whether a `reap` task is running.
    reaping: bool,
}

/// A call whose outcome could not be committed (storage failed: database at
/// its cap, I/O error) would stay `running` until the next restart. Its
/// state writes are dropped: once the call gave up its turn, a later call
/// may have run on the state as it was. This finishes the queued calls
/// `failed` as soon as storage takes writes again, all in one write per
/// try, backing off while it fails; it ends when none is left.
async fn reap(service: std::sync::Weak<Service>) {
    let mut wait = Duration::from_millis(100);
    loop {
        tokio::time::sleep(wait).await;
        let Some(service) = service.upgrade() else { return };
        let batch: Vec<Abandoned> = {
            let mut pending = service.abandoned.lock().expect("abandoned calls poisoned");
            let n = pending.calls.len().min(REAP_BATCH);
            pending.calls.drain(..n).collect()
        };
        let result = service.fail_abandoned(batch.clone()).await;
        let mut pending = service.abandoned.lock().expect("abandoned calls poisoned");
        match result {
            Ok(()) => wait = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!("{} calls are still `running`: their failure cannot be stored yet: {e}", batch.len());
                pending.calls.extend(batch);
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
        if pending.calls.is_empty() {
            pending.reaping = false;
            return;
        }
    }
}

/// A call's run, driven by the task that awaits it. Dropped before it ends
/// (its client disconnected), it goes on in a task of its own: a call never
/// stops half-way. It is not spawned up front because a spawn wakes a
/// parked runtime thread (about 10 µs on a small VM) and may move the call
/// to another core.
pub(super) struct Execution(Option<Pin<Box<dyn Future<Output = Result<Call>> + Send>>>);

impl Execution {
    /// Runs it in a task of its own, not awaited.
    pub(super) fn detach(mut self) {
        if let Some(run) = self.0.take() {
            tokio::spawn(run);
        }
    }

    /// Stops it where it is, for a call whose record was refused.
    pub(super) fn cancel(mut self) {
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
