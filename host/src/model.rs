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

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionUsage {
    pub calls: u64,
    pub wall_ms: u64,
    pub fuel: u64,
    pub state_bytes_written: u64,
    pub egress_requests: u64,
    pub egress_bytes: u64,
    /// Bytes of tool state and messages the session keeps now (computed on read).
    #[serde(default)]
    pub stored_bytes: u64,
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
