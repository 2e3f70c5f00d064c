//! Checkpoints: copying committed pages from the WAL back into the
//! database file, on a thread and connection of their own, so the writer
//! never waits for one.

use rusqlite::Connection;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// The checkpointer runs at most this often: each run copies every page
/// committed since the last, so a page written by many calls is copied once.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// Copies committed pages from the WAL into the database file, at most
/// every `CHECKPOINT_EVERY`, while there were commits. `PASSIVE` never
/// blocks the writer or readers; pages still read by an open snapshot wait
/// for the next run. Ends when the writer does.
pub(super) fn checkpoint_loop(conn: Connection, wake: mpsc::Receiver<()>, top_up: Arc<AtomicBool>) {
    while wake.recv().is_ok() {
        std::thread::sleep(CHECKPOINT_EVERY);
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            Ok(()) => top_up.store(true, Ordering::Relaxed),
            Err(e) => tracing::warn!("checkpoint failed (retried after the next commit): {e}"),
        }
    }
}
