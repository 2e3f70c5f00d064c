//! `counter`: a named counter kept in the tool's session state.
//!
//! Input: `{"by": N?, "name": "..."?}` (defaults: by 1, name "default").
//! Output: `{"name": ..., "value": N}` after adding `by`.

use bulkhead_sdk::state;
use serde_json::{Value, json};

struct Counter;

impl bulkhead_sdk::Guest for Counter {
    fn invoke(input: String) -> Result<String, String> {
        let input: Value = serde_json::from_str(&input).map_err(|e| format!("bad input: {e}"))?;
        let by = input.get("by").and_then(Value::as_i64).unwrap_or(1);
        let name = input.get("name").and_then(Value::as_str).unwrap_or("default");
        let key = format!("count/{name}");

        let current = match state::get(&key) {
            Some(bytes) => {
                let text = String::from_utf8(bytes).map_err(|_| "corrupt counter".to_string())?;
                text.parse::<i64>().map_err(|_| "corrupt counter".to_string())?
            }
            None => 0,
        };
        let value = current.checked_add(by).ok_or("counter overflow")?;
        state::set(&key, value.to_string().as_bytes())?;
        Ok(json!({ "name": name, "value": value }).to_string())
    }
}

bulkhead_sdk::export!(Counter);
