//! The PostgreSQL schema, versioned: `schema_migrations` records each
//! migration that ran. Hosts starting together take a transaction-scoped
//! advisory lock, so one migrates and the others find it done.
//!
//! Text columns that are compared or ordered (ids, keys, times in RFC 3339)
//! use the `C` collation: byte order, as SQLite compares, whatever the
//! database's locale. JSON is stored as text, byte for byte what was
//! hashed into the audit chain (`jsonb` would reorder it).

use super::Fail;

/// The advisory lock key migrations run under ("bulkhead" in ASCII).
const MIGRATION_LOCK: i64 = 0x6275_6c6b_6865_6164;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE sessions (
    id          TEXT COLLATE "C" PRIMARY KEY,
    principal   TEXT COLLATE "C" NOT NULL,
    created_at  TEXT COLLATE "C" NOT NULL,
    expires_at  TEXT COLLATE "C",
    version     BIGINT NOT NULL DEFAULT 0,
    boundary    TEXT NOT NULL,
    env         TEXT NOT NULL,
    labels      TEXT NOT NULL,
    calls       BIGINT NOT NULL DEFAULT 0,
    wall_ms     BIGINT NOT NULL DEFAULT 0,
    fuel        BIGINT NOT NULL DEFAULT 0,
    state_bytes_written BIGINT NOT NULL DEFAULT 0,
    egress_requests     BIGINT NOT NULL DEFAULT 0,
    egress_bytes        BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX sessions_principal ON sessions (principal, id);
CREATE INDEX sessions_expiry ON sessions (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE messages (
    session     TEXT COLLATE "C" NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL,
    role        TEXT NOT NULL,
    content     TEXT NOT NULL,
    metadata    TEXT,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (session, seq)
);

CREATE TABLE tool_state (
    session     TEXT COLLATE "C" NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    tool        TEXT COLLATE "C" NOT NULL,
    key         TEXT COLLATE "C" NOT NULL,
    value       BYTEA NOT NULL,
    PRIMARY KEY (session, tool, key)
);

-- `host`: the host that runs (or last ran) the call, whose lease decides
-- when a call it left `running` is interrupted.
CREATE TABLE calls (
    id              TEXT COLLATE "C" PRIMARY KEY,
    session         TEXT COLLATE "C" NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    principal       TEXT COLLATE "C" NOT NULL,
    tool            TEXT NOT NULL,
    status          TEXT NOT NULL,
    input           TEXT NOT NULL,
    output          TEXT,
    error           TEXT,
    created_at      TEXT COLLATE "C" NOT NULL,
    started_at      TEXT,
    finished_at     TEXT,
    usage           TEXT NOT NULL,
    approval        TEXT,
    idempotency_key TEXT COLLATE "C",
    logs            TEXT,
    host            TEXT
);
CREATE INDEX calls_session ON calls (session, id);
CREATE UNIQUE INDEX calls_idempotency ON calls (session, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX calls_open ON calls (status, id) WHERE status IN ('running', 'pending_approval');

-- No foreign key: the audit chain outlives its session.
CREATE TABLE audit (
    session     TEXT COLLATE "C" NOT NULL,
    seq         BIGINT NOT NULL,
    at          TEXT NOT NULL,
    kind        TEXT NOT NULL,
    actor       TEXT NOT NULL,
    call        TEXT,
    data        TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL,
    PRIMARY KEY (session, seq)
);
-- Each chain's head, locked by the transaction that appends to the chain:
-- two hosts appending to one session take turns, so the chain never forks.
CREATE TABLE audit_heads (
    session     TEXT COLLATE "C" PRIMARY KEY,
    seq         BIGINT NOT NULL,
    hash        TEXT NOT NULL
);

-- One row per live host: its lease, renewed by its heartbeat (database time).
CREATE TABLE hosts (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
"#,
    // Priced usage: as SQLite's fourth migration (`sqlite::schema`).
    r#"
ALTER TABLE sessions ADD COLUMN memory_mib_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
    ADD COLUMN stored_bytes BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN stored_since BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN stored_mib_hours DOUBLE PRECISION NOT NULL DEFAULT 0;
UPDATE sessions SET stored_since = (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
UPDATE sessions SET memory_mib_seconds = m.v FROM
    (SELECT session, SUM(COALESCE((usage::jsonb ->> 'memory_peak_bytes')::double precision, 0) / 1048576.0
                         * COALESCE((usage::jsonb ->> 'wall_ms')::double precision, 0) / 1000.0) AS v
     FROM calls GROUP BY session) AS m
    WHERE m.session = sessions.id;
UPDATE sessions SET stored_bytes = b.n FROM
    (SELECT session, SUM(n)::bigint AS n FROM
        (SELECT session, octet_length(key) + octet_length(value) AS n FROM tool_state
         UNION ALL
         SELECT session, octet_length(content) + COALESCE(octet_length(metadata), 0) FROM messages) AS kept
     GROUP BY session) AS b
    WHERE b.session = sessions.id;
CREATE TABLE ended_sessions (
    id          TEXT COLLATE "C" PRIMARY KEY,
    principal   TEXT COLLATE "C" NOT NULL,
    created_at  TEXT COLLATE "C" NOT NULL,
    ended_at    TEXT COLLATE "C" NOT NULL,
    calls       BIGINT NOT NULL,
    wall_ms     BIGINT NOT NULL,
    fuel        BIGINT NOT NULL,
    state_bytes_written BIGINT NOT NULL,
    egress_requests     BIGINT NOT NULL,
    egress_bytes        BIGINT NOT NULL,
    memory_mib_seconds  DOUBLE PRECISION NOT NULL,
    stored_mib_hours    DOUBLE PRECISION NOT NULL
);
CREATE INDEX ended_sessions_principal ON ended_sessions (principal, created_at);
"#,
];

pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<(), Fail> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, \
         applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await?;
    let current: i32 = tx.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[]).await?.get(0);
    let current = current as usize;
    if current > MIGRATIONS.len() {
        return Err(crate::store::StoreError::Unavailable(format!(
            "database schema version {current} is newer than this host ({})",
            MIGRATIONS.len()
        ))
        .into());
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[&((i + 1) as i32)]).await?;
    }
    tx.commit().await?;
    Ok(())
}
