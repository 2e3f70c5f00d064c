//! `/v1/tools`: the bundles a principal may use, with grants and reviews.

use crate::service::Service;
use crate::web::error::ApiError;
use crate::web::extract::Caller;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;

pub async fn list(State(s): State<Arc<Service>>, Caller(p): Caller) -> Result<Response, ApiError> {
    let tools: Vec<_> = s
        .visible_tools(&p)
        .iter()
        .map(|t| {
            let m = &t.manifest;
            json!({
                "name": m.name,
                "version": m.version,
                "description": m.description,
                "input_schema": m.input_schema,
                "grants": m.grant,
                "limits": t.limits,
                "approval": m.approval,
                "imports": t.imports,
                "digest": t.digest,
                "review": s.review_of(&m.name),
            })
        })
        .collect();
    Ok(Json(json!({ "tools": tools })).into_response())
}
