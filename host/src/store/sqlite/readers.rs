//! Reads: a small pool of read-only connections beside the writer (WAL
//! lets them run while it writes).

use super::{Db, Result, StoreError};
use rusqlite::{Connection, OpenFlags};

/// Read connections kept open when idle.
const MAX_IDLE_READERS: usize = 16;

impl Db {
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
        conn.busy_timeout(std::time::Duration::from_millis(super::BUSY_TIMEOUT_MS.into()))?;
        Ok(conn)
    }
}
