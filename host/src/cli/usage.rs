//! `bulkhead usage`: a running host's usage report (`GET /v1/usage`) as a
//! table, CSV or JSON. Admins see every principal; others their own.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::fmt::Write;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct UsageArgs {
    /// The host, e.g. http://127.0.0.1:7070.
    #[arg(long)]
    connect: String,
    /// The environment variable holding the bearer token.
    #[arg(long, default_value = "BULKHEAD_TOKEN")]
    token_env: String,
    /// Only this principal's sessions (others than one's own: admins only).
    #[arg(long)]
    principal: Option<String>,
    /// Sessions created on or after: YYYY-MM-DD (UTC) or an RFC 3339 time.
    #[arg(long)]
    from: Option<String>,
    /// Sessions created before this time, or on or before this day.
    #[arg(long)]
    to: Option<String>,
    /// table (for people), csv (for spreadsheets), json (the API's answer).
    #[arg(long, default_value = "table")]
    format: String,
}

/// The report's columns: header, and the field of a line's `usage` (or of
/// the line itself) each reads.
const COLUMNS: [(&str, &str); 11] = [
    ("principal", "principal"),
    ("sessions", "sessions"),
    ("deleted", "deleted_sessions"),
    ("calls", "calls"),
    ("wall_ms", "wall_ms"),
    ("fuel", "fuel"),
    ("memory_mib_s", "memory_mib_seconds"),
    ("egress_bytes", "egress_bytes"),
    ("stored_bytes", "stored_bytes"),
    ("stored_mib_h", "stored_mib_hours"),
    ("cost", "cost"),
];

pub async fn run(a: UsageArgs) -> Result<ExitCode> {
    if !["table", "csv", "json"].contains(&a.format.as_str()) {
        bail!("--format must be table, csv or json");
    }
    let token =
        std::env::var(&a.token_env).with_context(|| format!("--token-env {}: the variable is not set", a.token_env))?;
    let mut url = url::Url::parse(&a.connect).context("--connect must be a URL like http://127.0.0.1:7070")?;
    url.set_path("/v1/usage");
    {
        let mut q = url.query_pairs_mut();
        for (key, value) in [("principal", &a.principal), ("from", &a.from), ("to", &a.to)] {
            if let Some(v) = value {
                q.append_pair(key, v);
            }
        }
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder().build().context("cannot build the HTTP client")?;
    let resp = client
        .get(url.clone())
        .bearer_auth(token.trim())
        .send()
        .await
        .with_context(|| format!("cannot reach {}", url.origin().ascii_serialization()))?;
    let status = resp.status();
    let body: Value = resp.json().await.context("the host's answer is not JSON")?;
    if !status.is_success() {
        let message = body["error"]["message"].as_str().unwrap_or("no message");
        bail!("the host answered {status}: {message}");
    }
    let out = match a.format.as_str() {
        "json" => serde_json::to_string_pretty(&body)? + "\n",
        "csv" => csv(&body),
        _ => table(&body),
    };
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// Each line's cells, the total last.
fn rows(report: &Value) -> Vec<Vec<String>> {
    let cell = |line: &Value, field: &str| -> String {
        let v = line.get(field).or_else(|| line["usage"].get(field)).unwrap_or(&Value::Null);
        match v {
            Value::String(s) => s.clone(),
            Value::Number(n) if n.is_f64() => format!("{:.6}", n.as_f64().unwrap_or(0.0)),
            Value::Null => String::new(),
            other => other.to_string(),
        }
    };
    let lines = report["principals"].as_array().cloned().unwrap_or_default();
    lines.iter().chain([&report["total"]]).map(|l| COLUMNS.iter().map(|(_, f)| cell(l, f)).collect()).collect()
}

fn csv(report: &Value) -> String {
    let quote = |s: &str| {
        if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
    };
    let mut out = COLUMNS.iter().map(|(h, _)| *h).collect::<Vec<_>>().join(",") + "\n";
    for row in rows(report) {
        out += &(row.iter().map(|c| quote(c)).collect::<Vec<_>>().join(",") + "\n");
    }
    out
}

fn table(report: &Value) -> String {
    let rows = rows(report);
    let mut widths: Vec<usize> = COLUMNS.iter().map(|(h, _)| h.len()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let window = |k: &str| report[k].as_str().unwrap_or("…").to_string();
    let _ = writeln!(
        out,
        "usage of sessions created from {} to {}, in {} (as of {})",
        window("from"),
        window("to"),
        report["currency"].as_str().unwrap_or("?"),
        window("generated_at")
    );
    let line = |out: &mut String, cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| if i == 0 { format!("{c:<w$}") } else { format!("{c:>w$}") })
            .collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(&mut out, COLUMNS.iter().map(|(h, _)| *h).collect());
    let n = rows.len();
    for (i, row) in rows.iter().enumerate() {
        if i + 1 == n {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            line(&mut out, rule.iter().map(String::as_str).collect());
        }
        line(&mut out, row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report() -> Value {
        json!({
            "currency": "EUR", "from": "2026-12-01T00:00:00.000Z", "to": null, "generated_at": "now",
            "principals": [{"principal": "a,\"b\"", "sessions": 2, "deleted_sessions": 1,
                            "usage": {"calls": 3, "wall_ms": 4, "fuel": 5, "memory_mib_seconds": 0.5,
                                      "egress_bytes": 6, "stored_bytes": 7, "stored_mib_hours": 0.25, "cost": 1.5}}],
            "total": {"principal": "*", "sessions": 2, "deleted_sessions": 1,
                      "usage": {"calls": 3, "wall_ms": 4, "fuel": 5, "memory_mib_seconds": 0.5,
                                "egress_bytes": 6, "stored_bytes": 7, "stored_mib_hours": 0.25, "cost": 1.5}}
        })
    }

    #[test]
    fn csv_quotes_what_needs_it_and_ends_with_the_total() {
        let out = csv(&report());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "principal,sessions,deleted,calls,wall_ms,fuel,memory_mib_s,egress_bytes,stored_bytes,stored_mib_h,cost"
        );
        assert_eq!(lines[1], "\"a,\"\"b\"\"\",2,1,3,4,5,0.500000,6,7,0.250000,1.500000");
        assert!(lines[2].starts_with("*,2,1,3"), "{}", lines[2]);
    }

    #[test]
    fn the_table_aligns_its_columns() {
        let out = table(&report());
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].contains("from 2026-12-01T00:00:00.000Z to …, in EUR"), "{}", lines[0]);
        let cost_end = lines[1].len();
        assert!(lines[1].ends_with("cost"));
        assert!(lines[2].ends_with("1.500000") && lines[2].len() == cost_end, "{out}");
        assert!(lines[3].starts_with("---"));
    }
}
