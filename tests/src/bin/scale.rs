//! Sessions live on disk: resident memory with 10,000 idle sessions against
//! none, and durable-call throughput and latency with 100,000 sessions in
//! the database against a nearly empty one, in the same run on the same
//! host process (release binary, counter tool).
//!
//! Usage: `cargo run --release -p bulkhead-tests --bin scale -- [SESSIONS] [SECONDS]`
//! (defaults 100000 and 5; after `scripts/build-guests` and `cargo build --release`).

use bulkhead_tests::TestHost;
use bulkhead_tests::load::{Request, clients, counter_host, drive};
use serde_json::json;
use std::time::{Duration, Instant};

/// Concurrent clients, each with its own session, driving calls.
const CALLERS: usize = 16;
/// Concurrent clients creating idle sessions.
const CREATORS: usize = 32;

/// Resident memory of a process in KiB (`VmRSS`).
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
    Ok(line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0))
}

/// Creates `n` sessions that are never used; returns sessions per second.
async fn create_idle(host: &TestHost, n: usize) -> anyhow::Result<f64> {
    let start = Instant::now();
    let tasks: Vec<_> = (0..CREATORS)
        .map(|i| {
            let api = host.agent();
            let share = n / CREATORS + usize::from(i < n % CREATORS);
            tokio::spawn(async move {
                for _ in 0..share {
                    api.session(json!({"labels": {"idle": "yes"}})).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let total: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let seconds: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let idle_step = total.min(10_000);
    let host = counter_host().await?;
    let pid = host.pid().expect("the host runs");
    let callers = clients(&host, CALLERS).await?;
    let run = Duration::from_secs(seconds);
    drive(&callers, Duration::from_secs(2), Request::CounterCall).await; // warm-up
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_none = rss_kib(pid)?;
    println!("| {CALLERS} connections, {seconds} s each | req/s | p50 ms | p99 ms | p99.9 ms | errors |");
    println!("|---|---|---|---|---|---|");
    let before =
        drive(&callers, run, Request::CounterCall).await.report(&format!("calls, {CALLERS} sessions in the database"));

    let rate = create_idle(&host, idle_step).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = rss_kib(pid)?;
    let rate_rest = create_idle(&host, total - idle_step).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_total = rss_kib(pid)?;
    // The same warm-up as before the first run, so both runs start alike
    // (not straight after 100k inserts).
    drive(&callers, Duration::from_secs(2), Request::CounterCall).await;
    let after = drive(&callers, run, Request::CounterCall)
        .await
        .report(&format!("calls, {} sessions in the database", total + CALLERS));

    println!();
    println!("| resident memory | KiB | against none idle |");
    println!("|---|---|---|");
    println!("| {CALLERS} active sessions, none idle | {rss_none} | 1.00 |");
    println!("| + {idle_step} idle sessions | {rss_idle} | {:.2} |", rss_idle as f64 / rss_none as f64);
    println!("| + {total} idle sessions | {rss_total} | {:.2} |", rss_total as f64 / rss_none as f64);
    println!();
    println!("sessions created: {rate:.0}/s (first {idle_step}), {rate_rest:.0}/s (the rest)");
    println!("call throughput with {total} idle sessions: {:.1}% of the run without", after / before * 100.0);
    let db = std::fs::metadata(host.db_path())?.len();
    println!("database file: {:.1} MiB", db as f64 / (1 << 20) as f64);
    Ok(())
}
