//! Issue 4: approval gates that survive restarts, four eyes, expiry,
//! long-polls, async calls, narrowing, and no answered call lost to SIGKILL.

use bulkhead_tests::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

const GATED_COUNTER: &str = r#"
    name = "gated-counter"
    version = "0.1.0"
    component = "counter.wasm"
    [approval]
    required = true
"#;

async fn gated_host(extra_config: &str) -> anyhow::Result<TestHost> {
    TestHost::builder()
        .bundle("counter", example_tool("counter"))
        .bundle_with_manifest("gated", example_tool("counter"), GATED_COUNTER)
        .config(extra_config)
        .start()
        .await
}

#[tokio::test]
async fn a_gated_call_waits_survives_a_restart_and_runs_when_approved() -> anyhow::Result<()> {
    let mut host = gated_host("").await?;
    let agent = host.agent();
    let sid = agent.session(json!({})).await?;
    let (status, pending) = agent.call(&sid, "gated-counter", json!({"by": 7})).await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(pending["status"], "pending_approval");
    assert_eq!(pending["approval"]["required"], true);
    assert!(agent.state(&sid, "gated-counter").await?.is_empty(), "nothing ran");

    let (status, body) = agent.get("/v1/approvals").await?;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("role_required")));
    let cid = pending["id"].as_str().unwrap().to_string();
    let (status, body) = agent.post(&format!("/v1/approvals/{cid}"), json!({"decision": "approve"})).await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "an agent cannot approve its own call: {body}");

    host.restart().await?;
    let approver = host.api(APPROVER);
    let (_, list) = approver.get("/v1/approvals").await?;
    let listed = list["approvals"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "the pending call survived the restart");
    assert_eq!(listed[0]["id"], cid.as_str());
    assert_eq!(listed[0]["requested_by"], "agent");
    assert_eq!(listed[0]["input"]["by"], 7);
    // What the approver needs to decide, beside the call.
    assert_eq!(listed[0]["session_principal"], "agent");
    assert_eq!(listed[0]["boundary"]["approval_required"], true);
    assert!(listed[0]["boundary"]["grants"].is_object(), "{}", listed[0]);
    assert!(listed[0]["review"]["surface"].is_object() || listed[0]["review"]["surface"].is_array(), "{}", listed[0]);

    let (status, done) =
        approver.post(&format!("/v1/approvals/{cid}"), json!({"decision": "approve", "reason": "looks right"})).await?;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["output"]["value"], 7);
    assert_eq!(done["approval"]["decided_by"], "approver");
    assert_eq!(done["approval"]["reason"], "looks right");
    let (status, again) = approver.post(&format!("/v1/approvals/{cid}"), json!({"decision": "deny"})).await?;
    assert_eq!((status, again["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("already_decided")));

    let agent = host.agent();
    let (_, seen) = agent.get(&format!("/v1/sessions/{sid}/calls/{cid}")).await?;
    assert_eq!(seen["status"], "succeeded");
    let kinds = agent.audit_kinds(&sid).await?;
    assert_eq!(kinds[1..], ["call_requested", "approval_decided", "state_committed", "call_finished"]);
    Ok(())
}

#[tokio::test]
async fn a_denied_call_ends_rejected_and_a_long_poll_sees_the_decision() -> anyhow::Result<()> {
    let host = gated_host("").await?;
    let agent = host.agent();
    let sid = agent.session(json!({})).await?;
    let (_, pending) = agent.call(&sid, "gated-counter", json!({})).await?;
    let cid = pending["id"].as_str().unwrap().to_string();
    let poll = {
        let (agent, path) = (agent.clone(), format!("/v1/sessions/{sid}/calls/{cid}?wait=20"));
        tokio::spawn(async move { agent.get(&path).await })
    };
    // Decided while the long-poll waits (not before it arrives).
    eventually("the long-poll to wait", || async {
        Ok((host.metric("bulkhead_call_waiters").await? > 0).then_some(()))
    })
    .await?;
    let (status, denied) = host
        .api(APPROVER)
        .post(&format!("/v1/approvals/{cid}"), json!({"decision": "deny", "reason": "not today"}))
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(denied["status"], "rejected");
    let (status, seen) = poll.await??;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen["status"], "rejected", "the long-poll returned the decision");
    assert_eq!(seen["error"]["message"], "not today");
    assert!(agent.state(&sid, "gated-counter").await?.is_empty());
    // A bad decision changes nothing.
    let (status, _) = host.api(APPROVER).post(&format!("/v1/approvals/{cid}"), json!({"decision": "maybe"})).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    Ok(())
}

#[tokio::test]
async fn four_eyes_an_approver_cannot_decide_its_own_sessions_calls() -> anyhow::Result<()> {
    let host = gated_host("").await?;
    let both = host.api(SELF_APPROVER);
    let sid = both.session(json!({})).await?;
    let (_, pending) = both.call(&sid, "gated-counter", json!({})).await?;
    let cid = pending["id"].as_str().unwrap();
    let (_, list) = both.get("/v1/approvals").await?;
    assert_eq!(list["approvals"], json!([]), "its own calls are not offered to it");
    let (status, body) = both.post(&format!("/v1/approvals/{cid}"), json!({"decision": "approve"})).await?;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("four_eyes")));
    // An approver without the agent role cannot open sessions or call tools.
    let (status, body) = host.api(APPROVER).post("/v1/sessions", json!({})).await?;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("role_required")));
    // A session can ask for approval on a tool whose manifest does not.
    let sid = host.agent().session(json!({"approval_required": ["counter"]})).await?;
    let (status, call) = host.agent().call(&sid, "counter", json!({})).await?;
    assert_eq!((status, call["status"].as_str()), (StatusCode::ACCEPTED, Some("pending_approval")));
    let (status, done) =
        both.post(&format!("/v1/approvals/{}", call["id"].as_str().unwrap()), json!({"decision": "approve"})).await?;
    assert_eq!((status, done["status"].as_str()), (StatusCode::OK, Some("succeeded")));
    Ok(())
}

#[tokio::test]
async fn undecided_approvals_expire_when_configured() -> anyhow::Result<()> {
    let host = gated_host("[approvals]\nexpire_after_seconds = 1").await?;
    let agent = host.agent();
    let sid = agent.session(json!({})).await?;
    let (_, pending) = agent.call(&sid, "gated-counter", json!({})).await?;
    let cid = pending["id"].as_str().unwrap();
    let (_, seen) = agent.get(&format!("/v1/sessions/{sid}/calls/{cid}?wait=10")).await?;
    assert_eq!(
        (seen["status"].as_str(), seen["error"]["code"].as_str()),
        (Some("rejected"), Some("expired")),
        "{seen}"
    );
    let (status, _) = host.api(APPROVER).post(&format!("/v1/approvals/{cid}"), json!({"decision": "approve"})).await?;
    assert_eq!(status, StatusCode::CONFLICT);
    Ok(())
}

#[tokio::test]
async fn respond_async_accepts_at_once_and_the_long_poll_returns_the_result() -> anyhow::Result<()> {
    let host = gated_host("").await?;
    let agent = host.agent();
    let sid = agent.session(json!({})).await?;
    let req = agent
        .request(Method::POST, &format!("/v1/sessions/{sid}/calls"))
        .header("prefer", "respond-async, wait=10")
        .json(&json!({"tool": "counter", "input": {"by": 3}}));
    let (status, accepted) = Api::send(req).await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(accepted["status"], "running");
    let (_, done) =
        agent.get(&format!("/v1/sessions/{sid}/calls/{}?wait=10", accepted["id"].as_str().unwrap())).await?;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["output"]["value"], 3);
    Ok(())
}

#[tokio::test]
async fn patch_narrows_the_boundary_and_refuses_to_widen_it() -> anyhow::Result<()> {
    let host = TestHost::builder()
        .bundle("counter", example_tool("counter"))
        .bundle("notes", example_tool("notes"))
        .start()
        .await?;
    let agent = host.agent();
    let sid = agent.session(json!({})).await?;
    let path = format!("/v1/sessions/{sid}");
    let patch = |body: Value| agent.request(Method::PATCH, &path).json(&body);
    // A call first, so the call path holds the session in memory.
    let (_, call) = agent.call(&sid, "notes", json!({"op": "summarize"})).await?;
    assert_eq!(call["status"], "succeeded", "{call}");
    let (status, s) = Api::send(patch(json!({"grants": {"notes": {"history": false}}}))).await?;
    assert_eq!(status, StatusCode::OK, "{s}");
    assert_eq!(s["tools"]["notes"]["grants"]["history"], false);
    let (_, call) = agent.call(&sid, "notes", json!({"op": "summarize"})).await?;
    assert_eq!(call["status"], "failed", "the narrowed grant is enforced on the next call");

    for widen in [
        json!({"grants": {"notes": {"history": true}}}),
        json!({"tools": ["counter", "other"]}),
        json!({"grants": {"counter": {"secrets": ["X"]}}}),
    ] {
        let (status, body) = Api::send(patch(widen.clone())).await?;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("grant_widening")),
            "{widen}"
        );
    }
    let (_, s) = agent.get(&path).await?;
    assert_eq!(s["tools"]["notes"]["grants"]["history"], false, "a refused PATCH changed nothing");

    let stale = agent.request(Method::PATCH, &path).header("if-match", "\"0\"").json(&json!({"tools": ["counter"]}));
    assert_eq!(Api::send(stale).await?.0, StatusCode::PRECONDITION_FAILED);
    let (status, s) = Api::send(patch(json!({"tools": ["counter"], "approval_required": ["counter"]}))).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(s["tools"].get("notes").is_none());
    assert_eq!(s["tools"]["counter"]["approval_required"], true);
    let (status, _) = agent.call(&sid, "notes", json!({"op": "list"})).await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = agent.call(&sid, "counter", json!({})).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "now gated");
    assert!(agent.audit_kinds(&sid).await?.contains(&"session_narrowed".to_string()));
    Ok(())
}

#[tokio::test]
async fn sigkill_under_load_loses_no_answered_call() -> anyhow::Result<()> {
    let mut host = TestHost::builder().bundle("counter", example_tool("counter")).start().await?;
    let agent = host.agent();
    let sessions = [agent.session(json!({})).await?, agent.session(json!({})).await?];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let so_far = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    for client in 0..12 {
        let (agent, sid, stop, so_far) = (agent.clone(), sessions[client % 2].clone(), stop.clone(), so_far.clone());
        clients.push(tokio::spawn(async move {
            let mut answered = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let body = json!({"tool": "counter", "input": {}, "idempotency_key": format!("c{client}-{i}")});
                match agent.post(&format!("/v1/sessions/{sid}/calls"), body).await {
                    Ok((StatusCode::OK, call)) => {
                        answered.push((sid.clone(), call["id"].as_str().unwrap().to_string()));
                        so_far.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    _ => break, // the host died under this request
                }
            }
            answered
        }));
    }
    // Killed mid-load: once 200 calls are answered, with 12 more in flight.
    eventually("200 answered calls", || async {
        Ok((so_far.load(std::sync::atomic::Ordering::Relaxed) >= 200).then_some(()))
    })
    .await?;
    host.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answered = Vec::new();
    for c in clients {
        answered.extend(c.await?);
    }

    if backend() == Backend::Sqlite {
        let db = rusqlite::Connection::open(host.db_path())?;
        let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        assert_eq!(check, "ok");
    }
    host.restart().await?;
    let agent = host.agent();
    for (sid, cid) in &answered {
        let (status, call) = agent.get(&format!("/v1/sessions/{sid}/calls/{cid}")).await?;
        assert_eq!((status, call["status"].as_str()), (StatusCode::OK, Some("succeeded")), "answered call {cid} lost");
    }
    for sid in &sessions {
        let mut succeeded = 0;
        let mut after = String::new();
        loop {
            let (_, page) =
                agent.get(&format!("/v1/sessions/{sid}/calls?status=succeeded&limit=1000&after={after}")).await?;
            let calls = page["calls"].as_array().unwrap();
            if calls.is_empty() {
                break;
            }
            succeeded += calls.len();
            after = calls.last().unwrap()["id"].as_str().unwrap().to_string();
        }
        let value: usize = agent.state(sid, "counter").await?.get("count/default").map_or(0, |v| v.parse().unwrap());
        assert_eq!(value, succeeded, "every committed call, and only those, moved the counter");
        // The audit chain, paged (through the per-session index and the
        // tail the crash left unfiled): no gap, no fork, every call in it.
        let (mut seq, mut prev) = (0u64, "0".repeat(64));
        loop {
            let (_, page) = agent.get(&format!("/v1/sessions/{sid}/audit?after={seq}&limit=200")).await?;
            let events = page["events"].as_array().unwrap();
            if events.is_empty() {
                break;
            }
            for e in events {
                assert_eq!(e["seq"].as_u64(), Some(seq + 1), "{e}");
                assert_eq!(e["prev_hash"].as_str(), Some(prev.as_str()), "{e}");
                (seq, prev) = (seq + 1, e["hash"].as_str().unwrap().to_string());
            }
        }
        assert!(seq as usize > 3 * succeeded, "{seq} events for {succeeded} calls");
    }
    Ok(())
}

#[tokio::test]
async fn expired_sessions_answer_410_and_are_purged_keeping_their_audit() -> anyhow::Result<()> {
    let host = TestHost::builder()
        .bundle("counter", example_tool("counter"))
        .config("[sessions]\ndefault_ttl_seconds = 1")
        .start()
        .await?;
    let agent = host.agent();
    let short = agent.session(json!({})).await?;
    let long = agent.session(json!({"ttl_seconds": 3600})).await?;
    let (_, s) = agent.get(&format!("/v1/sessions/{short}")).await?;
    assert!(s["expires_at"].is_string());
    // The behaviour is time passing: past the 1 s TTL, not a wait for the host.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (status, body) = agent.call(&short, "counter", json!({})).await?;
    assert!(status == StatusCode::GONE || status == StatusCode::NOT_FOUND, "{status} {body}");
    let (status, _) = agent.get(&format!("/v1/sessions/{long}")).await?;
    assert_eq!(status, StatusCode::OK);
    // The sweeper runs every second: soon the row is gone, the audit stays.
    let last = eventually("the expired session to be purged", || async {
        let rows = host.db_value("SELECT COUNT(*) FROM sessions WHERE id = $1", &short).await?;
        if rows.as_deref() != Some("0") {
            return Ok(None);
        }
        host.db_value("SELECT data FROM audit WHERE session = $1 ORDER BY seq DESC LIMIT 1", &short).await
    })
    .await?;
    assert!(last.contains("expired"), "{last}");
    let (status, body) = agent.get(&format!("/v1/sessions/{short}")).await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    Ok(())
}

#[tokio::test]
async fn metrics_and_usage_account_for_every_call() -> anyhow::Result<()> {
    let host = gated_host("").await?;
    let agent = host.agent();
    let sid = agent.session(json!({})).await?;
    for _ in 0..3 {
        agent.call(&sid, "counter", json!({})).await?;
    }
    agent.call(&sid, "counter", json!({"by": "bad"})).await?;
    agent.call(&sid, "gated-counter", json!({})).await?;
    agent.post(&format!("/v1/sessions/{sid}/messages"), json!({"role": "user", "content": "12345"})).await?;
    let text = host.anonymous().request(Method::GET, "/metrics").send().await?.text().await?;
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
    };
    assert_eq!(value("bulkhead_calls_total{tool=\"counter\",status=\"succeeded\"}"), 3.0);
    assert_eq!(value("bulkhead_calls_total{tool=\"gated-counter\",status=\"pending_approval\"}"), 1.0);
    assert_eq!(value("bulkhead_call_duration_seconds_count{tool=\"counter\"}"), 3.0);
    assert_eq!(value("bulkhead_commit_seconds_count{tool=\"counter\"}"), 3.0);
    assert_eq!(value("bulkhead_pending_approvals"), 1.0);
    assert_eq!(value("bulkhead_sessions"), 1.0);
    assert!(value("bulkhead_fuel_total{tool=\"counter\"}") > 0.0);
    assert!(value("bulkhead_storage_bytes") > 0.0);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, v) = line.rsplit_once(' ').expect("name value");
        assert!(v.parse::<f64>().is_ok(), "unparsable sample: {line}");
    }
    let (_, s) = agent.get(&format!("/v1/sessions/{sid}")).await?;
    assert_eq!(s["usage"]["calls"], 3);
    assert!(s["usage"]["fuel"].as_u64().unwrap() > 0);
    assert_eq!(s["usage"]["stored_bytes"], "count/default".len() + 1 + 5);
    let export = agent.request(Method::GET, &format!("/v1/sessions/{sid}/audit?format=jsonl")).send().await?;
    assert_eq!(export.headers()["content-type"], "application/x-ndjson");
    let lines: Vec<Value> = export.text().await?.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), agent.audit_kinds(&sid).await?.len());
    Ok(())
}

#[tokio::test]
async fn a_retry_during_the_first_call_waits_for_it_and_runs_nothing_twice() -> anyhow::Result<()> {
    let slow = &manifest("spin-forever", "spin_forever.wasm", "[limits]\ntimeout_ms = 1500");
    let host = TestHost::builder().bundle_with_manifest("spin", test_program("spin-forever"), slow).start().await?;
    let agent = host.agent();
    let sid = agent.session(json!({})).await?;
    let body = json!({"tool": "spin-forever", "input": {}, "idempotency_key": "once"});
    let path = format!("/v1/sessions/{sid}/calls");
    let first = {
        let (agent, path, body) = (agent.clone(), path.clone(), body.clone());
        tokio::spawn(async move { agent.post(&path, body).await })
    };
    // The retry comes while the first is running.
    eventually("the first call to run", || async {
        let (_, list) = agent.get(&format!("/v1/sessions/{sid}/calls?status=running")).await?;
        Ok(list["calls"].as_array().is_some_and(|c| !c.is_empty()).then_some(()))
    })
    .await?;
    let (status, retry) = agent.post(&path, body).await?;
    let (_, first) = first.await??;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(retry["id"], first["id"], "the retry got the first call");
    assert_eq!(retry["status"], "trapped", "and waited for it to finish: {retry}");
    let (_, list) = agent.get(&path).await?;
    assert_eq!(list["calls"].as_array().unwrap().len(), 1, "the tool ran once");
    Ok(())
}

/// A client that gives up on a call (a timeout, a dropped connection) does
/// not stop it half-way: the call still ends, recorded, whichever path it
/// took (pipelined, or after its record with an idempotency key).
#[tokio::test]
async fn a_call_whose_client_disconnects_still_finishes() -> anyhow::Result<()> {
    let slow = &manifest("spin-forever", "spin_forever.wasm", "[limits]\ntimeout_ms = 1000");
    let host = TestHost::builder().bundle_with_manifest("spin", test_program("spin-forever"), slow).start().await?;
    let agent = host.agent();
    let sid = agent.session(json!({})).await?;
    let path = format!("/v1/sessions/{sid}/calls");
    for body in [json!({"tool": "spin-forever"}), json!({"tool": "spin-forever", "idempotency_key": "k"})] {
        let gave_up = agent.request(Method::POST, &path).timeout(Duration::from_millis(300)).json(&body).send().await;
        assert!(gave_up.is_err_and(|e| e.is_timeout()), "the client gave up before the call ended");
    }
    let (_, list) = agent.get(&path).await?;
    let ids: Vec<&str> = list["calls"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{list}");
    for id in ids {
        let (_, call) = agent.get(&format!("{path}/{id}?wait=10")).await?;
        assert_eq!(call["status"], "trapped", "ran to its timeout, not left running: {call}");
    }
    Ok(())
}

#[tokio::test]
async fn a_principal_policy_can_require_approval() -> anyhow::Result<()> {
    let token = "gated-agent-token-0000000001";
    let host = TestHost::builder()
        .bundle("counter", example_tool("counter"))
        .principal("gated-agent", token, "roles = [\"agent\"]\ntools = [\"*\"]\napproval_required = [\"counter\"]")
        .start()
        .await?;
    let gated = host.api(token);
    let sid = gated.session(json!({})).await?;
    let (status, call) = gated.call(&sid, "counter", json!({})).await?;
    assert_eq!((status, call["status"].as_str()), (StatusCode::ACCEPTED, Some("pending_approval")), "{call}");
    // Other principals' sessions are not affected.
    let sid = host.agent().session(json!({})).await?;
    let (status, _) = host.agent().call(&sid, "counter", json!({})).await?;
    assert_eq!(status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn a_queued_call_whose_tool_leaves_the_boundary_ends_failed() -> anyhow::Result<()> {
    let slow = &manifest("spin-forever", "spin_forever.wasm", "[limits]\ntimeout_ms = 1500");
    let host = TestHost::builder()
        .bundle_with_manifest("spin", test_program("spin-forever"), slow)
        .bundle("counter", example_tool("counter"))
        .start()
        .await?;
    let agent = host.agent();
    let sid = agent.session(json!({})).await?;
    let calls = format!("/v1/sessions/{sid}/calls");
    let submit =
        || agent.request(Method::POST, &calls).header("prefer", "respond-async").json(&json!({"tool": "spin-forever"}));
    let (status, first) = Api::send(submit()).await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Accepted at once even though it must wait for the first one's turn.
    let (status, second) = Api::send(submit()).await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (_, now) = agent.get(&format!("{calls}/{}", first["id"].as_str().unwrap())).await?;
    assert_eq!(now["status"], "running", "the second was answered while the first ran");
    // Recorded `running` is not yet running its tool: with a shared store
    // the call first takes its turn in the database (a new connection the
    // first time). Well inside the first's 1.5 s, so it is running by now.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let narrow = agent.request(Method::PATCH, &format!("/v1/sessions/{sid}")).json(&json!({"tools": ["counter"]}));
    assert_eq!(Api::send(narrow).await?.0, StatusCode::OK);
    let (_, second) = agent.get(&format!("{calls}/{}?wait=10", second["id"].as_str().unwrap())).await?;
    assert_eq!(
        (second["status"].as_str(), second["error"]["code"].as_str()),
        (Some("failed"), Some("tool_not_allowed")),
        "finished, not left running until a restart: {second}"
    );
    let (_, first) = agent.get(&format!("{calls}/{}?wait=10", first["id"].as_str().unwrap())).await?;
    assert_eq!(first["error"]["code"], "timeout", "the first had started before the PATCH: {first}");
    Ok(())
}

/// Regression: with checkpoints on their own thread, every write
/// transaction began while WAL frames were still to copy, so SQLite never
/// started the WAL over and it grew past 1 GB under sustained load. The
/// writer now finishes each checkpoint between transactions; the WAL stays
/// near its 64 MiB limit (`journal_size_limit`).
#[tokio::test]
async fn the_wal_stays_bounded_under_sustained_load() -> anyhow::Result<()> {
    if !sqlite_only("the_wal_stays_bounded_under_sustained_load") {
        return Ok(());
    }
    let host = bulkhead_tests::load::counter_host().await?;
    let clients = bulkhead_tests::load::clients(&host, 16).await?;
    let wal = host.db_path().with_extension("sqlite3-wal");
    let load = tokio::spawn(async move {
        bulkhead_tests::load::drive(&clients, Duration::from_secs(4), bulkhead_tests::load::Request::CounterCall).await
    });
    let mut peak = 0;
    while !load.is_finished() {
        peak = peak.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let run = load.await?;
    assert!(run.requests > 1000 && run.errors == 0, "the load was real: {} calls, {} errors", run.requests, run.errors);
    assert!(peak < 96 << 20, "WAL peaked at {} MiB over {} calls", peak >> 20, run.requests);
    Ok(())
}
