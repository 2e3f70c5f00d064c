//! Each session's hash chain (contract §9) in PostgreSQL: the same events,
//! hashes and verification as SQLite's (`sqlite::audit`), appended under
//! a lock on the chain's head row.

use super::{Fail, rows};
use crate::events::Event;
use crate::model::AuditEvent;
use crate::store::chain::{Break, GENESIS, Verifier, hash_with_data};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use tokio_postgres::types::ToSql;

pub const HEAD: &str = "INSERT INTO audit_heads (session, seq, hash) VALUES ($1, 0, $2) \
     ON CONFLICT (session) DO UPDATE SET seq = audit_heads.seq RETURNING seq, hash";
/// The events and the head's move, one statement.
pub const EXTEND: &str = "WITH appended AS (INSERT INTO audit (session, seq, at, kind, actor, call, data, \
     prev_hash, hash) SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], \
     $7::text[], $8::text[], $9::text[])) UPDATE audit_heads SET seq = $10, hash = $11 WHERE session = $1";

/// One event to append: who, for which call, what.
pub struct Note<'a> {
    pub actor: &'a str,
    pub call: Option<&'a str>,
    pub event: &'a Event,
}

/// Appends `notes` to `session`'s chain, in order, inside `tx`: [`head`],
/// then [`extend`]. Three statements whatever the number of events.
pub async fn append(tx: &impl GenericClient, session: &str, notes: &[Note<'_>]) -> Result<(), Fail> {
    if notes.is_empty() {
        return Ok(());
    }
    let head = head(tx, session).await?;
    extend(tx, session, head, notes).await
}

/// The chain's head (last seq and hash; genesis for a new chain), its row
/// locked until `tx` ends: a concurrent append to the same chain waits and
/// then continues from what this transaction appends.
pub async fn head(tx: &impl GenericClient, session: &str) -> Result<(i64, String), Fail> {
    let st = tx.prepare_cached(HEAD).await?;
    let row = tx.query_one(&st, &[&session, &GENESIS]).await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// Writes `notes` after `head` (taken by [`head`] in this transaction) and
/// moves the head, in one statement.
pub async fn extend(
    tx: &impl GenericClient,
    session: &str,
    head: (i64, String),
    notes: &[Note<'_>],
) -> Result<(), Fail> {
    if notes.is_empty() {
        return Ok(());
    }
    let (mut seq, mut prev) = head;
    let n = notes.len();
    let (mut seqs, mut ats, mut kinds, mut actors, mut calls, mut datas, mut prevs, mut hashes) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for note in notes {
        seq += 1;
        let mut e = AuditEvent {
            seq,
            at: crate::util::now_rfc3339(),
            session: session.to_string(),
            kind: note.event.kind().to_string(),
            actor: note.actor.to_string(),
            call: note.call.map(str::to_string),
            data: Value::Null, // hashed and stored from the serialized data
            prev_hash: prev,
            hash: String::new(),
        };
        e.hash = hash_with_data(&e, note.event.data());
        prev = e.hash.clone();
        seqs.push(e.seq);
        ats.push(e.at);
        kinds.push(e.kind);
        actors.push(e.actor);
        calls.push(e.call);
        datas.push(note.event.data());
        prevs.push(e.prev_hash);
        hashes.push(e.hash);
    }
    let extend = tx.prepare_cached(EXTEND).await?;
    let params: [&(dyn ToSql + Sync); 11] =
        [&session, &seqs, &ats, &kinds, &actors, &calls, &datas, &prevs, &hashes, &seq, &prev];
    tx.execute(&extend, &params).await?;
    Ok(())
}

/// A session's events after `after`, in chain order.
pub async fn list(c: &impl GenericClient, session: &str, after: i64, limit: u32) -> Result<Vec<AuditEvent>, Fail> {
    let st = c
        .prepare_cached(&format!(
            "SELECT {} FROM audit WHERE session = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            rows::AUDIT
        ))
        .await?;
    let found = c.query(&st, &[&session, &after, &(limit as i64)]).await?;
    Ok(rows::all(found, rows::audit)?)
}

/// Verifies every session's chain, a page at a time; the number of events
/// checked or the first broken record (the same checks as SQLite's).
pub async fn verify_all(c: &impl GenericClient) -> crate::store::Result<std::result::Result<u64, Break>> {
    let page = c
        .prepare(&format!(
            "SELECT {} FROM audit WHERE (session, seq) > ($1, $2) ORDER BY session, seq LIMIT 5000",
            rows::AUDIT
        ))
        .await
        .map_err(Fail::from)?;
    let mut chains = Verifier::default();
    let mut from = (String::new(), 0i64);
    loop {
        let found = c.query(&page, &[&from.0, &from.1]).await.map_err(Fail::from)?;
        if found.is_empty() {
            return Ok(Ok(chains.checked()));
        }
        for row in &found {
            let e = rows::audit(row).map_err(Fail::from)?;
            if let Err(broken) = chains.check(&e) {
                return Ok(Err(broken));
            }
            from = (e.session, e.seq);
        }
    }
}
