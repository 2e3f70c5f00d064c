//! The per-session indexes of the call log and the audit log, filed in bulk.
//!
//! `calls` and `audit` rows are appended in commit order (their rowid).
//! Indexing each row by session as it was written dirtied one index leaf
//! per session in every commit: four WAL frames in five were those leaves
//! (docs/benchmarks.md). Instead the writer files rows into
//! `calls_by_session` and `audit_by_session` in bulk, sorted, every
//! [`EVERY`]: a busy session's leaf is written once per filing instead of
//! once per commit.
//!
//! `filed.up_to` is the highest rowid of a log already filed. Rows above it
//! (the tail: at most about one filing's worth) are found by scanning the
//! tail. A reader's statement sees the index, the tail and the mark in one
//! snapshot, so a row is never missed or listed twice.

use rusqlite::{Connection, params};
use std::time::Duration;

/// How often the writer files new rows (when it has committed something).
pub const EVERY: Duration = Duration::from_millis(100);
/// Rows filed per log per filing: bounds the writer's pause for a backlog.
const MAX_ROWS: i64 = 16_384;

/// The unfiled tail of a log (`"calls"` or `"audit"`) as a condition on its
/// rowid, a literal for `concat!`.
macro_rules! unfiled {
    ($log:literal) => {
        concat!("rowid > (SELECT up_to FROM filed WHERE log = '", $log, "')")
    };
}
pub(crate) use unfiled;

/// A log and how its rows are keyed in their index.
struct Log {
    name: &'static str,
    /// `INSERT` of rowid range (?1, ?2] into the index, sorted.
    file: &'static str,
    /// Rows in rowid range (?1, ?2].
    count: &'static str,
    last_row: &'static str,
}

/// The `Log` of `$table`, whose index `${table}_by_session` is keyed by
/// `(session, $key)`.
macro_rules! log {
    ($table:literal, $key:literal) => {
        Log {
            name: $table,
            file: concat!(
                "INSERT OR IGNORE INTO ",
                $table,
                "_by_session (session, ",
                $key,
                ", row) SELECT session, ",
                $key,
                ", rowid FROM ",
                $table,
                " WHERE rowid > ?1 AND rowid <= ?2 ORDER BY session, ",
                $key
            ),
            count: concat!("SELECT COUNT(*) FROM ", $table, " WHERE rowid > ?1 AND rowid <= ?2"),
            last_row: concat!("SELECT COALESCE(MAX(rowid), 0) FROM ", $table),
        }
    };
}

const LOGS: [Log; 2] = [log!("calls", "id"), log!("audit", "seq")];

/// Files up to `MAX_ROWS` rows of each log past its mark, in the caller's
/// transaction; returns whether every row of both logs is now filed.
///
/// A row whose key is already filed (a second audit event with one seq,
/// which only tampering or a bug can make) is left out of the index with a
/// warning rather than stopping filing for good; `bulkhead audit verify`
/// names it.
pub fn file(conn: &Connection) -> rusqlite::Result<bool> {
    let mut caught_up = true;
    for log in &LOGS {
        let mark: i64 =
            conn.prepare_cached("SELECT up_to FROM filed WHERE log = ?1")?.query_row([log.name], |r| r.get(0))?;
        let last: i64 = conn.prepare_cached(log.last_row)?.query_row([], |r| r.get(0))?;
        let to = last.min(mark + MAX_ROWS);
        if to > mark {
            let filed = conn.prepare_cached(log.file)?.execute(params![mark, to])?;
            let rows: usize = conn.prepare_cached(log.count)?.query_row(params![mark, to], |r| r.get(0))?;
            if filed != rows {
                tracing::warn!(
                    "{} rows of `{}` repeat a key already indexed and are not listed",
                    rows - filed,
                    log.name
                );
            }
            conn.prepare_cached("UPDATE filed SET up_to = ?2 WHERE log = ?1")?.execute(params![log.name, to])?;
        }
        caught_up &= to >= last;
    }
    Ok(caught_up)
}

/// Lowers each log's mark to its highest row. A new row takes the rowid
/// after the highest one left, so once rows above the mark's rows were
/// deleted (a session's calls; audit rows only by tampering) a new row
/// could fall at or below the mark, never filed and never in the tail.
pub fn lower_marks(conn: &Connection) -> rusqlite::Result<()> {
    for log in &LOGS {
        let last: i64 = conn.prepare_cached(log.last_row)?.query_row([], |r| r.get(0))?;
        conn.prepare_cached("UPDATE filed SET up_to = MIN(up_to, ?2) WHERE log = ?1")?
            .execute(params![log.name, last])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::{Db, Durability, audit, calls, sessions};

    fn listed(db: &Db, session: &'static str, after: &'static str) -> Vec<String> {
        db.read(|c| calls::list(c, session, None, after, 100)).unwrap().into_iter().map(|c| c.id).collect()
    }

    fn kinds(db: &Db, session: &'static str) -> Vec<String> {
        db.read(|c| audit::list(c, session, 0, 100)).unwrap().into_iter().map(|e| e.kind).collect()
    }

    /// Calls and audit events are listed by session the same whether they
    /// are filed, in the tail, or split between the two; a deleted
    /// session's calls go from both; a call after deleting the highest rows
    /// (whose rowid falls at or below the mark) is still found; a restart
    /// files the tail and the chains continue.
    #[test]
    fn lists_span_the_index_and_the_tail() {
        let dir = std::env::temp_dir().join(format!("bulkhead-filing-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let db = Db::open(&dir, Durability::Normal).unwrap();
        let add = |id: &'static str, session: &'static str, file_first: bool| {
            rt.block_on(db.write(move |c| {
                if file_first {
                    file(c)?;
                }
                c.execute(
                    "INSERT INTO calls (id, session, principal, tool, status, input, created_at, usage) \
                     VALUES (?1, ?2, 'p', 't', 'succeeded', '{}', 'at', '{}')",
                    [id, session],
                )?;
                audit::append(c, session, "p", Some(id), &crate::events::Event::test(id))?;
                Ok(())
            }))
            .unwrap()
        };
        for session in ["a", "b"] {
            let created = format!(
                "INSERT INTO sessions (id, principal, created_at, boundary, env, labels) VALUES ('{session}', 'p', 'at', '{{}}', '{{}}', '{{}}')"
            );
            rt.block_on(db.write(move |c| Ok(c.execute_batch(&created)?))).unwrap();
        }
        add("c01", "a", false);
        add("c02", "b", false);
        add("c03", "a", false);
        assert_eq!(listed(&db, "a", ""), ["c01", "c03"], "before the first filing this test makes");
        add("c04", "a", true);
        add("c05", "b", false);
        assert_eq!(listed(&db, "a", ""), ["c01", "c03", "c04"], "filed and tail");
        assert_eq!(listed(&db, "a", "c01"), ["c03", "c04"], "a page starting in the index");
        assert_eq!(listed(&db, "a", "c03"), ["c04"], "a page in the tail");
        assert_eq!(kinds(&db, "b"), ["c02", "c05"]);

        // b's calls hold the highest rowids; once filed and deleted, the next
        // call takes a rowid at or below the mark.
        rt.block_on(db.write(|c| Ok(file(c)?))).unwrap();
        assert!(rt.block_on(db.write(|c| sessions::delete(c, "b"))).unwrap());
        assert!(listed(&db, "b", "").is_empty());
        add("c06", "a", false);
        assert_eq!(listed(&db, "a", ""), ["c01", "c03", "c04", "c06"]);
        assert_eq!(kinds(&db, "b"), ["c02", "c05"], "the audit chain outlives its session");

        drop(db);
        let db = Db::open(&dir, Durability::Normal).unwrap();
        let (up_to, last): (i64, i64) = db
            .read(|c| {
                Ok(c.query_row(
                    "SELECT (SELECT up_to FROM filed WHERE log = 'audit'), (SELECT MAX(rowid) FROM audit)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?)
            })
            .unwrap();
        assert_eq!(up_to, last, "opening the database files the tail");
        rt.block_on(db.write(|c| audit::append(c, "a", "p", None, &crate::events::Event::test("after restart"))))
            .unwrap();
        assert_eq!(kinds(&db, "a"), ["c01", "c03", "c04", "c06", "after restart"]);
        assert_eq!(db.read(audit::verify_all).unwrap(), Ok(7));
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
