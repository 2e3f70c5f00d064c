//! `/v1/sessions`, `/v1/sessions/{sid}` and `/v1/sessions/{sid}/messages`.

use crate::service::Service;
use crate::service::sessions::{CreateSession, Narrowing, NewMessage, SessionFilter};
use crate::web::error::ApiError;
use crate::web::extract::{Body, Caller, Path, Query};
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionPage {
    pub(super) after: Option<String>,
    pub(super) limit: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeqPage {
    after: Option<i64>,
    limit: Option<u32>,
}

pub async fn create(
    State(s): State<Arc<Service>>,
    Caller(p): Caller,
    Body(req): Body<CreateSession>,
) -> Result<Response, ApiError> {
    let session = s.create_session(&p, req).await?;
    let location = format!("/v1/sessions/{}", session.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(session)).into_response())
}

/// `GET /v1/sessions`: a page, optionally filtered (see [`SessionFilter`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionQuery {
    after: Option<String>,
    limit: Option<u32>,
    principal: Option<String>,
    label: Option<String>,
    status: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

pub async fn list(
    State(s): State<Arc<Service>>,
    Caller(p): Caller,
    Query(q): Query<SessionQuery>,
) -> Result<Response, ApiError> {
    let filter = SessionFilter { principal: q.principal, label: q.label, status: q.status, from: q.from, to: q.to };
    let page = s.find_sessions(&p, &filter, q.after, q.limit).await?;
    let mut body = json!({ "sessions": page.sessions });
    if let Some(next) = page.next {
        body["next"] = json!(next);
    }
    Ok(Json(body).into_response())
}

pub async fn get(
    State(s): State<Arc<Service>>,
    Caller(p): Caller,
    Path(sid): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(s.get_session(&p, &sid).await?).into_response())
}

pub async fn delete(
    State(s): State<Arc<Service>>,
    Caller(p): Caller,
    Path(sid): Path<String>,
) -> Result<Response, ApiError> {
    s.delete_session(&p, &sid).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn append_message(
    State(s): State<Arc<Service>>,
    Caller(p): Caller,
    Path(sid): Path<String>,
    Body(m): Body<NewMessage>,
) -> Result<Response, ApiError> {
    let message = s.append_message(&p, &sid, m).await?;
    Ok((StatusCode::CREATED, Json(message)).into_response())
}

pub async fn list_messages(
    State(s): State<Arc<Service>>,
    Caller(p): Caller,
    Path(sid): Path<String>,
    Query(q): Query<SeqPage>,
) -> Result<Response, ApiError> {
    let messages = s.list_messages(&p, &sid, q.after, q.limit).await?;
    Ok(Json(json!({ "messages": messages })).into_response())
}

pub async fn narrow(
    State(s): State<Arc<Service>>,
    Caller(p): Caller,
    Path(sid): Path<String>,
    headers: HeaderMap,
    Body(n): Body<Narrowing>,
) -> Result<Response, ApiError> {
    let if_match = super::calls::if_match(&headers)?;
    Ok(Json(s.narrow_session(&p, &sid, n, if_match).await?).into_response())
}
