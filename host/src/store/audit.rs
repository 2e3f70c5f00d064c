//! The `audit` table: a hash chain per session (contract §9).
//!
//! `hash = sha256(prev_hash || canonical JSON of the event without hash)`;
//! canonical JSON is compact with keys sorted (serde_json's default map is
//! ordered). The first event of a session chains to [`GENESIS`]. Events are
//! appended in the same transaction as the change they record.

use super::Result;
use crate::model::AuditEvent;
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn from_row(r: &Row) -> rusqlite::Result<AuditEvent> {
    let data: String = r.get(6)?;
    Ok(AuditEvent {
        session: r.get(0)?,
        seq: r.get(1)?,
        at: r.get(2)?,
        kind: r.get(3)?,
        actor: r.get(4)?,
        call: r.get(5)?,
        data: serde_json::from_str(&data).unwrap_or(Value::Null),
        prev_hash: r.get(7)?,
        hash: r.get(8)?,
    })
}

/// The hash of an event from its fields (all but `hash`).
pub fn hash_of(e: &AuditEvent) -> String {
    let mut body = json!({
        "seq": e.seq, "at": e.at, "session": e.session, "kind": e.kind,
        "actor": e.actor, "data": e.data, "prev_hash": e.prev_hash,
    });
    if let Some(call) = &e.call {
        body["call"] = Value::String(call.clone());
    }
    let mut h = Sha256::new();
    h.update(e.prev_hash.as_bytes());
    h.update(serde_json::to_vec(&body).expect("json serializes"));
    hex::encode(h.finalize())
}

/// Appends an event to its session's chain.
pub fn append(
    conn: &Connection,
    session: &str,
    kind: &str,
    actor: &str,
    call: Option<&str>,
    data: Value,
) -> Result<AuditEvent> {
    let last: Option<(i64, String)> = conn
        .prepare_cached("SELECT seq, hash FROM audit WHERE session = ?1 ORDER BY seq DESC LIMIT 1")?
        .query_row([session], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (seq, prev_hash) = last.map(|(s, h)| (s + 1, h)).unwrap_or((1, GENESIS.to_string()));
    let mut event = AuditEvent {
        seq,
        at: crate::util::now_rfc3339(),
        session: session.into(),
        kind: kind.into(),
        actor: actor.into(),
        call: call.map(str::to_string),
        data,
        prev_hash,
        hash: String::new(),
    };
    event.hash = hash_of(&event);
    conn.prepare_cached(
        "INSERT INTO audit (session, seq, at, kind, actor, call, data, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        event.session,
        event.seq,
        event.at,
        event.kind,
        event.actor,
        event.call,
        event.data.to_string(),
        event.prev_hash,
        event.hash
    ])?;
    Ok(event)
}

pub fn list(conn: &Connection, session: &str, after: i64, limit: u32) -> Result<Vec<AuditEvent>> {
    let mut stmt = conn.prepare_cached(
        "SELECT session, seq, at, kind, actor, call, data, prev_hash, hash FROM audit \
         WHERE session = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![session, after, limit], from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A break in a chain: the first record that does not verify.
#[derive(Debug, Clone, PartialEq)]
pub struct Break {
    pub session: String,
    pub seq: i64,
    pub reason: String,
}

/// Verifies every session's chain; returns the number of events checked or
/// the first broken record.
pub fn verify_all(conn: &Connection) -> Result<std::result::Result<u64, Break>> {
    let mut stmt = conn.prepare(
        "SELECT session, seq, at, kind, actor, call, data, prev_hash, hash FROM audit ORDER BY session, seq",
    )?;
    let mut rows = stmt.query([])?;
    let (mut checked, mut current, mut expect_seq, mut expect_prev) = (0u64, String::new(), 1i64, GENESIS.to_string());
    while let Some(row) = rows.next()? {
        let e = from_row(row)?;
        if e.session != current {
            (current, expect_seq, expect_prev) = (e.session.clone(), 1, GENESIS.to_string());
        }
        let fail = |reason: &str| Ok(Err(Break { session: e.session.clone(), seq: e.seq, reason: reason.into() }));
        if e.seq != expect_seq {
            return fail(&format!("expected seq {expect_seq}: a record is missing or reordered"));
        }
        if e.prev_hash != expect_prev {
            return fail("prev_hash does not match the previous record's hash");
        }
        if hash_of(&e) != e.hash {
            return fail("hash does not match the record's contents");
        }
        (expect_seq, expect_prev) = (e.seq + 1, e.hash.clone());
        checked += 1;
    }
    Ok(Ok(checked))
}
