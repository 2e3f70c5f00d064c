//! Contract §8: what is answered survives `kill -9`; failed calls write no
//! state; calls cut off by a crash end `interrupted`; the audit chain holds.

use bulkhead_tests::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn counter_state_persists_across_calls_and_sigkill() -> anyhow::Result<()> {
    let mut host = TestHost::builder().bundle("counter", example_tool("counter")).start().await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    for expected in 1..=3 {
        let (status, call) = api.call(&sid, "counter", json!({})).await?;
        assert_eq!(status, StatusCode::OK, "{call}");
        assert_eq!(call["status"], "succeeded");
        assert_eq!(call["output"]["value"], expected);
    }
    let (status, _) =
        api.post(&format!("/v1/sessions/{sid}/messages"), json!({"role": "user", "content": "remember me"})).await?;
    assert_eq!(status, StatusCode::CREATED);

    host.restart().await?;
    let api = host.agent();
    let (_, call) = api.call(&sid, "counter", json!({"by": 10})).await?;
    assert_eq!(call["output"]["value"], 13, "state survived SIGKILL: {call}");
    assert_eq!(api.state(&sid, "counter").await?["count/default"], "13");
    let (_, msgs) = api.get(&format!("/v1/sessions/{sid}/messages")).await?;
    assert_eq!(msgs["messages"][0]["content"], "remember me");
    let (_, session) = api.get(&format!("/v1/sessions/{sid}")).await?;
    assert_eq!(session["usage"]["calls"], 4);
    assert_eq!(session["version"], 5, "4 calls and 1 message each bumped the version");
    Ok(())
}

#[tokio::test]
async fn a_call_that_fails_or_traps_after_writing_commits_no_state() -> anyhow::Result<()> {
    let host = TestHost::builder().bundle("state-then-fail", test_program("state-then-fail")).start().await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    let (_, ok) = api.call(&sid, "state-then-fail", json!({"key": "k", "value": "first", "then": "ok"})).await?;
    assert_eq!(ok["status"], "succeeded", "{ok}");

    let (status, failed) =
        api.call(&sid, "state-then-fail", json!({"key": "k", "value": "second", "then": "error"})).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "tool_error");
    assert_eq!(failed["usage"]["state_bytes_written"], 0);

    let (_, trapped) = api.call(&sid, "state-then-fail", json!({"key": "k", "value": "third", "then": "trap"})).await?;
    assert_eq!(trapped["status"], "trapped");
    assert_eq!(trapped["error"]["code"], "trap");

    let (_, other) = api.call(&sid, "state-then-fail", json!({"key": "other", "value": "x", "then": "error"})).await?;
    assert_eq!(other["status"], "failed");

    let state = api.state(&sid, "state-then-fail").await?;
    assert_eq!(state.len(), 1, "only the successful call's write: {state:?}");
    assert_eq!(state["k"], "first");
    let kinds = api.audit_kinds(&sid).await?;
    assert_eq!(kinds.iter().filter(|k| *k == "state_committed").count(), 1, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| *k == "call_finished").count(), 4);
    Ok(())
}

/// What a later call reads is what earlier calls committed: the host keeps
/// committed state in memory, and a failed call's writes, a restart, and a
/// state too large to keep in memory must not change what a call sees.
#[tokio::test]
async fn later_calls_read_exactly_the_committed_state() -> anyhow::Result<()> {
    let manifest = r#"
        name = "state-then-fail"
        version = "0.0.0"
        component = "state_then_fail.wasm"
        [limits]
        state_kb = 4096
    "#;
    let mut host = TestHost::builder()
        .bundle_with_manifest("state-then-fail", test_program("state-then-fail"), manifest)
        .start()
        .await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    let read = |key: &'static str| {
        let (api, sid) = (api.clone(), sid.clone());
        async move {
            let (_, r) = api.call(&sid, "state-then-fail", json!({"key": key, "read": true})).await?;
            assert_eq!(r["status"], "succeeded", "{r}");
            anyhow::Ok(r["output"].clone())
        }
    };
    assert_eq!(read("k").await?, json!({"value": null, "len": null, "keys": []}));
    for (value, then) in [("first", "ok"), ("second", "error"), ("third", "trap"), ("fourth", "ok"), ("fifth", "error")]
    {
        api.call(&sid, "state-then-fail", json!({"key": "k", "value": value, "then": then})).await?;
    }
    assert_eq!(read("k").await?["value"], "fourth", "the failed calls' writes are not seen");

    // 3 MiB: more than the host keeps in memory for one tool; read key by key.
    let (_, big) = api.call(&sid, "state-then-fail", json!({"key": "big", "fill_bytes": 3 << 20})).await?;
    assert_eq!(big["output"]["stored"], true, "{big}");
    let seen = read("big").await?;
    assert_eq!((seen["len"].clone(), seen["keys"].clone()), (json!(3 << 20), json!(["big", "k"])));
    let (_, over) = api.call(&sid, "state-then-fail", json!({"key": "more", "fill_bytes": 2 << 20})).await?;
    assert_eq!(over["error"]["code"], "state_quota", "the quota counts the large state: {over}");

    host.restart().await?;
    let api = host.agent();
    let (_, r) = api.call(&sid, "state-then-fail", json!({"key": "k", "read": true})).await?;
    assert_eq!((r["output"]["value"].clone(), r["output"]["keys"].clone()), (json!("fourth"), json!(["big", "k"])));
    Ok(())
}

#[tokio::test]
async fn calls_running_when_the_host_dies_are_interrupted_after_restart() -> anyhow::Result<()> {
    let manifest = r#"
        name = "spin-forever"
        version = "0.0.0"
        component = "spin_forever.wasm"
        [limits]
        timeout_ms = 20000
    "#;
    let mut host =
        TestHost::builder().bundle_with_manifest("spin", test_program("spin-forever"), manifest).start().await?;
    let session = host.agent().open(json!({})).await?;
    let sid = session.id.clone();
    let pending = tokio::spawn({
        let session = session.clone();
        async move { session.call("spin-forever", json!({})).await }
    });
    eventually("the call to show as running", || async {
        Ok((!session.calls_with("running").await?.is_empty()).then_some(()))
    })
    .await?;
    host.restart().await?;
    assert!(pending.await?.is_err(), "the client saw its connection cut, not an answer");
    let api = host.agent();
    // SQLite: at once (the host owns the folder). PostgreSQL: once the dead
    // host's lease expired (and the new host held its own for a lease).
    let calls = eventually("the call to end interrupted", || async {
        let (_, list) = api.get(&format!("/v1/sessions/{sid}/calls")).await?;
        let calls = list["calls"].as_array().unwrap().clone();
        Ok((calls.iter().all(|c| c["status"] != "running")).then_some(calls))
    })
    .await?;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["status"], "interrupted");
    assert_eq!(calls[0]["error"]["code"], "interrupted");
    assert!(host.stderr().contains("now interrupted"));
    Ok(())
}

#[tokio::test]
async fn audit_chain_verifies_and_tampering_is_named() -> anyhow::Result<()> {
    let mut host = TestHost::builder().bundle("counter", example_tool("counter")).start().await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    api.call(&sid, "counter", json!({})).await?;
    api.post(&format!("/v1/sessions/{sid}/messages"), json!({"role": "assistant", "content": "done"})).await?;
    let kinds = api.audit_kinds(&sid).await?;
    assert_eq!(kinds, ["session_created", "call_requested", "state_committed", "call_finished", "message_appended"]);
    let (_, events) = api.get(&format!("/v1/sessions/{sid}/audit")).await?;
    let events = events["events"].as_array().unwrap().clone();
    for pair in events.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"], "each event chains to the one before");
    }
    host.kill9();

    let config = host.config_path();
    let config = config.to_str().unwrap();
    let (code, out, _) = run_cli(&["audit", "verify", "--config", config])?;
    assert_eq!(code, 0, "{out}");
    // The session's 5 and the tools chain's first `tool_updated`.
    assert!(out.contains("6 events verified"), "{out}");
    if !sqlite_only("audit tampering (edits the SQLite file)") {
        return Ok(());
    }

    // Each kind of tampering, on a fresh copy of the database.
    let db = rusqlite::Connection::open(host.db_path())?;
    db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    drop(db);
    let pristine = std::fs::read(host.db_path())?;
    let tamperings = [
        (vec!["UPDATE audit SET data = '{\"tool\":\"forged\"}' WHERE session = ?1 AND seq = 3"], 3),
        (vec!["DELETE FROM audit WHERE session = ?1 AND seq = 2"], 3),
        (
            vec![
                "UPDATE audit SET seq = 100 WHERE session = ?1 AND seq = 2",
                "UPDATE audit SET seq = 2 WHERE session = ?1 AND seq = 3",
                "UPDATE audit SET seq = 3 WHERE session = ?1 AND seq = 100",
            ],
            2,
        ),
        (vec!["UPDATE audit SET at = '2020-01-01T00:00:00.000Z' WHERE session = ?1 AND seq = 5"], 5),
    ];
    for (statements, broken_seq) in tamperings {
        std::fs::write(host.db_path(), &pristine)?;
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", host.db_path().display()));
        }
        let db = rusqlite::Connection::open(host.db_path())?;
        for sql in &statements {
            db.execute(sql, [&sid])?;
        }
        drop(db);
        let sql = statements.join("; ");
        let (code, out, _) = run_cli(&["audit", "verify", "--config", config])?;
        assert_eq!(code, 1, "{sql}: {out}");
        assert!(out.contains(&format!("session {sid} seq {broken_seq}")), "{sql}: names the broken record: {out}");
    }
    Ok(())
}

#[tokio::test]
async fn parallel_increments_of_one_counter_lose_nothing() -> anyhow::Result<()> {
    let host = TestHost::builder().bundle("counter", example_tool("counter")).start().await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    let other = api.session(json!({})).await?;
    let mut tasks = Vec::new();
    for client in 0..16 {
        let api = api.clone();
        let sid = if client % 4 == 3 { other.clone() } else { sid.clone() };
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let (status, call) = api.call(&sid, "counter", json!({})).await?;
                anyhow::ensure!(status == StatusCode::OK && call["status"] == "succeeded", "{status} {call}");
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    assert_eq!(api.state(&sid, "counter").await?["count/default"], "120");
    assert_eq!(api.state(&other, "counter").await?["count/default"], "40");
    Ok(())
}

/// A full disk, made real by a small `[storage] max_size_mb`: writes answer
/// 503 without internals and change nothing, reads go on, and once a
/// session is deleted the host takes writes again. A call whose outcome
/// could not be stored does not stay `running`: it ends `failed`, its state
/// changes dropped.
#[tokio::test]
async fn a_full_database_refuses_writes_cleanly_and_recovers() -> anyhow::Result<()> {
    let host = TestHost::builder()
        .bundle("counter", example_tool("counter"))
        .bundle("flood", test_program("output-flood"))
        .config("[storage]\nmax_size_mb = 1")
        .start()
        .await?;
    let api = host.agent();
    let filler = api.session(json!({})).await?;
    let sid = api.session(json!({})).await?;
    // Room set aside: deleted once the database is full, it frees 14 pages
    // (measured), enough for a call's `running` record but not for a 200 KB output.
    let spare = api.session(json!({})).await?;
    let (status, body) = api
        .post(&format!("/v1/sessions/{spare}/messages"), json!({"role": "user", "content": "s".repeat(60_000)}))
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let messages = format!("/v1/sessions/{filler}/messages");
    // Large messages first, then smaller ones to use up what is left.
    let mut refused = None;
    for size in [60_000, 2_000, 100] {
        for _ in 0..200 {
            let (status, body) = api.post(&messages, json!({"role": "user", "content": "x".repeat(size)})).await?;
            if status == StatusCode::SERVICE_UNAVAILABLE {
                refused = Some(body);
                break;
            }
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
    }
    let refused = refused.expect("1 MiB fills up");
    assert_eq!(refused["error"]["code"], "storage_unavailable", "{refused}");
    assert!(!refused.to_string().to_lowercase().contains("sqlite"), "no internals: {refused}");

    // Calls: each either succeeds or answers 503; none is left half-done.
    let (mut succeeded, mut unavailable) = (0, 0);
    for _ in 0..20 {
        let (status, call) = api.call(&sid, "counter", json!({})).await?;
        match status {
            StatusCode::OK => {
                assert_eq!(call["status"], "succeeded", "{call}");
                succeeded += 1;
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(call["error"]["code"], "storage_unavailable", "{call}");
                unavailable += 1;
            }
            other => panic!("{other}: {call}"),
        }
    }
    assert!(unavailable > 0, "the full database refused calls");
    // Reads go on.
    let (status, _) = api.get(&format!("/v1/sessions/{sid}")).await?;
    assert_eq!(status, StatusCode::OK);
    let state = api.state(&sid, "counter").await?;
    assert_eq!(state.get("count/default").map(String::as_str).unwrap_or("0"), succeeded.to_string());

    // A call that gets its `running` record in but not its outcome. (With
    // an idempotency key the record commits before the tool runs; without,
    // the two may share a transaction and fail together, leaving nothing.)
    let (status, body) = api.delete(&format!("/v1/sessions/{spare}")).await?;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let input = json!({"output_bytes": 200_000});
    let flood = json!({"tool": "output-flood", "input": &input, "idempotency_key": "flood-1"});
    let (status, flood) = api.post(&format!("/v1/sessions/{sid}/calls"), flood).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{flood}");
    assert_eq!(flood["error"]["code"], "storage_unavailable", "{flood}");

    // Deleting a session frees its pages; writes work again.
    let (status, body) = api.delete(&format!("/v1/sessions/{filler}")).await?;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, call) = api.call(&sid, "counter", json!({})).await?;
    assert_eq!(status, StatusCode::OK, "{call}");
    assert_eq!(call["output"]["value"], succeeded + 1, "only answered calls changed the state");
    // The call whose outcome failed to commit ends `failed` soon after.
    eventually("no call left running", || async {
        let (_, list) = api.get(&format!("/v1/sessions/{sid}/calls?status=running")).await?;
        Ok(list["calls"].as_array().is_some_and(|c| c.is_empty()).then_some(()))
    })
    .await?;
    let (_, list) = api.get(&format!("/v1/sessions/{sid}/calls?limit=100")).await?;
    let mut failed = Vec::new();
    for call in list["calls"].as_array().unwrap() {
        match call["status"].as_str() {
            Some("succeeded") => {}
            Some("failed") => {
                assert_eq!(call["error"]["code"], "storage_unavailable", "{call}");
                failed.push(call["tool"].as_str().unwrap_or_default().to_owned());
            }
            _ => panic!("{call}"),
        }
    }
    assert!(failed.iter().any(|t| t == "output-flood"), "the flood call ended failed: {failed:?}");
    let metrics = host.anonymous().request(reqwest::Method::GET, "/metrics").send().await?.text().await?;
    assert!(metrics.contains(r#"bulkhead_calls_total{tool="output-flood",status="failed"} 1"#), "{metrics}");
    // Its key replays that outcome; a retry takes a new key (README).
    let again = json!({"tool": "output-flood", "input": input, "idempotency_key": "flood-1"});
    let (status, replay) = api.post(&format!("/v1/sessions/{sid}/calls"), again).await?;
    assert_eq!((status, replay["status"].as_str()), (StatusCode::OK, Some("failed")), "{replay}");
    Ok(())
}

/// One host per data folder: a second `serve`, or a `bulkhead run` with
/// the folder as its state, is refused before it writes anything (it would
/// fork the audit chains and mark the first host's running calls
/// `interrupted`); the first host goes on as before; a read-only
/// `audit verify` runs beside it; once the first host is killed, the
/// folder is free again.
#[tokio::test]
async fn a_second_host_on_the_same_data_folder_is_refused() -> anyhow::Result<()> {
    let mut host = TestHost::builder().bundle("counter", example_tool("counter")).start().await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    let (_, call) = api.call(&sid, "counter", json!({})).await?;
    assert_eq!(call["output"]["value"], 1, "{call}");
    let pid = host.pid().expect("running");
    let config = host.config_path();
    let data = host.dir.join("data");

    let second = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(binary())
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        // It must give up on its own; a second host that starts would run forever.
        for _ in 0..600 {
            if let Some(status) = child.try_wait()? {
                let mut stderr = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().expect("piped"), &mut stderr)?;
                return anyhow::Ok((status.code(), stderr));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = child.kill();
        anyhow::bail!("a second host on the same data folder kept running")
    })
    .await??;
    assert_ne!(second.0, Some(0), "refused: {}", second.1);
    assert!(second.1.contains(&format!("in use by another bulkhead process (pid {pid})")), "{}", second.1);

    let bundle = example_tool("counter");
    let (code, _, stderr) =
        run_cli(&["run", bundle.to_str().unwrap(), "--input", "{}", "--state-dir", data.to_str().unwrap()])?;
    assert_ne!(code, 0, "bulkhead run on a live host's folder is refused: {stderr}");
    assert!(stderr.contains("in use by another bulkhead process"), "{stderr}");

    let (_, call) = api.call(&sid, "counter", json!({})).await?;
    assert_eq!(call["output"]["value"], 2, "the first host's state is untouched: {call}");
    let (_, calls) = api.get(&format!("/v1/sessions/{sid}/calls")).await?;
    let statuses: Vec<&str> =
        calls["calls"].as_array().unwrap().iter().map(|c| c["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["succeeded", "succeeded"], "nothing marked interrupted: {calls}");
    let config = host.config_path();
    let (code, out, err) = run_cli(&["audit", "verify", "--config", config.to_str().unwrap()])?;
    assert_eq!(code, 0, "read-only verification runs beside the host: {out}{err}");

    host.restart().await?;
    let (_, call) = host.agent().call(&sid, "counter", json!({})).await?;
    assert_eq!(call["output"]["value"], 3, "free again after kill -9: {call}");
    Ok(())
}

/// Issue 30's load case: 1,000 calls in flight at once over 200 sessions,
/// the host killed with SIGKILL while they run. Every answered call is
/// `succeeded` after the restart, no call is left `running`, each session's
/// counter equals its succeeded calls, and every audit chain verifies.
#[tokio::test]
async fn a_thousand_parallel_calls_over_200_sessions_survive_sigkill() -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const SESSIONS: usize = 200;
    const CALLS: usize = 1000;
    let mut host = TestHost::builder()
        .bundle("counter", example_tool("counter"))
        .config("[limits]\nmax_concurrent_calls = 1024\n")
        .start()
        .await?;
    let agent = host.agent();
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(agent.session(json!({})).await?);
    }
    let answered_so_far = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(tokio::sync::Barrier::new(CALLS + 1));
    let mut clients = Vec::new();
    for i in 0..CALLS {
        let (agent, sid, so_far, start) =
            (agent.clone(), sessions[i % SESSIONS].clone(), answered_so_far.clone(), start.clone());
        clients.push(tokio::spawn(async move {
            start.wait().await;
            let body = json!({"tool": "counter", "input": {}, "idempotency_key": format!("load-{i}")});
            match agent.post(&format!("/v1/sessions/{sid}/calls"), body).await {
                Ok((StatusCode::OK, call)) => {
                    so_far.fetch_add(1, Ordering::Relaxed);
                    Ok(Some((sid, call["id"].as_str().unwrap().to_string())))
                }
                // Only the kill may stop a call: no 429, no 5xx before it.
                Ok((status, body)) => Err(anyhow::anyhow!("call {i} answered {status}: {body}")),
                Err(_) => Ok(None), // the host died under this request
            }
        }));
    }
    start.wait().await;
    // Killed mid-load: a tenth of the calls answered, the rest in flight.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while answered_so_far.load(Ordering::Relaxed) < CALLS / 10 {
        anyhow::ensure!(std::time::Instant::now() < deadline, "100 calls were not answered in 60 s");
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    host.kill9();
    let mut answered = Vec::new();
    for c in clients {
        answered.extend(c.await??);
    }
    assert!(answered.len() < CALLS, "the kill came before every call was answered");
    eprintln!("{} of {CALLS} calls answered before SIGKILL", answered.len());

    host.restart().await?;
    let agent = host.agent();
    for (sid, cid) in &answered {
        let (status, call) = agent.get(&format!("/v1/sessions/{sid}/calls/{cid}")).await?;
        assert_eq!((status, call["status"].as_str()), (StatusCode::OK, Some("succeeded")), "answered call {cid} lost");
    }
    let mut succeeded_total = 0;
    for sid in &sessions {
        // SQLite: interrupted at the restart; PostgreSQL: once the dead
        // host's lease expired.
        let calls = eventually("no call left running", || async {
            let (_, page) = agent.get(&format!("/v1/sessions/{sid}/calls?limit=1000")).await?;
            let calls = page["calls"].as_array().unwrap().clone();
            Ok(calls.iter().all(|c| c["status"] != "running").then_some(calls))
        })
        .await?;
        assert!(calls.iter().all(|c| ["succeeded", "interrupted"].contains(&c["status"].as_str().unwrap())));
        let succeeded = calls.iter().filter(|c| c["status"] == "succeeded").count();
        let value: usize = agent.state(sid, "counter").await?.get("count/default").map_or(0, |v| v.parse().unwrap());
        assert_eq!(value, succeeded, "every committed call, and only those, moved the counter of {sid}");
        succeeded_total += succeeded;
    }
    host.kill9();
    let config = host.config_path();
    let (code, out, err) = run_cli(&["audit", "verify", "--config", config.to_str().unwrap()])?;
    assert_eq!(code, 0, "every chain verifies: {out}{err}");
    let events: usize = out
        .split_whitespace()
        .skip_while(|w| *w != "intact:")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no event count in {out:?}"))?;
    assert!(events > SESSIONS + 3 * succeeded_total, "{events} events for {succeeded_total} calls: {out}");
    Ok(())
}
