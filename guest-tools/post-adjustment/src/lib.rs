//! `post-adjustment`: appends an adjusting entry to the adjustments journal
//! on the read-write `/adjustments` volume. Every call waits for a human.
//!
//! Input: `{"id", "amount_cents", "reason"}`. Output: `{"posted": id, "line"}`.

use bulkhead_sdk::Tool;
use serde::{Deserialize, Serialize};
use std::io::Write;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    id: String,
    amount_cents: i64,
    reason: String,
}

#[derive(Serialize)]
struct Output {
    posted: String,
    line: String,
}

const JOURNAL: &str = "/adjustments/adjustments.csv";

struct PostAdjustment;

impl Tool for PostAdjustment {
    type Input = Input;
    type Output = Output;

    fn run(input: Input) -> Result<Output, String> {
        let clean = |s: &str| s.replace([',', '\n', '\r'], " ");
        let line = format!("{},{},{}\n", clean(&input.id), input.amount_cents, clean(&input.reason));
        let fresh = std::fs::metadata(JOURNAL).is_err();
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(JOURNAL).map_err(|e| format!("{JOURNAL}: {e}"))?;
        if fresh {
            f.write_all(b"id,amount_cents,reason\n").map_err(|e| e.to_string())?;
        }
        f.write_all(line.as_bytes()).map_err(|e| e.to_string())?;
        Ok(Output { posted: input.id, line: line.trim_end().to_string() })
    }
}

bulkhead_sdk::export!(PostAdjustment);
