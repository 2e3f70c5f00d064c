//! HTTP load generator: starts the release `bulkhead` binary on a fresh
//! folder with the counter tool and measures, in the same run, keep-alive
//! throughput and latency of `GET /healthz` (the HTTP floor) and of durable
//! counter calls, with C connections over C sessions.
//!
//! Usage: `cargo run --release -p bulkhead-tests --bin loadgen -- [SECONDS] [CONNECTIONS]`
//! (after `scripts/build-guests` and `cargo build --release`).

use bulkhead_tests::{Api, TestHost, example_tool};
use serde_json::json;
use std::time::{Duration, Instant};

struct Run {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn report(&self, name: &str) -> f64 {
        let mut l = self.latencies.clone();
        l.sort();
        let pct =
            |p: f64| l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1))).copied().unwrap_or_default();
        let rate = self.requests as f64 / self.elapsed.as_secs_f64();
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            rate,
            pct(0.50).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            pct(0.999).as_secs_f64() * 1e3,
            self.errors
        );
        rate
    }
}

async fn drive(apis: &[(Api, String)], seconds: u64, call: bool) -> Run {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let tasks: Vec<_> = apis
        .iter()
        .cloned()
        .map(|(api, sid)| {
            tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let ok = if call {
                        matches!(api.call(&sid, "counter", json!({})).await, Ok((s, _)) if s.is_success())
                    } else {
                        matches!(api.get("/healthz").await, Ok((s, _)) if s.is_success())
                    };
                    lat.push(t.elapsed());
                    if !ok {
                        errors += 1;
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut run = Run { requests: 0, errors: 0, elapsed: Duration::ZERO, latencies: Vec::new() };
    for t in tasks {
        let (lat, errors) = t.await.expect("client task");
        run.requests += lat.len();
        run.errors += errors;
        run.latencies.extend(lat);
    }
    run.elapsed = start.elapsed();
    run
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let connections: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let host = TestHost::builder()
        .bundle("counter", example_tool("counter"))
        .config("[limits]\nmax_concurrent_calls = 256")
        .start()
        .await?;
    let mut apis = Vec::new();
    for _ in 0..connections {
        // One client (one keep-alive connection) per session.
        let api = host.agent();
        let sid = api.session(json!({})).await?;
        apis.push((api, sid));
    }
    // Warm up both paths.
    drive(&apis, 1, false).await;
    drive(&apis, 1, true).await;
    println!("| {connections} connections, {seconds} s | req/s | p50 ms | p99 ms | p99.9 ms | errors |");
    println!("|---|---|---|---|---|---|");
    let health = drive(&apis, seconds, false).await.report("GET /healthz");
    let calls = drive(&apis, seconds, true).await.report("POST calls (counter, durable)");
    println!("\ncalls / healthz throughput: {:.1}%", calls / health * 100.0);
    Ok(())
}
