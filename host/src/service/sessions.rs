//! Sessions and their messages.

use super::{Result, Service, ServiceError};
use crate::auth::Principal;
use crate::events::{Deletion, SessionCreated, SessionDeleted, SessionNarrowed};
use crate::model::{Message, Session, SessionUsage, ToolBoundary};
use crate::policy::GrantSpec;
use crate::policy::names::is_var_name;

use crate::util;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Bounds on what a session carries, so one client cannot bloat every read.
pub const MAX_ENV_ENTRIES: usize = 64;
pub const MAX_ENV_VALUE_BYTES: usize = 4096;
pub const MAX_LABELS: usize = 32;
pub const MAX_LABEL_BYTES: usize = 256;
pub const MAX_TTL_SECONDS: u64 = 365 * 24 * 3600;
pub const MAX_PAGE: u32 = 1000;
pub const DEFAULT_PAGE: u32 = 100;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    pub tools: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub grants: BTreeMap<String, GrantSpec>,
    #[serde(default)]
    pub approval_required: Vec<String>,
    pub ttl_seconds: Option<u64>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    pub role: String,
    pub content: String,
    pub metadata: Option<Value>,
}

/// Sessions read from the store per filtered request, at most.
pub const MAX_FILTER_SCAN: usize = 5000;
const FILTER_BATCH: u32 = 250;

/// Which sessions to list (all fields optional; all given must match).
#[derive(Debug, Default, Deserialize)]
pub struct SessionFilter {
    /// Only this principal's sessions (others than one's own: admins only).
    pub principal: Option<String>,
    /// `key` (has the label) or `key=value`.
    pub label: Option<String>,
    /// `active` or `expired`.
    pub status: Option<String>,
    /// Created on or after this day (`YYYY-MM-DD`, UTC).
    pub from: Option<String>,
    /// Created on or before this day (`YYYY-MM-DD`, UTC).
    pub to: Option<String>,
}

/// A page of sessions and the cursor (`after`) of the next, if any.
#[derive(Debug, Default)]
pub struct SessionsPage {
    pub sessions: Vec<Session>,
    pub next: Option<String>,
}

/// A [`SessionFilter`], checked once.
struct SessionCheck<'a> {
    label: Option<(&'a str, Option<&'a str>)>,
    expired: Option<bool>,
    from: Option<&'a str>,
    to: Option<&'a str>,
}

/// A filter field as given: an empty one (a form left blank) filters nothing.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

impl SessionFilter {
    fn parse(&self) -> Result<SessionCheck<'_>> {
        fn date<'a>(what: &str, v: &'a Option<String>) -> Result<Option<&'a str>> {
            match given(v) {
                Some(d) if !is_date(d) => Err(ServiceError::bad_request(format!("{what} must be a date, YYYY-MM-DD"))),
                d => Ok(d),
            }
        }
        let (from, to) = (date("from", &self.from)?, date("to", &self.to)?);
        let expired = match given(&self.status) {
            None => None,
            Some("active") => Some(false),
            Some("expired") => Some(true),
            Some(_) => return Err(ServiceError::bad_request("status must be active or expired")),
        };
        let label = given(&self.label).map(|l| match l.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (l, None),
        });
        Ok(SessionCheck { label, expired, from, to })
    }
}

fn is_date(d: &str) -> bool {
    let b = d.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

impl SessionCheck<'_> {
    fn is_empty(&self) -> bool {
        self.label.is_none() && self.expired.is_none() && self.from.is_none() && self.to.is_none()
    }

    fn matches(&self, s: &Session) -> bool {
        let day = s.created_at.get(..10).unwrap_or("");
        let label_ok = match self.label {
            None => true,
            Some((k, None)) => s.labels.contains_key(k),
            Some((k, Some(v))) => s.labels.get(k).is_some_and(|have| have == v),
        };
        let expired = s.expires_at.as_deref().is_some_and(util::is_past);
        label_ok
            && self.expired.is_none_or(|want| want == expired)
            && self.from.is_none_or(|f| day >= f)
            && self.to.is_none_or(|t| day <= t)
    }
}

pub fn page(limit: Option<u32>) -> u32 {
    limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
}

fn validate_map(
    what: &str,
    map: &BTreeMap<String, String>,
    max_entries: usize,
    max_value: usize,
    key_ok: fn(&str) -> bool,
) -> Result<()> {
    if map.len() > max_entries {
        return Err(ServiceError::bad_request(format!("{what}: at most {max_entries} entries")));
    }
    for (k, v) in map {
        if !key_ok(k) {
            return Err(ServiceError::bad_request(format!("{what}: {:?} is not a valid name", truncate(k))));
        }
        if v.len() > max_value {
            return Err(ServiceError::bad_request(format!("{what}.{k}: value over {max_value} bytes")));
        }
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

fn label_key_ok(k: &str) -> bool {
    (1..=64).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
}

/// Sessions, messages and calls are for principals with role `agent` (or
/// `admin`); an approver only decides.
pub(crate) fn require_agent(p: &Principal) -> Result<()> {
    if p.has_role(crate::config::Role::Agent) || p.is_admin() {
        Ok(())
    } else {
        Err(ServiceError::forbidden("role_required", "only principals with role agent use sessions and tools"))
    }
}

/// Sessions the call path keeps in memory; past this it starts over.
const MAX_CACHED_SESSIONS: usize = 1024;

/// 404 unless `p` owns the session or is an admin (ids cannot be probed);
/// 410 once it has expired.
fn check_owned(p: &Principal, session: Option<&Session>) -> Result<()> {
    match session {
        Some(s) if s.principal == p.name || p.is_admin() => {
            if s.expires_at.as_deref().is_some_and(util::is_past) {
                return Err(ServiceError::Gone { code: "session_expired", message: "the session has expired".into() });
            }
            Ok(())
        }
        _ => Err(ServiceError::not_found("session")),
    }
}

fn role_ok(role: &str) -> bool {
    (1..=32).contains(&role.len()) && role.bytes().all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'-')
}

impl Service {
    /// The session if `p` may see it: its owner or an admin. Others get 404,
    /// so session ids cannot be probed.
    pub async fn owned_session(&self, p: &Principal, sid: &str) -> Result<Session> {
        if !util::is_id(sid) {
            return Err(ServiceError::not_found("session"));
        }
        // A primary-key lookup against the page cache: cheaper on this
        // thread than a hop to the blocking pool.
        let session = self.store.session(sid).await?;
        check_owned(p, session.as_ref())?;
        Ok(session.expect("checked"))
    }

    /// `owned_session` for the call path: the session from memory when no
    /// boundary changed since it was read (its `usage` and `version` may be
    /// behind: calls use only its id, owner, boundary, env and expiry), and
    /// the boundary epoch read before it (for `execute`).
    pub(super) async fn session_for_call(&self, p: &Principal, sid: &str) -> Result<(Arc<Session>, u64)> {
        if !util::is_id(sid) {
            return Err(ServiceError::not_found("session"));
        }
        let epoch = self.boundary_epoch();
        let cached = match self.caches() {
            true => self.call_sessions.lock().expect("session cache poisoned").get(sid).cloned(),
            false => None,
        };
        let session = match cached {
            Some((seen, s)) if seen == epoch => Some(s),
            _ => {
                let read = self.store.session(sid).await?.map(Arc::new);
                if let Some(s) = read.as_ref().filter(|_| self.caches()) {
                    let mut cache = self.call_sessions.lock().expect("session cache poisoned");
                    if cache.len() >= MAX_CACHED_SESSIONS {
                        cache.clear();
                    }
                    cache.insert(sid.to_string(), (epoch, s.clone()));
                }
                read
            }
        };
        check_owned(p, session.as_deref())?;
        Ok((session.expect("checked"), epoch))
    }

    pub async fn create_session(&self, p: &Principal, req: CreateSession) -> Result<Session> {
        require_agent(p)?;
        // One snapshot: a reload during the request does not mix two sets.
        let set = self.tools();
        let names: Vec<String> = match req.tools {
            Some(list) => {
                for name in &list {
                    if !set.tools.contains_key(name) {
                        return Err(ServiceError::NotFound {
                            code: "unknown_tool",
                            message: format!("no tool named {:?}", truncate(name)),
                        });
                    }
                    if !p.may_use_tool(name) {
                        return Err(ServiceError::forbidden(
                            "tool_not_allowed",
                            format!("principal {} may not use tool {name}", p.name),
                        ));
                    }
                }
                list
            }
            None => set.tools.keys().filter(|t| p.may_use_tool(t)).cloned().collect(),
        };
        for name in req.grants.keys().chain(&req.approval_required) {
            if !names.contains(name) {
                return Err(ServiceError::bad_request(format!(
                    "{:?} is not one of this session's tools",
                    truncate(name)
                )));
            }
        }
        validate_map("env", &req.env, MAX_ENV_ENTRIES, MAX_ENV_VALUE_BYTES, is_var_name)?;
        validate_map("labels", &req.labels, MAX_LABELS, MAX_LABEL_BYTES, label_key_ok)?;
        let ttl = req.ttl_seconds.or(self.config.sessions.default_ttl_seconds).map(|t| {
            if (1..=MAX_TTL_SECONDS).contains(&t) {
                Ok(t)
            } else {
                Err(ServiceError::bad_request(format!("ttl_seconds must be 1..={MAX_TTL_SECONDS}")))
            }
        });
        let expires_at = ttl.transpose()?.map(util::rfc3339_in);

        let mut tools = BTreeMap::new();
        for name in &names {
            let tool = &set.tools[name];
            let mut grant = tool.manifest.grant.clone();
            if let Some(policy) = p.grants.get(name) {
                grant = grant.intersect(policy);
            }
            if let Some(spec) = req.grants.get(name) {
                let want = spec.parse(&format!("grants.{name}")).map_err(ServiceError::bad_request)?;
                grant = grant
                    .narrow(&want)
                    .map_err(|e| ServiceError::forbidden("grant_widening", format!("grants.{name}: {e}")))?;
            }
            let approval_required = tool.manifest.approval.required
                || p.approval_required.iter().any(|t| t == name || t == "*")
                || req.approval_required.contains(name);
            tools.insert(name.clone(), ToolBoundary { grants: grant, approval_required });
        }
        let session = Session {
            id: util::new_id(),
            principal: p.name.clone(),
            created_at: util::now_rfc3339(),
            expires_at,
            version: 0,
            tools,
            env: req.env,
            labels: req.labels,
            usage: SessionUsage::default(),
        };
        self.store.create_session(session.clone(), SessionCreated::of(&session).into()).await?;
        Ok(self.priced(session))
    }

    pub async fn list_sessions(
        &self,
        p: &Principal,
        after: Option<String>,
        limit: Option<u32>,
    ) -> Result<Vec<Session>> {
        Ok(self.find_sessions(p, &SessionFilter::default(), after, limit).await?.sessions)
    }

    /// The sessions `p` may see (its own; all for admins) that match `f`,
    /// in id (creation) order after `after`. Filters are checked on pages
    /// read from the store, at most [`MAX_FILTER_SCAN`] sessions a request;
    /// `next` says where to go on when the page filled up or the scan ended.
    pub async fn find_sessions(
        &self,
        p: &Principal,
        f: &SessionFilter,
        after: Option<String>,
        limit: Option<u32>,
    ) -> Result<SessionsPage> {
        let check = f.parse()?;
        let owner = match (p.is_admin(), given(&f.principal)) {
            (true, wanted) => wanted.map(str::to_string),
            (false, Some(wanted)) if wanted != p.name => return Ok(SessionsPage::default()),
            (false, _) => Some(p.name.clone()),
        };
        let limit = page(limit) as usize;
        let mut cursor = after.unwrap_or_default();
        let (mut out, mut scanned) = (Vec::new(), 0);
        loop {
            let batch = if check.is_empty() { limit as u32 } else { FILTER_BATCH };
            let rows = self.store.sessions(owner.clone(), cursor.clone(), batch).await?;
            let full = rows.len() == batch as usize;
            for s in rows {
                scanned += 1;
                cursor = s.id.clone();
                if check.matches(&s) {
                    out.push(self.priced(s));
                    if out.len() == limit {
                        return Ok(SessionsPage { sessions: out, next: Some(cursor) });
                    }
                }
            }
            if !full {
                return Ok(SessionsPage { sessions: out, next: None });
            }
            if scanned >= MAX_FILTER_SCAN {
                return Ok(SessionsPage { sessions: out, next: Some(cursor) });
            }
        }
    }

    pub async fn delete_session(&self, p: &Principal, sid: &str) -> Result<()> {
        let session = self.owned_session(p, sid).await?;
        let deleted =
            self.store.delete_session(&session.id, &p.name, SessionDeleted::of(Deletion::Requested).into()).await;
        self.boundary_changed();
        deleted?;
        self.state_cache.forget_session(sid);
        self.remove_workspace(sid);
        Ok(())
    }

    pub async fn append_message(&self, p: &Principal, sid: &str, m: NewMessage) -> Result<Message> {
        require_agent(p)?;
        if !role_ok(&m.role) {
            return Err(ServiceError::bad_request("role must be 1 to 32 characters of a-z, _ or -"));
        }
        let session = self.owned_session(p, sid).await?;
        Ok(self.store.append_message(&session.id, &p.name, m.role, m.content, m.metadata).await?)
    }

    pub async fn list_messages(
        &self,
        p: &Principal,
        sid: &str,
        after: Option<i64>,
        limit: Option<u32>,
    ) -> Result<Vec<Message>> {
        let session = self.owned_session(p, sid).await?;
        let (after, limit) = (after.unwrap_or(0), page(limit));
        Ok(self.store.messages(&session.id, after, limit).await?)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Narrowing {
    /// Keep only these tools (each must already be in the boundary).
    pub tools: Option<Vec<String>>,
    #[serde(default)]
    pub grants: BTreeMap<String, GrantSpec>,
    /// Tools whose calls from now on wait for approval.
    #[serde(default)]
    pub approval_required: Vec<String>,
}

impl Service {
    /// Narrows the session's boundary; anything that would widen it is refused
    /// (403) and nothing changes.
    pub async fn narrow_session(
        &self,
        p: &Principal,
        sid: &str,
        n: Narrowing,
        if_match: Option<i64>,
    ) -> Result<Session> {
        require_agent(p)?;
        let mut session = self.owned_session(p, sid).await?;
        // The new boundary is computed from this read: commit it only if the
        // session has not changed since, so two PATCHes cannot undo each other.
        let if_match = Some(if_match.unwrap_or(session.version));
        let mut tools = session.tools.clone();
        if let Some(keep) = &n.tools {
            if let Some(extra) = keep.iter().find(|t| !tools.contains_key(*t)) {
                return Err(ServiceError::forbidden(
                    "grant_widening",
                    format!("tool {:?} is not in this session's boundary", truncate(extra)),
                ));
            }
            tools.retain(|name, _| keep.contains(name));
        }
        for (name, spec) in &n.grants {
            let boundary = tools.get_mut(name).ok_or_else(|| {
                ServiceError::forbidden(
                    "grant_widening",
                    format!("tool {:?} is not in this session's boundary", truncate(name)),
                )
            })?;
            let want = spec.parse(&format!("grants.{name}")).map_err(ServiceError::bad_request)?;
            boundary.grants = boundary
                .grants
                .narrow(&want)
                .map_err(|e| ServiceError::forbidden("grant_widening", format!("grants.{name}: {e}")))?;
        }
        for name in &n.approval_required {
            let boundary = tools.get_mut(name).ok_or_else(|| {
                ServiceError::forbidden(
                    "grant_widening",
                    format!("tool {:?} is not in this session's boundary", truncate(name)),
                )
            })?;
            boundary.approval_required = true;
        }
        let narrowed = SessionNarrowed::of(&tools).into();
        let version = self.store.narrow_session(&session.id, if_match, tools.clone(), &p.name, narrowed).await;
        self.boundary_changed();
        let version = version?;
        let _ = self.narrowed.send(session.id.clone());
        session.tools = tools;
        session.version = version;
        Ok(self.priced(session))
    }
}

impl Service {
    /// The session as `GET /v1/sessions/{sid}` shows it: each tool's
    /// boundary as its calls get it now, met with the served version (a
    /// reload may have narrowed it; it never widens).
    pub async fn get_session(&self, p: &Principal, sid: &str) -> Result<Session> {
        let mut session = self.owned_session(p, sid).await?;
        let set = self.tools();
        for (name, boundary) in session.tools.iter_mut() {
            if let Some(tool) = set.tools.get(name) {
                *boundary = Service::effective_boundary(tool, boundary);
            }
        }
        Ok(self.priced(session))
    }

    /// Deletes sessions past their `expires_at`; their audit chains stay,
    /// ending with `session_deleted` (reason `expired`).
    pub async fn purge_expired_sessions(&self) -> Result<usize> {
        let now = util::now_rfc3339();
        let purged = self.store.purge_expired(now, SessionDeleted::of(Deletion::Expired).into()).await.map(|ids| {
            for id in &ids {
                self.state_cache.forget_session(id);
                self.remove_workspace(id);
            }
            ids.len()
        });
        if !matches!(purged, Ok(0)) {
            self.boundary_changed();
        }
        Ok(purged?)
    }
}
