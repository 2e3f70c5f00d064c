//! The `audit` table: a hash chain per session (contract §9; the hash and
//! the checks are `store::chain`'s). Events are appended in the same
//! transaction as the change they record.
//!
//! The writer keeps each recently used chain's head (last seq and hash) in
//! memory ([`Heads`]), so an append is one INSERT instead of a SELECT and an
//! INSERT. A head learned inside a transaction becomes trusted only when
//! that transaction commits.
//!
//! What an event holds is `crate::events`' business: this module only
//! chains, stores, lists and verifies.

use super::{Result, Tx, filing};
use crate::events::Event;
use crate::model::AuditEvent;
pub use crate::store::chain::{Break, GENESIS, hash_of};
use crate::store::chain::{Verifier, hash_with_data};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::Value;
use std::collections::HashMap;

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

/// Chain heads (last seq, hash) as the writer knows them: committed, and
/// pending in the open transaction (per batch and per job, following the
/// savepoints).
///
/// While `complete`, `committed` holds the head of every chain with an
/// event not yet filed (`store::filing`), so a chain it does not know is
/// found in `audit_by_session` alone; otherwise the unfiled tail of the
/// log is scanned too. Heads are dropped only right after a filing that
/// filed every event.
#[derive(Default)]
pub struct Heads {
    committed: HashMap<String, (i64, String)>,
    batch: HashMap<String, (i64, String)>,
    job: HashMap<String, (i64, String)>,
    complete: bool,
}

/// Heads kept after a complete filing; past this the cache starts over (it
/// only saves a SELECT per append).
const MAX_HEADS: usize = 4096;

impl Heads {
    /// Knowing no head, with every event filed.
    pub(super) fn all_filed() -> Heads {
        Heads { complete: true, ..Heads::default() }
    }

    /// Every event is filed: any head can be found in the index again.
    pub(super) fn filed_all(&mut self) {
        if self.committed.len() > MAX_HEADS {
            self.committed.clear();
        }
        self.complete = true;
    }

    fn get(&self, session: &str) -> Option<&(i64, String)> {
        self.job.get(session).or_else(|| self.batch.get(session)).or_else(|| self.committed.get(session))
    }

    /// The job's savepoint was released: its appends belong to the batch.
    pub(super) fn release_job(&mut self) {
        self.batch.extend(self.job.drain());
    }

    /// The job's savepoint was rolled back: its appends never happened.
    pub(super) fn rollback_job(&mut self) {
        self.job.clear();
    }

    /// The transaction committed: its heads are now the database's.
    pub(super) fn commit(&mut self) {
        self.committed.extend(self.batch.drain());
    }

    /// Something went wrong mid-transaction: trust nothing kept in memory.
    pub(super) fn forget(&mut self) {
        *self = Heads::default();
    }
}

/// A chain's last event, from the index alone (all its events filed); a
/// macro so that `HEAD` can include it.
macro_rules! filed_head {
    () => {
        "SELECT a.seq, a.hash FROM audit_by_session f JOIN audit a ON a.rowid = f.row AND a.session = f.session \
         WHERE f.session = ?1 ORDER BY f.seq DESC LIMIT 1"
    };
}
const FILED_HEAD: &str = filed_head!();
/// A chain's last event, from the index and the unfiled tail.
const HEAD: &str = concat!(
    "SELECT seq, hash FROM (SELECT * FROM (",
    filed_head!(),
    ") UNION ALL SELECT seq, hash FROM audit WHERE ",
    filing::unfiled!("audit"),
    " AND session = ?1) ORDER BY seq DESC LIMIT 1"
);

/// Appends an event to its session's chain; returns its seq.
pub fn append(tx: &Tx, session: &str, actor: &str, call: Option<&str>, event: &Event) -> Result<i64> {
    let data = event.data();
    let (known, complete) = {
        let chains = tx.chains.borrow();
        (chains.get(session).cloned(), chains.complete)
    };
    let last = match known {
        Some(head) => Some(head),
        None => tx
            .prepare_cached(if complete { FILED_HEAD } else { HEAD })?
            .query_row([session], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?,
    };
    let (seq, prev_hash) = last.map(|(s, h)| (s + 1, h)).unwrap_or((1, GENESIS.to_string()));
    let mut event = AuditEvent {
        seq,
        at: crate::util::now_rfc3339(),
        session: session.into(),
        kind: event.kind().into(),
        actor: actor.into(),
        call: call.map(str::to_string),
        data: Value::Null, // stored and hashed from `data`, already serialized
        prev_hash,
        hash: String::new(),
    };
    event.hash = hash_with_data(&event, data);
    tx.prepare_cached(
        "INSERT INTO audit (session, seq, at, kind, actor, call, data, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        event.session,
        event.seq,
        event.at,
        event.kind,
        event.actor,
        event.call,
        data,
        event.prev_hash,
        event.hash
    ])?;
    tx.chains.borrow_mut().job.insert(event.session, (event.seq, event.hash));
    Ok(seq)
}

/// Appends `events`, in order, to one session's chain: as many links.
/// (One multi-row INSERT instead was measured and saved nothing that
/// showed: an append costs its row, hash and index entries.)
pub fn append_all(tx: &Tx, session: &str, actor: &str, call: Option<&str>, events: &[&Event]) -> Result<()> {
    for event in events {
        append(tx, session, actor, call, event)?;
    }
    Ok(())
}

/// A session's events after `after`, in chain order: the filed ones through
/// the index, then the unfiled tail. Each event is listed as stored (the
/// index's seq is only the order), so tampering shows in what is listed.
pub fn list(conn: &Connection, session: &str, after: i64, limit: u32) -> Result<Vec<AuditEvent>> {
    const LIST: &str = concat!(
        "SELECT a.session, a.seq, a.at, a.kind, a.actor, a.call, a.data, a.prev_hash, a.hash, f.seq \
         FROM audit_by_session f JOIN audit a ON a.rowid = f.row AND a.session = f.session WHERE f.session = ?1 AND f.seq > ?2 \
         UNION ALL SELECT session, seq, at, kind, actor, call, data, prev_hash, hash, seq FROM audit \
         WHERE ",
        filing::unfiled!("audit"),
        " AND session = ?1 AND seq > ?2 ORDER BY 10 LIMIT ?3"
    );
    let mut stmt = conn.prepare_cached(LIST)?;
    let rows = stmt.query_map(params![session, after, limit], from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Verifies every session's chain; returns the number of events checked or
/// the first broken record.
pub fn verify_all(conn: &Connection) -> Result<std::result::Result<u64, Break>> {
    let mut stmt = conn.prepare(
        "SELECT session, seq, at, kind, actor, call, data, prev_hash, hash FROM audit ORDER BY session, seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut chains = Verifier::default();
    while let Some(row) = rows.next()? {
        if let Err(broken) = chains.check(&from_row(row)?) {
            return Ok(Err(broken));
        }
    }
    Ok(Ok(chains.checked()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::{Db, Durability, Link, Rejection, StoreError};
    use serde_json::json;
    use sha2::{Digest, Sha256};

    fn event(call: Option<&str>, actor: &str, data: Value) -> AuditEvent {
        AuditEvent {
            seq: 7,
            at: "2026-11-26T10:00:00.123Z".into(),
            session: "s1".into(),
            kind: "call_finished".into(),
            actor: actor.into(),
            call: call.map(str::to_string),
            data,
            prev_hash: GENESIS.into(),
            hash: String::new(),
        }
    }

    /// The hand-written canonical form is byte for byte serde_json's sorted
    /// map, the form every chain written so far was hashed with.
    #[test]
    fn canonical_form_is_sorted_compact_json() {
        let cases = [
            event(Some("c1"), "alice", json!({"b": 1, "a": [true, null, 1.5]})),
            event(None, "bulkhead", json!({})),
            event(Some("c\"2\\"), "ünï \u{7} \n tab\t", json!({"text": "\u{1f600} \"quoted\""})),
        ];
        for e in cases {
            let mut map = json!({
                "seq": e.seq, "at": e.at, "session": e.session, "kind": e.kind,
                "actor": e.actor, "data": e.data, "prev_hash": e.prev_hash,
            });
            if let Some(call) = &e.call {
                map["call"] = Value::String(call.clone());
            }
            let mut h = Sha256::new();
            h.update(e.prev_hash.as_bytes());
            h.update(serde_json::to_vec(&map).unwrap());
            assert_eq!(hash_of(&e), hex::encode(h.finalize()), "{e:?}");
        }
    }

    /// The head lookup used when the writer cannot trust its cache (after an
    /// error) finds a chain's last event in the unfiled tail; the one used
    /// otherwise reads the index alone.
    #[test]
    fn head_lookups_read_the_tail_only_when_they_must() {
        let conn = Connection::open_in_memory().unwrap();
        crate::store::sqlite::schema::migrate(&conn).unwrap();
        let insert = "INSERT INTO audit (session, seq, at, kind, actor, data, prev_hash, hash) \
                      VALUES ('s', ?1, 'at', 'k', 'a', '{}', 'p', ?2)";
        conn.execute(insert, params![1, "h1"]).unwrap();
        filing::file(&conn).unwrap();
        conn.execute(insert, params![2, "h2"]).unwrap();
        let head = |sql| -> (i64, String) { conn.query_row(sql, ["s"], |r| Ok((r.get(0)?, r.get(1)?))).unwrap() };
        assert_eq!(head(HEAD), (2, "h2".to_string()));
        assert_eq!(head(FILED_HEAD), (1, "h1".to_string()));
    }

    /// A database of its own in a fresh folder, and a runtime to await its jobs.
    fn writer(name: &str) -> (std::path::PathBuf, Db, tokio::runtime::Runtime) {
        let dir = std::env::temp_dir().join(format!("bulkhead-audit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = Db::open(&dir, Durability::Normal).unwrap();
        (dir, db, tokio::runtime::Builder::new_current_thread().build().unwrap())
    }

    /// Appends through the writer's head cache, with a job that appends and
    /// then fails (its savepoint rolls back) between two that succeed: the
    /// chain has no gap, no fork, and verifies.
    #[test]
    fn cached_heads_follow_commits_and_rollbacks() {
        let (dir, db, rt) = writer("heads");
        // Queued, so that they run on the writer's thread, mostly in one batch.
        let append_ok = |kind: &'static str| {
            db.submit_queued(Link::Alone, move |tx| append(tx, "s1", "a", None, &Event::test(kind))).unwrap()
        };
        let first = append_ok("one");
        let failed = db
            .submit_queued(Link::Alone, |tx| {
                append(tx, "s1", "a", None, &Event::test("undone"))?;
                Err::<(), _>(Rejection::NotFound.into())
            })
            .unwrap();
        let second = append_ok("two");
        let (first, failed, second) = rt.block_on(async { (first.await, failed.await, second.await) });
        assert_eq!(first.unwrap(), 1);
        assert!(matches!(failed, Err(StoreError::Rejected(Rejection::NotFound))));
        assert_eq!(second.unwrap(), 2, "the rolled-back append left no gap");
        // A later batch continues from the committed head.
        let three = db.submit(move |tx| append(tx, "s1", "a", None, &Event::test("three"))).unwrap();
        assert_eq!(rt.block_on(three).unwrap(), 3);
        let events = db.read(|c| list(c, "s1", 0, 10)).unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["one", "two", "three"]);
        assert_eq!(db.read(verify_all).unwrap(), Ok(3));
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Events appended together are separate links of the chain, in order,
    /// continuing a single append and continued by one.
    #[test]
    fn events_appended_together_are_each_their_own_link() {
        let (dir, db, rt) = writer("all");
        let kinds: Vec<String> = (0..9).map(|i| format!("k{i}")).collect();
        let events: Vec<Event> = kinds.iter().map(|k| Event::test(k)).collect();
        let n = events.len() as i64;
        let wrote = db
            .submit(move |tx| {
                append(tx, "s1", "a", None, &Event::test("first"))?;
                append_all(tx, "s1", "a", Some("c1"), &events.iter().collect::<Vec<_>>())
            })
            .unwrap();
        rt.block_on(wrote).unwrap();
        let last = db.submit(|tx| append(tx, "s1", "a", None, &Event::test("last"))).unwrap();
        assert_eq!(rt.block_on(last).unwrap(), 2 + n);
        let listed = db.read(|c| list(c, "s1", 0, 100)).unwrap();
        let seqs: Vec<i64> = listed.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=2 + n).collect::<Vec<_>>());
        let listed_kinds: Vec<&str> = listed[1..listed.len() - 1].iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(listed_kinds, kinds);
        assert!(listed[1..listed.len() - 1].iter().all(|e| e.call.as_deref() == Some("c1")));
        for pair in listed.windows(2) {
            assert_eq!(pair[1].prev_hash, pair[0].hash, "each event links to the one before");
            assert_eq!(pair[1].hash, hash_of(&pair[1]));
        }
        assert_eq!(db.read(verify_all).unwrap(), Ok(2 + n as u64));
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
