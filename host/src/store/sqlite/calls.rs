//! The `calls` table: every tool call, from request to outcome.

use super::{Result, filing};
use crate::model::{Approval, Call, CallError, CallStatus, LogLine, Usage};
use rusqlite::{Connection, OptionalExtension, Row, params};

const COLUMNS: &str = "id, session, tool, status, input, output, error, created_at, started_at, \
    finished_at, usage, approval, idempotency_key, logs";

fn parse<T: serde::de::DeserializeOwned>(text: Option<String>) -> Option<T> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

fn from_row(r: &Row) -> rusqlite::Result<Call> {
    let status: String = r.get(3)?;
    let input: String = r.get(4)?;
    Ok(Call {
        id: r.get(0)?,
        session: r.get(1)?,
        tool: r.get(2)?,
        status: CallStatus::parse(&status).unwrap_or(CallStatus::Interrupted),
        input: serde_json::from_str(&input).unwrap_or(serde_json::Value::Null),
        output: parse(r.get(5)?),
        error: parse::<CallError>(r.get(6)?),
        created_at: r.get(7)?,
        started_at: r.get(8)?,
        finished_at: r.get(9)?,
        usage: parse::<Usage>(r.get(10)?).unwrap_or_default(),
        approval: parse::<Approval>(r.get(11)?),
        idempotency_key: r.get(12)?,
        logs: parse::<Vec<LogLine>>(r.get(13)?).unwrap_or_default(),
    })
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("call fields serialize")
}

/// A call's JSON columns, serialized before the call reaches the writer
/// thread, which every call shares.
pub struct Encoded {
    pub input: String,
    pub(crate) output: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) usage: String,
    pub(crate) approval: Option<String>,
    pub(crate) logs: Option<String>,
}

impl Encoded {
    pub fn of(call: &Call) -> Encoded {
        Encoded {
            input: call.input.to_string(),
            output: call.output.as_ref().map(|o| o.to_string()),
            error: call.error.as_ref().map(to_json),
            usage: to_json(&call.usage),
            approval: call.approval.as_ref().map(to_json),
            logs: (!call.logs.is_empty()).then(|| to_json(&call.logs)),
        }
    }
}

pub fn insert(conn: &Connection, call: &Call, json: &Encoded, principal: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO calls (id, session, principal, tool, status, input, created_at, started_at, usage, approval, idempotency_key) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        call.id,
        call.session,
        principal,
        call.tool,
        call.status.as_str(),
        json.input,
        call.created_at,
        call.started_at,
        json.usage,
        json.approval,
        call.idempotency_key,
    ])?;
    Ok(())
}

/// Writes a call's outcome (status, output, error, usage, logs, times);
/// `NotFound` when its record is missing (its request was refused, or its
/// session deleted).
pub fn finish(conn: &Connection, call: &Call, json: &Encoded) -> Result<()> {
    let updated = conn
        .prepare_cached(
            "UPDATE calls SET status = ?2, output = ?3, error = ?4, started_at = ?5, finished_at = ?6, \
         usage = ?7, approval = ?8, logs = ?9 WHERE id = ?1",
        )?
        .execute(params![
            call.id,
            call.status.as_str(),
            json.output,
            json.error,
            call.started_at,
            call.finished_at,
            json.usage,
            json.approval,
            json.logs,
        ])?;
    if updated == 0 {
        return Err(super::Rejection::NotFound.into());
    }
    Ok(())
}

pub fn get(conn: &Connection, session: &str, id: &str) -> Result<Option<Call>> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM calls WHERE id = ?1 AND session = ?2"))?
        .query_row([id, session], from_row)
        .optional()?)
}

pub fn by_idempotency_key(conn: &Connection, session: &str, key: &str) -> Result<Option<Call>> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM calls WHERE session = ?1 AND idempotency_key = ?2"))?
        .query_row([session, key], from_row)
        .optional()?)
}

/// Calls of a session, oldest first, optionally of one status: the filed
/// ones through the index, then the unfiled tail (`store::filing`).
pub fn list(
    conn: &Connection,
    session: &str,
    status: Option<CallStatus>,
    after: &str,
    limit: u32,
) -> Result<Vec<Call>> {
    // The index's id only orders (column 15); `NOT INDEXED`: the tail is
    // found by rowid, never by scanning the id index.
    const LIST: &str = concat!(
        "SELECT c.id, c.session, c.tool, c.status, c.input, c.output, c.error, c.created_at, c.started_at, \
         c.finished_at, c.usage, c.approval, c.idempotency_key, c.logs, f.id \
         FROM calls_by_session f JOIN calls c ON c.rowid = f.row AND c.session = f.session \
         WHERE f.session = ?1 AND f.id > ?3 AND (?2 IS NULL OR c.status = ?2) \
         UNION ALL SELECT id, session, tool, status, input, output, error, created_at, started_at, \
         finished_at, usage, approval, idempotency_key, logs, id FROM calls NOT INDEXED WHERE ",
        filing::unfiled!("calls"),
        " AND session = ?1 AND id > ?3 AND (?2 IS NULL OR status = ?2) ORDER BY 15 LIMIT ?4"
    );
    let mut stmt = conn.prepare_cached(LIST)?;
    let rows = stmt.query_map(params![session, status.map(CallStatus::as_str), after, limit], from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Deletes every call of a session (with its session: nothing cascades).
pub fn delete_all(conn: &Connection, session: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM calls WHERE rowid IN (SELECT row FROM calls_by_session WHERE session = ?1)")?
        .execute([session])?;
    conn.prepare_cached(concat!("DELETE FROM calls WHERE ", filing::unfiled!("calls"), " AND session = ?1"))?
        .execute([session])?;
    conn.prepare_cached("DELETE FROM calls_by_session WHERE session = ?1")?.execute([session])?;
    filing::lower_marks(conn)?;
    Ok(())
}

/// Calls left `running` by a host that stopped: (session, call id, tool).
pub fn running(conn: &Connection) -> Result<Vec<(String, String, String)>> {
    let mut stmt = conn.prepare_cached("SELECT session, id, tool FROM calls WHERE status = 'running'")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Records a decision on a pending call, only if it is still pending
/// (two approvers racing: one wins, the other learns it lost).
pub fn decide(conn: &Connection, call: &Call) -> Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE calls SET status = ?2, error = ?3, started_at = ?4, finished_at = ?5, approval = ?6 \
             WHERE id = ?1 AND status = 'pending_approval'",
        )?
        .execute(params![
            call.id,
            call.status.as_str(),
            call.error.as_ref().map(to_json),
            call.started_at,
            call.finished_at,
            call.approval.as_ref().map(to_json),
        ])?;
    Ok(n == 1)
}

/// Pending calls of sessions not owned by `approver`, oldest first.
pub fn pending_for(conn: &Connection, approver: &str, after: &str, limit: u32) -> Result<Vec<(Call, String)>> {
    let cols: String = COLUMNS.split(", ").map(|c| format!("c.{c}")).collect::<Vec<_>>().join(", ");
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {cols}, c.principal FROM calls c JOIN sessions s ON s.id = c.session \
         WHERE c.status = 'pending_approval' AND s.principal != ?1 AND c.principal != ?1 AND c.id > ?2 \
         ORDER BY c.id LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![approver, after, limit], |r| Ok((from_row(r)?, r.get(14)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A call by id alone, with the principal who requested it.
pub fn get_any(conn: &Connection, id: &str) -> Result<Option<(Call, String)>> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS}, principal FROM calls WHERE id = ?1"))?
        .query_row([id], |r| Ok((from_row(r)?, r.get(14)?)))
        .optional()?)
}

/// Pending calls created before `cutoff` (RFC 3339, so strings compare as times).
pub fn pending_before(conn: &Connection, cutoff: &str) -> Result<Vec<Call>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM calls WHERE status = 'pending_approval' AND created_at < ?1 ORDER BY id LIMIT 1000"
    ))?;
    let rows = stmt.query_map([cutoff], from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
