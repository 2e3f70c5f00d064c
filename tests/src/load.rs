//! Closed-loop HTTP load against a running host, for the benchmark
//! binaries (`loadgen`, `scale`): each client sends its next request when
//! the last one is answered, over its own keep-alive connection.

use crate::{Api, TestHost, example_tool};
use serde_json::json;
use std::time::{Duration, Instant};

/// A host serving the counter tool, with a concurrency limit above any
/// client count the load binaries use.
pub async fn counter_host() -> anyhow::Result<TestHost> {
    counter_host_with("").await
}

/// `counter_host` with more config (e.g. a `[telemetry]` table).
pub async fn counter_host_with(config: &str) -> anyhow::Result<TestHost> {
    TestHost::builder()
        .bundle("counter", example_tool("counter"))
        .config("[limits]\nmax_concurrent_calls = 256")
        .config(config)
        .start()
        .await
}

/// `n` load clients, each with its own keep-alive connection and session.
pub async fn clients(host: &TestHost, n: usize) -> anyhow::Result<Vec<(Api, String)>> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let api = host.agent();
        let sid = api.session(json!({})).await?;
        clients.push((api, sid));
    }
    Ok(clients)
}

/// The database writer's commits and write jobs so far, from `/metrics`.
pub async fn writer_counters(api: &Api) -> anyhow::Result<(u64, u64)> {
    let text = api.request(reqwest::Method::GET, "/metrics").send().await?.text().await?;
    let value = |name: &str| -> anyhow::Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no {name} in /metrics"))
    };
    Ok((value("bulkhead_db_commits_total")?, value("bulkhead_db_write_jobs_total")?))
}

/// What one load run saw.
pub struct Run {
    pub requests: usize,
    pub errors: usize,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
}

impl Run {
    /// The latency at quantile `q` (0..=1).
    pub fn quantile(&self, q: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1))).copied().unwrap_or_default()
    }

    /// Two runs made at the same time, as one (the longer elapsed time).
    pub fn merged(mut a: Run, b: Run) -> Run {
        a.requests += b.requests;
        a.errors += b.errors;
        a.elapsed = a.elapsed.max(b.elapsed);
        a.latencies.extend(b.latencies);
        a
    }

    /// Two runs made one after the other, as one (their times added).
    pub fn followed_by(mut a: Run, b: Run) -> Run {
        a.elapsed += b.elapsed;
        Run { elapsed: a.elapsed, ..Run::merged(a, b) }
    }

    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// Prints a markdown table row; returns the rate.
    pub fn report(&self, name: &str) -> f64 {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            self.rate(),
            ms(self.quantile(0.50)),
            ms(self.quantile(0.99)),
            ms(self.quantile(0.999)),
            self.errors
        );
        self.rate()
    }
}

/// CPU time a process has used so far, threads that ended included (from
/// `/proc`, in 10 ms ticks; zero where `/proc` is missing).
pub fn process_cpu(pid: u32) -> Duration {
    stat_cpu(&format!("/proc/{pid}/stat")).map_or(Duration::ZERO, |(_, t)| t)
}

/// [`process_cpu`], and the CPU time of the live threads whose name starts
/// with `thread`.
pub fn cpu_used(pid: u32, thread: &str) -> (Duration, Duration) {
    let total = process_cpu(pid);
    let mut named = Duration::ZERO;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Some((comm, t)) = stat_cpu(&task.path().join("stat").to_string_lossy())
                && comm.starts_with(thread)
            {
                named += t;
            }
        }
    }
    (total, named)
}

/// The name and user + system CPU time in a `/proc` `stat` file.
fn stat_cpu(path: &str) -> Option<(String, Duration)> {
    let stat = std::fs::read_to_string(path).ok()?;
    // `pid (comm) state ...`: comm may hold spaces, so split at the last ')'.
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(').map_or("", |(_, c)| c).to_string();
    // utime and stime: fields 14 and 15 of the line, so 12th and 13th after comm.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11..13)?.iter().filter_map(|v| v.parse::<u64>().ok()).sum();
    Some((comm, Duration::from_millis(10) * ticks as u32)) // USER_HZ is 100 on Linux
}

/// What each client sends.
#[derive(Clone, Copy)]
pub enum Request {
    Healthz,
    /// A durable `counter` call in the client's session.
    CounterCall,
    /// The peer: run the `json-counter` program once, its state in a file
    /// named after the client's session.
    ProcessPerCall,
}

/// Runs one client per `(api, session)` for `duration`.
pub async fn drive(clients: &[(Api, String)], duration: Duration, what: Request) -> Run {
    let deadline = Instant::now() + duration;
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .cloned()
        .map(|(api, sid)| {
            tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let ok = match what {
                        Request::CounterCall => {
                            matches!(api.call(&sid, "counter", json!({})).await, Ok((s, _)) if s.is_success())
                        }
                        Request::Healthz => matches!(api.get("/healthz").await, Ok((s, _)) if s.is_success()),
                        Request::ProcessPerCall => process_per_call(&sid).await,
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

/// One call of the hand-rolled peer: a process that reads and writes its
/// state as a JSON file (`json-counter`, built beside this binary).
async fn process_per_call(state: &str) -> bool {
    let exe = std::env::current_exe().expect("own path");
    let program = exe.with_file_name("json-counter");
    let file = peer_state_file(state);
    let out = tokio::process::Command::new(program).arg(file).output().await;
    matches!(out, Ok(o) if o.status.success() && serde_json::from_slice::<serde_json::Value>(&o.stdout).is_ok())
}

/// Where the peer keeps the state of the client with session `sid`.
pub fn peer_state_file(sid: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("bulkhead-peer-{}-{sid}.json", std::process::id()))
}
