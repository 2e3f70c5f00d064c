//! The tools a principal sees, with their reviews.

use super::Service;
use crate::auth::Principal;
use crate::runtime::loader::LoadedTool;
use std::sync::Arc;

impl Service {
    /// Tools `p` may use (all, for admins).
    pub fn visible_tools(&self, p: &Principal) -> Vec<Arc<LoadedTool>> {
        self.tools.values().filter(|t| p.is_admin() || p.may_use_tool(&t.manifest.name)).cloned().collect()
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
