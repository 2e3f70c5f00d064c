//! What tracing costs a durable call over HTTP: four hosts in the same
//! run, one without `[telemetry]`, and three exporting to a local
//! OTLP/HTTP receiver: sampling no trace (what tracing on costs an
//! unsampled request), 10% of traces, and every span (sampling 1.0),
//! measured in alternating rounds so drift falls on all alike. The host's
//! CPU per call and the receiver's CPU (a Python process decoding every
//! span, on the same cores) are printed beside each.
//!
//! Usage: `cargo run --release -p bulkhead-tests --bin tracecost -- [SECONDS] [CONNECTIONS] [ROUNDS]`
//! (after `scripts/build-guests`, `cargo build --release` and the
//! telemetry venv of `scripts/test`).

use bulkhead_tests::load::{Request, Run, clients, counter_host_with, drive, process_cpu};
use bulkhead_tests::otlp::OtlpReceiver;
use std::time::Duration;

struct Variant {
    name: &'static str,
    config: String,
    run: Option<Run>,
    host_cpu: Duration,
    receiver_cpu: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let connections: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let rounds: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3);
    let otlp = OtlpReceiver::start().await?;
    let exporting =
        |ratio: f64| format!("[telemetry]\notlp_endpoint = \"{}\"\nsampling_ratio = {ratio:?}", otlp.endpoint());
    let mut variants = [
        ("POST calls, tracing off", String::new()),
        ("POST calls, tracing on, no trace sampled", exporting(0.0)),
        ("POST calls, 10% of traces exported", exporting(0.1)),
        ("POST calls, every span exported", exporting(1.0)),
    ]
    .map(|(name, config)| Variant {
        name,
        config,
        run: None,
        host_cpu: Duration::ZERO,
        receiver_cpu: Duration::ZERO,
    });
    let mut hosts = Vec::new();
    for v in &variants {
        let host = counter_host_with(&v.config).await?;
        let apis = clients(&host, connections).await?;
        drive(&apis, Duration::from_secs(1), Request::CounterCall).await;
        hosts.push((host, apis));
    }
    for _ in 0..rounds {
        for (v, (host, apis)) in variants.iter_mut().zip(&hosts) {
            let pid = host.pid().expect("host running");
            let (host_before, receiver_before) = (process_cpu(pid), process_cpu(otlp.pid()));
            let run = drive(apis, Duration::from_secs(seconds), Request::CounterCall).await;
            v.host_cpu += process_cpu(pid).saturating_sub(host_before);
            v.receiver_cpu += process_cpu(otlp.pid()).saturating_sub(receiver_before);
            v.run = Some(match v.run.take() {
                Some(all) => Run::followed_by(all, run),
                None => run,
            });
        }
    }
    println!(
        "| {connections} connections, {rounds} x {seconds} s each | req/s | p50 ms | p99 ms | p99.9 ms | errors |"
    );
    println!("|---|---|---|---|---|---|");
    let rates: Vec<f64> = variants.iter().map(|v| v.run.as_ref().expect("rounds > 0").report(v.name)).collect();
    println!();
    for (v, rate) in variants.iter().zip(&rates) {
        let calls = v.run.as_ref().map_or(1, |r| r.requests.max(1)) as f64;
        println!(
            "{}: {:.1}% of tracing off; host CPU per call {:.0} µs; receiver CPU {:.1} s",
            v.name,
            rate / rates[0] * 100.0,
            v.host_cpu.as_secs_f64() * 1e6 / calls,
            v.receiver_cpu.as_secs_f64()
        );
    }
    println!("spans the receiver decoded: {}", otlp.spans().len());
    Ok(())
}
