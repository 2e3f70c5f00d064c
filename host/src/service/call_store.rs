//! The [`CallStore`] the service hands each call: reads of the call's own
//! tool state and its session's messages, bound to that session and tool,
//! so a capability never holds the database.

use crate::caps::CallStore;
use crate::model::Message;
use crate::store::state_cache::{Committed, StateCache};
use crate::store::{Sharing, Store, StoreError, wait};
use std::sync::Arc;

/// A snapshot larger than this is read key by key when no cache is kept.
pub(crate) const UNCACHED_LARGEST: u64 = 2 << 20;

pub struct ScopedStore {
    store: Arc<dyn Store>,
    /// Committed tool state in memory (one-host backends); the call holds
    /// its pair's turn.
    cache: Option<Arc<StateCache>>,
    /// Without a cache: the committed state read under the call's turn (so
    /// no host changes it meanwhile), for the first read, so the tool does
    /// not wait on the database.
    prefetched: std::sync::Mutex<Option<Committed>>,
    session: String,
    tool: String,
}

impl ScopedStore {
    pub fn new(store: Arc<dyn Store>, cache: Arc<StateCache>, session: &str, tool: &str) -> ScopedStore {
        let cache = (store.sharing() == Sharing::OneHost).then_some(cache);
        let prefetched = std::sync::Mutex::new(None);
        ScopedStore { store, cache, prefetched, session: session.to_string(), tool: tool.to_string() }
    }

    /// The committed state read under the call's turn (shared stores:
    /// [`Store::take_turn`]), for the first read; the one-host cache
    /// ignores it.
    pub fn with_state(self, prefetched: Option<Committed>) -> ScopedStore {
        if self.cache.is_none() {
            *self.prefetched.lock().expect("prefetched state poisoned") = prefetched;
        }
        self
    }
}

impl CallStore for ScopedStore {
    fn committed_state(&self) -> Result<Committed, StoreError> {
        match &self.cache {
            Some(cache) => cache.committed(&*self.store, &self.session, &self.tool),
            None => match self.prefetched.lock().expect("prefetched state poisoned").take() {
                Some(state) => Ok(state),
                None => wait(self.store.committed_state(&self.session, &self.tool, UNCACHED_LARGEST)),
            },
        }
    }

    fn state_value(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        wait(self.store.state_value(&self.session, &self.tool, key))
    }

    fn state_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        wait(self.store.state_keys(&self.session, &self.tool, prefix))
    }

    fn history(&self, limit: u32) -> Result<Vec<Message>, StoreError> {
        wait(self.store.newest_messages(&self.session, limit))
    }
}
