//! Grants: what a tool may use, and how the layers narrow it (contract §6).
//!
//! A tool's effective grant in a session is the intersection of its
//! manifest, its principal's policy and the session's own narrowing. This
//! module is pure policy, free of wasmtime, so every rule has a table test.
//!
//! - [`GrantSpec`] is the `[grants]` shape as written (in a manifest, a
//!   principal's policy, a session request); absent fields mean "no opinion"
//!   except in a manifest, where absent means nothing.
//! - [`Grant`] is a concrete grant: what a tool can use, stored with the
//!   session and shown by `GET /v1/sessions/{sid}`.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileGrant {
    /// Where the guest sees the folder, e.g. `/workspace`.
    pub path: String,
    /// `session` (the session's workspace) or `volume:NAME` (an operator folder).
    pub source: String,
    pub access: Access,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<FileGrant>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<bool>,
}

/// A concrete grant. The default grants nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    pub network: Vec<String>,
    pub files: Vec<FileGrant>,
    pub secrets: Vec<String>,
    pub env: Vec<String>,
    pub history: bool,
}

impl GrantSpec {
    /// Checks the shape of every entry; `what` names the place for errors.
    pub fn validate(&self, what: &str) -> Result<(), String> {
        for host in self.network.iter().flatten() {
            HostPattern::parse(host).map_err(|e| format!("{what}.network: {e}"))?;
        }
        for f in self.files.iter().flatten() {
            validate_guest_path(&f.path).map_err(|e| format!("{what}.files: {e}"))?;
            let ok = f.source == "session" || f.source.strip_prefix("volume:").is_some_and(|v| !v.is_empty());
            if !ok {
                return Err(format!("{what}.files: source {:?} must be \"session\" or \"volume:NAME\"", f.source));
            }
        }
        for name in self.secrets.iter().flatten().chain(self.env.iter().flatten()) {
            if !is_var_name(name) {
                return Err(format!("{what}: {name:?} is not a name like FOO_BAR"));
            }
        }
        Ok(())
    }
}

impl Grant {
    /// True when a tool with this grant can change nothing outside its own
    /// state: no network, no writable folder. (Its state commits only with
    /// its call's outcome.)
    pub fn changes_only_state(&self) -> bool {
        self.network.is_empty() && self.files.iter().all(|f| f.access != Access::ReadWrite)
    }

    /// A manifest's `[grants]`: what is absent is not granted.
    pub fn from_manifest(spec: &GrantSpec) -> Grant {
        Grant {
            network: spec.network.clone().unwrap_or_default(),
            files: spec.files.clone().unwrap_or_default(),
            secrets: spec.secrets.clone().unwrap_or_default(),
            env: spec.env.clone().unwrap_or_default(),
            history: spec.history.unwrap_or(false),
        }
    }

    /// The intersection with a policy (a principal's): what the policy does
    /// not cover is dropped. Absent fields of the policy leave this as is.
    pub fn intersect(&self, policy: &GrantSpec) -> Grant {
        let mut out = self.clone();
        if let Some(hosts) = &policy.network {
            let mine: Vec<HostPattern> = self.network.iter().filter_map(|h| HostPattern::parse(h).ok()).collect();
            let theirs: Vec<HostPattern> = hosts.iter().filter_map(|h| HostPattern::parse(h).ok()).collect();
            // Pairwise: the narrower of two overlapping patterns survives.
            let mut kept: Vec<String> = Vec::new();
            for (m, m_text) in mine.iter().zip(&self.network) {
                for (t, t_text) in theirs.iter().zip(hosts) {
                    let survivor = if t.covers(m) {
                        m_text
                    } else if m.covers(t) {
                        t_text
                    } else {
                        continue;
                    };
                    if !kept.contains(survivor) {
                        kept.push(survivor.clone());
                    }
                }
            }
            out.network = kept;
        }
        if let Some(files) = &policy.files {
            out.files = self
                .files
                .iter()
                .filter_map(|f| {
                    let p = files.iter().find(|p| p.path == f.path && p.source == f.source)?;
                    Some(FileGrant { access: f.access.min(p.access), ..f.clone() })
                })
                .collect();
        }
        if let Some(secrets) = &policy.secrets {
            out.secrets.retain(|s| secrets.contains(s));
        }
        if let Some(env) = &policy.env {
            out.env.retain(|e| env.contains(e));
        }
        if let Some(history) = policy.history {
            out.history &= history;
        }
        out
    }

    /// Narrowing asked by a session: every entry must already be covered by
    /// this grant, or the request would widen it and is refused.
    pub fn narrow(&self, spec: &GrantSpec) -> Result<Grant, String> {
        let mut out = self.clone();
        if let Some(hosts) = &spec.network {
            let mine: Vec<HostPattern> = self.network.iter().filter_map(|h| HostPattern::parse(h).ok()).collect();
            for host in hosts {
                let want = HostPattern::parse(host)?;
                if !mine.iter().any(|m| m.covers(&want)) {
                    return Err(format!("network {host:?} is not within the grant"));
                }
            }
            out.network = hosts.clone();
        }
        if let Some(files) = &spec.files {
            for f in files {
                let covered =
                    self.files.iter().any(|m| m.path == f.path && m.source == f.source && f.access <= m.access);
                if !covered {
                    return Err(format!("files {:?} ({:?}) is not within the grant", f.path, f.source));
                }
            }
            out.files = files.clone();
        }
        for (field, want, have) in [("secrets", &spec.secrets, &self.secrets), ("env", &spec.env, &self.env)] {
            if let Some(want) = want
                && let Some(extra) = want.iter().find(|w| !have.contains(w))
            {
                return Err(format!("{field} {extra:?} is not within the grant"));
            }
        }
        if let Some(s) = &spec.secrets {
            out.secrets = s.clone();
        }
        if let Some(e) = &spec.env {
            out.env = e.clone();
        }
        if let Some(history) = spec.history {
            if history && !self.history {
                return Err("history is not within the grant".into());
            }
            out.history = history;
        }
        Ok(out)
    }
}

/// A network grant entry: `host[:port]` or `*.domain[:port]`. Without a port
/// the default ports apply (443 for https, 80 for http).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// Lowercase host, or the suffix after `*.` for a wildcard.
    pub host: String,
    pub wildcard: bool,
    pub port: Option<u16>,
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let lower = text.trim().to_ascii_lowercase();
        let (host, port) = match lower.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => {
                let port: u16 = p.parse().map_err(|_| format!("{text:?}: bad port"))?;
                if port == 0 {
                    return Err(format!("{text:?}: port 0"));
                }
                (h.to_string(), Some(port))
            }
            _ => (lower.clone(), None),
        };
        let (wildcard, host) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, host),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(format!("{text:?} is not a host name like api.example.com or *.example.org:8443"));
        }
        Ok(HostPattern { host, wildcard, port })
    }

    /// Whether every destination `other` allows is also allowed by `self`.
    pub fn covers(&self, other: &HostPattern) -> bool {
        let port_ok = self.port.is_none() && other.port.is_none() || self.port == other.port;
        let host_ok = match (self.wildcard, other.wildcard) {
            (false, false) => self.host == other.host,
            (false, true) => false,
            (true, _) => {
                other.host.ends_with(&format!(".{}", self.host)) || (other.wildcard && other.host == self.host)
            }
        };
        port_ok && host_ok
    }
}

/// `addr/prefix` for IPv4 or IPv6.
pub fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (addr, prefix) = text.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((addr, prefix))
}

/// `[A-Za-z_][A-Za-z0-9_]*`, at most 128 bytes: env and secret names.
pub fn is_var_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 128
        && bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn validate_guest_path(path: &str) -> Result<(), String> {
    let ok = path.starts_with('/')
        && path.len() <= 256
        && path != "/"
        && !path.split('/').any(|c| c == ".." || c == ".")
        && !path.contains('\0');
    if ok { Ok(()) } else { Err(format!("guest path {path:?} must be absolute, not /, without . or ..")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(network: &[&str], secrets: &[&str], history: bool) -> Grant {
        Grant {
            network: network.iter().map(|s| s.to_string()).collect(),
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            history,
            ..Grant::default()
        }
    }

    #[test]
    fn host_pattern_coverage_table() {
        let cases = [
            ("api.example.com", "api.example.com", true),
            ("API.example.com", "api.EXAMPLE.com", true),
            ("api.example.com", "other.example.com", false),
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "a.b.example.com", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "*.b.example.com", true),
            ("*.example.com", "*.example.com", true),
            ("a.example.com", "*.example.com", false),
            ("api.example.com", "api.example.com:8443", false),
            ("api.example.com:8443", "api.example.com:8443", true),
            ("api.example.com:8443", "api.example.com", false),
            ("*.evil.com", "notevil.com", false),
            ("*.example.com", "a.example.com.evil.com", false),
        ];
        for (have, want, expected) in cases {
            let (h, w) = (HostPattern::parse(have).unwrap(), HostPattern::parse(want).unwrap());
            assert_eq!(h.covers(&w), expected, "{have} covers {want}");
        }
    }

    #[test]
    fn host_pattern_rejects_garbage() {
        for bad in
            ["", "*", "*.", "http://x.com", "a b.com", "x.com:0", "x.com:99999", "-x.com", "x..com", "x.com/path"]
        {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn narrowing_keeps_what_is_covered_and_refuses_widening() {
        let base = grant(&["*.example.com"], &["A", "B"], true);
        let cases: Vec<(GrantSpec, Result<Grant, ()>)> = vec![
            (GrantSpec::default(), Ok(base.clone())),
            (
                GrantSpec { network: Some(vec!["api.example.com".into()]), ..Default::default() },
                Ok(grant(&["api.example.com"], &["A", "B"], true)),
            ),
            (GrantSpec { network: Some(vec!["evil.com".into()]), ..Default::default() }, Err(())),
            (
                GrantSpec { secrets: Some(vec!["A".into()]), ..Default::default() },
                Ok(grant(&["*.example.com"], &["A"], true)),
            ),
            (GrantSpec { secrets: Some(vec!["C".into()]), ..Default::default() }, Err(())),
            (
                GrantSpec { history: Some(false), ..Default::default() },
                Ok(grant(&["*.example.com"], &["A", "B"], false)),
            ),
            (GrantSpec { env: Some(vec!["TZ".into()]), ..Default::default() }, Err(())),
        ];
        for (spec, expected) in cases {
            assert_eq!(base.narrow(&spec).map_err(|_| ()), expected, "{spec:?}");
        }
        let no_history = grant(&[], &[], false);
        assert!(no_history.narrow(&GrantSpec { history: Some(true), ..Default::default() }).is_err());
    }

    #[test]
    fn file_narrowing_can_lower_access_but_not_raise_it() {
        let rw = FileGrant { path: "/w".into(), source: "session".into(), access: Access::ReadWrite };
        let ro = FileGrant { access: Access::ReadOnly, ..rw.clone() };
        let base = Grant { files: vec![ro.clone()], ..Grant::default() };
        assert!(base.narrow(&GrantSpec { files: Some(vec![rw.clone()]), ..Default::default() }).is_err());
        let wide = Grant { files: vec![rw.clone()], ..Grant::default() };
        assert_eq!(
            wide.narrow(&GrantSpec { files: Some(vec![ro.clone()]), ..Default::default() }).unwrap().files,
            vec![ro.clone()]
        );
        // A principal's policy intersects: read-write ∩ read-only = read-only.
        assert_eq!(wide.intersect(&GrantSpec { files: Some(vec![ro.clone()]), ..Default::default() }).files, vec![ro]);
    }

    #[test]
    fn policy_intersection_drops_what_the_policy_lacks() {
        let manifest = grant(&["api.example.com", "other.org"], &["A", "B"], true);
        let policy = GrantSpec {
            network: Some(vec!["*.example.com".into()]),
            secrets: Some(vec!["B".into(), "Z".into()]),
            history: Some(false),
            ..Default::default()
        };
        assert_eq!(manifest.intersect(&policy), grant(&["api.example.com"], &["B"], false));
        // A narrower policy entry under a manifest wildcard is kept as the policy wrote it.
        let wild = grant(&["*.example.com"], &[], false);
        let narrow = GrantSpec { network: Some(vec!["a.example.com".into()]), ..Default::default() };
        assert_eq!(wild.intersect(&narrow).network, vec!["a.example.com".to_string()]);
        assert_eq!(manifest.intersect(&GrantSpec::default()), manifest);
    }

    #[test]
    fn spec_validation_table() {
        let bad = [
            GrantSpec { network: Some(vec!["bad host".into()]), ..Default::default() },
            GrantSpec { secrets: Some(vec!["1BAD".into()]), ..Default::default() },
            GrantSpec { env: Some(vec!["A-B".into()]), ..Default::default() },
            GrantSpec {
                files: Some(vec![FileGrant {
                    path: "/a/../etc".into(),
                    source: "session".into(),
                    access: Access::ReadOnly,
                }]),
                ..Default::default()
            },
            GrantSpec {
                files: Some(vec![FileGrant { path: "rel".into(), source: "session".into(), access: Access::ReadOnly }]),
                ..Default::default()
            },
            GrantSpec {
                files: Some(vec![FileGrant {
                    path: "/x".into(),
                    source: "host:/etc".into(),
                    access: Access::ReadOnly,
                }]),
                ..Default::default()
            },
        ];
        for spec in bad {
            assert!(spec.validate("grants").is_err(), "{spec:?}");
        }
        assert!(parse_cidr("127.0.0.0/8").is_some());
        assert!(parse_cidr("fc00::/7").is_some());
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(parse_cidr("10.0.0.0").is_none());
    }
}
