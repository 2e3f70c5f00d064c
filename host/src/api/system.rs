//! `/healthz` and `/metrics`.

use crate::service::Service;
use crate::web::error::ApiError;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;

pub async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// Prometheus text by default; OpenMetrics for a scraper that asks for it.
pub async fn metrics(State(s): State<Arc<Service>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let gauges = s.gauges().await?;
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let openmetrics = accept.contains("application/openmetrics-text");
    let content_type = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    Ok(([(header::CONTENT_TYPE, content_type)], s.metrics.render(gauges, openmetrics)).into_response())
}
