//! A session's records as read-only MCP resources: its messages, each
//! tool's state and its audit trail, read through the same `Service`
//! methods (and so the same ownership checks) as the HTTP API.
//!
//! URIs: `bulkhead://sessions/{sid}/messages`, `.../audit`,
//! `.../state/{tool}`. Each reads as one JSON document
//! (`application/json`), the first 1,000 entries (oldest first; the HTTP
//! API pages beyond).

use crate::auth::Principal;
use crate::model::Session;
use crate::service::{Service, ServiceError};
use rmcp::model::{Resource, ResourceContents};
use serde_json::json;

const MAX: u32 = crate::service::sessions::MAX_PAGE;
const JSON: &str = "application/json";

pub fn list(session: &Session) -> Vec<Resource> {
    let base = format!("bulkhead://sessions/{}", session.id);
    let mut out = vec![
        Resource::new(format!("{base}/messages"), "messages")
            .with_description("The session's conversation memory, oldest first")
            .with_mime_type(JSON),
        Resource::new(format!("{base}/audit"), "audit")
            .with_description("The session's hash-chained audit trail, oldest first")
            .with_mime_type(JSON),
    ];
    for tool in session.tools.keys() {
        out.push(
            Resource::new(format!("{base}/state/{tool}"), format!("state/{tool}"))
                .with_description(format!("What {tool} keeps in this session (values base64)"))
                .with_mime_type(JSON),
        );
    }
    out
}

/// What a resource URI names; `None`: not a resource of `session`.
pub async fn read(
    service: &Service,
    p: &Principal,
    session: &Session,
    uri: &str,
) -> Option<Result<ResourceContents, ServiceError>> {
    let rest = uri.strip_prefix("bulkhead://sessions/")?.strip_prefix(session.id.as_str())?.strip_prefix('/')?;
    let sid = session.id.as_str();
    let value = match rest {
        "messages" => service.list_messages(p, sid, None, Some(MAX)).await.map(|m| json!({ "messages": m })),
        "audit" => service.list_audit(p, sid, None, Some(MAX)).await.map(|e| json!({ "events": e })),
        _ => {
            let tool = rest.strip_prefix("state/")?;
            if !session.tools.contains_key(tool) {
                return None;
            }
            service.get_state(p, sid, tool).await.map(|e| json!({ "entries": e }))
        }
    };
    Some(value.map(|v| ResourceContents::text(v.to_string(), uri).with_mime_type(JSON)))
}
