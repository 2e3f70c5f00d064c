//! MCP at `/mcp` and the stdio bridge: the official Python SDK as the
//! client (both protocol eras, both transports), then the protocol's edges
//! by hand: authentication, `Origin`, binding a session, another principal.

use anyhow::{Context, Result, bail};
use bulkhead_tests::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::PathBuf;

/// The Python with the `mcp` SDK: `$BULKHEAD_TEST_PYTHON`, or the virtual
/// environment `scripts/test` makes in `target/mcp-venv`.
pub(crate) fn python() -> PathBuf {
    let path = std::env::var("BULKHEAD_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target/mcp-venv/bin/python"));
    assert!(
        path.exists(),
        "{} is missing: scripts/test creates it (pip install -r tests/mcp/requirements.txt)",
        path.display()
    );
    path
}

async fn mcp_host() -> Result<TestHost> {
    TestHost::builder()
        .bundle("counter", example_tool("counter"))
        .bundle("notes", example_tool("notes"))
        .bundle("template", example_tool("template"))
        .bundle_with_manifest(
            "memory-bomb",
            test_program("memory-bomb"),
            "name = \"memory-bomb\"\nversion = \"0.0.0\"\ncomponent = \"memory_bomb.wasm\"\n[limits]\nmemory_mb = 16\n",
        )
        .start()
        .await
}

async fn run_client(host: &TestHost, sid: &str, transport: &str, mode: &str) -> Result<Vec<String>> {
    let mut cmd = std::process::Command::new(python());
    cmd.arg(repo_root().join("tests/mcp/client.py"))
        .args([transport, mode])
        .env("BULKHEAD_URL", &host.base)
        .env("BULKHEAD_AGENT_TOKEN", AGENT)
        .env("BULKHEAD_APPROVER_TOKEN", APPROVER)
        .env("BULKHEAD_SESSION", sid)
        .env("BULKHEAD_BIN", binary());
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("client.py {transport} {mode} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let last: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).context("client summary")?;
    Ok(last["calls"].as_array().context("calls")?.iter().filter_map(|c| c.as_str().map(String::from)).collect())
}

#[tokio::test]
async fn python_sdk_over_http_and_the_stdio_bridge() -> Result<()> {
    let host = mcp_host().await?;
    let api = host.agent();
    for (transport, mode) in [("http", "legacy"), ("http", "auto"), ("stdio", "legacy"), ("stdio", "auto")] {
        let boundary = json!({ "tools": ["counter", "notes", "memory-bomb"], "approval_required": ["notes"] });
        let sid = api.session(boundary).await?;
        let calls = run_client(&host, &sid, transport, mode).await?;
        assert_eq!(calls.len(), 4, "{transport} {mode}: {calls:?}");

        // The same calls, seen through the HTTP API and the audit chain.
        let (_, listed) = api.get(&format!("/v1/sessions/{sid}/calls")).await?;
        let statuses: Vec<(String, String)> = listed["calls"]
            .as_array()
            .context("calls")?
            .iter()
            .map(|c| (c["id"].as_str().unwrap_or("").to_string(), c["status"].as_str().unwrap_or("").to_string()))
            .collect();
        for (id, want) in calls.iter().zip(["succeeded", "succeeded", "trapped", "succeeded"]) {
            assert!(
                statuses.contains(&(id.clone(), want.to_string())),
                "{transport} {mode}: {id} {want} in {statuses:?}"
            );
        }
        let (_, audit) = api.get(&format!("/v1/sessions/{sid}/audit?limit=1000")).await?;
        let events = audit["events"].as_array().context("events")?;
        for id in &calls {
            assert!(events.iter().any(|e| e["call"] == id.as_str()), "{id} in the audit chain");
        }
        assert!(events.iter().any(|e| e["kind"] == "approval_decided" || e["kind"] == "call_approved"), "{audit}");
        assert_eq!(
            api.state(&sid, "counter").await?.get("count/mcp").map(String::as_str),
            Some("5"),
            "{transport} {mode}"
        );
    }
    Ok(())
}

/// One MCP POST; answers (status, Mcp-Session-Id, the JSON-RPC messages).
pub(crate) async fn mcp_post(
    host: &TestHost,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Value,
) -> Result<(StatusCode, Option<String>, Vec<Value>, String)> {
    mcp_post_to(host, token, headers, "/mcp", body).await
}

/// [`mcp_post`] to another path (`/mcp/sessions/{sid}`).
async fn mcp_post_to(
    host: &TestHost,
    token: Option<&str>,
    headers: &[(&str, &str)],
    path: &str,
    body: Value,
) -> Result<(StatusCode, Option<String>, Vec<Value>, String)> {
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", host.base))
        .header("accept", "application/json, text/event-stream")
        .json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let session = resp.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(String::from);
    let text = resp.text().await?;
    let messages = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .chain(if text.starts_with('{') { Some(text.as_str()) } else { None })
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect();
    Ok((status, session, messages, text))
}

pub(crate) fn initialize() -> Value {
    json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": { "name": "e2e", "version": "0" } } })
}

#[tokio::test]
async fn mcp_is_authenticated_and_refuses_foreign_origins() -> Result<()> {
    let host = mcp_host().await?;
    let (status, _, _, text) = mcp_post(&host, None, &[], initialize()).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let body: Value = serde_json::from_str(&text)?;
    assert_eq!(body["error"]["code"], "unauthorized", "the contract's error body: {text}");

    let (status, _, _, text) = mcp_post(&host, Some(APPROVER), &[], initialize()).await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "an approver uses no tools: {text}");

    let (status, _, messages, _) =
        mcp_post(&host, Some(AGENT), &[("origin", "https://evil.example")], initialize()).await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "a browser origin nobody allowed");
    assert!(messages.iter().all(|m| m.get("result").is_none()));

    // Still nothing was created by the refused requests.
    let (_, sessions) = host.agent().get("/v1/sessions").await?;
    assert_eq!(sessions["sessions"].as_array().map(Vec::len), Some(0), "{sessions}");
    Ok(())
}

#[tokio::test]
async fn initialize_binds_a_session_that_only_its_principal_can_use() -> Result<()> {
    let host = mcp_host().await?;
    let (status, mcp_session, messages, text) = mcp_post(&host, Some(AGENT), &[], initialize()).await?;
    assert_eq!(status, StatusCode::OK, "{text}");
    let mcp_session = mcp_session.context("Mcp-Session-Id")?;
    let sid = messages[0]["result"]["_meta"]["bulkhead/session"].as_str().context("the bound session")?.to_string();
    let (status, session) = host.agent().get(&format!("/v1/sessions/{sid}")).await?;
    assert_eq!(status, StatusCode::OK, "a real session, with the principal's default boundary: {session}");
    assert_eq!(session["labels"]["created_by"], "mcp");
    assert!(session["tools"].get("template").is_some(), "{session}");

    let list = json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/list" });
    let headers = [("mcp-session-id", mcp_session.as_str()), ("mcp-protocol-version", "2025-11-25")];
    let (_, _, mine, _) = mcp_post(&host, Some(AGENT), &headers, list.clone()).await?;
    assert!(mine[0]["result"]["tools"].as_array().is_some_and(|t| t.len() == 5), "{mine:?}");

    // A stolen Mcp-Session-Id is unknown to another principal: requests,
    // notifications, the event stream and its replay, and DELETE.
    let (status, _, theirs, text) = mcp_post(&host, Some(OTHER_AGENT), &headers, list.clone()).await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{text}");
    assert!(theirs.iter().all(|m| m.get("result").is_none()), "{text}");
    let cancel = json!({ "jsonrpc": "2.0", "method": "notifications/cancelled", "params": { "requestId": 2 } });
    let (status, _, _, _) = mcp_post(&host, Some(OTHER_AGENT), &headers, cancel).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let http = reqwest::Client::new();
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let resp = http
            .request(method.clone(), format!("{}/mcp", host.base))
            .bearer_auth(OTHER_AGENT)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &mcp_session)
            .header("last-event-id", "0/0")
            .send()
            .await?;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{method}");
        let body: Value = resp.json().await?;
        assert_eq!(body["error"]["code"], "not_found", "the contract's error body");
    }
    let (_, _, still, text) = mcp_post(&host, Some(AGENT), &headers, list.clone()).await?;
    assert!(still[0]["result"]["tools"].is_array(), "the owner's MCP session survived: {text}");

    // Nor can another principal bind this session by naming it.
    let (_, _, named, text) = mcp_post(&host, Some(OTHER_AGENT), &[("bulkhead-session", &sid)], initialize()).await?;
    assert!(named.iter().all(|m| m.get("result").is_none()), "{text}");

    // Narrowing the session over HTTP narrows what MCP lists at once.
    let (status, _) = host
        .agent()
        .request(reqwest::Method::PATCH, &format!("/v1/sessions/{sid}"))
        .json(&json!({ "tools": ["counter"] }))
        .send()
        .await
        .map(|r| (r.status(), ()))?;
    assert_eq!(status, StatusCode::OK);
    let (_, _, narrowed, _) = mcp_post(&host, Some(AGENT), &headers, list).await?;
    let names: Vec<&str> =
        narrowed[0]["result"]["tools"].as_array().context("tools")?.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["counter", "bulkhead_call_result"]);
    Ok(())
}

#[tokio::test]
async fn an_idempotency_key_in_meta_runs_a_call_once() -> Result<()> {
    let host = mcp_host().await?;
    let sid = host.agent().session(json!({ "tools": ["counter"] })).await?;
    // The 2026-07-28 envelope: no handshake, the version in headers and _meta.
    let headers = [
        ("bulkhead-session", sid.as_str()),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "counter"),
    ];
    let call = |key: &str| {
        json!({ "jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
            "name": "counter", "arguments": { "by": 10 }, "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
                "bulkhead/idempotency_key": key } } })
    };
    let (_, _, first, text) = mcp_post(&host, Some(AGENT), &headers, call("order-1")).await?;
    let (_, _, again, _) = mcp_post(&host, Some(AGENT), &headers, call("order-1")).await?;
    let id = |m: &[Value]| m[0]["result"]["_meta"]["bulkhead/call_id"].as_str().map(String::from);
    assert!(id(&first).is_some(), "{text}");
    assert_eq!(id(&first), id(&again), "the retry is the first call");
    assert_eq!(again[0]["result"]["structuredContent"]["value"], 10);
    assert_eq!(host.agent().state(&sid, "counter").await?.get("count/default").map(String::as_str), Some("10"));

    let (_, _, bad, _) = mcp_post(&host, Some(AGENT), &headers, call("")).await?;
    assert_eq!(bad[0]["result"]["isError"], true, "an empty key is refused: {bad:?}");
    Ok(())
}

#[tokio::test]
async fn an_allowed_origin_is_served_and_others_are_not() -> Result<()> {
    let host = TestHost::builder()
        .bundle("counter", example_tool("counter"))
        .config("[mcp]\nallowed_origins = [\"https://app.example:443\"]")
        .start()
        .await?;
    let (status, _, messages, text) =
        mcp_post(&host, Some(AGENT), &[("origin", "https://app.example")], initialize()).await?;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(messages[0]["result"]["_meta"]["bulkhead/session"].is_string(), "{text}");
    for origin in ["https://evil.example", "http://app.example", "https://app.example:8443", "null"] {
        let (status, _, _, _) = mcp_post(&host, Some(AGENT), &[("origin", origin)], initialize()).await?;
        assert_eq!(status, StatusCode::FORBIDDEN, "{origin}");
    }
    Ok(())
}

#[tokio::test]
async fn malformed_mcp_requests_get_the_contract_error_body() -> Result<()> {
    let host = mcp_host().await?;
    let http = reqwest::Client::new();
    let post = |body: &'static str, content_type: &'static str| {
        http.post(format!("{}/mcp", host.base))
            .bearer_auth(AGENT)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let cases = [
        ("{not json", "application/json", 400),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"counter","arguments":"x"}}"#,
            "application/json",
            400,
        ),
        ("{}", "text/plain", 415),
    ];
    for (body, content_type, want) in cases {
        let resp = post(body, content_type).await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        // A JSON-RPC error or the contract's error body; never plain text, never 5xx.
        let json: Value = serde_json::from_str(&text).with_context(|| format!("{body}: not JSON: {text}"))?;
        assert!(status < 500, "{body}: {status} {text}");
        assert!(status == want || json.get("jsonrpc").is_some(), "{body}: {status} {text}");
        assert!(json["error"]["code"].is_string() || json["error"]["code"].is_number(), "{body}: {text}");
    }
    let resp =
        http.get(format!("{}/mcp", host.base)).bearer_auth(AGENT).header("accept", "text/event-stream").send().await?;
    assert!(resp.status().is_client_error());
    let body: Value = resp.json().await?;
    assert!(body["error"]["code"].is_string(), "{body}");
    Ok(())
}

/// `bulkhead mcp` as the agent, with its stdin and stdout.
fn start_bridge(
    args: &[&str],
) -> Result<(std::process::Child, std::process::ChildStdin, std::io::BufReader<std::process::ChildStdout>)> {
    use std::process::Stdio;
    let mut bridge = std::process::Command::new(binary())
        .arg("mcp")
        .args(args)
        .args(["--token-env", "AGENT_TOKEN"])
        .env("AGENT_TOKEN", AGENT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdin = bridge.stdin.take().context("stdin")?;
    let stdout = std::io::BufReader::new(bridge.stdout.take().context("stdout")?);
    Ok((bridge, stdin, stdout))
}

/// A stdio client never initializes twice; the bridge does it for it when
/// the host forgot the MCP session (here: a restart), and the Bulkhead
/// session, state and all, carries on.
#[tokio::test]
async fn the_stdio_bridge_survives_a_host_restart() -> Result<()> {
    use std::io::{BufRead, Write};
    let mut host = TestHost::builder()
        .bundle("counter", example_tool("counter"))
        .listen(&format!("127.0.0.1:{}", free_port()))
        .start()
        .await?;
    let sid = host.agent().session(json!({ "tools": ["counter"] })).await?;
    let (mut bridge, mut stdin, mut stdout) = start_bridge(&["--connect", &host.base, "--session", &sid])?;
    let mut exchange = move |message: Value| -> Result<Value> {
        writeln!(stdin, "{message}")?;
        if message.get("id").is_none() {
            return Ok(Value::Null);
        }
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        serde_json::from_str(&line).with_context(|| format!("bridge wrote {line:?}"))
    };
    let init = exchange(initialize())?;
    assert_eq!(init["result"]["_meta"]["bulkhead/session"], sid.as_str(), "{init}");
    exchange(json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }))?;
    let call = |id: u64| json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call", "params": { "name": "counter", "arguments": {} } });
    let first = exchange(call(2))?;
    assert_eq!(first["result"]["structuredContent"]["value"], 1, "{first}");

    host.restart().await?;
    let second = exchange(call(3))?;
    assert_eq!(second["id"], 3, "{second}");
    assert_eq!(second["result"]["structuredContent"]["value"], 2, "the same session after the restart: {second}");
    let _ = bridge.kill();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut bridge.stderr.take().context("stderr")?, &mut stderr)?;
    assert!(stderr.contains("initialized again"), "{stderr}");
    Ok(())
}

/// No host at the address: every request gets a JSON-RPC error saying why,
/// and the bridge keeps serving (the client is not left hanging).
#[tokio::test]
async fn the_stdio_bridge_answers_errors_when_the_host_is_unreachable() -> Result<()> {
    use std::io::{BufRead, Write};
    let url = format!("http://127.0.0.1:{}", free_port());
    let (mut bridge, mut stdin, mut stdout) = start_bridge(&["--connect", &url])?;
    for id in [1, 2] {
        let mut message = initialize();
        message["id"] = json!(id);
        writeln!(stdin, "{message}")?;
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let answer: Value = serde_json::from_str(&line).with_context(|| format!("bridge wrote {line:?}"))?;
        assert_eq!(answer["id"], id, "{answer}");
        assert_eq!(answer["error"]["code"], -32603, "{answer}");
        assert!(answer["error"]["message"].as_str().is_some_and(|m| m.contains("connecting")), "{answer}");
    }
    writeln!(stdin, "this is not json")?;
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    let answer: Value = serde_json::from_str(&line)?;
    assert_eq!(answer["error"]["code"], -32700, "{answer}");
    drop(stdin);
    assert!(bridge.wait()?.success(), "stdin closed: the bridge exits cleanly");
    Ok(())
}

/// A connected SDK client hears `notifications/tools/list_changed` when a
/// reload changes one of its tools and when its session is narrowed.
#[tokio::test]
async fn connected_clients_hear_that_their_tool_list_changed() -> Result<()> {
    use std::io::BufRead;
    let host = mcp_host().await?;
    let api = host.agent();
    let sid = api.session(json!({ "tools": ["counter", "notes"] })).await?;
    let mut child = std::process::Command::new(python())
        .arg(repo_root().join("tests/mcp/list_changed.py"))
        .env("BULKHEAD_URL", &host.base)
        .env("BULKHEAD_AGENT_TOKEN", AGENT)
        .env("BULKHEAD_SESSION", &sid)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stdout = child.stdout.take().context("stdout")?;
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let ready = next_line(&mut rx).await;
    if ready.as_deref() != Some("READY") {
        let _ = child.kill();
        let out = child.wait_with_output()?;
        bail!("list_changed.py: {ready:?}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let manifest = host.dir.join("tools/counter/tool.toml");
    let text = std::fs::read_to_string(&manifest)?;
    std::fs::write(&manifest, text.replace("description = \"", "description = \"(v2) "))?;
    let (status, report) = host.api(ADMIN).post("/v1/tools/reload", json!({})).await?;
    assert_eq!(status, StatusCode::OK, "{report}");
    let listed = next_line(&mut rx).await.context("a first list_changed")?;
    let tools: Value = serde_json::from_str(listed.strip_prefix("LISTED ").context("LISTED")?)?;
    assert!(tools["counter"].as_str().unwrap().starts_with("(v2) "), "relisted after the reload: {tools}");

    let (status, body) = Api::send(
        api.request(reqwest::Method::PATCH, &format!("/v1/sessions/{sid}")).json(&json!({ "tools": ["counter"] })),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed = next_line(&mut rx).await.context("a second list_changed")?;
    let tools: Value = serde_json::from_str(listed.strip_prefix("LISTED ").context("LISTED")?)?;
    assert!(tools.get("notes").is_none() && tools.get("counter").is_some(), "relisted after narrowing: {tools}");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

async fn next_line(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> Option<String> {
    tokio::time::timeout(std::time::Duration::from_secs(40), rx.recv()).await.ok().flatten()
}

async fn by_url(host: &TestHost, path: &str, name: &str, by: i64) -> Result<Value> {
    let mut cmd = std::process::Command::new(python());
    cmd.arg(repo_root().join("tests/mcp/by_url.py"))
        .args([path, name, &by.to_string()])
        .env("BULKHEAD_URL", &host.base)
        .env("BULKHEAD_AGENT_TOKEN", AGENT);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    if !out.status.success() {
        bail!("by_url.py {path}: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or(""))?)
}

/// A client that knows only a URL and a token: on `/mcp` it gets its
/// principal's default session (made once, reused, listed like any other);
/// on `/mcp/sessions/{sid}` the session the URL names.
#[tokio::test]
async fn a_client_with_only_a_url_and_a_token_reaches_a_session() -> Result<()> {
    let host = mcp_host().await?;
    let first = by_url(&host, "/mcp", "u", 1).await?;
    let sid = first["session"].as_str().context("the default session in _meta")?.to_string();
    assert_eq!(first["values"][1].as_i64().unwrap(), first["values"][0].as_i64().unwrap() + 1, "{first}");
    // The session's records as read-only resources.
    let names: Vec<&str> = first["resources"].as_array().unwrap().iter().filter_map(|r| r.as_str()).collect();
    assert!(names.contains(&"messages") && names.contains(&"audit") && names.contains(&"state/counter"), "{first}");
    use base64::Engine as _;
    let stored = first["state"]["count/u"].as_str().context("count/u in the state resource")?;
    let stored = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(stored)?)?;
    assert_eq!(stored, first["values"][1].to_string(), "{first}");
    assert!(first["kinds"].as_array().unwrap().contains(&json!("call_finished")), "{first}");
    let again = by_url(&host, "/mcp", "u", 1).await?;
    assert_eq!(again["session"], sid.as_str(), "the default session is reused");
    assert_eq!(again["values"][0].as_i64().unwrap(), first["values"][1].as_i64().unwrap() + 1, "state carried over");

    let (_, listed) = host.agent().get("/v1/sessions?label=mcp=default").await?;
    let ids: Vec<&str> = listed["sessions"].as_array().unwrap().iter().filter_map(|s| s["id"].as_str()).collect();
    assert_eq!(ids, [sid.as_str()], "one default session, shown like any other");

    let by_path = by_url(&host, &format!("/mcp/sessions/{sid}"), "u", 10).await?;
    assert_eq!(by_path["session"], sid.as_str());
    assert_eq!(by_path["values"][0].as_i64().unwrap(), again["values"][1].as_i64().unwrap() + 10, "{by_path}");

    // Another principal's session by URL is unknown; a header naming
    // another session than the URL is refused.
    let theirs = host.api(OTHER_AGENT).session(json!({})).await?;
    let (status, _, _, body) =
        mcp_post_to(&host, Some(AGENT), &[], &format!("/mcp/sessions/{theirs}"), initialize()).await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let mine = host.agent().session(json!({})).await?;
    let headers = [("bulkhead-session", mine.as_str())];
    let (status, _, _, body) =
        mcp_post_to(&host, Some(AGENT), &headers, &format!("/mcp/sessions/{sid}"), initialize()).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("session_mismatch"), "{body}");
    Ok(())
}

/// A client that declares the tasks extension gets a call waiting for a
/// human as a task (its id the call's), follows it with `tasks/get` to the
/// tool result, and cannot cancel it; a client without the extension gets
/// the `pending_approval` result as before.
#[tokio::test]
async fn a_call_waiting_for_approval_is_a_task_for_clients_that_declare_tasks() -> Result<()> {
    let host = mcp_host().await?;
    let boundary = json!({ "tools": ["counter"], "approval_required": ["counter"] });
    let sid = host.agent().session(boundary).await?;
    let mut init = initialize();
    init["params"]["capabilities"] = json!({ "extensions": { "io.modelcontextprotocol/tasks": {} } });
    let (status, mcp_session, messages, text) =
        mcp_post(&host, Some(AGENT), &[("bulkhead-session", &sid)], init).await?;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(
        messages[0]["result"]["capabilities"]["extensions"].get("io.modelcontextprotocol/tasks").is_some(),
        "{text}"
    );
    let mcp_session = mcp_session.context("Mcp-Session-Id")?;
    let headers = [("mcp-session-id", mcp_session.as_str()), ("mcp-protocol-version", "2025-11-25")];
    mcp_post(&host, Some(AGENT), &headers, json!({ "jsonrpc": "2.0", "method": "notifications/initialized" })).await?;

    let call = json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": { "name": "counter", "arguments": { "name": "t", "by": 5 } } });
    let (_, _, answer, text) = mcp_post(&host, Some(AGENT), &headers, call).await?;
    let task = &answer[0]["result"];
    assert_eq!(task["resultType"], "task", "{text}");
    assert_eq!(task["status"], "working", "{text}");
    let cid = task["taskId"].as_str().context("taskId")?.to_string();
    let (status, stored) = host.agent().get(&format!("/v1/sessions/{sid}/calls/{cid}")).await?;
    assert_eq!((status, stored["status"].as_str()), (StatusCode::OK, Some("pending_approval")), "the task is the call");

    let get = |id: u64| json!({ "jsonrpc": "2.0", "id": id, "method": "tasks/get", "params": { "taskId": cid } });
    let (_, _, polled, text) = mcp_post(&host, Some(AGENT), &headers, get(3)).await?;
    assert_eq!(polled[0]["result"]["status"], "working", "{text}");
    let cancel = json!({ "jsonrpc": "2.0", "id": 4, "method": "tasks/cancel", "params": { "taskId": cid } });
    let (_, _, refused, text) = mcp_post(&host, Some(AGENT), &headers, cancel).await?;
    assert!(refused[0].get("error").is_some(), "an agent cannot cancel a pending call: {text}");

    let (status, body) =
        host.api(APPROVER).post(&format!("/v1/approvals/{cid}"), json!({"decision": "approve"})).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let done = eventually("the task completes", || async {
        let (_, _, polled, _) = mcp_post(&host, Some(AGENT), &headers, get(5)).await?;
        let r = polled.first().map(|m| m["result"].clone()).unwrap_or(Value::Null);
        Ok((r["status"] == "completed").then_some(r))
    })
    .await?;
    assert_eq!(done["result"]["structuredContent"]["value"], 5, "{done}");
    assert_eq!(done["result"]["isError"], false, "{done}");

    // Another session's call is no task of this one.
    let other = host.agent().session(json!({ "tools": ["counter"] })).await?;
    let (_, foreign) = host.agent().call(&other, "counter", json!({"name": "x", "by": 1})).await?;
    assert!(foreign["id"].is_string(), "{foreign}");
    let foreign_get = json!({ "jsonrpc": "2.0", "id": 6, "method": "tasks/get",
        "params": { "taskId": foreign["id"] } });
    let (_, _, nope, text) = mcp_post(&host, Some(AGENT), &headers, foreign_get).await?;
    assert!(nope[0].get("error").is_some(), "{text}");

    // Without the extension: the pending_approval result.
    let (_, plain_session, _, _) = mcp_post(&host, Some(AGENT), &[("bulkhead-session", &sid)], initialize()).await?;
    let plain_session = plain_session.context("Mcp-Session-Id")?;
    let plain = [("mcp-session-id", plain_session.as_str()), ("mcp-protocol-version", "2025-11-25")];
    mcp_post(&host, Some(AGENT), &plain, json!({ "jsonrpc": "2.0", "method": "notifications/initialized" })).await?;
    let call = json!({ "jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": { "name": "counter", "arguments": { "name": "t", "by": 1 } } });
    let (_, _, answer, text) = mcp_post(&host, Some(AGENT), &plain, call).await?;
    assert_eq!(answer[0]["result"]["structuredContent"]["status"], "pending_approval", "{text}");
    Ok(())
}
