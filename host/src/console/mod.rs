//! The console at `/ui/`: web pages for approvers and auditors, served on
//! the API's listener, its assets built into the binary.
//!
//! Server-rendered HTML (`maud`, escaping every value) that works without
//! JavaScript; one small script of our own adds the live approvals inbox
//! (server-sent events). Every page reads through the same `Service` calls
//! as the API with the signed-in principal, so a principal sees here what
//! it could see through the API and nothing more.
//!
//! - [`signin`]: token sign-in, the session cookie, CSRF.
//! - [`layout`]: the page shell, error pages, shared renderers.
//! - [`approvals`], [`sessions`], [`tools`], [`usage`]: the pages.

pub mod approvals;
pub mod layout;
pub mod sessions;
pub mod signin;
pub mod tools;
pub mod usage;

use crate::config::Role;
use crate::service::Service;
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use signin::{Signins, Viewer};
use std::sync::Arc;

/// Only our own script, styles and the page's own origin: an injected
/// `<script>` or inline handler would not run even if one slipped through.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

pub fn router() -> Router<Arc<Service>> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(home))
        .route("/ui/signin", get(signin::form).post(signin::submit))
        .route("/ui/signout", post(signin::signout))
        .route("/ui/approvals", get(approvals::inbox))
        .route("/ui/approvals/events", get(approvals::events))
        .route("/ui/approvals/{cid}", post(approvals::decide))
        .route("/ui/sessions", get(sessions::list))
        .route("/ui/sessions/{sid}", get(sessions::show))
        .route("/ui/sessions/{sid}/calls/{cid}", get(sessions::call))
        .route("/ui/tools", get(tools::list))
        .route("/ui/usage", get(usage::page))
        .route("/ui/assets/console.css", get(|| async { asset("text/css; charset=utf-8", CSS) }))
        .route("/ui/assets/console.js", get(|| async { asset("text/javascript; charset=utf-8", JS) }))
        .route("/ui/{*rest}", get(not_found))
        .layer(middleware::from_fn(security_headers))
        .layer(axum::Extension(Arc::new(Signins::default())))
}

async fn home(viewer: Viewer) -> Redirect {
    if viewer.principal.has_role(Role::Approver) { Redirect::to("/ui/approvals") } else { Redirect::to("/ui/sessions") }
}

async fn not_found(_viewer: Viewer) -> layout::PageError {
    layout::PageError::new(StatusCode::NOT_FOUND, "Not found", "There is no such page.")
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if !h.contains_key(header::CACHE_CONTROL) {
        // Pages show sessions' data: never kept by the browser or a proxy.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
