//! `/healthz` and `/metrics`.

use crate::service::Service;
use crate::web::error::ApiError;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;

pub async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

pub async fn metrics(State(s): State<Arc<Service>>) -> Result<Response, ApiError> {
    let gauges = s.gauges().await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render(&gauges)).into_response())
}
