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
use deadpool_postgres::Object;
use sha2::{Digest, Sha256};

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

/// Waits for the turn of a call of `tool` in `session`.
pub async fn take(inner: &Inner, session: &str, tool: &str) -> Result<PgTurn, Fail> {
    let conn = inner.turns.get().await?;
    // The guard first: cancelled while waiting, the connection closes.
    let turn = PgTurn { conn: Some(conn), key: key(session, tool) };
    let conn = turn.conn.as_ref().expect("just set");
    let lock = conn.prepare_cached("SELECT pg_advisory_lock($1)").await?;
    conn.execute(&lock, &[&turn.key]).await?;
    Ok(turn)
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
