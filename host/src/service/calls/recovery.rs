//! Calls the host could not finish: `interrupted` when a restart finds
//! them `running`, `failed` when they ran but their outcome could not be
//! stored (or the host failed while they ran).

use crate::model::CallError;
use crate::service::{Result, Service};
pub(in crate::service) use crate::store::Abandoned;
use std::sync::Arc;
use std::time::Duration;

impl Service {
    /// Marks calls left `running` by a stopped host as `interrupted`.
    pub async fn recover(&self) -> Result<usize> {
        Ok(self.store.interrupt_orphans().await?)
    }

    /// Finishes `running` calls as `failed` in one transaction (they ran,
    /// but their outcome could not be stored or the host failed meanwhile),
    /// with their usage and audit notes. A call no longer running (or
    /// gone with its session) is skipped: checked inside the write, so a
    /// finished call is never overwritten.
    pub(in crate::service) async fn fail_abandoned(&self, batch: Vec<Abandoned>) -> Result<()> {
        let failed = self.store.fail_abandoned(batch).await?;
        for call in &failed {
            self.count_call(call, 0);
            let _ = self.finished.send(call.id.clone());
        }
        Ok(())
    }

    /// Queues `a` to be finished `failed`; one task retries all queued
    /// calls together until storage takes them.
    pub(in crate::service) fn abandon(self: &Arc<Self>, a: Abandoned) {
        let mut pending = self.abandoned.lock().expect("abandoned calls poisoned");
        pending.calls.push(a);
        if !pending.reaping {
            pending.reaping = true;
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }
}

/// Why a call whose outcome could not be stored failed.
pub(in crate::service) fn unstored() -> CallError {
    CallError {
        code: "storage_unavailable".into(),
        message: "the call ran but its outcome could not be stored; its state changes were discarded".into(),
    }
}

/// At most this many abandoned calls are finished per write, so a long
/// outage's backlog does not hold the writer in one long transaction.
const REAP_BATCH: usize = 256;

/// Calls waiting to be finished `failed` (see `abandon`).
#[derive(Default)]
pub(in crate::service) struct AbandonedCalls {
    calls: Vec<Abandoned>,
    /// Whether a `reap` task is running.
    reaping: bool,
}

/// A call whose outcome could not be committed (storage failed: database at
/// its cap, I/O error) would stay `running` until the next restart. Its
/// state writes are dropped: once the call gave up its turn, a later call
/// may have run on the state as it was. This finishes the queued calls
/// `failed` as soon as storage takes writes again, all in one write per
/// try, backing off while it fails; it ends when none is left.
async fn reap(service: std::sync::Weak<Service>) {
    let mut wait = Duration::from_millis(100);
    loop {
        tokio::time::sleep(wait).await;
        let Some(service) = service.upgrade() else { return };
        let batch: Vec<Abandoned> = {
            let mut pending = service.abandoned.lock().expect("abandoned calls poisoned");
            let n = pending.calls.len().min(REAP_BATCH);
            pending.calls.drain(..n).collect()
        };
        let result = service.fail_abandoned(batch.clone()).await;
        let mut pending = service.abandoned.lock().expect("abandoned calls poisoned");
        match result {
            Ok(()) => wait = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!("{} calls are still `running`: their failure cannot be stored yet: {e}", batch.len());
                pending.calls.extend(batch);
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
        if pending.calls.is_empty() {
            pending.reaping = false;
            return;
        }
    }
}
