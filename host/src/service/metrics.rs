//! `/metrics`: the host's meters in a `prometheus-client` registry, served
//! in the Prometheus text format (or OpenMetrics, when asked for).
//!
//! Counted as calls end: calls per tool and status; per tool, the fuel,
//! egress requests and bytes, and capability denials; histograms per tool
//! of a call's run, its wait for its turn, and its outcome's commit. Read
//! at scrape time: the gauges and the database writer's counters.

use crate::model::{Call, CallStatus};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const STATUSES: [CallStatus; 7] = [
    CallStatus::PendingApproval,
    CallStatus::Running,
    CallStatus::Succeeded,
    CallStatus::Failed,
    CallStatus::Trapped,
    CallStatus::Rejected,
    CallStatus::Interrupted,
];
/// Upper bounds (seconds) of the duration histograms: 100 µs to 30 s.
const SECONDS_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolLabel {
    tool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    tool: String,
    status: &'static str,
}

type Histograms = Family<ToolLabel, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    Histogram::new(SECONDS_BUCKETS)
}

/// Values read from the database and the service at scrape time.
#[derive(Debug, Default, Clone)]
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

pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    fuel: Family<ToolLabel, Counter>,
    egress_requests: Family<ToolLabel, Counter>,
    egress_bytes: Family<ToolLabel, Counter>,
    denials: Family<ToolLabel, Counter>,
    run: Histograms,
    queue: Histograms,
    commit: Histograms,
    pub http_requests: Counter,
    /// The scrape-time values, set just before each encoding.
    scraped: Arc<Mutex<Gauges>>,
}

impl Metrics {
    pub fn new<'a>(tools: impl Iterator<Item = &'a String>) -> Metrics {
        let mut registry = Registry::with_prefix("bulkhead");
        let m = Metrics {
            calls: Family::default(),
            fuel: Family::default(),
            egress_requests: Family::default(),
            egress_bytes: Family::default(),
            denials: Family::default(),
            run: Family::new_with_constructor(seconds_histogram),
            queue: Family::new_with_constructor(seconds_histogram),
            commit: Family::new_with_constructor(seconds_histogram),
            http_requests: Counter::default(),
            scraped: Arc::default(),
            registry: Registry::default(),
        };
        registry.register("calls", "Calls by tool and the status they reached, since start", m.calls.clone());
        registry.register("fuel", "Wasm fuel consumed by finished calls, per tool", m.fuel.clone());
        registry.register(
            "egress_requests",
            "Outbound HTTP requests of finished calls, per tool",
            m.egress_requests.clone(),
        );
        registry.register("egress_bytes", "Bytes of outbound HTTP responses, per tool", m.egress_bytes.clone());
        registry.register("denials", "Capability uses refused by a grant, per tool", m.denials.clone());
        let seconds = |r: &mut Registry, name: &str, help: &str, h: &Histograms| {
            r.register_with_unit(name, help, Unit::Seconds, h.clone());
        };
        seconds(&mut registry, "call_duration", "Run time of finished calls (instantiate and run), per tool", &m.run);
        seconds(&mut registry, "call_queue", "Time a call waited for its turn on its tool's state, per tool", &m.queue);
        seconds(&mut registry, "commit", "Time to commit a call's outcome (record, state, audit), per tool", &m.commit);
        registry.register("http_requests", "HTTP requests received", m.http_requests.clone());
        registry.register_collector(Box::new(Scraped(m.scraped.clone())));
        for tool in tools {
            m.add_tool(tool);
        }
        Metrics { registry, ..m }
    }

    /// Shows every status of a tool (a reload's new tools too) from zero.
    pub fn add_tool(&self, tool: &str) {
        for status in STATUSES {
            let _ = self.calls.get_or_create(&CallLabels { tool: tool.to_string(), status: status.as_str() });
        }
    }

    /// Counts a call that reached `status`; finished calls add their usage.
    pub fn record(&self, call: &Call, denials: usize) {
        let labels = CallLabels { tool: call.tool.clone(), status: call.status.as_str() };
        self.calls.get_or_create(&labels).inc();
        let tool = ToolLabel { tool: labels.tool };
        if denials > 0 {
            self.denials.get_or_create(&tool).inc_by(denials as u64);
        }
        if call.finished_at.is_some() && call.started_at.is_some() {
            let u = &call.usage;
            self.run.get_or_create(&tool).observe(u.wall_ms as f64 / 1000.0);
            self.fuel.get_or_create(&tool).inc_by(u.fuel);
            if u.egress_requests > 0 {
                self.egress_requests.get_or_create(&tool).inc_by(u.egress_requests);
                self.egress_bytes.get_or_create(&tool).inc_by(u.egress_bytes);
            }
        }
    }

    /// How long a call of `tool` waited for its turn, and took to commit.
    pub fn record_timings(&self, tool: &str, queue: Duration, commit: Duration) {
        let tool = ToolLabel { tool: tool.to_string() };
        self.queue.get_or_create(&tool).observe(queue.as_secs_f64());
        self.commit.get_or_create(&tool).observe(commit.as_secs_f64());
    }

    /// The exposition: Prometheus text (0.0.4), or OpenMetrics 1.0.
    pub fn render(&self, g: Gauges, openmetrics: bool) -> String {
        // One scrape at a time: the collector reads what this one set.
        let mut scraped = self.scraped.lock().expect("metrics lock poisoned");
        *scraped = g;
        drop(scraped);
        let mut out = String::new();
        let encoded = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        // Writing to a String cannot fail; a metric that could not encode
        // would be a bug, logged rather than answered half-written.
        if let Err(e) = encoded {
            tracing::error!("cannot encode the metrics: {e}");
        }
        out
    }
}

/// The scrape-time values, as a collector of constant metrics.
#[derive(Debug)]
struct Scraped(Arc<Mutex<Gauges>>);

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let g = self.0.lock().map_err(|_| std::fmt::Error)?.clone();
        let counters = [
            ("db_commits", "Transactions the database writer committed", g.db_commits),
            (
                "db_write_jobs",
                "Write jobs the database writer ran (jobs per commit: how well group commit works)",
                g.db_write_jobs,
            ),
            (
                "db_write_jobs_run_by_callers",
                "Of those jobs, the ones run on their caller's thread (the writer was idle: no hand-off)",
                g.db_write_jobs_run_by_callers,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
        }
        let gauges = [
            ("calls_in_flight", "Calls holding a concurrency slot", g.calls_in_flight as i64),
            ("call_waiters", "Requests waiting for a call to end (long-polls)", g.call_waiters as i64),
            ("tools_loaded", "Tool bundles being served", g.tools_loaded as i64),
            ("sessions", "Sessions in the database", g.sessions as i64),
            ("pending_approvals", "Calls waiting for a human decision", g.pending_approvals as i64),
            ("storage_bytes", "Size of the database files (with WAL)", g.storage_bytes as i64),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}
