//! `notes`: a list of notes kept in the tool's session state.
//!
//! Input, one of:
//! - `{"op": "add", "text": "..."}` → `{"count": N}`
//! - `{"op": "list"}` → `{"notes": [...]}`
//! - `{"op": "clear"}` → `{"count": 0}`
//! - `{"op": "summarize", "limit": N?}` → the newest session messages (needs
//!   `history = true` in the grant) together with the notes.

use bulkhead_sdk::{session, state};
use serde::Deserialize;
use serde_json::json;

const KEY: &str = "notes";

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Op {
    Add { text: String },
    List,
    Clear,
    Summarize { limit: Option<u32> },
}

fn load() -> Result<Vec<String>, String> {
    match state::get(KEY) {
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("corrupt notes: {e}")),
        None => Ok(Vec::new()),
    }
}

fn store(notes: &[String]) -> Result<(), String> {
    let bytes = serde_json::to_vec(notes).map_err(|e| e.to_string())?;
    state::set(KEY, &bytes)
}

struct Notes;

impl bulkhead_sdk::Guest for Notes {
    fn invoke(input: String) -> Result<String, String> {
        let op: Op = serde_json::from_str(&input).map_err(|e| format!("bad input: {e}"))?;
        let out = match op {
            Op::Add { text } => {
                let mut notes = load()?;
                notes.push(text);
                store(&notes)?;
                json!({ "count": notes.len() })
            }
            Op::List => json!({ "notes": load()? }),
            Op::Clear => {
                state::delete(KEY);
                json!({ "count": 0 })
            }
            Op::Summarize { limit } => {
                let history = session::history(limit.unwrap_or(20))?;
                let messages: Vec<_> = history
                    .iter()
                    .map(|m| json!({ "role": m.role, "content": m.content }))
                    .collect();
                json!({ "session": session::id(), "messages": messages, "notes": load()? })
            }
        };
        Ok(out.to_string())
    }
}

bulkhead_sdk::export!(Notes);
