//! `/v1/sessions/{sid}/calls` and `/v1/sessions/{sid}/calls/{cid}`.

use crate::service::Service;
use crate::service::calls::{CallOptions, NewCall};
use crate::web::error::ApiError;
use crate::web::extract::{Body, Caller, Path, Query};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallPage {
    status: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wait {
    wait: Option<u64>,
}

/// `If-Match: "<version>"` (quotes optional; a weak `W/` tag is refused).
pub(super) fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    let bare = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(text);
    bare.parse::<i64>()
        .map(Some)
        .map_err(|_| ApiError::bad_request("If-Match must be a session version, e.g. If-Match: \"3\""))
}

/// `Prefer: respond-async` (RFC 7240), among other preferences.
fn prefers_async(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.split(';').next().is_some_and(|token| token.trim().eq_ignore_ascii_case("respond-async")))
}

pub async fn create(
    State(s): State<Arc<Service>>,
    Caller(p): Caller,
    Path(sid): Path<String>,
    headers: HeaderMap,
    Body(req): Body<NewCall>,
) -> Result<Response, ApiError> {
    let opts = CallOptions { if_match: if_match(&headers)?, respond_async: prefers_async(&headers) };
    let reply = s.call(&p, &sid, req, opts).await?;
    let status = if reply.call.status.is_open() { StatusCode::ACCEPTED } else { StatusCode::OK };
    let location = format!("/v1/sessions/{}/calls/{}", reply.call.session, reply.call.id);
    let mut response = (status, [(header::LOCATION, location)], Json(reply.call)).into_response();
    if reply.replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

pub async fn get(
    State(s): State<Arc<Service>>,
    Caller(p): Caller,
    Path((sid, cid)): Path<(String, String)>,
    Query(q): Query<Wait>,
) -> Result<Response, ApiError> {
    Ok(Json(s.get_call(&p, &sid, &cid, q.wait).await?).into_response())
}

pub async fn list(
    State(s): State<Arc<Service>>,
    Caller(p): Caller,
    Path(sid): Path<String>,
    Query(q): Query<CallPage>,
) -> Result<Response, ApiError> {
    let calls = s.list_calls(&p, &sid, q.status.as_deref(), q.after, q.limit).await?;
    Ok(Json(json!({ "calls": calls })).into_response())
}
