//! Logs and OpenTelemetry traces (`[telemetry]`).
//!
//! Spans are `tracing` spans at TRACE level under the [`TARGET`] target:
//! with no OTLP endpoint no subscriber wants them, their callsites stay
//! disabled and cost one relaxed load; with one, only the OpenTelemetry
//! layer sees them (the log output never does). What a span carries is
//! chosen where it is made: ids, names, statuses, sizes, and for a secret
//! its name only; never a value, an input or an output.
//!
//! Spans go to the collector over OTLP/HTTP (protobuf) or OTLP/gRPC
//! ([`grpc`]).
//!
//! The spans of a call: `HTTP <method> <route>` (continuing an incoming
//! `traceparent`), `call <tool>`, and under it `queue`, `run` (with
//! `instantiate`, and `state.*`, `secret.read` and `egress` for each host
//! capability use) and `commit`. An egress request carries the `egress`
//! span's `traceparent` unless `[telemetry]` says otherwise for its host.
//!
//! The sampling decision is taken once per request, before its span is
//! made ([`sampled`]): an unsampled request gets no span, and nothing is
//! traced under it, since tracing-opentelemetry builds a span's data
//! whether or not it will be exported. So an unsampled call costs what an
//! untraced one does, and its egress carries no `traceparent`. Every span
//! but a request's needs a traced span around it.

mod grpc;

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
use tracing_subscriber::{EnvFilter, Layer, filter};

/// The target of every span meant for traces.
pub const TARGET: &str = "bulkhead::trace";
/// How long the exporter may take to send one batch.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// `sampling_ratio`, set when tracing starts; `None` when it is off.
static SAMPLING: OnceLock<Option<f64>> = OnceLock::new();

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
        let _ = SAMPLING.set(None);
        tracing_subscriber::registry().with(logs).init();
        return Ok(Telemetry(None));
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let provider = match config.protocol.as_str() {
        "grpc" => SdkTracerProvider::builder().with_batch_exporter(grpc::GrpcExporter::new(
            endpoint,
            &config.headers,
            EXPORT_TIMEOUT,
        )?),
        _ => {
            let traces = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(traces)
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(EXPORT_TIMEOUT)
                .with_headers(config.headers.clone().into_iter().collect())
                .build()
                .context("cannot set up the OTLP exporter")?;
            SdkTracerProvider::builder().with_batch_exporter(exporter)
        }
    };
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = provider
        // Decided per request by `sampled`: what gets a span is exported.
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("bulkhead");
    // Only what the spans are made with: the layer's own extras (source
    // location, thread, target, busy/idle times, the OTel context made
    // current at every poll) cost per span and per poll, and say nothing
    // an operator reads.
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_filter(
            filter::Targets::new()
                .with_target(TARGET, tracing::Level::TRACE)
                .and(filter::dynamic_filter_fn(under_a_traced_span)),
        );
    let _ = SAMPLING.set(Some(config.sampling_ratio));
    let except = config.traceparent_except.iter().filter_map(|h| HostPattern::parse(h).ok()).collect();
    let _ = PROPAGATION.set(config.traceparent.then_some(Propagation { except }));
    tracing_subscriber::registry().with(logs).with(spans).init();
    Ok(Telemetry(Some(provider)))
}

/// Whether the OpenTelemetry layer makes a span: a request's (made only
/// when [`sampled`]), and any other under a span it made (a step whose
/// request was not traced is not a trace of its own).
fn under_a_traced_span<S>(meta: &tracing::Metadata<'_>, cx: &tracing_subscriber::layer::Context<'_, S>) -> bool
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    meta.name() == "request" || cx.lookup_current().is_some()
}

/// Whether a request is traced: as its caller decided (the sampled flag
/// of a valid `traceparent`), else for `sampling_ratio` of requests.
/// False when tracing is off.
pub fn sampled(headers: &http::HeaderMap) -> bool {
    let Some(Some(ratio)) = SAMPLING.get() else { return false };
    if headers.contains_key("traceparent") {
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        let sc = parent.span().span_context().clone();
        if sc.is_valid() {
            return sc.is_sampled();
        }
    }
    // The top 53 bits as a number in [0, 1): below the ratio, one in ratio.
    getrandom::u64().is_ok_and(|r| ((r >> 11) as f64 / (1u64 << 53) as f64) < *ratio)
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
