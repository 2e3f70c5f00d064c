//! `/v1/tools`: the bundles a principal may use, with grants, reviews,
//! signature verdicts and where they came from; the reload of the set and
//! its audit chain (admins).

use super::audit::AuditPage;
use crate::service::Service;
use crate::web::error::ApiError;
use crate::web::extract::{Caller, Query};
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;

pub async fn list(State(s): State<Arc<Service>>, Caller(p): Caller) -> Result<Response, ApiError> {
    let set = s.tools();
    let tools: Vec<_> = s
        .visible_tools(&p)
        .iter()
        .map(|t| {
            let m = &t.manifest;
            let info = set.info.get(&m.name);
            let mut source = info.map(|i| i.source.clone()).unwrap_or_default();
            // Host paths are the operator's business.
            if !p.is_admin()
                && let Some(o) = source.as_object_mut()
            {
                o.remove("path");
            }
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
                "manifest_digest": t.manifest.digest,
                "review": info.map(|i| i.review.clone()),
                "signature": info.map(|i| &i.signature),
                "source": source,
                "loaded_at": info.map(|i| &i.loaded_at),
                "previous": info.and_then(|i| i.previous.as_ref()),
            })
        })
        .collect();
    Ok(Json(json!({ "tools": tools, "generation": set.generation })).into_response())
}

/// `POST /v1/tools/reload`: what SIGHUP does, answered with what changed.
pub async fn reload(State(s): State<Arc<Service>>, Caller(p): Caller) -> Result<Response, ApiError> {
    let report = s.reload_tools_as(&p).await?;
    Ok(Json(report).into_response())
}

/// `GET /v1/tools/audit`: the `tools` chain (`tool_updated` events).
pub async fn audit(
    State(s): State<Arc<Service>>,
    Caller(p): Caller,
    Query(q): Query<AuditPage>,
) -> Result<Response, ApiError> {
    let format = super::audit::Format::of(q.format.as_deref())?;
    let events = s.list_tools_audit(&p, q.after, q.limit).await?;
    Ok(format.render(&events))
}
