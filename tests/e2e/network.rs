//! Outbound HTTP (issue 3): only granted hosts, only checked addresses,
//! every request audited; SSRF attempts are named regressions.

use bulkhead_tests::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn fetch_manifest(network: &[String]) -> String {
    let hosts: Vec<String> = network.iter().map(|h| format!("\"{h}\"")).collect();
    format!(
        "name = \"http-fetch\"\nversion = \"0.1.0\"\ncomponent = \"http_fetch.wasm\"\n[grants]\nnetwork = [{}]\n[limits]\nmemory_mb = 128\ntimeout_ms = 20000\n",
        hosts.join(", ")
    )
}

async fn host_with(network: &[String], allow_private: bool) -> anyhow::Result<TestHost> {
    let config = if allow_private { "[network]\nallow_private = [\"127.0.0.0/8\"]" } else { "" };
    TestHost::builder()
        .bundle_with_manifest("http-fetch", example_tool("http-fetch"), &fetch_manifest(network))
        .config(config)
        .start()
        .await
}

async fn fetch(api: &Api, sid: &str, input: Value) -> anyhow::Result<Value> {
    let (status, call) = api.call(sid, "http-fetch", input).await?;
    assert_eq!(status, StatusCode::OK, "{call}");
    Ok(call)
}

async fn events(api: &Api, sid: &str, kind: &str) -> anyhow::Result<Vec<Value>> {
    let (_, body) = api.get(&format!("/v1/sessions/{sid}/audit?limit=1000")).await?;
    Ok(body["events"].as_array().unwrap().iter().filter(|e| e["kind"] == kind).cloned().collect())
}

#[tokio::test]
async fn a_granted_host_is_reachable_and_every_request_is_audited() -> anyhow::Result<()> {
    let server = TestHttpServer::start().await?;
    let host = host_with(&[format!("127.0.0.1:{}", server.port)], true).await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    let call = fetch(&api, &sid, json!({"url": format!("http://127.0.0.1:{}/hello", server.port)})).await?;
    assert_eq!(call["status"], "succeeded", "{call}");
    assert_eq!(call["output"]["status"], 200);
    assert_eq!(call["output"]["body"], "hello from the test server");
    assert_eq!(call["usage"]["egress_requests"], 1);
    assert_eq!(call["usage"]["egress_bytes"], "hello from the test server".len());
    let egress = events(&api, &sid, "egress").await?;
    assert_eq!(egress.len(), 1);
    assert_eq!(egress[0]["data"]["host"], "127.0.0.1");
    assert_eq!(egress[0]["data"]["port"], server.port);
    assert_eq!(egress[0]["data"]["status"], 200);
    assert_eq!(egress[0]["data"]["method"], "GET");
    assert!(egress[0]["data"].get("path").is_none(), "no path or query in the audit");
    Ok(())
}

#[tokio::test]
async fn ssrf_attempts_are_refused_before_any_connection() -> anyhow::Result<()> {
    let server = TestHttpServer::start().await?;
    let p = server.port;
    // Granted names whose addresses are not public, and ungranted targets.
    let grant = [
        format!("localhost:{p}"),
        format!("127.0.0.1:{p}"),
        format!("2130706433:{p}"),
        "169.254.169.254:80".into(),
        format!("0.0.0.0:{p}"),
    ];
    let host = host_with(&grant, false).await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    let attempts = [
        (format!("http://localhost:{p}/hello"), "address not globally routable"),
        (format!("http://127.0.0.1:{p}/hello"), "address not globally routable"),
        (format!("http://2130706433:{p}/hello"), "address not globally routable"),
        ("http://169.254.169.254/latest/meta-data/".to_string(), "address not globally routable"),
        (format!("http://0.0.0.0:{p}/hello"), "address not globally routable"),
        (format!("http://[::ffff:127.0.0.1]:{p}/hello"), "host not granted"),
        (format!("http://[::1]:{p}/hello"), "host not granted"),
        (format!("http://127.0.0.1:{}/hello", p + 1), "host not granted"),
        ("https://example.com/".to_string(), "host not granted"),
    ];
    for (url, reason) in &attempts {
        let call = fetch(&api, &sid, json!({"url": url})).await?;
        assert_eq!(call["status"], "failed", "{url}: {call}");
        let denials = events(&api, &sid, "capability_denied").await?;
        let last = denials.last().expect("a denial");
        assert_eq!(last["call"], call["id"], "{url}");
        assert_eq!(last["data"]["capability"], "network");
        assert!(last["data"]["reason"].as_str().unwrap().starts_with(reason), "{url}: {last}");
    }
    assert_eq!(server.hits(), 0, "no attempt reached the server");
    Ok(())
}

#[tokio::test]
async fn a_redirect_to_a_blocked_address_is_refused_when_followed() -> anyhow::Result<()> {
    let server = TestHttpServer::start().await?;
    let host = host_with(&[format!("127.0.0.1:{}", server.port), "169.254.169.254:80".into()], true).await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    let url = format!("http://127.0.0.1:{}/redirect-metadata", server.port);
    let call = fetch(&api, &sid, json!({"url": url, "follow_redirects": true})).await?;
    assert_eq!(call["status"], "failed", "{call}");
    let denials = events(&api, &sid, "capability_denied").await?;
    assert_eq!(denials.len(), 1);
    assert_eq!(denials[0]["data"]["target"], "169.254.169.254:80");
    let not_followed = fetch(&api, &sid, json!({"url": url})).await?;
    assert_eq!(not_followed["output"]["status"], 302, "the redirect itself is just a response");
    Ok(())
}

#[tokio::test]
async fn forbidden_headers_and_oversized_responses_are_refused() -> anyhow::Result<()> {
    let server = TestHttpServer::start().await?;
    let host = host_with(&[format!("127.0.0.1:{}", server.port)], true).await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    let base = format!("http://127.0.0.1:{}", server.port);
    for header in ["Host", "Transfer-Encoding", "Proxy-Authorization", "Connection", "X-Forwarded-For"] {
        let call =
            fetch(&api, &sid, json!({"url": format!("{base}/echo"), "headers": {header: "evil.example"}})).await?;
        assert_eq!(call["status"], "failed", "{header}: {call}");
    }
    let ok = fetch(&api, &sid, json!({"url": format!("{base}/echo"), "headers": {"X-Trace": "1"}})).await?;
    assert!(ok["output"]["body"].as_str().unwrap().contains("x-trace: 1"), "{ok}");
    let big = fetch(&api, &sid, json!({"url": format!("{base}/big"), "max_bytes": 40_000_000})).await?;
    assert_eq!(big["status"], "failed", "a 20 MiB body stops at the 16 MiB cap: {}", big["error"]);
    assert!(big["usage"]["egress_bytes"].as_u64().unwrap() <= (16 << 20) + (1 << 20));
    Ok(())
}

#[tokio::test]
async fn a_tool_importing_http_without_a_network_grant_is_refused_at_load() -> anyhow::Result<()> {
    let manifest = "name = \"http-fetch\"\nversion = \"0.1.0\"\ncomponent = \"http_fetch.wasm\"\n";
    let host = TestHost::builder()
        .bundle_with_manifest("http-fetch", example_tool("http-fetch"), manifest)
        .bundle("counter", example_tool("counter"))
        .start()
        .await?;
    let line = host.stderr().lines().find(|l| l.contains("http_fetch.wasm")).map(str::to_string).unwrap_or_default();
    assert!(line.contains("imports wasi:http/") && line.contains("grants no network"), "{line}");
    Ok(())
}

#[tokio::test]
async fn a_tool_holding_a_secret_cannot_send_it_to_an_ungranted_host() -> anyhow::Result<()> {
    let server = TestHttpServer::start().await?;
    let manifest = format!(
        "name = \"exfil-probe\"\nversion = \"0.0.0\"\ncomponent = \"exfil_probe.wasm\"\n[grants]\nnetwork = [\"127.0.0.1:{}\"]\nsecrets = [\"API_TOKEN\"]\nhistory = true\n",
        server.port
    );
    let host = TestHost::builder()
        .bundle_with_manifest("exfil", test_program("exfil-probe"), &manifest)
        .config("[network]\nallow_private = [\"127.0.0.0/8\"]\n[secrets]\nAPI_TOKEN = { file = \"token\" }")
        .before_start(|dir| std::fs::write(dir.join("token"), "tok-123456"))
        .start()
        .await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    for to in ["attacker.example:80", "127.0.0.2:80", &format!("localhost:{}", server.port)] {
        let (_, call) = api.call(&sid, "exfil-probe", json!({"to": to})).await?;
        assert_eq!(call["output"]["read_secret"], true);
        assert_eq!(call["output"]["sent"], false, "{to}: {call}");
    }
    assert_eq!(server.hits(), 0);
    assert_eq!(events(&api, &sid, "capability_denied").await?.len(), 3);
    Ok(())
}

#[tokio::test]
async fn refused_requests_are_denials_not_egress() -> anyhow::Result<()> {
    let host = host_with(&["127.0.0.1:9".to_string()], false).await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    let call = fetch(&api, &sid, json!({"url": "http://127.0.0.1:9/"})).await?;
    assert_eq!(call["status"], "failed");
    assert_eq!(call["usage"]["egress_requests"], 0);
    assert!(events(&api, &sid, "egress").await?.is_empty());
    assert_eq!(events(&api, &sid, "capability_denied").await?.len(), 1);
    Ok(())
}
