//! `[telemetry]`: OpenTelemetry traces (off without an endpoint) and the
//! log format. What a span may carry is fixed in code (`crate::telemetry`):
//! ids, names, statuses and sizes, never a secret value, input or output.

use crate::policy::HostPattern;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The collector's URL: with `http/protobuf` its OTLP/HTTP base URL
    /// (spans go to `<it>/v1/traces`, port 4318 by convention), with
    /// `grpc` its gRPC endpoint (port 4317).
    pub otlp_endpoint: Option<String>,
    /// `http/protobuf` (the default) or `grpc`.
    pub protocol: String,
    /// Share of new traces kept (0 to 1). A request that carries a
    /// `traceparent` keeps its caller's decision.
    pub sampling_ratio: f64,
    /// `service.name` of the spans.
    pub service_name: String,
    /// Headers sent to the collector (e.g. its API key).
    pub headers: BTreeMap<String, String>,
    /// Whether a tool's outbound requests carry the call's `traceparent`.
    pub traceparent: bool,
    /// Granted hosts that never get it (e.g. a partner that rejects it),
    /// written as in grants: without a port, a host's default port.
    pub traceparent_except: Vec<String>,
    /// `text` (for people) or `json` (one object per line, with an access
    /// line per request that names its trace id).
    pub log_format: String,
}

impl Default for TelemetryConfig {
    fn default() -> TelemetryConfig {
        TelemetryConfig {
            otlp_endpoint: None,
            protocol: "http/protobuf".into(),
            sampling_ratio: 1.0,
            service_name: "bulkhead".into(),
            headers: BTreeMap::new(),
            traceparent: true,
            traceparent_except: Vec::new(),
            log_format: "text".into(),
        }
    }
}

impl TelemetryConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        if let Some(endpoint) = &self.otlp_endpoint {
            let url = url::Url::parse(endpoint)
                .map_err(|e| format!("telemetry.otlp_endpoint = {endpoint:?} is not a URL: {e}"))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(format!(
                    "telemetry.otlp_endpoint = {endpoint:?} must be an http(s) URL like \"http://127.0.0.1:4318\""
                ));
            }
        }
        match self.protocol.as_str() {
            "http/protobuf" => {}
            "grpc" => {
                // Metadata named `*-bin` is binary (base64 on the wire): not what a key is.
                if let Some(name) = self.headers.keys().find(|n| n.to_ascii_lowercase().ends_with("-bin")) {
                    return Err(format!("telemetry.headers.{name}: binary gRPC metadata (`-bin`) is not supported"));
                }
            }
            other => return Err(format!("telemetry.protocol = {other:?} must be \"http/protobuf\" or \"grpc\"")),
        }
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            return Err(format!("telemetry.sampling_ratio = {} must be from 0 to 1", self.sampling_ratio));
        }
        if self.service_name.is_empty() || self.service_name.len() > 128 {
            return Err("telemetry.service_name must be 1 to 128 characters".into());
        }
        for (name, value) in &self.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() || http::HeaderValue::from_str(value).is_err() {
                return Err(format!("telemetry.headers.{name} is not a valid HTTP header"));
            }
        }
        for host in &self.traceparent_except {
            HostPattern::parse(host).map_err(|e| format!("telemetry.traceparent_except: {e}"))?;
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(format!("telemetry.log_format = {:?} must be \"text\" or \"json\"", self.log_format));
        }
        Ok(())
    }

    pub fn enabled(&self) -> bool {
        self.otlp_endpoint.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_settings_are_checked() {
        let cases: &[(&str, Option<&str>)] = &[
            ("", None),
            ("otlp_endpoint = \"http://127.0.0.1:4318\"\nsampling_ratio = 0.25", None),
            ("otlp_endpoint = \"https://otel.example.com\"\nheaders = { x-api-key = \"k\" }", None),
            ("traceparent_except = [\"api.partner.com\", \"*.bank.example\"]", None),
            ("log_format = \"json\"", None),
            ("otlp_endpoint = \"127.0.0.1:4318\"", Some("telemetry.otlp_endpoint")),
            ("otlp_endpoint = \"file:///tmp/x\"", Some("must be an http(s) URL")),
            ("otlp_endpoint = \"not a url\"", Some("is not a URL")),
            ("protocol = \"grpc\"\notlp_endpoint = \"http://127.0.0.1:4317\"\nheaders = { x-api-key = \"k\" }", None),
            ("protocol = \"grpc\"\nheaders = { key-bin = \"k\" }", Some("binary gRPC metadata")),
            ("protocol = \"thrift\"", Some("must be \"http/protobuf\" or \"grpc\"")),
            ("sampling_ratio = 1.5", Some("from 0 to 1")),
            ("sampling_ratio = -0.1", Some("from 0 to 1")),
            ("service_name = \"\"", Some("service_name")),
            ("headers = { \"bad header\" = \"v\" }", Some("not a valid HTTP header")),
            ("headers = { x = \"line\\nbreak\" }", Some("not a valid HTTP header")),
            ("traceparent_except = [\"*\"]", Some("traceparent_except")),
            ("log_format = \"xml\"", Some("\"text\" or \"json\"")),
            ("endpoint = \"http://x\"", Some("unknown field `endpoint`")),
        ];
        for (text, want) in cases {
            let parsed: Result<TelemetryConfig, String> = toml::from_str(text).map_err(|e| e.to_string());
            match (parsed.and_then(|t| t.validate().map(|()| t)), want) {
                (Ok(_), None) => {}
                (Err(e), Some(w)) => assert!(e.contains(w), "{text:?}: {e}"),
                (got, want) => panic!("{text:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}
