//! A call's two writes, each one transaction in two round trips: the
//! statements of a transaction are sent together (tokio-postgres pipelines
//! the queries polled at once, in the order they are first polled), with
//! `BEGIN` in the first flight and `COMMIT` in the last.
//!
//! - record: `BEGIN`, the session's row (`FOR SHARE`), the key's first
//!   call if any, the chain head; then the call, its event, the head moved
//!   and `COMMIT`.
//! - outcome: `BEGIN`, the session's usage, the call's record, its state
//!   writes, the chain head; then its events with the head moved, `COMMIT`,
//!   and the unlock of its turn.
//!
//! A statement sent out of order could break the lock order or land after
//! `COMMIT`, outside the transaction. Each statement is prepared first
//! ([`warm`]: free once the connection has it cached), so that polling its
//! future sends it at once. A transaction that fails is rolled back (a
//! connection whose `ROLLBACK` fails is closed, never reused).

use super::audit::{self, Note};
use super::sql::{
    BY_KEY, FINISH, SHARE_SESSION, STATE_DELETE, STATE_SET, apply_state, by_key, check_version, finish, run, to_json,
};
use super::turn::{PgTurn, UNLOCK};
use super::{Fail, Inner};
use crate::events::Event;
use crate::model::{Call, CallStatus};
use crate::store::sqlite::calls::Encoded;
use crate::store::{FinishedCall, Rejection, Started};
use deadpool_postgres::{GenericClient, Object};

const INSERT_CALL: &str = "INSERT INTO calls (id, session, principal, tool, status, input, created_at, started_at, \
     usage, approval, idempotency_key, host) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
     ON CONFLICT (session, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING";

/// Prepares `statements` on `conn` (a cache lookup once it has them).
async fn warm(conn: &Object, statements: &[&str]) -> Result<(), Fail> {
    for sql in statements {
        conn.prepare_cached(sql).await?;
    }
    Ok(())
}

async fn begin(conn: &Object) -> Result<(), Fail> {
    Ok(conn.batch_execute("BEGIN").await?)
}

async fn commit(conn: &Object) -> Result<(), Fail> {
    Ok(conn.batch_execute("COMMIT").await?)
}

/// Ends a failed transaction; false when the connection cannot be trusted.
async fn rollback(conn: &Object) -> bool {
    conn.batch_execute("ROLLBACK").await.is_ok()
}

/// Records a call `running` (or `pending_approval`) with its event, after
/// the session, version and idempotency checks.
pub async fn submit_request(
    inner: &Inner,
    call: &Call,
    json: &Encoded,
    actor: &str,
    if_match: Option<i64>,
    requested: &Event,
) -> Result<Started, Fail> {
    let conn = inner.pool.get().await?;
    let done = request(inner, &conn, call, json, actor, if_match, requested).await;
    if done.is_err() && !rollback(&conn).await {
        drop(Object::take(conn));
    }
    done
}

async fn request(
    inner: &Inner,
    conn: &Object,
    call: &Call,
    json: &Encoded,
    actor: &str,
    if_match: Option<i64>,
    requested: &Event,
) -> Result<Started, Fail> {
    warm(conn, &[SHARE_SESSION, &BY_KEY, audit::HEAD, INSERT_CALL, audit::EXTEND]).await?;
    let first = async {
        match &call.idempotency_key {
            Some(key) => by_key(conn, &call.session, key).await,
            None => Ok(None),
        }
    };
    let share = async {
        let found = conn.query(&conn.prepare_cached(SHARE_SESSION).await?, &[&call.session]).await?;
        Ok::<_, Fail>(found.first().map(|r| r.try_get::<_, i64>(0)).transpose()?)
    };
    let ((), version, first, head) = tokio::try_join!(begin(conn), share, first, audit::head(conn, &call.session))?;
    let version = version.ok_or(Rejection::NotFound)?;
    if let Some(first) = first {
        // Nothing to keep (the head's upsert only locked its row).
        conn.batch_execute("ROLLBACK").await?;
        return Ok(Started::Existing(Box::new(first)));
    }
    check_version(version, if_match)?;
    let approval = call.approval.as_ref().map(to_json);
    let status = call.status.as_str();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 12] = [
        &call.id,
        &call.session,
        &actor,
        &call.tool,
        &status,
        &json.input,
        &call.created_at,
        &call.started_at,
        &json.usage,
        &approval,
        &call.idempotency_key,
        &inner.host,
    ];
    let insert = run(conn, INSERT_CALL, &params);
    let note = [Note { actor, call: Some(&call.id), event: requested }];
    if let Some(key) = &call.idempotency_key {
        // A request with this key committed by another host meanwhile:
        // the insert waits for it, then inserts nothing, and the first is
        // read. So the insert goes alone, before the event.
        if insert.await? == 0 {
            let first = by_key(conn, &call.session, key).await?.ok_or(Rejection::NotFound)?;
            conn.batch_execute("ROLLBACK").await?;
            return Ok(Started::Existing(Box::new(first)));
        }
        tokio::try_join!(audit::extend(conn, &call.session, head, &note), commit(conn))?;
    } else {
        tokio::try_join!(insert, audit::extend(conn, &call.session, head, &note), commit(conn))?;
    }
    inner.committed();
    Ok(Started::New)
}

/// A call's outcome in one transaction, on the connection that holds its
/// turn when it has one (then the unlock follows the commit).
pub async fn submit_outcome(
    inner: &Inner,
    turn: Option<&mut PgTurn>,
    outcome: &FinishedCall,
    json: &Encoded,
    events: &[&Event],
) -> Result<bool, Fail> {
    let mut pooled = None;
    let (conn, key) = match turn {
        Some(turn) => {
            let key = turn.key();
            (&*turn.conn(), Some(key))
        }
        None => (&*pooled.insert(inner.pool.get().await?), None),
    };
    let done = outcome_in(inner, conn, key, outcome, json, events).await;
    if done.is_err() && !rollback(conn).await {
        // A turn's connection is closed with its turn; a pooled one now.
        if let Some(conn) = pooled.take() {
            drop(Object::take(conn));
        }
    }
    done
}

/// Whether the turn (if any) was unlocked.
async fn outcome_in(
    inner: &Inner,
    conn: &Object,
    turn: Option<i64>,
    outcome: &FinishedCall,
    json: &Encoded,
    events: &[&Event],
) -> Result<bool, Fail> {
    let FinishedCall { call, writes, actor, .. } = outcome;
    warm(conn, &[&FINISH, STATE_SET, STATE_DELETE, audit::HEAD, audit::EXTEND, UNLOCK]).await?;
    // Turn connections have no statement timeout of their own.
    let begin = conn.batch_execute(if turn.is_some() { &inner.begin_on_turn } else { "BEGIN" });
    let begin = async { Ok::<_, Fail>(begin.await?) };
    let state = async {
        if call.status == CallStatus::Succeeded && !writes.is_empty() {
            apply_state(conn, &call.session, &call.tool, writes).await?;
        }
        Ok(())
    };
    // In this order on the server: the session's row, then the chain's head.
    let ((), (), (), head) =
        tokio::try_join!(begin, finish(conn, call, json), state, audit::head(conn, &call.session))?;
    let notes: Vec<Note> = events.iter().map(|event| Note { actor, call: Some(&call.id), event }).collect();
    let unlock = async {
        match turn {
            Some(key) => {
                let row = conn.query_one(&conn.prepare_cached(UNLOCK).await?, &[&key]).await?;
                Ok::<_, Fail>(row.try_get::<_, bool>(0)?)
            }
            None => Ok(false),
        }
    };
    let ((), (), unlocked) = tokio::try_join!(audit::extend(conn, &call.session, head, &notes), commit(conn), unlock)?;
    inner.committed();
    Ok(unlocked)
}
