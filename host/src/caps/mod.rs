//! The host side of the `bulkhead:tool` world, one module per interface,
//! and [`HostState`], the data of one call's `Store`.
//!
//! Deny by default: a call's WASI context has no preopens, no arguments, an
//! environment of only the granted names the session set, stdin closed,
//! stdout/stderr captured and capped, every socket address refused and name
//! lookup off. The grant decides the rest; a denied use is an error the
//! guest sees (never a trap) and an audit event.

pub mod log;
pub mod secrets;
pub mod session;
pub mod state;

use crate::grants::Grant;
use crate::model::LogLine;
use crate::runtime::limiter::MemoryLimiter;
use crate::runtime::stdio::Captured;
use crate::store::Db;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "tool",
    imports: { default: async },
    exports: { default: async },
});

pub use bulkhead::tool as iface;

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
    pub db: Arc<Db>,
    pub secrets: Arc<secrets::SecretStore>,
    pub state_quota_bytes: u64,
}

/// An audit event raised inside a call (`secret_read`, `capability_denied`),
/// written with the call's outcome.
#[derive(Debug, Clone)]
pub struct AuditNote {
    pub kind: &'static str,
    pub data: Value,
}

/// The data of one call's `Store`.
pub struct HostState {
    pub env: CallEnv,
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: MemoryLimiter,
    pub state: state::StateTxn,
    pub logs: log::LogBuffer,
    pub notes: Vec<AuditNote>,
    pub stdout: Captured,
    pub stderr: Captured,
    /// The call is stopped at the first epoch tick past this instant.
    pub deadline: Instant,
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
        for name in &env.grant.env {
            if let Some(value) = env.session_env.get(name) {
                wasi.env(name, value);
            }
        }
        let state = state::StateTxn::new(env.state_quota_bytes);
        HostState {
            env,
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(memory_limit_bytes),
            state,
            logs: log::LogBuffer::default(),
            notes: Vec::new(),
            stdout,
            stderr,
            deadline,
        }
    }

    pub fn deny(&mut self, capability: &str, detail: Value) {
        self.notes.push(AuditNote {
            kind: "capability_denied",
            data: serde_json::json!({ "tool": self.env.tool, "capability": capability, "detail": detail }),
        });
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

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}
