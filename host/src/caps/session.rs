//! `bulkhead:tool/session`: who is calling, and (when granted) the history.

use super::HostState;
use super::iface::session::{Host, Message};
use crate::events::Denial;

/// The most messages one `history` call returns.
pub const MAX_HISTORY: u32 = 1000;

impl Host for HostState {
    async fn id(&mut self) -> String {
        self.env.session.clone()
    }

    async fn principal(&mut self) -> String {
        self.env.principal.clone()
    }

    async fn history(&mut self, limit: u32) -> Result<Vec<Message>, String> {
        if !self.env.grant.history {
            self.deny(Denial::History);
            return Err("reading the session history is not granted to this tool (history = false)".into());
        }
        let rows = self.env.store.history(limit.min(MAX_HISTORY)).map_err(|err| {
            tracing::error!("history read failed: {err}");
            "session history unavailable".to_string()
        })?;
        Ok(rows.into_iter().map(|m| Message { role: m.role, content: m.content }).collect())
    }
}
