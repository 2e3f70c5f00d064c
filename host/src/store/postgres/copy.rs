//! `bulkhead migrate`: a SQLite data folder copied into an empty
//! PostgreSQL database, row for row (sessions, messages, tool state,
//! calls with their approvals, audit chains and their heads), in one
//! transaction that verifies every chain before it commits.
//!
//! The folder is locked while it is read, so no host writes it meanwhile.
//! Calls the SQLite host left `running` are copied with no host: the first
//! PostgreSQL host that has held its lease for a lease interrupts them.

use super::{Fail, PgOptions, audit, pool};
use crate::store::StoreError;
use rusqlite::types::Value as Sql;
use std::path::Path;
use std::time::Duration;
use tokio_postgres::types::ToSql;

/// What was copied, table by table.
#[derive(Debug, Default)]
pub struct Copied {
    pub tables: Vec<(&'static str, u64)>,
    pub events_verified: u64,
}

/// Each table: its columns, in SQLite and PostgreSQL alike, and the
/// PostgreSQL type of each (`t` text, `i` bigint, `f` double, `b` bytea).
const TABLES: &[(&str, &str, &str)] = &[
    (
        "sessions",
        "id, principal, created_at, expires_at, version, boundary, env, labels, calls, wall_ms, fuel, \
         state_bytes_written, egress_requests, egress_bytes, memory_mib_seconds, stored_bytes, stored_since, \
         stored_mib_hours",
        "tttti tttiiiiii fiif",
    ),
    (
        "ended_sessions",
        "id, principal, created_at, ended_at, calls, wall_ms, fuel, state_bytes_written, egress_requests, \
         egress_bytes, memory_mib_seconds, stored_mib_hours",
        "tttt iiiiii ff",
    ),
    ("messages", "session, seq, role, content, metadata, created_at", "titttt"),
    ("tool_state", "session, tool, key, value", "tttb"),
    (
        "calls",
        "id, session, principal, tool, status, input, output, error, created_at, started_at, finished_at, usage, \
         approval, idempotency_key, logs",
        "ttttttttttttttt",
    ),
    ("audit", "session, seq, at, kind, actor, call, data, prev_hash, hash", "titttttt t"),
];

/// Copies the data folder `dir` (or its database file) into the database
/// at `url`, which must hold no Bulkhead data yet.
pub async fn from_sqlite(path: &Path, url: &str) -> crate::store::Result<Copied> {
    let dir = if path.is_dir() { path.to_path_buf() } else { path.parent().unwrap_or(Path::new(".")).to_path_buf() };
    let file = dir.join(crate::store::sqlite::DB_FILE);
    if !file.exists() {
        return Err(StoreError::Unavailable(format!("no SQLite database at {}", file.display())));
    }
    // No host may write the folder while it is copied.
    let _folder = crate::store::sqlite::lock::lock(&dir)?;
    let source = rusqlite::Connection::open_with_flags(&file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let options =
        PgOptions { url: url.into(), pool_size: 1, statement_timeout: Duration::ZERO, lease: Duration::from_secs(10) };
    let pool = pool(&options, 1)?;
    let mut client = pool.get().await.map_err(Fail::from)?;
    super::schema::migrate(&mut client).await?;
    let tx = client.transaction().await.map_err(Fail::from)?;
    let held: i64 = tx
        .query_one("SELECT (SELECT COUNT(*) FROM sessions) + (SELECT COUNT(*) FROM audit)", &[])
        .await
        .map_err(Fail::from)?
        .get(0);
    if held > 0 {
        return Err(StoreError::Unavailable(
            "the target database already holds Bulkhead data; migrate into an empty one".into(),
        ));
    }
    let mut copied = Copied::default();
    for (table, columns, types) in TABLES {
        let types: Vec<u8> = types.bytes().filter(|b| *b != b' ').collect();
        let marks: Vec<String> = (1..=types.len()).map(|i| format!("${i}")).collect();
        let insert = tx
            .prepare(&format!("INSERT INTO {table} ({columns}) VALUES ({})", marks.join(", ")))
            .await
            .map_err(Fail::from)?;
        let mut select = source.prepare(&format!("SELECT {columns} FROM {table}"))?;
        let mut rows = select.query([])?;
        let mut n = 0u64;
        while let Some(row) = rows.next()? {
            let mut values: Vec<Box<dyn ToSql + Sync + Send>> = Vec::with_capacity(types.len());
            for (i, kind) in types.iter().enumerate() {
                let value: Sql = row.get(i)?;
                values.push(match (kind, value) {
                    (_, Sql::Null) if *kind == b'i' => Box::new(None::<i64>),
                    (_, Sql::Null) if *kind == b'b' => Box::new(None::<Vec<u8>>),
                    (_, Sql::Null) if *kind == b'f' => Box::new(None::<f64>),
                    (_, Sql::Null) => Box::new(None::<String>),
                    (b'i', Sql::Integer(v)) => Box::new(v),
                    (b'f', Sql::Real(v)) => Box::new(v),
                    (b'f', Sql::Integer(v)) => Box::new(v as f64),
                    (b'b', Sql::Blob(v)) => Box::new(v),
                    (b'b', Sql::Text(v)) => Box::new(v.into_bytes()),
                    (_, Sql::Text(v)) => Box::new(v),
                    (_, Sql::Integer(v)) => Box::new(v.to_string()),
                    (_, other) => {
                        return Err(StoreError::Unavailable(format!(
                            "{table}: a value of an unexpected type: {other:?}"
                        )));
                    }
                });
            }
            let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| &**v as &(dyn ToSql + Sync)).collect();
            tx.execute(&insert, &params).await.map_err(Fail::from)?;
            n += 1;
        }
        copied.tables.push((table, n));
    }
    tx.batch_execute(
        "INSERT INTO audit_heads (session, seq, hash) \
         SELECT DISTINCT ON (session) session, seq, hash FROM audit ORDER BY session, seq DESC",
    )
    .await
    .map_err(Fail::from)?;
    match audit::verify_all(&tx).await? {
        Ok(n) => copied.events_verified = n,
        Err(b) => {
            return Err(StoreError::Unavailable(format!(
                "the copied audit trail does not verify (session {} seq {}: {}); nothing was committed",
                b.session, b.seq, b.reason
            )));
        }
    }
    tx.commit().await.map_err(Fail::from)?;
    Ok(copied)
}
