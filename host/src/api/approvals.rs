//! `/v1/approvals` and `/v1/approvals/{cid}`: human decisions on calls.

use super::sessions::SessionPage;
use crate::service::Service;
use crate::service::approvals::Decision;
use crate::web::error::ApiError;
use crate::web::extract::{Body, Caller, Path, Query};
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;

pub async fn list(
    State(s): State<Arc<Service>>,
    Caller(p): Caller,
    Query(q): Query<SessionPage>,
) -> Result<Response, ApiError> {
    let approvals = s.list_approvals(&p, q.after, q.limit).await?;
    Ok(Json(json!({ "approvals": approvals })).into_response())
}

pub async fn decide(
    State(s): State<Arc<Service>>,
    Caller(p): Caller,
    Path(cid): Path<String>,
    Body(d): Body<Decision>,
) -> Result<Response, ApiError> {
    Ok(Json(s.decide(&p, &cid, d).await?).into_response())
}
