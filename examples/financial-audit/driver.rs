//! The financial-audit scenario, end to end over the HTTP API:
//!
//! 1. start the host; the `audit-agent` creates a session with a narrowed
//!    boundary (four tools, nothing else);
//! 2. it queries both ledgers, reconciles them and records its reasoning as
//!    session messages;
//! 3. it requests an adjustment for each discrepancy: they wait for approval;
//! 4. the host stops (the "hours later" gap) and starts again;
//! 5. the `auditor` lists the pending adjustments, approves two, denies one;
//! 6. the agent resumes, writes the report, and the driver prints it with the
//!    session's usage and verifies the audit chain with `bulkhead audit verify`.
//!
//! Run: `cargo run --release -p bulkhead-tests --bin financial-audit`
//! (after `scripts/build-guests` and `cargo build --release`). Exits non-zero
//! when any step does not go as the scenario expects.

use anyhow::{Context, Result, ensure};
use bulkhead_tests::{Api, TestHost, repo_root, run_cli};
use serde_json::{Value, json};

const AGENT_TOKEN: &str = "audit-agent-token-3f9c2a71d4";
const AUDITOR_TOKEN: &str = "auditor-token-8b1e5d06c2a9";

fn main() -> Result<()> {
    // SAFETY: set before any thread starts (the runtime is built below).
    unsafe {
        std::env::set_var("BULKHEAD_TOKEN_AUDIT_AGENT", AGENT_TOKEN);
        std::env::set_var("BULKHEAD_TOKEN_AUDITOR", AUDITOR_TOKEN);
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(scenario())
}

/// A working copy of the example folder, with tools_dir made absolute.
fn working_copy() -> Result<std::path::PathBuf> {
    let src = repo_root().join("examples/financial-audit");
    let dir = std::env::temp_dir().join(format!("bulkhead-financial-audit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("ledgers"))?;
    std::fs::create_dir_all(dir.join("work/adjustments"))?;
    for f in ["bank.csv", "books.csv"] {
        std::fs::copy(src.join("ledgers").join(f), dir.join("ledgers").join(f))?;
    }
    let tools = repo_root().join("guest-tools");
    let config = std::fs::read_to_string(src.join("bulkhead.toml"))?
        .replace("tools_dir = \"../../guest-tools\"", &format!("tools_dir = \"{}\"", tools.display()));
    std::fs::write(dir.join("bulkhead.toml"), config)?;
    Ok(dir)
}

fn step(n: u32, text: &str) {
    println!("\n== {n}. {text}");
}

async fn say(agent: &Api, sid: &str, content: &str) -> Result<()> {
    let (status, _) =
        agent.post(&format!("/v1/sessions/{sid}/messages"), json!({"role": "assistant", "content": content})).await?;
    ensure!(status.as_u16() == 201, "message: {status}");
    println!("   agent: {content}");
    Ok(())
}

async fn call_ok(agent: &Api, sid: &str, tool: &str, input: Value) -> Result<Value> {
    let (status, call) = agent.call(sid, tool, input).await?;
    ensure!(status.as_u16() == 200 && call["status"] == "succeeded", "{tool}: {status} {call}");
    Ok(call["output"].clone())
}

async fn scenario() -> Result<()> {
    let dir = working_copy()?;
    let mut host = TestHost::start_in(dir.clone()).await?;
    let agent = host.api(AGENT_TOKEN);

    step(1, "the audit agent opens a session with a narrowed boundary");
    let (status, session) = agent
        .post(
            "/v1/sessions",
            json!({
                "tools": ["ledger-query", "reconcile", "post-adjustment", "audit-report"],
                "labels": {"case": "october-close"},
                "ttl_seconds": 86400,
            }),
        )
        .await?;
    ensure!(status.as_u16() == 201, "session: {session}");
    let sid = session["id"].as_str().context("session id")?.to_string();
    println!(
        "   session {sid}, tools: {}",
        session["tools"].as_object().unwrap().keys().cloned().collect::<Vec<_>>().join(", ")
    );

    step(2, "query both ledgers and reconcile them");
    say(&agent, &sid, "Plan: read the bank statement and the books for October, reconcile by transaction id.").await?;
    let bank = call_ok(&agent, &sid, "ledger-query", json!({"ledger": "bank"})).await?;
    let books = call_ok(&agent, &sid, "ledger-query", json!({"ledger": "books"})).await?;
    println!(
        "   bank: {} rows, total {} cents; books: {} rows, total {} cents",
        bank["rows"].as_array().unwrap().len(),
        bank["total_cents"],
        books["rows"].as_array().unwrap().len(),
        books["total_cents"]
    );
    let rec = call_ok(
        &agent,
        &sid,
        "reconcile",
        json!({"left": {"name": "bank", "rows": bank["rows"]}, "right": {"name": "books", "rows": books["rows"]}}),
    )
    .await?;
    let discrepancies = rec["discrepancies"].as_array().context("discrepancies")?.clone();
    for d in &discrepancies {
        println!("   discrepancy {}: {} (bank {}, books {})", d["id"], d["kind"], d["left_cents"], d["right_cents"]);
    }
    ensure!(discrepancies.len() == 3, "the seeded ledgers hold 3 discrepancies");
    say(&agent, &sid, "Found 3 discrepancies: T004 booked 9000 cents short, T005 bank fee never booked, T006 invoice booked but not paid.").await?;

    step(3, "request an adjustment for each discrepancy (they wait for approval)");
    let mut pending = Vec::new();
    for d in &discrepancies {
        let id = d["id"].as_str().unwrap();
        let amount = d["left_cents"].as_i64().unwrap_or(0) - d["right_cents"].as_i64().unwrap_or(0);
        let (status, call) = agent.call(&sid, "post-adjustment", json!({"id": id, "amount_cents": amount, "reason": format!("reconcile {}", d["kind"].as_str().unwrap())})).await?;
        ensure!(status.as_u16() == 202 && call["status"] == "pending_approval", "{status} {call}");
        println!("   {id}: adjustment of {amount} cents requested, call {} is {}", call["id"], call["status"]);
        pending.push(call["id"].as_str().unwrap().to_string());
    }

    step(4, "the host stops for the night and starts again");
    host.restart().await?;
    println!("   restarted on the same data folder");

    step(5, "the auditor decides");
    let auditor = host.api(AUDITOR_TOKEN);
    let (_, list) = auditor.get("/v1/approvals").await?;
    let approvals = list["approvals"].as_array().context("approvals")?;
    ensure!(approvals.len() == 3, "3 pending after the restart: {list}");
    for a in approvals {
        let id = a["input"]["id"].as_str().unwrap();
        let (decision, reason) = if id == "T006" {
            ("deny", "the Initech invoice is real and payment is scheduled; not an error")
        } else {
            ("approve", "matches the bank statement")
        };
        let (status, done) = auditor
            .post(
                &format!("/v1/approvals/{}", a["id"].as_str().unwrap()),
                json!({"decision": decision, "reason": reason}),
            )
            .await?;
        ensure!(status.as_u16() == 200, "{status} {done}");
        let verb = if decision == "deny" { "denies" } else { "approves" };
        println!("   auditor {verb} {id} (requested by {}): call is {}", a["requested_by"], done["status"]);
    }

    step(6, "the agent resumes and writes the report");
    let agent = host.api(AGENT_TOKEN);
    let mut lines = Vec::new();
    for cid in &pending {
        let (_, call) = agent.get(&format!("/v1/sessions/{sid}/calls/{cid}")).await?;
        lines.push(format!(
            "{} adjustment {} cents: {} ({})",
            call["input"]["id"].as_str().unwrap(),
            call["input"]["amount_cents"],
            call["status"].as_str().unwrap(),
            call["approval"]["reason"].as_str().unwrap_or("")
        ));
    }
    say(&agent, &sid, "Two adjustments posted, T006 left open as the auditor decided. Writing the report.").await?;
    let report = call_ok(&agent, &sid, "audit-report", json!({
        "title": "October close: bank vs books",
        "sections": [
            {"heading": "Discrepancies", "lines": discrepancies.iter().map(|d| format!("{}: {}", d["id"].as_str().unwrap(), d["kind"].as_str().unwrap())).collect::<Vec<_>>()},
            {"heading": "Adjustments", "lines": lines},
        ],
    })).await?;
    println!("\n{}", report["report"].as_str().unwrap_or(""));
    let journal = std::fs::read_to_string(dir.join("work/adjustments/adjustments.csv"))?;
    println!("adjustments journal (work/adjustments/adjustments.csv):\n{journal}");
    ensure!(journal.lines().count() == 3, "header and two approved adjustments");

    let (_, s) = agent.get(&format!("/v1/sessions/{sid}")).await?;
    println!("session usage: {}", s["usage"]);
    let kinds = agent.audit_kinds(&sid).await?;
    println!("audit trail: {} events", kinds.len());
    host.kill9();
    let (code, out, _) = run_cli(&["audit", "verify", "--config", dir.join("bulkhead.toml").to_str().unwrap()])?;
    print!("bulkhead audit verify: {out}");
    ensure!(code == 0, "the audit chain verifies");
    Ok(())
}
