//! `counter`: a named counter kept in the tool's session state.
//!
//! Input: `{"by": N?, "name": "..."?}` (defaults: by 1, name "default").
//! Output: `{"name": ..., "value": N}` after adding `by`.

use bulkhead_sdk::{Tool, state};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    by: Option<i64>,
    name: Option<String>,
}

#[derive(Serialize)]
struct Output {
    name: String,
    value: i64,
}

struct Counter;

impl Tool for Counter {
    type Input = Input;
    type Output = Output;

    fn run(input: Input) -> Result<Output, String> {
        let name = input.name.unwrap_or_else(|| "default".into());
        let value = state::incr(&format!("count/{name}"), input.by.unwrap_or(1))?;
        Ok(Output { name, value })
    }
}

bulkhead_sdk::export!(Counter);
