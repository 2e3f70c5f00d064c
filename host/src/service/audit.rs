//! A session's audit trail, as `GET /v1/sessions/{sid}/audit` shows it.

use super::sessions::page;
use super::{Result, Service};
use crate::auth::Principal;
use crate::model::AuditEvent;

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
}
