//! The approvals inbox: pending calls an approver may decide, live.
//!
//! The list is `Service::list_approvals`, the API's own; a decision is
//! `Service::decide`. New and decided approvals reach an open inbox as
//! server-sent events carrying the re-rendered list (checked every second
//! and whenever a call of this host finishes), so approvals made through
//! another host show up too.

use super::layout::{self, PageError, json, short_id, time};
use super::signin::{Signins, Viewer};
use crate::config::Role;
use crate::model::Call;
use crate::service::Service;
use crate::service::approvals::Decision;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// Pending approvals shown at once, oldest first.
const INBOX_SIZE: u32 = 100;
const RECHECK: Duration = Duration::from_secs(1);

fn require_approver(v: &Viewer) -> Result<(), PageError> {
    if v.principal.has_role(Role::Approver) {
        Ok(())
    } else {
        Err(PageError::new(
            StatusCode::FORBIDDEN,
            "Not allowed",
            "Only principals with role approver decide approvals.",
        ))
    }
}

pub async fn inbox(State(s): State<Arc<Service>>, viewer: Viewer) -> Result<Response, PageError> {
    require_approver(&viewer)?;
    let items = s.list_approvals(&viewer.principal, None, Some(INBOX_SIZE)).await?;
    let body = html! {
        p.lead {
            "Calls waiting for a decision by an approver other than the agent that asked and the session's owner (four eyes). "
            "New ones appear here without a reload."
        }
        div #inbox data-events="/ui/approvals/events" { (list(&viewer, &items)) }
    };
    Ok(layout::ok(layout::page("Approvals", Some(viewer.nav()), body)))
}

fn list(viewer: &Viewer, items: &[Value]) -> Markup {
    html! {
        @if items.is_empty() {
            p.empty { "Nothing is waiting for you." }
        }
        @for item in items { (approval(viewer, item)) }
    }
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

fn approval(viewer: &Viewer, item: &Value) -> Markup {
    let cid = text(item, "id");
    let review = &item["review"];
    html! {
        article.approval id={ "approval-" (cid) } data-call=(cid) {
            h2 { code { (text(item, "tool")) } " wants to run" }
            dl.facts {
                dt { "Requested by" } dd.requester { (text(item, "requested_by")) }
                dt { "Session" } dd { (short_id(text(item, "session"))) " of " (text(item, "session_principal")) }
                dt { "Asked at" } dd { (time(text(item, "created_at"))) }
                dt { "Call" } dd { code { (cid) } }
            }
            p.four-eyes {
                "Four eyes: " strong { (text(item, "requested_by")) } " asked in a session of "
                strong { (text(item, "session_principal")) } "; you, " strong { (viewer.principal.name) }
                ", are neither, so you may decide."
            }
            details open {
                summary { "Input" }
                (json(&item["input"]))
            }
            details {
                summary { "What the tool may do in this session" }
                @if item["boundary"].is_null() {
                    p.warn { "The tool is no longer in the session's boundary: approving cannot run it." }
                } @else {
                    (json(&item["boundary"]))
                }
            }
            details {
                summary { "Review: " (review_line(review)) }
                (json(review))
            }
            form.decide method="post" action={ "/ui/approvals/" (cid) } {
                input type="hidden" name="csrf" value=(viewer.csrf);
                label for={ "reason-" (cid) } { "Reason (kept in the audit trail)" }
                textarea id={ "reason-" (cid) } name="reason" maxlength="4096" rows="2" {}
                div.buttons {
                    button.approve type="submit" name="decision" value="approve" { "Approve and run" }
                    button.deny type="submit" name="decision" value="deny" { "Deny" }
                }
            }
        }
    }
}

/// "worst: high · 1 high, 2 low" from the API's review summary.
pub fn review_line(review: &Value) -> String {
    if review.is_null() {
        return "no review".into();
    }
    if let Some(e) = review["error"].as_str() {
        return format!("review failed: {e}");
    }
    let counts: Vec<String> = ["critical", "high", "medium", "low", "info"]
        .iter()
        .filter_map(|s| review["findings"][s].as_u64().filter(|n| *n > 0).map(|n| format!("{n} {s}")))
        .collect();
    match review["worst"].as_str() {
        Some(w) => format!("worst {w} · {}", counts.join(", ")),
        None => "no findings".into(),
    }
}

#[derive(Deserialize)]
pub struct DecisionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    decision: String,
    #[serde(default)]
    reason: String,
}

pub async fn decide(
    State(s): State<Arc<Service>>,
    viewer: Viewer,
    Path(cid): Path<String>,
    form: Result<Form<DecisionForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    let Ok(Form(form)) = form else {
        return Err(PageError::new(StatusCode::BAD_REQUEST, "Bad request", "The decision form was malformed."));
    };
    viewer.check_csrf(&form.csrf)?;
    require_approver(&viewer)?;
    let reason = Some(form.reason.trim().to_string()).filter(|r| !r.is_empty());
    let call = s.decide(&viewer.principal, &cid, Decision { decision: form.decision, reason }).await?;
    let title = if call.approval.as_ref().and_then(|a| a.decision.as_deref()) == Some("approve") {
        "Approved"
    } else {
        "Denied"
    };
    let body = html! {
        (decided(&call))
        p { a href="/ui/approvals" { "Back to the inbox" } }
    };
    Ok(layout::ok(layout::page(title, Some(viewer.nav()), body)))
}

/// A decided call as its approver sees it: the answer of the decision.
fn decided(call: &Call) -> Markup {
    html! {
        dl.facts #decided data-call=(call.id) {
            dt { "Tool" } dd { code { (call.tool) } }
            dt { "Status" } dd { (layout::status(call.status.as_str())) }
            @if let Some(a) = &call.approval {
                dt { "Decided by" } dd { (a.decided_by.as_deref().unwrap_or("")) }
                @if let Some(r) = &a.reason { dt { "Reason" } dd.reason { (r) } }
            }
        }
        @if let Some(out) = &call.output { h2 { "Output" } (json(out)) }
        @if let Some(e) = &call.error { h2 { "Error" } p.error { code { (e.code) } ": " (e.message) } }
    }
}

/// Server-sent events: the inbox re-rendered whenever its calls change.
pub async fn events(
    State(s): State<Arc<Service>>,
    Extension(signins): Extension<Arc<Signins>>,
    viewer: Viewer,
) -> Result<Response, PageError> {
    require_approver(&viewer)?;
    let finished = s.subscribe_finished();
    let state = (s, signins, viewer, finished, None::<Vec<String>>);
    let stream = futures_util::stream::unfold(state, |(s, signins, viewer, mut finished, mut seen)| async move {
        loop {
            if !signins.is_live(&viewer) {
                return None; // signed out or expired: the stream ends
            }
            if let Ok(items) = s.list_approvals(&viewer.principal, None, Some(INBOX_SIZE)).await {
                let ids: Vec<String> = items.iter().map(|i| text(i, "id").to_string()).collect();
                if seen.as_ref() != Some(&ids) {
                    seen = Some(ids);
                    let event = Event::default().event("inbox").data(list(&viewer, &items).into_string());
                    return Some((Ok::<_, std::convert::Infallible>(event), (s, signins, viewer, finished, seen)));
                }
            }
            let _ = tokio::time::timeout(RECHECK, finished.recv()).await;
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}
