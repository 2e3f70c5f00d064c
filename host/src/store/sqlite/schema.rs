//! The database schema. `user_version` records which migrations ran.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE sessions (
    id          TEXT PRIMARY KEY,
    principal   TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    expires_at  TEXT,
    version     INTEGER NOT NULL DEFAULT 0,
    boundary    TEXT NOT NULL,           -- JSON: effective grant per tool
    env         TEXT NOT NULL,           -- JSON object
    labels      TEXT NOT NULL,           -- JSON object
    calls       INTEGER NOT NULL DEFAULT 0,
    wall_ms     INTEGER NOT NULL DEFAULT 0,
    fuel        INTEGER NOT NULL DEFAULT 0,
    state_bytes_written INTEGER NOT NULL DEFAULT 0,
    egress_requests     INTEGER NOT NULL DEFAULT 0,
    egress_bytes        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sessions_principal ON sessions(principal, id);
CREATE INDEX sessions_expiry ON sessions(expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE messages (
    session     TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    role        TEXT NOT NULL,
    content     TEXT NOT NULL,
    metadata    TEXT,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (session, seq)
) WITHOUT ROWID;

CREATE TABLE tool_state (
    session     TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    tool        TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       BLOB NOT NULL,
    PRIMARY KEY (session, tool, key)
) WITHOUT ROWID;

CREATE TABLE calls (
    id              TEXT PRIMARY KEY,
    session         TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    principal       TEXT NOT NULL,
    tool            TEXT NOT NULL,
    status          TEXT NOT NULL,
    input           TEXT NOT NULL,
    output          TEXT,
    error           TEXT,
    created_at      TEXT NOT NULL,
    started_at      TEXT,
    finished_at     TEXT,
    usage           TEXT NOT NULL,
    approval        TEXT,
    idempotency_key TEXT,
    logs            TEXT
);
CREATE INDEX calls_session ON calls(session, id);
CREATE UNIQUE INDEX calls_idempotency ON calls(session, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX calls_open ON calls(status) WHERE status IN ('running', 'pending_approval');

-- No foreign key: the audit chain outlives its session.
CREATE TABLE audit (
    session     TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    at          TEXT NOT NULL,
    kind        TEXT NOT NULL,
    actor       TEXT NOT NULL,
    call        TEXT,
    data        TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL,
    PRIMARY KEY (session, seq)
) WITHOUT ROWID;
"#,
    // Audit events in commit order (the rowid), each session's chain an index:
    // a batch's events now share the table's last pages instead of dirtying,
    // and every few calls splitting, one page per session; WAL frames per write
    // job fell from 3.3 to 2.2 (docs/benchmarks.md).
    r#"
CREATE TABLE audit_log (
    session     TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    at          TEXT NOT NULL,
    kind        TEXT NOT NULL,
    actor       TEXT NOT NULL,
    call        TEXT,
    data        TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);
INSERT INTO audit_log (session, seq, at, kind, actor, call, data, prev_hash, hash)
    SELECT session, seq, at, kind, actor, call, data, prev_hash, hash FROM audit ORDER BY session, seq;
DROP TABLE audit;
ALTER TABLE audit_log RENAME TO audit;
CREATE UNIQUE INDEX audit_chain ON audit(session, seq);
"#,
    // Each session's calls and audit events indexed in bulk by the writer
    // (store::filing) instead of by SQLite on every insert: a commit no
    // longer dirties one index leaf per session in it. Both logs are rebuilt
    // with an explicit INTEGER PRIMARY KEY (`n`, the rowid), which the index
    // tables point at and which VACUUM keeps; `calls` without its foreign
    // key: a cascade would scan the table for a session's calls without an
    // index on `calls(session)`; deleting a session deletes them through
    // `calls_by_session`.
    r#"
CREATE TABLE filed (
    log         TEXT PRIMARY KEY,
    up_to       INTEGER NOT NULL        -- the highest rowid indexed
) WITHOUT ROWID;
CREATE TABLE calls_by_session (
    session     TEXT NOT NULL,
    id          TEXT NOT NULL,
    row         INTEGER NOT NULL,       -- rowid in calls
    PRIMARY KEY (session, id)
) WITHOUT ROWID;
CREATE TABLE audit_by_session (
    session     TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    row         INTEGER NOT NULL,       -- rowid in audit
    PRIMARY KEY (session, seq)
) WITHOUT ROWID;
CREATE TABLE calls_v3 (
    n               INTEGER PRIMARY KEY,    -- commit order
    id              TEXT NOT NULL UNIQUE,
    session         TEXT NOT NULL,
    principal       TEXT NOT NULL,
    tool            TEXT NOT NULL,
    status          TEXT NOT NULL,
    input           TEXT NOT NULL,
    output          TEXT,
    error           TEXT,
    created_at      TEXT NOT NULL,
    started_at      TEXT,
    finished_at     TEXT,
    usage           TEXT NOT NULL,
    approval        TEXT,
    idempotency_key TEXT,
    logs            TEXT
);
INSERT INTO calls_v3 (n, id, session, principal, tool, status, input, output, error, created_at, started_at,
                      finished_at, usage, approval, idempotency_key, logs)
    SELECT rowid, id, session, principal, tool, status, input, output, error, created_at, started_at,
           finished_at, usage, approval, idempotency_key, logs FROM calls ORDER BY rowid;
DROP TABLE calls;
ALTER TABLE calls_v3 RENAME TO calls;
CREATE UNIQUE INDEX calls_idempotency ON calls(session, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX calls_open ON calls(status) WHERE status IN ('running', 'pending_approval');
CREATE TABLE audit_v3 (
    n           INTEGER PRIMARY KEY,        -- commit order
    session     TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    at          TEXT NOT NULL,
    kind        TEXT NOT NULL,
    actor       TEXT NOT NULL,
    call        TEXT,
    data        TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);
INSERT INTO audit_v3 (n, session, seq, at, kind, actor, call, data, prev_hash, hash)
    SELECT rowid, session, seq, at, kind, actor, call, data, prev_hash, hash FROM audit ORDER BY rowid;
DROP TABLE audit;
ALTER TABLE audit_v3 RENAME TO audit;
INSERT INTO calls_by_session (session, id, row) SELECT session, id, rowid FROM calls ORDER BY session, id;
INSERT INTO audit_by_session (session, seq, row) SELECT session, seq, rowid FROM audit ORDER BY session, seq;
INSERT INTO filed (log, up_to) VALUES
    ('calls', (SELECT COALESCE(MAX(rowid), 0) FROM calls)),
    ('audit', (SELECT COALESCE(MAX(rowid), 0) FROM audit));
"#,
    // Priced usage (`[pricing]`): memory-time and storage-time per session,
    // the bytes it keeps kept up to date by each commit (no sum on read),
    // and the final usage of deleted sessions, which a report still counts.
    // Storage-time of sessions older than this migration starts now.
    r#"
ALTER TABLE sessions ADD COLUMN memory_mib_seconds REAL NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN stored_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN stored_since INTEGER NOT NULL DEFAULT 0;   -- unix ms
ALTER TABLE sessions ADD COLUMN stored_mib_hours REAL NOT NULL DEFAULT 0;  -- up to stored_since
UPDATE sessions SET stored_since = CAST(unixepoch('subsec') * 1000 AS INTEGER);
UPDATE sessions SET memory_mib_seconds = m.v FROM
    (SELECT session, SUM(COALESCE(json_extract(usage, '$.memory_peak_bytes'), 0) / 1048576.0
                         * COALESCE(json_extract(usage, '$.wall_ms'), 0) / 1000.0) AS v
     FROM calls GROUP BY session) AS m
    WHERE m.session = sessions.id;
UPDATE sessions SET stored_bytes = b.n FROM
    (SELECT session, SUM(n) AS n FROM
        (SELECT session, LENGTH(CAST(key AS BLOB)) + LENGTH(value) AS n FROM tool_state
         UNION ALL
         SELECT session, LENGTH(CAST(content AS BLOB)) + COALESCE(LENGTH(CAST(metadata AS BLOB)), 0) FROM messages)
     GROUP BY session) AS b
    WHERE b.session = sessions.id;
CREATE TABLE ended_sessions (
    id          TEXT PRIMARY KEY,
    principal   TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    ended_at    TEXT NOT NULL,
    calls       INTEGER NOT NULL,
    wall_ms     INTEGER NOT NULL,
    fuel        INTEGER NOT NULL,
    state_bytes_written INTEGER NOT NULL,
    egress_requests     INTEGER NOT NULL,
    egress_bytes        INTEGER NOT NULL,
    memory_mib_seconds  REAL NOT NULL,
    stored_mib_hours    REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX ended_sessions_principal ON ended_sessions(principal, created_at);
"#,
];

pub fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let current: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > MIGRATIONS.len() {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "database schema version {current} is newer than this host ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        conn.execute_batch(&format!("BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;", i + 1))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database written by the first schema, upgraded: every chain and
    /// call is still listed by session, through the new indexes.
    #[test]
    fn a_first_version_database_keeps_its_chains_and_calls_through_the_upgrades() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!("{}; PRAGMA user_version = 1;", MIGRATIONS[0])).unwrap();
        let insert = "INSERT INTO audit (session, seq, at, kind, actor, call, data, prev_hash, hash) \
                      VALUES (?1, ?2, 'at', 'kind', 'actor', NULL, '{}', ?3, ?4)";
        for (session, seq) in [("b", 1), ("a", 1), ("a", 2), ("b", 2)] {
            let (prev, hash) = (format!("{session}{}", seq - 1), format!("{session}{seq}"));
            conn.execute(insert, rusqlite::params![session, seq, prev, hash]).unwrap();
        }
        conn.execute_batch(
            "INSERT INTO sessions (id, principal, created_at, boundary, env, labels) VALUES \
             ('a', 'p', 'at', '{}', '{}', '{}'), ('b', 'p', 'at', '{}', '{}', '{}')",
        )
        .unwrap();
        for (id, session) in [("c1", "a"), ("c2", "b"), ("c3", "a")] {
            conn.execute(
                "INSERT INTO calls (id, session, principal, tool, status, input, created_at, usage) \
                 VALUES (?1, ?2, 'p', 't', 'succeeded', '{}', 'at', '{}')",
                [id, session],
            )
            .unwrap();
        }
        migrate(&conn).unwrap();
        let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len());
        for session in ["a", "b"] {
            let events = super::super::audit::list(&conn, session, 0, 10).unwrap();
            let chain: Vec<(i64, String, String)> = events.into_iter().map(|e| (e.seq, e.prev_hash, e.hash)).collect();
            let expected: Vec<(i64, String, String)> =
                (1..=2).map(|n| (n, format!("{session}{}", n - 1), format!("{session}{n}"))).collect();
            assert_eq!(chain, expected, "session {session}");
        }
        let listed = |session| -> Vec<String> {
            super::super::calls::list(&conn, session, None, "", 10).unwrap().into_iter().map(|c| c.id).collect()
        };
        assert_eq!(listed("a"), ["c1", "c3"]);
        assert_eq!(listed("b"), ["c2"]);
        let marks: Vec<(String, i64)> = conn
            .prepare("SELECT log, up_to FROM filed ORDER BY log")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(marks, [("audit".to_string(), 4), ("calls".to_string(), 3)], "everything is filed");

        // The index tables point at rowids: VACUUM renumbers the rows of a
        // table without an INTEGER PRIMARY KEY once some are gone (here a's
        // first call and first event, before b's rows), and must not.
        conn.execute_batch(
            "DELETE FROM calls WHERE id = 'c1'; DELETE FROM calls_by_session WHERE id = 'c1'; \
             DELETE FROM audit WHERE session = 'a' AND seq = 1; \
             DELETE FROM audit_by_session WHERE session = 'a' AND seq = 1; VACUUM;",
        )
        .unwrap();
        assert_eq!(listed("b"), ["c2"], "after VACUUM");
        let seqs: Vec<i64> = super::super::audit::list(&conn, "b", 0, 10).unwrap().into_iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2], "after VACUUM");
        migrate(&conn).unwrap();
    }

    /// Sessions older than priced usage get the bytes they keep and the
    /// memory-time of their calls counted by the upgrade.
    #[test]
    fn the_priced_usage_upgrade_counts_what_older_sessions_keep_and_used() {
        let conn = Connection::open_in_memory().unwrap();
        for (i, sql) in MIGRATIONS[..3].iter().enumerate() {
            conn.execute_batch(&format!("{sql}; PRAGMA user_version = {};", i + 1)).unwrap();
        }
        conn.execute_batch(
            "INSERT INTO sessions (id, principal, created_at, boundary, env, labels) VALUES \
             ('a', 'p', 'at', '{}', '{}', '{}'), ('empty', 'p', 'at', '{}', '{}', '{}'); \
             INSERT INTO messages (session, seq, role, content, metadata, created_at) VALUES \
             ('a', 1, 'user', 'héllo', '{\"k\":1}', 'at'), ('a', 2, 'user', 'x', NULL, 'at'); \
             INSERT INTO tool_state (session, tool, key, value) VALUES ('a', 't', 'key', x'0102030405'); \
             INSERT INTO calls (id, session, principal, tool, status, input, created_at, usage) VALUES \
             ('c1', 'a', 'p', 't', 'succeeded', '{}', 'at', '{\"memory_peak_bytes\":2097152,\"wall_ms\":500}'), \
             ('c2', 'a', 'p', 't', 'succeeded', '{}', 'at', '{}');",
        )
        .unwrap();
        migrate(&conn).unwrap();
        let row = |id: &str| -> (i64, f64, f64) {
            conn.query_row(
                "SELECT stored_bytes, memory_mib_seconds, stored_mib_hours FROM sessions WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap()
        };
        // "héllo" is 6 bytes, its metadata 7, "x" 1, the state 3 + 5.
        assert_eq!(row("a"), (6 + 7 + 1 + 3 + 5, 2.0 * 0.5, 0.0));
        assert_eq!(row("empty"), (0, 0.0, 0.0));
    }
}
