//! The tool set a host serves: which bundles, where from, their reviews and
//! signature verdicts; what a principal sees of it.
//!
//! The set is one immutable value behind a lock, replaced whole by a reload
//! (`service/reload.rs`): a call holds the `Arc<LoadedTool>` it started
//! with, so a reload never changes a tool under a running call, and no call
//! ever sees half of a new set.

use super::Service;
use crate::auth::Principal;
use crate::events::ToolVersion;
use crate::model::ToolBoundary;
use crate::runtime::loader::LoadedTool;
use crate::supply::signature::Verdict;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Default)]
pub struct ToolSet {
    pub tools: BTreeMap<String, Arc<LoadedTool>>,
    pub info: BTreeMap<String, ToolInfo>,
    /// Counts the changes since start (0: as started).
    pub generation: u64,
}

/// What the host knows of a served tool beyond its bundle.
#[derive(Clone)]
pub struct ToolInfo {
    /// `bulkhead review` of the bundle: surface and findings count.
    pub review: Value,
    pub signature: Verdict,
    /// `{"kind": "dir", "path"}` or `{"kind": "oci", "reference", "digest"}`.
    pub source: Value,
    pub loaded_at: String,
    /// The version this one replaced, if a reload replaced one.
    pub previous: Option<ToolVersion>,
}

impl ToolSet {
    pub fn len(&self) -> usize {
        self.tools.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }
}

impl Service {
    /// The tool set as it is now.
    pub fn tools(&self) -> Arc<ToolSet> {
        self.tool_set.read().expect("tool set lock poisoned").clone()
    }

    /// One tool as it is now.
    pub fn tool(&self, name: &str) -> Option<Arc<LoadedTool>> {
        self.tool_set.read().expect("tool set lock poisoned").tools.get(name).cloned()
    }

    /// Tools `p` may use (all, for admins).
    pub fn visible_tools(&self, p: &Principal) -> Vec<Arc<LoadedTool>> {
        self.tools().tools.values().filter(|t| p.is_admin() || p.may_use_tool(&t.manifest.name)).cloned().collect()
    }

    /// A tool's review, as `GET /v1/tools` and the approvals inbox show it.
    pub fn review_of(&self, tool: &str) -> Value {
        self.tools().info.get(tool).map(|i| i.review.clone()).unwrap_or_default()
    }

    /// Wakes when the tool set changes (MCP `tools/list_changed`).
    pub fn subscribe_tools(&self) -> tokio::sync::watch::Receiver<u64> {
        self.tools_changed.subscribe()
    }

    /// Ids of sessions as their boundary is narrowed on this host.
    pub fn subscribe_narrowed(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.narrowed.subscribe()
    }

    /// A session's boundary for `tool` as calls of its current version get
    /// it: the grants met with the version's, its approval rule added.
    pub fn effective_boundary(tool: &LoadedTool, b: &ToolBoundary) -> ToolBoundary {
        ToolBoundary {
            grants: b.grants.meet(&tool.manifest.grant),
            approval_required: b.approval_required || tool.manifest.approval.required,
        }
    }

    /// What a session's tool list is made of: each tool's name and version
    /// digests (absent: not served), to tell when the list changed.
    pub fn listing_of(&self, session: &crate::model::Session) -> Vec<(String, Option<(String, String)>)> {
        let set = self.tools();
        session
            .tools
            .keys()
            .map(|name| (name.clone(), set.tools.get(name).map(|t| (t.digest.clone(), t.manifest.digest.clone()))))
            .collect()
    }
}

/// The review of a loaded bundle, as `GET /v1/tools` shows it.
pub(super) fn review_summary(bundle: &std::path::Path) -> serde_json::Value {
    match crate::review::review_bundle(bundle) {
        Ok(r) => {
            let count = |s: crate::review::Severity| r.findings.iter().filter(|f| f.severity == s).count();
            use crate::review::Severity::*;
            serde_json::json!({
                "surface": r.surface,
                "worst": r.worst().map(|s| s.as_str()),
                "findings": { "critical": count(Critical), "high": count(High), "medium": count(Medium), "low": count(Low), "info": count(Info) },
                "ids": r.findings.iter().map(|f| f.id).collect::<Vec<_>>(),
            })
        }
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    }
}

/// What the capability surface gained and lost between two reviews.
pub(super) fn capability_diff(old: Option<&Value>, new: Option<&Value>) -> Value {
    let surface = |r: Option<&Value>| -> Vec<String> {
        r.and_then(|r| r["surface"].as_array())
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let (old, new) = (surface(old), surface(new));
    serde_json::json!({
        "added": new.iter().filter(|s| !old.contains(s)).collect::<Vec<_>>(),
        "removed": old.iter().filter(|s| !new.contains(s)).collect::<Vec<_>>(),
    })
}
