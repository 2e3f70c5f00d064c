//! Audit events (contract §9): one type per kind, each with one constructor.
//!
//! Every event the host records is built here, by the service (sessions,
//! messages, calls, approvals) and by the capabilities (secret reads,
//! egress, denials), so an event's format is a change in this file alone.
//! An [`Event`] carries its kind and its data already serialized as
//! canonical JSON (compact, keys sorted: the form its hash is computed
//! over), so `store::audit` only chains and stores it, and the writer
//! thread, which every call shares, does no JSON work.
//!
//! | kind | type | data |
//! |---|---|---|
//! | `session_created` | [`SessionCreated`] | `tools`, `expires_at`, `labels`, `env` (names only) |
//! | `session_narrowed` | [`SessionNarrowed`] | `tools` |
//! | `session_deleted` | [`SessionDeleted`] | `reason` when expired |
//! | `message_appended` | [`MessageAppended`] | `seq`, `role`, `bytes`, `sha256` (never the content) |
//! | `call_requested` | [`CallRequested`] | `tool`, `input_sha256`, `status`, `idempotency_key` |
//! | `approval_decided` | [`ApprovalDecided`] | `tool`, `decision`, `reason` |
//! | `state_committed` | [`StateCommitted`] | `tool`, `keys`, `bytes` |
//! | `call_finished` | [`CallFinished`] | `tool`, `status`, `error` (its code), `usage`, `tool_version` when it ran |
//! | `secret_read` | [`SecretRead`] | `tool`, `name` (never the value) |
//! | `egress` | [`Egress`] | `method`, `scheme`, `host`, `port`, `status`, `bytes`, `duration_ms`, `error` when the host knows why no response came |
//! | `tool_updated` | [`ToolUpdated`] | `tool`, `old`, `new` (version, digests), `capability_diff`, `signature`, `source` (chain `tools`) |
//! | `capability_denied` | [`CapabilityDenied`] | `tool`, `capability`, and `target`/`reason` or `detail` |

use crate::model::{Call, CallStatus, Message, Session, ToolBoundary, Usage};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// An event ready for its session's chain: the kind, and the data as
/// canonical JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    kind: &'static str,
    data: String,
}

impl Event {
    /// Serializes `data` the canonical way: through a `Value`, whose maps
    /// are sorted, so the stored text is what a verifier re-serializes.
    fn new(kind: &'static str, data: &impl Serialize) -> Event {
        let data = serde_json::to_value(data).map_or_else(|_| "null".to_string(), |v| v.to_string());
        Event { kind, data }
    }

    /// [`Event::new`] without the `Value`: for the kinds of every call,
    /// whose fields (nested ones too) are declared in sorted order, so
    /// serde prints the canonical bytes directly. Building and printing a
    /// `Value` cost about 6% of the host's CPU per call. Unit tests check
    /// every such event against its `Value` form.
    fn sorted(kind: &'static str, data: &impl Serialize) -> Event {
        let text = serde_json::to_string(data).unwrap_or_else(|_| "null".to_string());
        #[cfg(test)]
        assert_eq!(text, Event::new(kind, data).data, "{kind}: fields are declared in sorted order");
        Event { kind, data: text }
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The data as stored and hashed.
    pub fn data(&self) -> &str {
        &self.data
    }

    pub fn is_denial(&self) -> bool {
        self.kind == CapabilityDenied::KIND
    }

    /// The event with `redact` applied to its data (secret values a call
    /// read), made canonical again: a replacement inside an escaped string
    /// could leave text that no longer parses, which is stored as `null`.
    pub fn redacted(self, redact: impl FnOnce(String) -> String) -> Event {
        let text = redact(self.data);
        let data = serde_json::from_str::<Value>(&text).map_or_else(|_| "null".to_string(), |v| v.to_string());
        Event { kind: self.kind, data }
    }

    /// An event of any kind with empty data, for the store's own tests
    /// (the kind is leaked: tests make a handful).
    #[cfg(test)]
    pub fn test(kind: &str) -> Event {
        Event { kind: Box::leak(kind.to_string().into_boxed_str()), data: "{}".into() }
    }
}

/// The kind's name and the conversion into an [`Event`].
/// `sorted` marks a kind whose fields are declared in sorted order (see
/// [`Event::sorted`]).
macro_rules! kind {
    ($ty:ident, $name:literal) => {
        kind!(@ $ty, $name, new);
    };
    ($ty:ident, $name:literal, sorted) => {
        kind!(@ $ty, $name, sorted);
    };
    (@ $ty:ident, $name:literal, $make:ident) => {
        impl $ty<'_> {
            pub const KIND: &'static str = $name;
        }

        impl From<$ty<'_>> for Event {
            fn from(e: $ty<'_>) -> Event {
                Event::$make($name, &e)
            }
        }
    };
}

/// A session and its permission boundary were created.
#[derive(Serialize)]
pub struct SessionCreated<'a> {
    tools: &'a BTreeMap<String, ToolBoundary>,
    expires_at: &'a Option<String>,
    labels: &'a BTreeMap<String, String>,
    /// Names only: values may be sensitive.
    env: Vec<&'a String>,
}
kind!(SessionCreated, "session_created");

impl<'a> SessionCreated<'a> {
    pub fn of(s: &'a Session) -> SessionCreated<'a> {
        SessionCreated { tools: &s.tools, expires_at: &s.expires_at, labels: &s.labels, env: s.env.keys().collect() }
    }
}

/// The boundary was narrowed; `tools` is the new one.
#[derive(Serialize)]
pub struct SessionNarrowed<'a> {
    tools: &'a BTreeMap<String, ToolBoundary>,
}
kind!(SessionNarrowed, "session_narrowed");

impl<'a> SessionNarrowed<'a> {
    pub fn of(tools: &'a BTreeMap<String, ToolBoundary>) -> SessionNarrowed<'a> {
        SessionNarrowed { tools }
    }
}

/// Why a session was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// Its principal (or an admin) asked.
    Requested,
    /// Its `ttl_seconds` ran out.
    Expired,
}

#[derive(Serialize)]
pub struct SessionDeleted<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}
kind!(SessionDeleted, "session_deleted", sorted);

impl SessionDeleted<'_> {
    pub fn of(why: Deletion) -> SessionDeleted<'static> {
        SessionDeleted { reason: (why == Deletion::Expired).then_some("expired") }
    }
}

/// A message was appended: its place and a digest, never its content.
#[derive(Serialize)]
pub struct MessageAppended<'a> {
    bytes: usize,
    role: &'a str,
    seq: i64,
    sha256: String,
}
kind!(MessageAppended, "message_appended", sorted);

impl<'a> MessageAppended<'a> {
    pub fn of(m: &'a Message) -> MessageAppended<'a> {
        MessageAppended {
            seq: m.seq,
            role: &m.role,
            bytes: m.content.len(),
            sha256: crate::util::sha256_hex(m.content.as_bytes()),
        }
    }
}

/// A call was recorded (`running` or `pending_approval`); `input_json` is
/// its input as stored, whose digest stands in for it.
#[derive(Serialize)]
pub struct CallRequested<'a> {
    idempotency_key: Option<&'a str>,
    input_sha256: String,
    status: CallStatus,
    tool: &'a str,
}
kind!(CallRequested, "call_requested", sorted);

impl<'a> CallRequested<'a> {
    pub fn of(call: &'a Call, input_json: &str) -> CallRequested<'a> {
        CallRequested {
            tool: &call.tool,
            input_sha256: crate::util::sha256_hex(input_json.as_bytes()),
            status: call.status,
            idempotency_key: call.idempotency_key.as_deref(),
        }
    }
}

/// A human (or the expiry sweep) decided a pending call.
#[derive(Serialize)]
pub struct ApprovalDecided<'a> {
    decision: Option<&'a str>,
    reason: Option<&'a str>,
    tool: &'a str,
}
kind!(ApprovalDecided, "approval_decided", sorted);

impl<'a> ApprovalDecided<'a> {
    pub fn of(call: &'a Call) -> ApprovalDecided<'a> {
        let approval = call.approval.as_ref();
        ApprovalDecided {
            tool: &call.tool,
            decision: approval.and_then(|a| a.decision.as_deref()),
            reason: approval.and_then(|a| a.reason.as_deref()),
        }
    }
}

/// A succeeded call's state writes were committed with it.
#[derive(Serialize)]
pub struct StateCommitted<'a> {
    bytes: u64,
    keys: Vec<&'a String>,
    tool: &'a str,
}
kind!(StateCommitted, "state_committed", sorted);

impl<'a> StateCommitted<'a> {
    pub fn of<V>(call: &'a Call, writes: &'a BTreeMap<String, V>) -> StateCommitted<'a> {
        StateCommitted { tool: &call.tool, keys: writes.keys().collect(), bytes: call.usage.state_bytes_written }
    }
}

/// A call ended, whatever ended it (its tool, an approver, the expiry
/// sweep, a restart, a storage failure): one shape for all.
#[derive(Serialize)]
pub struct CallFinished<'a> {
    /// The error's code; its message may quote the tool.
    error: Option<&'a str>,
    status: CallStatus,
    tool: &'a str,
    /// The version of the tool that ran (absent when nothing ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_version: Option<&'a ToolVersion>,
    usage: SortedUsage,
}
kind!(CallFinished, "call_finished", sorted);

/// [`Usage`]'s recorded fields in sorted order (the API answers them in
/// its own order).
#[derive(Serialize)]
struct SortedUsage {
    egress_bytes: u64,
    egress_requests: u64,
    fuel: u64,
    memory_peak_bytes: u64,
    state_bytes_written: u64,
    wall_ms: u64,
}

impl From<Usage> for SortedUsage {
    fn from(u: Usage) -> SortedUsage {
        let Usage {
            wall_ms,
            fuel,
            memory_peak_bytes,
            state_bytes_written,
            egress_requests,
            egress_bytes,
            stored_bytes_delta: _,
        } = u;
        SortedUsage { egress_bytes, egress_requests, fuel, memory_peak_bytes, state_bytes_written, wall_ms }
    }
}

impl<'a> CallFinished<'a> {
    pub fn of(call: &'a Call) -> CallFinished<'a> {
        CallFinished::ran(call, None)
    }

    /// A call that ran on `version` of its tool.
    pub fn ran(call: &'a Call, version: Option<&'a ToolVersion>) -> CallFinished<'a> {
        CallFinished {
            tool: &call.tool,
            status: call.status,
            error: call.error.as_ref().map(|e| e.code.as_str()),
            usage: call.usage.into(),
            tool_version: version,
        }
    }
}

/// One version of a tool: its manifest's version and the digests of the
/// bytes that were loaded. Fields in sorted order: `call_finished` prints
/// it directly.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolVersion {
    pub digest: String,
    pub manifest_digest: String,
    pub version: String,
}

/// The tool set of a host changed (reload, or a start that found another
/// version than the last recorded): written to the [`TOOLS_CHAIN`].
#[derive(Serialize)]
pub struct ToolUpdated<'a> {
    tool: &'a str,
    /// Absent for a tool that appeared.
    old: Option<&'a ToolVersion>,
    /// Absent for a tool that was removed.
    new: Option<&'a ToolVersion>,
    /// What `bulkhead review` found changed in the capability surface.
    capability_diff: &'a Value,
    /// The signature verdict of the new version.
    signature: &'a Value,
    /// Where the new version came from (`dir` or the OCI reference).
    source: &'a Value,
}
kind!(ToolUpdated, "tool_updated");

/// The audit chain of the host's tool set, beside the sessions' chains.
/// Not an id the host generates, so no session ever shares it.
pub const TOOLS_CHAIN: &str = "tools";

impl<'a> ToolUpdated<'a> {
    pub fn of(
        tool: &'a str,
        old: Option<&'a ToolVersion>,
        new: Option<&'a ToolVersion>,
        capability_diff: &'a Value,
        signature: &'a Value,
        source: &'a Value,
    ) -> ToolUpdated<'a> {
        ToolUpdated { tool, old, new, capability_diff, signature, source }
    }
}

/// A tool read a granted secret: its name, never its value.
#[derive(Serialize)]
pub struct SecretRead<'a> {
    name: &'a str,
    tool: &'a str,
}
kind!(SecretRead, "secret_read", sorted);

impl<'a> SecretRead<'a> {
    pub fn of(tool: &'a str, name: &'a str) -> SecretRead<'a> {
        SecretRead { tool, name }
    }
}

/// One outbound HTTP request of a tool, as far as it went.
#[derive(Serialize)]
pub struct Egress<'a> {
    bytes: u64,
    duration_ms: u64,
    /// E.g. the reason a certificate was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    host: &'a str,
    method: &'a str,
    port: u16,
    scheme: &'a str,
    /// None when no response came.
    status: Option<u16>,
}
kind!(Egress, "egress", sorted);

/// What an [`Egress`] event records of a request.
pub struct Request<'a> {
    pub method: &'a str,
    pub https: bool,
    pub host: &'a str,
    pub port: u16,
}

impl<'a> Egress<'a> {
    pub fn of(r: Request<'a>, status: Option<u16>, bytes: u64, duration_ms: u64) -> Egress<'a> {
        let scheme = if r.https { "https" } else { "http" };
        Egress { bytes, duration_ms, error: None, host: r.host, method: r.method, port: r.port, scheme, status }
    }

    /// The request failed for `error`, if the host knows why.
    pub fn failed(self, error: Option<&'a str>) -> Egress<'a> {
        Egress { error, ..self }
    }
}

/// What a tool tried and was refused, per capability.
#[derive(Debug, Clone, Copy)]
pub enum Denial<'a> {
    /// `target` is `host:port`.
    Network { target: &'a str, reason: &'a str },
    /// A granted folder could not be mounted at guest path `guest`.
    MountUnavailable { guest: &'a str },
    /// A write past the session workspace's quota.
    WorkspaceQuota { max_bytes: u64, max_files: u64 },
    /// A secret not granted (or not configured).
    Secret { name: &'a str },
    /// The session history, with `history = false`.
    History,
}

/// A use of something outside the effective grant (contract §6).
#[derive(Serialize)]
pub struct CapabilityDenied<'a> {
    capability: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<Detail<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<&'a str>,
    tool: &'a str,
}
kind!(CapabilityDenied, "capability_denied", sorted);

#[derive(Serialize)]
#[serde(untagged)]
enum Detail<'a> {
    Name { name: &'a str },
    Quota { max_bytes: u64, max_files: u64, reason: &'static str },
}

impl<'a> CapabilityDenied<'a> {
    pub fn of(tool: &'a str, denial: Denial<'a>) -> CapabilityDenied<'a> {
        let base = |capability| CapabilityDenied { tool, capability, target: None, reason: None, detail: None };
        match denial {
            Denial::Network { target, reason } => {
                CapabilityDenied { target: Some(target), reason: Some(reason), ..base("network") }
            }
            Denial::MountUnavailable { guest } => {
                CapabilityDenied { target: Some(guest), reason: Some("mount unavailable"), ..base("files") }
            }
            Denial::WorkspaceQuota { max_bytes, max_files } => CapabilityDenied {
                detail: Some(Detail::Quota { max_bytes, max_files, reason: "workspace quota" }),
                ..base("files")
            },
            Denial::Secret { name } => CapabilityDenied { detail: Some(Detail::Name { name }), ..base("secret") },
            Denial::History => base("history"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call() -> Call {
        serde_json::from_value(json!({
            "id": "c1", "session": "s1", "tool": "counter", "status": "failed", "input": {},
            "created_at": "t", "usage": Usage::default(),
            "error": { "code": "tool_error", "message": "boom" },
        }))
        .unwrap()
    }

    fn data(e: impl Into<Event>) -> Value {
        let e = e.into();
        let parsed: Value = serde_json::from_str(e.data()).unwrap();
        assert_eq!(parsed.to_string(), e.data(), "{}: stored data is canonical", e.kind());
        parsed
    }

    /// The shapes existing chains hold: events written from now on keep
    /// them, so readers of the audit trail see one format per kind.
    #[test]
    fn each_kind_keeps_the_shape_existing_chains_hold() {
        let mut c = call();
        assert_eq!(
            data(CallFinished::of(&c)),
            json!({ "tool": "counter", "status": "failed", "error": "tool_error", "usage": Usage::default() })
        );
        c.error = None;
        c.status = CallStatus::Running;
        c.idempotency_key = Some("k".into());
        assert_eq!(
            data(CallRequested::of(&c, "{}")),
            json!({ "tool": "counter", "input_sha256": crate::util::sha256_hex(b"{}"), "status": "running", "idempotency_key": "k" })
        );
        assert_eq!(data(SessionDeleted::of(Deletion::Requested)), json!({}));
        assert_eq!(data(SessionDeleted::of(Deletion::Expired)), json!({ "reason": "expired" }));
        assert_eq!(data(SecretRead::of("t", "API_KEY")), json!({ "tool": "t", "name": "API_KEY" }));
        let denied = |d| data(CapabilityDenied::of("t", d));
        assert_eq!(
            denied(Denial::Network { target: "10.0.0.1:80", reason: "host not granted" }),
            json!({ "tool": "t", "capability": "network", "target": "10.0.0.1:80", "reason": "host not granted" })
        );
        assert_eq!(
            denied(Denial::WorkspaceQuota { max_bytes: 1, max_files: 2 }),
            json!({ "tool": "t", "capability": "files", "detail": { "reason": "workspace quota", "max_bytes": 1, "max_files": 2 } })
        );
        assert_eq!(
            denied(Denial::Secret { name: "X" }),
            json!({ "tool": "t", "capability": "secret", "detail": { "name": "X" } })
        );
        assert_eq!(denied(Denial::History), json!({ "tool": "t", "capability": "history" }));
        let request = Request { method: "GET", https: true, host: "api.example.com", port: 443 };
        assert_eq!(
            data(Egress::of(request, Some(200), 5, 7)),
            json!({ "method": "GET", "scheme": "https", "host": "api.example.com", "port": 443, "status": 200, "bytes": 5, "duration_ms": 7 })
        );
    }

    /// The kinds printed without a `Value` print its bytes, every option
    /// present and absent (`Event::sorted` compares them in tests).
    #[test]
    fn kinds_printed_directly_print_the_canonical_bytes() {
        let mut c = call();
        c.usage = Usage {
            wall_ms: 1,
            fuel: 2,
            memory_peak_bytes: 3,
            state_bytes_written: 4,
            egress_requests: 5,
            egress_bytes: 6,
            stored_bytes_delta: 7,
        };
        let version = ToolVersion { digest: "d".into(), manifest_digest: "m".into(), version: "1.0.0".into() };
        let finished: Event = CallFinished::ran(&c, Some(&version)).into();
        assert!(finished.data().contains(r#""usage":{"egress_bytes":6,"#), "{}", finished.data());
        let _: Event = CallFinished::of(&c).into();
        c.error = None;
        let _: Event = CallFinished::of(&c).into();
        let _: Event = CallRequested::of(&c, "{}").into();
        c.idempotency_key = Some("k\"\u{1}".into());
        let _: Event = CallRequested::of(&c, "{}").into();
        let writes: BTreeMap<String, ()> = [("b".to_string(), ()), ("a".to_string(), ())].into();
        let _: Event = StateCommitted::of(&c, &writes).into();
        let _: Event = ApprovalDecided::of(&c).into();
        c.approval = Some(crate::model::Approval {
            required: true,
            decision: Some("denied".into()),
            decided_by: Some("p".into()),
            reason: Some("no".into()),
            decided_at: None,
        });
        let _: Event = ApprovalDecided::of(&c).into();
        let message =
            Message { seq: 3, role: "user".into(), content: "hi".into(), metadata: None, created_at: "t".into() };
        let _: Event = MessageAppended::of(&message).into();
        let _: Event = Egress::of(Request { method: "POST", https: false, host: "h", port: 1 }, None, 0, 0).into();
        let _: Event = Egress::of(Request { method: "GET", https: true, host: "h", port: 1 }, None, 0, 0)
            .failed(Some("TLS certificate refused: \"expired\""))
            .into();
        for d in [
            Denial::Network { target: "t", reason: "r" },
            Denial::MountUnavailable { guest: "/g" },
            Denial::WorkspaceQuota { max_bytes: 1, max_files: 2 },
            Denial::Secret { name: "S" },
            Denial::History,
        ] {
            let _: Event = CapabilityDenied::of("t", d).into();
        }
    }

    #[test]
    fn a_redaction_that_breaks_the_json_is_stored_as_null_not_as_broken_text() {
        let e: Event = SecretRead::of("t", "NAME").into();
        assert_eq!(
            e.clone().redacted(|s| s.replace("NAME", "[REDACTED:X]")).data(),
            r#"{"name":"[REDACTED:X]","tool":"t"}"#
        );
        assert_eq!(e.redacted(|s| s.replace('"', "")).data(), "null");
    }
}
