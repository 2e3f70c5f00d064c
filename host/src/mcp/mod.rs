//! MCP (Model Context Protocol) at `/mcp` on the API's listener.
//!
//! An MCP client is one more way into the same sessions: every call goes
//! through [`Service::call`], so the boundary, input validation, approvals,
//! idempotency, state and the audit chain are exactly those of the HTTP API.
//! The protocol itself (handshake-era sessions with `Mcp-Session-Id`, the
//! 2026-07-28 per-request envelope, SSE, `Origin` and `Host` checks) is
//! rmcp's streamable HTTP transport.
//!
//! - [`server`]: the rmcp `ServerHandler`: binds a client to a session.
//! - [`results`]: tools and calls as MCP values; [`tasks`]: calls waiting
//!   for a human as tasks, for clients that declare the tasks extension.
//! - [`resources`]: the session's records as read-only resources;
//!   [`defaults`]: the default session of clients that name none.
//! - [`bridge`]: `bulkhead mcp --connect`, stdio to a running host.

pub mod bridge;
pub mod defaults;
pub mod resources;
pub mod results;
pub mod server;
pub mod tasks;

use crate::service::Service;
use crate::web::error::ApiError;
use crate::web::extract::Caller;
use axum::Router;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const PATH: &str = "/mcp";
/// `/mcp/sessions/{sid}`: the same endpoint speaking for session `sid`, for
/// clients that can set only a URL (no `Bulkhead-Session` header).
pub const SESSION_PATH: &str = "/mcp/sessions/{sid}";
/// Names the Bulkhead session a request speaks for (see docs/mcp.md).
pub const SESSION_HEADER: &str = "bulkhead-session";
const MCP_SESSION_ID: &str = "mcp-session-id";
/// A handshake-era MCP session idle this long is dropped; its client gets
/// 404 and initializes again (with `Bulkhead-Session` to keep its session).
const MCP_SESSION_IDLE: Duration = Duration::from_secs(30 * 60);

/// The `/mcp` route, authenticated like the HTTP API.
pub fn router(service: Arc<Service>) -> Router<Arc<Service>> {
    let mcp = &service.config.mcp;
    let mut config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(mcp.allowed_hosts.clone())
        .with_allowed_origins(mcp.allowed_origins.clone())
        .with_max_request_body_bytes((service.config.limits.max_request_kb as usize) << 10);
    if mcp.allowed_origins.is_empty() {
        // No browser origin is trusted unless the operator names it.
        config = config.enforce_origin_validation();
    }
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(MCP_SESSION_IDLE);
    let factory_service = service.clone();
    let defaults = Arc::new(defaults::Defaults::default());
    let mcp_service = StreamableHttpService::new(
        move || Ok(server::McpServer::new(factory_service.clone(), defaults.clone())),
        Arc::new(sessions),
        config,
    );
    let gate = Gate { service, owners: Arc::new(Mutex::new(HashMap::new())) };
    Router::new()
        .route_service(PATH, mcp_service.clone())
        .route_service(SESSION_PATH, mcp_service)
        .layer(middleware::from_fn_with_state(gate, authenticate))
}

/// What runs before rmcp sees a request.
#[derive(Clone)]
struct Gate {
    service: Arc<Service>,
    /// Which principal opened each handshake-era MCP session, and when it
    /// was last used. rmcp serves some requests (GET streams and their
    /// replay, DELETE, notifications) without our handler, so ownership is
    /// checked here, for every request.
    owners: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

/// 401/403 with the contract's error body before rmcp sees the request; an
/// `Mcp-Session-Id` of another principal is unknown (404); the principal
/// rides along in the request's extensions; rmcp's plain-text errors are
/// turned into the contract's error body.
async fn authenticate(State(gate): State<Gate>, mut req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let p = match Caller::from_request_parts(&mut parts, &gate.service).await {
        Ok(Caller(p)) => p,
        Err(e) => return e.into_response(),
    };
    req = Request::from_parts(parts, body);
    if let Err(e) = crate::service::sessions::require_agent(&p) {
        return ApiError::from(e).into_response();
    }
    let presented = req.headers().get(MCP_SESSION_ID).and_then(|v| v.to_str().ok()).map(str::to_string);
    if let Some(id) = &presented {
        let mut owners = gate.owners.lock().expect("mcp owners poisoned");
        match owners.get_mut(id) {
            Some((owner, seen)) if *owner == p.name => *seen = Instant::now(),
            _ => return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such MCP session").into_response(),
        }
    }
    if let Some(sid) = req.uri().path().strip_prefix("/mcp/sessions/").map(str::to_string) {
        // The URL names the session: it must be the caller's, and a header
        // naming another is a mistake, not a choice.
        if let Err(e) = gate.service.owned_session(&p, &sid).await {
            return ApiError::from(e).into_response();
        }
        let header = req.headers().get(SESSION_HEADER).map(|v| v.as_bytes() != sid.as_bytes());
        if header == Some(true) {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "session_mismatch",
                "the Bulkhead-Session header names another session than the URL",
            )
            .into_response();
        }
        match axum::http::HeaderValue::from_str(&sid) {
            Ok(v) => drop(req.headers_mut().insert(SESSION_HEADER, v)),
            Err(_) => return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such session").into_response(),
        }
    }
    req.extensions_mut().insert(p.clone());
    let delete = req.method() == Method::DELETE;
    let mut response = next.run(req).await;
    let issued = response.headers().get(MCP_SESSION_ID).and_then(|v| v.to_str().ok()).map(str::to_string);
    if let Some(id) = issued.filter(|id| presented.as_ref() != Some(id)) {
        let mut owners = gate.owners.lock().expect("mcp owners poisoned");
        // rmcp drops idle sessions; forget them here too.
        owners.retain(|_, (_, seen)| seen.elapsed() < MCP_SESSION_IDLE + Duration::from_secs(60));
        owners.insert(id, (p.name.clone(), Instant::now()));
    }
    if delete && response.status().is_success() {
        if let Some(id) = &presented {
            gate.owners.lock().expect("mcp owners poisoned").remove(id);
        }
        // rmcp answers 202; clients (the Python SDK) expect 200 or 204.
        if response.status() == StatusCode::ACCEPTED {
            *response.status_mut() = StatusCode::NO_CONTENT;
            *response.body_mut() = axum::body::Body::empty();
        }
    }
    contract_error(response).await
}

/// rmcp answers transport errors (bad headers, bodies, origins) in plain
/// text; the contract's clients expect `{"error": {"code", "message"}}`.
/// JSON-RPC errors (JSON bodies) pass unchanged.
async fn contract_error(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if status.as_u16() < 400 || is_json {
        return response;
    }
    if status.is_server_error() {
        tracing::error!("mcp transport error: {status}");
        return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error").into_response();
    }
    let bytes = axum::body::to_bytes(response.into_body(), 4096).await.unwrap_or_default();
    let text: String = String::from_utf8_lossy(&bytes).chars().take(300).collect();
    let (status, code) = match status {
        // rmcp says 415 for a body that is JSON but not a JSON-RPC message.
        StatusCode::UNSUPPORTED_MEDIA_TYPE if text.starts_with("fail to deserialize") => {
            (StatusCode::BAD_REQUEST, "invalid_json")
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (status, "unsupported_media_type"),
        StatusCode::PAYLOAD_TOO_LARGE => (status, "payload_too_large"),
        StatusCode::FORBIDDEN => (status, "forbidden"),
        StatusCode::NOT_FOUND => (status, "not_found"),
        StatusCode::NOT_ACCEPTABLE => (status, "not_acceptable"),
        StatusCode::METHOD_NOT_ALLOWED => (status, "method_not_allowed"),
        _ => (status, "invalid_request"),
    };
    ApiError::new(status, code, text.trim().to_string()).into_response()
}
