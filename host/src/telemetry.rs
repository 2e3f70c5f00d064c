//! Logs and OpenTelemetry traces (`[telemetry]`).
//!
//! Spans are `tracing` spans at TRACE level under the [`TARGET`] target:
//! with no OTLP endpoint no subscriber wants them, their callsites stay
//! disabled and cost one relaxed load; with one, only the OpenTelemetry
//! layer sees them (the log output never does). What a span carries is
//! chosen where it is made: ids, names, statuses, sizes, and for a secret
//! its name only; never a value, an input or an output.
//!
//! The spans of a call: `HTTP <method> <route>` (continuing an incoming
//! `traceparent`), `call <tool>`, and under it `queue`, `run` (with
//! `instantiate`, and `state.*`, `secret.read` and `egress` for each host
//! capability use) and `commit`. An egress request carries the `egress`
//! span's `traceparent` unless `[telemetry]` says otherwise for its host.
//!
//! The sampling decision is taken once per trace, at its root (a request,
//! or a call resumed without one): under a root whose trace is not
//! sampled no span is made at all, since tracing-opentelemetry builds a
//! span's data whether or not it will be exported. So an unsampled call
//! costs what an untraced one does, and its egress carries no
//! `traceparent`.

use crate::config::TelemetryConfig;
use crate::policy::HostPattern;
use anyhow::{Context as _, Result};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use std::sync::OnceLock;
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, filter};

/// The target of every span meant for traces.
pub const TARGET: &str = "bulkhead::trace";
/// How long the exporter may take to send one batch.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// What egress propagation needs, set once when tracing starts.
struct Propagation {
    except: Vec<HostPattern>,
}

static PROPAGATION: OnceLock<Option<Propagation>> = OnceLock::new();
/// Whether JSON log lines (with a line per request) were asked for.
static JSON_LOGS: OnceLock<bool> = OnceLock::new();

/// The exporter, to flush at exit; `None` when tracing is off.
pub struct Telemetry(Option<SdkTracerProvider>);

impl Telemetry {
    /// Sends what is still buffered (at most the export timeout).
    pub fn shutdown(&self) {
        if let Some(provider) = &self.0
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: the last spans could not be exported: {e}");
        }
    }
}

/// The log subscriber of commands other than `serve`: text on stderr.
pub fn init_logs() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// The subscriber of `bulkhead serve`: logs as configured, and the
/// OpenTelemetry layer when an endpoint is set.
pub fn init(config: &TelemetryConfig) -> Result<Telemetry> {
    let json = config.log_format == "json";
    let _ = JSON_LOGS.set(json);
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = if json {
        tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).with_filter(filter()).boxed()
    } else {
        tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(filter()).boxed()
    };
    let Some(endpoint) = &config.otlp_endpoint else {
        let _ = PROPAGATION.set(None);
        tracing_subscriber::registry().with(logs).init();
        return Ok(Telemetry(None));
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let traces = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(traces)
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_timeout(EXPORT_TIMEOUT)
        .with_headers(config.headers.clone().into_iter().collect())
        .build()
        .context("cannot set up the OTLP exporter")?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sampling_ratio))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("bulkhead");
    let spans = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(
        filter::Targets::new()
            .with_target(TARGET, tracing::Level::TRACE)
            .and(filter::dynamic_filter_fn(in_a_sampled_trace)),
    );
    let except = config.traceparent_except.iter().filter_map(|h| HostPattern::parse(h).ok()).collect();
    let _ = PROPAGATION.set(config.traceparent.then_some(Propagation { except }));
    tracing_subscriber::registry().with(logs).with(spans).init();
    Ok(Telemetry(Some(provider)))
}

/// The mark of a root span whose trace is not sampled.
struct Unsampled;

/// The spans that may start a trace: a request's, and a call's resumed
/// with no request (after a restart).
const ROOTS: [&str; 2] = ["request", "call"];

/// Whether the OpenTelemetry layer makes a span: under the current span
/// unless [`decide`] marked it unsampled; with no current span, only as
/// a root (a step whose call was not made is not a trace of its own).
fn in_a_sampled_trace<S>(meta: &tracing::Metadata<'_>, cx: &tracing_subscriber::layer::Context<'_, S>) -> bool
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    match cx.lookup_current() {
        Some(parent) => parent.extensions().get::<Unsampled>().is_none(),
        None => ROOTS.contains(&meta.name()),
    }
}

/// Takes the sampling decision of `span`'s trace now, and if the trace is
/// not sampled marks `span` so that nothing is traced under it. For the
/// spans in [`ROOTS`], once they have their parent.
pub fn decide(span: &tracing::Span) {
    if span.is_disabled() || span.context().span().span_context().is_sampled() {
        return;
    }
    span.with_subscriber(|(id, dispatch)| {
        if let Some(s) = dispatch.downcast_ref::<Registry>().and_then(|r| r.span(id)) {
            s.extensions_mut().insert(Unsampled);
        }
    });
}

/// Whether each request gets a JSON access line.
pub fn access_log() -> bool {
    JSON_LOGS.get().copied().unwrap_or(false)
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeadersMut<'a>(&'a mut http::HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value))
        {
            self.0.insert(name, value);
        }
    }
}

/// Makes `span` continue the trace of an incoming `traceparent`, if any.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    if span.is_disabled() || !headers.contains_key("traceparent") {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The trace id of `span` (hex), when it is traced.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// Puts `span`'s `traceparent` on an outbound request to `host:port`,
/// replacing any the tool set, unless propagation is off for that host.
pub fn inject(span: &tracing::Span, host: &str, port: u16, https: bool, headers: &mut http::HeaderMap) {
    let Some(Some(p)) = PROPAGATION.get() else { return };
    if span.is_disabled() || p.except.iter().any(|e| e.allows(host, port, https)) {
        return;
    }
    headers.remove("traceparent");
    headers.remove("tracestate");
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeadersMut(headers));
    if headers.get("tracestate").is_some_and(|v| v.is_empty()) {
        headers.remove("tracestate");
    }
}
