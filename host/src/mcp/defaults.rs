//! The default Bulkhead session of an MCP client that names none on the
//! 2026-07-28 protocol (no handshake, no `Bulkhead-Session` header, no
//! session in the URL): the principal's own MCP session, created once with
//! its default boundary and reused, labelled `mcp=default` so it is found
//! again after a restart and shown like any other session.

use crate::auth::Principal;
use crate::model::Session;
use crate::service::sessions::{CreateSession, SessionFilter};
use crate::service::{Service, ServiceError};
use std::collections::{BTreeMap, HashMap};

pub const LABEL: (&str, &str) = ("mcp", "default");

#[derive(Default)]
pub struct Defaults {
    /// Principal → its default session's id, as last found or made. One
    /// lock: two first requests of a principal make one session.
    known: tokio::sync::Mutex<HashMap<String, String>>,
}

impl Defaults {
    pub async fn session(&self, service: &Service, p: &Principal) -> Result<Session, ServiceError> {
        let mut known = self.known.lock().await;
        if let Some(sid) = known.get(&p.name) {
            match service.owned_session(p, sid).await {
                Ok(s) => return Ok(s),
                // Deleted or expired since: find or make another.
                Err(ServiceError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let session = match find(service, p).await? {
            Some(s) => s,
            None => {
                let labels = BTreeMap::from([
                    ("created_by".to_string(), "mcp".to_string()),
                    (LABEL.0.to_string(), LABEL.1.to_string()),
                ]);
                service.create_session(p, CreateSession { labels, ..CreateSession::default() }).await?
            }
        };
        known.insert(p.name.clone(), session.id.clone());
        Ok(session)
    }
}

/// The principal's oldest live session labelled `mcp=default`.
async fn find(service: &Service, p: &Principal) -> Result<Option<Session>, ServiceError> {
    let filter = SessionFilter {
        principal: Some(p.name.clone()),
        label: Some(format!("{}={}", LABEL.0, LABEL.1)),
        status: Some("active".into()),
        ..SessionFilter::default()
    };
    let mut after = None;
    loop {
        let page = service.find_sessions(p, &filter, after, Some(1)).await?;
        if let Some(s) = page.sessions.into_iter().next() {
            return Ok(Some(s));
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(None),
        }
    }
}
