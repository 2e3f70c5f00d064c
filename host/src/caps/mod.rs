//! The host side of the `bulkhead:tool` world, one module per interface,
//! and [`HostState`], the data of one call's `Store`.
//!
//! Deny by default: a call's WASI context has no preopens, no arguments, an
//! environment of only the granted names the session set, stdin closed,
//! stdout/stderr captured and capped, every socket address refused and name
//! lookup off. The grant decides the rest; a denied use is an error the
//! guest sees (never a trap) and an audit event.
//!
//! | capability | interface | here | its policy |
//! |---|---|---|---|
//! | state | `bulkhead:tool/state` | [`state`] | always granted, `state_kb` |
//! | secrets | `bulkhead:tool/secrets` | [`secrets`] | `policy::names` |
//! | history | `bulkhead:tool/session` | [`session`] | `Grant::history` |
//! | log | `bulkhead:tool/log` | [`log`] | always granted, capped |
//! | network | `wasi:http/outgoing-handler` | [`http`] | `policy::network` |
//! | files | `wasi:filesystem` | [`files`] (workspace quota) | `policy::files` |
//! | env | `wasi:cli/environment` | [`env`] | `policy::names` |
//! | stdio | `wasi:cli/stdout`, `stderr` | [`stdio`] (captured, capped) | always |
//!
//! [`limits`] holds a call's memory and table limits. Stored data is read
//! only through the [`CallStore`] the service hands each call.

pub mod env;
pub mod files;
pub mod http;
pub mod limits;
pub mod log;
pub mod secrets;
pub mod session;
pub mod state;
pub mod stdio;

use crate::events::{CapabilityDenied, Denial, Event};
use crate::model::LogLine;
use crate::model::Message;
use crate::policy::{Grant, PrivateRanges};
use crate::store::StoreError;
use crate::store::state_cache::Committed;
use limits::MemoryLimiter;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;
use stdio::Captured;
use wasmtime_wasi::{FsPerms, ResourceTable, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};
use zeroize::Zeroizing;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "tool",
    imports: { default: async },
    exports: { default: async },
});

pub use self::bulkhead::tool as iface;

/// Host resources (streams, pollables, HTTP handles) one call may hold: far
/// above what a tool needs, far below what would exhaust host memory.
pub const MAX_HANDLES: usize = 10_000;

/// Captured stdout and stderr, each: enough to debug, too little to hurt.
pub const MAX_STDIO_BYTES: usize = 64 * 1024;

/// Who is calling what, with which grant: fixed for the whole call.
#[derive(Clone)]
pub struct CallEnv {
    pub session: String,
    pub principal: String,
    pub tool: String,
    pub grant: Grant,
    /// The session's environment; only names in `grant.env` reach the tool.
    pub session_env: BTreeMap<String, String>,
    /// The call's one way to stored data: its tool's state in its session
    /// and its session's messages, nothing else.
    pub store: Arc<dyn CallStore>,
    pub secrets: Arc<secrets::SecretStore>,
    pub state_quota_bytes: u64,
    /// Folders this call sees, already resolved from the grant.
    pub mounts: Vec<Mount>,
    /// The operator's `network.allow_private`.
    pub allow_private: Arc<PrivateRanges>,
}

/// What a call may read of stored data, bound to its session and tool by
/// the service: the committed state of this tool (read while the call
/// holds the (session, tool) turn, so it cannot change under the call) and
/// the session's messages. Writes never go through it: they are buffered
/// in the call and committed by the service with its outcome.
pub trait CallStore: Send + Sync {
    /// The tool's committed state: whole when small, else only its size.
    fn committed_state(&self) -> Result<Committed, StoreError>;
    /// One committed value, for a state too large to hold whole.
    fn state_value(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Committed keys with `prefix`, for a state too large to hold whole.
    fn state_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// The newest `limit` messages of the session, oldest first.
    fn history(&self, limit: u32) -> Result<Vec<Message>, StoreError>;
}

/// A host folder preopened at a guest path.
#[derive(Debug, Clone)]
pub struct Mount {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
    /// A read-write session workspace's quota, shared by the calls using it.
    pub quota: Option<Arc<files::WorkspaceQuota>>,
}

/// The data of one call's `Store`.
pub struct HostState {
    pub env: CallEnv,
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: MemoryLimiter,
    pub state: state::StateTxn,
    pub logs: log::LogBuffer,
    /// Audit events raised inside the call (`secret_read`, `egress`,
    /// `capability_denied`), written with its outcome.
    pub notes: Vec<Event>,
    /// Which descriptors are under a workspace quota.
    pub files: files::Files,
    pub stdout: Captured,
    pub stderr: Captured,
    /// The call is stopped at the first epoch tick past this instant.
    pub deadline: Instant,
    http_ctx: WasiHttpCtx,
    egress: http::Egress,
    /// Values of secrets read in this call, to redact from what is stored.
    secrets_read: Vec<(String, Zeroizing<String>)>,
}

impl HostState {
    pub fn new(env: CallEnv, memory_limit_bytes: usize, deadline: Instant) -> HostState {
        let stdout = Captured::new(MAX_STDIO_BYTES);
        let stderr = Captured::new(MAX_STDIO_BYTES);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        self::env::grant(&mut wasi, &env.grant.env, &env.session_env);
        let files = files::Files::new(&env.mounts);
        let mut notes = Vec::new();
        for m in &env.mounts {
            let perms = if m.read_only { FsPerms::ReadOnly } else { FsPerms::ReadWrite };
            if let Err(e) = wasi.preopened_dir(&m.host, &m.guest, perms) {
                tracing::warn!("cannot mount {} for tool {}: {e:#}", m.guest, env.tool);
                notes.push(CapabilityDenied::of(&env.tool, Denial::MountUnavailable { guest: &m.guest }).into());
            }
        }
        let state = state::StateTxn::new(env.state_quota_bytes);
        let egress = http::Egress {
            grant: env.grant.network.clone(),
            allow_private: env.allow_private.clone(),
            records: Arc::new(Mutex::new(Vec::new())),
            denials: Arc::new(Mutex::new(Vec::new())),
            tool: env.tool.clone(),
            attempts: 0,
        };
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HANDLES);
        HostState {
            env,
            wasi: wasi.build(),
            table,
            limiter: MemoryLimiter::new(memory_limit_bytes),
            state,
            logs: log::LogBuffer::default(),
            notes,
            files,
            stdout,
            stderr,
            deadline,
            http_ctx: WasiHttpCtx::new(),
            egress,
            secrets_read: Vec::new(),
        }
    }

    /// Remembers a secret value handed to the guest, for redaction.
    pub fn remember_secret(&mut self, name: &str, value: &str) {
        if !value.is_empty() && !self.secrets_read.iter().any(|(n, _)| n == name) {
            self.secrets_read.push((name.to_string(), Zeroizing::new(value.to_string())));
        }
    }

    /// Replaces every secret value read in this call (raw or JSON-escaped)
    /// with `[REDACTED:NAME]`, so a tool that echoes a secret into its output,
    /// error or logs cannot make the host store it.
    pub fn redact(&self, text: String) -> String {
        let mut text = text;
        for (name, value) in &self.secrets_read {
            let escaped = serde_json::to_string(value.as_str()).unwrap_or_default();
            let escaped = escaped.trim_matches('"');
            for needle in [value.as_str(), escaped] {
                if !needle.is_empty() && text.contains(needle) {
                    text = text.replace(needle, &format!("[REDACTED:{name}]"));
                }
            }
        }
        text
    }

    /// [`redact`](Self::redact) for bytes (state values): UTF-8 text as
    /// text, anything else by raw byte match.
    pub fn redact_bytes(&self, bytes: Vec<u8>) -> Vec<u8> {
        match String::from_utf8(bytes) {
            Ok(text) => self.redact(text).into_bytes(),
            Err(e) => {
                let mut bytes = e.into_bytes();
                for (name, value) in &self.secrets_read {
                    bytes = replace_bytes(&bytes, value.as_bytes(), format!("[REDACTED:{name}]").as_bytes());
                }
                bytes
            }
        }
    }

    /// Egress records, network denials and a workspace quota refusal of the
    /// call, as audit notes, with the request and byte totals.
    pub fn take_egress(&mut self) -> (u64, u64) {
        let (notes, requests, bytes) = http::take_records(&self.egress.records);
        let denials = std::mem::take(&mut *self.egress.denials.lock().expect("denials lock"));
        self.notes.extend(denials);
        if let Some((max_bytes, max_files)) = self.files.refused() {
            // Through a stream the guest's libc may only see an I/O error.
            let message = format!(
                "the session's workspace is full ({} MiB, {max_files} files): writes past it failed with no space left on device",
                max_bytes >> 20
            );
            self.logs.lines.push(LogLine { level: "warn".into(), message });
            self.deny(Denial::WorkspaceQuota { max_bytes, max_files });
        }
        self.notes.extend(notes);
        (requests, bytes)
    }

    /// Records a use outside the grant; the guest gets an error of its own.
    pub fn deny(&mut self, denial: Denial) {
        let event = CapabilityDenied::of(&self.env.tool, denial).into();
        self.notes.push(event);
    }

    /// Log lines followed by captured stdout and stderr.
    pub fn take_logs(&mut self) -> Vec<LogLine> {
        let mut lines = std::mem::take(&mut self.logs.lines);
        for (level, captured) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let text = captured.text();
            if !text.is_empty() {
                lines.push(LogLine { level: level.into(), message: text });
            }
        }
        lines
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http_ctx, table: &mut self.table, hooks: &mut self.egress }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

fn replace_bytes(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    if needle.is_empty() {
        return haystack.to_vec();
    }
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}
