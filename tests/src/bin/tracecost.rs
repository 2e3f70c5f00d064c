//! What tracing costs a durable call over HTTP: two hosts in the same run,
//! one without `[telemetry]` and one exporting every span (sampling 1.0)
//! to a local OTLP/HTTP receiver, measured in alternating rounds so drift
//! falls on both alike.
//!
//! Usage: `cargo run --release -p bulkhead-tests --bin tracecost -- [SECONDS] [CONNECTIONS] [ROUNDS]`
//! (after `scripts/build-guests`, `cargo build --release` and the
//! telemetry venv of `scripts/test`).

use bulkhead_tests::load::{Request, Run, clients, counter_host_with, drive};
use bulkhead_tests::otlp::OtlpReceiver;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let connections: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let rounds: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3);
    let otlp = OtlpReceiver::start().await?;
    let off = counter_host_with("").await?;
    let on = counter_host_with(&format!("[telemetry]\notlp_endpoint = \"{}\"", otlp.endpoint())).await?;
    let (off_apis, on_apis) = (clients(&off, connections).await?, clients(&on, connections).await?);
    for apis in [&off_apis, &on_apis] {
        drive(apis, Duration::from_secs(1), Request::CounterCall).await;
    }
    let (mut off_runs, mut on_runs): (Option<Run>, Option<Run>) = (None, None);
    for _ in 0..rounds {
        for (apis, runs) in [(&off_apis, &mut off_runs), (&on_apis, &mut on_runs)] {
            let run = drive(apis, Duration::from_secs(seconds), Request::CounterCall).await;
            *runs = Some(match runs.take() {
                Some(all) => Run::followed_by(all, run),
                None => run,
            });
        }
    }
    println!(
        "| {connections} connections, {rounds} x {seconds} s each | req/s | p50 ms | p99 ms | p99.9 ms | errors |"
    );
    println!("|---|---|---|---|---|---|");
    let off_rate = off_runs.expect("rounds > 0").report("POST calls, tracing off");
    let on_rate = on_runs.expect("rounds > 0").report("POST calls, every span exported");
    println!("\ntracing on / off throughput: {:.1}%", on_rate / off_rate * 100.0);
    println!("spans the receiver decoded: {}", otlp.spans().len());
    Ok(())
}
