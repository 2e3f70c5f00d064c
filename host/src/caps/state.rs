//! `bulkhead:tool/state`: the tool's key-value state in this session.
//!
//! Reads see the committed state plus this call's own writes; writes are
//! buffered here and committed by the service in the transaction that
//! records the call's success, or dropped with a failed call. Calls to the
//! same tool in the same session run one at a time, so the committed state
//! cannot change under a call.

use super::HostState;
use super::iface::state::Host;
use crate::store::tool_state;
use std::collections::BTreeMap;

/// Longest key: keys are names, not data.
pub const MAX_KEY_BYTES: usize = 1024;

pub struct StateTxn {
    /// Buffered writes: `Some` sets, `None` deletes.
    pub writes: BTreeMap<String, Option<Vec<u8>>>,
    quota: u64,
    /// Committed size, read on the first write.
    base: Option<u64>,
    /// Size change made by the buffered writes.
    delta: i64,
    pub bytes_written: u64,
    /// Set when a write was refused for the quota: the call then commits nothing.
    pub quota_exceeded: bool,
}

impl StateTxn {
    pub fn new(quota: u64) -> StateTxn {
        StateTxn { writes: BTreeMap::new(), quota, base: None, delta: 0, bytes_written: 0, quota_exceeded: false }
    }
}

impl HostState {
    fn committed(&self, key: &str) -> Option<Vec<u8>> {
        let e = &self.env;
        e.db.read(|c| tool_state::get(c, &e.session, &e.tool, key)).unwrap_or_else(|err| {
            tracing::error!("state read failed: {err}");
            None
        })
    }

    /// Reads the committed size once, before the first write changes it.
    fn ensure_base(&mut self) -> Result<u64, String> {
        if let Some(base) = self.state.base {
            return Ok(base);
        }
        let e = &self.env;
        let base = e.db.read(|c| tool_state::size(c, &e.session, &e.tool)).map_err(|err| {
            tracing::error!("state size read failed: {err}");
            "state storage unavailable".to_string()
        })?;
        self.state.base = Some(base);
        Ok(base)
    }

    /// The size of one entry as it stands in this call.
    fn entry_size(&self, key: &str) -> u64 {
        let value_len = match self.state.writes.get(key) {
            Some(Some(v)) => Some(v.len()),
            Some(None) => None,
            None => self.committed(key).map(|v| v.len()),
        };
        value_len.map_or(0, |n| (key.len() + n) as u64)
    }
}

impl Host for HostState {
    async fn get(&mut self, key: String) -> Option<Vec<u8>> {
        match self.state.writes.get(&key) {
            Some(buffered) => buffered.clone(),
            None => self.committed(&key),
        }
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(format!("state keys must be 1 to {MAX_KEY_BYTES} bytes"));
        }
        let base = self.ensure_base()? as i64;
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
        if self.ensure_base().is_ok() {
            self.state.delta -= self.entry_size(&key) as i64;
        }
        self.state.writes.insert(key, None);
    }

    async fn keys(&mut self, prefix: String) -> Vec<String> {
        let e = &self.env;
        let committed = e.db.read(|c| tool_state::keys(c, &e.session, &e.tool, &prefix)).unwrap_or_else(|err| {
            tracing::error!("state keys read failed: {err}");
            Vec::new()
        });
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
