//! The env capability: the session's environment variables a tool may
//! read, through the standard `wasi:cli/environment`. Only names in the
//! grant's `env` that the session set reach the tool; nothing of the
//! host's own environment ever does. (Its policy: `policy::names`.)

use std::collections::BTreeMap;
use wasmtime_wasi::WasiCtxBuilder;

/// Puts the granted session variables into a call's WASI context.
pub fn grant(wasi: &mut WasiCtxBuilder, granted: &[String], session_env: &BTreeMap<String, String>) {
    for name in granted {
        if let Some(value) = session_env.get(name) {
            wasi.env(name, value);
        }
    }
}
