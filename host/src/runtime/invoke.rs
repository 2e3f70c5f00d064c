//! One call in its sandbox: a fresh `Store` and instance, the tool's limits,
//! and an outcome classified the way the contract names it.

use super::Runtime;
use super::loader::LoadedTool;
use crate::caps::limits::MemoryLimitExceeded;
use crate::caps::{CallEnv, HostState};
use crate::events::Event;
use crate::model::{CallError, CallStatus, LogLine, Usage};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tracing::Instrument;
use wasmtime::{Store, Trap, UpdateDeadline};

/// Fuel is metered to report work done, not to limit it (the timeout does).
const FUEL_BUDGET: u64 = 1 << 62;
/// Error messages from a tool are kept to this many bytes.
const MAX_ERROR_BYTES: usize = 4096;

/// Marks the trap raised by the epoch callback at the deadline.
#[derive(Debug)]
struct DeadlineReached;

impl std::fmt::Display for DeadlineReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline reached")
    }
}

impl std::error::Error for DeadlineReached {}

/// What a call produced. State writes are present only when it succeeded.
#[derive(Debug)]
pub struct Outcome {
    pub status: CallStatus,
    pub output: Option<Value>,
    pub error: Option<CallError>,
    pub usage: Usage,
    pub logs: Vec<LogLine>,
    pub state_writes: BTreeMap<String, Option<Vec<u8>>>,
    pub notes: Vec<Event>,
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn trapped(code: &str, message: String) -> (CallStatus, Option<Value>, Option<CallError>) {
    (CallStatus::Trapped, None, Some(CallError { code: code.into(), message }))
}

impl Runtime {
    pub async fn invoke(&self, tool: &LoadedTool, input: &str, env: CallEnv) -> Outcome {
        let limits = tool.limits;
        let timeout = Duration::from_millis(limits.timeout_ms);
        let started = Instant::now();
        let memory = (limits.memory_mb as usize) << 20;
        let mut store = Store::new(&self.engine, HostState::new(env, memory, started + timeout));
        store.limiter(|s| &mut s.limiter);
        store.set_fuel(FUEL_BUDGET).expect("fuel is enabled in the engine config");
        // At every epoch tick: stop at the deadline, otherwise yield so a busy
        // guest does not hold a runtime thread.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline {
                Err(wasmtime::Error::new(DeadlineReached))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });

        // The wall-clock timeout also covers a guest blocked in a host call,
        // where epochs do not fire.
        let run = async {
            let instantiate = tracing::trace_span!(target: crate::telemetry::TARGET, "instantiate");
            let instance = tool.pre.instantiate_async(&mut store).instrument(instantiate).await?;
            instance.call_invoke(&mut store, input).await
        };
        let result = tokio::time::timeout(timeout, run).await;
        let wall = started.elapsed();

        let (status, output, error) = match result {
            Err(_elapsed) => trapped("timeout", format!("stopped after the {} ms timeout", limits.timeout_ms)),
            Ok(Err(e)) => {
                if store.data().limiter.exceeded || e.downcast_ref::<MemoryLimitExceeded>().is_some() {
                    trapped("memory", format!("stopped at the {} MiB memory limit", limits.memory_mb))
                } else if e.downcast_ref::<DeadlineReached>().is_some() {
                    trapped("timeout", format!("stopped after the {} ms timeout", limits.timeout_ms))
                } else if let Some(trap) = e.downcast_ref::<Trap>() {
                    trapped("trap", format!("the tool trapped: {trap}"))
                } else {
                    trapped("trap", truncate(format!("the tool failed: {e:#}"), MAX_ERROR_BYTES))
                }
            }
            Ok(Ok(Err(message))) => (
                CallStatus::Failed,
                None,
                Some(CallError { code: "tool_error".into(), message: truncate(message, MAX_ERROR_BYTES) }),
            ),
            Ok(Ok(Ok(text))) => {
                let max = (limits.output_kb as usize) << 10;
                if text.len() > max {
                    trapped("output_too_large", format!("output of {} bytes is over the {max}-byte limit", text.len()))
                } else if store.data().state.quota_exceeded {
                    trapped(
                        "state_quota",
                        format!(
                            "a state write was refused at the {} KiB state limit; nothing was committed",
                            limits.state_kb
                        ),
                    )
                } else if store.data().state.read_failed {
                    trapped("trap", "the tool's state could not be read; nothing was committed".to_string())
                } else {
                    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
                    (CallStatus::Succeeded, Some(value), None)
                }
            }
        };

        let fuel = store.get_fuel().map(|left| FUEL_BUDGET.saturating_sub(left)).unwrap_or(0);
        let state = store.data_mut();
        let (egress_requests, egress_bytes) = state.take_egress();
        // Nothing a secret was read into leaves the call unredacted.
        let output = output.map(|v| match v {
            Value::String(s) => Value::String(state.redact(s)),
            other => serde_json::from_str(&state.redact(other.to_string())).unwrap_or(Value::Null),
        });
        let error = error.map(|e| CallError { code: e.code, message: state.redact(e.message) });
        let logs: Vec<LogLine> = state
            .take_logs()
            .into_iter()
            .map(|l| LogLine { level: l.level, message: state.redact(l.message) })
            .collect();
        let succeeded = status == CallStatus::Succeeded;
        // Secrets never reach the database: not through state, not through
        // the audit notes (a denied name or host may carry a secret too).
        let writes = if succeeded { std::mem::take(&mut state.state.writes) } else { BTreeMap::new() };
        let state_writes: BTreeMap<String, Option<Vec<u8>>> =
            writes.into_iter().map(|(k, v)| (state.redact(k), v.map(|v| state.redact_bytes(v)))).collect();
        let stored_bytes_delta = state.stored_delta(&state_writes);
        let notes: Vec<Event> =
            std::mem::take(&mut state.notes).into_iter().map(|n| n.redacted(|data| state.redact(data))).collect();
        Outcome {
            status,
            output,
            error,
            usage: Usage {
                wall_ms: wall.as_millis() as u64,
                fuel,
                memory_peak_bytes: state.limiter.peak as u64,
                state_bytes_written: if succeeded { state.state.bytes_written } else { 0 },
                egress_requests,
                egress_bytes,
                stored_bytes_delta,
            },
            logs,
            state_writes,
            notes,
        }
    }
}
