//! The OTLP/gRPC span exporter, on a Tokio runtime of its own.
//!
//! The SDK's batch processor exports from a plain thread, and tonic's
//! channel needs a Tokio reactor: without one every export fails (or the
//! thread panics). So the exporter is built inside a small runtime that
//! it keeps, and each batch is exported on it.

use anyhow::{Context as _, Result};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug)]
pub struct GrpcExporter {
    exporter: opentelemetry_otlp::SpanExporter,
    /// Taken in `Drop`: shut down without blocking, wherever that runs.
    runtime: Option<tokio::runtime::Runtime>,
}

impl GrpcExporter {
    /// To `endpoint` (e.g. `http://127.0.0.1:4317`; `https` uses the
    /// built-in web PKI roots), `headers` as request metadata.
    pub fn new(endpoint: &str, headers: &BTreeMap<String, String>, timeout: Duration) -> Result<GrpcExporter> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("bulkhead-otlp-grpc")
            .build()
            .context("cannot start the OTLP/gRPC exporter's runtime")?;
        let mut metadata = tonic::metadata::MetadataMap::new();
        for (name, value) in headers {
            // Checked by the config (valid header, not `-bin`).
            let name = tonic::metadata::AsciiMetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                .with_context(|| format!("telemetry.headers.{name} is not valid gRPC metadata"))?;
            let value =
                value.parse().with_context(|| format!("telemetry.headers.{name} is not valid gRPC metadata"))?;
            metadata.insert(name, value);
        }
        let exporter = {
            let _inside = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(timeout)
                .with_metadata(metadata)
                .build()
                .context("cannot set up the OTLP/gRPC exporter")?
        };
        Ok(GrpcExporter { exporter, runtime: Some(runtime) })
    }
}

impl SpanExporter for GrpcExporter {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        // Called on the batch processor's thread, which blocks on it anyway.
        let result = match &self.runtime {
            Some(runtime) => runtime.block_on(self.exporter.export(batch)),
            None => Ok(()),
        };
        std::future::ready(result)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.exporter.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.exporter.set_resource(resource);
    }
}

impl Drop for GrpcExporter {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
