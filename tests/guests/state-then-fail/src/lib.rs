//! Writes state, then fails the way the input asks: the host must commit the
//! write only when the call succeeds.
//!
//! Input: `{"key": "...", "value": "...", "then": "ok" | "error" | "trap", "fill_bytes": N?}`.
//! With `fill_bytes`, writes one value of that size (to hit `state_kb`) and
//! reports what `state.set` answered. With `"read": true`, writes nothing and
//! answers what it sees: `{"value": text or null, "len": bytes or null, "keys": [...]}`
//! (`value` only for values up to 64 bytes).

use bulkhead_sdk::state;
use serde_json::{Value, json};

struct StateThenFail;

impl bulkhead_sdk::Guest for StateThenFail {
    fn invoke(input: String) -> Result<String, String> {
        let input: Value = serde_json::from_str(&input).map_err(|e| e.to_string())?;
        let key = input["key"].as_str().unwrap_or("k");
        if input["read"] == true {
            let value = state::get(key);
            let text = value.as_ref().filter(|v| v.len() <= 64).map(|v| String::from_utf8_lossy(v).into_owned());
            let keys = state::keys("");
            return Ok(json!({ "value": text, "len": value.map(|v| v.len()), "keys": keys }).to_string());
        }
        if let Some(n) = input["fill_bytes"].as_u64() {
            let answer = state::set(key, &vec![b'x'; n as usize]);
            return Ok(json!({ "stored": answer.is_ok(), "error": answer.err() }).to_string());
        }
        state::set(key, input["value"].as_str().unwrap_or("v").as_bytes())?;
        match input["then"].as_str().unwrap_or("ok") {
            "error" => Err("failing on purpose after writing state".into()),
            "trap" => unreachable!("trapping on purpose after writing state"),
            _ => Ok(json!({ "wrote": key }).to_string()),
        }
    }
}

bulkhead_sdk::export!(StateThenFail);
