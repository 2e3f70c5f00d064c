//! What a session's workspace may hold and what it holds: the count calls
//! charge before they grow the folder.
//!
//! The count is measured by walking the folder when the session's workspace
//! is first used after the host starts, and kept: a walk costs ~3 µs per
//! entry, 25 ms at 9,000 files. Charges only add to it, so deletions and
//! truncations are not seen until a charge would fail. The folder is then
//! walked again, if the call has not had a walk yet, a second has passed
//! since the last one, or a sixteenth of the quota was charged since; the
//! count is lowered to what the walk found plus the charges still landing.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counts kept at most; past it, those no call holds are dropped (their
/// sessions' folders are walked again on next use).
const MAX_KEPT: usize = 4096;

/// A refused charge walks the folder again at most this often, unless its
/// call has had no walk yet or much was charged since.
const WALK_EVERY: Duration = Duration::from_secs(1);

/// One workspace's quota and what is used of it.
#[derive(Debug)]
pub struct WorkspaceQuota {
    dir: PathBuf,
    pub(super) max_bytes: u64,
    pub(super) max_entries: u64,
    /// Used, including charges still landing.
    bytes: AtomicU64,
    entries: AtomicU64,
    /// Charged and not yet landed (or refunded). A charge whose call was
    /// dropped mid-operation stays here: the operation may still land.
    pending_bytes: AtomicU64,
    pending_entries: AtomicU64,
    /// Charged since the last walk.
    since_walk: AtomicU64,
    /// Renames under the workspace in flight, and done: a walk that
    /// overlapped one may have missed what it moved, and is not used.
    moving: AtomicU64,
    moved: AtomicU64,
    /// When the folder was last walked; walks run one at a time.
    walked: Mutex<Option<Instant>>,
}

/// A charge in flight. [`landed`](Charge::landed) or
/// [`refund`](Charge::refund) ends it; dropped without either (its call
/// was dropped mid-operation), it stays pending.
pub(super) struct Charge<'a> {
    quota: &'a WorkspaceQuota,
    bytes: u64,
    entries: u64,
}

impl Charge<'_> {
    /// Its operation ended: a walk now sees what it wrote.
    pub(super) fn landed(self) {
        sub(&self.quota.pending_bytes, self.bytes);
        sub(&self.quota.pending_entries, self.entries);
    }

    /// Gives the charge back: its operation failed.
    pub(super) fn refund(self) {
        sub(&self.quota.bytes, self.bytes);
        sub(&self.quota.entries, self.entries);
        self.landed();
    }
}

/// A rename under the workspace, in flight while it lives.
pub(super) struct Moving<'a>(&'a WorkspaceQuota);

impl Drop for Moving<'_> {
    fn drop(&mut self) {
        self.0.moved.fetch_add(1, Ordering::SeqCst);
        self.0.moving.fetch_sub(1, Ordering::SeqCst);
    }
}

impl WorkspaceQuota {
    pub fn new(dir: PathBuf, max_bytes: u64, max_entries: u64) -> WorkspaceQuota {
        WorkspaceQuota {
            dir,
            max_bytes,
            max_entries,
            bytes: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            pending_bytes: AtomicU64::new(0),
            pending_entries: AtomicU64::new(0),
            since_walk: AtomicU64::new(0),
            moving: AtomicU64::new(0),
            moved: AtomicU64::new(0),
            walked: Mutex::new(None),
        }
    }

    /// Counts what the folder holds, unless a call did before. A folder
    /// that cannot be counted counts as full: a tool can still read and
    /// delete in it, and the count is walked again when a charge fails.
    pub fn measure_once(&self) {
        let mut walked = self.walked.lock().unwrap_or_else(|e| e.into_inner());
        if walked.is_none() {
            let (bytes, entries) = measure(&self.dir, self.max_entries).unwrap_or((self.max_bytes, self.max_entries));
            self.bytes.fetch_add(bytes, Ordering::SeqCst);
            self.entries.fetch_add(entries, Ordering::SeqCst);
            *walked = Some(Instant::now());
        }
    }

    /// Walks the folder again, if one is due (see the module), and lowers
    /// the count to what it holds plus what was still landing when the
    /// walk began. Charges made meanwhile stay on top: a write may be seen
    /// twice, never missed.
    pub(super) fn remeasure(&self, first_in_call: bool) {
        let mut walked = self.walked.lock().unwrap_or_else(|e| e.into_inner());
        let due = first_in_call
            || walked.is_none_or(|at| at.elapsed() >= WALK_EVERY)
            || self.since_walk.load(Ordering::SeqCst) >= (self.max_bytes / 16).max(1)
            || self.moving.load(Ordering::SeqCst) > 0;
        if !due {
            return;
        }
        let (bytes, entries) = self.used();
        let pending = (self.pending_bytes.load(Ordering::SeqCst), self.pending_entries.load(Ordering::SeqCst));
        let moved = self.moved.load(Ordering::SeqCst);
        let found = (self.moving.load(Ordering::SeqCst) == 0)
            .then(|| measure(&self.dir, self.max_entries))
            .flatten()
            .filter(|_| self.moving.load(Ordering::SeqCst) == 0 && self.moved.load(Ordering::SeqCst) == moved);
        *walked = Some(Instant::now());
        self.since_walk.store(0, Ordering::SeqCst);
        if let Some((found_bytes, found_entries)) = found {
            sub(&self.bytes, bytes.saturating_sub(found_bytes.saturating_add(pending.0)));
            sub(&self.entries, entries.saturating_sub(found_entries.saturating_add(pending.1)));
        }
    }

    /// (bytes, entries) in use.
    pub fn used(&self) -> (u64, u64) {
        (self.bytes.load(Ordering::SeqCst), self.entries.load(Ordering::SeqCst))
    }

    /// Charges `bytes` and `entries`, or nothing if either is past the quota.
    pub(super) fn charge(&self, bytes: u64, entries: u64) -> Option<Charge<'_>> {
        if !add(&self.entries, self.max_entries, entries) {
            return None;
        }
        if !add(&self.bytes, self.max_bytes, bytes) {
            sub(&self.entries, entries);
            return None;
        }
        self.pending_bytes.fetch_add(bytes, Ordering::SeqCst);
        self.pending_entries.fetch_add(entries, Ordering::SeqCst);
        // An entry weighs as much as a sixteenth of the quota's entries.
        let weight = bytes.saturating_add(entries.saturating_mul(self.max_bytes / self.max_entries.max(1)));
        self.since_walk.fetch_add(weight, Ordering::SeqCst);
        Some(Charge { quota: self, bytes, entries })
    }

    /// Marks a rename under the workspace in flight.
    pub(super) fn moving(&self) -> Moving<'_> {
        self.moving.fetch_add(1, Ordering::SeqCst);
        Moving(self)
    }
}

/// Adds `n` unless that passes `max`; adding nothing always passes.
fn add(used: &AtomicU64, max: u64, n: u64) -> bool {
    n == 0 || used.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| u.checked_add(n).filter(|t| *t <= max)).is_ok()
}

fn sub(used: &AtomicU64, n: u64) {
    if n > 0 {
        let _ = used.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| Some(u.saturating_sub(n)));
    }
}

/// Folders deeper than this are not walked: the workspace counts as full.
const MAX_DEPTH: usize = 64;

/// Bytes (file contents, link targets; a hard-linked file once) and entries
/// under `dir`, without following links, or `None` if the folder cannot be
/// counted in full: an error, more than `max_entries` entries, or folders
/// deeper than [`MAX_DEPTH`]. The walk opens each folder from its parent's
/// handle, so no path grows with the depth (a guest can nest folders past
/// `PATH_MAX`), and holds one handle per level.
fn measure(dir: &Path, max_entries: u64) -> Option<(u64, u64)> {
    use cap_std::fs::MetadataExt;
    let walk = || -> std::io::Result<Option<(u64, u64)>> {
        let (mut bytes, mut entries) = (0u64, 0u64);
        let mut linked = HashSet::new();
        let root = cap_std::fs::Dir::open_ambient_dir(dir, cap_std::ambient_authority())?;
        let mut levels = vec![root.entries()?];
        while let Some(level) = levels.last_mut() {
            let Some(entry) = level.next() else {
                levels.pop();
                continue;
            };
            let entry = entry?;
            entries += 1;
            if entries > max_entries {
                return Ok(None);
            }
            // Does not follow a link. An entry deleted meanwhile is skipped.
            let meta = match entry.metadata() {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                meta => meta?,
            };
            if meta.is_dir() {
                if levels.len() >= MAX_DEPTH {
                    return Ok(None);
                }
                match entry.open_dir() {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    dir => levels.push(dir?.entries()?),
                }
            } else if meta.is_symlink() || meta.nlink() == 1 || linked.insert((meta.dev(), meta.ino())) {
                bytes = bytes.saturating_add(meta.len());
            }
        }
        Ok(Some((bytes, entries)))
    };
    walk().unwrap_or_else(|e| {
        tracing::warn!("cannot count the workspace {}: {e}", dir.display());
        None
    })
}

/// The counts of the sessions' workspaces, shared by the calls using them.
#[derive(Default)]
pub struct WorkspaceQuotas {
    by_session: Mutex<HashMap<String, Arc<WorkspaceQuota>>>,
}

impl WorkspaceQuotas {
    /// The session's count, or a new one to measure
    /// ([`WorkspaceQuota::measure_once`]) before use.
    pub fn get(&self, session: &str, dir: &Path, max_bytes: u64, max_entries: u64) -> Arc<WorkspaceQuota> {
        let mut map = self.by_session.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(q) = map.get(session) {
            return q.clone();
        }
        if map.len() >= MAX_KEPT {
            map.retain(|_, q| Arc::strong_count(q) > 1);
        }
        let q = Arc::new(WorkspaceQuota::new(dir.to_path_buf(), max_bytes, max_entries));
        map.insert(session.to_string(), q.clone());
        q
    }

    /// Forgets a deleted session's count.
    pub fn forget(&self, session: &str) {
        self.by_session.lock().unwrap_or_else(|e| e.into_inner()).remove(session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bulkhead-quota-{}", crate::util::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn usage_counts_contents_link_targets_and_entries_without_following_links() {
        let dir = scratch();
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/one"), vec![1; 1000]).unwrap();
        std::fs::write(dir.join("a/b/two"), vec![2; 20]).unwrap();
        std::fs::hard_link(dir.join("a/one"), dir.join("again")).unwrap();
        std::os::unix::fs::symlink("/usr", dir.join("out")).unwrap();
        // a, a/b, a/one, a/b/two, again, out: the link to /usr is not
        // walked; its 4-byte target counts.
        assert_eq!(measure(&dir, 6), Some((1024, 6)));
        assert_eq!(measure(&dir, 5), None, "more entries than the quota: full");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn folders_nested_past_path_max_are_counted_or_the_workspace_is_full() {
        let dir = scratch();
        let name = "d".repeat(250);
        let mut deep = cap_std::fs::Dir::open_ambient_dir(&dir, cap_std::ambient_authority()).unwrap();
        for _ in 0..20 {
            deep.create_dir(&name).unwrap();
            deep = deep.open_dir(&name).unwrap();
        }
        deep.write("hidden", vec![0; 777]).unwrap();
        assert_eq!(measure(&dir, 100), Some((777, 21)), "5,000-byte paths are walked");
        for _ in 20..MAX_DEPTH {
            deep.create_dir("d").unwrap();
            deep = deep.open_dir("d").unwrap();
        }
        assert_eq!(measure(&dir, 1000), None, "deeper than the walk goes: full");
        let q = WorkspaceQuota::new(dir.clone(), 1000, 1000);
        q.measure_once();
        assert_eq!(q.used(), (1000, 1000));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_charge_past_the_quota_is_refused_and_changes_nothing() {
        // Charges alone: the folder is never walked.
        let q = WorkspaceQuota::new(PathBuf::from("/nonexistent"), 100, 2);
        let (a, b) = (q.charge(60, 1).unwrap(), q.charge(40, 0).unwrap());
        assert!(q.charge(1, 0).is_none());
        assert!(q.charge(0, 1).is_some(), "bytes and entries are separate");
        assert!(q.charge(0, 1).is_none());
        assert!(q.charge(1, 1).is_none());
        assert!(q.charge(0, 0).is_some(), "a write that adds nothing always passes");
        assert_eq!(q.used(), (100, 2));
        a.refund();
        assert_eq!(q.used(), (40, 1));
        let pending = || (q.pending_bytes.load(Ordering::SeqCst), q.pending_entries.load(Ordering::SeqCst));
        assert_eq!(pending(), (40, 1), "b and the dropped charge are still landing");
        b.landed();
        assert_eq!(pending(), (0, 1), "a charge dropped unended stays pending");
    }

    #[test]
    fn a_walk_again_frees_what_was_deleted_but_keeps_what_is_landing() {
        let dir = scratch();
        std::fs::write(dir.join("big"), vec![0; 500]).unwrap();
        let q = WorkspaceQuota::new(dir.clone(), 1000, 10);
        q.measure_once();
        assert_eq!(q.used(), (500, 1));
        let landing = q.charge(300, 1).unwrap();
        std::fs::remove_file(dir.join("big")).unwrap();
        assert!(q.charge(300, 0).is_none(), "the deletion is not seen yet");
        q.remeasure(true);
        assert_eq!(q.used(), (300, 1), "the deleted file is free; the charge still landing is not");
        landing.landed();
        let moving = q.moving();
        std::fs::write(dir.join("moved-in"), vec![0; 100]).unwrap();
        q.remeasure(true);
        assert_eq!(q.used(), (300, 1), "a walk beside a rename is not used");
        drop(moving);
        q.remeasure(false);
        assert_eq!(q.used(), (300, 1), "not due: walked just now, little charged since");
        q.remeasure(true);
        assert_eq!(q.used(), (100, 1));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
