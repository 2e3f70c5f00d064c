//! In-process cost of one call, beside its floor, in the same run.
//!
//! - `floor`: instantiate the counter component and call it (a fresh Store
//!   and instance, the one state read it makes), no commit.
//! - `durable_call`: `Service::call` end to end: boundary and input checks,
//!   the `running` record, the same instantiate + call, then the outcome,
//!   state write, usage and audit events committed (WAL, synchronous=NORMAL).
//!   Called from the bench's thread, as a blocking caller would: the call's
//!   task starts on a runtime worker and its answer comes back across.
//! - `floor_in_task`, `durable_call_in_task`: the same, made one after
//!   another from a task on the runtime, as the HTTP handlers make them
//!   (no hand-off from the bench's thread to a worker and back).
//! - `throughput_64_sessions`: 64 concurrent callers on 64 sessions; the
//!   time per iteration is for 6,400 durable calls.
//!
//! Run: `cargo bench -p bulkhead --bench calls` (guest tools built first:
//! `scripts/build-guests`). Results: docs/benchmarks.md.

use bulkhead::auth::Principal;
use bulkhead::caps::CallEnv;
use bulkhead::config::Config;
use bulkhead::service::calls::NewCall;
use bulkhead::service::sessions::CreateSession;
use bulkhead::service::{Service, ToolSource};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn setup(rt: &tokio::runtime::Runtime) -> (Arc<Service>, PathBuf) {
    let dir = std::env::temp_dir().join(format!("bulkhead-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bundle = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest-tools/counter");
    let mut config = Config::embedded();
    config.data_dir = dir.clone();
    config.principals = Some(Vec::new());
    config.limits.max_concurrent_calls = 256;
    // BULKHEAD_BENCH_DURABILITY=full measures fsync-on-commit.
    if std::env::var("BULKHEAD_BENCH_DURABILITY").as_deref() == Ok("full") {
        config.storage.durability = bulkhead::config::DurabilityMode::Full;
    }
    let (service, report) =
        rt.block_on(Service::start_with(config, ToolSource::Bundle(bundle))).expect("service starts");
    assert!(report.refused.is_empty(), "build the guest tools first (scripts/build-guests): {:?}", report.refused);
    (service, dir)
}

/// What the floor's call gets: the session, no grants, the state quota.
fn floor_env(service: &Service, session: &str) -> CallEnv {
    CallEnv {
        session: session.to_string(),
        principal: "bench".into(),
        tool: "counter".into(),
        grant: Default::default(),
        session_env: Default::default(),
        store: service.call_store(session, "counter", None),
        secrets: service.secrets.clone(),
        state_quota_bytes: 1 << 20,
        mounts: Vec::new(),
        allow_private: Default::default(),
    }
}

/// Awaits `iters` futures from `one`, one after another, in a task on the
/// runtime; the time they took there.
fn timed_in_task<F, Fut>(rt: &tokio::runtime::Runtime, iters: u64, mut one: F) -> Duration
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    rt.block_on(rt.spawn(async move {
        let start = Instant::now();
        for _ in 0..iters {
            one().await;
        }
        start.elapsed()
    }))
    .unwrap()
}

fn benches(c: &mut Criterion) {
    // As the binary does (before any thread starts).
    bulkhead::util::quiet_library_backtraces();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (service, dir) = setup(&rt);
    let me = Principal::local("bench");
    let session = rt.block_on(service.create_session(&me, CreateSession::default())).unwrap();
    let tool = service.tool("counter").expect("counter loaded");

    let mut group = c.benchmark_group("call");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("floor", |b| {
        b.iter(|| rt.block_on(service.runtime.invoke(&tool, "{}", floor_env(&service, &session.id))))
    });
    let stats = || rt.block_on(service.store.stats()).unwrap();
    let by_callers = |stats: bulkhead::store::StoreStats| (stats.write_jobs, stats.write_jobs_run_by_callers);
    let lone = by_callers(stats());
    group.bench_function("durable_call", |b| {
        b.iter(|| {
            let req = NewCall { tool: "counter".into(), input: json!({}), idempotency_key: None };
            let reply = rt.block_on(service.call(&me, &session.id, req, Default::default())).unwrap();
            assert_eq!(reply.call.status, bulkhead::model::CallStatus::Succeeded);
        })
    });
    // The floor and the durable call made from a task on the runtime, as
    // the HTTP handlers make them: no hand-off from the bench's thread to a
    // worker and back.
    group.bench_function("durable_call_in_task", |b| {
        b.iter_custom(|iters| {
            let (service, sid, me) = (service.clone(), session.id.clone(), me.clone());
            timed_in_task(&rt, iters, move || {
                let (service, sid, me) = (service.clone(), sid.clone(), me.clone());
                async move {
                    let req = NewCall { tool: "counter".into(), input: json!({}), idempotency_key: None };
                    service.call(&me, &sid, req, Default::default()).await.unwrap();
                }
            })
        })
    });
    group.bench_function("floor_in_task", |b| {
        b.iter_custom(|iters| {
            let (service, sid, tool) = (service.clone(), session.id.clone(), tool.clone());
            timed_in_task(&rt, iters, move || {
                let (service, sid, tool) = (service.clone(), sid.clone(), tool.clone());
                async move {
                    service.runtime.invoke(&tool, "{}", floor_env(&service, &sid)).await;
                }
            })
        })
    });
    group.finish();
    let after = by_callers(stats());
    eprintln!(
        "lone calls: {:.0}% of write jobs run on the caller's thread",
        100.0 * (after.1 - lone.1) as f64 / (after.0 - lone.0).max(1) as f64
    );

    let sessions: Vec<String> =
        (0..64).map(|_| rt.block_on(service.create_session(&me, CreateSession::default())).unwrap().id).collect();
    let before = stats();
    let before = (before.commits, before.write_jobs);
    // Every call unwraps its answer, so each iteration made them all.
    let mut calls = 0u64;
    let mut group = c.benchmark_group("throughput");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    group.bench_function("64_sessions_x_100_calls", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                rt.block_on(async {
                    let tasks: Vec<_> = sessions
                        .iter()
                        .map(|sid| {
                            let (service, sid, me) = (service.clone(), sid.clone(), me.clone());
                            tokio::spawn(async move {
                                for _ in 0..100 {
                                    let req =
                                        NewCall { tool: "counter".into(), input: json!({}), idempotency_key: None };
                                    service.call(&me, &sid, req, Default::default()).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                });
                total += start.elapsed();
            }
            calls += iters * sessions.len() as u64 * 100;
            total
        })
    });
    group.finish();
    // How the writer grouped the throughput run's calls.
    let (commits, jobs) = {
        let now = stats();
        (now.commits - before.0, now.write_jobs - before.1)
    };
    let calls = calls.max(1) as f64;
    eprintln!(
        "throughput: {:.3} database commits and {:.2} write jobs per call",
        commits as f64 / calls,
        jobs as f64 / calls
    );
    drop(service);
    let _ = std::fs::remove_dir_all(dir);
}

criterion_group!(calls, benches);
criterion_main!(calls);
