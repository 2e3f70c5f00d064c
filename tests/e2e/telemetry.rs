//! OpenTelemetry traces to a real OTLP/HTTP receiver (Python, the
//! `opentelemetry-proto` package), `traceparent` in and out, JSON logs,
//! and `/metrics` read by the `prometheus_client` parser.

use bulkhead_tests::otlp::{OtlpReceiver, parse_prometheus};
use bulkhead_tests::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const CANARY: &str = "canary-telemetry-5b1e0c93d2";
/// The caller's trace: its id and the caller's span id.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn port_of(endpoint: &str) -> u16 {
    endpoint.rsplit(':').next().unwrap().parse().unwrap()
}

/// A host tracing to `otlp`, with a counter, an http-fetch granted the
/// receiver's own port, and a tool that reads the canary secret.
async fn traced_host(otlp: &OtlpReceiver, telemetry: &str) -> anyhow::Result<TestHost> {
    let port = port_of(&otlp.endpoint());
    let fetch = format!(
        "name = \"http-fetch\"\nversion = \"0.1.0\"\ncomponent = \"http_fetch.wasm\"\n[grants]\nnetwork = [\"127.0.0.1:{port}\"]\n"
    );
    let echo = "name = \"secret-echo\"\nversion = \"0.0.0\"\ncomponent = \"secret_echo.wasm\"\n[grants]\nsecrets = [\"API_TOKEN\"]\n";
    TestHost::builder()
        .bundle("counter", example_tool("counter"))
        .bundle_with_manifest("http-fetch", example_tool("http-fetch"), &fetch)
        .bundle_with_manifest("secret-echo", test_program("secret-echo"), echo)
        .config(&format!(
            "[network]\nallow_private = [\"127.0.0.0/8\"]\n[secrets]\nAPI_TOKEN = {{ file = \"canary.secret\" }}\n\
             [telemetry]\notlp_endpoint = \"{}\"\n{telemetry}",
            otlp.endpoint()
        ))
        .before_start(|dir| std::fs::write(dir.join("canary.secret"), format!("{CANARY}\n")))
        .start()
        .await
}

async fn traced_call(
    api: &Api,
    sid: &str,
    tool: &str,
    input: Value,
    traceparent: Option<&str>,
) -> anyhow::Result<Value> {
    let mut req =
        api.request(Method::POST, &format!("/v1/sessions/{sid}/calls")).json(&json!({"tool": tool, "input": input}));
    if let Some(t) = traceparent {
        req = req.header("traceparent", t);
    }
    let (status, call) = Api::send(req).await?;
    assert_eq!(status, StatusCode::OK, "{call}");
    Ok(call)
}

fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

/// Egress spans: client spans named `<method> <host>`.
fn egress(spans: &[Value]) -> Vec<&Value> {
    spans.iter().filter(|s| s["kind"] == 3 && s["attributes"]["server.address"].is_string()).collect()
}

fn children<'a>(spans: &'a [Value], parent: &Value) -> Vec<&'a str> {
    spans.iter().filter(|s| s["parent_span_id"] == parent["span_id"]).map(|s| s["name"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn a_calls_spans_reach_the_collector_under_the_callers_trace_without_its_secret() -> anyhow::Result<()> {
    let otlp = OtlpReceiver::start().await?;
    let host = traced_host(&otlp, "").await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    let counted = traced_call(&api, &sid, "counter", json!({}), Some(&format!("00-{TRACE}-{PARENT}-01"))).await?;
    let url = format!("{}/echo-headers", otlp.endpoint());
    let fetched = traced_call(&api, &sid, "http-fetch", json!({"url": url}), None).await?;
    assert_eq!(fetched["status"], "succeeded", "{fetched}");
    let echoed = traced_call(&api, &sid, "secret-echo", json!({"name": "API_TOKEN"}), None).await?;
    assert_eq!(echoed["status"], "succeeded", "{echoed}");

    let spans = otlp
        .wait_for_spans("the three calls' spans", |s| {
            ["call counter", "call http-fetch", "call secret-echo"].iter().all(|n| !named(s, n).is_empty())
                && !egress(s).is_empty()
                && s.iter().filter(|x| x["name"] == "commit").count() >= 3
        })
        .await?;

    // The counter call: continues the caller's trace, request → call →
    // queue, run (instantiate, state) and commit.
    let call = named(&spans, "call counter")[0];
    assert_eq!(call["trace_id"], TRACE, "the incoming traceparent is continued");
    let request = spans.iter().find(|s| s["span_id"] == call["parent_span_id"]).expect("the call's parent span");
    assert_eq!(request["name"], "POST /v1/sessions/{id}/calls");
    assert_eq!(request["parent_span_id"], PARENT, "the request span's parent is the caller's span");
    assert_eq!(request["kind"], 2, "a server span");
    assert_eq!(request["attributes"]["http.response.status_code"], 200);
    let a = &call["attributes"];
    assert_eq!(a["bulkhead.session"], sid);
    assert_eq!(a["bulkhead.call"], counted["id"]);
    assert_eq!(a["bulkhead.tool"], "counter");
    assert_eq!(a["bulkhead.principal"], "agent");
    assert_eq!(a["bulkhead.status"], "succeeded");
    assert_eq!(a["bulkhead.fuel"], counted["usage"]["fuel"]);
    assert!(a["bulkhead.state_bytes_written"].as_i64().unwrap() > 0, "{a}");
    let mut steps = children(&spans, call);
    steps.sort();
    assert_eq!(steps, ["commit", "queue", "run"]);
    let run = spans.iter().find(|s| s["parent_span_id"] == call["span_id"] && s["name"] == "run").unwrap();
    let used = children(&spans, run);
    for step in ["instantiate", "state.get", "state.set"] {
        assert!(used.contains(&step), "{step} under run: {used:?}");
    }

    // The egress request: a client span under its call, whose traceparent
    // reached the target.
    let fetch_call = named(&spans, "call http-fetch")[0];
    assert_ne!(fetch_call["trace_id"], TRACE, "a call without traceparent starts a trace");
    let egress = egress(&spans)[0];
    assert_eq!(egress["name"], "GET 127.0.0.1");
    assert_eq!(egress["trace_id"], fetch_call["trace_id"]);
    assert_eq!(egress["kind"], 3, "a client span");
    assert_eq!(egress["attributes"]["server.address"], "127.0.0.1");
    assert_eq!(egress["attributes"]["http.response.status_code"], 200);
    let sent = otlp.requests().into_iter().find(|r| r["path"] == "/echo-headers").expect("the egress request");
    let traceparent = sent["headers"]["traceparent"].as_str().expect("egress carries traceparent");
    assert_eq!(
        traceparent,
        format!("00-{}-{}-01", egress["trace_id"].as_str().unwrap(), egress["span_id"].as_str().unwrap())
    );

    // The secret: read by name, its value nowhere in any span.
    let read = named(&spans, "secret.read");
    assert_eq!(read.len(), 1);
    assert_eq!(read[0]["attributes"]["bulkhead.secret"], "API_TOKEN");
    let all = serde_json::to_string(&spans)?;
    assert!(!all.contains(CANARY), "the secret's value is in a span");
    assert!(!all.contains("echo-headers\"}"), "no call input in spans");
    assert_eq!(call["resource"]["service.name"], "bulkhead");
    Ok(())
}

/// `protocol = "grpc"`: the same spans reach the collector's gRPC trace
/// service, with the configured headers as metadata.
#[tokio::test]
async fn spans_reach_a_grpc_collector_with_the_configured_headers() -> anyhow::Result<()> {
    let otlp = OtlpReceiver::start().await?;
    let host = TestHost::builder()
        .bundle("counter", example_tool("counter"))
        .config(&format!(
            "[telemetry]\notlp_endpoint = \"{}\"\nprotocol = \"grpc\"\nheaders = {{ X-Api-Key = \"key-7\" }}",
            otlp.grpc_endpoint()
        ))
        .start()
        .await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    let counted = traced_call(&api, &sid, "counter", json!({}), Some(&format!("00-{TRACE}-{PARENT}-01"))).await?;
    let spans = otlp.wait_for_spans("the call's commit", |s| !named(s, "commit").is_empty()).await?;
    let call = named(&spans, "call counter")[0];
    assert_eq!(call["trace_id"], TRACE);
    assert_eq!(call["attributes"]["bulkhead.call"], counted["id"]);
    let mut steps = children(&spans, call);
    steps.sort();
    assert_eq!(steps, ["commit", "queue", "run"]);
    let exports: Vec<Value> = otlp.requests().into_iter().filter(|r| r["path"] != "/echo-headers").collect();
    assert!(!exports.is_empty());
    for export in &exports {
        assert_eq!(export["path"], "grpc:TraceService/Export", "over gRPC only: {exports:?}");
        assert_eq!(export["headers"]["x-api-key"], "key-7", "{export}");
    }
    Ok(())
}

/// Sampling is decided per request, before its span: an unsampled request (a new
/// trace at ratio 0, or a caller's trace flagged unsampled) exports no
/// span, not even the steps of its call run after the answer, and its
/// egress carries no `traceparent`; a caller's sampled trace is followed.
#[tokio::test]
async fn an_unsampled_trace_exports_no_span_and_a_sampled_caller_is_followed() -> anyhow::Result<()> {
    let otlp = OtlpReceiver::start().await?;
    let host = traced_host(&otlp, "sampling_ratio = 0.0").await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    traced_call(&api, &sid, "counter", json!({}), None).await?;
    traced_call(&api, &sid, "counter", json!({}), Some(unsampled)).await?;
    let url = format!("{}/echo-headers", otlp.endpoint());
    let fetched = traced_call(&api, &sid, "http-fetch", json!({"url": url}), Some(unsampled)).await?;
    assert_eq!(fetched["status"], "succeeded", "{fetched}");
    // Accepted at once: its steps run after the request's span closed.
    let (status, accepted) = Api::send(
        api.request(Method::POST, &format!("/v1/sessions/{sid}/calls"))
            .header("prefer", "respond-async")
            .json(&json!({"tool": "counter", "input": {}})),
    )
    .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let id = accepted["id"].as_str().unwrap();
    let (status, done) = api.get(&format!("/v1/sessions/{sid}/calls/{id}?wait=10")).await?;
    assert_eq!((status, done["status"].as_str()), (StatusCode::OK, Some("succeeded")), "{done}");

    // Then a caller's sampled trace: exported whole, and alone (the
    // exporter sends in order, so earlier spans would have come first).
    traced_call(&api, &sid, "counter", json!({}), Some(&format!("00-{TRACE}-{PARENT}-01"))).await?;
    let spans = otlp.wait_for_spans("the sampled call's commit", |s| !named(s, "commit").is_empty()).await?;
    let traces: std::collections::BTreeSet<&str> = spans.iter().map(|s| s["trace_id"].as_str().unwrap()).collect();
    assert_eq!(traces.into_iter().collect::<Vec<_>>(), [TRACE], "only the sampled trace: {spans:?}");
    assert_eq!(named(&spans, "call counter").len(), 1);
    let sent: Vec<Value> = otlp.requests().into_iter().filter(|r| r["path"] == "/echo-headers").collect();
    assert_eq!(sent.len(), 1);
    assert!(sent[0]["headers"].get("traceparent").is_none(), "an unsampled call sent {sent:?}");
    Ok(())
}

#[tokio::test]
async fn traceparent_is_not_sent_to_an_excepted_host_nor_without_tracing() -> anyhow::Result<()> {
    let otlp = OtlpReceiver::start().await?;
    let except = format!("traceparent_except = [\"127.0.0.1:{}\"]", port_of(&otlp.endpoint()));
    let host = traced_host(&otlp, &except).await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    let url = format!("{}/echo-headers", otlp.endpoint());
    traced_call(&api, &sid, "http-fetch", json!({"url": url}), Some(&format!("00-{TRACE}-{PARENT}-01"))).await?;
    otlp.wait_for_spans("the egress span", |s| !egress(s).is_empty()).await?;
    let sent: Vec<Value> = otlp.requests().into_iter().filter(|r| r["path"] == "/echo-headers").collect();
    assert_eq!(sent.len(), 1);
    assert!(sent[0]["headers"].get("traceparent").is_none(), "excepted host got {sent:?}");
    assert!(sent[0]["headers"].get("tracestate").is_none(), "{sent:?}");

    // A host without [telemetry]: no spans, no header.
    let port = port_of(&otlp.endpoint());
    let fetch = format!(
        "name = \"http-fetch\"\nversion = \"0.1.0\"\ncomponent = \"http_fetch.wasm\"\n[grants]\nnetwork = [\"127.0.0.1:{port}\"]\n"
    );
    let plain = TestHost::builder()
        .bundle_with_manifest("http-fetch", example_tool("http-fetch"), &fetch)
        .config("[network]\nallow_private = [\"127.0.0.0/8\"]")
        .start()
        .await?;
    let api = plain.agent();
    let sid = api.session(json!({})).await?;
    traced_call(&api, &sid, "http-fetch", json!({"url": url}), Some(&format!("00-{TRACE}-{PARENT}-01"))).await?;
    let sent: Vec<Value> = otlp.requests().into_iter().filter(|r| r["path"] == "/echo-headers").collect();
    assert_eq!(sent.len(), 2);
    assert!(sent[1]["headers"].get("traceparent").is_none(), "untraced host sent {sent:?}");
    Ok(())
}

#[tokio::test]
async fn json_logs_have_an_access_line_per_request_with_its_trace_id() -> anyhow::Result<()> {
    let host = TestHost::builder()
        .bundle("counter", example_tool("counter"))
        .config("[telemetry]\nlog_format = \"json\"")
        .env("RUST_LOG", "warn,bulkhead::access=info")
        .start()
        .await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    traced_call(&api, &sid, "counter", json!({}), Some(&format!("00-{TRACE}-{PARENT}-01"))).await?;
    let line = eventually("the call's access line", || async {
        Ok(host.stderr().lines().find(|l| l.contains(TRACE)).map(str::to_owned))
    })
    .await?;
    let entry: Value = serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("not JSON: {line}: {e}"))?;
    assert_eq!(entry["target"], "bulkhead::access");
    let f = &entry["fields"];
    assert_eq!(
        (f["method"].clone(), f["route"].clone(), f["status"].clone()),
        (json!("POST"), json!("/v1/sessions/{id}/calls"), json!(200))
    );
    assert_eq!(f["trace_id"], TRACE);
    for l in host.stderr().lines().filter(|l| l.starts_with('{')) {
        serde_json::from_str::<Value>(l).map_err(|e| anyhow::anyhow!("a log line is not JSON: {l}: {e}"))?;
    }
    Ok(())
}

#[tokio::test]
async fn metrics_parse_with_the_prometheus_client_parser_and_count_per_tool() -> anyhow::Result<()> {
    let otlp = OtlpReceiver::start().await?;
    let host = traced_host(&otlp, "").await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    for _ in 0..2 {
        traced_call(&api, &sid, "counter", json!({}), None).await?;
    }
    let url = format!("{}/echo-headers", otlp.endpoint());
    traced_call(&api, &sid, "http-fetch", json!({"url": url}), None).await?;
    let denied = traced_call(&api, &sid, "http-fetch", json!({"url": "http://127.0.0.2:1/"}), None).await?;
    assert_ne!(denied["status"], "succeeded", "{denied}");
    let text = host.anonymous().request(Method::GET, "/metrics").send().await?.text().await?;
    let families = parse_prometheus(&text)?;
    let sample = |family: &str, name: &str, labels: Value| -> f64 {
        let samples = families[family]["samples"].as_array().unwrap_or_else(|| panic!("no family {family}: {text}"));
        samples
            .iter()
            .find(|s| s["name"] == name && labels.as_object().unwrap().iter().all(|(k, v)| &s["labels"][k] == v))
            .and_then(|s| s["value"].as_f64())
            .unwrap_or_else(|| panic!("no {name} {labels} in {family}"))
    };
    assert_eq!(families["bulkhead_calls"]["type"], "counter");
    assert_eq!(
        sample("bulkhead_calls", "bulkhead_calls_total", json!({"tool": "counter", "status": "succeeded"})),
        2.0
    );
    assert_eq!(sample("bulkhead_calls", "bulkhead_calls_total", json!({"tool": "counter", "status": "failed"})), 0.0);
    for family in ["bulkhead_call_duration_seconds", "bulkhead_call_queue_seconds", "bulkhead_commit_seconds"] {
        assert_eq!(families[family]["type"], "histogram", "{family}");
        let count = sample(family, &format!("{family}_count"), json!({"tool": "counter"}));
        assert_eq!(count, 2.0, "{family}");
        let inf = sample(family, &format!("{family}_bucket"), json!({"tool": "counter", "le": "+Inf"}));
        assert_eq!(inf, count, "{family}: +Inf bucket is the count");
    }
    assert!(sample("bulkhead_egress_bytes", "bulkhead_egress_bytes_total", json!({"tool": "http-fetch"})) > 0.0);
    assert_eq!(
        sample("bulkhead_egress_requests", "bulkhead_egress_requests_total", json!({"tool": "http-fetch"})),
        1.0
    );
    assert_eq!(sample("bulkhead_denials", "bulkhead_denials_total", json!({"tool": "http-fetch"})), 1.0);
    assert_eq!(families["bulkhead_sessions"]["type"], "gauge");
    assert_eq!(sample("bulkhead_sessions", "bulkhead_sessions", json!({})), 1.0);
    assert!(sample("bulkhead_db_commits", "bulkhead_db_commits_total", json!({})) > 0.0);

    // OpenMetrics for a scraper that asks for it.
    let om = host
        .anonymous()
        .request(Method::GET, "/metrics")
        .header("accept", "application/openmetrics-text")
        .send()
        .await?;
    assert!(om.headers()["content-type"].to_str()?.starts_with("application/openmetrics-text"));
    assert!(om.text().await?.ends_with("# EOF\n"));
    Ok(())
}
