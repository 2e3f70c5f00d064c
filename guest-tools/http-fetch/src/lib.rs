//! `http-fetch`: fetch a URL over `wasi:http` and return status and body.
//!
//! Input: `{"url": "https://host/path", "method"?: "GET", "headers"?: {..},
//! "body"?: "...", "follow_redirects"?: false, "max_bytes"?: N}`.
//! Output: `{"url", "status", "headers": {..}, "body": "...", "truncated"}`.
//! The host decides which hosts are reachable (the `network` grant); a
//! refused request comes back as an error naming the reason.

use bulkhead_sdk::{Tool, http, log};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    url: String,
    method: Option<String>,
    #[serde(default)]
    headers: Map<String, Value>,
    body: Option<String>,
    #[serde(default)]
    follow_redirects: bool,
    max_bytes: Option<usize>,
}

#[derive(Serialize)]
struct Output {
    url: String,
    status: u16,
    headers: Map<String, Value>,
    body: String,
    truncated: bool,
}

const DEFAULT_MAX_BYTES: usize = 256 * 1024;
const MAX_REDIRECTS: usize = 5;

fn fetch(url: &str, input: &Input) -> Result<http::Response, String> {
    let mut req = http::request(input.method.as_deref().unwrap_or("GET"), url)
        .max_body(input.max_bytes.unwrap_or(DEFAULT_MAX_BYTES));
    for (name, value) in &input.headers {
        req = req.header(name, value.as_str().ok_or("header values must be strings")?);
    }
    if let Some(body) = &input.body {
        req = req.body(body.as_bytes());
    }
    req.send()
}

struct HttpFetch;

impl Tool for HttpFetch {
    type Input = Input;
    type Output = Output;

    fn run(input: Input) -> Result<Output, String> {
        let mut url = input.url.clone();
        let mut reply = fetch(&url, &input)?;
        let mut hops = 0;
        while input.follow_redirects && (300..400).contains(&reply.status) && hops < MAX_REDIRECTS {
            let Some(location) = reply.header("location").map(str::to_string) else { break };
            log::info(&format!("following redirect to {location}"));
            url = location;
            reply = fetch(&url, &input)?;
            hops += 1;
        }
        let headers = reply.headers.iter().map(|(n, v)| (n.clone(), Value::String(v.clone()))).collect();
        Ok(Output { url, status: reply.status, headers, body: reply.text(), truncated: reply.truncated })
    }
}

bulkhead_sdk::export!(HttpFetch);
