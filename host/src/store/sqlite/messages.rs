//! The `messages` table: a session's conversation memory.

use super::Result;
use crate::model::Message;
use rusqlite::{Connection, Row, params};

fn from_row(r: &Row) -> rusqlite::Result<Message> {
    let metadata: Option<String> = r.get(3)?;
    Ok(Message {
        seq: r.get(0)?,
        role: r.get(1)?,
        content: r.get(2)?,
        metadata: metadata.and_then(|m| serde_json::from_str(&m).ok()),
        created_at: r.get(4)?,
    })
}

/// Appends a message with the next sequence number of its session.
pub fn append(
    conn: &Connection,
    session: &str,
    role: &str,
    content: &str,
    metadata: Option<&serde_json::Value>,
) -> Result<Message> {
    let seq: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) + 1 FROM messages WHERE session = ?1")?
        .query_row([session], |r| r.get(0))?;
    let created_at = crate::util::now_rfc3339();
    let meta = metadata.map(|m| m.to_string());
    conn.prepare_cached(
        "INSERT INTO messages (session, seq, role, content, metadata, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![session, seq, role, content, meta, created_at])?;
    Ok(Message { seq, role: role.into(), content: content.into(), metadata: metadata.cloned(), created_at })
}

/// Messages after `after`, oldest first.
pub fn list(conn: &Connection, session: &str, after: i64, limit: u32) -> Result<Vec<Message>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, role, content, metadata, created_at FROM messages WHERE session = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![session, after, limit], from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The newest `limit` messages, oldest first (what `session.history` returns).
pub fn newest(conn: &Connection, session: &str, limit: u32) -> Result<Vec<Message>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, role, content, metadata, created_at FROM \
         (SELECT * FROM messages WHERE session = ?1 ORDER BY seq DESC LIMIT ?2) ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![session, limit], from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
