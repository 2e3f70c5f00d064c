//! # Bulkhead: a stateful tool host for AI agents
//!
//! Agents call tools through an HTTP session API; every tool is a WASI
//! component run by wasmtime with only the grants its manifest, its
//! principal and its session allow; everything that must outlive a call
//! (sessions, messages, tool state, calls, audit) lives in SQLite.
//!
//! # Layout
//!
//! - [`config`]: the operator's `bulkhead.toml` and the embedded defaults.
//! - [`manifest`]: a tool bundle's `tool.toml`.
//! - [`model`]: the records of the contract (session, message, call, audit event).
//! - [`events`]: the audit events, one type per kind, built where they happen.
//! - [`policy`]: grants and their narrowing, one module per capability
//!   (network, files, names) and the import table; pure code, no wasmtime.
//! - [`auth`]: principals, bearer tokens, dev tokens.
//! - [`review`]: the security review of bundles (`bulkhead review`).
//! - [`supply`]: the tool supply chain: bundle signatures, OCI artifacts.
//! - [`runtime`]: the wasmtime engine, bundle loading, one call's sandbox.
//! - [`caps`]: the host side of each `bulkhead:tool` interface, one per file.
//! - [`store`]: SQLite persistence through one write connection: a lone
//!   caller commits on its own thread, concurrent ones share a writer
//!   thread's commits (group commit).
//! - [`service`]: the operations the API and the CLI share (sessions, calls).
//! - [`telemetry`]: logs and OpenTelemetry traces (`[telemetry]`).
//! - [`web`]: what the two HTTP front ends share: the contract's error
//!   body, the caller extractor, JSON extractors.
//! - [`api`]: the axum HTTP API (contract §7).
//! - [`console`]: the web console at `/ui/` for approvers and auditors.
//! - [`mcp`]: the same sessions over the Model Context Protocol (`/mcp`, stdio bridge).
//! - [`tls`]: the TLS client of outbound connections (egress, the bridge).
//! - [`cli`]: the `bulkhead` commands.

pub mod api;
pub mod auth;
pub mod caps;
pub mod cli;
pub mod config;
pub mod console;
pub mod events;
pub mod manifest;
pub mod mcp;
pub mod model;
pub mod policy;
pub mod review;
pub mod runtime;
pub mod service;
pub mod store;
pub mod supply;
pub mod telemetry;
pub mod tls;
pub mod util;
pub mod web;

/// mimalloc instead of the system allocator: a call allocates on several
/// threads (tokio workers, the writer), and glibc's malloc and free were a
/// fifth of the workers' time under load (docs/benchmarks.md). Built
/// without transparent huge pages (`no_thp`): with them resident memory
/// doubled (92 against 43 MiB idle) for no measurable speed. Declared in
/// the library so the binary, the tests and the benchmarks all run on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
