//! End-to-end tests against the real `bulkhead` binary (see the harness in
//! `src/lib.rs`). One module per area of the contract.

mod api;
mod console;
mod durability;
mod files;
mod https;
mod identity;
mod loading;
mod mcp;
mod mcp_props;
mod multihost;
mod network;
mod postgres;
mod reload;
mod review;
mod sandbox;
mod scenario;
mod supply;
mod telemetry;
mod usage;
mod workflows;
