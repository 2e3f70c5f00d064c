//! [`Store`] over a [`Db`]: each write one job of the single writer (its
//! checks, rows and audit events in one savepoint), each read one query on
//! a read connection. Point lookups made on a call's path run inline (the
//! page cache answers in microseconds); lists and scans go to the blocking
//! pool.

use super::{Db, Link, audit, calls, messages, sessions, tool_state};
use crate::events::{CallFinished, CallRequested, Event, MessageAppended, StateCommitted};
use crate::model::{AuditEvent, Call, CallError, CallStatus, Message, Session, ToolBoundary};
use crate::store::state_cache::{Committed, Snapshot};
use crate::store::{Abandoned, FinishedCall, Pending, Rejection, Result, Sharing, Started, Store, StoreStats};
use crate::store::{PrincipalUsage, UsageQuery};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub struct SqliteStore {
    db: Arc<Db>,
}

impl SqliteStore {
    pub fn new(db: Db) -> SqliteStore {
        SqliteStore { db: Arc::new(db) }
    }

    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// A read on the blocking pool.
    fn scan<T, F>(&self, f: F) -> Pending<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T> + Send + 'static,
    {
        let db = self.db.clone();
        Box::pin(async move { db.read_async(f).await })
    }

    /// A read on this thread, answered before the future is polled.
    fn lookup<T: Send + 'static>(&self, f: impl FnOnce(&rusqlite::Connection) -> Result<T>) -> Pending<T> {
        Box::pin(std::future::ready(self.db.read(f)))
    }

    /// A write job, submitted when the future is first polled.
    fn write<T, F>(&self, f: F) -> Pending<T>
    where
        T: Send + 'static,
        F: FnOnce(&super::Tx) -> Result<T> + Send + 'static,
    {
        let db = self.db.clone();
        Box::pin(async move { db.write(f).await })
    }

    /// A call's write, submitted now. A lone call's job runs on its own
    /// thread when the writer is idle: nothing would join its commit, and
    /// handing it to the writer thread costs two thread wakes. While other
    /// calls are in flight their jobs are about to come, so it queues for
    /// the writer to share one commit with them.
    fn submit_now<T, F>(&self, link: Link, busy: bool, f: F) -> Result<Pending<T>>
    where
        T: Send + 'static,
        F: FnOnce(&super::Tx) -> Result<T> + Send + 'static,
    {
        let answer = if busy { self.db.submit_queued(link, f)? } else { self.db.submit_linked(link, f)? };
        Ok(Box::pin(answer))
    }
}

impl Store for SqliteStore {
    fn sharing(&self) -> Sharing {
        Sharing::OneHost
    }

    fn session(&self, id: &str) -> Pending<Option<Session>> {
        self.lookup(|c| sessions::get(c, id))
    }

    fn sessions(&self, owner: Option<String>, after: String, limit: u32) -> Pending<Vec<Session>> {
        self.scan(move |c| sessions::list(c, owner.as_deref(), &after, limit))
    }

    fn usage(&self, query: UsageQuery) -> Pending<Vec<PrincipalUsage>> {
        self.scan(move |c| sessions::usage(c, &query))
    }

    fn create_session(&self, s: Session, created: Event) -> Pending<()> {
        self.write(move |c| {
            sessions::insert(c, &s)?;
            audit::append(c, &s.id, &s.principal, None, &created)?;
            Ok(())
        })
    }

    fn delete_session(&self, session: &str, actor: &str, deleted: Event) -> Pending<()> {
        let (id, actor) = (session.to_string(), actor.to_string());
        self.write(move |c| {
            if !sessions::delete(c, &id)? {
                return Err(Rejection::NotFound.into());
            }
            audit::append(c, &id, &actor, None, &deleted)?;
            Ok(())
        })
    }

    fn purge_expired(&self, now: String, deleted: Event) -> Pending<Vec<String>> {
        self.write(move |c| {
            let ids = sessions::expired(c, &now)?;
            for id in &ids {
                sessions::delete(c, id)?;
                audit::append(c, id, "bulkhead", None, &deleted)?;
            }
            Ok(ids)
        })
    }

    fn narrow_session(
        &self,
        session: &str,
        if_match: Option<i64>,
        tools: BTreeMap<String, ToolBoundary>,
        actor: &str,
        narrowed: Event,
    ) -> Pending<i64> {
        let (id, actor) = (session.to_string(), actor.to_string());
        self.write(move |c| {
            sessions::check_version(c, &id, if_match)?;
            let version = sessions::bump_version(c, &id)?;
            sessions::update_boundary(c, &id, &tools)?;
            audit::append(c, &id, &actor, None, &narrowed)?;
            Ok(version)
        })
    }

    fn append_message(
        &self,
        session: &str,
        actor: &str,
        role: String,
        content: String,
        metadata: Option<Value>,
    ) -> Pending<Message> {
        let (id, actor) = (session.to_string(), actor.to_string());
        self.write(move |c| {
            // First, so a session deleted meanwhile answers 404.
            sessions::append_message(c, &id, crate::model::message_bytes(&content, metadata.as_ref()))?;
            let msg = messages::append(c, &id, &role, &content, metadata.as_ref())?;
            audit::append(c, &id, &actor, None, &MessageAppended::of(&msg).into())?;
            Ok(msg)
        })
    }

    fn messages(&self, session: &str, after: i64, limit: u32) -> Pending<Vec<Message>> {
        let id = session.to_string();
        self.scan(move |c| messages::list(c, &id, after, limit))
    }

    fn newest_messages(&self, session: &str, limit: u32) -> Pending<Vec<Message>> {
        self.lookup(|c| messages::newest(c, session, limit))
    }

    fn call(&self, session: &str, id: &str) -> Pending<Option<Call>> {
        let (sid, id) = (session.to_string(), id.to_string());
        self.scan(move |c| calls::get(c, &sid, &id))
    }

    fn call_with_requester(&self, id: &str) -> Pending<Option<(Call, String)>> {
        let id = id.to_string();
        self.scan(move |c| calls::get_any(c, &id))
    }

    fn calls(&self, session: &str, status: Option<CallStatus>, after: String, limit: u32) -> Pending<Vec<Call>> {
        let sid = session.to_string();
        self.scan(move |c| calls::list(c, &sid, status, &after, limit))
    }

    fn call_by_idempotency_key(&self, session: &str, key: &str) -> Pending<Option<Call>> {
        let (sid, key) = (session.to_string(), key.to_string());
        self.scan(move |c| calls::by_idempotency_key(c, &sid, &key))
    }

    fn new_link(&self) -> Option<u64> {
        Some(self.db.new_link())
    }

    fn submit_request(
        &self,
        call: &Call,
        actor: &str,
        if_match: Option<i64>,
        link: Link,
        busy: bool,
    ) -> Result<Pending<Started>> {
        // The JSON is built here, off the writer thread, which every call shares.
        let (call, actor) = (call.clone(), actor.to_string());
        let encoded = calls::Encoded::of(&call);
        let requested: Event = CallRequested::of(&call, &encoded.input).into();
        self.submit_now(link, busy, move |c| {
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
        })
    }

    fn submit_outcome(&self, outcome: FinishedCall, link: Link, busy: bool) -> Result<Pending<FinishedCall>> {
        let committed =
            (!outcome.writes.is_empty()).then(|| Event::from(StateCommitted::of(&outcome.call, &outcome.writes)));
        let finished = Event::from(CallFinished::ran(&outcome.call, outcome.tool_version.as_ref()));
        let encoded = calls::Encoded::of(&outcome.call);
        self.submit_now(link, busy, move |c| {
            let FinishedCall { call, writes, notes, actor, .. } = &outcome;
            // First, so a session deleted while the call ran is a clean
            // NotFound before anything else is touched.
            sessions::finish_call(c, &call.session, &call.usage)?;
            calls::finish(c, call, &encoded)?;
            if committed.is_some() {
                tool_state::apply(c, &call.session, &call.tool, writes)?;
            }
            // The audit notes, `state_committed` and `call_finished`.
            let events: Vec<&Event> = notes.iter().chain(&committed).chain([&finished]).collect();
            audit::append_all(c, &call.session, actor, Some(&call.id), &events)?;
            Ok(outcome)
        })
    }

    fn record_decision(&self, call: &Call, actor: &str, ends_call: bool) -> Pending<()> {
        let (call, actor) = (call.clone(), actor.to_string());
        let decided = Event::from(crate::events::ApprovalDecided::of(&call));
        let finished = ends_call.then(|| Event::from(CallFinished::of(&call)));
        self.write(move |c| {
            if !calls::decide(c, &call)? {
                return Err(Rejection::NotPending.into());
            }
            let events: Vec<&Event> = [&decided].into_iter().chain(&finished).collect();
            audit::append_all(c, &call.session, &actor, Some(&call.id), &events)?;
            if finished.is_some() {
                sessions::bump_version(c, &call.session)?;
            }
            Ok(())
        })
    }

    fn pending_approvals_for(&self, approver: &str, after: String, limit: u32) -> Pending<Vec<(Call, String)>> {
        let me = approver.to_string();
        self.scan(move |c| calls::pending_for(c, &me, &after, limit))
    }

    fn pending_before(&self, cutoff: String) -> Pending<Vec<Call>> {
        self.scan(move |c| calls::pending_before(c, &cutoff))
    }

    fn interrupt_orphans(&self) -> Pending<usize> {
        self.write(|c| {
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
                call.finished_at = Some(crate::util::now_rfc3339());
                calls::finish(c, &call, &calls::Encoded::of(&call))?;
                audit::append(c, session, "bulkhead", Some(id), &CallFinished::of(&call).into())?;
            }
            Ok(running.len())
        })
    }

    fn fail_abandoned(&self, batch: Vec<Abandoned>) -> Pending<Vec<Call>> {
        let finished_at = crate::util::now_rfc3339();
        self.write(move |c| {
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
                let finished = CallFinished::of(&call).into();
                let events: Vec<&Event> = a.notes.iter().chain([&finished]).collect();
                audit::append_all(c, &call.session, "bulkhead", Some(&call.id), &events)?;
                failed.push(call);
            }
            Ok(failed)
        })
    }

    fn tool_state(&self, session: &str, tool: &str) -> Pending<BTreeMap<String, Vec<u8>>> {
        let (sid, tool) = (session.to_string(), tool.to_string());
        self.scan(move |c| tool_state::all(c, &sid, &tool))
    }

    fn state_value(&self, session: &str, tool: &str, key: &str) -> Pending<Option<Vec<u8>>> {
        self.lookup(|c| tool_state::get(c, session, tool, key))
    }

    fn state_keys(&self, session: &str, tool: &str, prefix: &str) -> Pending<Vec<String>> {
        self.lookup(|c| tool_state::keys(c, session, tool, prefix))
    }

    fn committed_state(&self, session: &str, tool: &str, largest: u64) -> Pending<Committed> {
        self.lookup(|c| {
            let size = tool_state::size(c, session, tool)?;
            if size > largest {
                return Ok(Committed::Large { size });
            }
            let entries = tool_state::all(c, session, tool)?;
            Ok(Committed::Cached(Arc::new(Snapshot { entries, size })))
        })
    }

    fn audit(&self, session: &str, after: i64, limit: u32) -> Pending<Vec<AuditEvent>> {
        let sid = session.to_string();
        self.scan(move |c| audit::list(c, &sid, after, limit))
    }

    fn record_event(&self, chain: &str, actor: &str, event: Event) -> Pending<()> {
        let (chain, actor) = (chain.to_string(), actor.to_string());
        self.write(move |c| audit::append(c, &chain, &actor, None, &event).map(drop))
    }

    fn stats(&self) -> Pending<StoreStats> {
        let db = self.db.clone();
        Box::pin(async move {
            let (sessions, pending) = db
                .read_async(|c| {
                    let sessions = c.query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get::<_, i64>(0))?;
                    let pending =
                        c.query_row("SELECT COUNT(*) FROM calls WHERE status = 'pending_approval'", [], |r| {
                            r.get::<_, i64>(0)
                        })?;
                    Ok((sessions as u64, pending as u64))
                })
                .await?;
            let files = ["", "-wal", "-shm"].map(|suffix| {
                let mut path = db.path().as_os_str().to_owned();
                path.push(suffix);
                std::fs::metadata(path).map_or(0, |m| m.len())
            });
            let w = db.writer_stats();
            Ok(StoreStats {
                sessions,
                pending_approvals: pending,
                storage_bytes: files.iter().sum(),
                commits: w.commits.load(Ordering::Relaxed),
                write_jobs: w.jobs.load(Ordering::Relaxed),
                write_jobs_run_by_callers: w.jobs_run_by_callers.load(Ordering::Relaxed),
            })
        })
    }

    fn cap_size(&self, max_bytes: u64) -> Pending<u64> {
        let db = self.db.clone();
        Box::pin(async move { db.cap_size(max_bytes).await })
    }
}
