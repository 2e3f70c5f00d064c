//! The review's checks. Each finding has a stable id:
//!
//! | id | severity | what |
//! |---|---|---|
//! | BH001 | critical | import the host does not provide (refused at load) |
//! | BH002 | high | `wasi:http` imported without a network grant (refused at load) |
//! | BH003 | medium | capability imported but not granted (its calls will fail) |
//! | BH004 | low | grant no import can use (dead capability) |
//! | BH010 | medium | wildcard host |
//! | BH011 | medium | IP literal host |
//! | BH012 | high | private, loopback or metadata address |
//! | BH013 | low | plain-http port |
//! | BH020 | medium | read-write session workspace |
//! | BH021 | high | read-write operator volume |
//! | BH030 | high | exfiltration path: secrets or history with network |
//! | BH031 | medium | operator volume readable with network |
//! | BH032 | medium | can act outside its state (network or writes) with no approval |
//! | BH040 | info | limit not set (default applies) |
//! | BH041 | low | limit above the default |
//! | BH042 | medium | raw sockets imported (always refused) |
//! | BH050 | low | component digest not pinned |
//! | BH051 | critical | component does not match its pin |
//! | BH1xx | | baseline changes (see [`diff`]) |

use super::{Capability, Finding, Review, Severity};
use crate::manifest::{DEFAULT_TOOL_LIMITS, Manifest};
use crate::policy::Access;
use crate::policy::files::Source;
use crate::policy::imports::{self, Refusal};
use std::net::IpAddr;

fn finding(
    id: &'static str,
    severity: Severity,
    title: &'static str,
    message: String,
    fix: impl Into<String>,
) -> Finding {
    Finding { id, severity, title, message, fix: fix.into() }
}

fn uses(r: &Review, c: Capability) -> bool {
    r.capabilities.iter().any(|u| u.capability == c)
}

/// The capability surface in plain words.
pub fn surface(r: &Review) -> Vec<String> {
    let mut out = Vec::new();
    let g = &r.grants;
    if uses(r, Capability::State) {
        out.push("may read and write its own state in each session".to_string());
    }
    if uses(r, Capability::OutboundHttp) {
        for p in &g.network {
            let port = p.port.map_or("443 (https) or 80 (http)".to_string(), |p| p.to_string());
            let host = if p.wildcard { format!("any subdomain of {}", p.host) } else { p.host.clone() };
            out.push(format!("may send HTTP requests to {host} on port {port}"));
        }
    }
    if uses(r, Capability::Secrets) {
        for s in &g.secrets {
            out.push(format!("may read secret {s}"));
        }
    }
    if uses(r, Capability::Session) && g.history {
        out.push("may read the session's conversation history".into());
    }
    if uses(r, Capability::Filesystem) {
        for f in &g.files {
            let what = match f.source() {
                Some(Source::Volume(v)) => format!("operator volume {v}"),
                _ => "the session workspace".to_string(),
            };
            let how = if f.access == Access::ReadWrite { "read and write" } else { "read" };
            out.push(format!("may {how} {} ({what})", f.path));
        }
    }
    for name in &g.env {
        out.push(format!("may read environment variable {name} if the session sets it"));
    }
    if out.is_empty() {
        out.push("reaches nothing outside its own computation".into());
    }
    out
}

fn is_private_literal(host: &str) -> bool {
    let ip = host.parse::<IpAddr>().ok().or_else(|| host.parse::<u32>().ok().map(|n| IpAddr::from(n.to_be_bytes())));
    ip.is_some_and(|ip| !crate::policy::network::is_global(ip))
        || host == "localhost"
        || host.ends_with(".localhost")
        || host == "metadata.google.internal"
}

/// Every check on one bundle.
pub fn check(r: &Review, m: &Manifest, digest: &str) -> Vec<Finding> {
    let g = &r.grants;
    let mut out = Vec::new();
    // The loader's own import table: what it refuses is reported here.
    let refusals: Vec<Refusal> = r.imports.iter().filter_map(|i| imports::check(i, g).err()).collect();
    for import in &r.imports {
        if imports::check(import, g) == Err(Refusal::NotProvided) {
            out.push(finding(
                "BH001",
                Severity::Critical,
                "import not provided by the host",
                format!("imports {import}, which Bulkhead does not provide: the bundle is refused at load"),
                "rebuild the tool without this import, or target the bulkhead:tool world",
            ));
        }
    }
    let http = uses(r, Capability::OutboundHttp);
    if refusals.contains(&Refusal::NeedsGrant("network")) {
        out.push(finding(
            "BH002",
            Severity::High,
            "HTTP imported without a network grant",
            "imports wasi:http but grants no network: the bundle is refused at load".into(),
            "add the hosts it needs to [grants] network, or drop the HTTP client",
        ));
    }
    let pairs = [
        (Capability::Secrets, !g.secrets.is_empty(), "secrets"),
        (Capability::Filesystem, !g.files.is_empty(), "files"),
    ];
    for (cap, granted, grant) in pairs {
        if uses(r, cap) && !granted {
            out.push(finding(
                "BH003",
                Severity::Medium,
                "capability imported but not granted",
                format!("imports {cap:?} but grants no {grant}: every use will fail"),
                format!("grant the {grant} it needs, or remove the code that uses them"),
            ));
        }
    }
    let dead = [
        (!g.network.is_empty(), uses(r, Capability::OutboundHttp), "network"),
        (!g.secrets.is_empty(), uses(r, Capability::Secrets), "secrets"),
        (!g.files.is_empty(), uses(r, Capability::Filesystem), "files"),
        (g.history, uses(r, Capability::Session), "history"),
        (!g.env.is_empty(), uses(r, Capability::Cli), "env"),
    ];
    for (granted, used, grant) in dead {
        if granted && !used {
            out.push(finding(
                "BH004",
                Severity::Low,
                "grant no import can use",
                format!("grants {grant} but the component has no import that can use it"),
                format!("remove {grant} from [grants]"),
            ));
        }
    }
    for p in &g.network {
        let host = p.as_str();
        if p.wildcard {
            out.push(finding(
                "BH010",
                Severity::Medium,
                "wildcard host",
                format!("network grant {host:?} allows every subdomain"),
                "list the exact hosts the tool calls",
            ));
        }
        if p.host.parse::<IpAddr>().is_ok() || p.host.bytes().all(|b| b.is_ascii_digit()) {
            out.push(finding(
                "BH011",
                Severity::Medium,
                "IP literal host",
                format!("network grant {host:?} is an address, not a name"),
                "grant the service's DNS name so certificates and audits name it",
            ));
        }
        if is_private_literal(&p.host) {
            out.push(finding(
                "BH012",
                Severity::High,
                "private or metadata address",
                format!("network grant {host:?} points at a private, loopback or metadata address"),
                "remove it; internal services need an explicit operator allow_private and review",
            ));
        }
        if p.port == Some(80) {
            out.push(finding(
                "BH013",
                Severity::Low,
                "plain HTTP",
                format!("network grant {host:?} names port 80: traffic is unencrypted"),
                "use the https endpoint (port 443)",
            ));
        }
    }
    for f in &g.files {
        if f.access == Access::ReadWrite {
            if let Some(Source::Volume(volume)) = f.source() {
                out.push(finding(
                    "BH021",
                    Severity::High,
                    "read-write operator volume",
                    format!("{} is writable and is operator volume {volume}", f.path),
                    "grant read-only, or write to the session workspace and review the result",
                ));
            } else {
                out.push(finding(
                    "BH020",
                    Severity::Medium,
                    "read-write workspace",
                    format!("{} is writable (session workspace)", f.path),
                    "grant read-only unless the tool must write files",
                ));
            }
        }
    }
    if http && !g.network.is_empty() {
        if (!g.secrets.is_empty() && uses(r, Capability::Secrets)) || (g.history && uses(r, Capability::Session)) {
            let what = if g.history { "the session history" } else { "secrets" };
            out.push(finding(
                "BH030",
                Severity::High,
                "exfiltration path",
                format!("can read {what} and send HTTP requests: a compromised tool can send them out"),
                "split the tool, narrow network to the one API that needs the secret, and require approval",
            ));
        }
        if g.files.iter().any(|f| matches!(f.source(), Some(Source::Volume(_)))) && uses(r, Capability::Filesystem) {
            out.push(finding(
                "BH031",
                Severity::Medium,
                "volume readable with network",
                "can read an operator volume and send HTTP requests".into(),
                "keep data tools and network tools apart",
            ));
        }
    }
    let writes_outside = (http && !g.network.is_empty()) || g.files.iter().any(|f| f.access == Access::ReadWrite);
    if writes_outside && !m.approval.required {
        out.push(finding(
            "BH032",
            Severity::Medium,
            "acts outside its state without approval",
            "can reach the network or write files, and no call needs a human decision".into(),
            "set [approval] required = true, or have sessions require it",
        ));
    }
    let limits = [
        ("timeout_ms", m.limits.timeout_ms, DEFAULT_TOOL_LIMITS.timeout_ms),
        ("memory_mb", m.limits.memory_mb, DEFAULT_TOOL_LIMITS.memory_mb),
        ("output_kb", m.limits.output_kb, DEFAULT_TOOL_LIMITS.output_kb),
        ("state_kb", m.limits.state_kb, DEFAULT_TOOL_LIMITS.state_kb),
    ];
    for (key, set, default) in limits {
        match set {
            None => out.push(finding(
                "BH040",
                Severity::Info,
                "limit not set",
                format!("limits.{key} is not set; the default {default} applies"),
                format!("set limits.{key} to what the tool needs"),
            )),
            Some(v) if v > default => out.push(finding(
                "BH041",
                Severity::Low,
                "limit above the default",
                format!("limits.{key} = {v} is above the default {default}"),
                format!("lower limits.{key} unless the tool needs it"),
            )),
            _ => {}
        }
    }
    if uses(r, Capability::Sockets) {
        out.push(finding(
            "BH042",
            Severity::Medium,
            "raw sockets imported",
            "imports wasi:sockets: every address is refused; the code path will fail".into(),
            "use wasi:http for outbound traffic",
        ));
    }
    match &m.sha256 {
        None => out.push(finding(
            "BH050",
            Severity::Low,
            "digest not pinned",
            format!("the manifest does not pin the component; it is sha256:{digest}"),
            format!("add sha256 = \"{digest}\" to tool.toml"),
        )),
        Some(pin) if !pin.eq_ignore_ascii_case(digest) => out.push(finding(
            "BH051",
            Severity::Critical,
            "component does not match its pin",
            format!("pinned sha256:{pin} but the component is sha256:{digest}: the host refuses it"),
            "rebuild from the reviewed source or update the pin after review",
        )),
        Some(_) => {}
    }
    out.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.id.cmp(b.id)));
    out
}

/// What changed since the approved bundle, widening ranked first.
pub fn diff(old: &Review, new: &Review) -> Vec<Finding> {
    let mut out = Vec::new();
    let caps = |r: &Review| r.capabilities.iter().map(|c| c.capability).collect::<Vec<_>>();
    let (old_caps, new_caps) = (caps(old), caps(new));
    for c in new_caps.iter().filter(|c| !old_caps.contains(c)) {
        let severity = match c {
            Capability::OutboundHttp | Capability::Secrets | Capability::Unknown => Severity::High,
            Capability::Filesystem | Capability::Sockets | Capability::Session => Severity::Medium,
            _ => Severity::Low,
        };
        out.push(finding(
            "BH100",
            severity,
            "capability added",
            format!("now imports {c:?}"),
            "review why the tool needs it",
        ));
    }
    for c in old_caps.iter().filter(|c| !new_caps.contains(c)) {
        out.push(finding(
            "BH101",
            Severity::Info,
            "capability removed",
            format!("no longer imports {c:?}"),
            "nothing to do",
        ));
    }
    let hosts = |r: &Review| r.grants.network.iter().map(|h| h.as_str().to_string()).collect::<Vec<_>>();
    let lists: [(&str, &Vec<String>, &Vec<String>, Severity); 3] = [
        ("network", &hosts(old), &hosts(new), Severity::High),
        ("secrets", &old.grants.secrets, &new.grants.secrets, Severity::High),
        ("env", &old.grants.env, &new.grants.env, Severity::Low),
    ];
    for (grant, before, after, severity) in lists {
        for added in after.iter().filter(|x| !before.contains(x)) {
            out.push(finding(
                "BH110",
                severity,
                "grant added",
                format!("{grant} grant {added:?} added"),
                format!("confirm the tool needs {added}"),
            ));
        }
        for removed in before.iter().filter(|x| !after.contains(x)) {
            out.push(finding(
                "BH111",
                Severity::Info,
                "grant removed",
                format!("{grant} grant {removed:?} removed"),
                "nothing to do",
            ));
        }
    }
    for f in &new.grants.files {
        match old.grants.files.iter().find(|o| o.path == f.path && o.source == f.source) {
            None => out.push(finding(
                "BH110",
                Severity::Medium,
                "grant added",
                format!("files grant {} ({}) added", f.path, f.source),
                "confirm the tool needs it",
            )),
            Some(o) if f.access > o.access => out.push(finding(
                "BH112",
                Severity::High,
                "mount made writable",
                format!("{} is now read-write", f.path),
                "keep it read-only unless required",
            )),
            Some(_) => {}
        }
    }
    if new.grants.history && !old.grants.history {
        out.push(finding(
            "BH110",
            Severity::Medium,
            "grant added",
            "history grant added".into(),
            "confirm the tool needs the conversation",
        ));
    }
    let limits = [
        ("timeout_ms", old.limits.timeout_ms, new.limits.timeout_ms),
        ("memory_mb", old.limits.memory_mb, new.limits.memory_mb),
        ("output_kb", old.limits.output_kb, new.limits.output_kb),
        ("state_kb", old.limits.state_kb, new.limits.state_kb),
    ];
    for (key, before, after) in limits {
        if after > before {
            out.push(finding(
                "BH120",
                Severity::Low,
                "limit raised",
                format!("limits.{key} raised from {before} to {after}"),
                "confirm the tool needs more",
            ));
        }
    }
    if old.approval_required && !new.approval_required {
        out.push(finding(
            "BH130",
            Severity::High,
            "approval dropped",
            "calls no longer need a human decision".into(),
            "restore [approval] required = true",
        ));
    }
    if old.digest != new.digest {
        out.push(finding(
            "BH140",
            Severity::Info,
            "component changed",
            format!("{} → {}", old.digest, new.digest),
            "review the source diff",
        ));
    }
    out.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.id.cmp(b.id)));
    out
}
