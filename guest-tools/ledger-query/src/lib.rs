//! `ledger-query`: reads a CSV ledger from the read-only `/ledger` volume.
//!
//! Input: `{"ledger": "bank", "account"?: "..."}` reads `/ledger/bank.csv`
//! (`id,date,account,amount_cents,memo`). Output: `{"ledger", "rows": [...],
//! "total_cents"}`.

use bulkhead_sdk::Tool;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    ledger: String,
    account: Option<String>,
}

#[derive(Serialize, Deserialize, Clone)]
struct Row {
    id: String,
    date: String,
    account: String,
    amount_cents: i64,
    memo: String,
}

#[derive(Serialize)]
struct Output {
    ledger: String,
    rows: Vec<Row>,
    total_cents: i64,
}

fn parse(text: &str) -> Result<Vec<Row>, String> {
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            let f: Vec<&str> = line.splitn(5, ',').map(str::trim).collect();
            if f.len() != 5 {
                return Err(format!("line {}: expected 5 fields", i + 2));
            }
            let amount_cents = f[3].parse().map_err(|_| format!("line {}: bad amount {:?}", i + 2, f[3]))?;
            Ok(Row { id: f[0].into(), date: f[1].into(), account: f[2].into(), amount_cents, memo: f[4].into() })
        })
        .collect()
}

struct LedgerQuery;

impl Tool for LedgerQuery {
    type Input = Input;
    type Output = Output;

    fn run(input: Input) -> Result<Output, String> {
        if !input.ledger.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err("ledger must be a plain name like \"bank\"".into());
        }
        let path = format!("/ledger/{}.csv", input.ledger);
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        let mut rows = parse(&text)?;
        if let Some(account) = &input.account {
            rows.retain(|r| &r.account == account);
        }
        let total_cents = rows.iter().map(|r| r.amount_cents).sum();
        Ok(Output { ledger: input.ledger, rows, total_cents })
    }
}

bulkhead_sdk::export!(LedgerQuery);
