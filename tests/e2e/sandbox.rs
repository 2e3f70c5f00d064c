//! The sandbox of issue 2: nothing ungranted is reachable, limits stop
//! hostile guests, and the host keeps serving afterwards.

use bulkhead_tests::*;
use reqwest::StatusCode;
use serde_json::json;

fn manifest(name: &str, wasm: &str, extra: &str) -> String {
    format!("name = \"{name}\"\nversion = \"0.0.0\"\ncomponent = \"{wasm}\"\n{extra}\n")
}

#[tokio::test]
async fn a_tool_without_grants_reaches_nothing() -> anyhow::Result<()> {
    let host = TestHost::builder()
        .bundle("sandbox-probe", test_program("sandbox-probe"))
        .config("[secrets]\nGITHUB_TOKEN = { env = \"PATH\" }")
        .start()
        .await?;
    let api = host.agent();
    let sid = api.session(json!({"env": {"TZ": "UTC", "HOME": "/root"}})).await?;
    api.post(&format!("/v1/sessions/{sid}/messages"), json!({"role": "user", "content": "private"})).await?;
    let (status, call) = api.call(&sid, "sandbox-probe", json!({})).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(call["status"], "succeeded", "{call}");
    let out = &call["output"];
    assert_eq!(out["env"], json!([]), "no environment without an env grant");
    assert_eq!(out["args"], json!([]));
    for f in out["files"].as_array().unwrap() {
        assert_eq!(f["readable"], false, "{f}");
    }
    assert_eq!(out["tcp_connected"], false);
    assert_eq!(out["dns_resolved"], false);
    assert_eq!(out["secret_readable"], false, "a configured but ungranted secret stays out of reach");
    assert_eq!(out["history_readable"], false);
    assert_eq!(out["session"], sid);
    assert_eq!(out["principal"], "agent");
    let logs = call["logs"].as_array().unwrap();
    assert!(
        logs.iter().any(|l| l["level"] == "stdout" && l["message"].as_str().unwrap().contains("probe on stdout")),
        "{logs:?}"
    );
    assert!(logs.iter().any(|l| l["level"] == "stderr"));
    let kinds = api.audit_kinds(&sid).await?;
    assert_eq!(kinds.iter().filter(|k| *k == "capability_denied").count(), 2, "secret and history denials: {kinds:?}");
    Ok(())
}

#[tokio::test]
async fn history_is_readable_only_when_granted() -> anyhow::Result<()> {
    let denied = r#"
        name = "notes-no-history"
        version = "0.1.0"
        component = "notes.wasm"
        [grants]
        history = false
    "#;
    let host = TestHost::builder()
        .bundle("notes", example_tool("notes"))
        .bundle_with_manifest("notes-no-history", example_tool("notes"), denied)
        .start()
        .await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    for (role, content) in [("user", "first"), ("assistant", "second"), ("user", "third")] {
        api.post(&format!("/v1/sessions/{sid}/messages"), json!({"role": role, "content": content})).await?;
    }
    let (_, ok) = api.call(&sid, "notes", json!({"op": "summarize", "limit": 2})).await?;
    assert_eq!(ok["status"], "succeeded", "{ok}");
    assert_eq!(
        ok["output"]["messages"],
        json!([{"role": "assistant", "content": "second"}, {"role": "user", "content": "third"}])
    );

    let (_, no) = api.call(&sid, "notes-no-history", json!({"op": "summarize"})).await?;
    assert_eq!(no["status"], "failed", "an error the guest sees, not a trap: {no}");
    assert!(no["error"]["message"].as_str().unwrap().contains("not granted"));
    let (_, events) = api.get(&format!("/v1/sessions/{sid}/audit?limit=1000")).await?;
    let denial =
        events["events"].as_array().unwrap().iter().find(|e| e["kind"] == "capability_denied").expect("a denial event");
    assert_eq!(denial["data"]["capability"], "history");
    assert_eq!(denial["call"], no["id"]);

    // A session can narrow history away from a tool that has it.
    let narrowed = api.session(json!({"grants": {"notes": {"history": false}}})).await?;
    let (_, no) = api.call(&narrowed, "notes", json!({"op": "summarize"})).await?;
    assert_eq!(no["status"], "failed");
    Ok(())
}

#[tokio::test]
async fn an_infinite_loop_is_stopped_at_its_timeout_and_the_host_keeps_serving() -> anyhow::Result<()> {
    let host = TestHost::builder()
        .bundle_with_manifest(
            "spin",
            test_program("spin-forever"),
            &manifest("spin-forever", "spin_forever.wasm", "[limits]\ntimeout_ms = 300"),
        )
        .bundle("counter", example_tool("counter"))
        .start()
        .await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    let spinning: Vec<_> = (0..3)
        .map(|_| {
            let (api, sid) = (api.clone(), sid.clone());
            tokio::spawn(async move { api.call(&sid, "spin-forever", json!({})).await })
        })
        .collect();
    // While three loops spin on a two-core machine, other calls still run.
    let (_, c) = api.call(&sid, "counter", json!({})).await?;
    assert_eq!(c["status"], "succeeded");
    for t in spinning {
        let (status, call) = t.await??;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (call["status"].as_str(), call["error"]["code"].as_str()),
            (Some("trapped"), Some("timeout")),
            "{call}"
        );
        assert!(call["usage"]["wall_ms"].as_u64().unwrap() >= 300);
    }
    let (status, _) = host.anonymous().get("/healthz").await?;
    assert_eq!(status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn a_memory_bomb_is_stopped_at_its_memory_limit() -> anyhow::Result<()> {
    let host = TestHost::builder()
        .bundle_with_manifest(
            "bomb",
            test_program("memory-bomb"),
            &manifest("memory-bomb", "memory_bomb.wasm", "[limits]\nmemory_mb = 16"),
        )
        .start()
        .await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    let (_, call) = api.call(&sid, "memory-bomb", json!({})).await?;
    assert_eq!((call["status"].as_str(), call["error"]["code"].as_str()), (Some("trapped"), Some("memory")), "{call}");
    let peak = call["usage"]["memory_peak_bytes"].as_u64().unwrap();
    assert!(peak <= 16 << 20 && peak > 8 << 20, "peak {peak} within the limit");
    Ok(())
}

#[tokio::test]
async fn oversized_output_is_refused_and_chatty_stdio_is_capped() -> anyhow::Result<()> {
    let host = TestHost::builder()
        .bundle_with_manifest(
            "flood",
            test_program("output-flood"),
            &manifest("output-flood", "output_flood.wasm", "[limits]\noutput_kb = 16"),
        )
        .start()
        .await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    let (_, big) = api.call(&sid, "output-flood", json!({"output_bytes": 32 * 1024})).await?;
    assert_eq!(
        (big["status"].as_str(), big["error"]["code"].as_str()),
        (Some("trapped"), Some("output_too_large")),
        "{big}"
    );
    let (_, chatty) = api.call(&sid, "output-flood", json!({"output_bytes": 10, "stdout_bytes": 4 << 20})).await?;
    assert_eq!(chatty["status"], "succeeded", "a chatty tool is not an error: {}", chatty["error"]);
    assert_eq!(chatty["output"], "a".repeat(10));
    let stdout = chatty["logs"].as_array().unwrap().iter().find(|l| l["level"] == "stdout").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(stdout.len() < 80 * 1024 && stdout.ends_with("[output truncated]"), "{}", stdout.len());
    Ok(())
}

#[tokio::test]
async fn a_write_over_the_state_quota_fails_the_call_and_commits_nothing() -> anyhow::Result<()> {
    let host = TestHost::builder()
        .bundle_with_manifest(
            "stf",
            test_program("state-then-fail"),
            &manifest("state-then-fail", "state_then_fail.wasm", "[limits]\nstate_kb = 8"),
        )
        .start()
        .await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    let (_, small) = api.call(&sid, "state-then-fail", json!({"key": "a", "fill_bytes": 4000})).await?;
    assert_eq!(small["status"], "succeeded");
    assert_eq!(small["output"]["stored"], true);
    let (_, over) = api.call(&sid, "state-then-fail", json!({"key": "b", "fill_bytes": 5000})).await?;
    assert_eq!(
        (over["status"].as_str(), over["error"]["code"].as_str()),
        (Some("trapped"), Some("state_quota")),
        "{over}"
    );
    // Replacing a value counts its new size, not both.
    let (_, replace) = api.call(&sid, "state-then-fail", json!({"key": "a", "fill_bytes": 8000})).await?;
    assert_eq!(replace["status"], "succeeded", "{replace}");
    let state = api.state(&sid, "state-then-fail").await?;
    assert_eq!(state.keys().collect::<Vec<_>>(), ["a"]);
    assert_eq!(state["a"].len(), 8000);
    Ok(())
}
