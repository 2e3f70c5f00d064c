//! `bulkhead mcp --connect URL`: stdio to a running host's `/mcp`, for MCP
//! clients that launch servers as subprocesses (desktop assistants).
//!
//! Each stdin line is one JSON-RPC message, POSTed as is; every JSON-RPC
//! message of the answer (a JSON body or SSE events) becomes one stdout
//! line. The bridge adds what an HTTP client would: the bearer token, the
//! `Bulkhead-Session` header (the `--session` given, or one it creates on
//! first use), the `Mcp-Session-Id` the host issues at `initialize`, and
//! the protocol headers of 2026-07-28 requests. Messages are forwarded
//! concurrently, so a long tool call does not hold up a `ping`. Nothing but
//! protocol goes to stdout; diagnostics go to stderr.

use super::SESSION_HEADER;
use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{OnceCell, mpsc};
use wasmtime_wasi_http::io::TokioIo;

/// The largest answer the bridge relays (one JSON body or SSE event).
const MAX_MESSAGE_BYTES: usize = 64 << 20;
const PROTOCOL_META: &str = "io.modelcontextprotocol/protocolVersion";

/// Where the host's `/mcp` is.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub authority: String,
    pub path: String,
}

impl Target {
    /// `http://127.0.0.1:7070` or `https://tools.example.com/mcp`; a URL
    /// without a path means `/mcp`.
    pub fn parse(url: &str) -> Result<Target> {
        let uri: http::Uri = url.parse().with_context(|| format!("--connect {url:?} is not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => bail!("--connect {url:?}: use an http:// or https:// URL"),
        };
        let authority = uri.authority().ok_or_else(|| anyhow!("--connect {url:?} has no host"))?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("") | Some("/") => super::PATH.to_string(),
            Some(p) => p.to_string(),
        };
        Ok(Target { tls, host, port, authority: authority.as_str().to_string(), path })
    }
}

impl Target {
    /// An API path under the same prefix as `/mcp` (for a reverse proxy
    /// that serves the host under `/x/`).
    fn api(&self, path: &str) -> String {
        let prefix = self.path.split('?').next().unwrap_or("").strip_suffix(super::PATH).unwrap_or("");
        format!("{prefix}{path}")
    }
}

pub struct Bridge {
    target: Target,
    token: String,
    session: OnceCell<String>,
    /// Issued by the host at `initialize` (handshake-era clients).
    mcp_session: Mutex<Option<String>>,
    /// Negotiated at `initialize`; 2026-07-28 requests carry their own.
    protocol: Mutex<Option<String>>,
    /// The client's `initialize`, replayed when the host forgot the session.
    init: Mutex<Option<Value>>,
    out: mpsc::UnboundedSender<String>,
}

enum Sent {
    Done,
    /// 404 for the `Mcp-Session-Id`: the host forgot it.
    SessionGone,
}

/// The request a POST's answer is for.
struct Pending {
    /// The JSON-RPC id, for a request (not a notification).
    id: Option<Value>,
    initialize: bool,
    relay: bool,
}

/// Runs until stdin closes, then ends the MCP session on the host.
pub async fn run(url: &str, token: String, session: Option<String>) -> Result<()> {
    let target = Target::parse(url)?;
    let (out, mut lines) = mpsc::unbounded_channel::<String>();
    let bridge = Arc::new(Bridge {
        target,
        token,
        session: OnceCell::new_with(session),
        mcp_session: Mutex::new(None),
        protocol: Mutex::new(None),
        init: Mutex::new(None),
        out,
    });
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = lines.recv().await {
            if stdout.write_all(line.as_bytes()).await.is_err() || stdout.write_all(b"\n").await.is_err() {
                break;
            }
            let _ = stdout.flush().await;
        }
    });
    let mut tasks = tokio::task::JoinSet::new();
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = stdin.next_line().await.context("reading stdin")? {
        if line.trim().is_empty() {
            continue;
        }
        let bridge = bridge.clone();
        tasks.spawn(async move { bridge.forward(line).await });
    }
    while tasks.join_next().await.is_some() {}
    bridge.end().await;
    drop(bridge);
    let _ = writer.await;
    Ok(())
}

impl Bridge {
    async fn forward(&self, line: String) {
        let message: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                self.emit(json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": format!("parse error: {e}")}}));
                return;
            }
        };
        if let Err(e) = self.post(&message).await {
            match message.get("id") {
                Some(id) if message.get("method").is_some() => self.emit(json!({
                    "jsonrpc": "2.0", "id": id,
                    "error": { "code": -32603, "message": format!("bulkhead mcp bridge: {e:#}") }
                })),
                _ => eprintln!("bulkhead mcp: {e:#}"),
            }
        }
    }

    fn emit(&self, message: Value) {
        let _ = self.out.send(message.to_string());
    }

    /// The session every request names: `--session`, or one made on first use.
    async fn session(&self) -> Result<&String> {
        self.session
            .get_or_try_init(|| async {
                let body = json!({ "labels": { "created_by": "mcp" } }).to_string();
                let resp = self.send(Method::POST, &self.target.api("/v1/sessions"), vec![], body.into()).await?;
                let status = resp.status();
                let body = read_body(resp).await?;
                if status != StatusCode::CREATED && status != StatusCode::OK {
                    bail!("creating a session: host answered {status}: {}", String::from_utf8_lossy(&body));
                }
                let v: Value = serde_json::from_slice(&body).context("creating a session: not JSON")?;
                let id = v["id"].as_str().ok_or_else(|| anyhow!("creating a session: no id"))?.to_string();
                eprintln!("bulkhead mcp: session {id}");
                Ok(id)
            })
            .await
    }

    /// Forwards one message; when the host has forgotten the MCP session
    /// (a restart, 30 idle minutes), initializes again with the client's own
    /// `initialize` and retries once: a stdio client never re-initializes.
    async fn post(&self, message: &Value) -> Result<()> {
        if message.get("method").and_then(Value::as_str) == Some("initialize") {
            *self.init.lock().unwrap() = Some(message.clone());
        }
        match self.post_once(message, true).await? {
            Sent::Done => Ok(()),
            Sent::SessionGone => {
                self.reinitialize().await?;
                match self.post_once(message, true).await? {
                    Sent::Done => Ok(()),
                    Sent::SessionGone => bail!("the host ended the MCP session again"),
                }
            }
        }
    }

    async fn reinitialize(&self) -> Result<()> {
        let init = self.init.lock().unwrap().clone();
        let Some(mut init) = init else { bail!("the host ended the MCP session and no initialize is known") };
        init["id"] = json!("bulkhead-bridge-reinitialize");
        if let Sent::SessionGone = self.post_once(&init, false).await? {
            bail!("the host refused to initialize again");
        }
        let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
        self.post_once(&initialized, false).await?;
        eprintln!("bulkhead mcp: the host had ended the MCP session; initialized again");
        Ok(())
    }

    /// One POST. With `relay` false (a re-initialize) answers are dropped.
    async fn post_once(&self, message: &Value, relay: bool) -> Result<Sent> {
        let method = message.get("method").and_then(Value::as_str);
        let mut headers = vec![
            ("accept", "application/json, text/event-stream".to_string()),
            (SESSION_HEADER, self.session().await?.clone()),
        ];
        if let Some(id) = self.mcp_session.lock().unwrap().clone() {
            headers.push(("mcp-session-id", id));
        }
        let params = message.get("params");
        let per_request = params.and_then(|p| p["_meta"].get(PROTOCOL_META)).and_then(Value::as_str);
        if let Some(version) = per_request {
            // A 2026-07-28 request: its headers restate its body (SEP-2243).
            headers.push(("mcp-protocol-version", version.to_string()));
            if let Some(method) = method {
                headers.push(("mcp-method", method.to_string()));
                if let Some(name) = mcp_name(method, params) {
                    headers.push(("mcp-name", header_safe(&name)));
                }
            }
        } else if let Some(version) = self.protocol.lock().unwrap().clone() {
            headers.push(("mcp-protocol-version", version));
        }
        let had_session = headers.iter().any(|(k, _)| *k == "mcp-session-id");
        let resp = self.send(Method::POST, &self.target.path, headers, message.to_string().into()).await?;
        if let Some(id) = resp.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()) {
            *self.mcp_session.lock().unwrap() = Some(id.to_string());
        }
        let status = resp.status();
        if status == StatusCode::NOT_FOUND && had_session {
            *self.mcp_session.lock().unwrap() = None;
            return Ok(Sent::SessionGone);
        }
        let pending = Pending {
            id: message.get("id").filter(|_| method.is_some()).cloned(),
            initialize: method == Some("initialize"),
            relay,
        };
        let is_sse = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if status.is_success() && is_sse {
            self.relay_events(resp, pending).await?;
            return Ok(Sent::Done);
        }
        let body = read_body(resp).await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return if status.is_success() { Ok(Sent::Done) } else { bail!("host answered {status}") };
        }
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) if v.get("jsonrpc").is_some() || v.is_array() => {
                self.relay(v, &pending);
                Ok(Sent::Done)
            }
            _ => bail!(
                "host answered {status}: {}",
                String::from_utf8_lossy(&body).chars().take(300).collect::<String>()
            ),
        }
    }

    /// Relays a message; true when it answers the pending request.
    fn relay(&self, message: Value, pending: &Pending) -> bool {
        let answers = pending.id.as_ref().is_some_and(|id| message.get("id") == Some(id));
        if answers
            && pending.initialize
            && let Some(v) = message["result"]["protocolVersion"].as_str()
        {
            *self.protocol.lock().unwrap() = Some(v.to_string());
        }
        if pending.relay {
            self.emit(message);
        }
        answers
    }

    /// Relays each SSE event's data as one message, as it arrives. A stream
    /// that ends without the answer to a request is an error (so the client
    /// is not left waiting); one that fails after the answer is only logged
    /// (so the client gets one answer).
    async fn relay_events(&self, resp: Response<Incoming>, pending: Pending) -> Result<()> {
        let mut answered = false;
        let result = self.read_events(resp, &pending, &mut answered).await;
        match result {
            Err(e) if answered => {
                eprintln!("bulkhead mcp: after the answer: {e:#}");
                Ok(())
            }
            Err(e) => Err(e),
            Ok(()) if pending.id.is_some() && !answered => bail!("the host closed the stream without an answer"),
            Ok(()) => Ok(()),
        }
    }

    async fn read_events(&self, resp: Response<Incoming>, pending: &Pending, answered: &mut bool) -> Result<()> {
        let mut body = resp.into_body();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.context("reading the event stream")?;
            let Ok(data) = frame.into_data() else { continue };
            buf.extend_from_slice(&data);
            while let Some((end, sep)) = event_end(&buf) {
                let event: Vec<u8> = buf.drain(..end + sep).collect();
                if let Some(message) = event_data(&event[..end])? {
                    *answered |= self.relay(message, pending);
                }
            }
            if buf.len() > MAX_MESSAGE_BYTES {
                bail!("an event from the host is over {MAX_MESSAGE_BYTES} bytes");
            }
        }
        if let Some(message) = event_data(&buf)? {
            *answered |= self.relay(message, pending);
        }
        Ok(())
    }

    /// Ends the handshake-era MCP session, if any (the Bulkhead session stays).
    async fn end(&self) {
        let Some(id) = self.mcp_session.lock().unwrap().clone() else { return };
        let headers = vec![("mcp-session-id", id)];
        let _ = self.send(Method::DELETE, &self.target.path, headers, Bytes::new()).await;
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: Vec<(&'static str, String)>,
        body: Bytes,
    ) -> Result<Response<Incoming>> {
        let t = &self.target;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &t.authority)
            .header(http::header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(http::header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            req = req.header(name, HeaderValue::from_str(&value).context("a header value is not valid")?);
        }
        let req = req.body(Full::new(body))?;
        let tcp = TcpStream::connect((t.host.as_str(), t.port))
            .await
            .with_context(|| format!("connecting to {}", t.authority))?;
        if t.tls {
            let name = rustls::pki_types::ServerName::try_from(t.host.clone())?;
            let stream = crate::tls::connector().connect(name, tcp).await.context("TLS handshake")?;
            exchange(stream, req).await
        } else {
            exchange(tcp, req).await
        }
    }
}

async fn exchange<S>(io: S, req: Request<Full<Bytes>>) -> Result<Response<Incoming>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    Ok(sender.send_request(req).await?)
}

async fn read_body(resp: Response<Incoming>) -> Result<Bytes> {
    let body = Limited::new(resp.into_body(), MAX_MESSAGE_BYTES);
    Ok(body.collect().await.map_err(|e| anyhow!("reading the answer: {e}"))?.to_bytes())
}

/// The end of the first complete SSE event and its separator's length.
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The JSON message in an SSE event's `data:` lines (priming events have none).
fn event_data(event: &[u8]) -> Result<Option<Value>> {
    let text = String::from_utf8_lossy(event);
    let data: Vec<&str> =
        text.lines().filter_map(|l| l.strip_prefix("data:")).map(|d| d.strip_prefix(' ').unwrap_or(d)).collect();
    let data = data.join("\n");
    if data.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&data).map(Some).context("an event from the host is not JSON")
}

/// `Mcp-Name`: the tool or prompt name, resource URI or task id.
fn mcp_name(method: &str, params: Option<&Value>) -> Option<String> {
    let key = match method {
        "tools/call" | "prompts/get" => "name",
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => "uri",
        "tasks/get" | "tasks/update" | "tasks/cancel" => "taskId",
        _ => return None,
    };
    params?.get(key)?.as_str().map(str::to_string)
}

/// A header value as SEP-2243 encodes it: Base64-wrapped when it would not
/// survive as one.
fn header_safe(value: &str) -> String {
    let needs_wrapping = value.bytes().any(|b| !(0x20..0x7f).contains(&b))
        || value.starts_with([' ', '\t'])
        || value.ends_with([' ', '\t'])
        || (value.starts_with("=?base64?") && value.ends_with("?="));
    if !needs_wrapping {
        value.to_string()
    } else {
        format!("=?base64?{}?=", base64::engine::general_purpose::STANDARD.encode(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_url_gives_its_scheme_host_port_and_api_prefix() {
        let t = Target::parse("http://127.0.0.1:7070").unwrap();
        assert_eq!((t.tls, t.host.as_str(), t.port, t.path.as_str()), (false, "127.0.0.1", 7070, "/mcp"));
        let t = Target::parse("https://tools.example.com/x/mcp").unwrap();
        assert_eq!((t.tls, t.port, t.path.as_str()), (true, 443, "/x/mcp"));
        assert_eq!(t.api("/v1/sessions"), "/x/v1/sessions");
        assert_eq!(Target::parse("http://h").unwrap().api("/v1/sessions"), "/v1/sessions");
        let t = Target::parse("http://[::1]:8080/").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.authority.as_str()), ("::1", 8080, "[::1]:8080"));
        for bad in ["ftp://h/", "127.0.0.1:7070", "not a url", "http:///mcp"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn server_sent_events_split_on_blank_lines_and_join_their_data_lines() {
        let stream = b"data: \nid: 0\nretry: 3000\n\ndata: {\"id\":1}\n\r\n\r\ndata: {\"a\":\ndata: 2}\n\n";
        let mut buf = stream.to_vec();
        let mut got = vec![];
        while let Some((end, sep)) = event_end(&buf) {
            let event: Vec<u8> = buf.drain(..end + sep).collect();
            got.extend(event_data(&event[..end]).unwrap());
        }
        assert_eq!(got, vec![json!({"id": 1}), json!({"a": 2})]);
    }

    #[test]
    fn a_header_value_that_is_not_plain_ascii_travels_base64_encoded() {
        assert_eq!(header_safe("counter"), "counter");
        assert_eq!(header_safe("é"), "=?base64?w6k=?=");
        assert_eq!(header_safe(" x"), "=?base64?IHg=?=");
    }
}
