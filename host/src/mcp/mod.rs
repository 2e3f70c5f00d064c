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
//! - [`results`]: tools and calls as MCP values.
//! - [`bridge`]: `bulkhead mcp --connect`, stdio to a running host.

pub mod bridge;
pub mod results;
pub mod server;

use crate::api::error::ApiError;
use crate::api::extract::Caller;
use crate::service::Service;
use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use std::sync::Arc;
use std::time::Duration;

pub const PATH: &str = "/mcp";
/// Names the Bulkhead session a request speaks for (see docs/mcp.md).
pub const SESSION_HEADER: &str = "bulkhead-session";
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
    let mcp_service = StreamableHttpService::new(
        move || Ok(server::McpServer::new(factory_service.clone())),
        Arc::new(sessions),
        config,
    );
    Router::new().route_service(PATH, mcp_service).layer(middleware::from_fn_with_state(service, authenticate))
}

/// 401/403 with the contract's error body before rmcp sees the request;
/// the principal rides along in the request's extensions.
async fn authenticate(Caller(p): Caller, mut req: Request, next: Next) -> Response {
    if let Err(e) = crate::service::sessions::require_agent(&p) {
        return ApiError::from(e).into_response();
    }
    req.extensions_mut().insert(p);
    let delete = req.method() == axum::http::Method::DELETE;
    let mut response = next.run(req).await;
    // rmcp ends a session with 202; clients (the Python SDK) expect 200/204.
    if delete && response.status() == axum::http::StatusCode::ACCEPTED {
        *response.status_mut() = axum::http::StatusCode::NO_CONTENT;
        *response.body_mut() = axum::body::Body::empty();
    }
    response
}
