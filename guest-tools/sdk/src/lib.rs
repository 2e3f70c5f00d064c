//! Bindings for the `bulkhead:tool@0.1.0` world, shared by every tool.
//!
//! A tool implements [`Guest`] and exports itself with [`export!`]:
//!
//! ```ignore
//! struct MyTool;
//! impl bulkhead_sdk::Guest for MyTool {
//!     fn invoke(input: String) -> Result<String, String> { Ok(input) }
//! }
//! bulkhead_sdk::export!(MyTool);
//! ```
//!
//! Interfaces a tool never calls are dropped from its component, so depending
//! on this crate adds no capability a tool does not use.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "tool",
        pub_export_macro: true,
        default_bindings_module: "bulkhead_sdk::bindings",
    });
}

pub use bindings::{Guest, export};
pub use bindings::bulkhead::tool::{log, secrets, session, state};

/// Log a line at `info` level; the host keeps it with the call's record.
pub fn info(message: &str) {
    log::log(log::Level::Info, message);
}
