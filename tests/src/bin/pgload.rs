//! The PostgreSQL backend under HTTP load, beside SQLite in the same run:
//! durable counter calls with C connections over C sessions against a
//! SQLite host, a PostgreSQL host (the harness's own server on loopback),
//! and two PostgreSQL hosts on one database (C/2 connections each, run at
//! once: the aggregate and its ratio to one host).
//!
//! Usage: `cargo run --release -p bulkhead-tests --bin pgload -- [SECONDS] [CONNECTIONS]`
//! (after `scripts/build-guests` and `cargo build --release`; as root,
//! PostgreSQL runs as the `postgres` user).

use bulkhead_tests::load::{Request, Run, clients, drive};
use bulkhead_tests::postgres::PgServer;
use bulkhead_tests::{TestHost, example_tool};
use std::time::Duration;

async fn host(pg_url: Option<&str>) -> anyhow::Result<TestHost> {
    let mut builder =
        TestHost::builder().bundle("counter", example_tool("counter")).config("[limits]\nmax_concurrent_calls = 256");
    if let Some(url) = pg_url {
        builder = builder.postgres(url, 10);
    }
    builder.start().await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let connections: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let run_for = Duration::from_secs(seconds);
    println!("| {connections} connections, {seconds} s | req/s | p50 ms | p99 ms | p99.9 ms | errors |");
    println!("|---|---|---|---|---|---|");

    let sqlite = host(None).await?;
    let apis = clients(&sqlite, connections).await?;
    drive(&apis, Duration::from_secs(1), Request::CounterCall).await;
    let on_sqlite = drive(&apis, run_for, Request::CounterCall).await.report("SQLite, one host");
    drop(sqlite);

    let pg = PgServer::start().await?;
    let url = pg.create_database("bench").await?;
    // PGLOAD_UNIX=1: over the server's Unix socket instead of loopback TCP.
    let url = match std::env::var("PGLOAD_UNIX").is_ok() {
        true => format!("host={} port={} user=postgres dbname=bench", pg.dir().display(), pg.port()),
        false => url,
    };
    let first = host(Some(&url)).await?;
    let apis = clients(&first, connections).await?;
    drive(&apis, Duration::from_secs(1), Request::CounterCall).await;
    let on_pg = drive(&apis, run_for, Request::CounterCall).await.report("PostgreSQL, one host");

    let second = host(Some(&url)).await?;
    let mut halves = clients(&first, connections / 2).await?;
    halves.extend(clients(&second, connections - connections / 2).await?);
    drive(&halves, Duration::from_secs(1), Request::CounterCall).await;
    let (a, b) = halves.split_at(connections / 2);
    let (a, b) = tokio::join!(drive(a, run_for, Request::CounterCall), drive(b, run_for, Request::CounterCall));
    let both = Run::merged(a, b).report("PostgreSQL, two hosts (aggregate)");

    println!("\nPostgreSQL / SQLite throughput, one host: {:.1}%", on_pg / on_sqlite * 100.0);
    println!("two PostgreSQL hosts / one: {:.2}x", both / on_pg);
    Ok(())
}
