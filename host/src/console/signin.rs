//! Signing in to the console: a principal's bearer token, checked by the
//! API's own `authenticate`, exchanged for a random session cookie.
//!
//! Sign-ins live in this host's memory (only SHA-256 digests of cookie
//! values are kept): a restart signs everyone out, and behind a load
//! balancer `/ui/` needs sticky routing. The cookie is `HttpOnly`,
//! `SameSite=Strict`, limited to `/ui`, expiring after [`SIGNIN_TTL`], and
//! `Secure` when the request came through TLS (a proxy's
//! `X-Forwarded-Proto: https`). Every form carries the sign-in's CSRF token.

use super::layout::{self, PageError};
use crate::auth::{AuthError, Principal};
use crate::service::Service;
use axum::Form;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a sign-in lasts, whatever its use.
pub const SIGNIN_TTL: Duration = Duration::from_secs(8 * 3600);
/// Sign-ins kept at most; past this the oldest goes first.
const MAX_SIGNINS: usize = 10_000;
const COOKIE: &str = "bulkhead_console";
/// The sign-in form's own CSRF cookie (double submit: no session yet).
const FORM_COOKIE: &str = "bulkhead_signin";

struct Signin {
    principal: Arc<Principal>,
    csrf: String,
    expires: Instant,
}

/// The console's sign-ins, by digest of their cookie value.
#[derive(Default)]
pub struct Signins {
    by_digest: Mutex<HashMap<[u8; 32], Signin>>,
}

fn digest(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    hex::encode(bytes)
}

/// Equal without leaking where they differ through timing.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Signins {
    /// A new sign-in for `principal` lasting `ttl`: its cookie value.
    fn create(&self, principal: Arc<Principal>, ttl: Duration) -> String {
        let value = random_token();
        let mut map = self.by_digest.lock().expect("signins lock");
        let now = Instant::now();
        if map.len() >= MAX_SIGNINS {
            map.retain(|_, s| s.expires > now);
        }
        if map.len() >= MAX_SIGNINS {
            let oldest = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k);
            oldest.map(|k| map.remove(&k));
        }
        map.insert(digest(&value), Signin { principal, csrf: random_token(), expires: now + ttl });
        value
    }

    fn viewer(&self, value: &str) -> Option<Viewer> {
        let key = digest(value);
        let mut map = self.by_digest.lock().expect("signins lock");
        match map.get(&key) {
            Some(s) if s.expires > Instant::now() => {
                Some(Viewer { principal: s.principal.clone(), csrf: s.csrf.clone(), key })
            }
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Whether a viewer is still signed in (event streams end when not).
    pub fn is_live(&self, viewer: &Viewer) -> bool {
        let map = self.by_digest.lock().expect("signins lock");
        map.get(&viewer.key).is_some_and(|s| s.expires > Instant::now())
    }

    fn remove(&self, viewer: &Viewer) {
        self.by_digest.lock().expect("signins lock").remove(&viewer.key);
    }
}

/// The signed-in principal of a console request, and its CSRF token.
#[derive(Clone)]
pub struct Viewer {
    pub principal: Arc<Principal>,
    pub csrf: String,
    key: [u8; 32],
}

impl Viewer {
    pub fn nav(&self) -> layout::Nav<'_> {
        layout::Nav { principal: &self.principal, csrf: &self.csrf }
    }

    /// A form's `csrf` field must be this sign-in's token.
    pub fn check_csrf(&self, field: &str) -> Result<(), PageError> {
        if same(field, &self.csrf) {
            Ok(())
        } else {
            Err(PageError::new(
                StatusCode::FORBIDDEN,
                "Form expired",
                "The form was not sent from this console sign-in (missing or wrong CSRF token). Reload the page and try again.",
            ))
        }
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(name)?.strip_prefix('='))
}

fn behind_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

fn set_cookie(headers: &HeaderMap, name: &str, value: &str, path: &str, max_age: u64) -> HeaderValue {
    let secure = if behind_tls(headers) { "; Secure" } else { "" };
    let text = format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}");
    HeaderValue::from_str(&text).expect("cookie values are hex")
}

/// Not signed in: to the sign-in page (303, so a POST becomes a GET).
pub struct SignedOut;

impl IntoResponse for SignedOut {
    fn into_response(self) -> Response {
        Redirect::to("/ui/signin").into_response()
    }
}

impl FromRequestParts<Arc<Service>> for Viewer {
    type Rejection = SignedOut;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<Service>) -> Result<Self, SignedOut> {
        let signins = parts.extensions.get::<Arc<Signins>>().ok_or(SignedOut)?;
        cookie(&parts.headers, COOKIE).and_then(|v| signins.viewer(v)).ok_or(SignedOut)
    }
}

pub async fn form(headers: HeaderMap) -> Response {
    let csrf = random_token();
    let mut response = signin_page(&csrf, None, StatusCode::OK);
    let cookie = set_cookie(&headers, FORM_COOKIE, &csrf, "/ui/signin", 3600);
    response.headers_mut().append(header::SET_COOKIE, cookie);
    response
}

fn signin_page(csrf: &str, error: Option<&str>, status: StatusCode) -> Response {
    let body = html! {
        form.signin method="post" action="/ui/signin" {
            @if let Some(e) = error { p.error role="alert" { (e) } }
            input type="hidden" name="csrf" value=(csrf);
            label for="token" { "Token" }
            input #token type="password" name="token" autocomplete="off" required autofocus;
            button type="submit" { "Sign in" }
            p.hint { "Use your principal's bearer token. It is checked once and never stored in the browser." }
        }
    };
    layout::respond(status, layout::page("Sign in", None, body))
}

#[derive(Deserialize)]
pub struct SigninForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
}

pub async fn submit(
    State(s): State<Arc<Service>>,
    axum::Extension(signins): axum::Extension<Arc<Signins>>,
    headers: HeaderMap,
    form: Result<Form<SigninForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return PageError::new(StatusCode::BAD_REQUEST, "Bad request", "The sign-in form was malformed.")
            .into_response();
    };
    let expected = cookie(&headers, FORM_COOKIE).unwrap_or("");
    if expected.is_empty() || !same(&form.csrf, expected) {
        return PageError::new(
            StatusCode::FORBIDDEN,
            "Form expired",
            "The sign-in form was not sent from this browser's sign-in page. Open it again.",
        )
        .into_response();
    }
    let principal = match s.authenticate(form.token.trim()).await {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(code = e.code(), "console: a sign-in was refused");
            let (text, status) = match e {
                AuthError::Unavailable => {
                    ("The token's identity provider cannot be reached; try again.", StatusCode::SERVICE_UNAVAILABLE)
                }
                AuthError::Forbidden { .. } => ("That token is valid but gives no access here.", StatusCode::FORBIDDEN),
                AuthError::Invalid(_) => ("That token is not valid.", StatusCode::UNAUTHORIZED),
            };
            return signin_page(&form.csrf, Some(text), status);
        }
    };
    tracing::info!(principal = %principal.name, "console: signed in");
    // A JWT's sign-in ends when the token does.
    let ttl = match principal.expires {
        Some(exp) => Duration::from_secs(exp.saturating_sub(crate::util::unix_now())).min(SIGNIN_TTL),
        None => SIGNIN_TTL,
    };
    let value = signins.create(principal, ttl);
    let mut response = Redirect::to("/ui/").into_response();
    let h = response.headers_mut();
    h.append(header::SET_COOKIE, set_cookie(&headers, COOKIE, &value, "/ui", ttl.as_secs()));
    h.append(header::SET_COOKIE, set_cookie(&headers, FORM_COOKIE, "", "/ui/signin", 0));
    response
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

pub async fn signout(
    viewer: Viewer,
    axum::Extension(signins): axum::Extension<Arc<Signins>>,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    let csrf = form.map(|Form(f)| f.csrf).unwrap_or_default();
    viewer.check_csrf(&csrf)?;
    signins.remove(&viewer);
    let mut response = Redirect::to("/ui/signin").into_response();
    response.headers_mut().append(header::SET_COOKIE, set_cookie(&headers, COOKIE, "", "/ui", 0));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("bulkhead_console_x=1; bulkhead_console=abc; z=2"));
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "missing"), None);
    }

    #[test]
    fn csrf_comparison_needs_equal_strings() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
        assert!(!same("", "a"));
    }

    #[test]
    fn a_sign_in_expires_and_can_be_removed() {
        let signins = Signins::default();
        let value = signins.create(Arc::new(Principal::local("p")), SIGNIN_TTL);
        let viewer = signins.viewer(&value).expect("signed in");
        assert!(signins.is_live(&viewer));
        assert!(signins.viewer("not-a-cookie").is_none());
        signins.remove(&viewer);
        assert!(signins.viewer(&value).is_none());
    }
}
