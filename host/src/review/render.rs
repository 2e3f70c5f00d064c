//! Output formats. `json` is a stable schema (version 1):
//!
//! ```text
//! { "schema": "bulkhead-review/1",
//!   "bundles": [ { "path", "name", "version", "digest", "pinned", "imports", "exports",
//!                  "capabilities": [{ "capability", "imports" }], "surface": [string],
//!                  "grants", "limits", "approval_required",
//!                  "findings": [{ "id", "severity", "title", "message", "fix" }],
//!                  "changes"?: [finding] } ],
//!   "errors": [{ "file", "message" }],
//!   "summary": { "bundles", "critical", "high", "medium", "low", "info" } }
//! ```

use super::{Finding, Review, ReviewError, Severity};
use serde_json::{Value, json};
use std::fmt::Write;

fn all_findings(r: &Review) -> impl Iterator<Item = &Finding> {
    r.findings.iter().chain(r.changes.iter().flatten())
}

fn summary(reviews: &[Review]) -> Value {
    let count = |s: Severity| reviews.iter().flat_map(all_findings).filter(|f| f.severity == s).count();
    json!({
        "bundles": reviews.len(),
        "critical": count(Severity::Critical), "high": count(Severity::High), "medium": count(Severity::Medium),
        "low": count(Severity::Low), "info": count(Severity::Info),
    })
}

pub fn json(reviews: &[Review], errors: &[ReviewError]) -> String {
    let errors: Vec<Value> = errors.iter().map(|e| json!({ "file": e.file, "message": e.message })).collect();
    let doc =
        json!({ "schema": "bulkhead-review/1", "bundles": reviews, "errors": errors, "summary": summary(reviews) });
    serde_json::to_string_pretty(&doc).expect("review serializes") + "\n"
}

pub fn text(reviews: &[Review], errors: &[ReviewError]) -> String {
    let mut out = String::new();
    for r in reviews {
        let _ = writeln!(out, "{} {}  ({})", r.name, r.version, r.path);
        let _ = writeln!(out, "  component {}{}", r.digest, if r.pinned { " (pinned)" } else { "" });
        let _ = writeln!(out, "  capability surface:");
        for line in &r.surface {
            let _ = writeln!(out, "    - {line}");
        }
        let caps: Vec<String> =
            r.capabilities.iter().map(|c| format!("{:?} ({})", c.capability, c.imports.len())).collect();
        let _ = writeln!(out, "  imports by capability: {}", caps.join(", "));
        let _ = writeln!(out, "  approval required: {}", if r.approval_required { "yes" } else { "no" });
        if let Some(changes) = &r.changes {
            let _ = writeln!(out, "  changes since the baseline:");
            if changes.is_empty() {
                let _ = writeln!(out, "    none");
            }
            for f in changes {
                let _ = writeln!(out, "    [{}] {} {}: {}", f.severity.as_str(), f.id, f.title, f.message);
            }
        }
        let _ = writeln!(out, "  findings:");
        if r.findings.is_empty() {
            let _ = writeln!(out, "    none");
        }
        for f in &r.findings {
            let _ = writeln!(out, "    [{}] {} {}: {}", f.severity.as_str(), f.id, f.title, f.message);
            let _ = writeln!(out, "        fix: {}", f.fix);
        }
        out.push('\n');
    }
    for e in errors {
        let _ = writeln!(out, "could not review {}: {}", e.file, e.message);
    }
    let s = summary(reviews);
    let _ = writeln!(
        out,
        "{} bundle(s): {} critical, {} high, {} medium, {} low, {} info",
        s["bundles"], s["critical"], s["high"], s["medium"], s["low"], s["info"]
    );
    out
}

pub fn markdown(reviews: &[Review], errors: &[ReviewError]) -> String {
    let mut out = String::from("## Bulkhead security review\n\n");
    for r in reviews {
        let _ = writeln!(out, "### `{}` {}\n", r.name, r.version);
        let _ = writeln!(
            out,
            "Component `{}`{}; approval required: **{}**.\n",
            r.digest,
            if r.pinned { " (pinned)" } else { "" },
            if r.approval_required { "yes" } else { "no" }
        );
        out.push_str("**Capability surface**\n\n");
        for line in &r.surface {
            let _ = writeln!(out, "- {line}");
        }
        out.push('\n');
        let rows: Vec<&Finding> = all_findings(r).collect();
        if rows.is_empty() {
            out.push_str("No findings.\n\n");
            continue;
        }
        out.push_str("| severity | id | finding | fix |\n|---|---|---|---|\n");
        for f in rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                f.severity.as_str(),
                f.id,
                f.message.replace('|', "\\|"),
                f.fix.replace('|', "\\|")
            );
        }
        out.push('\n');
    }
    for e in errors {
        let _ = writeln!(out, "> could not review `{}`: {}\n", e.file, e.message);
    }
    out
}

/// SARIF 2.1.0, for code-scanning tools.
pub fn sarif(reviews: &[Review], errors: &[ReviewError]) -> String {
    let level = |s: Severity| match s {
        Severity::Critical | Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low | Severity::Info => "note",
    };
    let mut rules: Vec<Value> = Vec::new();
    let mut results: Vec<Value> = Vec::new();
    for r in reviews {
        for f in all_findings(r) {
            if !rules.iter().any(|x| x["id"] == f.id) {
                rules.push(json!({ "id": f.id, "name": f.title, "shortDescription": { "text": f.title }, "help": { "text": f.fix } }));
            }
            results.push(json!({
                "ruleId": f.id,
                "level": level(f.severity),
                "message": { "text": format!("{}: {} (fix: {})", r.name, f.message, f.fix) },
                "properties": { "severity": f.severity.as_str(), "tool": r.name },
                "locations": [{ "physicalLocation": { "artifactLocation": { "uri": format!("{}/tool.toml", r.path) } } }],
            }));
        }
    }
    let notifications: Vec<Value> = errors
        .iter()
        .map(|e| json!({ "level": "error", "message": { "text": format!("{}: {}", e.file, e.message) } }))
        .collect();
    let doc = json!({
        "version": "2.1.0",
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "runs": [{
            "tool": { "driver": { "name": "bulkhead-review", "version": env!("CARGO_PKG_VERSION"), "rules": rules } },
            "results": results,
            "invocations": [{ "executionSuccessful": errors.is_empty(), "toolExecutionNotifications": notifications }],
        }],
    });
    serde_json::to_string_pretty(&doc).expect("sarif serializes") + "\n"
}
