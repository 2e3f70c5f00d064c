//! Reloading the tool set without a restart (issue 27): calls in flight
//! finish on their version, new calls get the new one, a wider version never
//! widens an existing session, a broken bundle leaves the old one serving,
//! and every change is a `tool_updated` event on the `tools` chain.

use bulkhead_tests::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

async fn reload(host: &TestHost) -> anyhow::Result<Value> {
    let (status, report) = host.api(ADMIN).post("/v1/tools/reload", json!({})).await?;
    assert_eq!(status, StatusCode::OK, "{report}");
    Ok(report)
}

async fn tool(host: &TestHost, name: &str) -> anyhow::Result<Option<Value>> {
    let (_, body) = host.api(ADMIN).get("/v1/tools").await?;
    Ok(body["tools"].as_array().unwrap().iter().find(|t| t["name"] == name).cloned())
}

async fn tool_events(host: &TestHost) -> anyhow::Result<Vec<Value>> {
    let (status, body) = host.api(ADMIN).get("/v1/tools/audit").await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    Ok(body["events"].as_array().unwrap().clone())
}

fn set_version(host: &TestHost, tool: &str, from: &str, to: &str) -> anyhow::Result<()> {
    let path = host.dir.join("tools").join(tool).join("tool.toml");
    let text = std::fs::read_to_string(&path)?;
    anyhow::ensure!(text.contains(from), "{text}");
    std::fs::write(&path, text.replace(&format!("version = \"{from}\""), &format!("version = \"{to}\"")))?;
    Ok(())
}

#[tokio::test]
async fn calls_running_across_a_reload_all_finish_and_name_the_version_they_ran_on() -> anyhow::Result<()> {
    let mut host = TestHost::builder().bundle("counter", example_tool("counter")).start().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (api, stop) = (host.agent(), stop.clone());
        let sid = api.session(json!({})).await?;
        workers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let (status, call) = api.call(&sid, "counter", json!({})).await.expect("call");
                statuses.push(format!("{status} {}", call["status"]));
            }
            (sid, statuses)
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    set_version(&host, "counter", "0.1.0", "0.2.0")?;
    let report = reload(&host).await?;
    assert_eq!(report["updated"][0]["tool"], "counter", "{report}");
    assert_eq!(report["updated"][0]["old"]["version"], "0.1.0");
    assert_eq!(report["updated"][0]["new"]["version"], "0.2.0");
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    stop.store(true, Ordering::SeqCst);

    let agent = host.agent();
    for worker in workers {
        let (sid, statuses) = worker.await?;
        assert!(statuses.iter().all(|s| s == "200 OK \"succeeded\""), "every call finished: {statuses:?}");
        let mut events = Vec::new();
        loop {
            let after = events.last().map_or(0, |e: &Value| e["seq"].as_i64().unwrap());
            let (_, page) = agent.get(&format!("/v1/sessions/{sid}/audit?after={after}&limit=1000")).await?;
            let page = page["events"].as_array().unwrap().clone();
            if page.is_empty() {
                break;
            }
            events.extend(page);
        }
        let versions: Vec<&str> = events
            .iter()
            .filter(|e| e["kind"] == "call_finished")
            .map(|e| e["data"]["tool_version"]["version"].as_str().expect("the version that ran"))
            .collect();
        assert_eq!(versions.len(), statuses.len());
        // In order: the old version, then only the new one.
        let first_new = versions.iter().position(|v| *v == "0.2.0").expect("calls after the reload ran 0.2.0");
        assert!(versions[..first_new].iter().all(|v| *v == "0.1.0"), "{versions:?}");
        assert!(versions[first_new..].iter().all(|v| *v == "0.2.0"), "{versions:?}");
        assert!(first_new > 0, "calls before the reload ran 0.1.0");
    }

    let counter = tool(&host, "counter").await?.unwrap();
    assert_eq!(counter["version"], "0.2.0");
    assert_eq!(counter["previous"]["version"], "0.1.0");
    let events = tool_events(&host).await?;
    let kinds: Vec<(&str, &str)> =
        events.iter().map(|e| (e["kind"].as_str().unwrap(), e["actor"].as_str().unwrap())).collect();
    // The first start recorded the version it found; the reload, who asked.
    assert_eq!(kinds, [("tool_updated", "bulkhead"), ("tool_updated", "admin")], "{events:?}");
    assert!(events[0]["data"]["old"].is_null());
    assert_eq!(events[1]["data"]["old"]["version"], "0.1.0");
    assert_eq!(events[1]["data"]["new"]["version"], "0.2.0");
    assert_ne!(events[1]["data"]["new"]["manifest_digest"], events[1]["data"]["old"]["manifest_digest"]);

    // Nothing changed: nothing recorded. A restart on the same bundles
    // records nothing either; the chain verifies.
    let again = reload(&host).await?;
    assert_eq!(again["updated"], json!([]), "{again}");
    host.restart().await?;
    assert_eq!(tool_events(&host).await?.len(), 2);
    let (code, out, err) = run_cli(&["audit", "verify", "--config", host.config_path().to_str().unwrap()])?;
    assert_eq!(code, 0, "{out}{err}");

    // The tools chain exports like a session's.
    let lines = host.api(ADMIN).request(reqwest::Method::GET, "/v1/tools/audit?format=jsonl").send().await?;
    assert_eq!(lines.text().await?.lines().count(), 2);
    let (status, _) = host.api(ADMIN).get("/v1/tools/audit?format=xml").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Only admins reload or read the tools chain.
    let (status, body) = host.agent().post("/v1/tools/reload", json!({})).await?;
    assert_eq!((status, &body["error"]["code"]), (StatusCode::FORBIDDEN, &json!("role_required")));
    let (status, _) = host.api(APPROVER).get("/v1/tools/audit").await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    Ok(())
}

fn fetch_manifest(version: &str, network: &[String]) -> String {
    let hosts: Vec<String> = network.iter().map(|h| format!("\"{h}\"")).collect();
    format!(
        "name = \"http-fetch\"\nversion = \"{version}\"\ncomponent = \"http_fetch.wasm\"\n[grants]\nnetwork = [{}]\n[limits]\nmemory_mb = 128\ntimeout_ms = 20000\n",
        hosts.join(", ")
    )
}

#[tokio::test]
async fn a_wider_new_version_does_not_widen_an_existing_session() -> anyhow::Result<()> {
    let server = TestHttpServer::start().await?;
    let target = format!("127.0.0.1:{}", server.port);
    let host = TestHost::builder()
        .bundle_with_manifest(
            "http-fetch",
            example_tool("http-fetch"),
            &fetch_manifest("1.0.0", &["example.com".into()]),
        )
        .config("[network]\nallow_private = [\"127.0.0.0/8\"]")
        .start()
        .await?;
    let agent = host.agent();
    let old = agent.session(json!({})).await?;

    // Version 2 grants the test server too; the operator sends SIGHUP.
    let manifest = fetch_manifest("2.0.0", &["example.com".into(), target.clone()]);
    std::fs::write(host.dir.join("tools/http-fetch/tool.toml"), manifest)?;
    let pid = host.pid().expect("running");
    assert!(std::process::Command::new("kill").args(["-HUP", &pid.to_string()]).status()?.success());
    eventually("version 2.0.0 served", || async {
        Ok(tool(&host, "http-fetch").await?.filter(|t| t["version"] == "2.0.0"))
    })
    .await?;

    let url = format!("http://{target}/hello");
    let (_, call) = agent.call(&old, "http-fetch", json!({ "url": url })).await?;
    assert_eq!(call["status"], "failed", "the old session keeps its boundary: {call}");
    let (_, audit) = agent.get(&format!("/v1/sessions/{old}/audit")).await?;
    let denied = audit["events"].as_array().unwrap().iter().find(|e| e["kind"] == "capability_denied").cloned();
    assert_eq!(
        denied.expect("a denial")["data"]["reason"].as_str().map(|r| r.starts_with("host not granted")),
        Some(true)
    );
    assert_eq!(server.hits(), 0, "nothing reached the server from the old session");

    let (_, shown) = agent.get(&format!("/v1/sessions/{old}")).await?;
    assert_eq!(shown["tools"]["http-fetch"]["grants"]["network"], json!(["example.com"]), "{shown}");

    let new = agent.session(json!({})).await?;
    let (_, call) = agent.call(&new, "http-fetch", json!({ "url": url })).await?;
    assert_eq!(call["status"], "succeeded", "a new session gets the new grants: {call}");
    assert_eq!(call["output"]["status"], 200);

    let events = tool_events(&host).await?;
    let update = events.last().unwrap().clone();
    assert_eq!(update["actor"], "operator:sighup");
    let added = update["data"]["capability_diff"]["added"].to_string();
    assert!(
        added.contains(&format!("127.0.0.1 on port {}", server.port)),
        "the review's diff names the new host: {update}"
    );

    // A narrower version 3 narrows the new session at once.
    std::fs::write(host.dir.join("tools/http-fetch/tool.toml"), fetch_manifest("3.0.0", &["example.com".into()]))?;
    let report = reload(&host).await?;
    assert_eq!(report["updated"][0]["new"]["version"], "3.0.0", "{report}");
    let (_, shown) = agent.get(&format!("/v1/sessions/{new}")).await?;
    assert_eq!(shown["tools"]["http-fetch"]["grants"]["network"], json!(["example.com"]), "{shown}");
    let (_, call) = agent.call(&new, "http-fetch", json!({ "url": url })).await?;
    assert_eq!(call["status"], "failed", "narrowed by the new version: {call}");
    Ok(())
}

#[tokio::test]
async fn a_bundle_that_fails_to_load_leaves_the_old_version_serving_and_a_removed_one_goes() -> anyhow::Result<()> {
    let host = TestHost::builder()
        .bundle("counter", example_tool("counter"))
        .bundle("notes", example_tool("notes"))
        .start()
        .await?;
    let agent = host.agent();
    let sid = agent.session(json!({})).await?;

    set_version(&host, "counter", "0.1.0", "0.2.0")?;
    std::fs::write(host.dir.join("tools/counter/counter.wasm"), b"\0asm not really")?;
    let report = reload(&host).await?;
    assert_eq!(report["updated"], json!([]), "{report}");
    let refused = report["refused"].to_string();
    assert!(refused.contains("counter.wasm") && refused.contains("not a valid WebAssembly component"), "{report}");
    assert_eq!(tool(&host, "counter").await?.unwrap()["version"], "0.1.0");
    let (_, call) = agent.call(&sid, "counter", json!({})).await?;
    assert_eq!(call["status"], "succeeded", "the old version keeps serving: {call}");

    // A config that no longer parses: refused with its error, nothing changes.
    let config = std::fs::read_to_string(host.config_path())?;
    std::fs::write(host.config_path(), format!("{config}\n[tools]\nrequire_signature = \"yes\"\n"))?;
    let (status, body) = host.api(ADMIN).post("/v1/tools/reload", json!({})).await?;
    assert_eq!((status, &body["error"]["code"]), (StatusCode::BAD_REQUEST, &json!("invalid_config")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("require_signature"), "{body}");
    std::fs::write(host.config_path(), config)?;
    assert!(tool(&host, "notes").await?.is_some());

    std::fs::remove_dir_all(host.dir.join("tools/notes"))?;
    let report = reload(&host).await?;
    assert_eq!(report["updated"][0]["tool"], "notes", "{report}");
    assert!(report["updated"][0]["new"].is_null());
    assert!(tool(&host, "notes").await?.is_none());
    let (status, body) = agent.call(&sid, "notes", json!({"op": "list"})).await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "unknown_tool");
    let events = tool_events(&host).await?;
    assert!(events.last().unwrap()["data"]["new"].is_null());

    // A bundle added to the folder is served and counted after a reload.
    let added = host.dir.join("tools/template");
    std::fs::create_dir_all(&added)?;
    for f in ["tool.toml", "template.wasm"] {
        std::fs::copy(example_tool("template").join(f), added.join(f))?;
    }
    let report = reload(&host).await?;
    assert_eq!(report["updated"][0]["tool"], "template", "{report}");
    assert!(report["updated"][0]["old"].is_null());
    let fresh = agent.session(json!({})).await?;
    let (_, call) = agent.call(&fresh, "template", json!({"name": "reload"})).await?;
    assert_eq!(call["status"], "succeeded", "{call}");
    let metrics = host.anonymous().request(reqwest::Method::GET, "/metrics").send().await?.text().await?;
    assert!(
        metrics.lines().any(|l| l == "bulkhead_calls_total{tool=\"template\",status=\"succeeded\"} 1"),
        "{metrics}"
    );
    Ok(())
}
