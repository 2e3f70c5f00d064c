//! The HTTP API (contract §7), built once by [`router`] and served by axum.
//!
//! The pieces it shares with [`crate::mcp`] (the error body, the caller's
//! principal, JSON extractors) live in [`crate::web`].
//! - the handlers, one file per resource: [`sessions`] (and messages),
//!   [`calls`], [`state`], [`audit`], [`approvals`], [`tools`], [`usage`],
//!   [`system`] (`/healthz`, `/metrics`).

pub mod approvals;
pub mod audit;
pub mod calls;
pub mod sessions;
pub mod state;
pub mod system;
pub mod tools;
pub mod usage;

use crate::service::Service;
use crate::web::error::ApiError;
use crate::web::oauth;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use tracing::Instrument;

pub fn router(service: Arc<Service>) -> Router {
    let body_limit = (service.config.limits.max_request_kb as usize) << 10;
    Router::new()
        .route("/v1/sessions", get(sessions::list).post(sessions::create))
        .route("/v1/sessions/{sid}", get(sessions::get).delete(sessions::delete).patch(sessions::narrow))
        .route("/v1/sessions/{sid}/messages", get(sessions::list_messages).post(sessions::append_message))
        .route("/v1/sessions/{sid}/calls", get(calls::list).post(calls::create))
        .route("/v1/sessions/{sid}/calls/{cid}", get(calls::get))
        .route("/v1/sessions/{sid}/state/{tool}", get(state::get))
        .route("/v1/sessions/{sid}/audit", get(audit::list))
        .route("/v1/approvals", get(approvals::list))
        .route("/v1/approvals/{cid}", axum::routing::post(approvals::decide))
        .route("/v1/usage", get(usage::get))
        .route("/v1/tools", get(tools::list))
        .route("/v1/tools/reload", axum::routing::post(tools::reload))
        .route("/v1/tools/audit", get(tools::audit))
        .route("/healthz", get(system::healthz))
        .route("/metrics", get(system::metrics))
        .route(oauth::METADATA_PATH, get(oauth::metadata))
        .route(&format!("{}/mcp", oauth::METADATA_PATH), get(oauth::metadata))
        .merge(crate::mcp::router(service.clone()))
        .merge(crate::console::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(service.clone(), count_requests))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            tracing::error!("a request handler panicked");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error").into_response()
        }))
        .with_state(service)
}

/// Counts each request, traces it (continuing the caller's trace), and
/// with JSON logs writes its access line with the trace id.
async fn count_requests(State(s): State<Arc<Service>>, req: Request, next: Next) -> Response {
    s.metrics.http_requests.inc();
    let started = std::time::Instant::now();
    let method = req.method().clone();
    // An unsampled request gets no span: nothing under it is traced.
    let span = match crate::telemetry::sampled(req.headers()) {
        true => tracing::trace_span!(
            target: crate::telemetry::TARGET,
            "request",
            otel.name = format!("{method} {}", route(req.uri().path())),
            otel.kind = "server",
            http.request.method = %method,
            http.route = %route(req.uri().path()),
            http.response.status_code = tracing::field::Empty,
        ),
        false => tracing::Span::none(),
    };
    let logged = crate::telemetry::access_log().then(|| {
        let incoming = req.headers().get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned);
        (route(req.uri().path()), incoming)
    });
    crate::telemetry::continue_trace(&span, req.headers());
    let response = next.run(req).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", i64::from(status));
    if let Some((route, incoming)) = logged {
        // The trace this request is in: its span's, else its caller's.
        let trace_id = crate::telemetry::trace_id(&span)
            .or_else(|| incoming.and_then(|t| t.split('-').nth(1).filter(|id| id.len() == 32).map(str::to_owned)));
        tracing::info!(
            target: "bulkhead::access",
            method = %method,
            route = %route,
            status,
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            trace_id = trace_id.as_deref().unwrap_or(""),
            "request"
        );
    }
    response
}

/// A path with its ids (UUIDs, as sessions and calls have) as `{id}`: the
/// span name of a request, the same for every session.
fn route(path: &str) -> String {
    let segments: Vec<&str> =
        path.split('/').map(|seg| if uuid::Uuid::try_parse(seg).is_ok() { "{id}" } else { seg }).collect();
    segments.join("/")
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this endpoint")
}
