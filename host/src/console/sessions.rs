//! Sessions: the filtered list, one session's whole record (boundary, env,
//! messages, calls, tool state, the audit chain and its verification), and
//! one call. Every read is the API's own service call with the viewer's
//! principal, so a session another principal owns is a 404 here too.

use super::layout::{self, PageError, json, short_id, status, time};
use super::signin::Viewer;
use crate::model::{AuditEvent, Session};
use crate::service::Service;
use crate::service::sessions::SessionFilter;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use maud::{Markup, html};
use serde::Deserialize;
use std::sync::Arc;

const PAGE: u32 = 50;
/// Messages and calls a session page shows, the first (oldest) ones.
const SHOWN: u32 = 200;

#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(flatten)]
    filter: SessionFilter,
    after: Option<String>,
}

fn bad_query(e: axum::extract::rejection::QueryRejection) -> PageError {
    PageError::new(StatusCode::BAD_REQUEST, "Bad request", e.body_text())
}

pub async fn list(
    State(s): State<Arc<Service>>,
    viewer: Viewer,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PageError> {
    let Query(q) = q.map_err(bad_query)?;
    let f = &q.filter;
    let found = s.find_sessions(&viewer.principal, f, q.after.clone(), Some(PAGE)).await?;
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    let next = found.next.as_ref().map(|after| {
        let mut url = url_with(f);
        url.push_str(&format!("&after={}", encode(after)));
        url
    });
    let body = html! {
        form.filters method="get" action="/ui/sessions" {
            @if viewer.principal.is_admin() {
                label { "Principal " input name="principal" value=(value(&f.principal)); }
            }
            label { "Label " input name="label" placeholder="key or key=value" value=(value(&f.label)); }
            label { "Status "
                select name="status" {
                    @for (v, name) in [("", "any"), ("active", "active"), ("expired", "expired")] {
                        option value=(v) selected[f.status.as_deref().unwrap_or("") == v] { (name) }
                    }
                }
            }
            label { "From " input type="date" name="from" value=(value(&f.from)); }
            label { "To " input type="date" name="to" value=(value(&f.to)); }
            button type="submit" { "Filter" }
        }
        @if found.sessions.is_empty() {
            p.empty { "No sessions match." }
        } @else {
            table.sessions {
                thead { tr { th { "Session" } th { "Principal" } th { "Created" } th { "Expires" } th { "Labels" } th { "Calls" } th { "Version" } } }
                tbody {
                    @for sess in &found.sessions {
                        tr {
                            td { a href={ "/ui/sessions/" (sess.id) } { code { (sess.id) } } }
                            td { (sess.principal) }
                            td { (time(&sess.created_at)) }
                            td { @if let Some(e) = &sess.expires_at { (time(e)) } @else { "never" } }
                            td { @for (k, v) in &sess.labels { span.label { (k) "=" (v) } " " } }
                            td.num { (sess.usage.calls) }
                            td.num { (sess.version) }
                        }
                    }
                }
            }
        }
        @if let Some(next) = next { p.paging { a rel="next" href=(next) { "Next page" } } }
    };
    Ok(layout::ok(layout::page("Sessions", Some(viewer.nav()), body)))
}

fn encode(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn url_with(f: &SessionFilter) -> String {
    let mut url = String::from("/ui/sessions?");
    for (k, v) in
        [("principal", &f.principal), ("label", &f.label), ("status", &f.status), ("from", &f.from), ("to", &f.to)]
    {
        if let Some(v) = v {
            url.push_str(&format!("{k}={}&", encode(v)));
        }
    }
    url.pop();
    url
}

pub async fn show(
    State(s): State<Arc<Service>>,
    viewer: Viewer,
    Path(sid): Path<String>,
) -> Result<Response, PageError> {
    let p = &viewer.principal;
    let session = s.get_session(p, &sid).await?;
    let messages = s.list_messages(p, &sid, None, Some(SHOWN)).await?;
    let calls = s.list_calls(p, &sid, None, None, Some(SHOWN)).await?;
    let mut state = Vec::new();
    for tool in session.tools.keys() {
        state.push((tool.clone(), s.get_state(p, &sid, tool).await?));
    }
    let audit = s.list_audit(p, &sid, None, Some(crate::service::sessions::MAX_PAGE)).await?;
    let (checked, broken) = s.verify_session_audit(p, &sid).await?;
    let body = html! {
        (facts(&session))
        section #boundary {
            h2 { "Boundary" }
            p.lead { "What each tool may do in this session: fixed at creation, only ever narrowed." }
            @for (tool, b) in &session.tools {
                details {
                    summary { code { (tool) } @if b.approval_required { " · " span.tag { "approval required" } } }
                    (json(&serde_json::to_value(&b.grants).unwrap_or_default()))
                }
            }
        }
        section #env {
            h2 { "Environment" }
            @if session.env.is_empty() { p.empty { "None." } }
            @else { table { @for (k, v) in &session.env { tr { th { code { (k) } } td { code { (v) } } } } } }
        }
        section #messages {
            h2 { "Messages" }
            @if messages.is_empty() { p.empty { "None." } }
            @for m in &messages {
                div.message {
                    div.meta { span.role { (m.role) } " #" (m.seq) " · " (time(&m.created_at)) }
                    div.content { (m.content) }
                }
            }
        }
        section #calls {
            h2 { "Calls" }
            @if calls.is_empty() { p.empty { "None." } }
            @else {
                table {
                    thead { tr { th { "Call" } th { "Tool" } th { "Status" } th { "Created" } th { "Wall ms" } th { "Fuel" } th { "Egress" } } }
                    tbody {
                        @for c in &calls {
                            tr {
                                td { a href={ "/ui/sessions/" (sid) "/calls/" (c.id) } { (short_id(&c.id)) } }
                                td { code { (c.tool) } }
                                td { (status(c.status.as_str())) }
                                td { (time(&c.created_at)) }
                                td.num { (c.usage.wall_ms) }
                                td.num { (c.usage.fuel) }
                                td.num { (c.usage.egress_requests) }
                            }
                        }
                    }
                }
            }
        }
        section #state {
            h2 { "Tool state" }
            @for (tool, entries) in &state {
                h3 { code { (tool) } }
                @if entries.is_empty() { p.empty { "No keys." } }
                @else { table { @for (k, v) in entries { tr { th { code { (k) } } td { code { (decoded(v)) } } } } } }
            }
        }
        section #audit {
            h2 { "Audit trail" }
            @match &broken {
                None => p.verified { "Chain verified: " (checked) " events, each hash matching its contents and its predecessor." },
                Some(b) => p.error role="alert" { "Chain broken at event " (b.seq) ": " (b.reason) " (" (checked) " verified before it)." },
            }
            (audit_table(&audit))
        }
    };
    Ok(layout::ok(layout::page("Session", Some(viewer.nav()), body)))
}

fn facts(s: &Session) -> Markup {
    let u = &s.usage;
    html! {
        dl.facts {
            dt { "Id" } dd { code #session-id { (s.id) } }
            dt { "Principal" } dd { (s.principal) }
            dt { "Created" } dd { (time(&s.created_at)) }
            dt { "Expires" } dd { @if let Some(e) = &s.expires_at { (time(e)) } @else { "never" } }
            dt { "Version" } dd { (s.version) }
            dt { "Labels" } dd { @for (k, v) in &s.labels { span.label { (k) "=" (v) } " " } }
            dt { "Usage" } dd {
                (u.calls) " calls · " (u.wall_ms) " ms · " (u.fuel) " fuel · " (u.state_bytes_written) " state bytes written · "
                (u.egress_requests) " egress requests (" (u.egress_bytes) " bytes) · " (u.stored_bytes) " bytes stored"
            }
        }
    }
}

/// A state value as text when it is UTF-8, else its base64 as stored.
fn decoded(b64: &str) -> String {
    match base64::engine::general_purpose::STANDARD.decode(b64).ok().and_then(|b| String::from_utf8(b).ok()) {
        Some(text) => text,
        None => format!("base64:{b64}"),
    }
}

/// Egress and denials stand out: they are what an auditor looks for.
fn audit_table(events: &[AuditEvent]) -> Markup {
    html! {
        table.audit {
            thead { tr { th { "#" } th { "At" } th { "Kind" } th { "Actor" } th { "Call" } th { "Data" } } }
            tbody {
                @for e in events {
                    @let class = match e.kind.as_str() {
                        "egress" => "egress",
                        "capability_denied" => "denied",
                        "secret_read" => "secret",
                        _ => "",
                    };
                    tr class=(class) {
                        td.num { (e.seq) }
                        td { (time(&e.at)) }
                        td { code { (e.kind) } }
                        td { (e.actor) }
                        td { @if let Some(c) = &e.call { (short_id(c)) } }
                        td { code.data { (e.data.to_string()) } }
                    }
                }
            }
        }
    }
}

pub async fn call(
    State(s): State<Arc<Service>>,
    viewer: Viewer,
    Path((sid, cid)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let c = s.get_call(&viewer.principal, &sid, &cid, None).await?;
    let body = html! {
        dl.facts {
            dt { "Id" } dd { code { (c.id) } }
            dt { "Session" } dd { a href={ "/ui/sessions/" (c.session) } { code { (c.session) } } }
            dt { "Tool" } dd { code { (c.tool) } }
            dt { "Status" } dd #call-status { (status(c.status.as_str())) }
            dt { "Created" } dd { (time(&c.created_at)) }
            @if let Some(t) = &c.finished_at { dt { "Finished" } dd { (time(t)) } }
            @if let Some(a) = &c.approval {
                dt { "Approval" } dd {
                    @if let Some(d) = &a.decision { (d) " by " (a.decided_by.as_deref().unwrap_or("")) } @else { "waiting for an approver other than you (four eyes)" }
                    @if let Some(r) = &a.reason { ": " span.reason { (r) } }
                }
            }
            dt { "Usage" } dd {
                (c.usage.wall_ms) " ms · " (c.usage.fuel) " fuel · " (c.usage.memory_peak_bytes) " bytes peak memory · "
                (c.usage.egress_requests) " egress requests (" (c.usage.egress_bytes) " bytes)"
            }
        }
        h2 { "Input" } (json(&c.input))
        @if let Some(out) = &c.output { h2 { "Output" } div #call-output { (json(out)) } }
        @if let Some(e) = &c.error { h2 { "Error" } p.error { code { (e.code) } ": " (e.message) } }
        @if !c.logs.is_empty() {
            h2 { "Logs" }
            pre.logs { @for l in &c.logs { "[" (l.level) "] " (l.message) "\n" } }
        }
    };
    Ok(layout::ok(layout::page("Call", Some(viewer.nav()), body)))
}
