//! The `sessions` table.

use super::{Rejection, Result};
use crate::model::{BYTE_MS_PER_MIB_HOUR, Session, SessionUsage, ToolBoundary};
use crate::store::{PrincipalUsage, UsageQuery};
use rusqlite::{Connection, OptionalExtension, Row, params};
use std::collections::BTreeMap;

fn json<T: serde::de::DeserializeOwned>(text: String) -> rusqlite::Result<T> {
    serde_json::from_str(&text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

const COLUMNS: &str = "id, principal, created_at, expires_at, version, boundary, env, labels, \
    calls, wall_ms, fuel, state_bytes_written, egress_requests, egress_bytes, \
    memory_mib_seconds, stored_bytes, stored_since, stored_mib_hours";

fn from_row(r: &Row) -> rusqlite::Result<Session> {
    Ok(Session {
        id: r.get(0)?,
        principal: r.get(1)?,
        created_at: r.get(2)?,
        expires_at: r.get(3)?,
        version: r.get(4)?,
        tools: json(r.get(5)?)?,
        env: json(r.get(6)?)?,
        labels: json(r.get(7)?)?,
        usage: SessionUsage {
            calls: r.get(8)?,
            wall_ms: r.get(9)?,
            fuel: r.get(10)?,
            state_bytes_written: r.get(11)?,
            egress_requests: r.get(12)?,
            egress_bytes: r.get(13)?,
            memory_mib_seconds: r.get(14)?,
            stored_bytes: r.get::<_, i64>(15)?.max(0) as u64,
            stored_mib_hours: crate::model::stored_mib_hours(
                r.get(17)?,
                r.get(15)?,
                r.get(16)?,
                crate::util::unix_now_ms(),
            ),
            ..SessionUsage::default()
        },
    })
}

pub fn insert(conn: &Connection, s: &Session) -> Result<()> {
    let tools = serde_json::to_string(&s.tools).expect("boundary serializes");
    let env = serde_json::to_string(&s.env).expect("a map of strings serializes");
    let labels = serde_json::to_string(&s.labels).expect("a map of strings serializes");
    conn.prepare_cached(
        "INSERT INTO sessions (id, principal, created_at, expires_at, version, boundary, env, labels, stored_since) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        s.id,
        s.principal,
        s.created_at,
        s.expires_at,
        s.version,
        tools,
        env,
        labels,
        crate::util::unix_now_ms()
    ])?;
    Ok(())
}

pub fn get(conn: &Connection, id: &str) -> Result<Option<Session>> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM sessions WHERE id = ?1"))?
        .query_row([id], from_row)
        .optional()?)
}

/// Sessions oldest first (ids are time-ordered), for one principal or all.
pub fn list(conn: &Connection, principal: Option<&str>, after: &str, limit: u32) -> Result<Vec<Session>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM sessions WHERE (?1 IS NULL OR principal = ?1) AND id > ?2 ORDER BY id LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![principal, after, limit], from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Checks `If-Match` inside the transaction that will change the session.
pub fn check_version(conn: &Connection, id: &str, expected: Option<i64>) -> Result<()> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let current: Option<i64> =
        conn.prepare_cached("SELECT version FROM sessions WHERE id = ?1")?.query_row([id], |r| r.get(0)).optional()?;
    match current {
        None => Err(Rejection::NotFound.into()),
        Some(v) if v != expected => Err(Rejection::StaleVersion { current: v }.into()),
        Some(_) => Ok(()),
    }
}

/// Increments the version; returns the new one. NotFound if the session is gone.
pub fn bump_version(conn: &Connection, id: &str) -> Result<i64> {
    conn.prepare_cached("UPDATE sessions SET version = version + 1 WHERE id = ?1 RETURNING version")?
        .query_row([id], |r| r.get(0))
        .optional()?
        .ok_or(Rejection::NotFound.into())
}

/// Storage-time counted up to `?2` (unix ms), then `?3` bytes more kept:
/// the SET clause of every change to what a session keeps. Every
/// right-hand side reads the row as it was.
/// (A macro, so each statement is one literal: no text is built per call.)
macro_rules! keep {
    () => {
        "stored_mib_hours = stored_mib_hours + stored_bytes * MAX(?2 - stored_since, 0) / ?4, \
         stored_bytes = MAX(stored_bytes + ?3, 0), stored_since = MAX(stored_since, ?2)"
    };
}

/// A finished call: increments the version and adds its usage to the
/// session's totals, in one statement. NotFound if the session is gone.
pub fn finish_call(conn: &Connection, id: &str, u: &crate::model::Usage) -> Result<()> {
    // No `RETURNING`: nothing needs the new version, and it costs a
    // temporary table per call.
    let updated = conn
        .prepare_cached(concat!(
            "UPDATE sessions SET version = version + 1, calls = calls + 1, wall_ms = wall_ms + ?5, fuel = fuel + ?6, \
             state_bytes_written = state_bytes_written + ?7, egress_requests = egress_requests + ?8, \
             egress_bytes = egress_bytes + ?9, memory_mib_seconds = memory_mib_seconds + ?10, ",
            keep!(),
            " WHERE id = ?1"
        ))?
        .execute(params![
            id,
            crate::util::unix_now_ms(),
            u.stored_bytes_delta,
            BYTE_MS_PER_MIB_HOUR,
            u.wall_ms as i64,
            u.fuel.min(i64::MAX as u64) as i64,
            u.state_bytes_written as i64,
            u.egress_requests as i64,
            u.egress_bytes as i64,
            crate::model::memory_mib_seconds(u),
        ])?;
    if updated == 0 {
        return Err(Rejection::NotFound.into());
    }
    Ok(())
}

/// An appended message of `bytes`: increments the version and counts what
/// the session keeps. NotFound if the session is gone.
pub fn append_message(conn: &Connection, id: &str, bytes: usize) -> Result<()> {
    let updated = conn
        .prepare_cached(concat!("UPDATE sessions SET version = version + 1, ", keep!(), " WHERE id = ?1"))?
        .execute(params![id, crate::util::unix_now_ms(), bytes as i64, BYTE_MS_PER_MIB_HOUR])?;
    if updated == 0 {
        return Err(Rejection::NotFound.into());
    }
    Ok(())
}

pub fn update_boundary(conn: &Connection, id: &str, tools: &BTreeMap<String, ToolBoundary>) -> Result<()> {
    let text = serde_json::to_string(tools).expect("boundary serializes");
    conn.prepare_cached("UPDATE sessions SET boundary = ?2 WHERE id = ?1")?.execute(params![id, text])?;
    Ok(())
}

/// Deletes the session with its messages, state and calls (the audit
/// stays, and its final usage in `ended_sessions`, for usage reports).
pub fn delete(conn: &Connection, id: &str) -> Result<bool> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO ended_sessions (id, principal, created_at, ended_at, calls, wall_ms, fuel, \
         state_bytes_written, egress_requests, egress_bytes, memory_mib_seconds, stored_mib_hours) \
         SELECT id, principal, created_at, ?2, calls, wall_ms, fuel, state_bytes_written, egress_requests, \
         egress_bytes, memory_mib_seconds, stored_mib_hours + stored_bytes * MAX(?3 - stored_since, 0) / ?4 \
         FROM sessions WHERE id = ?1",
    )?
    .execute(params![id, crate::util::now_rfc3339(), crate::util::unix_now_ms(), BYTE_MS_PER_MIB_HOUR])?;
    if conn.prepare_cached("DELETE FROM sessions WHERE id = ?1")?.execute([id])? == 0 {
        return Ok(false);
    }
    super::calls::delete_all(conn, id)?;
    Ok(true)
}

pub fn exists(conn: &Connection, id: &str) -> Result<bool> {
    Ok(conn.prepare_cached("SELECT 1 FROM sessions WHERE id = ?1")?.query_row([id], |_| Ok(())).optional()?.is_some())
}

/// Ids of sessions whose `expires_at` is before `now` (RFC 3339 strings compare as times).
pub fn expired(conn: &Connection, now: &str) -> Result<Vec<String>> {
    let mut stmt =
        conn.prepare_cached("SELECT id FROM sessions WHERE expires_at IS NOT NULL AND expires_at < ?1 LIMIT 1000")?;
    let rows = stmt.query_map([now], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The sessions `q` picks, live and deleted, summed per principal.
pub fn usage(conn: &Connection, q: &UsageQuery) -> Result<Vec<PrincipalUsage>> {
    const PICK: &str = "(?1 IS NULL OR principal = ?1) AND (?2 IS NULL OR created_at >= ?2) \
                        AND (?3 IS NULL OR created_at < ?3)";
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT principal, COUNT(*), SUM(ended), SUM(calls), SUM(wall_ms), SUM(fuel), SUM(state_bytes_written), \
         SUM(egress_requests), SUM(egress_bytes), SUM(memory_mib_seconds), SUM(stored_mib_hours), SUM(stored_bytes) \
         FROM (SELECT principal, 0 AS ended, calls, wall_ms, fuel, state_bytes_written, egress_requests, egress_bytes, \
               memory_mib_seconds, stored_mib_hours + stored_bytes * MAX(?4 - stored_since, 0) / ?5 AS stored_mib_hours, \
               stored_bytes FROM sessions WHERE {PICK} \
               UNION ALL \
               SELECT principal, 1, calls, wall_ms, fuel, state_bytes_written, egress_requests, egress_bytes, \
               memory_mib_seconds, stored_mib_hours, 0 FROM ended_sessions WHERE {PICK}) \
         GROUP BY principal ORDER BY principal"
    ))?;
    let count = |r: &Row, i| r.get::<_, i64>(i).map(|n| n.max(0) as u64);
    let rows =
        stmt.query_map(params![q.principal, q.from, q.to, crate::util::unix_now_ms(), BYTE_MS_PER_MIB_HOUR], |r| {
            Ok(PrincipalUsage {
                principal: r.get(0)?,
                sessions: count(r, 1)?,
                deleted_sessions: count(r, 2)?,
                usage: SessionUsage {
                    calls: count(r, 3)?,
                    wall_ms: count(r, 4)?,
                    fuel: count(r, 5)?,
                    state_bytes_written: count(r, 6)?,
                    egress_requests: count(r, 7)?,
                    egress_bytes: count(r, 8)?,
                    memory_mib_seconds: r.get(9)?,
                    stored_mib_hours: r.get(10)?,
                    stored_bytes: count(r, 11)?,
                    ..SessionUsage::default()
                },
            })
        })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
