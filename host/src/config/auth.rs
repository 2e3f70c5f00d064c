//! Who may call: `[[principals]]` with static bearer tokens, and
//! `[auth]` with `[[auth.issuers]]` whose signed JWTs name principals.
//!
//! Issuer defaults: `name_claim = "sub"`, `roles_claim = "roles"`, names
//! prefixed with `"<issuer>#"` (so no issuer's subject can take a static
//! principal's or another issuer's name), asymmetric algorithms only, 30 s of
//! clock leeway, no policy (a token of the agent role is refused with 403
//! `no_policy` until `tools` or a matching `[[auth.issuers.policies]]` gives
//! it one).

use crate::policy::GrantSpec;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Agent,
    Approver,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "agent" => Some(Role::Agent),
            "approver" => Some(Role::Approver),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    pub name: String,
    pub token_env: Option<String>,
    pub token_sha256: Option<String>,
    #[serde(default)]
    pub roles: Vec<Role>,
    /// Tools this principal's sessions may use; `"*"` is every tool.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Narrowing applied to every session of this principal, per tool.
    #[serde(default)]
    pub grants: BTreeMap<String, GrantSpec>,
    /// Tools whose every call by this principal waits for a human decision.
    #[serde(default)]
    pub approval_required: Vec<String>,
}

/// `[auth]`: JWT issuers, and how MCP clients are told to find them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub issuers: Vec<IssuerConfig>,
    /// The MCP endpoint's public URL, the `resource` of its OAuth protected
    /// resource metadata (RFC 9728). Unset: built from each request's `Host`.
    pub resource: Option<String>,
}

/// One or several strings (`audience = "a"` or `audience = ["a", "b"]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// One `[[auth.issuers]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Compared exactly with a token's `iss`.
    pub issuer: String,
    /// A token's `aud` must name one of these.
    pub audience: OneOrMany,
    pub jwks_url: Option<String>,
    /// Relative to the config file.
    pub jwks_file: Option<PathBuf>,
    #[serde(default = "default_name_claim")]
    pub name_claim: String,
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Put before every name from this issuer; default `"<issuer>#"`.
    pub name_prefix: Option<String>,
    /// Roles every token of this issuer has, beside those its claim names.
    #[serde(default)]
    pub roles: Vec<Role>,
    /// Accepted `alg` values; default every asymmetric one (RS*, PS*, ES256,
    /// ES384, EdDSA). `none` and HS* are refused here.
    pub algorithms: Option<Vec<String>>,
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// The policy of this issuer's principals no `policies` entry matches,
    /// as in `[[principals]]`. Absent: such principals have no policy.
    pub tools: Option<Vec<String>>,
    #[serde(default)]
    pub grants: BTreeMap<String, GrantSpec>,
    #[serde(default)]
    pub approval_required: Vec<String>,
    /// Policies chosen by a role or a claim value; the first that matches.
    #[serde(default)]
    pub policies: Vec<IssuerPolicy>,
}

/// One `[[auth.issuers.policies]]` entry: `role = "admin"`, or `claim` and
/// `value` (the claim equals the value, or is an array holding it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerPolicy {
    pub role: Option<Role>,
    pub claim: Option<String>,
    pub value: Option<String>,
    #[serde(default)]
    pub tools: Vec<String>,
    #[serde(default)]
    pub grants: BTreeMap<String, GrantSpec>,
    #[serde(default)]
    pub approval_required: Vec<String>,
}

fn default_name_claim() -> String {
    "sub".into()
}

fn default_roles_claim() -> String {
    "roles".into()
}

fn default_leeway() -> u64 {
    30
}

/// Algorithms accepted when an issuer names none: the asymmetric ones.
pub const DEFAULT_ALGORITHMS: &[&str] =
    &["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"];
const MAX_LEEWAY_SECONDS: u64 = 300;
const MAX_TEXT: usize = 512;

impl IssuerConfig {
    pub fn name_prefix(&self) -> String {
        self.name_prefix.clone().unwrap_or_else(|| format!("{}#", self.issuer))
    }

    pub fn algorithms(&self) -> Vec<String> {
        match &self.algorithms {
            Some(list) => list.clone(),
            None => DEFAULT_ALGORITHMS.iter().map(|a| a.to_string()).collect(),
        }
    }

    fn validate(&self) -> Result<(), String> {
        let text = |what: &str, value: &str| {
            if value.is_empty() || value.len() > MAX_TEXT || value.chars().any(char::is_control) {
                Err(format!("{what} must be 1 to {MAX_TEXT} printable characters"))
            } else {
                Ok(())
            }
        };
        text("issuer", &self.issuer)?;
        let audiences = self.audience.to_vec();
        if audiences.is_empty() {
            return Err("audience must name at least one audience".into());
        }
        for a in &audiences {
            text("audience", a)?;
        }
        text("name_claim", &self.name_claim)?;
        text("roles_claim", &self.roles_claim)?;
        if let Some(prefix) = &self.name_prefix
            && (prefix.len() > MAX_TEXT || prefix.chars().any(char::is_control))
        {
            return Err(format!("name_prefix must be at most {MAX_TEXT} printable characters"));
        }
        match (&self.jwks_url, &self.jwks_file) {
            (Some(url), None) => check_jwks_url(url)?,
            (None, Some(_)) => {}
            _ => return Err("give exactly one of `jwks_url` or `jwks_file`".into()),
        }
        let algorithms = self.algorithms();
        if algorithms.is_empty() {
            return Err("algorithms must name at least one algorithm".into());
        }
        for a in &algorithms {
            if !DEFAULT_ALGORITHMS.contains(&a.as_str()) {
                return Err(format!(
                    "algorithms: {a:?} is not accepted; issuer tokens are checked with public keys, so only {} are",
                    DEFAULT_ALGORITHMS.join(", ")
                ));
            }
        }
        if self.leeway_seconds > MAX_LEEWAY_SECONDS {
            return Err(format!("leeway_seconds must be at most {MAX_LEEWAY_SECONDS}"));
        }
        for (tool, spec) in &self.grants {
            spec.validate(&format!("grants.{tool}"))?;
        }
        for (i, p) in self.policies.iter().enumerate() {
            p.validate().map_err(|e| format!("policies[{i}]: {e}"))?;
        }
        Ok(())
    }
}

impl IssuerPolicy {
    fn validate(&self) -> Result<(), String> {
        match (&self.role, &self.claim, &self.value) {
            (Some(_), None, None) => {}
            (None, Some(claim), Some(value)) if !claim.is_empty() && !value.is_empty() => {}
            _ => return Err("give either `role`, or `claim` and `value`".into()),
        }
        for (tool, spec) in &self.grants {
            spec.validate(&format!("grants.{tool}"))?;
        }
        Ok(())
    }
}

/// A JWKS is fetched over HTTPS, or plain HTTP only from this machine.
fn check_jwks_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|_| format!("jwks_url = {url:?} is not a URL"))?;
    let Some(host) = parsed.host_str() else {
        return Err(format!("jwks_url = {url:?} names no host"));
    };
    let loopback = crate::util::is_loopback_host(host);
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!("jwks_url = {url:?} must be https:// (plain http only on a loopback address)")),
    }
}

impl AuthConfig {
    pub fn validate(&self) -> Result<(), String> {
        let mut issuers = BTreeSet::new();
        let mut prefixes = BTreeSet::new();
        for (i, issuer) in self.issuers.iter().enumerate() {
            issuer.validate().map_err(|e| format!("auth.issuers[{i}]: {e}"))?;
            if !issuers.insert(&issuer.issuer) {
                return Err(format!("auth.issuers[{i}]: issuer {:?} appears twice", issuer.issuer));
            }
            if !prefixes.insert(issuer.name_prefix()) {
                return Err(format!(
                    "auth.issuers[{i}]: name_prefix {:?} is another issuer's too; its names could be taken",
                    issuer.name_prefix()
                ));
            }
        }
        if let Some(resource) = &self.resource {
            match reqwest::Url::parse(resource) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() && u.fragment().is_none() => {}
                _ => return Err(format!("auth.resource = {resource:?} must be an http(s) URL without a fragment")),
            }
        }
        Ok(())
    }
}

pub(super) fn validate_principal(p: &PrincipalConfig) -> Result<(), String> {
    if !crate::util::is_valid_name(&p.name) {
        return Err(format!("name {:?} must match [a-z0-9-]{{1,64}}", p.name));
    }
    match (&p.token_env, &p.token_sha256) {
        (Some(_), None) => {}
        (None, Some(hex)) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {}
        (None, Some(_)) => return Err("token_sha256 must be 64 hex digits".into()),
        _ => return Err("give exactly one of `token_env` or `token_sha256`".into()),
    }
    if p.roles.is_empty() {
        return Err("roles must name at least one of agent, approver, admin".into());
    }
    for (tool, spec) in &p.grants {
        spec.validate(&format!("grants.{tool}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AuthConfig, String> {
        let c: AuthConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    const GOOD: &str = "[[issuers]]\nissuer = \"https://idp.example.com\"\naudience = \"bulkhead\"\njwks_url = \"https://idp.example.com/jwks.json\"\n";

    #[test]
    fn an_issuer_has_safe_defaults() {
        let c = parse(GOOD).unwrap();
        let i = &c.issuers[0];
        assert_eq!(i.name_claim, "sub");
        assert_eq!(i.roles_claim, "roles");
        assert_eq!(i.name_prefix(), "https://idp.example.com#");
        assert!(i.tools.is_none());
        assert!(i.algorithms().iter().all(|a| !a.starts_with("HS")));
    }

    #[test]
    fn bad_issuers_are_refused_with_the_reason() {
        let cases = [
            (GOOD.replace("jwks_url = \"https://idp.example.com/jwks.json\"\n", ""), "exactly one of"),
            (format!("{GOOD}jwks_file = \"k.json\"\n"), "exactly one of"),
            (GOOD.replace("https://idp.example.com/jwks", "http://idp.example.com/jwks"), "plain http only"),
            (GOOD.replace("https://idp.example.com/jwks.json", "not a url"), "not a URL"),
            (format!("{GOOD}algorithms = [\"HS256\"]\n"), "\"HS256\" is not accepted"),
            (format!("{GOOD}algorithms = [\"none\"]\n"), "\"none\" is not accepted"),
            (format!("{GOOD}algorithms = []\n"), "at least one algorithm"),
            (format!("{GOOD}leeway_seconds = 3600\n"), "leeway_seconds"),
            (GOOD.replace("audience = \"bulkhead\"", "audience = []"), "at least one audience"),
            (GOOD.replace("issuer = \"https://idp.example.com\"", "issuer = \"\""), "issuer must be"),
            (format!("{GOOD}[[issuers.policies]]\ntools = [\"*\"]\n"), "policies[0]"),
            (format!("{GOOD}[[issuers.policies]]\nrole = \"agent\"\nclaim = \"g\"\nvalue = \"x\"\n"), "policies[0]"),
            (format!("{GOOD}{GOOD}"), "appears twice"),
            (
                format!("{GOOD}name_prefix = \"\"\n{}name_prefix = \"\"\n", GOOD.replace("idp.", "other.")),
                "another issuer's",
            ),
            (format!("{GOOD}surprise = 1\n"), "surprise"),
            ("resource = \"not a url\"\n".to_string(), "auth.resource"),
        ];
        for (text, expected) in cases {
            let err = parse(&text).expect_err(&text);
            assert!(err.contains(expected), "{text}\n→ {err}");
        }
    }

    #[test]
    fn a_loopback_jwks_may_be_plain_http() {
        for url in ["http://127.0.0.1:9000/jwks", "http://localhost/jwks", "http://[::1]:1/k"] {
            assert!(check_jwks_url(url).is_ok(), "{url}");
        }
        for url in ["http://10.0.0.1/jwks", "ftp://localhost/jwks", "file:///etc/jwks"] {
            assert!(check_jwks_url(url).is_err(), "{url}");
        }
    }
}
