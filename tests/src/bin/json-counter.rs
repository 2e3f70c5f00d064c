//! The hand-rolled baseline a Bulkhead call is compared with (`loadgen`):
//! one process per call that reads its state from a JSON file, increments a
//! counter, and writes the file back (temp file + rename, so a crash of the
//! process never leaves half a file: the same promise as Bulkhead's default
//! durability). Prints `{"value": N}` like the counter tool.
//!
//! Usage: `json-counter STATE_FILE`

use serde_json::{Value, json};
use std::path::PathBuf;

fn main() -> std::process::ExitCode {
    let Some(path) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: json-counter STATE_FILE");
        return std::process::ExitCode::from(2);
    };
    let state: Value = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(json!({}));
    let value = state["count"].as_u64().unwrap_or(0) + 1;
    let tmp = path.with_extension("tmp");
    let written =
        std::fs::write(&tmp, json!({ "count": value }).to_string()).and_then(|_| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        eprintln!("json-counter: {}: {e}", path.display());
        return std::process::ExitCode::FAILURE;
    }
    println!("{}", json!({ "value": value }));
    std::process::ExitCode::SUCCESS
}
