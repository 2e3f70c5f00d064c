//! `/v1/sessions/{sid}/audit`: a session's audit trail, as JSON or JSON lines.

use crate::service::Service;
use crate::web::error::ApiError;
use crate::web::extract::{Caller, Path, Query};
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditPage {
    pub(super) after: Option<i64>,
    pub(super) limit: Option<u32>,
    /// `json` (default) or `jsonl`: one event per line, for export.
    pub(super) format: Option<String>,
}

pub async fn list(
    State(s): State<Arc<Service>>,
    Caller(p): Caller,
    Path(sid): Path<String>,
    Query(q): Query<AuditPage>,
) -> Result<Response, ApiError> {
    let format = Format::of(q.format.as_deref())?;
    let events = s.list_audit(&p, &sid, q.after, q.limit).await?;
    Ok(format.render(&events))
}

/// `format=json` (default) or `jsonl` of an audit page.
pub(super) enum Format {
    Json,
    Lines,
}

impl Format {
    pub(super) fn of(format: Option<&str>) -> Result<Format, ApiError> {
        match format {
            None | Some("json") => Ok(Format::Json),
            Some("jsonl") => Ok(Format::Lines),
            Some(_) => Err(ApiError::bad_request("format must be json or jsonl")),
        }
    }

    pub(super) fn render(self, events: &[crate::model::AuditEvent]) -> Response {
        if let Format::Json = self {
            return Json(json!({ "events": events })).into_response();
        }
        let mut body = String::new();
        for e in events {
            body.push_str(&serde_json::to_string(e).expect("events serialize"));
            body.push('\n');
        }
        ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
    }
}
