//! Grants: what a tool may use, and how the layers narrow it (contract §6).
//! Pure policy, free of wasmtime, one module per capability, each with
//! its table tests beside it.
//!
//! A tool's effective grant in a session is the intersection of its
//! manifest, its principal's policy and the session's own narrowing, fixed
//! when the session is created; later it can only narrow.
//!
//! | capability | policy | enforced in |
//! |---|---|---|
//! | network | [`network`]: host patterns, routable addresses, `allow_private` | `caps::http` (the egress hook) |
//! | files | [`files`]: guest paths, sources, access | `caps::files`, `service::workspace` |
//! | secrets, env | [`names`]: granted by name | `caps::secrets`, `caps` (the WASI context) |
//! | history | a yes or no here ([`Grant::history`]) | `caps::session` |
//! | state | always granted, bounded by `state_kb` | `caps::state` |
//! | imports | [`imports`]: which import needs which grant | `runtime::loader`, `review` |
//!
//! - [`GrantSpec`] is the `[grants]` shape as written (in a manifest, a
//!   principal's policy, a session request); absent fields mean "no
//!   opinion", except in a manifest, where absent means nothing.
//! - [`Grant`] is a concrete grant, parsed: what a tool can use, stored
//!   with the session and shown by `GET /v1/sessions/{sid}`.

pub mod files;
pub mod imports;
pub mod names;
pub mod network;

pub use files::{Access, FileGrant};
pub use network::{HostPattern, PrivateRanges};

use serde::{Deserialize, Serialize};

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
    pub network: Vec<HostPattern>,
    pub files: Vec<FileGrant>,
    pub secrets: Vec<String>,
    pub env: Vec<String>,
    pub history: bool,
}

/// One layer's opinion (a principal's policy, a session's narrowing),
/// parsed from its [`GrantSpec`]: `None` means no opinion.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Layer {
    pub network: Option<Vec<HostPattern>>,
    pub files: Option<Vec<FileGrant>>,
    pub secrets: Option<Vec<String>>,
    pub env: Option<Vec<String>>,
    pub history: Option<bool>,
}

impl GrantSpec {
    /// Parses and checks every entry; `what` names the place for errors.
    pub fn parse(&self, what: &str) -> Result<Layer, String> {
        let network = self
            .network
            .as_ref()
            .map(|hosts| hosts.iter().map(|h| HostPattern::parse(h)).collect::<Result<Vec<_>, _>>())
            .transpose()
            .map_err(|e| format!("{what}.network: {e}"))?;
        files::validate(self.files.as_deref().unwrap_or_default()).map_err(|e| format!("{what}.files: {e}"))?;
        for list in [&self.secrets, &self.env] {
            names::validate(list.as_deref().unwrap_or_default()).map_err(|e| format!("{what}: {e}"))?;
        }
        Ok(Layer {
            network,
            files: self.files.clone(),
            secrets: self.secrets.clone(),
            env: self.env.clone(),
            history: self.history,
        })
    }

    /// [`parse`](Self::parse), for a spec only checked here.
    pub fn validate(&self, what: &str) -> Result<(), String> {
        self.parse(what).map(drop)
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
    pub fn from_manifest(spec: &GrantSpec) -> Result<Grant, String> {
        let layer = spec.parse("grants")?;
        Ok(Grant {
            network: layer.network.unwrap_or_default(),
            files: layer.files.unwrap_or_default(),
            secrets: layer.secrets.unwrap_or_default(),
            env: layer.env.unwrap_or_default(),
            history: layer.history.unwrap_or(false),
        })
    }

    /// The intersection with a policy (a principal's): what the policy does
    /// not cover is dropped. Absent fields of the policy leave this as is.
    pub fn intersect(&self, policy: &Layer) -> Grant {
        let mut out = self.clone();
        if let Some(hosts) = &policy.network {
            out.network = network::intersect(&self.network, hosts);
        }
        if let Some(f) = &policy.files {
            out.files = files::intersect(&self.files, f);
        }
        if let Some(s) = &policy.secrets {
            out.secrets = names::intersect(&self.secrets, s);
        }
        if let Some(e) = &policy.env {
            out.env = names::intersect(&self.env, e);
        }
        if let Some(history) = policy.history {
            out.history &= history;
        }
        out
    }

    /// What both grants allow: a session's boundary met with the grants of
    /// the tool version that runs now.
    pub fn meet(&self, other: &Grant) -> Grant {
        self.intersect(&Layer {
            network: Some(other.network.clone()),
            files: Some(other.files.clone()),
            secrets: Some(other.secrets.clone()),
            env: Some(other.env.clone()),
            history: Some(other.history),
        })
    }

    /// Narrowing asked by a session: every entry must already be covered by
    /// this grant, or the request would widen it and is refused.
    pub fn narrow(&self, want: &Layer) -> Result<Grant, String> {
        let mut out = self.clone();
        if let Some(hosts) = &want.network {
            out.network = network::narrow(&self.network, hosts)?;
        }
        if let Some(f) = &want.files {
            out.files = files::narrow(&self.files, f)?;
        }
        if let Some(s) = &want.secrets {
            out.secrets = names::narrow("secrets", &self.secrets, s)?;
        }
        if let Some(e) = &want.env {
            out.env = names::narrow("env", &self.env, e)?;
        }
        if let Some(history) = want.history {
            if history && !self.history {
                return Err("history is not within the grant".into());
            }
            out.history = history;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(network: &[&str], secrets: &[&str], history: bool) -> Grant {
        Grant {
            network: network.iter().map(|s| HostPattern::parse(s).unwrap()).collect(),
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            history,
            ..Grant::default()
        }
    }

    fn strings(list: &[&str]) -> Option<Vec<String>> {
        Some(list.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn narrowing_keeps_what_is_covered_and_refuses_widening() {
        let base = grant(&["*.example.com"], &["A", "B"], true);
        let cases: Vec<(GrantSpec, Result<Grant, ()>)> = vec![
            (GrantSpec::default(), Ok(base.clone())),
            (
                GrantSpec { network: strings(&["api.example.com"]), ..Default::default() },
                Ok(grant(&["api.example.com"], &["A", "B"], true)),
            ),
            (GrantSpec { network: strings(&["evil.com"]), ..Default::default() }, Err(())),
            (GrantSpec { network: strings(&["not a host"]), ..Default::default() }, Err(())),
            (GrantSpec { secrets: strings(&["A"]), ..Default::default() }, Ok(grant(&["*.example.com"], &["A"], true))),
            (GrantSpec { secrets: strings(&["C"]), ..Default::default() }, Err(())),
            (
                GrantSpec { history: Some(false), ..Default::default() },
                Ok(grant(&["*.example.com"], &["A", "B"], false)),
            ),
            (GrantSpec { env: strings(&["TZ"]), ..Default::default() }, Err(())),
        ];
        for (spec, expected) in cases {
            let narrowed = spec.parse("grants").and_then(|layer| base.narrow(&layer));
            assert_eq!(narrowed.map_err(|_| ()), expected, "{spec:?}");
        }
        let no_history = grant(&[], &[], false);
        assert!(no_history.narrow(&Layer { history: Some(true), ..Default::default() }).is_err());
    }

    #[test]
    fn a_principals_policy_drops_what_it_does_not_cover() {
        let manifest = grant(&["api.example.com", "other.org"], &["A", "B"], true);
        let policy = GrantSpec {
            network: strings(&["*.example.com"]),
            secrets: strings(&["B", "Z"]),
            history: Some(false),
            ..Default::default()
        };
        let policy = policy.parse("policy").unwrap();
        assert_eq!(manifest.intersect(&policy), grant(&["api.example.com"], &["B"], false));
        // A narrower policy entry under a manifest wildcard is kept as the policy wrote it.
        let wild = grant(&["*.example.com"], &[], false);
        let narrow = GrantSpec { network: strings(&["a.example.com"]), ..Default::default() };
        assert_eq!(
            wild.intersect(&narrow.parse("policy").unwrap()).network,
            grant(&["a.example.com"], &[], false).network
        );
        assert_eq!(manifest.intersect(&Layer::default()), manifest);
    }

    #[test]
    fn a_session_met_with_a_new_tool_version_never_widens() {
        let session = grant(&["api.example.com"], &["A"], false);
        let cases = [
            ("same version", grant(&["api.example.com"], &["A"], false), session.clone()),
            ("wider version", grant(&["*.example.com", "evil.org"], &["A", "B"], true), session.clone()),
            ("narrower version", grant(&[], &["A"], false), grant(&[], &["A"], false)),
            ("secret dropped", grant(&["api.example.com"], &[], false), grant(&["api.example.com"], &[], false)),
        ];
        for (what, version, want) in cases {
            assert_eq!(session.meet(&version), want, "{what}");
        }
    }

    #[test]
    fn a_spec_with_a_malformed_entry_is_refused_naming_its_place() {
        let bad = [
            (GrantSpec { network: strings(&["bad host"]), ..Default::default() }, "grants.network"),
            (GrantSpec { secrets: strings(&["1BAD"]), ..Default::default() }, "1BAD"),
            (GrantSpec { env: strings(&["A-B"]), ..Default::default() }, "A-B"),
            (
                GrantSpec {
                    files: Some(vec![FileGrant {
                        path: "rel".into(),
                        source: "session".into(),
                        access: Access::ReadOnly,
                    }]),
                    ..Default::default()
                },
                "grants.files",
            ),
        ];
        for (spec, named) in bad {
            let e = spec.validate("grants").unwrap_err();
            assert!(e.contains(named), "{e}");
            assert!(Grant::from_manifest(&spec).is_err());
        }
    }

    #[test]
    fn a_stored_grant_reads_back_equal_with_its_patterns_parsed() {
        let g = Grant { files: vec![], ..grant(&["*.Example.com:8443"], &["A"], true) };
        let json = serde_json::to_string(&g).unwrap();
        assert!(json.contains("\"*.Example.com:8443\""), "{json}");
        assert_eq!(serde_json::from_str::<Grant>(&json).unwrap(), g);
    }
}
