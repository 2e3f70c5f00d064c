//! Each host's lease: a row in `hosts` whose `heartbeat_at` (database
//! time, so hosts' clocks do not matter) the host renews every quarter of
//! the lease. A host whose heartbeat is older than the lease is gone, and
//! only then are the calls it left `running` interrupted, by any host.
//!
//! A host judges others only after its own heartbeats have succeeded for a
//! whole lease: after an outage of the database every host's heartbeat is
//! old, and each must first get a lease's time to renew its own.

use super::{Fail, Inner};
use std::sync::Weak;
use std::time::Instant;

/// Writes this host's row (a new id at every start).
pub async fn take(inner: &Inner, name: &str) -> Result<(), Fail> {
    let c = inner.pool.get().await?;
    c.execute("INSERT INTO hosts (id, name) VALUES ($1, $2)", &[&inner.host, &name]).await?;
    *inner.healthy_since.lock().expect("lease clock poisoned") = Some(Instant::now());
    Ok(())
}

/// Renews the lease until the store is dropped.
pub fn spawn_heartbeat(inner: Weak<Inner>) {
    tokio::spawn(async move {
        loop {
            let Some(every) = inner.upgrade().map(|i| i.lease / 4) else { return };
            tokio::time::sleep(every).await;
            let Some(inner) = inner.upgrade() else { return };
            let renewed = beat(&inner).await;
            let mut since = inner.healthy_since.lock().expect("lease clock poisoned");
            match renewed {
                Ok(()) => {
                    since.get_or_insert_with(Instant::now);
                }
                Err(e) => {
                    if since.take().is_some() {
                        tracing::warn!("cannot renew this host's lease: {:?}", e);
                    }
                }
            }
        }
    });
}

async fn beat(inner: &Inner) -> Result<(), Fail> {
    let c = inner.pool.get().await?;
    // An upsert: a row removed meanwhile (by an operator) comes back.
    let st = c
        .prepare_cached(
            "INSERT INTO hosts (id, name) VALUES ($1, 'bulkhead') \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
        )
        .await?;
    c.execute(&st, &[&inner.host]).await?;
    Ok(())
}

/// Whether this host may judge other hosts' leases now.
pub fn may_judge(inner: &Inner) -> bool {
    let since = inner.healthy_since.lock().expect("lease clock poisoned");
    since.is_some_and(|t| t.elapsed() >= inner.lease)
}

/// The condition of a call whose host's lease has expired (`c` the call's
/// alias, `$1` the lease in seconds).
pub const EXPIRED: &str = "(c.host IS NULL OR NOT EXISTS (SELECT 1 FROM hosts h WHERE h.id = c.host \
     AND h.heartbeat_at > now() - make_interval(secs => $1)))";
