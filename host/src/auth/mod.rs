//! Who a bearer token names.
//!
//! - [`tokens`]: the static tokens of `[[principals]]` (only their SHA-256
//!   digests kept) and the dev tokens of the embedded defaults.
//! - [`jwt`]: JWTs of `[[auth.issuers]]`, verified with keys from [`jwks`].
//!
//! A token is first looked up as a static token (one hash); only a token
//! that is not one, and looks like a JWT, goes to the issuers.

pub mod jwks;
pub mod jwt;
pub mod tokens;

pub use tokens::{DEV_AGENT, DEV_APPROVER, DEV_TOKENS_FILE, DevTokens, Principals};

use crate::config::{IssuerConfig, Role};
use crate::policy::Layer;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    pub roles: Vec<Role>,
    tools: Vec<String>,
    /// Narrowing for all of this principal's sessions, per tool.
    pub grants: BTreeMap<String, Layer>,
    /// Tools whose calls by this principal always wait for approval.
    pub approval_required: Vec<String>,
    /// When the credential stops naming this principal (a JWT's `exp`, Unix
    /// seconds); `None` for static tokens.
    pub expires: Option<u64>,
}

impl Principal {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    pub fn is_admin(&self) -> bool {
        self.has_role(Role::Admin)
    }

    /// The principal of `bulkhead run`: every tool, no token.
    pub fn local(name: &str) -> Principal {
        Principal {
            name: name.into(),
            roles: vec![Role::Agent],
            tools: vec!["*".into()],
            grants: BTreeMap::new(),
            approval_required: Vec::new(),
            expires: None,
        }
    }

    pub fn may_use_tool(&self, tool: &str) -> bool {
        self.tools.iter().any(|t| t == "*" || t == tool)
    }
}

/// The reason for a token that is neither a static token nor a JWT (the
/// contract's 401 message, unchanged since static tokens).
pub const UNKNOWN_TOKEN: &str = "missing or invalid bearer token";

/// Why a bearer token does not name a principal.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthError {
    /// 401: no token, or one that is not valid (the reason is safe to show).
    Invalid(String),
    /// 403: a valid token this host gives nothing to.
    Forbidden { code: &'static str, message: String },
    /// 503: the token's issuer's keys cannot be read now.
    Unavailable,
}

impl AuthError {
    pub fn invalid(reason: impl Into<String>) -> AuthError {
        AuthError::Invalid(reason.into())
    }

    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Invalid(_) => "unauthorized",
            AuthError::Forbidden { code, .. } => code,
            AuthError::Unavailable => "identity_provider_unavailable",
        }
    }
}

/// Static tokens and JWT issuers, checked in that order.
pub struct Authenticator {
    tokens: Principals,
    issuers: jwt::Issuers,
}

impl Authenticator {
    pub fn new(tokens: Principals, issuers: &[IssuerConfig]) -> Result<Authenticator, String> {
        let issuers = jwt::Issuers::from_config(issuers, tokens.names())?;
        Ok(Authenticator { tokens, issuers })
    }

    pub async fn authenticate(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        if let Some(p) = self.tokens.authenticate(token) {
            return Ok(p);
        }
        if self.issuers.is_empty() || token.split('.').count() != 3 {
            return Err(AuthError::invalid(UNKNOWN_TOKEN));
        }
        self.issuers.authenticate(token).await
    }

    /// No static token and no issuer: every request is refused.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty() && self.issuers.is_empty()
    }

    pub fn issuers(&self) -> &jwt::Issuers {
        &self.issuers
    }
}
