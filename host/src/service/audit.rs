//! A session's audit trail, as `GET /v1/sessions/{sid}/audit` shows it.

use super::sessions::page;
use super::{Result, Service};
use crate::auth::Principal;
use crate::model::AuditEvent;
use crate::store::chain::{Break, Verifier};

impl Service {
    pub async fn list_audit(
        &self,
        p: &Principal,
        sid: &str,
        after: Option<i64>,
        limit: Option<u32>,
    ) -> Result<Vec<AuditEvent>> {
        let session = self.owned_session(p, sid).await?;
        let (after, limit) = (after.unwrap_or(0), page(limit));
        Ok(self.store.audit(&session.id, after, limit).await?)
    }

    /// The `tools` chain: every change of the tool set (admins only).
    pub async fn list_tools_audit(
        &self,
        p: &Principal,
        after: Option<i64>,
        limit: Option<u32>,
    ) -> Result<Vec<AuditEvent>> {
        require_admin(p)?;
        Ok(self.store.audit(crate::events::TOOLS_CHAIN, after.unwrap_or(0), page(limit)).await?)
    }

    /// Verifies a session's whole chain (contract §9) as the API serves it:
    /// how many events verified, and the first break if there is one.
    pub async fn verify_session_audit(&self, p: &Principal, sid: &str) -> Result<(u64, Option<Break>)> {
        let session = self.owned_session(p, sid).await?;
        let (mut verifier, mut after) = (Verifier::default(), 0);
        loop {
            let events = self.store.audit(&session.id, after, super::sessions::MAX_PAGE).await?;
            for e in &events {
                if let Err(b) = verifier.check(e) {
                    return Ok((verifier.checked(), Some(b)));
                }
                after = e.seq;
            }
            if events.len() < super::sessions::MAX_PAGE as usize {
                return Ok((verifier.checked(), None));
            }
        }
    }
}

pub(super) fn require_admin(p: &Principal) -> Result<()> {
    if p.is_admin() {
        Ok(())
    } else {
        Err(super::ServiceError::forbidden("role_required", format!("principal {} lacks role admin", p.name)))
    }
}
