//! `audit-report`: writes the final report, with the agent's recorded
//! reasoning (the session history), into the session workspace.
//!
//! Input: `{"title", "sections": [{"heading", "lines": [...]}]}`.
//! Output: `{"path", "bytes", "report"}`.

use bulkhead_sdk::{Tool, session};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Section {
    heading: String,
    lines: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    title: String,
    sections: Vec<Section>,
}

#[derive(Serialize)]
struct Output {
    path: String,
    bytes: usize,
    report: String,
}

const PATH: &str = "/workspace/audit-report.md";

struct AuditReport;

impl Tool for AuditReport {
    type Input = Input;
    type Output = Output;

    fn run(input: Input) -> Result<Output, String> {
        let mut report = format!("# {}\n\nSession {}\n", input.title, session::id());
        for s in &input.sections {
            report.push_str(&format!("\n## {}\n\n", s.heading));
            for line in &s.lines {
                report.push_str(&format!("- {line}\n"));
            }
        }
        report.push_str("\n## Agent reasoning (session history)\n\n");
        for m in session::history(50)? {
            report.push_str(&format!("- **{}**: {}\n", m.role, m.content));
        }
        std::fs::write(PATH, &report).map_err(|e| format!("{PATH}: {e}"))?;
        Ok(Output { path: PATH.into(), bytes: report.len(), report })
    }
}

bulkhead_sdk::export!(AuditReport);
