//! Persistence in one SQLite file (WAL), behind a single writer thread.
//!
//! Every write goes through [`Db::write`] (or [`Db::submit`]): the writer
//! thread runs the jobs waiting, and those that come while it does, each
//! inside its own savepoint of one transaction, commits once (group
//! commit), then answers each job. A job linked to one that follows it (a
//! call's record and outcome, see [`Link`]) may hold the commit a moment.
//! A job is answered only after its commit, so an answered write survives a
//! crash of the process; a job that fails rolls back its savepoint alone.
//! One writer means `SQLITE_BUSY` never reaches a client.
//!
//! Reads use a small pool of read-only connections; WAL lets them run beside
//! the writer. Checkpoints (copying the WAL back into the database file)
//! run on their own thread; the writer only copies the few frames committed
//! since each one, so the WAL can start over.
//!
//! Each session's calls and audit events are indexed by the writer in bulk,
//! between transactions (see [`filing`]).
//!
//! The submodules are plain functions over a `&Connection`, one per table,
//! so the service composes several of them inside one write job.

pub mod audit;
pub mod calls;
pub mod filing;
pub mod messages;
pub mod schema;
pub mod sessions;
pub mod state_cache;
pub mod tool_state;

use rusqlite::{Connection, OpenFlags};
use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub const DB_FILE: &str = "bulkhead.sqlite3";
/// Jobs per transaction: bounds the latency a large batch adds to its first job.
const MAX_BATCH: usize = 256;
/// The longest a transaction waits for the follow-up of a job that leads
/// one (see [`Link`]). A floor tool call runs in tens of microseconds; a
/// slower one's record commits alone after this, as if it had no link.
const LINGER: Duration = Duration::from_micros(500);
/// Read connections kept open when idle.
const MAX_IDLE_READERS: usize = 16;
/// Wait on a locked database (e.g. a checkpoint) instead of failing.
const BUSY_TIMEOUT_MS: u32 = 5_000;
/// The checkpointer runs at most this often: each run copies every page
/// committed since the last, so a page written by many calls is copied once.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// After a checkpoint the WAL file is truncated to this size if larger.
const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// What can go wrong in storage. `Unavailable` carries detail for the log
/// only; clients see a generic 503.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("rejected: {0:?}")]
    Rejected(Rejection),
}

/// A domain check made inside a transaction failed; nothing was written.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    NotFound,
    /// `If-Match` named another version than the current one.
    StaleVersion {
        current: i64,
    },
    /// An idempotency key was reused with another tool or input.
    IdempotencyConflict,
    /// A decision on a call that is no longer pending approval.
    NotPending,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

impl From<Rejection> for StoreError {
    fn from(r: Rejection) -> Self {
        StoreError::Rejected(r)
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// `Completion` answers a job once the fate of its transaction is known.
type Completion = Box<dyn FnOnce(Result<()>) + Send>;
/// A job runs in the writer's transaction (or is told it cannot run: `None`).
type Job = Box<dyn FnOnce(Option<&Tx>) -> (bool, Completion) + Send>;

/// How a write job relates to the one expected after it. A call that
/// starts while its `running` record commits submits the record as
/// `Leads(n)` and its outcome as `Follows(n)`: the writer holds the
/// record's transaction open up to [`LINGER`] for the outcome, so a short
/// call commits once instead of twice. Either job still runs in its own
/// savepoint, in submission order; the link only decides when to commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Link {
    #[default]
    Alone,
    Leads(u64),
    Follows(u64),
}

/// The writer's open transaction, as a write job sees it: the connection
/// (through `Deref`) and what the writer keeps in memory about committed
/// data, such as the head of each audit chain.
pub struct Tx<'a> {
    conn: &'a Connection,
    pub(crate) chains: &'a RefCell<audit::Heads>,
}

impl std::ops::Deref for Tx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

/// How much a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// WAL with `synchronous = NORMAL`: survives a crash of the process.
    #[default]
    Normal,
    /// `synchronous = FULL`: also survives power loss.
    Full,
}

pub struct Db {
    path: PathBuf,
    writer: mpsc::Sender<(Job, Link)>,
    readers: Mutex<Vec<Connection>>,
    links: AtomicU64,
    stats: Arc<WriterStats>,
}

/// What the writer has done since the database was opened (for metrics:
/// jobs per transaction is how well group commit works).
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Write jobs in those transactions, committed or rolled back alone.
    pub jobs: AtomicU64,
}

impl Db {
    /// Opens (creating if needed) the database in `dir` and starts the writer.
    pub fn open(dir: &Path, durability: Durability) -> Result<Db> {
        Db::open_with_linger(dir, durability, LINGER)
    }

    fn open_with_linger(dir: &Path, durability: Durability, linger: Duration) -> Result<Db> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Unavailable(format!("{}: {e}", dir.display())))?;
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path)?;
        conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS.into()))?;
        let sync = match durability {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        };
        // The writer never checkpoints (`wal_autocheckpoint = 0`): the
        // checkpointer thread does, on its own connection.
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON; \
             PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = {WAL_SIZE_LIMIT};"
        ))?;
        schema::migrate(&conn)?;
        let chains = catch_up_filing(&conn);
        let checkpointer = Connection::open(&path)?;
        checkpointer.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS.into()))?;
        checkpointer
            .execute_batch(&format!("PRAGMA synchronous = {sync}; PRAGMA journal_size_limit = {WAL_SIZE_LIMIT};"))?;
        let (committed, wake) = mpsc::sync_channel::<()>(1);
        let top_up = Arc::new(AtomicBool::new(false));
        let top_up_writer = top_up.clone();
        let (tx, rx) = mpsc::channel::<(Job, Link)>();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(name.into()).spawn(f).map(|_| ())
        };
        let stats = Arc::new(WriterStats::default());
        let writer = Writer { conn, linger, stats: stats.clone() };
        spawn("bulkhead-db-writer", Box::new(move || writer_loop(writer, chains, rx, committed, top_up_writer)))
            .and_then(|_| {
                spawn("bulkhead-db-checkpoint", Box::new(move || checkpoint_loop(checkpointer, wake, top_up)))
            })
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Db { path, writer: tx, readers: Mutex::new(Vec::new()), links: AtomicU64::new(0), stats })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn writer_stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Caps the database file at `max_bytes`, rounded down to whole pages
    /// (SQLite keeps the current size if the file is already larger);
    /// returns the cap now in force. Writes past it fail with `SQLITE_FULL`,
    /// are answered as [`StoreError::Unavailable`] and change nothing. Set
    /// on the writer's connection: only it allocates pages.
    pub async fn cap_size(&self, max_bytes: u64) -> Result<u64> {
        self.write(move |c| {
            let page: u64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            let set = format!("PRAGMA max_page_count = {}", (max_bytes / page).max(1));
            let pages: u64 = c.query_row(&set, [], |r| r.get(0))?;
            Ok(pages * page)
        })
        .await
    }

    /// Runs `f` in the writer's transaction; resolves after the commit.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Tx) -> Result<T> + Send + 'static,
    {
        self.submit(f)?.await
    }

    /// Queues `f` for the writer now; the returned future resolves after its
    /// commit. Jobs run in the order they are submitted, so a later job can
    /// rely on an earlier one without waiting for it.
    pub fn submit<T, F>(&self, f: F) -> Result<impl std::future::Future<Output = Result<T>> + use<T, F>>
    where
        T: Send + 'static,
        F: FnOnce(&Tx) -> Result<T> + Send + 'static,
    {
        self.submit_linked(Link::Alone, f)
    }

    /// A fresh number for a pair of linked jobs.
    pub fn new_link(&self) -> u64 {
        self.links.fetch_add(1, Ordering::Relaxed)
    }

    /// [`Db::submit`], with the job's place in a linked pair.
    pub fn submit_linked<T, F>(
        &self,
        link: Link,
        f: F,
    ) -> Result<impl std::future::Future<Output = Result<T>> + use<T, F>>
    where
        T: Send + 'static,
        F: FnOnce(&Tx) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let Some(conn) = conn else {
                let done: Completion = Box::new(move |r| {
                    let _ = tx.send(r.map(|_| unreachable!("a job that did not run cannot commit")));
                });
                return (false, done);
            };
            match std::panic::catch_unwind(AssertUnwindSafe(|| f(conn))) {
                Ok(Ok(value)) => (
                    true,
                    Box::new(move |r: Result<()>| {
                        let _ = tx.send(r.map(|_| value));
                    }),
                ),
                Ok(Err(e)) => (
                    false,
                    Box::new(move |_| {
                        let _ = tx.send(Err(e));
                    }),
                ),
                Err(_) => (
                    false,
                    Box::new(move |_| {
                        let _ = tx.send(Err(StoreError::Unavailable("a write job panicked".into())));
                    }),
                ),
            }
        });
        self.writer.send((job, link)).map_err(|_| StoreError::Unavailable("writer stopped".into()))?;
        Ok(async move { rx.await.map_err(|_| StoreError::Unavailable("writer dropped a job".into()))? })
    }

    /// Runs `f` on a read connection on this thread. For point lookups
    /// made during a call (microseconds against the page cache).
    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = match self.readers.lock().expect("reader pool poisoned").pop() {
            Some(c) => c,
            None => self.open_reader()?,
        };
        let out = f(&conn);
        let mut pool = self.readers.lock().expect("reader pool poisoned");
        if pool.len() < MAX_IDLE_READERS {
            pool.push(conn);
        }
        out
    }

    /// Runs `f` on a read connection on the blocking pool (for queries that
    /// may scan: lists, audit chains).
    pub async fn read_async<T, F>(self: &std::sync::Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.read(f))
            .await
            .map_err(|_| StoreError::Unavailable("read task failed".into()))?
    }

    fn open_reader(&self) -> Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS.into()))?;
        Ok(conn)
    }
}

/// Files what a stopped host left unfiled before any job runs, so the
/// writer starts knowing every chain's head is in the index. If that fails
/// (a read-only or full disk), the host still starts: the writer then looks
/// for heads in the tail too, and files later.
fn catch_up_filing(conn: &Connection) -> audit::Heads {
    let caught_up = in_transaction(conn, filing::lower_marks).and_then(|()| {
        loop {
            if in_transaction(conn, filing::file)? {
                break Ok(());
            }
        }
    });
    match caught_up {
        Ok(()) => audit::Heads::all_filed(),
        Err(e) => {
            tracing::warn!("cannot index calls and audit events by session yet (retried after the next write): {e}");
            audit::Heads::default()
        }
    }
}

/// The writer thread's own: its connection, and how it commits.
struct Writer {
    conn: Connection,
    linger: Duration,
    stats: Arc<WriterStats>,
}

fn writer_loop(
    Writer { conn, linger, stats }: Writer,
    chains: audit::Heads,
    rx: mpsc::Receiver<(Job, Link)>,
    committed: mpsc::SyncSender<()>,
    top_up: Arc<AtomicBool>,
) {
    let chains = RefCell::new(chains);
    let tx = Tx { conn: &conn, chains: &chains };
    // When filing is next due; it backs off while it fails (at the size cap
    // it needs pages that jobs need too).
    let (mut file_at, mut backoff) = (Instant::now(), filing::EVERY);
    while let Ok(first) = rx.recv() {
        if Instant::now() >= file_at {
            match in_transaction(&conn, filing::file) {
                Ok(caught_up) => {
                    backoff = filing::EVERY;
                    // A backlog is filed a slice per batch until it is gone.
                    if caught_up {
                        file_at = Instant::now() + filing::EVERY;
                        chains.borrow_mut().filed_all();
                    }
                }
                Err(e) => {
                    tracing::warn!("cannot index calls and audit events by session (retried in {backoff:?}): {e}");
                    file_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        // The checkpointer copied most of the WAL; copying the few frames
        // committed since, here between transactions, lets the next
        // transaction start the WAL over from its beginning. Without this
        // the WAL grew past 1 GB under sustained load (every transaction
        // began while frames were still to copy).
        if top_up.swap(false, Ordering::Relaxed)
            && let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            tracing::warn!("checkpoint failed: {e}");
        }
        run_transaction(&tx, &mut Gather::new(first, &rx, linger), &stats);
        // Wakes the checkpointer; a wake already pending covers this one.
        let _ = committed.try_send(());
    }
}

/// Where a transaction's jobs come from: the job that woke the writer,
/// then every job already waiting; then, while a job in it leads one that
/// has not come, the jobs that come within [`LINGER`] of its start, until
/// it has. The jobs run as they come, so the transaction's work is done
/// while it waits; only its commit waits.
struct Gather<'a> {
    rx: &'a mpsc::Receiver<(Job, Link)>,
    first: Option<(Job, Link)>,
    taken: usize,
    awaited: Vec<u64>,
    deadline: Instant,
}

impl<'a> Gather<'a> {
    fn new(first: (Job, Link), rx: &'a mpsc::Receiver<(Job, Link)>, linger: Duration) -> Self {
        Gather { rx, first: Some(first), taken: 0, awaited: Vec::new(), deadline: Instant::now() + linger }
    }
}

impl Iterator for Gather<'_> {
    type Item = Job;

    fn next(&mut self) -> Option<Job> {
        if self.taken == MAX_BATCH {
            return None;
        }
        let (job, link) = match self.first.take() {
            Some(first) => first,
            None => match self.rx.try_recv() {
                Ok(next) => next,
                Err(mpsc::TryRecvError::Disconnected) => return None,
                Err(mpsc::TryRecvError::Empty) => {
                    let left = self.deadline.saturating_duration_since(Instant::now());
                    if self.awaited.is_empty() || left.is_zero() {
                        return None;
                    }
                    self.rx.recv_timeout(left).ok()?
                }
            },
        };
        match link {
            Link::Alone => {}
            Link::Leads(n) => self.awaited.push(n),
            Link::Follows(n) => self.awaited.retain(|&a| a != n),
        }
        self.taken += 1;
        Some(job)
    }
}

/// Copies committed pages from the WAL into the database file, at most
/// every `CHECKPOINT_EVERY`, while there were commits. `PASSIVE` never
/// blocks the writer or readers; pages still read by an open snapshot wait
/// for the next run. Ends when the writer does.
fn checkpoint_loop(conn: Connection, wake: mpsc::Receiver<()>, top_up: Arc<AtomicBool>) {
    while wake.recv().is_ok() {
        std::thread::sleep(CHECKPOINT_EVERY);
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            Ok(()) => top_up.store(true, Ordering::Relaxed),
            Err(e) => tracing::warn!("checkpoint failed (retried after the next commit): {e}"),
        }
    }
}

/// Runs `f` in a transaction of its own on the writer's connection.
fn in_transaction<T>(conn: &Connection, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
    control(conn, "BEGIN IMMEDIATE")?;
    match f(conn).and_then(|value| control(conn, "COMMIT").map(|_| value)) {
        Ok(value) => Ok(value),
        Err(e) => {
            if !conn.is_autocommit() {
                let _ = control(conn, "ROLLBACK");
            }
            Err(e.into())
        }
    }
}

/// Runs a transaction-control statement through the statement cache (these
/// run several times per call; parsing them each time showed in profiles).
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Runs jobs from `jobs` in one transaction, each in its own savepoint, and
/// answers them after the commit. Stops early, leaving the rest for the
/// next transaction, when SQLite ended the transaction by itself: an
/// `SQLITE_FULL` or I/O error in a statement without a statement journal
/// (most single-row writes) rolls back the whole transaction, not just the
/// statement or the savepoint. Every job that ran in it is then answered
/// with an error, and no later job may run outside a transaction (each
/// statement would commit on its own while its caller is told it failed).
fn run_transaction(tx: &Tx, jobs: &mut impl Iterator<Item = Job>, stats: &WriterStats) {
    if let Err(e) = control(tx, "BEGIN IMMEDIATE") {
        tracing::error!("cannot begin a transaction: {e}");
        for job in jobs {
            let (_, done) = job(None);
            done(Err(StoreError::Unavailable(e.to_string())));
        }
        return;
    }
    let mut completions = Vec::new();
    let mut rolled_back = false;
    for job in jobs.by_ref() {
        if let Err(e) = control(tx, "SAVEPOINT job") {
            let (_, done) = job(None);
            done(Err(e.into()));
            rolled_back = tx.is_autocommit();
            if rolled_back {
                break;
            }
            continue;
        }
        let (ok, done) = job(Some(tx));
        completions.push(done);
        if tx.is_autocommit() {
            rolled_back = true;
            break;
        }
        let end = if ok {
            control(tx, "RELEASE job")
        } else {
            control(tx, "ROLLBACK TO job").and_then(|_| control(tx, "RELEASE job"))
        };
        match end {
            Ok(()) if ok => tx.chains.borrow_mut().release_job(),
            Ok(()) => tx.chains.borrow_mut().rollback_job(),
            Err(e) => {
                // The savepoint's fate is unknown: forget what the writer
                // knew rather than trust it.
                tracing::error!("cannot end a savepoint: {e}");
                tx.chains.borrow_mut().forget();
                rolled_back = tx.is_autocommit();
                if rolled_back {
                    break;
                }
            }
        }
    }
    let commit = if rolled_back {
        tracing::error!("SQLite rolled back the transaction after an error; its jobs are answered as failed");
        Err(StoreError::Unavailable("the transaction was rolled back".into()))
    } else {
        control(tx, "COMMIT").map_err(StoreError::from)
    };
    match &commit {
        Ok(()) => tx.chains.borrow_mut().commit(),
        Err(e) => {
            if !rolled_back {
                tracing::error!("commit failed, the batch is rolled back: {e}");
            }
            if !tx.is_autocommit() {
                let _ = control(tx, "ROLLBACK");
            }
            tx.chains.borrow_mut().forget();
        }
    }
    // Counted before the answers, so a caller reads what its job did.
    stats.jobs.fetch_add(completions.len() as u64, Ordering::Relaxed);
    if commit.is_ok() {
        stats.commits.fetch_add(1, Ordering::Relaxed);
    }
    for done in completions {
        done(match &commit {
            Ok(()) => Ok(()),
            Err(e) => Err(StoreError::Unavailable(e.to_string())),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database with one table `t (name)`, its writer waiting up to
    /// `linger` for follow-ups; its folder goes when it is dropped.
    struct TestDb {
        db: Db,
        dir: PathBuf,
        rt: tokio::runtime::Runtime,
    }

    impl TestDb {
        fn open(name: &str, linger: Duration) -> TestDb {
            let dir = std::env::temp_dir().join(format!("bulkhead-store-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let db = Db::open_with_linger(&dir, Durability::Normal, linger).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(db.write(|c| Ok(c.execute_batch("CREATE TABLE t (name TEXT)")?))).unwrap();
            TestDb { db, dir, rt }
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn counts(db: &Db) -> (u64, u64) {
        let stats = db.writer_stats();
        (stats.commits.load(Ordering::Relaxed), stats.jobs.load(Ordering::Relaxed))
    }

    /// Submits a job inserting `name` into `t`, and waits until the writer
    /// is running it: what is submitted next reaches the writer after it.
    fn insert_and_wait_until_run(
        db: &Db,
        link: Link,
        name: &'static str,
    ) -> impl std::future::Future<Output = Result<()>> + use<> {
        let (ran, running) = mpsc::channel();
        let job = db
            .submit_linked(link, move |c| {
                c.execute("INSERT INTO t VALUES (?1)", [name])?;
                let _ = ran.send(());
                Ok(())
            })
            .unwrap();
        running.recv().unwrap();
        job
    }

    /// A call's record and its outcome, linked, commit in one transaction
    /// when the outcome comes while the writer waits for it.
    #[test]
    fn a_follow_up_that_comes_in_time_commits_with_its_lead() {
        let TestDb { db, rt, .. } = &TestDb::open("linked", Duration::from_secs(60));
        let before = counts(db);
        let link = db.new_link();
        let lead = insert_and_wait_until_run(db, Link::Leads(link), "record");
        let follow = db.submit_linked(Link::Follows(link), |c| Ok(c.execute("INSERT INTO t VALUES ('outcome')", [])?));
        rt.block_on(async { (lead.await.unwrap(), follow.unwrap().await.unwrap()) });
        assert_eq!(counts(db), (before.0 + 1, before.1 + 2), "one commit for both jobs");
        let rows: i64 = db.read(|c| Ok(c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))?)).unwrap();
        assert_eq!(rows, 2);
    }

    /// A lead whose follow-up does not come (a long call) still commits,
    /// with the jobs that came while it waited; the link wants nothing more.
    #[test]
    fn a_lead_whose_follow_up_does_not_come_commits_after_the_linger() {
        let TestDb { db, rt, .. } = &TestDb::open("unlinked", Duration::from_secs(3));
        let before = counts(db);
        let link = db.new_link();
        let lead = insert_and_wait_until_run(db, Link::Leads(link), "record");
        let other = db.submit(|c| Ok(c.execute("INSERT INTO t VALUES ('message')", [])?)).unwrap();
        rt.block_on(async { (lead.await.unwrap(), other.await.unwrap()) });
        assert_eq!(counts(db), (before.0 + 1, before.1 + 2), "the job that came meanwhile joined the lead's commit");
        // A follow-up after its lead committed commits on its own.
        let late = db.submit_linked(Link::Follows(link), |c| Ok(c.execute("INSERT INTO t VALUES ('outcome')", [])?));
        rt.block_on(late.unwrap()).unwrap();
        assert_eq!(counts(db), (before.0 + 2, before.1 + 3));
    }

    /// At the size cap SQLite rolls back the whole transaction of a write
    /// that does not fit, not just its savepoint: the jobs batched with it
    /// must be answered exactly as the database ended up, and none may run
    /// outside a transaction (each statement would commit on its own).
    #[test]
    fn answers_match_the_database_when_a_write_hits_the_size_cap() {
        let dir = std::env::temp_dir().join(format!("bulkhead-store-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = Db::open(&dir, Durability::Normal).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(db.write(|c| Ok(c.execute_batch("CREATE TABLE t (name TEXT, v BLOB)")?))).unwrap();
        let cap = rt.block_on(db.cap_size(256 << 10)).unwrap();
        assert!(cap <= 256 << 10, "{cap}");
        let insert = |name: &'static str, bytes: usize| {
            db.submit(move |c| {
                c.execute("INSERT INTO t VALUES (?1, zeroblob(?2))", rusqlite::params![name, bytes as i64])?;
                Ok(())
            })
            .unwrap()
        };
        // The writer is busy with this one while the next three queue up,
        // so they run as one batch (this one may be in it too).
        let hold = db
            .submit(|_| {
                std::thread::sleep(Duration::from_millis(100));
                Ok(())
            })
            .unwrap();
        let (before, too_big, after) = (insert("before", 10), insert("too big", 1 << 20), insert("after", 10));
        let answers = rt.block_on(async { (hold.await, before.await, too_big.await, after.await) });
        assert!(matches!(answers.2, Err(StoreError::Unavailable(_))), "{:?}", answers.2);
        let stored: Vec<String> = db
            .read(|c| {
                let mut stmt = c.prepare("SELECT name FROM t ORDER BY rowid")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            })
            .unwrap();
        for (name, answer) in [("before", &answers.1), ("after", &answers.3)] {
            assert_eq!(answer.is_ok(), stored.iter().any(|s| s == name), "{name}: {answer:?}, stored {stored:?}");
        }
        assert!(answers.3.is_ok(), "a job after the failed one runs in a new transaction: {:?}", answers.3);
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
