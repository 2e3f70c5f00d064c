//! A tool's state in a session, as `GET /v1/sessions/{sid}/state/{tool}`
//! shows it.

use super::{Result, Service, ServiceError};
use crate::auth::Principal;
use crate::model::Session;
use base64::Engine as _;
use std::collections::BTreeMap;

impl Service {
    /// A tool's state in the session, values base64-encoded.
    pub async fn get_state(&self, p: &Principal, sid: &str, tool: &str) -> Result<BTreeMap<String, String>> {
        let session: Session = self.owned_session(p, sid).await?;
        if !session.tools.contains_key(tool) {
            return Err(ServiceError::not_found("tool"));
        }
        let tool = tool.to_string();
        let entries = self.store.tool_state(&session.id, &tool).await?;
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok(entries.into_iter().map(|(k, v)| (k, b64.encode(v))).collect())
    }
}
