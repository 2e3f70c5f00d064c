//! The records of the contract (§7, §9) as stored and served: sessions,
//! messages, calls and audit events. Their JSON is the API's JSON.

use crate::policy::Grant;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// What one tool may do in one session: fixed at creation, only narrowed later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolBoundary {
    pub grants: Grant,
    pub approval_required: bool,
}

/// Byte-milliseconds in one MiB-hour, the unit of `stored_mib_hours`.
pub const BYTE_MS_PER_MIB_HOUR: f64 = 1_048_576.0 * 3_600_000.0;

/// Storage-time up to `now` (unix ms): what was counted up to `since`,
/// plus `bytes` kept since then.
pub fn stored_mib_hours(counted: f64, bytes: i64, since: i64, now: i64) -> f64 {
    counted + bytes.max(0) as f64 * (now - since).max(0) as f64 / BYTE_MS_PER_MIB_HOUR
}

/// MiB-seconds of memory a call held: its peak over its wall time.
pub fn memory_mib_seconds(u: &Usage) -> f64 {
    u.memory_peak_bytes as f64 / 1_048_576.0 * u.wall_ms as f64 / 1000.0
}

/// The bytes a message adds to its session's `stored_bytes`: its content
/// and metadata as stored.
pub fn message_bytes(content: &str, metadata: Option<&Value>) -> usize {
    content.len() + metadata.map_or(0, |m| m.to_string().len())
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionUsage {
    pub calls: u64,
    pub wall_ms: u64,
    pub fuel: u64,
    pub state_bytes_written: u64,
    pub egress_requests: u64,
    pub egress_bytes: u64,
    /// Bytes of tool state and messages the session keeps now.
    #[serde(default)]
    pub stored_bytes: u64,
    /// Memory held, in MiB (each call's peak), times the seconds it ran.
    #[serde(default)]
    pub memory_mib_seconds: f64,
    /// Storage kept, in MiB, times the hours it was kept, up to now.
    #[serde(default)]
    pub stored_mib_hours: f64,
    /// These units at the `[pricing]` prices, in `currency` (0 unpriced).
    #[serde(default)]
    pub cost: f64,
    #[serde(default)]
    pub currency: String,
}

impl SessionUsage {
    /// Sums `u` into this usage (a report's lines; cost included).
    pub fn add(&mut self, u: &SessionUsage) {
        self.calls += u.calls;
        self.wall_ms += u.wall_ms;
        self.fuel = self.fuel.saturating_add(u.fuel);
        self.state_bytes_written += u.state_bytes_written;
        self.egress_requests += u.egress_requests;
        self.egress_bytes += u.egress_bytes;
        self.stored_bytes += u.stored_bytes;
        self.memory_mib_seconds += u.memory_mib_seconds;
        self.stored_mib_hours += u.stored_mib_hours;
        self.cost += u.cost;
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub principal: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    /// Incremented by every committed change (message, finished call).
    pub version: i64,
    /// The effective grant per tool: the session's permission boundary.
    pub tools: BTreeMap<String, ToolBoundary>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub usage: SessionUsage,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    pub seq: i64,
    pub role: String,
    pub content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    pub created_at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    PendingApproval,
    Running,
    Succeeded,
    /// The tool returned an error.
    Failed,
    /// The host stopped the tool: timeout, memory, trap, output or state quota.
    Trapped,
    Rejected,
    /// The host stopped while the call ran.
    Interrupted,
}

impl CallStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::PendingApproval => "pending_approval",
            CallStatus::Running => "running",
            CallStatus::Succeeded => "succeeded",
            CallStatus::Failed => "failed",
            CallStatus::Trapped => "trapped",
            CallStatus::Rejected => "rejected",
            CallStatus::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<CallStatus> {
        serde_json::from_value(Value::String(s.to_string())).ok()
    }

    pub fn is_open(self) -> bool {
        matches!(self, CallStatus::PendingApproval | CallStatus::Running)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallError {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub wall_ms: u64,
    pub fuel: u64,
    pub memory_peak_bytes: u64,
    pub state_bytes_written: u64,
    pub egress_requests: u64,
    pub egress_bytes: u64,
    /// How much the bytes the session keeps changed when this call's
    /// state writes committed (0 unless it succeeded): the session's
    /// `stored_bytes` follows it, so no read has to sum the state.
    #[serde(skip)]
    pub stored_bytes_delta: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub required: bool,
    pub decision: Option<String>,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    pub decided_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// `debug`, `info`, `warn`, `error`, or `stdout`/`stderr` for captured output.
    pub level: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Call {
    pub id: String,
    pub session: String,
    pub tool: String,
    pub status: CallStatus,
    pub input: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<CallError>,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub usage: Usage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The tool's log lines and captured stdout/stderr, capped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<LogLine>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub seq: i64,
    pub at: String,
    pub session: String,
    pub kind: String,
    pub actor: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call: Option<String>,
    pub data: Value,
    pub prev_hash: String,
    pub hash: String,
}
