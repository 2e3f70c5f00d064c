//! `http-fetch`: fetch a URL over `wasi:http` and return status and body.
//!
//! Input: `{"url": "https://host/path", "method"?: "GET", "headers"?: {..},
//! "body"?: "...", "follow_redirects"?: false, "max_bytes"?: N}`.
//! Output: `{"status": N, "headers": {..}, "body": "...", "truncated": bool}`.
//! The host decides which hosts are reachable (the `network` grant); a
//! refused request comes back as an error naming the reason.

use serde::Deserialize;
use serde_json::{Map, Value, json};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    url: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    headers: Map<String, Value>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    follow_redirects: bool,
    #[serde(default)]
    max_bytes: Option<usize>,
}

const DEFAULT_MAX_BYTES: usize = 256 * 1024;
const MAX_REDIRECTS: usize = 5;

struct Reply {
    status: u16,
    headers: Map<String, Value>,
    body: Vec<u8>,
    truncated: bool,
}

fn fetch(url: &str, input: &Input) -> Result<Reply, String> {
    let (scheme, rest) = url.split_once("://").ok_or("url must start with http:// or https://")?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => return Err(format!("unsupported scheme {other}")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let headers = Fields::new();
    for (name, value) in &input.headers {
        let value = value.as_str().ok_or("header values must be strings")?;
        headers.append(name, value.as_bytes()).map_err(|e| format!("header {name}: {e:?}"))?;
    }
    let request = OutgoingRequest::new(headers);
    let method = match input.method.as_deref().unwrap_or("GET").to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "HEAD" => Method::Head,
        other => Method::Other(other.to_string()),
    };
    request.set_method(&method).map_err(|_| "bad method")?;
    request.set_scheme(Some(&scheme)).map_err(|_| "bad scheme")?;
    request.set_authority(Some(authority)).map_err(|_| "bad authority")?;
    request.set_path_with_query(Some(path)).map_err(|_| "bad path")?;
    let outgoing = request.body().map_err(|_| "request body unavailable")?;
    if let Some(body) = &input.body {
        let stream = outgoing.write().map_err(|_| "request body stream unavailable")?;
        for chunk in body.as_bytes().chunks(4096) {
            stream.blocking_write_and_flush(chunk).map_err(|e| format!("sending the body: {e:?}"))?;
        }
    }
    let pending = outgoing_handler::handle(request, None).map_err(|e| format!("request refused: {e:?}"))?;
    OutgoingBody::finish(outgoing, None).map_err(|e| format!("sending the body: {e:?}"))?;
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(e))) => return Err(format!("request failed: {e:?}")),
        _ => return Err("request failed".into()),
    };
    let mut out_headers = Map::new();
    for (name, value) in response.headers().entries() {
        out_headers.insert(name, Value::String(String::from_utf8_lossy(&value).into_owned()));
    }
    let max = input.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
    let mut body = Vec::new();
    let mut truncated = false;
    let incoming = response.consume().map_err(|_| "response body unavailable")?;
    let stream = incoming.stream().map_err(|_| "response body unavailable")?;
    loop {
        match stream.blocking_read(16 * 1024) {
            Ok(chunk) => {
                if body.len() + chunk.len() > max {
                    body.extend_from_slice(&chunk[..max - body.len()]);
                    truncated = true;
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            Err(wasip2::io::streams::StreamError::Closed) => break,
            Err(e) => return Err(format!("reading the body: {e:?}")),
        }
    }
    Ok(Reply { status: response.status(), headers: out_headers, body, truncated })
}

struct HttpFetch;

impl bulkhead_sdk::Guest for HttpFetch {
    fn invoke(input: String) -> Result<String, String> {
        let input: Input = serde_json::from_str(&input).map_err(|e| format!("bad input: {e}"))?;
        let mut url = input.url.clone();
        let mut reply = fetch(&url, &input)?;
        let mut hops = 0;
        while input.follow_redirects && (300..400).contains(&reply.status) && hops < MAX_REDIRECTS {
            let Some(Value::String(location)) = reply.headers.get("location").cloned() else { break };
            bulkhead_sdk::info(&format!("following redirect to {location}"));
            url = location;
            reply = fetch(&url, &input)?;
            hops += 1;
        }
        Ok(json!({
            "url": url,
            "status": reply.status,
            "headers": reply.headers,
            "body": String::from_utf8_lossy(&reply.body),
            "truncated": reply.truncated,
        })
        .to_string())
    }
}

bulkhead_sdk::export!(HttpFetch);
