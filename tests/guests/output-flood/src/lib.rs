//! Floods its output, stdout and stderr: the host must cap all three.
//!
//! Input: `{"output_bytes": N, "stdout_bytes": N}`.

use serde_json::Value;
use std::io::Write;

struct OutputFlood;

impl bulkhead_sdk::Guest for OutputFlood {
    fn invoke(input: String) -> Result<String, String> {
        let input: Value = serde_json::from_str(&input).map_err(|e| e.to_string())?;
        let stdout_bytes = input["stdout_bytes"].as_u64().unwrap_or(0) as usize;
        let line = [b'o'; 1024];
        let mut written = 0;
        while written < stdout_bytes {
            // Errors (a full pipe) are ignored: the flood goes on regardless.
            let _ = std::io::stdout().write_all(&line);
            let _ = std::io::stderr().write_all(&line);
            written += line.len();
        }
        let n = input["output_bytes"].as_u64().unwrap_or(0) as usize;
        Ok(format!("\"{}\"", "a".repeat(n)))
    }
}

bulkhead_sdk::export!(OutputFlood);
