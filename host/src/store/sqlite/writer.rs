//! The write path: jobs, their answers, and the writer that runs them in
//! transactions of many jobs (group commit), each job in its own
//! savepoint, answered only after the commit.

use super::{Result, StoreError, WriterStats, audit, filing, lock};
use rusqlite::Connection;
use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Jobs per transaction: bounds the latency a large batch adds to its first job.
const MAX_BATCH: usize = 256;
/// The longest a transaction waits for the follow-up of a job that leads
/// one (see [`Link`]). A floor tool call runs in tens of microseconds; a
/// slower one's record commits alone after this, as if it had no link.
pub(super) const LINGER: Duration = Duration::from_micros(500);
/// A caller runs its write job itself only once the writer thread has
/// committed no group of jobs for this long.
pub(super) const QUIET: Duration = Duration::from_millis(5);

/// `Completion` answers a job once the fate of its transaction is known.
pub(super) type Completion = Box<dyn FnOnce(Result<()>) + Send>;
/// A job runs in the writer's transaction (or is told it cannot run: `None`).
pub(super) type Job = Box<dyn FnOnce(Option<&Tx>) -> (bool, Completion) + Send>;

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
    pub(super) conn: &'a Connection,
    pub(crate) chains: &'a RefCell<audit::Heads>,
}

impl std::ops::Deref for Tx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

/// Wraps `f` as a write job, with the future of its answer.
pub(super) fn job<T, F>(f: F) -> (Job, Answer<T>)
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
pub(super) fn catch_up_filing(conn: &Connection) -> audit::Heads {
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
pub(super) struct Writer {
    pub(super) conn: Connection,
    /// The data folder's lock, released with the write connection.
    pub(super) _lock: lock::Folder,
    /// The head of each audit chain, as committed (see [`Tx`]).
    pub(super) chains: RefCell<audit::Heads>,
    pub(super) linger: Duration,
    pub(super) stats: Arc<WriterStats>,
    /// When filing is next due; it backs off while it fails (at the size
    /// cap it needs pages that jobs need too).
    pub(super) file_at: Instant,
    pub(super) backoff: Duration,
    /// Rows may wait to be filed: something committed since the last
    /// complete filing.
    pub(super) unfiled: bool,
    /// When the writer thread last committed jobs of several calls.
    pub(super) grouped_at: Option<Instant>,
    /// Set by the checkpointer: the few frames committed since its run are
    /// to be copied too.
    pub(super) top_up: Arc<AtomicBool>,
    /// Wakes the checkpointer after a commit.
    pub(super) committed: mpsc::SyncSender<()>,
}

impl Writer {
    /// Filing and the checkpoint top-up, between transactions.
    pub(super) fn upkeep(&mut self) {
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
    pub(super) fn run(&mut self, jobs: &mut impl Iterator<Item = Job>) {
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
pub(super) fn writer_loop(writer: &Mutex<Writer>, rx: &mpsc::Receiver<(Job, Link)>, queued: &AtomicUsize) {
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

/// Runs `f` in a transaction of its own on the writer's connection.
pub(super) fn in_transaction<T>(conn: &Connection, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
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
