//! OAuth 2.0 protected resource metadata (RFC 9728) for MCP clients, and
//! the `WWW-Authenticate` challenge (RFC 6750) of every 401.
//!
//! The protected resource is the MCP endpoint: `[auth] resource`, or
//! `<scheme>://<Host>/mcp` from the request (scheme `https` when a proxy
//! says `X-Forwarded-Proto: https`). Its metadata is served at
//! `/.well-known/oauth-protected-resource` with the resource's path after
//! it (RFC 9728 §3.1) and at the bare path, naming the configured issuers
//! as authorization servers; without issuers there is none (404), and the
//! challenge is a plain `Bearer`.

use super::error::ApiError;
use crate::service::Service;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;

pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// The resource URL MCP clients request tokens for.
pub fn resource(service: &Service, headers: &HeaderMap) -> String {
    if let Some(r) = &service.config.auth.resource {
        return r.clone();
    }
    let tls = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    // Only a plain host[:port] is echoed back; anything else is replaced.
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty() && h.len() <= 255 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| service.config.listen.to_string());
    format!("{}://{host}/mcp", if tls { "https" } else { "http" })
}

/// Where the metadata of `resource` is (RFC 9728 §3.1: the well-known
/// path goes between the origin and the resource's path).
pub fn metadata_url(resource: &str) -> String {
    match url::Url::parse(resource) {
        Ok(u) => {
            let origin = u.origin().ascii_serialization();
            let path = u.path().trim_end_matches('/');
            format!("{origin}{METADATA_PATH}{path}")
        }
        Err(_) => METADATA_PATH.to_string(),
    }
}

/// The `WWW-Authenticate` value of a 401; `problem` is the reason an
/// offered token was refused (none when no token came).
pub fn challenge(service: &Service, headers: &HeaderMap, problem: Option<&str>) -> HeaderValue {
    let mut text = String::from("Bearer");
    let mut params = Vec::new();
    if !service.auth.issuers().is_empty() {
        params.push(format!("resource_metadata=\"{}\"", metadata_url(&resource(service, headers))));
    }
    if let Some(p) = problem {
        let clean: String = p.chars().filter(|c| *c != '"' && *c != '\\' && !c.is_control()).collect();
        params.push("error=\"invalid_token\"".to_string());
        params.push(format!("error_description=\"{clean}\""));
    }
    if !params.is_empty() {
        text.push(' ');
        text.push_str(&params.join(", "));
    }
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

/// `GET /.well-known/oauth-protected-resource[/mcp]`.
pub async fn metadata(State(s): State<Arc<Service>>, headers: HeaderMap) -> Response {
    if s.auth.issuers().is_empty() {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this host names no authorization server; use a bearer token from its operator",
        )
        .into_response();
    }
    let body = json!({
        "resource": resource(&s, &headers),
        "authorization_servers": s.auth.issuers().issuer_urls(),
        "bearer_methods_supported": ["header"],
        "resource_name": "Bulkhead",
    });
    let mut response = Json(body).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_url_puts_the_well_known_path_before_the_resource_path() {
        assert_eq!(
            metadata_url("https://b.example.com/mcp"),
            "https://b.example.com/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            metadata_url("http://127.0.0.1:7070/mcp/"),
            "http://127.0.0.1:7070/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(metadata_url("https://b.example.com"), "https://b.example.com/.well-known/oauth-protected-resource");
    }
}
