//! The Extism peer of Bulkhead's `counter` tool (guest-tools/counter): a
//! counter kept in the plugin's vars.
//!
//! Input: `{"by": N?}` (default 1; unknown fields are refused, as by the
//! Bulkhead tool). Output: `{"count": N}` after adding `by` to var "count"
//! (a u64; absent = 0).

use extism_pdk::{FnResult, Json, plugin_fn, var};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    by: Option<u64>,
}

#[derive(Serialize)]
struct Output {
    count: u64,
}

#[plugin_fn]
pub fn call(Json(input): Json<Input>) -> FnResult<Json<Output>> {
    let count = var::get::<u64>("count")?.unwrap_or(0) + input.by.unwrap_or(1);
    var::set("count", count)?;
    Ok(Json(Output { count }))
}
