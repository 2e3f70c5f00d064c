//! Calls as tasks of MCP's tasks extension (SEP-2663), for clients that
//! declare it: a `tools/call` that waits for a human decision answers a
//! task whose id is the call's id; `tasks/get` answers `working` while the
//! call waits or runs, then `completed` with the call's tool result (failed
//! calls too: their result has `isError`, as for any tool call). Clients
//! without the extension get the `pending_approval` result and
//! `bulkhead_call_result`, unchanged.

use super::results;
use crate::model::{Call, CallStatus};
use rmcp::model::{DetailedTask, Task, TaskPayload, TaskStatus};
use serde_json::Value;

/// How often a client should poll a waiting call: a human decides it.
const POLL_INTERVAL_MS: u64 = 2000;

pub fn task(call: &Call) -> Task {
    let updated = call.finished_at.clone().unwrap_or_else(|| call.created_at.clone());
    let (status, message) = match call.status {
        CallStatus::PendingApproval => (TaskStatus::Working, "waiting for a human decision (an approver decides it)"),
        CallStatus::Running => (TaskStatus::Working, "running"),
        _ => (TaskStatus::Completed, call.status.as_str()),
    };
    // The call is durable: the task lives as long as the session.
    Task::new(call.id.clone(), status, call.created_at.clone(), updated)
        .with_status_message(message)
        .with_poll_interval_ms(POLL_INTERVAL_MS)
}

pub fn detailed(call: &Call) -> DetailedTask {
    let payload = match call.status {
        CallStatus::PendingApproval | CallStatus::Running => TaskPayload::Working,
        _ => match serde_json::to_value(results::call(call)) {
            Ok(Value::Object(result)) => TaskPayload::Completed { result },
            _ => TaskPayload::Working,
        },
    };
    DetailedTask::new(task(call), payload)
}
