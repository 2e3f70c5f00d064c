//! `reconcile`: compares two ledgers row by row and keeps the discrepancies
//! in its state, so later calls (and restarts) see them.
//!
//! Input: `{"left": {"name", "rows"}, "right": {"name", "rows"}}` with rows
//! as `ledger-query` returns them, or `{"show": true}` for the stored result.
//! Output: `{"discrepancies": [{"id", "kind", "left_cents"?, "right_cents"?}]}`.

use bulkhead_sdk::{Tool, state};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Deserialize)]
struct Row {
    id: String,
    amount_cents: i64,
}

#[derive(Deserialize)]
struct Side {
    name: String,
    rows: Vec<Row>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    left: Option<Side>,
    right: Option<Side>,
    #[serde(default)]
    show: bool,
}

#[derive(Serialize, Deserialize, Clone)]
struct Discrepancy {
    id: String,
    kind: String,
    left_cents: Option<i64>,
    right_cents: Option<i64>,
}

#[derive(Serialize, Deserialize, Default)]
struct Output {
    compared: String,
    discrepancies: Vec<Discrepancy>,
}

const KEY: &str = "last";

struct Reconcile;

impl Tool for Reconcile {
    type Input = Input;
    type Output = Output;

    fn run(input: Input) -> Result<Output, String> {
        let (Some(left), Some(right)) = (input.left, input.right) else {
            return if input.show { Ok(state::get_json(KEY)?.unwrap_or_default()) } else { Err("give left and right, or show".into()) };
        };
        let l: BTreeMap<&str, i64> = left.rows.iter().map(|r| (r.id.as_str(), r.amount_cents)).collect();
        let r: BTreeMap<&str, i64> = right.rows.iter().map(|r| (r.id.as_str(), r.amount_cents)).collect();
        let mut discrepancies = Vec::new();
        for id in l.keys().chain(r.keys()).collect::<std::collections::BTreeSet<_>>() {
            let (a, b) = (l.get(id).copied(), r.get(id).copied());
            let kind = match (a, b) {
                (Some(x), Some(y)) if x == y => continue,
                (Some(_), Some(_)) => "amount_mismatch",
                (Some(_), None) => "missing_in_right",
                (None, _) => "missing_in_left",
            };
            discrepancies.push(Discrepancy { id: id.to_string(), kind: kind.into(), left_cents: a, right_cents: b });
        }
        bulkhead_sdk::info(&format!("{} discrepancies between {} and {}", discrepancies.len(), left.name, right.name));
        let out = Output { compared: format!("{} vs {}", left.name, right.name), discrepancies };
        state::set_json(KEY, &out)?;
        Ok(out)
    }
}

bulkhead_sdk::export!(Reconcile);
