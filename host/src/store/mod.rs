//! Persistence in one SQLite file (WAL), through a single write connection.
//!
//! Every write goes through [`Db::write`] (or [`Db::submit`]). When the
//! writer is idle (no transaction open, none queued, no recent group
//! commit: see [`Db::run_here`]), the job runs and commits right away on
//! the caller's thread: a lone call pays no hand-off to another thread (on
//! this VM each wake of a parked thread costs tens of microseconds).
//! Otherwise it queues for the writer thread, which runs the
//! jobs waiting, and those that come while it does, each inside its own
//! savepoint of one transaction, commits once (group commit), then answers
//! each job. A job linked to one that follows it (a call's record and
//! outcome, see [`Link`]) may hold the commit a moment. Jobs run in the
//! order they are submitted either way. A job is answered only after its
//! commit, so an answered write survives a crash of the process; a job that
//! fails rolls back its savepoint alone. One write connection means
//! `SQLITE_BUSY` never reaches a client.
//!
//! Reads use a small pool of read-only connections; WAL lets them run beside
//! the writer. Checkpoints (copying the WAL back into the database file)
//! run on their own thread; the writer only copies the few frames committed
//! since each one, so the WAL can start over.
//!
//! Each session's calls and audit events are indexed by the writer in bulk,
//! between transactions (see [`filing`]).
//!
//! One process writes a data folder at a time (see [`lock`]).
//!
//! The submodules are plain functions over a `&Connection`, one per table,
//! so the service composes several of them inside one write job.

pub mod audit;
pub mod calls;
pub mod filing;
pub mod lock;
pub mod messages;
pub mod schema;
pub mod sessions;
pub mod state_cache;
pub mod tool_state;

use rusqlite::{Connection, OpenFlags};
use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
/// A caller runs its write job itself only once the writer thread has
/// committed no group of jobs for this long.
const QUIET: Duration = Duration::from_millis(5);
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
    /// The write connection and what goes with it, held by whoever runs a
    /// transaction: the writer thread, or a caller that found it idle.
    writer: Arc<Mutex<Writer>>,
    /// The writer thread's queue.
    queue: mpsc::Sender<(Job, Link)>,
    /// Joined on drop, so the folder's lock is free once the `Db` is gone.
    writer_thread: Option<std::thread::JoinHandle<()>>,
    /// Jobs sent to the queue that the writer has not yet taken while
    /// holding `writer`. A caller runs its job itself only when this is 0:
    /// no earlier job is still to run.
    queued: Arc<AtomicUsize>,
    /// Callers may run jobs themselves (see [`Db::run_here`]).
    runs_here: bool,
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
    /// Of those jobs, the ones their callers ran (the writer was idle).
    pub jobs_run_by_callers: AtomicU64,
}

/// Lets the writer finish the jobs already queued, then waits for it to
/// close the write connection and release the folder's lock: a `Db`
/// opened on the same folder right after this one is dropped (a restart
/// in one process, as the tests do) finds it free. (The checkpointer's
/// connection closes on its own, within one checkpoint; SQLite's locks
/// keep a checkpoint safe beside a new writer.) Dropped on the writer
/// thread itself, it does not wait; no job holds a `Db` today.
impl Drop for Db {
    fn drop(&mut self) {
        // The writer ends when its queue is disconnected and empty.
        drop(std::mem::replace(&mut self.queue, mpsc::channel().0));
        if let Some(thread) = self.writer_thread.take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

impl Db {
    /// Opens (creating if needed) the database in `dir` and starts the writer.
    pub fn open(dir: &Path, durability: Durability) -> Result<Db> {
        Db::open_with_linger(dir, durability, LINGER)
    }

    /// [`Db::open`] in a folder whose lock the caller took first (before
    /// writing anything else in it).
    pub fn open_locked(lock: lock::Folder, durability: Durability) -> Result<Db> {
        Db::open_in(lock, durability, LINGER)
    }

    fn open_with_linger(dir: &Path, durability: Durability, linger: Duration) -> Result<Db> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Unavailable(format!("{}: {e}", dir.display())))?;
        Db::open_in(lock::lock(dir)?, durability, linger)
    }

    fn open_in(lock: lock::Folder, durability: Durability, linger: Duration) -> Result<Db> {
        let path = lock.dir().join(DB_FILE);
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
        let (tx, rx) = mpsc::channel::<(Job, Link)>();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| std::thread::Builder::new().name(name.into()).spawn(f);
        let stats = Arc::new(WriterStats::default());
        let writer = Arc::new(Mutex::new(Writer {
            conn,
            _lock: lock,
            chains: RefCell::new(chains),
            linger,
            stats: stats.clone(),
            file_at: Instant::now(),
            backoff: filing::EVERY,
            unfiled: true,
            grouped_at: None,
            top_up: top_up.clone(),
            committed,
        }));
        let queued = Arc::new(AtomicUsize::new(0));
        let (thread_writer, thread_queued) = (writer.clone(), queued.clone());
        let writer_thread =
            spawn("bulkhead-db-writer", Box::new(move || writer_loop(&thread_writer, &rx, &thread_queued)))
                .and_then(|thread| {
                    spawn("bulkhead-db-checkpoint", Box::new(move || checkpoint_loop(checkpointer, wake, top_up)))
                        .map(|_| thread)
                })
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Db {
            path,
            writer,
            queue: tx,
            writer_thread: Some(writer_thread),
            queued,
            runs_here: durability == Durability::Normal,
            readers: Mutex::new(Vec::new()),
            links: AtomicU64::new(0),
            stats,
        })
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

    /// Runs `f` now if the writer is idle (see [`Db::run_here`]), else
    /// queues it; the returned future resolves after its commit. Jobs run
    /// in the order they are submitted, so a later job can rely on an
    /// earlier one without waiting for it.
    pub fn submit<T, F>(&self, f: F) -> Result<Answer<T>>
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
    pub fn submit_linked<T, F>(&self, link: Link, f: F) -> Result<Answer<T>>
    where
        T: Send + 'static,
        F: FnOnce(&Tx) -> Result<T> + Send + 'static,
    {
        let (job, answer) = job(f);
        if let Err(job) = self.run_here(job) {
            self.enqueue(job, link)?;
        }
        Ok(answer)
    }

    /// Runs `job` in a transaction of its own on this thread if the writer
    /// is idle: no transaction open, no job queued, and no commit of several
    /// calls' jobs in the last [`QUIET`] (under load, a job that commits
    /// alone costs more than a share of the writer's next commit). Else
    /// gives it back. Never with [`Durability::Full`]: there a commit waits
    /// milliseconds for the disk, which would stall the caller's runtime
    /// thread, and a hand-off costs little beside it.
    /// (The upkeep is left to the writer thread, off the callers' path.)
    fn run_here(&self, job: Job) -> std::result::Result<(), Job> {
        if !self.runs_here {
            return Err(job);
        }
        let Ok(mut writer) = self.writer.try_lock() else {
            return Err(job);
        };
        let batching = writer.grouped_at.is_some_and(|at| at.elapsed() < QUIET);
        if self.queued.load(Ordering::SeqCst) != 0 || batching {
            return Err(job);
        }
        writer.run(&mut std::iter::once(job));
        self.stats.jobs_run_by_callers.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// [`Db::submit_linked`], but queued for the writer thread even when it
    /// is idle: for a job that others are about to join (other calls are in
    /// flight), so that they share its commit.
    pub fn submit_queued<T, F>(&self, link: Link, f: F) -> Result<Answer<T>>
    where
        T: Send + 'static,
        F: FnOnce(&Tx) -> Result<T> + Send + 'static,
    {
        let (job, answer) = job(f);
        self.enqueue(job, link)?;
        Ok(answer)
    }

    /// Queues `job` for the writer thread.
    fn enqueue(&self, job: Job, link: Link) -> Result<()> {
        // Counted before it is sent, so no caller runs a later job first.
        self.queued.fetch_add(1, Ordering::SeqCst);
        self.queue.send((job, link)).map_err(|_| {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            StoreError::Unavailable("writer stopped".into())
        })
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

/// Wraps `f` as a write job, with the future of its answer.
fn job<T, F>(f: F) -> (Job, Answer<T>)
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
    (job, Answer(rx))
}

/// A write job's answer: resolves once its transaction's fate is known.
pub struct Answer<T>(oneshot::Receiver<Result<T>>);

impl<T> std::future::Future for Answer<T> {
    type Output = Result<T>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<T>> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|answer| match answer {
            Ok(answer) => answer,
            Err(_) => Err(StoreError::Unavailable("writer dropped a job".into())),
        })
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

/// The write connection, and what the writer keeps beside it.
struct Writer {
    conn: Connection,
    /// The data folder's lock, released with the write connection.
    _lock: lock::Folder,
    /// The head of each audit chain, as committed (see [`Tx`]).
    chains: RefCell<audit::Heads>,
    linger: Duration,
    stats: Arc<WriterStats>,
    /// When filing is next due; it backs off while it fails (at the size
    /// cap it needs pages that jobs need too).
    file_at: Instant,
    backoff: Duration,
    /// Rows may wait to be filed: something committed since the last
    /// complete filing.
    unfiled: bool,
    /// When the writer thread last committed jobs of several calls.
    grouped_at: Option<Instant>,
    /// Set by the checkpointer: the few frames committed since its run are
    /// to be copied too.
    top_up: Arc<AtomicBool>,
    /// Wakes the checkpointer after a commit.
    committed: mpsc::SyncSender<()>,
}

impl Writer {
    /// Filing and the checkpoint top-up, between transactions.
    fn upkeep(&mut self) {
        if self.unfiled && Instant::now() >= self.file_at {
            match in_transaction(&self.conn, filing::file) {
                Ok(caught_up) => {
                    self.backoff = filing::EVERY;
                    // A backlog is filed a slice per batch until it is gone.
                    if caught_up {
                        self.file_at = Instant::now() + filing::EVERY;
                        self.chains.get_mut().filed_all();
                        self.unfiled = false;
                    }
                }
                Err(e) => {
                    let backoff = self.backoff;
                    tracing::warn!("cannot index calls and audit events by session (retried in {backoff:?}): {e}");
                    self.file_at = Instant::now() + backoff;
                    self.backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        // The checkpointer copied most of the WAL; copying the few frames
        // committed since, here between transactions, lets the next
        // transaction start the WAL over from its beginning. Without this
        // the WAL grew past 1 GB under sustained load (every transaction
        // began while frames were still to copy).
        if self.top_up.swap(false, Ordering::Relaxed)
            && let Err(e) = self.conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            tracing::warn!("checkpoint failed: {e}");
        }
    }

    /// Runs `jobs` in one transaction, then wakes the checkpointer.
    fn run(&mut self, jobs: &mut impl Iterator<Item = Job>) {
        let tx = Tx { conn: &self.conn, chains: &self.chains };
        run_transaction(&tx, jobs, &self.stats);
        self.unfiled = true;
        // A wake already pending covers this one.
        let _ = self.committed.try_send(());
    }
}

/// The writer thread: runs what callers queued, in transactions of many
/// jobs, and the upkeep between transactions, also when callers ran their
/// jobs themselves. Ends when the database is dropped (or a transaction
/// panicked).
fn writer_loop(writer: &Mutex<Writer>, rx: &mpsc::Receiver<(Job, Link)>, queued: &AtomicUsize) {
    loop {
        let first = match rx.recv_timeout(filing::EVERY) {
            Ok(first) => Some(first),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let Ok(mut writer) = writer.lock() else {
            tracing::error!("the database writer stopped after a panic");
            return;
        };
        writer.upkeep();
        if let Some(first) = first {
            // Taken off the count only now that no caller can run a job first.
            queued.fetch_sub(1, Ordering::SeqCst);
            let linger = writer.linger;
            let mut jobs = Gather::new(first, rx, linger, queued);
            writer.run(&mut jobs);
            // More than a linked pair: callers are many, more will come.
            if jobs.taken > 2 {
                writer.grouped_at = Some(Instant::now());
            }
        }
    }
}

/// Where a transaction's jobs come from: the job that woke the writer,
/// then every job already waiting; then, while a job in it leads one that
/// has not come, the jobs that come within [`LINGER`] of its start, until
/// it has. The jobs run as they come, so the transaction's work is done
/// while it waits; only its commit waits.
struct Gather<'a> {
    rx: &'a mpsc::Receiver<(Job, Link)>,
    queued: &'a AtomicUsize,
    first: Option<(Job, Link)>,
    taken: usize,
    awaited: Vec<u64>,
    deadline: Instant,
}

impl<'a> Gather<'a> {
    fn new(first: (Job, Link), rx: &'a mpsc::Receiver<(Job, Link)>, linger: Duration, queued: &'a AtomicUsize) -> Self {
        Gather { rx, queued, first: Some(first), taken: 0, awaited: Vec::new(), deadline: Instant::now() + linger }
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
            None => {
                let next = match self.rx.try_recv() {
                    Ok(next) => next,
                    Err(mpsc::TryRecvError::Disconnected) => return None,
                    Err(mpsc::TryRecvError::Empty) => {
                        let left = self.deadline.saturating_duration_since(Instant::now());
                        if self.awaited.is_empty() || left.is_zero() {
                            return None;
                        }
                        self.rx.recv_timeout(left).ok()?
                    }
                };
                self.queued.fetch_sub(1, Ordering::SeqCst);
                next
            }
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
            TestDb::open_with(name, Durability::Normal, linger)
        }

        fn open_with(name: &str, durability: Durability, linger: Duration) -> TestDb {
            let dir = std::env::temp_dir().join(format!("bulkhead-store-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let db = Db::open_with_linger(&dir, durability, linger).unwrap();
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

    /// The `name` column of table `t`, in insertion order.
    fn names(db: &Db) -> Vec<String> {
        db.read(|c| {
            let mut stmt = c.prepare("SELECT name FROM t ORDER BY rowid")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .unwrap()
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
        let answer = db
            .submit_queued(link, move |c| {
                c.execute("INSERT INTO t VALUES (?1)", [name])?;
                let _ = ran.send(());
                Ok(())
            })
            .unwrap();
        running.recv().unwrap();
        answer
    }

    /// With the writer idle, a job runs on the caller's thread and is
    /// answered as soon as `submit` returns; while a transaction is open,
    /// a job queues behind it, and runs after it.
    #[test]
    fn a_job_runs_on_the_callers_thread_only_when_the_writer_is_idle() {
        let TestDb { db, rt, .. } = &TestDb::open("here", Duration::from_secs(60));
        let caller = std::thread::current().id();
        let ran_on = |tx: mpsc::Sender<std::thread::ThreadId>| {
            move |_: &Tx| {
                let _ = tx.send(std::thread::current().id());
                Ok(())
            }
        };
        let (tx, on) = mpsc::channel();
        // The writer thread's timer may hold the connection for its upkeep
        // at any moment; then a job queues. It is rare: a few tries do.
        let ran_here = (0..10).any(|_| {
            let mut idle = Box::pin(db.submit(ran_on(tx.clone())).unwrap());
            if on.try_recv() != Ok(caller) {
                rt.block_on(idle).unwrap();
                return false;
            }
            let done = std::future::poll_fn(|cx| std::task::Poll::Ready(idle.as_mut().poll(cx)));
            assert!(matches!(rt.block_on(done), std::task::Poll::Ready(Ok(()))), "answered at once");
            true
        });
        assert!(ran_here, "ran before submit returned");
        while on.try_recv().is_ok() {}
        // A lead holds its transaction open for its follow-up.
        let link = db.new_link();
        let lead = insert_and_wait_until_run(db, Link::Leads(link), "record");
        let busy = db.submit(ran_on(tx)).unwrap();
        let follow = db.submit_linked(Link::Follows(link), |c| Ok(c.execute("INSERT INTO t VALUES ('outcome')", [])?));
        rt.block_on(async { (lead.await.unwrap(), busy.await.unwrap(), follow.unwrap().await.unwrap()) });
        let busy_ran_on = on.try_recv().expect("the job ran");
        assert_ne!(busy_ran_on, caller, "queued behind the open transaction: ran on the writer's thread");
        assert_eq!(names(db), ["record", "outcome"]);
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

    /// With `synchronous = FULL` a commit waits for the disk: no caller
    /// runs one on its own (runtime) thread, idle writer or not.
    #[test]
    fn with_full_durability_jobs_always_run_on_the_writers_thread() {
        let TestDb { db, rt, .. } = &TestDb::open_with("full", Durability::Full, LINGER);
        let caller = std::thread::current().id();
        for _ in 0..3 {
            std::thread::sleep(QUIET);
            let ran_on = rt.block_on(db.submit(|_| Ok(std::thread::current().id())).unwrap()).unwrap();
            assert_ne!(ran_on, caller);
        }
        assert_eq!(db.writer_stats().jobs_run_by_callers.load(Ordering::Relaxed), 0);
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
            .submit_queued(Link::Alone, |_| {
                std::thread::sleep(Duration::from_millis(100));
                Ok(())
            })
            .unwrap();
        let (before, too_big, after) = (insert("before", 10), insert("too big", 1 << 20), insert("after", 10));
        let answers = rt.block_on(async { (hold.await, before.await, too_big.await, after.await) });
        assert!(matches!(answers.2, Err(StoreError::Unavailable(_))), "{:?}", answers.2);
        let stored = names(&db);
        for (name, answer) in [("before", &answers.1), ("after", &answers.3)] {
            assert_eq!(answer.is_ok(), stored.iter().any(|s| s == name), "{name}: {answer:?}, stored {stored:?}");
        }
        assert!(answers.3.is_ok(), "a job after the failed one runs in a new transaction: {:?}", answers.3);
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
