//! A minimal blocking HTTP client over `wasi:http` (feature `http`). The
//! host decides which hosts are reachable (the tool's `network` grant); a
//! refused request is an `Err` naming the reason.

use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body was cut at the request's `max_body`.
    pub truncated: bool,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("response is not the expected JSON: {e}"))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Reads at most this much of a response body unless told otherwise.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

pub struct Request {
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    max_body: usize,
}

pub fn get(url: &str) -> Request {
    request("GET", url)
}

pub fn post(url: &str, body: impl Into<Vec<u8>>) -> Request {
    request("POST", url).body(body)
}

/// A request with any method (`GET`, `PUT`, `PATCH`, ...).
pub fn request(method: &str, url: &str) -> Request {
    let method = match method.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "HEAD" => Method::Head,
        "PATCH" => Method::Patch,
        "OPTIONS" => Method::Options,
        other => Method::Other(other.to_string()),
    };
    Request { method, url: url.into(), headers: Vec::new(), body: None, max_body: DEFAULT_MAX_BODY }
}

impl Request {
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Reads at most this many bytes of the response body; the rest is
    /// dropped and the response marked `truncated`.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    pub fn send(self) -> Result<Response, String> {
        let (scheme, rest) = self.url.split_once("://").ok_or("url must start with http:// or https://")?;
        let scheme = match scheme {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => return Err(format!("unsupported scheme {other}")),
        };
        let (authority, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
        let fields = Fields::new();
        for (name, value) in &self.headers {
            fields.append(name, value.as_bytes()).map_err(|e| format!("header {name}: {e:?}"))?;
        }
        let request = OutgoingRequest::new(fields);
        request.set_method(&self.method).map_err(|_| "bad method")?;
        request.set_scheme(Some(&scheme)).map_err(|_| "bad scheme")?;
        request.set_authority(Some(authority)).map_err(|_| "bad authority")?;
        request.set_path_with_query(Some(path)).map_err(|_| "bad path")?;
        let outgoing = request.body().map_err(|_| "request body unavailable")?;
        if let Some(body) = &self.body {
            let stream = outgoing.write().map_err(|_| "request body unavailable")?;
            for chunk in body.chunks(4096) {
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
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let incoming = response.consume().map_err(|_| "response body unavailable")?;
        let stream = incoming.stream().map_err(|_| "response body unavailable")?;
        let mut body = Vec::new();
        let mut truncated = false;
        loop {
            match stream.blocking_read(16 * 1024) {
                Ok(chunk) => {
                    if body.len() + chunk.len() > self.max_body {
                        body.extend_from_slice(&chunk[..self.max_body - body.len()]);
                        truncated = true;
                        break;
                    }
                    body.extend_from_slice(&chunk);
                }
                Err(wasip2::io::streams::StreamError::Closed) => break,
                Err(e) => return Err(format!("reading the body: {e:?}")),
            }
        }
        Ok(Response { status: response.status(), headers, body, truncated })
    }
}
