//! Persistence: the one interface the service writes and reads through,
//! [`Store`], and its backends.
//!
//! - [`sqlite`]: one SQLite file owned by one host (the embedded default):
//!   a single writer thread with group commit, a read pool, a folder lock.
//! - [`postgres`]: one PostgreSQL database shared by several hosts.
//!
//! Each write method is one transaction: everything it names commits
//! together, with its audit events chained inside it, or nothing does. A
//! domain check that fails inside it ([`Rejection`]) writes nothing.
//!
//! Two writes, [`Store::submit_request`] and [`Store::submit_outcome`],
//! are queued when called and answered by the future they return: a
//! backend that orders its writes (SQLite) runs them in call order, which
//! lets a short call run while its record commits ([`Store::new_link`]).
//!
//! - `error`: [`StoreError`], [`Rejection`].
//! - [`chain`]: the audit chain's hash and verification, for every backend.
//! - [`state_cache`]: committed tool state in memory (single-host backends).

pub mod chain;
mod error;
pub mod postgres;
pub mod sqlite;
pub mod state_cache;

pub use error::{Rejection, Result, StoreError};
pub use sqlite::Link;

use crate::events::Event;
use crate::model::{AuditEvent, Call, CallError, CallStatus, Message, Session, ToolBoundary, Usage};
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

/// A write queued by the store, answered once committed.
pub type Pending<T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'static>>;

/// Tool state changes of one call: a value, or `None` for a deletion.
pub type StateWrites = BTreeMap<String, Option<Vec<u8>>>;

/// What [`Store::submit_request`] found: the call is new (now recorded), or
/// its idempotency key names an earlier call (nothing written).
pub enum Started {
    New,
    Existing(Box<Call>),
}

/// A call left `running` that must end `failed`: it ran (or began to) but
/// its outcome could not be stored, or the host failed while it ran.
#[derive(Clone)]
pub struct Abandoned {
    pub session: String,
    pub id: String,
    pub usage: Usage,
    pub notes: Vec<Event>,
    pub error: CallError,
}

impl Abandoned {
    /// A call that ended before it had an outcome: no usage, no notes.
    pub fn without_outcome(session: String, id: String, error: CallError) -> Abandoned {
        Abandoned { session, id, usage: Usage::default(), notes: Vec::new(), error }
    }
}

/// A call's finished record, with what it changed.
pub struct FinishedCall {
    pub call: Call,
    pub writes: StateWrites,
    /// Audit notes of the run (secret reads, egress, denials).
    pub notes: Vec<Event>,
    pub actor: String,
    /// The tool version that ran, for `call_finished`.
    pub tool_version: Option<crate::events::ToolVersion>,
    /// The call's turn on its tool's state across hosts, if the backend
    /// gave one ([`Store::take_turn`]): the outcome commits under it.
    pub turn: Option<HeldTurn>,
}

/// What [`Store::take_turn`] hands back.
pub struct Turned {
    pub held: HeldTurn,
    /// The session as it stands once the turn is held (`None`: deleted).
    pub session: Option<Session>,
    /// The tool's committed state, as [`Store::committed_state`] answers.
    pub state: state_cache::Committed,
}

/// A call's turn on a (session, tool) held in the database, so that hosts
/// sharing it run one call of a tool in a session at a time; released
/// when its outcome commits, or when dropped.
pub type HeldTurn = Box<dyn std::any::Any + Send + Sync>;

/// Counters for `/metrics`, read at scrape time.
#[derive(Default)]
pub struct StoreStats {
    pub sessions: u64,
    pub pending_approvals: u64,
    /// Bytes the backend's files take (SQLite: the file and its WAL).
    pub storage_bytes: u64,
    pub commits: u64,
    pub write_jobs: u64,
    pub write_jobs_run_by_callers: u64,
}

/// Which sessions a usage report sums: those of `principal` (all when
/// `None`) created at or after `from` and before `to` (RFC 3339 as
/// [`crate::util::now_rfc3339`] writes it, so they compare as strings).
#[derive(Debug, Clone, Default)]
pub struct UsageQuery {
    pub principal: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// One principal's line of a usage report (unpriced: `cost` is 0).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PrincipalUsage {
    pub principal: String,
    pub sessions: u64,
    /// Of those, the ones deleted since (their final usage is kept).
    pub deleted_sessions: u64,
    pub usage: crate::model::SessionUsage,
}

/// How a backend's hosts share it; the service keeps in-memory copies only
/// of what no other host can change.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Sharing {
    /// One host owns the data (SQLite's folder lock): caches stay valid.
    OneHost,
    /// Several hosts write: every read goes to the database, and calls to
    /// one tool in one session are serialised through it.
    Shared,
}

/// The store every backend implements. Reads return what is committed.
pub trait Store: Send + Sync + 'static {
    fn sharing(&self) -> Sharing;

    /// Waits for the turn of a call on `tool`'s state in `session` among
    /// every host sharing the store, after this host's own queue gave it
    /// its turn, and reads under it what the call reads first (in the same
    /// round trip where the backend can). `None`: one host owns the store,
    /// its queue is the turn.
    fn take_turn(&self, _session: &str, _tool: &str, _largest: u64) -> Pending<Option<Turned>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    // ---- sessions and messages ----
    fn session(&self, id: &str) -> Pending<Option<Session>>;
    fn sessions(&self, owner: Option<String>, after: String, limit: u32) -> Pending<Vec<Session>>;
    /// Usage summed per principal over the sessions [`UsageQuery`] picks,
    /// deleted ones included, principals in order.
    fn usage(&self, query: UsageQuery) -> Pending<Vec<PrincipalUsage>>;
    fn create_session(&self, session: Session, created: Event) -> Pending<()>;
    /// Rejects `NotFound` when the session is gone.
    fn delete_session(&self, session: &str, actor: &str, deleted: Event) -> Pending<()>;
    /// Deletes the sessions expired at `now`, each with `deleted` as the
    /// last event of its chain; returns their ids.
    fn purge_expired(&self, now: String, deleted: Event) -> Pending<Vec<String>>;
    /// The new boundary, if the session is at `if_match`; the new version.
    fn narrow_session(
        &self,
        session: &str,
        if_match: Option<i64>,
        tools: BTreeMap<String, ToolBoundary>,
        actor: &str,
        narrowed: Event,
    ) -> Pending<i64>;
    fn append_message(
        &self,
        session: &str,
        actor: &str,
        role: String,
        content: String,
        metadata: Option<Value>,
    ) -> Pending<Message>;
    fn messages(&self, session: &str, after: i64, limit: u32) -> Pending<Vec<Message>>;
    /// The newest `limit` messages, oldest first (a tool's history read).
    fn newest_messages(&self, session: &str, limit: u32) -> Pending<Vec<Message>>;

    // ---- calls ----
    fn call(&self, session: &str, id: &str) -> Pending<Option<Call>>;
    /// A call by id alone, with the principal that requested it.
    fn call_with_requester(&self, id: &str) -> Pending<Option<(Call, String)>>;
    fn calls(&self, session: &str, status: Option<CallStatus>, after: String, limit: u32) -> Pending<Vec<Call>>;
    fn call_by_idempotency_key(&self, session: &str, key: &str) -> Pending<Option<Call>>;
    /// A link for a call whose run may start before its record commits,
    /// when the backend orders writes so the record commits first.
    fn new_link(&self) -> Option<u64>;
    /// Records a `running` or `pending_approval` call, with the session's
    /// version and idempotency checks, and its `call_requested` event.
    /// `busy` hints that other calls are in flight (their writes may share
    /// a commit).
    fn submit_request(
        &self,
        call: &Call,
        actor: &str,
        if_match: Option<i64>,
        link: Link,
        busy: bool,
    ) -> Result<Pending<Started>>;
    /// A call's outcome in one transaction: the record, the session's
    /// usage, the state writes and the audit events. Rejects `NotFound`
    /// when the session was deleted while the call ran.
    fn submit_outcome(&self, outcome: FinishedCall, link: Link, busy: bool) -> Result<Pending<FinishedCall>>;
    /// An approver's decision; when `ends_call`, its `call_finished` too.
    /// Rejects `NotPending` when the call was decided meanwhile.
    fn record_decision(&self, call: &Call, actor: &str, ends_call: bool) -> Pending<()>;
    fn pending_approvals_for(&self, approver: &str, after: String, limit: u32) -> Pending<Vec<(Call, String)>>;
    fn pending_before(&self, cutoff: String) -> Pending<Vec<Call>>;
    /// Ends as `interrupted` the calls left `running` by hosts that are
    /// gone (SQLite: every one, since this host holds the folder).
    fn interrupt_orphans(&self) -> Pending<usize>;
    /// Ends abandoned calls `failed` (those still running); returns them.
    fn fail_abandoned(&self, batch: Vec<Abandoned>) -> Pending<Vec<Call>>;

    // ---- tool state and audit ----
    fn tool_state(&self, session: &str, tool: &str) -> Pending<BTreeMap<String, Vec<u8>>>;
    fn state_value(&self, session: &str, tool: &str, key: &str) -> Pending<Option<Vec<u8>>>;
    fn state_keys(&self, session: &str, tool: &str, prefix: &str) -> Pending<Vec<String>>;
    /// All of a tool's committed state, or only its size when over `largest`.
    fn committed_state(&self, session: &str, tool: &str, largest: u64) -> Pending<state_cache::Committed>;
    fn audit(&self, session: &str, after: i64, limit: u32) -> Pending<Vec<AuditEvent>>;
    /// Appends one event to a chain that is no session's (the tool set's,
    /// `events::TOOLS_CHAIN`).
    fn record_event(&self, chain: &str, actor: &str, event: Event) -> Pending<()>;

    // ---- operations ----
    fn stats(&self) -> Pending<StoreStats>;
    /// Caps the database's size where the backend can; the cap applied.
    fn cap_size(&self, max_bytes: u64) -> Pending<u64>;
}

/// The answer of `pending` on this thread, for the synchronous reads a
/// call's capabilities make: a backend that answered at once (SQLite's
/// inline lookups) costs one poll; otherwise this runtime thread blocks
/// while another drives the query.
pub fn wait<T>(mut pending: Pending<T>) -> Result<T> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if let std::task::Poll::Ready(answer) = pending.as_mut().poll(&mut cx) {
        return answer;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| handle.block_on(pending))
        }
        // No runtime thread to hand the query's driver to.
        _ => Err(StoreError::Unavailable("a synchronous store read needs a multi-thread runtime".into())),
    }
}
