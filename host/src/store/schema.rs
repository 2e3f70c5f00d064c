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

    #[test]
    fn a_first_version_database_keeps_its_audit_chains_through_the_upgrade() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!("{}; PRAGMA user_version = 1;", MIGRATIONS[0])).unwrap();
        let insert = "INSERT INTO audit (session, seq, at, kind, actor, call, data, prev_hash, hash) \
                      VALUES (?1, ?2, 'at', 'kind', 'actor', NULL, '{}', ?3, ?4)";
        for (session, seq) in [("b", 1), ("a", 1), ("a", 2), ("b", 2)] {
            let (prev, hash) = (format!("{session}{}", seq - 1), format!("{session}{seq}"));
            conn.execute(insert, rusqlite::params![session, seq, prev, hash]).unwrap();
        }
        migrate(&conn).unwrap();
        let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len());
        let rows: Vec<(String, i64, String, String)> = conn
            .prepare("SELECT session, seq, prev_hash, hash FROM audit ORDER BY session, seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let expected: Vec<(String, i64, String, String)> = [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
            .iter()
            .map(|(s, n)| (s.to_string(), *n, format!("{s}{}", n - 1), format!("{s}{n}")))
            .collect();
        assert_eq!(rows, expected);
        let duplicate = conn.execute(insert, rusqlite::params!["a", 2, "x", "y"]);
        assert!(duplicate.is_err(), "a chain still cannot hold two events with one seq");
        migrate(&conn).unwrap();
    }
}
