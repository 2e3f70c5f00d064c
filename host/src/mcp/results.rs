//! Bulkhead's tools and calls as MCP values.
//!
//! A finished call is an MCP tool result: its output as JSON text (and as
//! `structuredContent` when it is an object), `isError` with the contract's
//! error code when it failed, trapped or was rejected, and the call's id,
//! status and usage under `_meta`. A call waiting for a human is not an
//! error: it answers at once with status `pending_approval`, and the
//! built-in [`CALL_RESULT_TOOL`] waits for the decision.

use crate::model::{Call, CallStatus, ToolBoundary};
use crate::runtime::loader::LoadedTool;
use crate::service::ServiceError;
use rmcp::model::{CallToolResult, ContentBlock, JsonObject, MetaObject, Tool, ToolAnnotations};
use serde_json::{Value, json};

/// Waits for a call of the session to finish and returns its result. Tool
/// names are `[a-z0-9-]`, so this name cannot clash with a bundle's.
pub const CALL_RESULT_TOOL: &str = "bulkhead_call_result";
pub const MAX_WAIT_SECONDS: u64 = crate::service::calls::MAX_WAIT_SECONDS;

/// A tool of the session, with hints derived from its effective grants:
/// read-only when it can write nothing outside its own state (no network,
/// no writable folder), open-world when it has network.
pub fn tool(t: &LoadedTool, b: &ToolBoundary) -> Tool {
    let m = &t.manifest;
    let schema = m.input_schema.as_object().cloned().unwrap_or_default();
    let network = !b.grants.network.is_empty();
    let read_only = b.grants.changes_only_state();
    let description =
        if m.description.is_empty() { format!("{} {}", m.name, m.version) } else { m.description.clone() };
    let mut tool = Tool::new(m.name.clone(), description, schema);
    tool.annotations =
        Some(ToolAnnotations::from_raw(None, Some(read_only), (!read_only).then_some(true), None, Some(network)));
    tool.meta = Some(meta(json!({
        "bulkhead/version": m.version,
        "bulkhead/digest": t.digest,
        "bulkhead/approval_required": b.approval_required,
    })));
    tool
}

/// The built-in tool that fetches (and waits for) a call's result.
pub fn call_result_tool() -> Tool {
    let schema = json!({
        "type": "object",
        "properties": {
            "call_id": { "type": "string", "description": "The call id from an earlier result's structuredContent." },
            "wait_seconds": {
                "type": "integer", "minimum": 0, "maximum": MAX_WAIT_SECONDS,
                "description": "How long to wait for the call to finish (default 0: answer at once)."
            }
        },
        "required": ["call_id"],
        "additionalProperties": false
    });
    let mut tool = Tool::new(
        CALL_RESULT_TOOL,
        "Returns the result of an earlier call of this session, waiting up to wait_seconds for it to finish. \
         Use it for calls that answered status pending_approval: a human decides them through Bulkhead's API.",
        schema.as_object().cloned().unwrap_or_default(),
    );
    tool.annotations = Some(ToolAnnotations::from_raw(None, Some(true), None, Some(true), Some(false)));
    tool
}

/// A call record as a tool result.
pub fn call(c: &Call) -> CallToolResult {
    let mut r = match c.status {
        CallStatus::Succeeded => {
            let output = c.output.clone().unwrap_or(Value::Null);
            let mut r = CallToolResult::success(vec![ContentBlock::text(output.to_string())]);
            if output.is_object() {
                r.structured_content = Some(output);
            }
            r
        }
        CallStatus::PendingApproval | CallStatus::Running => {
            let text = if c.status == CallStatus::PendingApproval {
                format!(
                    "Call {} is waiting for a human decision. Call {CALL_RESULT_TOOL} with \
                     {{\"call_id\": \"{}\", \"wait_seconds\": {MAX_WAIT_SECONDS}}} to wait for it.",
                    c.id, c.id
                )
            } else {
                format!("Call {} is still running. Call {CALL_RESULT_TOOL} with {{\"call_id\": \"{}\"}}.", c.id, c.id)
            };
            let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
            r.structured_content = Some(json!({ "call_id": c.id, "status": c.status.as_str() }));
            r
        }
        _ => {
            let (code, message) = match &c.error {
                Some(e) => (e.code.clone(), e.message.clone()),
                None => (c.status.as_str().to_string(), format!("the call ended {}", c.status.as_str())),
            };
            error(&code, &message, Some(c))
        }
    };
    r.meta = Some(meta(json!({
        "bulkhead/call_id": c.id,
        "bulkhead/session": c.session,
        "bulkhead/status": c.status.as_str(),
        "bulkhead/usage": c.usage,
    })));
    r
}

/// A request the service refused (bad input, busy, forbidden...) as a tool
/// error the model can read and correct.
pub fn refused(e: &ServiceError) -> CallToolResult {
    if let ServiceError::Unavailable(detail) = e {
        tracing::error!("storage unavailable: {detail}");
    }
    error(e.code(), &e.to_string(), None)
}

fn error(code: &str, message: &str, c: Option<&Call>) -> CallToolResult {
    let mut r = CallToolResult::error(vec![ContentBlock::text(format!("{code}: {message}"))]);
    let mut body = json!({ "error": { "code": code, "message": message } });
    if let Some(c) = c {
        body["call_id"] = json!(c.id);
        body["status"] = json!(c.status.as_str());
    }
    r.structured_content = Some(body);
    r
}

pub fn meta(v: Value) -> MetaObject {
    match v {
        Value::Object(map) => MetaObject(map),
        _ => MetaObject(JsonObject::new()),
    }
}
