//! What a session's workspace may hold and what it holds: the count calls
//! charge before they grow the folder.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// One workspace's quota and what is used of it.
#[derive(Debug)]
pub struct WorkspaceQuota {
    pub(super) max_bytes: u64,
    pub(super) max_entries: u64,
    bytes: AtomicU64,
    entries: AtomicU64,
    /// The folder is walked once, by the first call to hold this count.
    measured: Mutex<bool>,
}

impl WorkspaceQuota {
    pub fn new(max_bytes: u64, max_entries: u64) -> WorkspaceQuota {
        WorkspaceQuota {
            max_bytes,
            max_entries,
            bytes: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            measured: Mutex::new(false),
        }
    }

    /// Counts what the folder holds, unless a call sharing this count did.
    pub fn measure_once(&self, dir: &Path) {
        let mut measured = self.measured.lock().unwrap_or_else(|e| e.into_inner());
        if !*measured {
            let (bytes, entries) = measure(dir);
            self.bytes.store(bytes, Ordering::SeqCst);
            self.entries.store(entries, Ordering::SeqCst);
            *measured = true;
        }
    }

    /// (bytes, entries) in use.
    pub fn used(&self) -> (u64, u64) {
        (self.bytes.load(Ordering::SeqCst), self.entries.load(Ordering::SeqCst))
    }

    pub(super) fn charge_bytes(&self, n: u64) -> bool {
        n == 0 || charge(&self.bytes, self.max_bytes, n)
    }

    pub(super) fn charge_entry(&self) -> bool {
        charge(&self.entries, self.max_entries, 1)
    }

    /// Gives back a charge whose operation failed.
    pub(super) fn refund(&self, bytes: u64, entries: u64) {
        for (used, n) in [(&self.bytes, bytes), (&self.entries, entries)] {
            let _ = used.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| Some(u.saturating_sub(n)));
        }
    }
}

fn charge(used: &AtomicU64, max: u64, n: u64) -> bool {
    used.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| u.checked_add(n).filter(|total| *total <= max)).is_ok()
}

/// Bytes (file contents, link targets; a hard-linked file once) and entries
/// under `dir`, without following links. A folder that cannot be read
/// counts as empty: nothing in it can have been written by a tool either.
fn measure(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut entries) = (0u64, 0u64);
    let mut linked = HashSet::new();
    let mut folders: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let Ok(list) = std::fs::read_dir(&folder) else { continue };
        for entry in list.flatten() {
            entries += 1;
            // `DirEntry::metadata` does not follow a link.
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                folders.push(entry.path());
            } else if meta.is_symlink() || meta.nlink() == 1 || linked.insert((meta.dev(), meta.ino())) {
                bytes = bytes.saturating_add(meta.len());
            }
        }
    }
    (bytes, entries)
}

/// Quotas of the workspaces that calls are using, by session: calls that
/// overlap share one count; the last to finish drops it, so the next call
/// measures again and sees what was deleted. Every write a call makes is
/// done before the call ends (see `stream`), so no write is still landing
/// when the folder is measured again.
#[derive(Default)]
pub struct WorkspaceQuotas {
    by_session: Mutex<HashMap<String, Weak<WorkspaceQuota>>>,
}

impl WorkspaceQuotas {
    /// The session's shared count, or a new one to measure
    /// ([`WorkspaceQuota::measure_once`]) before use.
    pub fn get(&self, session: &str, max_bytes: u64, max_entries: u64) -> Arc<WorkspaceQuota> {
        let mut map = self.by_session.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(session).and_then(Weak::upgrade) {
            Some(q) => q,
            None => {
                // Only sessions with calls in flight stay.
                map.retain(|_, q| q.strong_count() > 0);
                let q = Arc::new(WorkspaceQuota::new(max_bytes, max_entries));
                map.insert(session.to_string(), Arc::downgrade(&q));
                q
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_contents_link_targets_and_entries_without_following_links() {
        let dir = std::env::temp_dir().join(format!("bulkhead-quota-{}", crate::util::new_id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/one"), vec![1; 1000]).unwrap();
        std::fs::write(dir.join("a/b/two"), vec![2; 20]).unwrap();
        std::fs::hard_link(dir.join("a/one"), dir.join("again")).unwrap();
        std::os::unix::fs::symlink("/usr", dir.join("out")).unwrap();
        // a, a/b, a/one, a/b/two, again, out: the link to /usr is not
        // walked; its 4-byte target counts.
        assert_eq!(measure(&dir), (1024, 6));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_charge_past_the_quota_is_refused_and_changes_nothing() {
        let q = WorkspaceQuota::new(100, 2);
        assert!(q.charge_bytes(60) && q.charge_bytes(40));
        assert!(!q.charge_bytes(1));
        assert!(q.charge_bytes(0), "a write that adds nothing always passes");
        assert!(q.charge_entry() && q.charge_entry() && !q.charge_entry());
        assert_eq!(q.used(), (100, 2));
        q.refund(30, 1);
        assert!(q.charge_bytes(30) && q.charge_entry());
        q.refund(1000, 1000);
        assert_eq!(q.used(), (0, 0), "a refund never wraps below zero");
    }
}
