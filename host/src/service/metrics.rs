//! Counters behind `/metrics` (Prometheus text format).

use crate::model::{Call, CallStatus};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

const STATUSES: [CallStatus; 7] = [
    CallStatus::PendingApproval,
    CallStatus::Running,
    CallStatus::Succeeded,
    CallStatus::Failed,
    CallStatus::Trapped,
    CallStatus::Rejected,
    CallStatus::Interrupted,
];
/// Upper bounds (ms) of the call latency histogram.
const LATENCY_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000, 30000];

#[derive(Default)]
pub struct Metrics {
    /// Per tool ever served since start (a reload adds; removed tools keep
    /// their counts): read on every call, written only by a reload.
    calls: std::sync::RwLock<BTreeMap<String, [AtomicU64; 7]>>,
    latency: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    latency_sum_ms: AtomicU64,
    fuel: AtomicU64,
    egress_bytes: AtomicU64,
    denials: AtomicU64,
    pub http_requests: AtomicU64,
}

/// Values read from the database at scrape time.
pub struct Gauges {
    pub calls_in_flight: usize,
    /// Requests long-polling for a call to end (`?wait=`).
    pub call_waiters: usize,
    pub tools_loaded: usize,
    pub sessions: u64,
    pub pending_approvals: u64,
    pub storage_bytes: u64,
    /// The database writer's counters (they only grow).
    pub db_commits: u64,
    pub db_write_jobs: u64,
    pub db_write_jobs_run_by_callers: u64,
}

impl Metrics {
    pub fn new<'a>(tools: impl Iterator<Item = &'a String>) -> Metrics {
        let calls = tools.map(|t| (t.clone(), Default::default())).collect();
        Metrics { calls: std::sync::RwLock::new(calls), ..Default::default() }
    }

    /// Counts calls of a tool a reload added.
    pub fn add_tool(&self, tool: &str) {
        let mut calls = self.calls.write().expect("metrics lock poisoned");
        calls.entry(tool.to_string()).or_default();
    }

    /// Counts a call that reached `status`; finished calls add their usage.
    pub fn record(&self, call: &Call, denials: usize) {
        if let Some(counters) = self.calls.read().expect("metrics lock poisoned").get(&call.tool) {
            counters[call.status as usize].fetch_add(1, Ordering::Relaxed);
        }
        self.denials.fetch_add(denials as u64, Ordering::Relaxed);
        if call.finished_at.is_some() && call.started_at.is_some() {
            let ms = call.usage.wall_ms;
            let bucket = LATENCY_BUCKETS_MS.iter().position(|b| ms <= *b).unwrap_or(LATENCY_BUCKETS_MS.len());
            self.latency[bucket].fetch_add(1, Ordering::Relaxed);
            self.latency_sum_ms.fetch_add(ms, Ordering::Relaxed);
            self.fuel.fetch_add(call.usage.fuel, Ordering::Relaxed);
            self.egress_bytes.fetch_add(call.usage.egress_bytes, Ordering::Relaxed);
        }
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        metric("bulkhead_calls_total", "counter", "Calls by tool and the status they reached, since start.");
        let mut lines = String::new();
        for (tool, counters) in self.calls.read().expect("metrics lock poisoned").iter() {
            for status in STATUSES {
                let n = counters[status as usize].load(Ordering::Relaxed);
                let _ = writeln!(lines, "bulkhead_calls_total{{tool=\"{tool}\",status=\"{}\"}} {n}", status.as_str());
            }
        }
        out.push_str(&lines);
        let mut hist = String::new();
        let _ = writeln!(
            hist,
            "# HELP bulkhead_call_duration_ms Wall time of finished calls.\n# TYPE bulkhead_call_duration_ms histogram"
        );
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS_MS.iter().enumerate() {
            cumulative += self.latency[i].load(Ordering::Relaxed);
            let _ = writeln!(hist, "bulkhead_call_duration_ms_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.latency[LATENCY_BUCKETS_MS.len()].load(Ordering::Relaxed);
        let _ = writeln!(hist, "bulkhead_call_duration_ms_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(hist, "bulkhead_call_duration_ms_sum {}", self.latency_sum_ms.load(Ordering::Relaxed));
        let _ = writeln!(hist, "bulkhead_call_duration_ms_count {cumulative}");
        out.push_str(&hist);
        let counters = [
            ("bulkhead_fuel_total", "Wasm fuel consumed by finished calls.", self.fuel.load(Ordering::Relaxed)),
            (
                "bulkhead_egress_bytes_total",
                "Bytes of outbound HTTP responses.",
                self.egress_bytes.load(Ordering::Relaxed),
            ),
            ("bulkhead_denials_total", "Capability uses refused by a grant.", self.denials.load(Ordering::Relaxed)),
            ("bulkhead_http_requests_total", "HTTP requests received.", self.http_requests.load(Ordering::Relaxed)),
            ("bulkhead_db_commits_total", "Transactions the database writer committed.", g.db_commits),
            (
                "bulkhead_db_write_jobs_total",
                "Write jobs the database writer ran (jobs per commit: how well group commit works).",
                g.db_write_jobs,
            ),
            (
                "bulkhead_db_write_jobs_run_by_callers_total",
                "Of those jobs, the ones run on their caller's thread (the writer was idle: no hand-off).",
                g.db_write_jobs_run_by_callers,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        }
        let gauges = [
            ("bulkhead_calls_in_flight", "Calls holding a concurrency slot.", g.calls_in_flight as u64),
            ("bulkhead_call_waiters", "Requests waiting for a call to end (long-polls).", g.call_waiters as u64),
            ("bulkhead_tools_loaded", "Tool bundles being served.", g.tools_loaded as u64),
            ("bulkhead_sessions", "Sessions in the database.", g.sessions),
            ("bulkhead_pending_approvals", "Calls waiting for a human decision.", g.pending_approvals),
            ("bulkhead_storage_bytes", "Size of the database files (with WAL).", g.storage_bytes),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        out
    }
}
