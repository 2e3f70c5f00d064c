//! HTTP load generator: starts the release `bulkhead` binary on a fresh
//! folder with the counter tool and measures, in the same run, keep-alive
//! throughput and latency of `GET /healthz` (the HTTP floor), of durable
//! counter calls, with C connections over C sessions, and of the peer teams
//! hand-roll today: a process per call keeping its state in a JSON file
//! (`json-counter`), C of them at a time.
//!
//! Usage: `cargo run --release -p bulkhead-tests --bin loadgen -- [SECONDS] [CONNECTIONS]`
//! (after `scripts/build-guests` and `cargo build --release`).

use bulkhead_tests::load::{Request, clients, counter_host, cpu_used, drive, writer_counters};
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let connections: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let host = counter_host().await?;
    let apis = clients(&host, connections).await?;
    // Warm up both paths.
    drive(&apis, Duration::from_secs(1), Request::Healthz).await;
    drive(&apis, Duration::from_secs(1), Request::CounterCall).await;
    println!("| {connections} connections, {seconds} s | req/s | p50 ms | p99 ms | p99.9 ms | errors |");
    println!("|---|---|---|---|---|---|");
    let health = drive(&apis, Duration::from_secs(seconds), Request::Healthz).await.report("GET /healthz");
    let pid = host.pid().expect("host running");
    // The writer thread is `bulkhead-db-writer`, cut to 15 bytes in `/proc`.
    let before = cpu_used(pid, "bulkhead-db-wri");
    let writes_before = writer_counters(&apis[0].0).await;
    let run = drive(&apis, Duration::from_secs(seconds), Request::CounterCall).await;
    let after = cpu_used(pid, "bulkhead-db-wri");
    let writes_after = writer_counters(&apis[0].0).await;
    let calls = run.report("POST calls (counter, durable)");
    // Host CPU per call and the writer thread's share. Not a fixed cost:
    // a writer with time to spare commits smaller batches, so both rise
    // as throughput falls (docs/benchmarks.md, eighth session).
    let per_call = |d: Duration| d.as_secs_f64() * 1e6 / run.requests.max(1) as f64;
    let cpu = format!(
        "host CPU per call: {:.0} µs, of which the database writer thread {:.0} µs",
        per_call(after.0.saturating_sub(before.0)),
        per_call(after.1.saturating_sub(before.1))
    );
    let peer = drive(&apis, Duration::from_secs(seconds), Request::ProcessPerCall)
        .await
        .report("peer: a process per call, state in a JSON file");
    for (_, sid) in &apis {
        let _ = std::fs::remove_file(bulkhead_tests::load::peer_state_file(sid));
    }
    println!("\ncalls / healthz throughput: {:.1}%", calls / health * 100.0);
    println!("calls / process-per-call peer throughput: {:.1}x", calls / peer);
    println!("{cpu}");
    // Group commit at work: a call is two write jobs (its record, its
    // outcome). (A host from before these counters has none.)
    if let (Ok(before), Ok(after)) = (writes_before, writes_after) {
        let (commits, jobs) = (after.0 - before.0, after.1 - before.1);
        println!(
            "database commits per call: {:.2} ({:.1} write jobs per commit)",
            commits as f64 / run.requests.max(1) as f64,
            jobs as f64 / commits.max(1) as f64
        );
    }
    Ok(())
}
