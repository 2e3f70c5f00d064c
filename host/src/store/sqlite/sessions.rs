//! The `sessions` table.

use super::{Rejection, Result};
use crate::model::{Session, SessionUsage, ToolBoundary};
use rusqlite::{Connection, OptionalExtension, Row, params};
use std::collections::BTreeMap;

fn json<T: serde::de::DeserializeOwned>(text: String) -> rusqlite::Result<T> {
    serde_json::from_str(&text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

const COLUMNS: &str = "id, principal, created_at, expires_at, version, boundary, env, labels, \
    calls, wall_ms, fuel, state_bytes_written, egress_requests, egress_bytes";

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
            stored_bytes: 0,
        },
    })
}

pub fn insert(conn: &Connection, s: &Session) -> Result<()> {
    let tools = serde_json::to_string(&s.tools).expect("boundary serializes");
    let env = serde_json::to_string(&s.env).expect("a map of strings serializes");
    let labels = serde_json::to_string(&s.labels).expect("a map of strings serializes");
    conn.prepare_cached(
        "INSERT INTO sessions (id, principal, created_at, expires_at, version, boundary, env, labels) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![s.id, s.principal, s.created_at, s.expires_at, s.version, tools, env, labels])?;
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

/// A finished call: increments the version and adds its usage to the
/// session's totals, in one statement. NotFound if the session is gone.
pub fn finish_call(conn: &Connection, id: &str, u: &crate::model::Usage) -> Result<()> {
    // No `RETURNING`: nothing needs the new version, and it costs a
    // temporary table per call.
    let updated = conn
        .prepare_cached(
            "UPDATE sessions SET version = version + 1, calls = calls + 1, wall_ms = wall_ms + ?2, fuel = fuel + ?3, \
             state_bytes_written = state_bytes_written + ?4, egress_requests = egress_requests + ?5, \
             egress_bytes = egress_bytes + ?6 WHERE id = ?1",
        )?
        .execute(params![
            id,
            u.wall_ms as i64,
            u.fuel.min(i64::MAX as u64) as i64,
            u.state_bytes_written as i64,
            u.egress_requests as i64,
            u.egress_bytes as i64
        ])?;
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

/// Deletes the session with its messages, state and calls (the audit stays).
pub fn delete(conn: &Connection, id: &str) -> Result<bool> {
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

/// Bytes the session keeps: tool state (keys and values) and messages.
pub fn stored_bytes(conn: &Connection, id: &str) -> Result<u64> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT (SELECT COALESCE(SUM(LENGTH(CAST(key AS BLOB)) + LENGTH(value)), 0) FROM tool_state WHERE session = ?1) \
             + (SELECT COALESCE(SUM(LENGTH(CAST(content AS BLOB)) + COALESCE(LENGTH(CAST(metadata AS BLOB)), 0)), 0) FROM messages WHERE session = ?1)",
        )?
        .query_row([id], |r| r.get(0))?;
    Ok(n as u64)
}
