//! `/v1/sessions/{sid}/state/{tool}`: a tool's state in a session.

use crate::service::Service;
use crate::web::error::ApiError;
use crate::web::extract::{Caller, Path};
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;

pub async fn get(
    State(s): State<Arc<Service>>,
    Caller(p): Caller,
    Path((sid, tool)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let entries = s.get_state(&p, &sid, &tool).await?;
    Ok(Json(json!({ "entries": entries })).into_response())
}
