//! Tools: the bundles the viewer may use (all, for admins), each with its
//! grants, real WIT imports, digest and `bulkhead review` findings: the
//! same `visible_tools` and reviews `GET /v1/tools` answers with.

use super::approvals::review_line;
use super::layout::{self, json};
use super::signin::Viewer;
use crate::service::Service;
use crate::supply::signature::Verdict;
use axum::extract::State;
use axum::response::Response;
use maud::html;
use std::sync::Arc;

pub async fn list(State(s): State<Arc<Service>>, viewer: Viewer) -> Response {
    let tools = s.visible_tools(&viewer.principal);
    let set = s.tools();
    let body = html! {
        @if tools.is_empty() { p.empty { "No tool is visible to you." } }
        @for t in &tools {
            @let m = &t.manifest;
            @let review = s.review_of(&m.name);
            @let info = set.info.get(&m.name);
            article.tool id={ "tool-" (m.name) } {
                h2 { code { (m.name) } " " span.version { (m.version) } }
                @if !m.description.is_empty() { p { (m.description) } }
                dl.facts {
                    dt { "Digest" } dd { code { (t.digest) } }
                    dt { "Approval" } dd { @if m.approval.required { "every call waits for an approver" } @else { "not required by the manifest" } }
                    dt { "Review" } dd { (review_line(&review)) }
                    dt { "Signature" } dd { (signature_line(info.map(|i| &i.signature))) }
                    dt { "Source" } dd { (source_line(info.map(|i| &i.source))) }
                    @if let Some(prev) = info.and_then(|i| i.previous.as_ref()) {
                        dt { "Replaced" } dd { (prev.version) " " code { (prev.digest) } }
                    }
                }
                details {
                    summary { "Grants (the most this tool may ever use)" }
                    (json(&serde_json::to_value(&m.grant).unwrap_or_default()))
                }
                details {
                    summary { "Imports (" (t.imports.len()) ")" }
                    ul.imports { @for i in &t.imports { li { code { (i) } } } }
                }
                details {
                    summary { "Review findings" }
                    (json(&review))
                }
            }
        }
    };
    layout::ok(layout::page("Tools", Some(viewer.nav()), body))
}

fn signature_line(v: Option<&Verdict>) -> String {
    match v {
        Some(Verdict::Verified { key }) => format!("verified, signed by {key}"),
        Some(Verdict::Unsigned) | None => "unsigned".into(),
        Some(other) => format!("not verified: {}", other.refusal().unwrap_or_default()),
    }
}

/// Where the bundle came from; host paths only name the folder kind.
fn source_line(v: Option<&serde_json::Value>) -> String {
    match v.and_then(|v| v["kind"].as_str()) {
        Some("oci") => {
            let v = v.expect("kind read from it");
            format!("{} ({})", v["reference"].as_str().unwrap_or(""), v["digest"].as_str().unwrap_or(""))
        }
        _ => "the host's tools folder".into(),
    }
}
