//! The statements the writes share: a session's row lock and version
//! check, a finished call's usage and record, state writes, a call by its
//! idempotency key. Plain functions over any client or transaction, so
//! that `ops` and `calls` compose them inside one transaction.

use super::{Fail, rows};
use crate::model::Call;
use crate::store::sqlite::calls::Encoded;
use crate::store::{Rejection, StateWrites};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

pub(super) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

pub(super) async fn run(tx: &impl GenericClient, sql: &str, params: Params<'_>) -> Result<u64, Fail> {
    let st = tx.prepare_cached(sql).await?;
    Ok(tx.execute(&st, params).await?)
}

pub(super) async fn rows_in(tx: &impl GenericClient, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Fail> {
    let st = tx.prepare_cached(sql).await?;
    Ok(tx.query(&st, params).await?)
}

pub(super) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("records serialize")
}

/// Locks a session's row for a write that adds to it (several may hold
/// it at once); its version, or `NotFound`.
pub(super) const SHARE_SESSION: &str = "SELECT version FROM sessions WHERE id = $1 FOR SHARE";

pub(super) async fn share_session(tx: &impl GenericClient, id: &str) -> Result<i64, Fail> {
    let found = rows_in(tx, SHARE_SESSION, &[&id]).await?;
    let row = found.first().ok_or(Rejection::NotFound)?;
    Ok(row.try_get(0)?)
}

/// Bumps a session's version, locking its row; `NotFound` when it is gone.
pub(super) async fn bump_version(tx: &impl GenericClient, id: &str) -> Result<i64, Fail> {
    let found =
        rows_in(tx, "UPDATE sessions SET version = version + 1 WHERE id = $1 RETURNING version", &[&id]).await?;
    let row = found.first().ok_or(Rejection::NotFound)?;
    Ok(row.try_get(0)?)
}

pub(super) fn check_version(current: i64, expected: Option<i64>) -> Result<(), Fail> {
    match expected {
        Some(v) if v != current => Err(Rejection::StaleVersion { current }.into()),
        _ => Ok(()),
    }
}

/// Storage-time counted up to `$2` (unix ms), then `$3` bytes more kept
/// (`$4`: byte-ms per MiB-hour): the SET clause of every change to what a
/// session keeps, as SQLite's `sessions::KEEP`.
pub(super) const KEEP: &str = "stored_mib_hours = stored_mib_hours + stored_bytes * GREATEST($2 - stored_since, 0) / $4::float8, \
     stored_bytes = GREATEST(stored_bytes + $3, 0), stored_since = GREATEST(stored_since, $2)";

/// The session's usage and version, and the call's outcome (only while it
/// is `running`: a call is finished once), in one statement.
pub(super) static FINISH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH s AS (UPDATE sessions SET version = version + 1, calls = calls + 1, \
         wall_ms = wall_ms + $5, fuel = fuel + $6, state_bytes_written = state_bytes_written + $7, \
         egress_requests = egress_requests + $8, egress_bytes = egress_bytes + $9, \
         memory_mib_seconds = memory_mib_seconds + $10, {KEEP} WHERE id = $1 RETURNING 1), \
         c AS (UPDATE calls SET status = $12, output = $13, error = $14, started_at = $15, finished_at = $16, \
         usage = $17, approval = $18, logs = $19 WHERE id = $11 AND status = 'running' RETURNING 1) \
         SELECT (SELECT count(*) FROM s), (SELECT count(*) FROM c)"
    )
});

/// `FINISH`; `NotFound` when the session is gone, `NotRunning` when the
/// call no longer runs.
pub(super) async fn finish(conn: &impl GenericClient, call: &Call, json: &Encoded) -> Result<(), Fail> {
    let big = |n: u64| n.min(i64::MAX as u64) as i64;
    let u = &call.usage;
    let (wall, fuel, state, requests, bytes) =
        (big(u.wall_ms), big(u.fuel), big(u.state_bytes_written), big(u.egress_requests), big(u.egress_bytes));
    let (now, memory) = (crate::util::unix_now_ms(), crate::model::memory_mib_seconds(u));
    let status = call.status.as_str();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 19] = [
        &call.session,
        &now,
        &u.stored_bytes_delta,
        &crate::model::BYTE_MS_PER_MIB_HOUR,
        &wall,
        &fuel,
        &state,
        &requests,
        &bytes,
        &memory,
        &call.id,
        &status,
        &json.output,
        &json.error,
        &call.started_at,
        &call.finished_at,
        &json.usage,
        &json.approval,
        &json.logs,
    ];
    let row = conn.query_one(&conn.prepare_cached(&FINISH).await?, &params).await?;
    let (sessions, calls): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
    match (sessions, calls) {
        (0, _) => Err(Rejection::NotFound.into()),
        // The session is there but the call no longer runs.
        (_, 0) => Err(Rejection::NotRunning.into()),
        _ => Ok(()),
    }
}

/// An appended message of `bytes`: bumps the version (locking the row) and
/// counts what the session keeps; `NotFound` when it is gone.
pub(super) async fn append_message(tx: &impl GenericClient, id: &str, bytes: usize) -> Result<(), Fail> {
    let sql = format!("UPDATE sessions SET version = version + 1, {KEEP} WHERE id = $1 RETURNING 1");
    let (now, bytes) = (crate::util::unix_now_ms(), bytes as i64);
    let found = rows_in(tx, &sql, &[&id, &now, &bytes, &crate::model::BYTE_MS_PER_MIB_HOUR]).await?;
    found.first().ok_or(Rejection::NotFound)?;
    Ok(())
}

/// The usage a deleted session leaves for reports (before its row goes).
pub(super) async fn keep_final_usage(tx: &impl GenericClient, id: &str) -> Result<(), Fail> {
    let (ended, now) = (crate::util::now_rfc3339(), crate::util::unix_now_ms());
    run(
        tx,
        "INSERT INTO ended_sessions (id, principal, created_at, ended_at, calls, wall_ms, fuel, \
         state_bytes_written, egress_requests, egress_bytes, memory_mib_seconds, stored_mib_hours) \
         SELECT id, principal, created_at, $2, calls, wall_ms, fuel, state_bytes_written, egress_requests, \
         egress_bytes, memory_mib_seconds, stored_mib_hours + stored_bytes * GREATEST($3 - stored_since, 0) / $4::float8 \
         FROM sessions WHERE id = $1 ON CONFLICT (id) DO NOTHING",
        &[&id, &ended, &now, &crate::model::BYTE_MS_PER_MIB_HOUR],
    )
    .await?;
    Ok(())
}

pub(super) const STATE_SET: &str = "INSERT INTO tool_state (session, tool, key, value) \
     SELECT $1, $2, * FROM unnest($3::text[], $4::bytea[]) ON CONFLICT (session, tool, key) DO UPDATE SET value = excluded.value";
pub(super) const STATE_DELETE: &str = "DELETE FROM tool_state WHERE session = $1 AND tool = $2 AND key = ANY($3)";

/// Applies a call's buffered state writes: two statements at most.
pub(super) async fn apply_state(
    tx: &impl GenericClient,
    session: &str,
    tool: &str,
    writes: &StateWrites,
) -> Result<(), Fail> {
    let (mut keys, mut values, mut gone) = (Vec::new(), Vec::new(), Vec::new());
    for (key, value) in writes {
        match value {
            Some(v) => {
                keys.push(key.as_str());
                values.push(v.as_slice());
            }
            None => gone.push(key.as_str()),
        }
    }
    let set = async {
        if keys.is_empty() {
            return Ok(0);
        }
        run(tx, STATE_SET, &[&session, &tool, &keys, &values]).await
    };
    let delete = async {
        if gone.is_empty() {
            return Ok(0);
        }
        run(tx, STATE_DELETE, &[&session, &tool, &gone]).await
    };
    tokio::try_join!(set, delete)?;
    Ok(())
}

pub(super) static BY_KEY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("SELECT {} FROM calls WHERE session = $1 AND idempotency_key = $2", rows::CALL)
});

pub(super) async fn by_key(c: &impl GenericClient, session: &str, key: &str) -> Result<Option<Call>, Fail> {
    let st = c.prepare_cached(&BY_KEY).await?;
    let found = c.query(&st, &[&session, &key]).await?;
    Ok(found.first().map(rows::call).transpose()?)
}
