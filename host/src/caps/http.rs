//! `wasi:http/outgoing-handler`: outbound HTTP, only to granted hosts, only
//! to addresses the host checked.
//!
//! The one interception point is [`Egress::send_request`]: it matches the
//! request against the grant, resolves the name once, drops every address
//! that is not globally routable (unless the operator's `allow_private`
//! covers it), connects to a checked address itself (wasmtime's default
//! sender would resolve again and connect by name: a DNS-rebinding window),
//! and bounds connect, first-byte and idle time and the response size. Every
//! request is an `egress` audit event; every refusal a `capability_denied`.

use crate::events::{self, CapabilityDenied, Denial, Event};
use crate::policy::network::{self as netpolicy, HostPattern, PrivateRanges};
use bytes::Bytes;
use http::uri::Scheme;
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tracing::Instrument;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// Ceilings on the guest's own request options: a tool cannot hold a
/// connection open longer than these.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(30);
const BETWEEN_BYTES_TIMEOUT: Duration = Duration::from_secs(30);
const DNS_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response body a tool may read, so a hostile server cannot
/// exhaust host memory through buffering.
pub const MAX_RESPONSE_BYTES: u64 = 16 << 20;
/// Requests one call may attempt (refused ones included, so a guest cannot
/// spin the resolver).
pub const MAX_REQUESTS_PER_CALL: usize = 64;

/// One outbound request, completed as its response body is read.
pub struct EgressRecord {
    pub method: String,
    pub https: bool,
    pub host: String,
    pub port: u16,
    pub status: Mutex<Option<u16>>,
    pub bytes: AtomicU64,
    pub started: Instant,
    pub finished_ms: AtomicU64,
    /// Why no response came, when the host knows better than the tool's
    /// error code (a refused certificate and its reason).
    pub error: Mutex<Option<String>>,
}

/// The hooks of one call; shares its records with the call's `HostState`.
pub struct Egress {
    pub grant: Vec<HostPattern>,
    pub allow_private: Arc<PrivateRanges>,
    pub records: Arc<Mutex<Vec<Arc<EgressRecord>>>>,
    pub denials: Arc<Mutex<Vec<Event>>>,
    pub tool: String,
    pub attempts: usize,
}

fn forbidden(name: &http::HeaderName) -> bool {
    wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS.contains(name)
        || matches!(name.as_str(), "te" | "trailer" | "expect" | "forwarded" | "x-forwarded-for" | "x-forwarded-host")
        || name.as_str().starts_with("proxy-")
}

type Sent = Result<(http::Response<WasiBody>, Box<dyn Future<Output = Result<(), Error>> + Send>), Error>;

impl Egress {
    fn deny(&self, target: &str, reason: &str) {
        deny(&self.denials, &self.tool, target, reason);
    }
}

impl WasiHttpHooks for Egress {
    fn forbidden_header_filter(&mut self) -> wasmtime_wasi_http::ForbiddenHeaderFilter {
        Arc::new(forbidden)
    }

    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        let uri = request.uri().clone();
        let https = uri.scheme() == Some(&Scheme::HTTPS);
        let host = uri.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let target = format!("{host}:{port}");
        self.attempts += 1;
        if self.attempts > MAX_REQUESTS_PER_CALL {
            self.deny(&target, "too many requests in one call");
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        if !netpolicy::host_allowed(&self.grant, &host, port, https) {
            self.deny(&target, "host not granted");
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        // Where the request goes and how it ended; never its headers or body.
        let span = tracing::trace_span!(
            target: crate::telemetry::TARGET,
            "egress",
            otel.name = format!("{} {host}", request.method()),
            otel.kind = "client",
            http.request.method = %request.method(),
            server.address = %host,
            server.port = i64::from(port),
            url.scheme = if https { "https" } else { "http" },
            http.response.status_code = tracing::field::Empty,
        );
        crate::telemetry::inject(&span, &host, port, https, request.headers_mut());
        let record = Arc::new(EgressRecord {
            method: request.method().to_string(),
            https,
            host: host.clone(),
            port,
            status: Mutex::new(None),
            bytes: AtomicU64::new(0),
            started: Instant::now(),
            finished_ms: AtomicU64::new(0),
            error: Mutex::new(None),
        });
        let records = self.records.clone();
        let allow_private = self.allow_private.clone();
        let denials = self.denials.clone();
        let tool = self.tool.clone();
        Box::new(
            async move {
                let addr = match resolve_checked(&host, port, &allow_private).await {
                    Ok(addr) => addr,
                    Err(reason) => {
                        deny(&denials, &tool, &target, reason);
                        return Err(Error::DestinationIpProhibited);
                    }
                };
                // Only a request that goes to a checked address is egress.
                records.lock().expect("records lock").push(record.clone());
                let sent = send_to(addr, &host, https, request, options, record.clone()).await;
                if let Some(status) = *record.status.lock().expect("status lock") {
                    tracing::Span::current().record("http.response.status_code", i64::from(status));
                }
                sent
            }
            .instrument(span),
        )
    }
}

/// Resolves once and returns the first address the policy allows.
async fn resolve_checked(host: &str, port: u16, allow_private: &PrivateRanges) -> Result<SocketAddr, &'static str> {
    let addrs: Vec<SocketAddr> = match tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addrs)) => addrs.collect(),
        _ => return Err("name did not resolve"),
    };
    addrs
        .into_iter()
        .find(|a| netpolicy::address_allowed(a.ip(), allow_private))
        .ok_or("address not globally routable (network.allow_private does not cover it)")
}

fn bounded(asked: Option<Duration>, ceiling: Duration) -> Duration {
    asked.map_or(ceiling, |d| d.min(ceiling))
}

async fn send_to(
    addr: SocketAddr,
    host: &str,
    https: bool,
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    record: Arc<EgressRecord>,
) -> Sent {
    let connect_timeout = bounded(options.and_then(|o| o.connect_timeout), CONNECT_TIMEOUT);
    let first_byte = bounded(options.and_then(|o| o.first_byte_timeout), FIRST_BYTE_TIMEOUT);
    let between_bytes = bounded(options.and_then(|o| o.between_bytes_timeout), BETWEEN_BYTES_TIMEOUT);
    let tcp = match tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Err(Error::ConnectionRefused),
        Ok(Err(e)) => return Err(Error::Connect(e)),
        Err(_) => return Err(Error::ConnectionTimeout),
    };
    let response = if https {
        let tls = crate::tls::egress_connector();
        let name =
            rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|_| Error::HttpRequestUriInvalid)?;
        let stream = tokio::time::timeout(connect_timeout, tls.connect(name, tcp))
            .await
            .map_err(|_| Error::ConnectionTimeout)?
            .map_err(|e| {
                let (reason, code) = tls_failure(e);
                *record.error.lock().expect("error lock") = Some(reason);
                code
            })?;
        // HTTP/2 if the server chose it (ALPN), else HTTP/1.1.
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        exchange(TokioIo::new(stream), request, h2, first_byte).await?
    } else {
        exchange(TokioIo::new(tcp), request, false, first_byte).await?
    };
    *record.status.lock().expect("status lock") = Some(response.status().as_u16());
    let response = response.map(|body| {
        CountedBody { inner: body, record: record.clone(), idle: between_bytes, timer: None }.boxed_unsync()
    });
    Ok((response, Box::new(async { Ok(()) })))
}

/// A failed handshake in words for the audit, and the code the tool gets:
/// a refused certificate (untrusted issuer, another name, expired, ...) is
/// `tls-certificate-error` with rustls's reason; anything else a protocol
/// error.
fn tls_failure(e: std::io::Error) -> (String, Error) {
    let refused = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).and_then(|r| match r {
        rustls::Error::InvalidCertificate(_) => Some(r.to_string()),
        _ => None,
    });
    match refused {
        Some(reason) => (format!("TLS certificate refused: {reason}"), Error::TlsCertificateError),
        None => (format!("TLS handshake failed: {e}"), Error::Tls(e)),
    }
}

type Answer = Result<http::Response<hyper::body::Incoming>, hyper::Error>;

/// One request over a new connection, HTTP/2 when `h2`, else HTTP/1.1.
/// HTTP/1.1 sends only the path (the Host header comes from the URI);
/// HTTP/2 keeps the URI absolute (its scheme and authority become
/// `:scheme` and `:authority`) and drops the Host header, as it wants.
async fn exchange<S>(
    io: TokioIo<S>,
    mut request: http::Request<WasiBody>,
    h2: bool,
    first_byte: Duration,
) -> Result<http::Response<hyper::body::Incoming>, Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    // The sender moves into the answer, so it lives until the response.
    let answer: Pin<Box<dyn Future<Output = Answer> + Send>> = if h2 {
        request.headers_mut().remove(http::header::HOST);
        *request.version_mut() = http::Version::HTTP_2;
        let (mut sender, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .map_err(Error::Hyper)?;
        tokio::spawn(async move {
            // Ends with the response body or at an error; nothing to report.
            let _ = conn.await;
        });
        Box::pin(async move { sender.send_request(request).await })
    } else {
        let path = request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
        *request.uri_mut() =
            http::Uri::builder().path_and_query(path).build().map_err(|_| Error::HttpRequestUriInvalid)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(Error::Hyper)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Box::pin(async move { sender.send_request(request).await })
    };
    tokio::time::timeout(first_byte, answer).await.map_err(|_| Error::ConnectionReadTimeout)?.map_err(Error::Hyper)
}

/// A response body that counts bytes into its egress record, stops at
/// [`MAX_RESPONSE_BYTES`] and fails when idle too long.
struct CountedBody {
    inner: hyper::body::Incoming,
    record: Arc<EgressRecord>,
    idle: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for CountedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.timer = None;
                if let Some(data) = frame.data_ref() {
                    let total = this.record.bytes.fetch_add(data.len() as u64, Ordering::Relaxed) + data.len() as u64;
                    if total > MAX_RESPONSE_BYTES {
                        return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(total)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Error::Hyper(e)))),
            Poll::Ready(None) => {
                this.record.finished_ms.store(this.record.started.elapsed().as_millis() as u64, Ordering::Relaxed);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Error::ConnectionReadTimeout))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

/// The call's egress records as audit events, and its totals (requests, bytes).
pub fn take_records(records: &Mutex<Vec<Arc<EgressRecord>>>) -> (Vec<Event>, u64, u64) {
    let records = std::mem::take(&mut *records.lock().expect("records lock"));
    let bytes: u64 = records.iter().map(|r| r.bytes.load(Ordering::Relaxed)).sum();
    let events = records
        .iter()
        .map(|r| {
            let finished = r.finished_ms.load(Ordering::Relaxed);
            let duration = if finished > 0 { finished } else { r.started.elapsed().as_millis() as u64 };
            let request = events::Request { method: &r.method, https: r.https, host: &r.host, port: r.port };
            let status = *r.status.lock().expect("status lock");
            let error = r.error.lock().expect("error lock").clone();
            events::Egress::of(request, status, r.bytes.load(Ordering::Relaxed), duration)
                .failed(error.as_deref())
                .into()
        })
        .collect();
    (events, records.len() as u64, bytes)
}

fn deny(denials: &Mutex<Vec<Event>>, tool: &str, target: &str, reason: &str) {
    let event = CapabilityDenied::of(tool, Denial::Network { target, reason }).into();
    denials.lock().expect("denials lock").push(event);
}
