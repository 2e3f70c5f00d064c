//! The [`CallStore`] the service hands each call: reads of the call's own
//! tool state and its session's messages, bound to that session and tool,
//! so a capability never holds the database.

use crate::caps::CallStore;
use crate::model::Message;
use crate::store::state_cache::{Committed, StateCache};
use crate::store::{Db, StoreError, messages, tool_state};
use std::sync::Arc;

pub struct ScopedStore {
    db: Arc<Db>,
    /// Committed tool state in memory; the call holds its pair's turn.
    cache: Arc<StateCache>,
    session: String,
    tool: String,
}

impl ScopedStore {
    pub fn new(db: Arc<Db>, cache: Arc<StateCache>, session: &str, tool: &str) -> ScopedStore {
        ScopedStore { db, cache, session: session.to_string(), tool: tool.to_string() }
    }
}

impl CallStore for ScopedStore {
    fn committed_state(&self) -> Result<Committed, StoreError> {
        self.cache.committed(&self.db, &self.session, &self.tool)
    }

    fn state_value(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.read(|c| tool_state::get(c, &self.session, &self.tool, key))
    }

    fn state_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.db.read(|c| tool_state::keys(c, &self.session, &self.tool, prefix))
    }

    fn history(&self, limit: u32) -> Result<Vec<Message>, StoreError> {
        self.db.read(|c| messages::newest(c, &self.session, limit))
    }
}
