//! The Extism peer: Bulkhead's counter as an Extism plugin
//! (`../counter-plugin`, its count in the plugin's vars) called through the
//! `extism` crate, measured in one run:
//!
//! - one long-lived plugin, one thread: per-call latency;
//! - 64 plugins ("sessions", each with its own count) driven by 2 threads:
//!   throughput;
//! - a fresh plugin for every call (what Bulkhead does: it instantiates per
//!   call), on 1 and on 2 threads. State cannot survive there.
//!
//! Every answer is checked: each plugin's count must equal the number of
//! calls made on it (1 for a fresh plugin).
//!
//! Usage: `extism-runner [SECONDS] [PLUGIN.wasm]` (default 5 s and the
//! release build of the plugin in this workspace's target folder).

use anyhow::{Context, Result, bail, ensure};
use extism::{CompiledPlugin, Manifest, Plugin, PluginBuilder, Wasm};
use std::sync::Barrier;
use std::time::{Duration, Instant};

const SESSIONS: usize = 64;
const THREADS: usize = 2;
const WARM_UP: Duration = Duration::from_secs(1);
const INPUT: &str = "{}";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = match args.get(1) {
        Some(s) => s.parse().with_context(|| format!("SECONDS must be a whole number, not {s:?}"))?,
        None => 5,
    };
    let run = Duration::from_secs(seconds);
    let path = args.get(2).cloned().unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/wasm32-wasip1/release/counter_plugin.wasm").into()
    });
    let wasm = std::fs::read(&path).with_context(|| format!("reading the plugin {path} (build it first)"))?;

    // Compiled once, like Bulkhead's precompiled tools; no on-disk cache.
    let compiled = CompiledPlugin::new(
        PluginBuilder::new(Manifest::new([Wasm::data(wasm)])).with_wasi(true).with_cache_disabled(),
    )?;

    let one = one_plugin(&compiled, run)?;
    let many = many_plugins(&compiled, run)?;
    let fresh = fresh_per_call(&compiled, run, 1)?;
    let fresh2 = fresh_per_call(&compiled, run, THREADS)?;

    println!(
        "| Extism peer (extism {}, wasmtime {}), {seconds} s | calls/s | p50 µs | p99 µs |",
        env!("LOCKED_EXTISM_VERSION"),
        env!("LOCKED_WASMTIME_VERSION")
    );
    println!("|---|---|---|---|");
    one.row("one plugin, state in vars, 1 thread");
    many.row(&format!("{SESSIONS} plugins (sessions), state in vars, {THREADS} threads"));
    fresh.row("instantiate per call (fresh plugin, no state), 1 thread");
    fresh2.row(&format!("instantiate per call (fresh plugin, no state), {THREADS} threads"));
    println!("\nper-call cost, instantiate per call / long-lived plugin (p50): {:.1}x", fresh.p50() / one.p50());
    Ok(())
}

/// Calls made in a measured interval and each one's latency.
#[derive(Default)]
struct Sample {
    calls: u64,
    wall: Duration,
    latencies_ns: Vec<u64>,
}

impl Sample {
    fn merge(parts: Vec<Sample>) -> Sample {
        let mut all = Sample::default();
        for part in parts {
            all.calls += part.calls;
            all.wall = all.wall.max(part.wall);
            all.latencies_ns.extend(part.latencies_ns);
        }
        all.latencies_ns.sort_unstable();
        all
    }

    fn percentile_us(&self, q: f64) -> f64 {
        let n = self.latencies_ns.len();
        if n == 0 {
            return f64::NAN;
        }
        let i = ((n - 1) as f64 * q).round() as usize;
        self.latencies_ns[i] as f64 / 1000.0
    }

    fn p50(&self) -> f64 {
        self.percentile_us(0.50)
    }

    fn row(&self, what: &str) {
        let rate = self.calls as f64 / self.wall.as_secs_f64();
        println!("| {what} | {rate:.0} | {:.1} | {:.1} |", self.p50(), self.percentile_us(0.99));
    }
}

/// A plugin with the number of calls made on it.
struct Session {
    plugin: Plugin,
    calls: u64,
}

impl Session {
    fn new(compiled: &CompiledPlugin) -> Result<Session> {
        Ok(Session { plugin: Plugin::new_from_compiled(compiled)?, calls: 0 })
    }

    /// One call; its latency in ns. Fails unless the answer is the count of
    /// calls made on this plugin so far.
    fn call(&mut self) -> Result<u64> {
        let start = Instant::now();
        let output: &[u8] = self.plugin.call("call", INPUT)?;
        let took = start.elapsed().as_nanos() as u64;
        self.calls += 1;
        let count = count_of(output)?;
        ensure!(count == self.calls, "the plugin answered count {count} after {} calls", self.calls);
        Ok(took)
    }
}

/// The `count` of an answer `{"count": N}`.
fn count_of(output: &[u8]) -> Result<u64> {
    let value: serde_json::Value = serde_json::from_slice(output).context("the plugin's answer is not JSON")?;
    match value.get("count").and_then(serde_json::Value::as_u64) {
        Some(count) => Ok(count),
        None => bail!("no count in the plugin's answer {}", String::from_utf8_lossy(output)),
    }
}

/// Round-robins over `sessions` for `run` after a warm-up; `barrier` (if
/// any) lines up the threads' measured intervals.
fn drive(sessions: &mut [Session], run: Duration, barrier: Option<&Barrier>) -> Result<Sample> {
    let mut sample = Sample::default();
    let mut turn = 0;
    let warm_until = Instant::now() + WARM_UP;
    while Instant::now() < warm_until {
        sessions[turn % sessions.len()].call()?;
        turn += 1;
    }
    if let Some(barrier) = barrier {
        barrier.wait();
    }
    let start = Instant::now();
    while start.elapsed() < run {
        sample.latencies_ns.push(sessions[turn % sessions.len()].call()?);
        turn += 1;
        sample.calls += 1;
    }
    sample.wall = start.elapsed();
    Ok(sample)
}

/// (a) One long-lived plugin on one thread.
fn one_plugin(compiled: &CompiledPlugin, run: Duration) -> Result<Sample> {
    let mut sessions = [Session::new(compiled)?];
    let sample = drive(&mut sessions, run, None)?;
    final_counts(&mut sessions)?;
    Ok(Sample::merge(vec![sample]))
}

/// (b) 64 plugins, each keeping its own count, driven by 2 threads.
fn many_plugins(compiled: &CompiledPlugin, run: Duration) -> Result<Sample> {
    let mut sessions = (0..SESSIONS).map(|_| Session::new(compiled)).collect::<Result<Vec<_>>>()?;
    let barrier = Barrier::new(THREADS);
    let samples = std::thread::scope(|scope| {
        let workers: Vec<_> = sessions
            .chunks_mut(SESSIONS / THREADS)
            .map(|chunk| scope.spawn(|| drive(chunk, run, Some(&barrier))))
            .collect();
        workers.into_iter().map(|w| w.join().expect("a worker panicked")).collect::<Result<Vec<_>>>()
    })?;
    final_counts(&mut sessions)?;
    Ok(Sample::merge(samples))
}

/// Asks every plugin once more (with `{"by": 0}`, which adds nothing) and
/// checks its count is the number of calls made on it.
fn final_counts(sessions: &mut [Session]) -> Result<()> {
    for (i, session) in sessions.iter_mut().enumerate() {
        let output: &[u8] = session.plugin.call("call", r#"{"by": 0}"#)?;
        let count = count_of(output)?;
        ensure!(count == session.calls, "plugin {i}: count {count} after {} calls", session.calls);
        ensure!(session.calls > 0, "plugin {i} was never called");
    }
    Ok(())
}

/// (c) A fresh plugin for every call, on `threads` threads: what instantiating
/// per call costs. Each answer must be count 1: nothing survives.
fn fresh_per_call(compiled: &CompiledPlugin, run: Duration, threads: usize) -> Result<Sample> {
    let barrier = Barrier::new(threads);
    let samples = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> Result<Sample> {
                    let once = || -> Result<u64> {
                        let start = Instant::now();
                        let mut session = Session::new(compiled)?;
                        session.call()?;
                        drop(session);
                        Ok(start.elapsed().as_nanos() as u64)
                    };
                    let warm_until = Instant::now() + WARM_UP;
                    while Instant::now() < warm_until {
                        once()?;
                    }
                    barrier.wait();
                    let mut sample = Sample::default();
                    let start = Instant::now();
                    while start.elapsed() < run {
                        sample.latencies_ns.push(once()?);
                        sample.calls += 1;
                    }
                    sample.wall = start.elapsed();
                    Ok(sample)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("a worker panicked")).collect::<Result<Vec<_>>>()
    })?;
    Ok(Sample::merge(samples))
}
