//! A call's turn on its tool's state across hosts: a session-level
//! advisory lock on a (session, tool) key, held on a connection of the
//! `turns` pool from before the tool runs until its outcome commits on that
//! connection. PostgreSQL grants a lock's waiters in the order they asked,
//! and each host asks in the order its own queue gives turns, so calls run
//! one at a time in arrival order.
//!
//! A turn dropped without its outcome (the call failed, the task was
//! cancelled, the lock was never granted) closes its connection instead of
//! returning it to the pool: the server then drops the lock, and a
//! connection with a lock or a query still in flight never serves anyone
//! else.

use super::{Fail, Inner};
use crate::store::Turned;
use crate::store::state_cache::{Committed, Snapshot};
use deadpool_postgres::Object;
use sha2::{Digest, Sha256};
use tokio_postgres::types::ToSql;

pub const UNLOCK: &str = "SELECT pg_advisory_unlock($1)";

pub struct PgTurn {
    conn: Option<Object>,
    key: i64,
}

/// The lock key of a (session, tool): the first 8 bytes of a hash of both.
/// A collision only makes two unrelated queues take turns.
fn key(session: &str, tool: &str) -> i64 {
    let mut h = Sha256::new();
    h.update(session.as_bytes());
    h.update([0]);
    h.update(tool.as_bytes());
    let digest = h.finalize();
    i64::from_be_bytes(digest[..8].try_into().expect("a sha256 has 8 bytes"))
}

const LOCK: &str = "SELECT pg_advisory_lock($1)";
const STATE_SIZE: &str = "SELECT COALESCE(SUM(octet_length(key) + octet_length(value)), 0)::bigint FROM tool_state \
     WHERE session = $1 AND tool = $2";
/// The entries, unless there are more than `$3` bytes of them.
const STATE_IF_SMALL: &str = "SELECT key, value FROM tool_state WHERE session = $1 AND tool = $2 \
     AND (SELECT COALESCE(SUM(octet_length(key) + octet_length(value)), 0) FROM tool_state \
     WHERE session = $1 AND tool = $2) <= $3 ORDER BY key";
static SESSION: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("SELECT {} FROM sessions WHERE id = $1", super::rows::SESSION));

/// Waits for the turn of a call of `tool` in `session`, then reads the
/// session and the tool's state (all of it, unless over `largest` bytes):
/// the lock and the reads go in one flight, the reads run once it is
/// granted.
pub async fn take(inner: &Inner, session: &str, tool: &str, largest: u64) -> Result<Turned, Fail> {
    let conn = inner.turns.get().await?;
    // The guard first: cancelled while waiting, the connection closes.
    let turn = PgTurn { conn: Some(conn), key: key(session, tool) };
    let conn = turn.conn.as_ref().expect("just set");
    // Prepared first, so that each is sent when first polled, in order.
    let (lock, read_session, size, entries) = (
        conn.prepare_cached(LOCK).await?,
        conn.prepare_cached(&SESSION).await?,
        conn.prepare_cached(STATE_SIZE).await?,
        conn.prepare_cached(STATE_IF_SMALL).await?,
    );
    let largest = largest.min(i64::MAX as u64) as i64;
    let lock_params: [&(dyn ToSql + Sync); 1] = [&turn.key];
    let session_params: [&(dyn ToSql + Sync); 1] = [&session];
    let state_params: [&(dyn ToSql + Sync); 2] = [&session, &tool];
    let small_params: [&(dyn ToSql + Sync); 3] = [&session, &tool, &largest];
    let (_, found, size, entries) = tokio::try_join!(
        conn.execute(&lock, &lock_params),
        conn.query(&read_session, &session_params),
        conn.query_one(&size, &state_params),
        conn.query(&entries, &small_params),
    )?;
    let session = found.first().map(super::rows::session).transpose()?;
    let size = size.try_get::<_, i64>(0)?.max(0) as u64;
    let state = if size > largest as u64 {
        Committed::Large { size }
    } else {
        let entries = entries.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect::<Result<_, Fail>>()?;
        Committed::Cached(std::sync::Arc::new(Snapshot { entries, size }))
    };
    Ok(Turned { held: Box::new(turn), session, state })
}

impl PgTurn {
    /// The connection holding the lock, for the outcome's transaction.
    pub fn conn(&mut self) -> &mut Object {
        self.conn.as_mut().expect("a turn keeps its connection until released")
    }

    pub fn key(&self) -> i64 {
        self.key
    }

    /// The lock was released by a statement of the outcome's pipeline
    /// ([`UNLOCK`]): the connection goes back to the pool.
    pub fn unlocked(mut self) {
        drop(self.conn.take());
    }

    /// After the outcome committed: unlocks and returns the connection to
    /// the pool (or closes it, when the unlock fails).
    pub async fn release(mut self) {
        let Some(conn) = self.conn.take() else { return };
        let unlocked = async {
            let unlock = conn.prepare_cached(UNLOCK).await?;
            conn.query_one(&unlock, &[&self.key]).await?.try_get::<_, bool>(0)
        };
        match unlocked.await {
            Ok(true) => drop(conn),
            _ => drop(Object::take(conn)),
        }
    }
}

impl Drop for PgTurn {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(Object::take(conn));
        }
    }
}
