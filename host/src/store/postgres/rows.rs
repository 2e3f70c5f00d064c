//! Rows to records, column lists in the order the conversions read them.
//! JSON columns hold the same text as SQLite's (`sqlite::calls::Encoded`).

use crate::model::{AuditEvent, Call, CallStatus, Message, Session, SessionUsage};
use serde_json::Value;
use tokio_postgres::Row;

type R<T> = Result<T, tokio_postgres::Error>;

pub const SESSION: &str = "id, principal, created_at, expires_at, version, boundary, env, labels, \
    calls, wall_ms, fuel, state_bytes_written, egress_requests, egress_bytes, \
    memory_mib_seconds, stored_bytes, stored_since, stored_mib_hours";

pub const CALL: &str = "id, session, tool, status, input, output, error, created_at, started_at, \
    finished_at, usage, approval, idempotency_key, logs";

pub const MESSAGE: &str = "seq, role, content, metadata, created_at";

pub const AUDIT: &str = "session, seq, at, kind, actor, call, data, prev_hash, hash";

/// A JSON column that our own code wrote; unreadable text reads as absent.
fn json<T: serde::de::DeserializeOwned>(text: Option<String>) -> Option<T> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

fn count(r: &Row, i: usize) -> R<u64> {
    Ok(r.try_get::<_, i64>(i)?.max(0) as u64)
}

pub fn session(r: &Row) -> R<Session> {
    Ok(Session {
        id: r.try_get(0)?,
        principal: r.try_get(1)?,
        created_at: r.try_get(2)?,
        expires_at: r.try_get(3)?,
        version: r.try_get(4)?,
        tools: json(r.try_get(5)?).unwrap_or_default(),
        env: json(r.try_get(6)?).unwrap_or_default(),
        labels: json(r.try_get(7)?).unwrap_or_default(),
        usage: SessionUsage {
            calls: count(r, 8)?,
            wall_ms: count(r, 9)?,
            fuel: count(r, 10)?,
            state_bytes_written: count(r, 11)?,
            egress_requests: count(r, 12)?,
            egress_bytes: count(r, 13)?,
            memory_mib_seconds: r.try_get(14)?,
            stored_bytes: count(r, 15)?,
            stored_mib_hours: crate::model::stored_mib_hours(
                r.try_get(17)?,
                r.try_get(15)?,
                r.try_get(16)?,
                crate::util::unix_now_ms(),
            ),
            ..SessionUsage::default()
        },
    })
}

/// A line of `Store::usage`, its columns in `ops::usage`'s order.
pub fn principal_usage(r: &Row) -> R<crate::store::PrincipalUsage> {
    Ok(crate::store::PrincipalUsage {
        principal: r.try_get(0)?,
        sessions: count(r, 1)?,
        deleted_sessions: count(r, 2)?,
        usage: SessionUsage {
            calls: count(r, 3)?,
            wall_ms: count(r, 4)?,
            fuel: count(r, 5)?,
            state_bytes_written: count(r, 6)?,
            egress_requests: count(r, 7)?,
            egress_bytes: count(r, 8)?,
            memory_mib_seconds: r.try_get(9)?,
            stored_mib_hours: r.try_get(10)?,
            stored_bytes: count(r, 11)?,
            ..SessionUsage::default()
        },
    })
}

pub fn call(r: &Row) -> R<Call> {
    let status: String = r.try_get(3)?;
    Ok(Call {
        id: r.try_get(0)?,
        session: r.try_get(1)?,
        tool: r.try_get(2)?,
        status: CallStatus::parse(&status).unwrap_or(CallStatus::Interrupted),
        input: json(r.try_get(4)?).unwrap_or(Value::Null),
        output: json(r.try_get(5)?),
        error: json(r.try_get(6)?),
        created_at: r.try_get(7)?,
        started_at: r.try_get(8)?,
        finished_at: r.try_get(9)?,
        usage: json(r.try_get(10)?).unwrap_or_default(),
        approval: json(r.try_get(11)?),
        idempotency_key: r.try_get(12)?,
        logs: json(r.try_get(13)?).unwrap_or_default(),
    })
}

pub fn message(r: &Row) -> R<Message> {
    Ok(Message {
        seq: r.try_get(0)?,
        role: r.try_get(1)?,
        content: r.try_get(2)?,
        metadata: json(r.try_get(3)?),
        created_at: r.try_get(4)?,
    })
}

pub fn audit(r: &Row) -> R<AuditEvent> {
    let data: String = r.try_get(6)?;
    Ok(AuditEvent {
        session: r.try_get(0)?,
        seq: r.try_get(1)?,
        at: r.try_get(2)?,
        kind: r.try_get(3)?,
        actor: r.try_get(4)?,
        call: r.try_get(5)?,
        data: serde_json::from_str(&data).unwrap_or(Value::Null),
        prev_hash: r.try_get(7)?,
        hash: r.try_get(8)?,
    })
}

pub fn all<T>(rows: Vec<Row>, f: fn(&Row) -> R<T>) -> R<Vec<T>> {
    rows.iter().map(f).collect()
}
