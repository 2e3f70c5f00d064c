//! `GET /v1/usage`: units and cost per principal over a window of sessions.

use crate::service::Service;
use crate::service::usage::UsageParams;
use crate::web::error::ApiError;
use crate::web::extract::{Caller, Query};
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

pub async fn get(
    State(s): State<Arc<Service>>,
    Caller(p): Caller,
    Query(q): Query<UsageParams>,
) -> Result<Response, ApiError> {
    Ok(Json(s.usage_report(&p, q).await?).into_response())
}
