//! The sandbox of issue 2: nothing ungranted is reachable, limits stop
//! hostile guests, and the host keeps serving afterwards.

use bulkhead_tests::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

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

#[tokio::test]
async fn unbounded_recursion_and_handle_floods_are_stopped() -> anyhow::Result<()> {
    let host = TestHost::builder()
        .bundle("stack-bomb", test_program("stack-bomb"))
        .bundle_with_manifest(
            "flood",
            test_program("handle-flood"),
            &manifest("handle-flood", "handle_flood.wasm", "[limits]\ntimeout_ms = 20000"),
        )
        .bundle("counter", example_tool("counter"))
        .start()
        .await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    let (_, stack) = api.call(&sid, "stack-bomb", json!({})).await?;
    assert_eq!((stack["status"].as_str(), stack["error"]["code"].as_str()), (Some("trapped"), Some("trap")), "{stack}");
    // Rust's shadow stack lives in linear memory: its overflow is an
    // out-of-bounds access, caught by the sandbox like any other.
    assert!(stack["error"]["message"].as_str().unwrap().contains("wasm trap"), "{stack}");
    let (_, flood) = api.call(&sid, "handle-flood", json!({})).await?;
    assert_eq!(flood["status"], "trapped", "{flood}");
    assert_ne!(flood["error"]["code"], "timeout", "the handle cap stopped it, not the clock: {flood}");
    let (_, ok) = api.call(&sid, "counter", json!({})).await?;
    assert_eq!(ok["status"], "succeeded");
    Ok(())
}

#[tokio::test]
async fn a_granted_secret_is_readable_but_never_stored() -> anyhow::Result<()> {
    const CANARY: &str = "canary-7f3a9c1e5b2d4f6a8e0c";
    let echo = r#"
        name = "secret-echo"
        version = "0.0.0"
        component = "secret_echo.wasm"
        [grants]
        secrets = ["API_TOKEN"]
    "#;
    let host = TestHost::builder()
        .bundle_with_manifest("secret-echo", test_program("secret-echo"), echo)
        .bundle("sandbox-probe", test_program("sandbox-probe"))
        .config("[secrets]\nAPI_TOKEN = { file = \"canary.secret\" }\nGITHUB_TOKEN = { file = \"canary.secret\" }")
        .before_start(|dir| std::fs::write(dir.join("canary.secret"), format!("{CANARY}\n")))
        .start()
        .await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    let (_, call) = api.call(&sid, "secret-echo", json!({"name": "API_TOKEN"})).await?;
    assert_eq!(call["status"], "succeeded", "{call}");
    assert_eq!(call["output"]["echo"], "[REDACTED:API_TOKEN]");
    assert_eq!(call["output"]["nested"]["again"], "x[REDACTED:API_TOKEN]x");
    let state = api.state(&sid, "secret-echo").await?;
    assert_eq!(state.get("cached").map(String::as_str), Some("[REDACTED:API_TOKEN]"), "{state:?}");
    assert!(state.contains_key("key-[REDACTED:API_TOKEN]"), "{state:?}");
    let (_, failed) = api.call(&sid, "secret-echo", json!({"name": "API_TOKEN", "fail": true})).await?;
    assert_eq!(failed["error"]["message"], "failing with [REDACTED:API_TOKEN]");
    let (_, denied) = api.call(&sid, "secret-echo", json!({"name": "GITHUB_TOKEN"})).await?;
    assert_eq!(denied["status"], "failed", "configured but not granted: {denied}");
    let (_, events) = api.get(&format!("/v1/sessions/{sid}/audit?limit=1000")).await?;
    let reads: Vec<&Value> =
        events["events"].as_array().unwrap().iter().filter(|e| e["kind"] == "secret_read").collect();
    assert_eq!(reads.len(), 2);
    assert_eq!(reads[0]["data"], json!({"tool": "secret-echo", "name": "API_TOKEN"}));
    let all = serde_json::to_string(&events)?;
    assert!(!all.contains(CANARY));
    // Nothing the host wrote holds the value: database, WAL, logs.
    let data_dir = host.dir.join("data");
    assert_eq!(files_containing(&data_dir, CANARY.as_bytes()), Vec::<std::path::PathBuf>::new());
    assert!(!host.stderr().contains(CANARY));
    Ok(())
}

#[tokio::test]
async fn granted_env_names_reach_the_tool_and_others_do_not() -> anyhow::Result<()> {
    let probe = r#"
        name = "sandbox-probe"
        version = "0.0.0"
        component = "sandbox_probe.wasm"
        [grants]
        env = ["TZ", "LANG"]
    "#;
    let host = TestHost::builder().bundle_with_manifest("probe", test_program("sandbox-probe"), probe).start().await?;
    let api = host.agent();
    let sid = api.session(json!({"env": {"TZ": "Europe/Paris", "HOME": "/root", "AWS_SECRET": "x"}})).await?;
    let (_, call) = api.call(&sid, "sandbox-probe", json!({})).await?;
    assert_eq!(
        call["output"]["env"],
        json!(["TZ"]),
        "granted and set: TZ; not granted: HOME, AWS_SECRET; granted, unset: LANG"
    );
    let narrowed = api.session(json!({"env": {"TZ": "UTC"}, "grants": {"sandbox-probe": {"env": []}}})).await?;
    let (_, call) = api.call(&narrowed, "sandbox-probe", json!({})).await?;
    assert_eq!(call["output"]["env"], json!([]));
    Ok(())
}

#[tokio::test]
async fn calls_beyond_the_concurrency_cap_get_429_and_nothing_deadlocks() -> anyhow::Result<()> {
    let host = TestHost::builder()
        .bundle_with_manifest(
            "spin",
            test_program("spin-forever"),
            &manifest("spin-forever", "spin_forever.wasm", "[limits]\ntimeout_ms = 400"),
        )
        .bundle("counter", example_tool("counter"))
        .config("[limits]\nmax_concurrent_calls = 4")
        .start()
        .await?;
    let api = host.agent();
    let sessions: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..8 {
            v.push(api.session(json!({})).await?);
        }
        v
    };
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let (api, sid) = (api.clone(), sessions[i % sessions.len()].clone());
            tokio::spawn(async move { api.call(&sid, "spin-forever", json!({})).await })
        })
        .collect();
    let (mut busy, mut done) = (0, 0);
    for t in tasks {
        let (status, body) = t.await??;
        match status {
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(body["error"]["code"], "too_many_calls");
                busy += 1;
            }
            StatusCode::OK => {
                assert_eq!(body["error"]["code"], "timeout");
                done += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(busy > 0 && done >= 4, "busy {busy}, done {done}");
    let (_, ok) = api.call(&sessions[0], "counter", json!({})).await?;
    assert_eq!(ok["status"], "succeeded", "the host recovered");
    Ok(())
}
