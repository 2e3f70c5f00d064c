//! The SQLite backend: one file (WAL), through a single write connection.
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
//! # Layout
//!
//! - this file: [`Db`], the facade (open, submit, the write fast path).
//! - `writer`: jobs, [`Answer`], [`Link`], [`Tx`], the writer thread,
//!   group commit (`run_transaction`).
//! - `readers`: the read-only connection pool ([`Db::read`]).
//! - `checkpoint`: the checkpointer thread.
//! - `ops`: the [`Store`](super::Store) interface over a [`Db`]
//!   ([`SqliteStore`]): each method one write job or one read.
//! - one file per table, plain functions over a `&Connection`, so the
//!   service composes several of them inside one write job: [`sessions`],
//!   [`messages`], [`calls`], [`tool_state`], [`audit`] (the hash chain);
//!   [`filing`] (the per-session index), [`schema`] (migrations),
//!   [`lock`] (one host per data folder).

pub mod audit;
pub mod calls;
mod checkpoint;
pub mod filing;
pub mod lock;
pub mod messages;
mod ops;
mod readers;
pub mod schema;
pub mod sessions;
pub mod tool_state;
mod writer;

pub use super::{Rejection, Result, StoreError};
use checkpoint::checkpoint_loop;
pub use ops::SqliteStore;
pub use writer::{Answer, Link, Tx};
use writer::{Job, LINGER, QUIET, Writer, catch_up_filing, job, writer_loop};

use rusqlite::Connection;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub const DB_FILE: &str = "bulkhead.sqlite3";
/// Wait on a locked database (e.g. a checkpoint) instead of failing.
const BUSY_TIMEOUT_MS: u32 = 5_000;
/// After a checkpoint the WAL file is truncated to this size if larger.
const WAL_SIZE_LIMIT: i64 = 64 << 20;

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
