//! `template`: the smallest useful tool, to copy. It greets and counts how
//! many times it was called in this session.
//!
//! Input: `{"name": "..."}`. Output: `{"greeting": "...", "calls": N}`.

use bulkhead_sdk::{Tool, log, state};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    name: String,
}

#[derive(Serialize)]
struct Output {
    greeting: String,
    calls: i64,
}

struct Template;

impl Tool for Template {
    type Input = Input;
    type Output = Output;

    fn run(input: Input) -> Result<Output, String> {
        let calls = state::incr("calls", 1)?;
        log::info(&format!("call {calls} for {}", input.name));
        Ok(Output { greeting: format!("Hello, {}!", input.name), calls })
    }
}

bulkhead_sdk::export!(Template);
