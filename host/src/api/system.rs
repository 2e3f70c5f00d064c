//! `/v1/tools`, `/healthz`, `/metrics`.

use super::calls::STATUSES;
use super::error::ApiError;
use super::extract::Caller;
use crate::service::Service;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub async fn tools(State(s): State<Arc<Service>>, Caller(p): Caller) -> Result<Response, ApiError> {
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
                "grants": crate::grants::Grant::from_manifest(&m.grants),
                "limits": t.limits,
                "approval": m.approval,
                "imports": t.imports,
                "digest": t.digest,
            })
        })
        .collect();
    Ok(Json(json!({ "tools": tools })).into_response())
}

pub async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

pub async fn metrics(State(s): State<Arc<Service>>) -> Response {
    let mut out = String::new();
    out.push_str("# HELP bulkhead_calls_total Tool calls by final (or pending) status since start.\n");
    out.push_str("# TYPE bulkhead_calls_total counter\n");
    for status in STATUSES {
        let n = s.metrics.calls_by_status[status as usize].load(Ordering::Relaxed);
        let _ = writeln!(out, "bulkhead_calls_total{{status=\"{}\"}} {n}", status.as_str());
    }
    out.push_str(
        "# HELP bulkhead_calls_in_flight Calls holding a concurrency slot.\n# TYPE bulkhead_calls_in_flight gauge\n",
    );
    let _ = writeln!(out, "bulkhead_calls_in_flight {}", s.calls_in_flight());
    out.push_str("# HELP bulkhead_tools_loaded Tool bundles being served.\n# TYPE bulkhead_tools_loaded gauge\n");
    let _ = writeln!(out, "bulkhead_tools_loaded {}", s.tools.len());
    out.push_str(
        "# HELP bulkhead_http_requests_total HTTP requests received.\n# TYPE bulkhead_http_requests_total counter\n",
    );
    let _ = writeln!(out, "bulkhead_http_requests_total {}", s.metrics.http_requests.load(Ordering::Relaxed));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
