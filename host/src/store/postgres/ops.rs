//! [`Store`] over PostgreSQL: each write one transaction (run again when
//! the database broke a deadlock), each read one query on a pooled
//! connection. Every transaction that touches a session locks its row
//! before its audit head (see the module's lock order).

use super::audit::{self, Note};
use super::sql::{Params, bump_version, by_key, check_version, finish, rows_in, run, share_session, to_json};
use super::turn::{self, PgTurn};
use super::{Fail, Inner, PgStore, calls, lease, retrying, rows};
use crate::events::{ApprovalDecided, CallFinished, CallRequested, Event, MessageAppended, StateCommitted};
use crate::model::{AuditEvent, Call, CallError, CallStatus, Message, Session, ToolBoundary};
use crate::store::sqlite::calls::Encoded;
use crate::store::state_cache::{Committed, Snapshot};
use crate::store::{
    Abandoned, FinishedCall, Link, Pending, PrincipalUsage, Rejection, Result, Sharing, Started, Store, StoreError,
    StoreStats, Turned, UsageQuery,
};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio_postgres::Row;

/// A future of the store's, its failure reported as a [`StoreError`].
fn pending<T: Send + 'static>(f: impl Future<Output = Result<T, Fail>> + Send + 'static) -> Pending<T> {
    Box::pin(async move { f.await.map_err(StoreError::from) })
}

/// One query on a pooled connection.
async fn query(inner: &Inner, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Fail> {
    let c = inner.pool.get().await?;
    let st = c.prepare_cached(sql).await?;
    Ok(c.query(&st, params).await?)
}

impl Inner {
    pub(super) fn committed(&self) {
        self.commits.fetch_add(1, Ordering::Relaxed);
    }

    fn lease_seconds(&self) -> f64 {
        self.lease.as_secs_f64()
    }
}

async fn create_session(inner: &Inner, s: &Session, created: &Event) -> Result<(), Fail> {
    let mut c = inner.pool.get().await?;
    let tx = c.transaction().await?;
    let (tools, env, labels) = (to_json(&s.tools), to_json(&s.env), to_json(&s.labels));
    run(
        &tx,
        "INSERT INTO sessions (id, principal, created_at, expires_at, version, boundary, env, labels, stored_since) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &s.id,
            &s.principal,
            &s.created_at,
            &s.expires_at,
            &s.version,
            &tools,
            &env,
            &labels,
            &crate::util::unix_now_ms(),
        ],
    )
    .await?;
    audit::append(&tx, &s.id, &[Note { actor: &s.principal, call: None, event: created }]).await?;
    tx.commit().await?;
    inner.committed();
    Ok(())
}

/// Deletes a session (its messages, state and calls cascade; the audit
/// chain stays) with `deleted` as its chain's last event; false when gone.
async fn delete_session(inner: &Inner, id: &str, actor: &str, deleted: &Event) -> Result<bool, Fail> {
    let mut c = inner.pool.get().await?;
    let tx = c.transaction().await?;
    super::sql::keep_final_usage(&tx, id).await?;
    if run(&tx, "DELETE FROM sessions WHERE id = $1", &[&id]).await? == 0 {
        return Ok(false);
    }
    audit::append(&tx, id, &[Note { actor, call: None, event: deleted }]).await?;
    tx.commit().await?;
    inner.committed();
    Ok(true)
}

async fn narrow_session(
    inner: &Inner,
    id: &str,
    if_match: Option<i64>,
    tools: &BTreeMap<String, ToolBoundary>,
    actor: &str,
    narrowed: &Event,
) -> Result<i64, Fail> {
    let mut c = inner.pool.get().await?;
    let tx = c.transaction().await?;
    let found = rows_in(&tx, "SELECT version FROM sessions WHERE id = $1 FOR UPDATE", &[&id]).await?;
    let current: i64 = found.first().ok_or(Rejection::NotFound)?.try_get(0)?;
    check_version(current, if_match)?;
    let boundary = to_json(tools);
    let updated = rows_in(
        &tx,
        "UPDATE sessions SET version = version + 1, boundary = $2 WHERE id = $1 RETURNING version",
        &[&id, &boundary],
    )
    .await?;
    let version: i64 = updated.first().ok_or(Rejection::NotFound)?.try_get(0)?;
    audit::append(&tx, id, &[Note { actor, call: None, event: narrowed }]).await?;
    tx.commit().await?;
    inner.committed();
    Ok(version)
}

async fn append_message(
    inner: &Inner,
    id: &str,
    actor: &str,
    role: &str,
    content: &str,
    metadata: Option<&Value>,
) -> Result<Message, Fail> {
    let mut c = inner.pool.get().await?;
    let tx = c.transaction().await?;
    // First: the session's row lock orders its messages; a session deleted
    // meanwhile answers 404.
    super::sql::append_message(&tx, id, crate::model::message_bytes(content, metadata)).await?;
    let next = rows_in(&tx, "SELECT COALESCE(MAX(seq), 0) + 1 FROM messages WHERE session = $1", &[&id]).await?;
    let seq: i64 = next[0].try_get(0)?;
    let created_at = crate::util::now_rfc3339();
    let meta = metadata.map(|m| m.to_string());
    run(
        &tx,
        "INSERT INTO messages (session, seq, role, content, metadata, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        &[&id, &seq, &role, &content, &meta, &created_at],
    )
    .await?;
    let msg = Message { seq, role: role.into(), content: content.into(), metadata: metadata.cloned(), created_at };
    let appended = Event::from(MessageAppended::of(&msg));
    audit::append(&tx, id, &[Note { actor, call: None, event: &appended }]).await?;
    tx.commit().await?;
    inner.committed();
    Ok(msg)
}

async fn record_decision(inner: &Inner, call: &Call, actor: &str, events: &[&Event]) -> Result<(), Fail> {
    let mut c = inner.pool.get().await?;
    let tx = c.transaction().await?;
    let ends_call = events.len() > 1;
    let locked = match ends_call {
        true => bump_version(&tx, &call.session).await,
        false => share_session(&tx, &call.session).await,
    };
    // A session gone took its calls with it.
    locked.map_err(|_| Rejection::NotPending)?;
    let (error, approval) = (call.error.as_ref().map(to_json), call.approval.as_ref().map(to_json));
    let decided = run(
        &tx,
        "UPDATE calls SET status = $2, error = $3, started_at = $4, finished_at = $5, approval = $6, host = $7 \
         WHERE id = $1 AND status = 'pending_approval'",
        &[&call.id, &call.status.as_str(), &error, &call.started_at, &call.finished_at, &approval, &inner.host],
    )
    .await?;
    if decided == 0 {
        return Err(Rejection::NotPending.into());
    }
    let notes: Vec<Note> = events.iter().map(|event| Note { actor, call: Some(&call.id), event }).collect();
    audit::append(&tx, &call.session, &notes).await?;
    tx.commit().await?;
    inner.committed();
    Ok(())
}

/// Interrupts one call left `running` by a host whose lease expired;
/// whether it did (the host may have come back, or the call finished).
async fn interrupt(inner: &Inner, session: &str, id: &str) -> Result<bool, Fail> {
    let mut c = inner.pool.get().await?;
    let tx = c.transaction().await?;
    if share_session(&tx, session).await.is_err() {
        return Ok(false);
    }
    let error =
        to_json(&CallError { code: "interrupted".into(), message: "the host stopped while the call ran".into() });
    let now = crate::util::now_rfc3339();
    let found = rows_in(
        &tx,
        &format!(
            "UPDATE calls c SET status = 'interrupted', error = $3, finished_at = $4 \
             WHERE c.id = $2 AND c.status = 'running' AND {} RETURNING {}",
            lease::EXPIRED,
            rows::CALL.split(", ").map(|col| format!("c.{col}")).collect::<Vec<_>>().join(", ")
        ),
        &[&inner.lease_seconds(), &id, &error, &now],
    )
    .await?;
    let Some(row) = found.first() else { return Ok(false) };
    let call = rows::call(row)?;
    let finished = Event::from(CallFinished::of(&call));
    audit::append(&tx, session, &[Note { actor: "bulkhead", call: Some(id), event: &finished }]).await?;
    tx.commit().await?;
    inner.committed();
    Ok(true)
}

/// Finishes one abandoned call `failed`, if it is still running.
async fn fail_abandoned(inner: &Inner, a: &Abandoned, finished_at: &str) -> Result<Option<Call>, Fail> {
    let mut c = inner.pool.get().await?;
    let tx = c.transaction().await?;
    if rows_in(&tx, "SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", &[&a.session]).await?.is_empty() {
        return Ok(None);
    }
    let found = rows_in(
        &tx,
        &format!("SELECT {} FROM calls WHERE id = $1 AND session = $2 FOR UPDATE", rows::CALL),
        &[&a.id, &a.session],
    )
    .await?;
    let Some(row) = found.first() else { return Ok(None) };
    let mut call = rows::call(row)?;
    if call.status != CallStatus::Running {
        return Ok(None);
    }
    call.status = CallStatus::Failed;
    call.error = Some(a.error.clone());
    call.usage = a.usage;
    call.finished_at = Some(finished_at.to_string());
    finish(&tx, &call, &Encoded::of(&call)).await?;
    let finished = Event::from(CallFinished::of(&call));
    let mut notes: Vec<Note> =
        a.notes.iter().map(|event| Note { actor: "bulkhead", call: Some(&a.id), event }).collect();
    notes.push(Note { actor: "bulkhead", call: Some(&a.id), event: &finished });
    audit::append(&tx, &call.session, &notes).await?;
    tx.commit().await?;
    inner.committed();
    Ok(Some(call))
}

impl Store for PgStore {
    fn sharing(&self) -> Sharing {
        Sharing::Shared
    }

    fn take_turn(&self, session: &str, tool: &str, largest: u64) -> Pending<Option<Turned>> {
        let (inner, session, tool) = (self.inner.clone(), session.to_string(), tool.to_string());
        pending(async move { Ok(Some(turn::take(&inner, &session, &tool, largest).await?)) })
    }

    fn session(&self, id: &str) -> Pending<Option<Session>> {
        let (inner, id) = (self.inner.clone(), id.to_string());
        pending(async move {
            let found = query(&inner, &format!("SELECT {} FROM sessions WHERE id = $1", rows::SESSION), &[&id]).await?;
            Ok(found.first().map(rows::session).transpose()?)
        })
    }

    fn sessions(&self, owner: Option<String>, after: String, limit: u32) -> Pending<Vec<Session>> {
        let inner = self.inner.clone();
        pending(async move {
            let sql = format!(
                "SELECT {} FROM sessions WHERE ($1::text IS NULL OR principal = $1) AND id > $2 ORDER BY id LIMIT $3",
                rows::SESSION
            );
            let found = query(&inner, &sql, &[&owner, &after, &(limit as i64)]).await?;
            Ok(rows::all(found, rows::session)?)
        })
    }

    fn usage(&self, q: UsageQuery) -> Pending<Vec<PrincipalUsage>> {
        let inner = self.inner.clone();
        pending(async move {
            const PICK: &str = "($1::text IS NULL OR principal = $1) AND ($2::text IS NULL OR created_at >= $2) \
                                AND ($3::text IS NULL OR created_at < $3)";
            let sql = format!(
                "SELECT principal, COUNT(*), SUM(ended)::bigint, SUM(calls)::bigint, SUM(wall_ms)::bigint, \
                 SUM(fuel)::bigint, SUM(state_bytes_written)::bigint, SUM(egress_requests)::bigint, \
                 SUM(egress_bytes)::bigint, SUM(memory_mib_seconds), SUM(stored_mib_hours), SUM(stored_bytes)::bigint \
                 FROM (SELECT principal, 0 AS ended, calls, wall_ms, fuel, state_bytes_written, egress_requests, \
                       egress_bytes, memory_mib_seconds, stored_mib_hours + stored_bytes \
                       * GREATEST($4 - stored_since, 0) / $5::float8 AS stored_mib_hours, stored_bytes \
                       FROM sessions WHERE {PICK} \
                       UNION ALL \
                       SELECT principal, 1, calls, wall_ms, fuel, state_bytes_written, egress_requests, egress_bytes, \
                       memory_mib_seconds, stored_mib_hours, 0 FROM ended_sessions WHERE {PICK}) AS picked \
                 GROUP BY principal ORDER BY principal"
            );
            let now = crate::util::unix_now_ms();
            let found =
                query(&inner, &sql, &[&q.principal, &q.from, &q.to, &now, &crate::model::BYTE_MS_PER_MIB_HOUR]).await?;
            Ok(rows::all(found, rows::principal_usage)?)
        })
    }

    fn create_session(&self, s: Session, created: Event) -> Pending<()> {
        let inner = self.inner.clone();
        Box::pin(async move { retrying(|| create_session(&inner, &s, &created)).await })
    }

    fn delete_session(&self, session: &str, actor: &str, deleted: Event) -> Pending<()> {
        let (inner, id, actor) = (self.inner.clone(), session.to_string(), actor.to_string());
        Box::pin(async move {
            match retrying(|| delete_session(&inner, &id, &actor, &deleted)).await? {
                true => Ok(()),
                false => Err(Rejection::NotFound.into()),
            }
        })
    }

    fn purge_expired(&self, now: String, deleted: Event) -> Pending<Vec<String>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let sql = "SELECT id FROM sessions WHERE expires_at IS NOT NULL AND expires_at < $1 ORDER BY id LIMIT 1000";
            let found = query(&inner, sql, &[&now]).await?;
            let mut purged = Vec::new();
            for row in &found {
                let id: String = row.try_get(0).map_err(Fail::from)?;
                // Another host may purge it first: only ours are reported.
                if retrying(|| delete_session(&inner, &id, "bulkhead", &deleted)).await? {
                    purged.push(id);
                }
            }
            Ok(purged)
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
        let (inner, id, actor) = (self.inner.clone(), session.to_string(), actor.to_string());
        Box::pin(async move { retrying(|| narrow_session(&inner, &id, if_match, &tools, &actor, &narrowed)).await })
    }

    fn append_message(
        &self,
        session: &str,
        actor: &str,
        role: String,
        content: String,
        metadata: Option<Value>,
    ) -> Pending<Message> {
        let (inner, id, actor) = (self.inner.clone(), session.to_string(), actor.to_string());
        Box::pin(
            async move { retrying(|| append_message(&inner, &id, &actor, &role, &content, metadata.as_ref())).await },
        )
    }

    fn messages(&self, session: &str, after: i64, limit: u32) -> Pending<Vec<Message>> {
        let (inner, id) = (self.inner.clone(), session.to_string());
        pending(async move {
            let sql =
                format!("SELECT {} FROM messages WHERE session = $1 AND seq > $2 ORDER BY seq LIMIT $3", rows::MESSAGE);
            let found = query(&inner, &sql, &[&id, &after, &(limit as i64)]).await?;
            Ok(rows::all(found, rows::message)?)
        })
    }

    fn newest_messages(&self, session: &str, limit: u32) -> Pending<Vec<Message>> {
        let (inner, id) = (self.inner.clone(), session.to_string());
        pending(async move {
            let sql = format!(
                "SELECT {0} FROM (SELECT {0} FROM messages WHERE session = $1 ORDER BY seq DESC LIMIT $2) m ORDER BY seq",
                rows::MESSAGE
            );
            let found = query(&inner, &sql, &[&id, &(limit as i64)]).await?;
            Ok(rows::all(found, rows::message)?)
        })
    }

    fn call(&self, session: &str, id: &str) -> Pending<Option<Call>> {
        let (inner, sid, id) = (self.inner.clone(), session.to_string(), id.to_string());
        pending(async move {
            let sql = format!("SELECT {} FROM calls WHERE id = $1 AND session = $2", rows::CALL);
            let found = query(&inner, &sql, &[&id, &sid]).await?;
            Ok(found.first().map(rows::call).transpose()?)
        })
    }

    fn call_with_requester(&self, id: &str) -> Pending<Option<(Call, String)>> {
        let (inner, id) = (self.inner.clone(), id.to_string());
        pending(async move {
            let sql = format!("SELECT {}, principal FROM calls WHERE id = $1", rows::CALL);
            let found = query(&inner, &sql, &[&id]).await?;
            let Some(row) = found.first() else { return Ok(None) };
            Ok(Some((rows::call(row)?, row.try_get(14)?)))
        })
    }

    fn calls(&self, session: &str, status: Option<CallStatus>, after: String, limit: u32) -> Pending<Vec<Call>> {
        let (inner, sid) = (self.inner.clone(), session.to_string());
        pending(async move {
            let sql = format!(
                "SELECT {} FROM calls WHERE session = $1 AND ($2::text IS NULL OR status = $2) AND id > $3 \
                 ORDER BY id LIMIT $4",
                rows::CALL
            );
            let status = status.map(CallStatus::as_str);
            let found = query(&inner, &sql, &[&sid, &status, &after, &(limit as i64)]).await?;
            Ok(rows::all(found, rows::call)?)
        })
    }

    fn call_by_idempotency_key(&self, session: &str, key: &str) -> Pending<Option<Call>> {
        let (inner, sid, key) = (self.inner.clone(), session.to_string(), key.to_string());
        pending(async move {
            let c = inner.pool.get().await?;
            by_key(&c, &sid, &key).await
        })
    }

    /// None: statements of two transactions on a pool are not ordered, so
    /// a call waits for its record to commit before it runs.
    fn new_link(&self) -> Option<u64> {
        None
    }

    fn submit_request(
        &self,
        call: &Call,
        actor: &str,
        if_match: Option<i64>,
        _link: Link,
        _busy: bool,
    ) -> Result<Pending<Started>> {
        let (inner, call, actor) = (self.inner.clone(), call.clone(), actor.to_string());
        let json = Encoded::of(&call);
        let requested: Event = CallRequested::of(&call, &json.input).into();
        Ok(Box::pin(async move {
            retrying(|| calls::submit_request(&inner, &call, &json, &actor, if_match, &requested)).await
        }))
    }

    fn submit_outcome(&self, mut outcome: FinishedCall, _link: Link, _busy: bool) -> Result<Pending<FinishedCall>> {
        let inner = self.inner.clone();
        let mut turn: Option<Box<PgTurn>> = outcome.turn.take().and_then(|t| t.downcast::<PgTurn>().ok());
        let call = &outcome.call;
        let committed = (call.status == CallStatus::Succeeded && !outcome.writes.is_empty())
            .then(|| Event::from(StateCommitted::of(call, &outcome.writes)));
        let finished = Event::from(CallFinished::ran(call, outcome.tool_version.as_ref()));
        let json = Encoded::of(call);
        Ok(Box::pin(async move {
            let events: Vec<&Event> = outcome.notes.iter().chain(committed.as_ref()).chain([&finished]).collect();
            // `retrying`, with the turn lent to each attempt.
            let mut done = Err(StoreError::Unavailable("no attempt".into()));
            for attempt in 1..=super::RETRIES {
                match calls::submit_outcome(&inner, turn.as_deref_mut(), &outcome, &json, &events).await {
                    Err(Fail::Retry(detail)) if attempt < super::RETRIES => {
                        tracing::debug!("retrying a call's outcome: {detail}")
                    }
                    other => {
                        done = other.map_err(StoreError::from);
                        break;
                    }
                }
            }
            drop(events);
            // Unlocked only once the outcome committed; a failed one drops
            // the turn, which closes its connection.
            match (&done, turn.take()) {
                (Ok(true), Some(turn)) => turn.unlocked(),
                (Ok(false), Some(turn)) => turn.release().await,
                _ => {}
            }
            done.map(|_| outcome)
        }))
    }

    fn record_decision(&self, call: &Call, actor: &str, ends_call: bool) -> Pending<()> {
        let (inner, call, actor) = (self.inner.clone(), call.clone(), actor.to_string());
        let decided = Event::from(ApprovalDecided::of(&call));
        let finished = ends_call.then(|| Event::from(CallFinished::of(&call)));
        Box::pin(async move {
            let events: Vec<&Event> = [&decided].into_iter().chain(finished.as_ref()).collect();
            retrying(|| record_decision(&inner, &call, &actor, &events)).await
        })
    }

    fn pending_approvals_for(&self, approver: &str, after: String, limit: u32) -> Pending<Vec<(Call, String)>> {
        let (inner, me) = (self.inner.clone(), approver.to_string());
        pending(async move {
            let cols = rows::CALL.split(", ").map(|c| format!("c.{c}")).collect::<Vec<_>>().join(", ");
            let sql = format!(
                "SELECT {cols}, c.principal FROM calls c JOIN sessions s ON s.id = c.session \
                 WHERE c.status = 'pending_approval' AND s.principal != $1 AND c.principal != $1 AND c.id > $2 \
                 ORDER BY c.id LIMIT $3"
            );
            let found = query(&inner, &sql, &[&me, &after, &(limit as i64)]).await?;
            found.iter().map(|r| Ok((rows::call(r)?, r.try_get(14)?))).collect()
        })
    }

    fn pending_before(&self, cutoff: String) -> Pending<Vec<Call>> {
        let inner = self.inner.clone();
        pending(async move {
            let sql = format!(
                "SELECT {} FROM calls WHERE status = 'pending_approval' AND created_at < $1 ORDER BY id LIMIT 1000",
                rows::CALL
            );
            let found = query(&inner, &sql, &[&cutoff]).await?;
            Ok(rows::all(found, rows::call)?)
        })
    }

    /// The calls left `running` by hosts whose lease expired, each in a
    /// transaction of its own; nothing while this host's own lease is
    /// younger than a lease (see `lease`).
    fn interrupt_orphans(&self) -> Pending<usize> {
        let inner = self.inner.clone();
        Box::pin(async move {
            if !lease::may_judge(&inner) {
                return Ok(0);
            }
            let sql = format!(
                "SELECT c.session, c.id FROM calls c WHERE c.status = 'running' AND {} ORDER BY c.id LIMIT 1000",
                lease::EXPIRED
            );
            let found = query(&inner, &sql, &[&inner.lease_seconds()]).await?;
            let mut interrupted = 0;
            for row in &found {
                let (session, id): (String, String) =
                    (row.try_get(0).map_err(Fail::from)?, row.try_get(1).map_err(Fail::from)?);
                if retrying(|| interrupt(&inner, &session, &id)).await? {
                    interrupted += 1;
                }
            }
            Ok(interrupted)
        })
    }

    fn fail_abandoned(&self, batch: Vec<Abandoned>) -> Pending<Vec<Call>> {
        let inner = self.inner.clone();
        let finished_at = crate::util::now_rfc3339();
        Box::pin(async move {
            let mut failed = Vec::new();
            for a in &batch {
                if let Some(call) = retrying(|| fail_abandoned(&inner, a, &finished_at)).await? {
                    failed.push(call);
                }
            }
            Ok(failed)
        })
    }

    fn tool_state(&self, session: &str, tool: &str) -> Pending<BTreeMap<String, Vec<u8>>> {
        let (inner, sid, tool) = (self.inner.clone(), session.to_string(), tool.to_string());
        pending(async move { all_state(&inner, &sid, &tool).await })
    }

    fn state_value(&self, session: &str, tool: &str, key: &str) -> Pending<Option<Vec<u8>>> {
        let (inner, sid, tool, key) = (self.inner.clone(), session.to_string(), tool.to_string(), key.to_string());
        pending(async move {
            let sql = "SELECT value FROM tool_state WHERE session = $1 AND tool = $2 AND key = $3";
            let found = query(&inner, sql, &[&sid, &tool, &key]).await?;
            Ok(found.first().map(|r| r.try_get(0)).transpose()?)
        })
    }

    fn state_keys(&self, session: &str, tool: &str, prefix: &str) -> Pending<Vec<String>> {
        let (inner, sid, tool, prefix) =
            (self.inner.clone(), session.to_string(), tool.to_string(), prefix.to_string());
        pending(async move {
            let sql =
                "SELECT key FROM tool_state WHERE session = $1 AND tool = $2 AND starts_with(key, $3) ORDER BY key";
            let found = query(&inner, sql, &[&sid, &tool, &prefix]).await?;
            Ok(found.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?)
        })
    }

    fn committed_state(&self, session: &str, tool: &str, largest: u64) -> Pending<Committed> {
        let (inner, sid, tool) = (self.inner.clone(), session.to_string(), tool.to_string());
        pending(async move {
            let entries = all_state(&inner, &sid, &tool).await?;
            let size: u64 = entries.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
            if size > largest {
                return Ok(Committed::Large { size });
            }
            Ok(Committed::Cached(Arc::new(Snapshot { entries, size })))
        })
    }

    fn audit(&self, session: &str, after: i64, limit: u32) -> Pending<Vec<AuditEvent>> {
        let (inner, sid) = (self.inner.clone(), session.to_string());
        pending(async move {
            let c = inner.pool.get().await?;
            audit::list(&c, &sid, after, limit).await
        })
    }

    fn record_event(&self, chain: &str, actor: &str, event: Event) -> Pending<()> {
        let (inner, chain, actor) = (self.inner.clone(), chain.to_string(), actor.to_string());
        Box::pin(async move {
            retrying(|| async {
                let mut c = inner.pool.get().await?;
                let tx = c.transaction().await?;
                audit::append(&tx, &chain, &[Note { actor: &actor, call: None, event: &event }]).await?;
                tx.commit().await?;
                inner.committed();
                Ok(())
            })
            .await
        })
    }

    fn stats(&self) -> Pending<StoreStats> {
        let inner = self.inner.clone();
        pending(async move {
            let found = query(
                &inner,
                "SELECT (SELECT COUNT(*) FROM sessions), \
                 (SELECT COUNT(*) FROM calls WHERE status = 'pending_approval'), \
                 pg_database_size(current_database())",
                &[],
            )
            .await?;
            let n = |i| found[0].try_get::<_, i64>(i).map(|v| v.max(0) as u64);
            let commits = inner.commits.load(Ordering::Relaxed);
            Ok(StoreStats {
                sessions: n(0)?,
                pending_approvals: n(1)?,
                storage_bytes: n(2)?,
                commits,
                write_jobs: commits,
                write_jobs_run_by_callers: commits,
            })
        })
    }

    /// PostgreSQL's size is the operator's to manage (the config refuses
    /// `max_size_mb` with this backend).
    fn cap_size(&self, _max_bytes: u64) -> Pending<u64> {
        Box::pin(std::future::ready(Err(StoreError::Unavailable(
            "storage.max_size_mb applies to the sqlite backend only".into(),
        ))))
    }
}

async fn all_state(inner: &Inner, sid: &str, tool: &str) -> Result<BTreeMap<String, Vec<u8>>, Fail> {
    let sql = "SELECT key, value FROM tool_state WHERE session = $1 AND tool = $2 ORDER BY key";
    let found = query(inner, sql, &[&sid, &tool]).await?;
    Ok(found.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect::<Result<_, tokio_postgres::Error>>()?)
}
