//! Telemetry for the tests: an OTLP receiver (HTTP and gRPC) the host
//! exports traces to, and Prometheus's own parser for `/metrics`. Both are Python scripts
//! in `tests/telemetry/`, run with the virtual environment `scripts/test`
//! makes in `target/telemetry-venv`.
//!
//! [`OtlpReceiver`] keeps the receiver's stdin open: when the handle is
//! dropped, or the test process dies however it dies, the pipe closes and
//! the receiver exits by itself.

use crate::{ScratchDir, repo_root};
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The Python with opentelemetry-proto and prometheus_client:
/// `$BULKHEAD_TEST_TELEMETRY_PYTHON`, or `target/telemetry-venv`.
pub fn telemetry_python() -> PathBuf {
    let path = std::env::var("BULKHEAD_TEST_TELEMETRY_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target/telemetry-venv/bin/python"));
    assert!(
        path.exists(),
        "{} is missing: scripts/test creates it (pip install -r tests/telemetry/requirements.txt)",
        path.display()
    );
    path
}

fn script(name: &str) -> PathBuf {
    repo_root().join("tests/telemetry").join(name)
}

/// `tests/telemetry/otlp_receiver.py` on a free port of 127.0.0.1: every
/// span exported to it is a JSON line in [`OtlpReceiver::spans`], every
/// request's path and headers one in [`OtlpReceiver::requests`].
pub struct OtlpReceiver {
    port: u16,
    grpc_port: u16,
    child: Child,
    // Dropped after `child` is killed (see `Drop`).
    dir: ScratchDir,
}

impl OtlpReceiver {
    pub async fn start() -> Result<OtlpReceiver> {
        let dir = ScratchDir::new("bulkhead-otlp")?;
        let port_file = dir.path().join("port");
        let grpc_port_file = dir.path().join("grpc-port");
        let child = Command::new(telemetry_python())
            .arg(script("otlp_receiver.py"))
            .arg("--port-file")
            .arg(&port_file)
            .arg("--grpc-port-file")
            .arg(&grpc_port_file)
            .arg("--out")
            .arg(dir.path().join("spans.jsonl"))
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(dir.path().join("stdout.log"))?)
            .stderr(std::fs::File::create(dir.path().join("stderr.log"))?)
            .spawn()
            .context("cannot start the OTLP receiver")?;
        // The handle first, so that a failure below still kills the child.
        let mut receiver = OtlpReceiver { port: 0, grpc_port: 0, child, dir };
        for _ in 0..200 {
            // Written under another name and renamed: never partial; the
            // gRPC port first.
            if let Ok(port) = std::fs::read_to_string(&port_file) {
                receiver.port = port.trim().parse().context("the receiver's port file")?;
                let grpc = std::fs::read_to_string(&grpc_port_file).context("the receiver's gRPC port file")?;
                receiver.grpc_port = grpc.trim().parse().context("the receiver's gRPC port file")?;
                return Ok(receiver);
            }
            if let Some(status) = receiver.child.try_wait()? {
                bail!("the OTLP receiver exited ({status}); stderr:\n{}", receiver.stderr());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the OTLP receiver wrote no port in 20 s; stderr:\n{}", receiver.stderr())
    }

    /// The receiver's process id (for its CPU time in benchmarks).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The base URL for an OTLP/HTTP exporter (it adds `/v1/traces`), and
    /// of `/echo-headers`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The endpoint for an OTLP/gRPC exporter (`protocol = "grpc"`); its
    /// spans and requests land where the HTTP ones do.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// The spans received so far, in arrival order: `trace_id`, `span_id`,
    /// `parent_span_id` ("" for a root), `name`, `kind`, `start_ns`,
    /// `end_ns`, `status_code`, `status_message`, `attributes`, `resource`
    /// (its attributes), `scope` (its name).
    pub fn spans(&self) -> Vec<Value> {
        json_lines(&self.dir.path().join("spans.jsonl"))
    }

    /// Every request so far: `{"path", "headers"}`, header names lowercase.
    pub fn requests(&self) -> Vec<Value> {
        json_lines(&self.dir.path().join("spans.jsonl.requests"))
    }

    /// Polls [`OtlpReceiver::spans`] until `pred` holds (exporters batch,
    /// so spans arrive late), for at most 20 s; returns the spans then.
    pub async fn wait_for_spans(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Result<Vec<Value>> {
        for _ in 0..200 {
            let spans = self.spans();
            if pred(&spans) {
                return Ok(spans);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let seen = serde_json::to_string_pretty(&self.spans())?;
        bail!("waited 20 s for {what}; spans received:\n{seen}\nthe receiver's stderr:\n{}", self.stderr())
    }

    fn stderr(&self) -> String {
        read(&self.dir.path().join("stderr.log"))
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        // Before the folder goes: the receiver writes into it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Complete lines only: the receiver may be midway through writing the last.
fn json_lines(path: &Path) -> Vec<Value> {
    let text = read(path);
    let complete = text.rsplit_once('\n').map_or("", |(lines, _)| lines);
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display())))
        .collect()
}

/// Prometheus text exposition as `prometheus_client`'s parser reads it:
/// `{family: {"type", "help", "samples": [{"name", "labels", "value"}]}}`.
/// Counter families are named without `_total`, their samples with it.
/// Fails, with the parser's complaint, on anything it refuses.
pub fn parse_prometheus(text: &str) -> Result<Value> {
    let mut child = Command::new(telemetry_python())
        .arg(script("parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run parse_metrics.py")?;
    // The script reads all of stdin before it writes: no deadlock.
    child.stdin.take().expect("piped stdin").write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("the exposition does not parse: {}\n{text}", String::from_utf8_lossy(&out.stderr).trim());
    }
    serde_json::from_slice(&out.stdout).context("parse_metrics.py's output")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A length-delimited protobuf field (every length here is below 128).
    fn field(number: u8, bytes: &[u8]) -> Vec<u8> {
        [&[number << 3 | 2, bytes.len() as u8][..], bytes].concat()
    }

    #[tokio::test]
    async fn the_receiver_and_the_parser_work() -> Result<()> {
        let receiver = OtlpReceiver::start().await?;
        let http = reqwest::Client::new();
        let traces = format!("{}/v1/traces", receiver.endpoint());
        let garbage =
            http.post(&traces).header("content-type", "application/x-protobuf").body("not a protobuf").send().await?;
        assert_eq!(garbage.status(), 400);

        // ExportTraceServiceRequest { resource_spans { scope_spans { spans { trace_id, span_id, name } } } }
        let span = [field(1, &[1; 16]), field(2, &[2; 8]), field(5, b"hand-made")].concat();
        let body = field(1, &field(2, &field(2, &span)));
        let sent = http.post(&traces).header("content-type", "application/x-protobuf").body(body).send().await?;
        assert_eq!(sent.status(), 200);
        let spans = receiver.wait_for_spans("the hand-made span", |s| !s.is_empty()).await?;
        assert_eq!(spans[0]["name"], "hand-made");
        assert_eq!(spans[0]["trace_id"], "01".repeat(16));
        assert_eq!(spans[0]["parent_span_id"], "");

        let echo = http.get(format!("{}/echo-headers", receiver.endpoint())).header("X-Probe", "42").send().await?;
        assert_eq!(echo.json::<Value>().await?["x-probe"], "42");
        let requests = receiver.requests();
        assert_eq!(requests.len(), 3, "{requests:?}");
        assert_eq!(requests[2]["path"], "/echo-headers");
        assert_eq!(requests[2]["headers"]["x-probe"], "42");

        let dir = receiver.dir.path().to_path_buf();
        drop(receiver);
        assert!(!dir.exists(), "{} left behind", dir.display());

        let metrics =
            parse_prometheus("# HELP req_total Requests.\n# TYPE req_total counter\nreq_total{tool=\"a\"} 3\n")?;
        assert_eq!(metrics["req"]["type"], "counter");
        assert_eq!(metrics["req"]["samples"][0]["name"], "req_total");
        assert_eq!(metrics["req"]["samples"][0]["labels"]["tool"], "a");
        assert_eq!(metrics["req"]["samples"][0]["value"], 3.0);
        let refused = parse_prometheus("req_total{tool=\"a\" 3\n").unwrap_err().to_string();
        assert!(refused.contains("parse_metrics"), "{refused}");
        Ok(())
    }
}
