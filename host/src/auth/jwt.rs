//! Principals from the JWTs of `[[auth.issuers]]`.
//!
//! A token is routed to its issuer by its `iss` (read before verifying,
//! only to choose the keys), then verified with `jsonwebtoken`: the
//! signature by a key of that issuer's JWKS that fits the header's `alg`
//! (one of the issuer's allowed algorithms, never `none` or HS*), `exp`
//! and `iss` and `aud` required, `nbf` when present, with the issuer's
//! leeway. Its claims then name the principal (`name_prefix` + the
//! `name_claim`), its roles (the issuer's `roles` and the `roles_claim`),
//! and its policy (the first matching `policies` entry, else the issuer's
//! own `tools`).
//!
//! A verified token is remembered by its digest until it expires or its
//! issuer's keys are read again, so a busy agent costs one signature check
//! per token, not one per request.

use super::jwks::{KeyError, KeySet};
use super::{AuthError, Principal};
use crate::config::{IssuerConfig, IssuerPolicy, Role};
use crate::policy::{GrantSpec, Layer};
use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

/// Longer bearer tokens are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 << 10;
const MAX_NAME_BYTES: usize = 256;
const MAX_CACHED: usize = 4096;

#[derive(Clone, Default)]
struct Policy {
    tools: Vec<String>,
    grants: BTreeMap<String, Layer>,
    approval_required: Vec<String>,
}

impl Policy {
    fn parse(
        tools: &[String],
        grants: &BTreeMap<String, GrantSpec>,
        approval_required: &[String],
        context: &str,
    ) -> Result<Policy, String> {
        Ok(Policy {
            tools: tools.to_vec(),
            grants: grants
                .iter()
                .map(|(tool, spec)| Ok((tool.clone(), spec.parse(&format!("{context}: grants.{tool}"))?)))
                .collect::<Result<_, String>>()?,
            approval_required: approval_required.to_vec(),
        })
    }
}

enum Match {
    Role(Role),
    Claim { claim: String, value: String },
}

struct Issuer {
    issuer: String,
    audiences: Vec<String>,
    name_claim: String,
    roles_claim: String,
    name_prefix: String,
    roles: Vec<Role>,
    algorithms: Vec<Algorithm>,
    leeway: u64,
    keys: KeySet,
    default_policy: Option<Policy>,
    policies: Vec<(Match, Policy)>,
}

struct Verified {
    principal: Arc<Principal>,
    /// Usable until `exp + leeway`.
    until: u64,
    issuer: usize,
    generation: u64,
}

/// The configured issuers, and the tokens they recently vouched for.
#[derive(Default)]
pub struct Issuers {
    list: Vec<Issuer>,
    /// Names a token may not take (the static principals').
    taken: HashSet<String>,
    verified: Mutex<HashMap<[u8; 32], Verified>>,
}

impl Issuers {
    pub fn from_config(configs: &[IssuerConfig], taken: HashSet<String>) -> Result<Issuers, String> {
        let mut list = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            let context = format!("auth.issuers[{i}]");
            let keys = match (&c.jwks_url, &c.jwks_file) {
                (Some(url), _) => KeySet::from_url(url).map_err(|e| format!("{context}: {e}"))?,
                (None, Some(file)) => KeySet::from_file(file.clone()),
                (None, None) => return Err(format!("{context}: no jwks_url or jwks_file")),
            };
            let algorithms = c
                .algorithms()
                .iter()
                .map(|a| Algorithm::from_str(a).map_err(|_| format!("{context}: unknown algorithm {a:?}")))
                .collect::<Result<_, _>>()?;
            let default_policy = match &c.tools {
                Some(tools) => Some(Policy::parse(tools, &c.grants, &c.approval_required, &context)?),
                None => None,
            };
            let policies = c
                .policies
                .iter()
                .enumerate()
                .map(|(j, p)| policy_entry(p, &format!("{context}.policies[{j}]")))
                .collect::<Result<_, String>>()?;
            list.push(Issuer {
                issuer: c.issuer.clone(),
                audiences: c.audience.to_vec(),
                name_claim: c.name_claim.clone(),
                roles_claim: c.roles_claim.clone(),
                name_prefix: c.name_prefix(),
                roles: c.roles.clone(),
                algorithms,
                leeway: c.leeway_seconds,
                keys,
                default_policy,
                policies,
            });
        }
        Ok(Issuers { list, taken, verified: Mutex::default() })
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The `iss` values accepted, for the protected resource metadata.
    pub fn issuer_urls(&self) -> Vec<String> {
        self.list.iter().map(|i| i.issuer.clone()).collect()
    }

    /// Reads every issuer's keys once, so a bad JWKS shows at start.
    pub async fn prefetch(&self) {
        for issuer in &self.list {
            if issuer.keys.refresh().await.is_ok() {
                tracing::info!(issuer = %issuer.issuer, "issuer keys read from {}", issuer.keys.describe());
            }
        }
    }

    pub async fn authenticate(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::invalid("the token is too long"));
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(p) = self.remembered(&digest) {
            return Ok(p);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| match declared_alg(token) {
            // `none` and unknown names are no `Algorithm`: say which.
            Some(alg) => AuthError::invalid(format!("the algorithm {alg:?} is not accepted")),
            None => AuthError::invalid("not a JWT"),
        })?;
        #[derive(serde::Deserialize)]
        struct Routing {
            iss: Option<String>,
        }
        // Unverified: only to pick the issuer whose keys verify it below.
        let routing = jsonwebtoken::dangerous::insecure_decode::<Routing>(token)
            .map_err(|_| AuthError::invalid("not a JWT"))?
            .claims;
        let (index, issuer) = self
            .list
            .iter()
            .enumerate()
            .find(|(_, i)| routing.iss.as_deref() == Some(i.issuer.as_str()))
            .ok_or_else(|| AuthError::invalid("the token's issuer is not accepted here"))?;
        if !issuer.algorithms.contains(&header.alg) {
            return Err(AuthError::invalid(format!("the algorithm {:?} is not accepted", header.alg)));
        }
        let (key, generation) = issuer.keys.find(header.kid.as_deref(), header.alg).await.map_err(|e| match e {
            KeyError::Unknown => AuthError::invalid("the token's signing key is not one of its issuer's keys"),
            KeyError::Unavailable(detail) => {
                tracing::warn!(issuer = %issuer.issuer, "a token was refused: its issuer's keys are unavailable: {detail}");
                AuthError::Unavailable
            }
        })?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&issuer.issuer]);
        validation.set_audience(&issuer.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = issuer.leeway;
        let claims = jsonwebtoken::decode::<Value>(token, &key.decoding, &validation).map_err(reason)?.claims;
        let principal = Arc::new(issuer.principal(&claims, &self.taken)?);
        let until = claims.get("exp").and_then(Value::as_u64).unwrap_or(0).saturating_add(issuer.leeway);
        let mut verified = self.verified.lock().expect("verified tokens poisoned");
        if verified.len() >= MAX_CACHED {
            verified.retain(|_, v| v.until >= jsonwebtoken::get_current_timestamp());
            if verified.len() >= MAX_CACHED {
                verified.clear();
            }
        }
        verified.insert(digest, Verified { principal: principal.clone(), until, issuer: index, generation });
        Ok(principal)
    }

    fn remembered(&self, digest: &[u8; 32]) -> Option<Arc<Principal>> {
        let mut verified = self.verified.lock().expect("verified tokens poisoned");
        let v = verified.get(digest)?;
        let current = self.list[v.issuer].keys.fresh_generation() == Some(v.generation);
        if current && v.until >= jsonwebtoken::get_current_timestamp() {
            return Some(v.principal.clone());
        }
        verified.remove(digest);
        None
    }
}

/// The `alg` a token's header declares, read without trusting it.
fn declared_alg(token: &str) -> Option<String> {
    use base64::Engine;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    let alg = value.get("alg")?.as_str()?;
    Some(alg.chars().take(32).collect())
}

fn policy_entry(p: &IssuerPolicy, context: &str) -> Result<(Match, Policy), String> {
    let matcher = match (&p.role, &p.claim, &p.value) {
        (Some(role), _, _) => Match::Role(*role),
        (None, Some(claim), Some(value)) => Match::Claim { claim: claim.clone(), value: value.clone() },
        _ => return Err(format!("{context}: give either `role`, or `claim` and `value`")),
    };
    Ok((matcher, Policy::parse(&p.tools, &p.grants, &p.approval_required, context)?))
}

fn reason(e: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind::*;
    AuthError::invalid(match e.kind() {
        ExpiredSignature => "the token has expired".to_string(),
        ImmatureSignature => "the token is not valid yet (nbf)".to_string(),
        InvalidAudience => "the token is for another audience".to_string(),
        InvalidIssuer => "the token's issuer is not accepted here".to_string(),
        InvalidSignature => "the token's signature does not verify".to_string(),
        MissingRequiredClaim(c) => format!("the token has no {c} claim"),
        InvalidClaimFormat(c) => format!("the token's {c} claim is malformed"),
        InvalidAlgorithm | MissingAlgorithm => "the token's algorithm does not fit its key".to_string(),
        _ => "the token is malformed".to_string(),
    })
}

/// A claim by name, or by a dotted path into nested objects
/// (`realm_access.roles`) when no claim has the whole name.
fn claim<'a>(claims: &'a Value, name: &str) -> Option<&'a Value> {
    claims.get(name).or_else(|| name.split('.').try_fold(claims, |v, part| v.get(part)))
}

/// The claim's words: a string (split on spaces, as `scope` is) or an
/// array of strings.
fn words(value: Option<&Value>) -> Vec<&str> {
    match value {
        Some(Value::String(s)) => s.split_whitespace().collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

impl Issuer {
    fn principal(&self, claims: &Value, taken: &HashSet<String>) -> Result<Principal, AuthError> {
        let subject = match claim(claims, &self.name_claim) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(AuthError::invalid(format!("the token has no {} claim", self.name_claim))),
        };
        if subject.is_empty() || subject.len() > MAX_NAME_BYTES || subject.chars().any(char::is_control) {
            return Err(AuthError::invalid(format!("the token's {} claim is not a usable name", self.name_claim)));
        }
        let name = format!("{}{subject}", self.name_prefix);
        if taken.contains(&name) {
            return Err(AuthError::Forbidden {
                code: "principal_conflict",
                message: format!("the name {name:?} belongs to a configured principal; the token cannot take it"),
            });
        }
        let mut roles: BTreeSet<Role> = self.roles.iter().copied().collect();
        roles.extend(words(claim(claims, &self.roles_claim)).into_iter().filter_map(Role::parse));
        if roles.is_empty() {
            return Err(AuthError::Forbidden {
                code: "no_policy",
                message: format!("the token's {} claim names none of agent, approver, admin", self.roles_claim),
            });
        }
        let chosen = self
            .policies
            .iter()
            .find(|(m, _)| match m {
                Match::Role(r) => roles.contains(r),
                Match::Claim { claim: c, value } => words(claim(claims, c)).contains(&value.as_str()),
            })
            .map(|(_, p)| p)
            .or(self.default_policy.as_ref());
        let policy = match chosen {
            Some(p) => p.clone(),
            // Approvers and admins need no tool policy; agents do.
            None if !roles.contains(&Role::Agent) => Policy::default(),
            None => {
                return Err(AuthError::Forbidden {
                    code: "no_policy",
                    message: format!(
                        "no policy of issuer {:?} matches this token (it needs `tools` or a matching [[auth.issuers.policies]])",
                        self.issuer
                    ),
                });
            }
        };
        Ok(Principal {
            name,
            roles: roles.into_iter().collect(),
            tools: policy.tools,
            grants: policy.grants,
            approval_required: policy.approval_required,
            expires: claims.get("exp").and_then(Value::as_u64),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issuer(extra: &str) -> Issuer {
        let text = format!("issuer = \"https://idp\"\naudience = \"bulkhead\"\njwks_file = \"/nonexistent\"\n{extra}");
        let config: IssuerConfig = toml::from_str(&text).unwrap();
        Issuers::from_config(&[config], HashSet::new()).unwrap().list.remove(0)
    }

    #[test]
    fn claims_map_to_a_principal_and_its_policy() {
        let i = issuer(
            "tools = [\"counter\"]\n[[policies]]\nclaim = \"groups\"\nvalue = \"payments\"\ntools = [\"http-fetch\"]\napproval_required = [\"http-fetch\"]\n[[policies]]\nrole = \"admin\"\ntools = [\"*\"]\n",
        );
        let taken = HashSet::from(["https://idp#alice".to_string()]);
        type Expected<'a> = Result<(&'a str, Vec<Role>, Vec<&'a str>), &'a str>;
        let cases: Vec<(Value, Expected)> = vec![
            (json!({"sub": "bob", "roles": ["agent"]}), Ok(("https://idp#bob", vec![Role::Agent], vec!["counter"]))),
            (
                json!({"sub": "bob", "roles": "agent approver", "groups": ["x", "payments"]}),
                Ok(("https://idp#bob", vec![Role::Agent, Role::Approver], vec!["http-fetch"])),
            ),
            (
                json!({"sub": "root", "roles": ["agent", "admin", "wizard"]}),
                Ok(("https://idp#root", vec![Role::Agent, Role::Admin], vec!["*"])),
            ),
            (json!({"sub": 42, "roles": ["agent"]}), Ok(("https://idp#42", vec![Role::Agent], vec!["counter"]))),
            (json!({"sub": "bob", "roles": ["wizard"]}), Err("no_policy")),
            (json!({"sub": "bob"}), Err("no_policy")),
            (json!({"roles": ["agent"]}), Err("unauthorized")),
            (json!({"sub": "", "roles": ["agent"]}), Err("unauthorized")),
            (json!({"sub": "a\nb", "roles": ["agent"]}), Err("unauthorized")),
            (json!({"sub": "alice", "roles": ["agent"]}), Err("principal_conflict")),
        ];
        for (claims, expected) in cases {
            let got = i.principal(&claims, &taken);
            match (got, expected) {
                (Ok(p), Ok((name, roles, tools))) => {
                    assert_eq!(p.name, name, "{claims}");
                    assert_eq!(p.roles, roles, "{claims}");
                    assert_eq!(p.tools, tools, "{claims}");
                }
                (Err(e), Err(code)) => assert_eq!(e.code(), code, "{claims}"),
                (got, expected) => panic!("{claims}: got {:?}, expected {expected:?}", got.map(|p| p.name)),
            }
        }
        let p = i.principal(&json!({"sub": "bob", "roles": ["agent"], "groups": "payments"}), &taken).unwrap();
        assert_eq!(p.approval_required, vec!["http-fetch"]);
    }

    #[test]
    fn an_issuer_without_a_policy_refuses_agents_but_not_approvers() {
        let i = issuer("");
        let e = i.principal(&json!({"sub": "a", "roles": ["agent"]}), &HashSet::new()).unwrap_err();
        assert_eq!(e.code(), "no_policy");
        let p = i.principal(&json!({"sub": "a", "roles": ["approver"]}), &HashSet::new()).unwrap();
        assert!(p.tools.is_empty());
    }

    #[test]
    fn claims_are_found_by_name_or_by_path() {
        let i =
            issuer("tools = []\nname_claim = \"email\"\nroles_claim = \"realm_access.roles\"\nname_prefix = \"\"\n");
        let p =
            i.principal(&json!({"email": "a@corp", "realm_access": {"roles": ["approver"]}}), &HashSet::new()).unwrap();
        assert_eq!(p.name, "a@corp");
        assert_eq!(p.roles, vec![Role::Approver]);
        // A claim whose own name has dots (Auth0's namespaced claims).
        let i = issuer("tools = []\nroles_claim = \"https://corp/roles\"\n");
        let p = i.principal(&json!({"sub": "a", "https://corp/roles": ["agent"]}), &HashSet::new()).unwrap();
        assert_eq!(p.roles, vec![Role::Agent]);
    }
}
