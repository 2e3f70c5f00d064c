//! Several `bulkhead serve` processes on one PostgreSQL database: every
//! promise of contract §8 and §9 holds whichever host a request reaches.
//! (They run in the default pass of the suite; the postgres pass skips them.)

use bulkhead_tests::postgres::{self, PgServer};
use bulkhead_tests::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

fn skip_in_the_postgres_pass(test: &str) -> bool {
    let skip = backend() == Backend::Postgres;
    if skip {
        eprintln!("{test}: runs in the default pass");
    }
    skip
}

async fn host_on(url: &str, lease_seconds: u64) -> anyhow::Result<TestHost> {
    TestHost::builder()
        .bundle("counter", example_tool("counter"))
        .bundle_with_manifest(
            "spin",
            test_program("spin-forever"),
            "name = \"spin-forever\"\nversion = \"0.0.0\"\ncomponent = \"spin_forever.wasm\"\n[limits]\ntimeout_ms = 20000\n",
        )
        .postgres(url, lease_seconds)
        .start()
        .await
}

async fn two_hosts(db: &str) -> anyhow::Result<(TestHost, TestHost)> {
    let url = postgres::shared().await?.create_database(db).await?;
    Ok((host_on(&url, 2).await?, host_on(&url, 2).await?))
}

fn verify_audit(host: &TestHost) -> anyhow::Result<String> {
    let (code, out, err) = run_cli(&["audit", "verify", "--config", host.config_path().to_str().unwrap()])?;
    anyhow::ensure!(code == 0, "audit verify failed: {out}{err}");
    Ok(out)
}

fn count(state: &std::collections::BTreeMap<String, String>) -> usize {
    state.get("count/default").map_or(0, |v| v.parse().unwrap())
}

/// Calls to one tool in one session from both hosts at once take turns:
/// each call saw a different count, and the counter ends at exactly the
/// number of calls; each client's calls, sent one after another, see
/// increasing counts. (Order among clients that send at once is not
/// checked here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_from_two_hosts_lose_no_update() -> anyhow::Result<()> {
    if skip_in_the_postgres_pass("concurrent_calls_from_two_hosts_lose_no_update") {
        return Ok(());
    }
    let (a, b) = two_hosts("multihost_counter").await?;
    let sid = a.agent().session(json!({})).await?;
    let (clients_per_host, calls_each) = (6, 12);
    let mut tasks = Vec::new();
    for client in 0..2 * clients_per_host {
        let api = if client % 2 == 0 { a.agent() } else { b.agent() };
        let sid = sid.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..calls_each {
                let (status, call) = api.call(&sid, "counter", json!({})).await?;
                anyhow::ensure!(status == StatusCode::OK && call["status"] == "succeeded", "{status} {call}");
                seen.push(call["output"]["value"].as_i64().unwrap());
            }
            Ok(seen)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let seen = t.await??;
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "one client's calls ran in the order sent: {seen:?}");
        all.extend(seen);
    }
    all.sort();
    let total = 2 * clients_per_host * calls_each;
    assert_eq!(all, (1..=total as i64).collect::<Vec<_>>(), "every call saw its own count");
    assert_eq!(count(&b.agent().state(&sid, "counter").await?), total);
    let (_, session) = b.agent().get(&format!("/v1/sessions/{sid}")).await?;
    assert_eq!(session["usage"]["calls"], total, "usage counted on the one shared session");
    verify_audit(&a)?;
    Ok(())
}

/// The same idempotency key sent to both hosts at once, then again to
/// either: one call, run once.
#[tokio::test]
async fn an_idempotent_retry_on_the_other_host_runs_the_tool_once() -> anyhow::Result<()> {
    if skip_in_the_postgres_pass("an_idempotent_retry_on_the_other_host_runs_the_tool_once") {
        return Ok(());
    }
    let (a, b) = two_hosts("multihost_idempotency").await?;
    let sid = a.agent().session(json!({})).await?;
    let body = json!({"tool": "counter", "input": {}, "idempotency_key": "only-once"});
    let path = format!("/v1/sessions/{sid}/calls");
    let (on_a, on_b) = (a.agent(), b.agent());
    let (first, second) = tokio::join!(on_a.post(&path, body.clone()), on_b.post(&path, body.clone()));
    let (first, second) = (first?, second?);
    assert_eq!((first.0, second.0), (StatusCode::OK, StatusCode::OK), "{first:?} {second:?}");
    assert_eq!(first.1["id"], second.1["id"], "one call for one key");
    let (status, retry) = b.agent().post(&path, body).await?;
    assert_eq!((status, &retry["id"]), (StatusCode::OK, &first.1["id"]));
    assert_eq!(count(&a.agent().state(&sid, "counter").await?), 1, "the tool ran once");
    let (_, list) = b.agent().get(&path).await?;
    assert_eq!(list["calls"].as_array().unwrap().len(), 1);
    // If-Match against the one shared version, from the other host.
    let (_, s) = a.agent().get(&format!("/v1/sessions/{sid}")).await?;
    let stale = s["version"].as_i64().unwrap() - 1;
    let stale_call = b.agent().request(reqwest::Method::POST, &path).header("if-match", stale.to_string());
    let (status, body) = Api::send(stale_call.json(&json!({"tool": "counter"}))).await?;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{body}");
    Ok(())
}

/// A call waiting for approval on host A, approved on both hosts at once:
/// one decision wins, the call runs once, and A's long-poll sees its end.
#[tokio::test]
async fn an_approval_decided_on_the_other_host_runs_the_call_once() -> anyhow::Result<()> {
    if skip_in_the_postgres_pass("an_approval_decided_on_the_other_host_runs_the_call_once") {
        return Ok(());
    }
    let (a, b) = two_hosts("multihost_approval").await?;
    let sid = a.agent().session(json!({"approval_required": ["counter"]})).await?;
    let (status, call) = a.agent().call(&sid, "counter", json!({})).await?;
    assert_eq!((status, call["status"].as_str()), (StatusCode::ACCEPTED, Some("pending_approval")), "{call}");
    let cid = call["id"].as_str().unwrap().to_string();
    let waiting = tokio::spawn({
        let api = a.agent();
        let path = format!("/v1/sessions/{sid}/calls/{cid}?wait=30");
        async move { api.get(&path).await }
    });
    let decide = json!({"decision": "approve", "reason": "both at once"});
    let path = format!("/v1/approvals/{cid}");
    let (approver_a, approver_b) = (a.api(APPROVER), b.api(APPROVER));
    let (on_a, on_b) = tokio::join!(approver_a.post(&path, decide.clone()), approver_b.post(&path, decide));
    let mut statuses = [on_a?.0, on_b?.0];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::CONFLICT], "one decision wins");
    let (_, seen) = waiting.await??;
    assert_eq!(seen["status"], "succeeded", "host A's long-poll saw the end of a call run by either: {seen}");
    assert_eq!(count(&a.agent().state(&sid, "counter").await?), 1, "the approved call ran once");
    verify_audit(&b)?;
    Ok(())
}

/// `kill -9` of host A while it runs a call and host B serves a load: B
/// answers every call throughout, and A's running call ends `interrupted`
/// once A's lease expires (not before: B started first, and judged A alive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_host_s_calls_end_interrupted_after_its_lease_and_the_other_keeps_serving() -> anyhow::Result<()> {
    if skip_in_the_postgres_pass("a_killed_host_s_calls_end_interrupted_after_its_lease") {
        return Ok(());
    }
    let (mut a, b) = two_hosts("multihost_kill").await?;
    let sid = a.agent().session(json!({})).await?;
    let spinning = tokio::spawn({
        let api = a.agent();
        let sid = sid.clone();
        async move { api.call(&sid, "spin-forever", json!({})).await }
    });
    let (api_b, sid_b) = (b.agent(), sid.clone());
    let running = eventually("the call to run on host A", || async {
        let (_, list) = api_b.get(&format!("/v1/sessions/{sid_b}/calls?status=running")).await?;
        Ok(list["calls"].as_array().unwrap().first().map(|c| c["id"].as_str().unwrap().to_string()))
    })
    .await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn({
        let (api, sid, stop) = (b.agent(), sid.clone(), stop.clone());
        async move {
            let mut answered = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, call) = api.call(&sid, "counter", json!({})).await?;
                anyhow::ensure!(status == StatusCode::OK, "host B failed a call: {status} {call}");
                answered += 1;
            }
            Ok(answered)
        }
    });
    a.kill9();
    assert!(spinning.await?.is_err(), "A's client saw its connection cut");
    let interrupted = eventually("A's call to end interrupted", || async {
        let (_, call) = b.agent().get(&format!("/v1/sessions/{sid}/calls/{running}")).await?;
        Ok((call["status"] != "running").then_some(call))
    })
    .await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answered: usize = load.await??;
    assert_eq!(interrupted["status"], "interrupted", "{interrupted}");
    assert_eq!(interrupted["error"]["code"], "interrupted");
    assert!(answered > 0, "B served calls while A's lease ran out");
    assert_eq!(count(&b.agent().state(&sid, "counter").await?), answered, "every answered call counted once");
    assert!(b.stderr().contains("now interrupted"), "{}", b.stderr());
    verify_audit(&b)?;
    Ok(())
}

/// PostgreSQL restarted under load: while it is down writes answer 503
/// `storage_unavailable` (never a 500, never internals), then calls succeed
/// again without a host restart; every answered call is committed, the
/// counter matches the calls that succeeded, and the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_answers_503_then_recovers_losing_nothing() -> anyhow::Result<()> {
    if skip_in_the_postgres_pass("postgres_restarted_under_load_answers_503_then_recovers") {
        return Ok(());
    }
    let mut pg = PgServer::start().await?;
    let url = pg.create_database("restarted").await?;
    let host = host_on(&url, 2).await?;
    let sid = host.agent().session(json!({})).await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..4 {
        let (api, sid, stop) = (host.agent(), sid.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let (mut answered, mut refused) = (Vec::new(), 0);
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let body = json!({"tool": "counter", "input": {}, "idempotency_key": format!("c{client}-{i}")});
                let (status, reply) = api.post(&format!("/v1/sessions/{sid}/calls"), body).await?;
                match status {
                    StatusCode::OK => answered.push(reply["id"].as_str().unwrap().to_string()),
                    StatusCode::SERVICE_UNAVAILABLE => {
                        anyhow::ensure!(reply["error"]["code"] == "storage_unavailable", "{reply}");
                        let text = reply.to_string().to_lowercase();
                        anyhow::ensure!(!text.contains("postgres") && !text.contains("sql"), "internals: {reply}");
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => anyhow::bail!("{other} {reply}"),
                }
            }
            Ok::<_, anyhow::Error>((answered, refused))
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    tokio::task::block_in_place(|| pg.stop())?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| pg.start_again())?;
    // Calls succeed again on the same host.
    let api = host.agent();
    eventually("a call to succeed after the restart", || async {
        let (status, _) = api.call(&sid, "counter", json!({})).await?;
        Ok((status == StatusCode::OK).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut answered, mut refused) = (Vec::new(), 0);
    for c in clients {
        let (a, r) = c.await??;
        answered.extend(a);
        refused += r;
    }
    eprintln!("{} answered, {refused} refused while PostgreSQL was down", answered.len());
    for cid in &answered {
        let (_, call) = api.get(&format!("/v1/sessions/{sid}/calls/{cid}")).await?;
        assert_eq!(call["status"], "succeeded", "answered call {cid} lost");
    }
    // Calls whose outcome could not be stored end `failed` by the reaper,
    // without a restart; then the counter is exactly the succeeded calls.
    let succeeded = eventually("no call left running", || async {
        let (_, page) = api.get(&format!("/v1/sessions/{sid}/calls?limit=1000")).await?;
        let calls: Vec<Value> = page["calls"].as_array().unwrap().clone();
        let open = calls.iter().any(|c| c["status"] == "running");
        Ok((!open).then(|| calls.iter().filter(|c| c["status"] == "succeeded").count()))
    })
    .await?;
    assert_eq!(count(&api.state(&sid, "counter").await?), succeeded);
    verify_audit(&host)?;
    Ok(())
}

/// `bulkhead migrate` copies a SQLite host's folder into PostgreSQL: a host
/// on the copy answers the same sessions, messages, state, calls, approvals
/// and audit, continues each chain, and `audit verify` passes. A running
/// host's folder and a database already holding data are refused.
#[tokio::test]
async fn migrate_copies_a_sqlite_folder_that_a_postgres_host_then_serves() -> anyhow::Result<()> {
    if skip_in_the_postgres_pass("migrate_copies_a_sqlite_folder") {
        return Ok(());
    }
    let mut old = TestHost::builder().bundle("counter", example_tool("counter")).start().await?;
    let agent = old.agent();
    let sid = agent.session(json!({"labels": {"team": "ops"}})).await?;
    agent.post(&format!("/v1/sessions/{sid}/messages"), json!({"role": "user", "content": "héllo"})).await?;
    for i in 0..3 {
        let body = json!({"tool": "counter", "input": {}, "idempotency_key": format!("k{i}")});
        agent.post(&format!("/v1/sessions/{sid}/calls"), body).await?;
    }
    let gated = agent.session(json!({"approval_required": ["counter"]})).await?;
    let (_, pending) = agent.call(&gated, "counter", json!({})).await?;
    let (_, decided) = agent.call(&gated, "counter", json!({})).await?;
    let decided_id = decided["id"].as_str().unwrap();
    old.api(APPROVER).post(&format!("/v1/approvals/{decided_id}"), json!({"decision": "deny", "reason": "no"})).await?;

    let url = postgres::shared().await?.create_database("migrated").await?;
    let from = format!("sqlite:{}", old.dir.join("data").display());
    let migrate = |from: String, url: String| {
        std::process::Command::new(binary())
            .args(["migrate", "--from", &from, "--to-env", "TARGET_URL"])
            .env("TARGET_URL", url)
            .output()
    };
    let busy = migrate(from.clone(), url.clone())?;
    assert!(!busy.status.success(), "a folder a host is running on is refused");
    assert!(String::from_utf8_lossy(&busy.stderr).contains("another"), "{}", String::from_utf8_lossy(&busy.stderr));

    let read_all = |api: Api| {
        let (sid, gated) = (sid.clone(), gated.clone());
        async move {
            let mut seen = Vec::new();
            for path in [
                format!("/v1/sessions/{sid}"),
                format!("/v1/sessions/{sid}/messages"),
                format!("/v1/sessions/{sid}/calls"),
                format!("/v1/sessions/{sid}/audit"),
                format!("/v1/sessions/{sid}/state/counter"),
                format!("/v1/sessions/{gated}/calls"),
                format!("/v1/sessions/{gated}/audit"),
            ] {
                let (status, body) = api.get(&path).await?;
                anyhow::ensure!(status == StatusCode::OK, "{path}: {status} {body}");
                seen.push(body);
            }
            Ok::<_, anyhow::Error>(seen)
        }
    };
    let before = read_all(old.agent()).await?;
    let pending_for_approver = old.api(APPROVER).get("/v1/approvals").await?.1;
    old.kill9();
    let done = migrate(from.clone(), url.clone())?;
    let out = String::from_utf8_lossy(&done.stdout);
    assert!(done.status.success(), "{out}{}", String::from_utf8_lossy(&done.stderr));
    assert!(out.contains("sessions: 2 rows") && out.contains("events verified"), "{out}");

    let new = TestHost::builder().bundle("counter", example_tool("counter")).postgres(&url, 2).start().await?;
    let mut after = read_all(new.agent()).await?;
    // Storage-time runs on between the two reads; the rest is copied as is.
    let hours = |s: &Value| s["usage"]["stored_mib_hours"].as_f64().expect("stored_mib_hours");
    assert!(hours(&after[0]) >= hours(&before[0]) && hours(&before[0]) > 0.0, "{} {}", after[0], before[0]);
    after[0]["usage"]["stored_mib_hours"] = before[0]["usage"]["stored_mib_hours"].clone();
    assert_eq!(after, before, "the copy answers what the SQLite host did");
    assert_eq!(new.api(APPROVER).get("/v1/approvals").await?.1, pending_for_approver);
    assert_eq!(pending["status"], "pending_approval");
    verify_audit(&new)?;
    // The copy goes on: the counter and the chain continue.
    let (_, next) = new.agent().call(&sid, "counter", json!({})).await?;
    assert_eq!(next["output"]["value"], 4, "{next}");
    let out = verify_audit(&new)?;
    assert!(out.contains("events verified"), "{out}");

    let again = migrate(from, url)?;
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    Ok(())
}

/// A host that loses its lease while a call runs (stopped with SIGSTOP
/// past the lease) finds the call ended `interrupted` by the other host
/// when it resumes: its outcome is not stored (a call is finished once)
/// and its client is told so with 409 `call_interrupted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_lost_its_lease_does_not_overwrite_the_interrupted_call() -> anyhow::Result<()> {
    if skip_in_the_postgres_pass("a_host_that_lost_its_lease_does_not_overwrite") {
        return Ok(());
    }
    let url = postgres::shared().await?.create_database("multihost_lost_lease").await?;
    let short = "name = \"spin-forever\"\nversion = \"0.0.0\"\ncomponent = \"spin_forever.wasm\"\n[limits]\ntimeout_ms = 3000\n";
    let start = || {
        TestHost::builder().bundle_with_manifest("spin", test_program("spin-forever"), short).postgres(&url, 2).start()
    };
    let (a, b) = (start().await?, start().await?);
    let sid = a.agent().session(json!({})).await?;
    let spinning = tokio::spawn({
        let (api, sid) = (a.agent(), sid.clone());
        async move { api.call(&sid, "spin-forever", json!({})).await }
    });
    let (api_b, sid_b) = (b.agent(), sid.clone());
    let cid = eventually("the call to run on host A", || async {
        let (_, list) = api_b.get(&format!("/v1/sessions/{sid_b}/calls?status=running")).await?;
        Ok(list["calls"].as_array().unwrap().first().map(|c| c["id"].as_str().unwrap().to_string()))
    })
    .await?;
    let pid = a.pid().unwrap().to_string();
    std::process::Command::new("kill").args(["-STOP", &pid]).status()?;
    let interrupted = eventually("B to end A's call interrupted", || async {
        let (_, call) = b.agent().get(&format!("/v1/sessions/{sid}/calls/{cid}")).await?;
        Ok((call["status"] != "running").then_some(call))
    })
    .await;
    std::process::Command::new("kill").args(["-CONT", &pid]).status()?;
    let interrupted = interrupted?;
    assert_eq!(interrupted["status"], "interrupted", "{interrupted}");
    let (status, body) = spinning.await??;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("call_interrupted")), "{body}");
    let (_, after) = b.agent().get(&format!("/v1/sessions/{sid}/calls/{cid}")).await?;
    assert_eq!(after["status"], "interrupted", "the resumed host did not overwrite it: {after}");
    verify_audit(&b)?;
    Ok(())
}
