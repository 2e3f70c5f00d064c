//! The PostgreSQL backend: one database shared by several hosts.
//!
//! Each write is one transaction on a pooled connection (deadpool over
//! tokio-postgres: an async pool whose connections pipeline the statements
//! polled together). What SQLite's single writer gave for free is taken
//! from the database instead:
//!
//! - **Order per session.** A write locks its session's row first
//!   (`FOR SHARE` to add a call, an `UPDATE` to change the session), then
//!   its audit chain's head row (`audit_heads`): one lock order, so two
//!   hosts' transactions take turns instead of deadlocking; a deadlock the
//!   database still reports is retried.
//! - **The audit chain** is extended from the head read under that lock,
//!   inside the transaction: it never forks.
//! - **A call's turn** on its tool's state is a session-level advisory
//!   lock held on a connection of its own ([`turn`]) from before the tool
//!   runs until its outcome commits, on that same connection: if the
//!   connection dies the lock goes with it and the outcome cannot commit.
//! - **Crash recovery** is per host ([`lease`]): a host's `running` calls
//!   are interrupted only once its lease has expired.
//!
//! # Layout
//!
//! - this file: [`PgStore`] (connect, migrate, the pools), [`Fail`].
//! - `schema`: versioned migrations.
//! - `rows`: row to record conversions.
//! - `audit`: appending to a chain, listing, verifying.
//! - `sql`: the statements the writes share.
//! - `ops`: the [`Store`](super::Store) interface.
//! - `calls`: a call's record and outcome, each pipelined in two round trips.
//! - `turn`: the cross-host turn of a call.
//! - `lease`: the host's lease and its heartbeat.
//! - [`copy`]: `bulkhead migrate`, a SQLite folder copied into a new database.

mod audit;
mod calls;
pub mod copy;
mod lease;
mod ops;
mod rows;
mod schema;
mod sql;
mod turn;

pub use audit::verify_all;

use super::{Rejection, StoreError};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio_postgres::NoTls;

/// How to reach the database and how hard to use it.
#[derive(Debug, Clone)]
pub struct PgOptions {
    pub url: String,
    /// Connections for reads and writes; as many again are used for turns.
    pub pool_size: usize,
    /// The longest one statement may run (`statement_timeout`).
    pub statement_timeout: Duration,
    /// A host whose heartbeat is older than this is gone.
    pub lease: Duration,
}

/// What went wrong in a transaction: a race with another host's transaction
/// that is worth running again (a deadlock the database broke), or an error
/// for the caller.
#[derive(Debug)]
pub(crate) enum Fail {
    Retry(String),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Fail {
        use tokio_postgres::error::SqlState;
        let detail = describe(&e);
        match e.code() {
            Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE => {
                Fail::Retry(detail)
            }
            _ => Fail::Store(StoreError::Unavailable(detail)),
        }
    }
}

impl From<deadpool_postgres::PoolError> for Fail {
    fn from(e: deadpool_postgres::PoolError) -> Fail {
        Fail::Store(StoreError::Unavailable(format!("no database connection: {e}")))
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        Fail::Store(e)
    }
}

impl From<Rejection> for Fail {
    fn from(r: Rejection) -> Fail {
        Fail::Store(StoreError::Rejected(r))
    }
}

impl From<Fail> for StoreError {
    fn from(f: Fail) -> StoreError {
        match f {
            Fail::Retry(detail) => StoreError::Unavailable(detail),
            Fail::Store(e) => e,
        }
    }
}

/// The database's message, for the log (tokio-postgres' own says only "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// How many times a transaction that lost a race is run again.
pub(crate) const RETRIES: usize = 5;

/// Runs `attempt` until it does not ask for a retry (a few times at most).
async fn retrying<T, F, Fut>(mut attempt: F) -> super::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Fail>>,
{
    for _ in 1..RETRIES {
        match attempt().await {
            Err(Fail::Retry(detail)) => tracing::debug!("retrying a transaction: {detail}"),
            other => return other.map_err(Into::into),
        }
    }
    attempt().await.map_err(Into::into)
}

pub(crate) struct Inner {
    pool: Pool,
    /// Connections that hold a call's turn (see `turn`): apart from `pool`,
    /// so turns held by waiting calls never starve the writes that end them.
    turns: Pool,
    /// This host's id in `hosts`.
    host: String,
    lease: Duration,
    /// `BEGIN` with the statement timeout, for outcomes on turn connections
    /// (which run without one, so a turn can wait).
    begin_on_turn: String,
    /// Since when this host's heartbeats have succeeded without a break.
    healthy_since: std::sync::Mutex<Option<std::time::Instant>>,
    commits: AtomicU64,
}

/// The store over a PostgreSQL database shared with other hosts.
pub struct PgStore {
    inner: Arc<Inner>,
}

impl PgStore {
    /// Connects, migrates the schema, and takes this host's lease (renewed
    /// until the store is dropped).
    pub async fn connect(options: &PgOptions, host_name: &str) -> super::Result<PgStore> {
        let pool = pool(options, options.pool_size)?;
        let turns = pool_for_turns(options)?;
        let mut client = pool.get().await.map_err(Fail::from)?;
        schema::migrate(&mut client).await?;
        drop(client);
        let inner = Arc::new(Inner {
            pool,
            turns,
            host: crate::util::new_id(),
            lease: options.lease,
            begin_on_turn: format!("BEGIN; SET LOCAL statement_timeout = {}", options.statement_timeout.as_millis()),
            healthy_since: std::sync::Mutex::new(None),
            commits: AtomicU64::new(0),
        });
        lease::take(&inner, host_name).await?;
        lease::spawn_heartbeat(Arc::downgrade(&inner));
        Ok(PgStore { inner })
    }
}

/// Verifies every audit chain in the database at `url`, reading only
/// (`bulkhead audit verify`): the events checked, or the first break.
pub async fn verify_url(url: &str) -> super::Result<std::result::Result<u64, super::chain::Break>> {
    let options = PgOptions {
        url: url.to_string(),
        pool_size: 1,
        statement_timeout: Duration::ZERO,
        lease: Duration::from_secs(10),
    };
    let pool = pool(&options, 1)?;
    let client = pool.get().await.map_err(Fail::from)?;
    verify_all(&client).await
}

fn config(options: &PgOptions) -> super::Result<tokio_postgres::Config> {
    let mut config = tokio_postgres::Config::from_str(&options.url)
        // The URL may hold a password: never repeat it.
        .map_err(|_| StoreError::Unavailable("the PostgreSQL connection URL does not parse".into()))?;
    let timeout = options.statement_timeout.as_millis();
    config.options(format!("-c statement_timeout={timeout}"));
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    config.application_name("bulkhead");
    Ok(config)
}

fn pool(options: &PgOptions, size: usize) -> super::Result<Pool> {
    let manager =
        Manager::from_config(config(options)?, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| StoreError::Unavailable(format!("cannot build the connection pool: {e}")))
}

/// Turn connections run no statement timeout: a turn waits as long as the
/// call before it runs (each call's own timeout bounds that).
fn pool_for_turns(options: &PgOptions) -> super::Result<Pool> {
    let no_timeout = PgOptions { statement_timeout: Duration::ZERO, ..options.clone() };
    pool(&no_timeout, options.pool_size)
}
