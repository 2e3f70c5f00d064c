//! `bulkhead:tool/state`: the tool's key-value state in this session.
//!
//! Reads see the committed state plus this call's own writes; writes are
//! buffered here and committed by the service in the transaction that
//! records the call's success, or dropped with a failed call. Calls to the
//! same tool in the same session run one at a time, so the committed state
//! cannot change under a call: it is read once, on first use, through the
//! call's [`CallStore`](super::CallStore).

use super::HostState;
use super::iface::state::Host;
use crate::store::state_cache::Committed;
use crate::telemetry::TARGET as TRACE;
use std::collections::BTreeMap;

/// Longest key: keys are names, not data.
pub const MAX_KEY_BYTES: usize = 1024;

pub struct StateTxn {
    /// Buffered writes: `Some` sets, `None` deletes.
    pub writes: BTreeMap<String, Option<Vec<u8>>>,
    quota: u64,
    /// The committed state, read on first use.
    committed: Option<Committed>,
    /// Size change made by the buffered writes.
    delta: i64,
    pub bytes_written: u64,
    /// Set when a write was refused for the quota: the call then commits nothing.
    pub quota_exceeded: bool,
    /// Set when the committed state could not be read: the tool may have
    /// seen an empty state, so the call commits nothing.
    pub read_failed: bool,
}

impl StateTxn {
    pub fn new(quota: u64) -> StateTxn {
        StateTxn {
            writes: BTreeMap::new(),
            quota,
            committed: None,
            delta: 0,
            bytes_written: 0,
            quota_exceeded: false,
            read_failed: false,
        }
    }
}

impl HostState {
    /// The committed state, read once per call.
    fn committed_state(&mut self) -> Option<&Committed> {
        if self.state.committed.is_none() {
            match self.env.store.committed_state() {
                Ok(c) => self.state.committed = Some(c),
                Err(err) => {
                    tracing::error!("state read failed: {err}");
                    self.state.read_failed = true;
                }
            }
        }
        self.state.committed.as_ref()
    }

    fn committed(&mut self, key: &str) -> Option<Vec<u8>> {
        match self.committed_state()? {
            Committed::Cached(s) => s.entries.get(key).cloned(),
            Committed::Large { .. } => self.env.store.state_value(key).unwrap_or_else(|err| {
                tracing::error!("state read failed: {err}");
                self.state.read_failed = true;
                None
            }),
        }
    }

    /// The committed size, before this call's writes.
    fn base(&mut self) -> Result<u64, String> {
        match self.committed_state() {
            Some(Committed::Cached(s)) => Ok(s.size),
            Some(Committed::Large { size }) => Ok(*size),
            None => Err("state storage unavailable".to_string()),
        }
    }

    /// The size of one entry as it stands in this call.
    fn entry_size(&mut self, key: &str) -> u64 {
        match self.state.writes.get(key) {
            Some(Some(v)) => (key.len() + v.len()) as u64,
            Some(None) => 0,
            None => self.committed_size(key),
        }
    }

    /// The size of one entry as committed before this call.
    fn committed_size(&mut self, key: &str) -> u64 {
        let value_len = match self.committed_state() {
            // From memory without copying the value, when cached.
            Some(Committed::Cached(s)) => s.entries.get(key).map(Vec::len),
            _ => self.committed(key).map(|v| v.len()),
        };
        value_len.map_or(0, |n| (key.len() + n) as u64)
    }

    /// How much committing `writes` (as they will be stored, redacted)
    /// changes the bytes this tool's state keeps.
    pub fn stored_delta(&mut self, writes: &BTreeMap<String, Option<Vec<u8>>>) -> i64 {
        let mut delta = 0;
        for (key, value) in writes {
            let new = value.as_ref().map_or(0, |v| (key.len() + v.len()) as i64);
            delta += new - self.committed_size(key) as i64;
        }
        delta
    }
}

impl Host for HostState {
    async fn get(&mut self, key: String) -> Option<Vec<u8>> {
        let _span = tracing::trace_span!(target: TRACE, "state.get").entered();
        match self.state.writes.get(&key) {
            Some(buffered) => buffered.clone(),
            None => self.committed(&key),
        }
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        let _span = tracing::trace_span!(target: TRACE, "state.set", bulkhead.bytes = (key.len() + value.len()) as i64)
            .entered();
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(format!("state keys must be 1 to {MAX_KEY_BYTES} bytes"));
        }
        let base = self.base()? as i64;
        let old = self.entry_size(&key) as i64;
        let new = (key.len() + value.len()) as i64;
        let total = base + self.state.delta - old + new;
        if total > self.state.quota as i64 {
            self.state.quota_exceeded = true;
            return Err(format!(
                "state quota exceeded: {total} bytes would be over the {} allowed (state_kb)",
                self.state.quota
            ));
        }
        self.state.delta += new - old;
        self.state.bytes_written += new as u64;
        self.state.writes.insert(key, Some(value));
        Ok(())
    }

    async fn delete(&mut self, key: String) {
        let _span = tracing::trace_span!(target: TRACE, "state.delete").entered();
        if self.base().is_ok() {
            self.state.delta -= self.entry_size(&key) as i64;
        }
        self.state.writes.insert(key, None);
    }

    async fn keys(&mut self, prefix: String) -> Vec<String> {
        let _span = tracing::trace_span!(target: TRACE, "state.keys").entered();
        let committed = match self.committed_state() {
            Some(Committed::Cached(s)) => s
                .entries
                .range(prefix.clone()..)
                .map(|(k, _)| k)
                .take_while(|k| k.starts_with(&prefix))
                .cloned()
                .collect(),
            Some(Committed::Large { .. }) => self.env.store.state_keys(&prefix).unwrap_or_else(|err| {
                tracing::error!("state keys read failed: {err}");
                self.state.read_failed = true;
                Vec::new()
            }),
            None => Vec::new(),
        };
        let mut keys: std::collections::BTreeSet<String> = committed.into_iter().collect();
        for (k, v) in self.state.writes.range(prefix.clone()..) {
            if !k.starts_with(&prefix) {
                break;
            }
            if v.is_some() {
                keys.insert(k.clone());
            } else {
                keys.remove(k);
            }
        }
        keys.into_iter().collect()
    }
}
