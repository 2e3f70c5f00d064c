//! Reads a granted secret and tries every way to make the host store it:
//! output, error, log line, stdout, stderr, a state value, a state key. The host must redact the value
//! everywhere it keeps anything.
//!
//! Input: `{"name": "...", "fail": bool}`.

use serde_json::{Value, json};
use std::io::Write;

struct SecretEcho;

impl bulkhead_sdk::Guest for SecretEcho {
    fn invoke(input: String) -> Result<String, String> {
        let input: Value = serde_json::from_str(&input).map_err(|e| e.to_string())?;
        let name = input["name"].as_str().unwrap_or("API_TOKEN");
        let value = bulkhead_sdk::secrets::get(name)?;
        bulkhead_sdk::info(&format!("the secret is {value}"));
        bulkhead_sdk::state::set("cached", value.as_bytes())?;
        bulkhead_sdk::state::set(&format!("key-{value}"), b"x")?;
        println!("stdout: {value}");
        let _ = writeln!(std::io::stderr(), "stderr: {value}");
        if input["fail"].as_bool().unwrap_or(false) {
            return Err(format!("failing with {value}"));
        }
        Ok(json!({ "echo": value, "nested": { "again": format!("x{value}x") } }).to_string())
    }
}

bulkhead_sdk::export!(SecretEcho);
