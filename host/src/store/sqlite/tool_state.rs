//! The `tool_state` table: each tool's key-value state per session.
//!
//! A call never writes here directly: its writes are buffered in memory and
//! applied by [`apply`] in the transaction that records the call's success.

use super::Result;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeMap;

pub fn get(conn: &Connection, session: &str, tool: &str, key: &str) -> Result<Option<Vec<u8>>> {
    Ok(conn
        .prepare_cached("SELECT value FROM tool_state WHERE session = ?1 AND tool = ?2 AND key = ?3")?
        .query_row(params![session, tool, key], |r| r.get(0))
        .optional()?)
}

/// Keys starting with `prefix`, in order.
pub fn keys(conn: &Connection, session: &str, tool: &str, prefix: &str) -> Result<Vec<String>> {
    let mut stmt =
        conn.prepare_cached("SELECT key FROM tool_state WHERE session = ?1 AND tool = ?2 AND key >= ?3 ORDER BY key")?;
    let mut rows = stmt.query(params![session, tool, prefix])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let key: String = row.get(0)?;
        if !key.starts_with(prefix) {
            break;
        }
        out.push(key);
    }
    Ok(out)
}

/// Bytes used (keys plus values), the measure `state_kb` limits.
pub fn size(conn: &Connection, session: &str, tool: &str) -> Result<u64> {
    let n: i64 = conn
        .prepare_cached("SELECT COALESCE(SUM(LENGTH(CAST(key AS BLOB)) + LENGTH(value)), 0) FROM tool_state WHERE session = ?1 AND tool = ?2")?
        .query_row(params![session, tool], |r| r.get(0))?;
    Ok(n as u64)
}

pub fn all(conn: &Connection, session: &str, tool: &str) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut stmt =
        conn.prepare_cached("SELECT key, value FROM tool_state WHERE session = ?1 AND tool = ?2 ORDER BY key")?;
    let rows = stmt.query_map(params![session, tool], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Applies a call's buffered writes: `Some` sets, `None` deletes.
pub fn apply(conn: &Connection, session: &str, tool: &str, writes: &BTreeMap<String, Option<Vec<u8>>>) -> Result<()> {
    let mut set = conn.prepare_cached(
        "INSERT INTO tool_state (session, tool, key, value) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (session, tool, key) DO UPDATE SET value = excluded.value",
    )?;
    let mut del = conn.prepare_cached("DELETE FROM tool_state WHERE session = ?1 AND tool = ?2 AND key = ?3")?;
    for (key, value) in writes {
        match value {
            Some(v) => set.execute(params![session, tool, key, v])?,
            None => del.execute(params![session, tool, key])?,
        };
    }
    Ok(())
}
