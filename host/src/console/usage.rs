//! Usage: the host's deterministic meters per session and per principal,
//! and a chart (inline SVG) of finished calls and capability denials per
//! hour over the last day, counted from the audit trails of the newest
//! of the (first 1,000) sessions the viewer may see.

use super::layout::{self, PageError};
use super::signin::Viewer;
use crate::model::SessionUsage;
use crate::service::Service;
use crate::service::sessions::SessionFilter;
use crate::service::usage::UsageParams;
use axum::extract::State;
use axum::response::Response;
use maud::{Markup, html};
use std::sync::Arc;
use std::time::SystemTime;

/// Sessions summed at most, and of those the newest whose audit is charted.
const SUMMED: u32 = 1000;
const CHARTED: usize = 50;
const HOURS: usize = 24;

pub async fn page(State(s): State<Arc<Service>>, viewer: Viewer) -> Result<Response, PageError> {
    let p = &viewer.principal;
    let sessions = s.find_sessions(p, &SessionFilter::default(), None, Some(SUMMED)).await?.sessions;
    let report = s.usage_report(p, UsageParams::default()).await?;
    let currency = &report.currency;
    let now = SystemTime::now();
    let (mut calls, mut denials) = ([0u64; HOURS], [0u64; HOURS]);
    for sess in sessions.iter().rev().take(CHARTED) {
        let events = s.list_audit(p, &sess.id, None, Some(crate::service::sessions::MAX_PAGE)).await?;
        for e in events {
            let counter = match e.kind.as_str() {
                "call_finished" => &mut calls,
                "capability_denied" => &mut denials,
                _ => continue,
            };
            let Ok(at) = humantime::parse_rfc3339_weak(&e.at) else { continue };
            if let Ok(age) = now.duration_since(at) {
                let hour = (age.as_secs() / 3600) as usize;
                if hour < HOURS {
                    counter[HOURS - 1 - hour] += 1;
                }
            }
        }
    }
    let shown = sessions.len().min(CHARTED);
    let body = html! {
        section #chart {
            h2 { "Calls and denials, last 24 hours" }
            p.lead { "From the audit trails of the newest " (shown) " of the sessions listed below, per hour (the rightmost bar is the current hour)." }
            (chart(&calls, &denials))
        }
        section #per-principal {
            h2 { "Per principal" }
            p.lead { "Every session, deleted ones included, at the configured prices (" (currency) ")." }
            table.usage {
                thead { tr { th { "Principal" } th { "Sessions" } (usage_heads(currency)) } }
                tbody {
                    @for line in &report.principals {
                        tr { td { (line.principal) } td.num { (line.sessions) } (usage_cells(&line.usage)) }
                    }
                }
            }
        }
        section #per-session {
            h2 { "Per session" }
            @if sessions.len() as u32 == SUMMED { p.lead { "The first " (SUMMED) " sessions only." } }
            table.usage {
                thead { tr { th { "Session" } th { "Principal" } (usage_heads(currency)) } }
                tbody {
                    @for sess in &sessions {
                        tr {
                            td { a href={ "/ui/sessions/" (sess.id) } { (layout::short_id(&sess.id)) } }
                            td { (sess.principal) }
                            (usage_cells(&sess.usage))
                        }
                    }
                }
            }
        }
    };
    Ok(layout::ok(layout::page("Usage", Some(viewer.nav()), body)))
}

fn usage_heads(currency: &str) -> Markup {
    html! {
        th { "Calls" } th { "Wall ms" } th { "Fuel" } th { "State bytes written" } th { "Egress requests" }
        th { "Egress bytes" } th { "Stored bytes" } th { "Cost (" (currency) ")" }
    }
}

fn usage_cells(u: &SessionUsage) -> Markup {
    html! {
        td.num { (u.calls) } td.num { (u.wall_ms) } td.num { (u.fuel) } td.num { (u.state_bytes_written) }
        td.num { (u.egress_requests) } td.num { (u.egress_bytes) } td.num { (u.stored_bytes) }
        td.num { (format!("{:.4}", u.cost)) }
    }
}

/// Two bars per hour, scaled to the busiest hour; each bar says its count
/// on hover, and the figures are also in the accessible description.
fn chart(calls: &[u64; HOURS], denials: &[u64; HOURS]) -> Markup {
    let (w, h, pad) = (720.0_f64, 160.0_f64, 20.0_f64);
    let max = calls.iter().chain(denials.iter()).copied().max().unwrap_or(0).max(1) as f64;
    let slot = (w - 2.0 * pad) / HOURS as f64;
    let bar = |i: usize, n: u64, offset: f64, class: &str, what: &str| {
        let height = (h - 2.0 * pad) * n as f64 / max;
        let x = pad + i as f64 * slot + offset;
        let y = h - pad - height;
        let ago = HOURS - 1 - i;
        html! {
            rect class=(class) x=(format!("{x:.1}")) y=(format!("{y:.1}")) width=(format!("{:.1}", slot * 0.4)) height=(format!("{height:.1}")) {
                title { (n) " " (what) ", " (ago) " h ago" }
            }
        }
    };
    let total_calls: u64 = calls.iter().sum();
    let total_denials: u64 = denials.iter().sum();
    html! {
        svg.chart viewBox={ "0 0 " (w) " " (h) } role="img" aria-label={ (total_calls) " calls and " (total_denials) " denials in the last 24 hours" } {
            line.axis x1=(pad) y1=(h - pad) x2=(w - pad) y2=(h - pad) {}
            @for i in 0..HOURS {
                (bar(i, calls[i], slot * 0.1, "calls", "calls"))
                (bar(i, denials[i], slot * 0.5, "denials", "denials"))
            }
            text x=(pad) y=(h - 4.0) { "24 h ago" }
            text x=(w - pad) y=(h - 4.0) text-anchor="end" { "now" }
            text x=(pad) y="14" { "max " (max as u64) " per hour" }
        }
        p.legend { span.key-calls { "■" } " calls (" (total_calls) ")  " span.key-denials { "■" } " capability denials (" (total_denials) ")" }
    }
}
