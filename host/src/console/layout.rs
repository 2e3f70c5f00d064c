//! The page shell every console page shares, error pages, and the small
//! renderers (JSON, status, times) the pages have in common.
//!
//! Everything is rendered by `maud`, which escapes every interpolated
//! value: content from agents and tools (messages, inputs, labels,
//! outputs) is always text, never markup.

use crate::auth::Principal;
use crate::config::Role;
use crate::service::ServiceError;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

/// Who is signed in, as the header shows it (with the sign-out form's token).
pub struct Nav<'a> {
    pub principal: &'a Principal,
    pub csrf: &'a str,
}

pub fn page(title: &str, viewer: Option<Nav<'_>>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Bulkhead" }
                link rel="stylesheet" href="/ui/assets/console.css";
                script src="/ui/assets/console.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/ui/" { "Bulkhead" }
                    @if let Some(v) = viewer {
                        nav {
                            @if v.principal.has_role(Role::Approver) { a href="/ui/approvals" { "Approvals" } }
                            a href="/ui/sessions" { "Sessions" }
                            a href="/ui/tools" { "Tools" }
                            a href="/ui/usage" { "Usage" }
                        }
                        span.who {
                            (v.principal.name)
                            " · "
                            (v.principal.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", "))
                        }
                        form.signout method="post" action="/ui/signout" {
                            input type="hidden" name="csrf" value=(v.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

pub fn respond(status: StatusCode, markup: Markup) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], markup.into_string()).into_response()
}

pub fn ok(markup: Markup) -> Response {
    respond(StatusCode::OK, markup)
}

/// A page that failed: its status and a sentence for the reader. Storage
/// detail is logged by the API's mapping, never shown.
#[derive(Debug)]
pub struct PageError {
    status: StatusCode,
    title: &'static str,
    message: String,
}

impl PageError {
    pub fn new(status: StatusCode, title: &'static str, message: impl Into<String>) -> PageError {
        PageError { status, title, message: message.into() }
    }
}

impl From<ServiceError> for PageError {
    fn from(e: ServiceError) -> PageError {
        let api = crate::web::error::ApiError::from(e);
        let title = match api.status {
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::GONE => "Gone",
            StatusCode::CONFLICT => "Already decided",
            StatusCode::BAD_REQUEST => "Bad request",
            StatusCode::SERVICE_UNAVAILABLE => "Unavailable",
            _ => "Error",
        };
        PageError { status: api.status, title, message: format!("{} ({})", api.message, api.code) }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = html! {
            p.error role="alert" { (self.message) }
            p { a href="/ui/" { "Back to the console" } }
        };
        respond(self.status, page(self.title, None, body))
    }
}

pub fn json(v: &Value) -> Markup {
    html! { pre.json { (serde_json::to_string_pretty(v).unwrap_or_default()) } }
}

pub fn status(s: &str) -> Markup {
    html! { span class={ "status status-" (s) } { (s) } }
}

/// An RFC 3339 time, shortened to the second (the full value on hover).
pub fn time(t: &str) -> Markup {
    let short = t.get(..19).unwrap_or(t).replace('T', " ");
    html! { time datetime=(t) title=(t) { (short) } }
}

/// Digests and ids are long: the start, the whole on hover.
pub fn short_id(id: &str) -> Markup {
    html! { code title=(id) { (id.get(..8).unwrap_or(id)) "…" } }
}
