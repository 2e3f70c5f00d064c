//! Committed tool state kept in memory, so a call reads its state without
//! a read transaction (which, under WAL, re-reads pages from the file after
//! every commit: three of them per counter call showed as 9% of all CPU).
//!
//! Coherence rests on one rule the service keeps: only the holder of a
//! (session, tool) turn loads or replaces that pair's entry, and the turn is
//! held until its call's outcome has committed. Before an outcome with
//! writes is committed the entry is taken out; it is put back, with the
//! writes applied, only once the commit succeeded. A failed or cancelled
//! commit therefore leaves no entry, and the next call reads the database.
//! A deleted session's entries are dropped (session ids are never reused,
//! so a stale entry could only waste memory, never be read).
//!
//! Bounded by bytes: the whole cache holds at most `budget` bytes of keys
//! and values, and a state larger than `budget / LARGEST_SHARE` is never
//! kept (its calls read key by key, as without a cache).

use super::{Result, Store, wait};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// A state bigger than this share of the budget is read key by key.
const LARGEST_SHARE: u64 = 16;
/// Bookkeeping counted per entry beyond its key and value bytes.
const ENTRY_OVERHEAD: u64 = 64;

/// One (session, tool)'s committed entries and their size in the measure
/// of `state_kb` (key plus value bytes).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub entries: BTreeMap<String, Vec<u8>>,
    pub size: u64,
}

impl Snapshot {
    fn apply(&mut self, writes: &BTreeMap<String, Option<Vec<u8>>>) {
        for (key, value) in writes {
            if let Some(old) = self.entries.remove(key) {
                self.size -= (key.len() + old.len()) as u64;
            }
            if let Some(v) = value {
                self.size += (key.len() + v.len()) as u64;
                self.entries.insert(key.clone(), v.clone());
            }
        }
    }

    fn cost(&self) -> u64 {
        self.size + ENTRY_OVERHEAD * (self.entries.len() as u64 + 1)
    }
}

/// What a call sees of its committed state.
#[derive(Debug, Clone)]
pub enum Committed {
    /// All of it, in memory.
    Cached(Arc<Snapshot>),
    /// Too large to keep: only its size; entries are read from the database.
    Large { size: u64 },
}

pub struct StateCache {
    budget: u64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// session → tool → snapshot.
    sessions: HashMap<String, HashMap<String, Arc<Snapshot>>>,
    bytes: u64,
}

impl Inner {
    fn remove(&mut self, session: &str, tool: &str) -> Option<Arc<Snapshot>> {
        let tools = self.sessions.get_mut(session)?;
        let snapshot = tools.remove(tool)?;
        if tools.is_empty() {
            self.sessions.remove(session);
        }
        self.bytes -= snapshot.cost();
        Some(snapshot)
    }

    /// Inserts, evicting other sessions' entries (any: a miss costs one
    /// read) until the budget holds.
    fn insert(&mut self, budget: u64, session: &str, tool: &str, snapshot: Arc<Snapshot>) {
        let cost = snapshot.cost();
        while self.bytes + cost > budget {
            let Some(victim) = self.sessions.keys().find(|s| s.as_str() != session).cloned() else { break };
            for (_, s) in self.sessions.remove(&victim).unwrap_or_default() {
                self.bytes -= s.cost();
            }
        }
        if self.bytes + cost > budget {
            return;
        }
        self.bytes += cost;
        let old = self.sessions.entry(session.to_string()).or_default().insert(tool.to_string(), snapshot);
        if let Some(old) = old {
            self.bytes -= old.cost();
        }
    }
}

impl StateCache {
    pub fn new(budget_bytes: u64) -> StateCache {
        StateCache { budget: budget_bytes, inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The map is consistent between statements; a panic elsewhere
        // while holding the lock cannot leave it half-changed.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The committed state of `tool` in `session`, from memory or read.
    /// The caller holds the pair's turn.
    pub fn committed(&self, store: &dyn Store, session: &str, tool: &str) -> Result<Committed> {
        if let Some(s) = self.lock().sessions.get(session).and_then(|t| t.get(tool)) {
            return Ok(Committed::Cached(s.clone()));
        }
        let largest = self.budget / LARGEST_SHARE;
        let loaded = wait(store.committed_state(session, tool, largest))?;
        if let Committed::Cached(s) = &loaded {
            self.lock().insert(self.budget, session, tool, s.clone());
        }
        Ok(loaded)
    }

    /// Takes the pair's entry out before its writes are committed; give it
    /// back with [`StateCache::committed_writes`] once they are.
    pub fn take(&self, session: &str, tool: &str) -> Option<Arc<Snapshot>> {
        self.lock().remove(session, tool)
    }

    /// The writes of `taken`'s pair are committed: keep the state they made.
    pub fn committed_writes(
        &self,
        session: &str,
        tool: &str,
        taken: Arc<Snapshot>,
        writes: &BTreeMap<String, Option<Vec<u8>>>,
    ) {
        let mut snapshot = Arc::unwrap_or_clone(taken);
        snapshot.apply(writes);
        if snapshot.size <= self.budget / LARGEST_SHARE {
            self.lock().insert(self.budget, session, tool, Arc::new(snapshot));
        }
    }

    /// Drops every entry of a deleted session.
    pub fn forget_session(&self, session: &str) {
        let mut inner = self.lock();
        for (_, s) in inner.sessions.remove(session).unwrap_or_default() {
            inner.bytes -= s.cost();
        }
    }

    /// Bytes held.
    #[cfg(test)]
    fn bytes(&self) -> u64 {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<Vec<u8>>> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.map(|v| v.as_bytes().to_vec()))).collect()
    }

    fn snap(pairs: &[(&str, &str)]) -> Arc<Snapshot> {
        let entries: BTreeMap<String, Vec<u8>> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
        let size = entries.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        Arc::new(Snapshot { entries, size })
    }

    #[test]
    fn applied_writes_keep_entries_and_size_in_step() {
        let mut s = Arc::unwrap_or_clone(snap(&[("a", "1"), ("b", "22")]));
        s.apply(&writes(&[("a", Some("333")), ("b", None), ("c", Some("4"))]));
        assert_eq!(s, *snap(&[("a", "333"), ("c", "4")]));
        assert_eq!(s.size, 6);
    }

    #[test]
    fn the_budget_holds_by_evicting_other_sessions() {
        let cache = StateCache::new(2 * (ENTRY_OVERHEAD * 2 + 10) + 5);
        let v = "x".repeat(9);
        for sid in ["s1", "s2", "s3"] {
            cache.take(sid, "t");
            cache.committed_writes(sid, "t", Arc::default(), &writes(&[("k", Some(&v))]));
            assert!(cache.bytes() <= cache.budget);
        }
        let inner = cache.lock();
        assert!(inner.sessions.contains_key("s3"), "the newest entry is kept");
        assert_eq!(inner.sessions.len(), 2);
        let counted: u64 = inner.sessions.values().flat_map(|t| t.values()).map(|s| s.cost()).sum();
        assert_eq!(counted, inner.bytes);
    }

    #[test]
    fn taken_entries_are_gone_until_given_back_and_deleted_sessions_are_dropped() {
        let cache = StateCache::new(1 << 20);
        cache.committed_writes("s", "t", Arc::default(), &writes(&[("k", Some("v"))]));
        let taken = cache.take("s", "t").expect("cached");
        assert!(cache.take("s", "t").is_none(), "a failed commit leaves nothing to read");
        cache.committed_writes("s", "t", taken, &writes(&[("k", Some("w"))]));
        cache.committed_writes("s", "u", Arc::default(), &BTreeMap::new());
        assert_eq!(cache.lock().sessions["s"]["t"].entries["k"], b"w");
        cache.forget_session("s");
        assert_eq!(cache.bytes(), 0);
        assert!(cache.take("s", "u").is_none());
    }
}
