//! The guest SDK for Bulkhead tools.
//!
//! A tool is a type that implements [`Tool`] (typed JSON in and out) or the
//! raw [`Guest`] (strings in and out), exported with [`export!`]:
//!
//! ```ignore
//! use bulkhead_sdk::{Tool, state};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Input { by: Option<i64> }
//! #[derive(Serialize)]
//! struct Output { value: i64 }
//!
//! struct Counter;
//! impl Tool for Counter {
//!     type Input = Input;
//!     type Output = Output;
//!     fn run(input: Input) -> Result<Output, String> {
//!         Ok(Output { value: state::incr("count", input.by.unwrap_or(1))? })
//!     }
//! }
//! bulkhead_sdk::export!(Counter);
//! ```
//!
//! Modules: [`state`] (bytes, JSON, counters), [`secret`], [`log`],
//! [`session`], and with the `http` feature [`http`] (a blocking client).
//! Interfaces a tool never calls are dropped from its component, so
//! depending on this crate adds no capability a tool does not use.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "tool",
        pub_export_macro: true,
        default_bindings_module: "bulkhead_sdk::bindings",
    });
}

pub use bindings::bulkhead::tool::{secrets, session};
pub use bindings::{Guest, export};
pub use serde_json;

#[cfg(feature = "http")]
pub mod http;

/// A tool with typed input and output: the input is parsed from JSON
/// (an error answers "bad input: ..."), the output serialized to JSON.
pub trait Tool {
    type Input: serde::de::DeserializeOwned;
    type Output: serde::Serialize;
    fn run(input: Self::Input) -> Result<Self::Output, String>;
}

impl<T: Tool> Guest for T {
    fn invoke(input: String) -> Result<String, String> {
        let input: T::Input = serde_json::from_str(&input).map_err(|e| format!("bad input: {e}"))?;
        let output = T::run(input)?;
        serde_json::to_string(&output).map_err(|e| format!("cannot serialize the output: {e}"))
    }
}

/// The tool's state in this session. Writes commit when the call succeeds
/// and vanish when it fails; calls of one tool in one session run one at a
/// time, so a read-modify-write inside a call is atomic.
pub mod state {
    pub use crate::bindings::bulkhead::tool::state::{delete, get, keys, set};

    /// A JSON value stored under `key`, if any.
    pub fn get_json<T: serde::de::DeserializeOwned>(key: &str) -> Result<Option<T>, String> {
        match get(key) {
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("state {key}: {e}")),
            None => Ok(None),
        }
    }

    /// Stores `value` as JSON under `key` (err: over the state quota).
    pub fn set_json<T: serde::Serialize>(key: &str, value: &T) -> Result<(), String> {
        let bytes = serde_json::to_vec(value).map_err(|e| format!("state {key}: {e}"))?;
        set(key, &bytes)
    }

    /// Adds `by` to the integer under `key` (0 when absent) and returns the
    /// new value.
    pub fn incr(key: &str, by: i64) -> Result<i64, String> {
        let current: i64 = get_json(key)?.unwrap_or(0);
        let next = current.checked_add(by).ok_or_else(|| format!("state {key}: overflow"))?;
        set_json(key, &next)?;
        Ok(next)
    }
}

/// A secret granted to this tool (err for any other name; the host audits
/// every read by name and redacts the value from anything it stores).
pub fn secret(name: &str) -> Result<String, String> {
    secrets::get(name)
}

/// Log lines kept with the call's record.
pub mod log {
    use crate::bindings::bulkhead::tool::log::{Level, log};

    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }
    pub fn info(message: &str) {
        log(Level::Info, message)
    }
    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }
    pub fn error(message: &str) {
        log(Level::Error, message)
    }
}

/// Log a line at `info` level.
pub fn info(message: &str) {
    log::info(message)
}
