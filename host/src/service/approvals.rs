//! Human approval gates (contract §7, issue 4).
//!
//! A call that needs approval is stored `pending_approval` and nothing runs.
//! An approver (role `approver`, never the session's principal nor the
//! call's requester: four eyes) approves, and the call runs under the
//! session's boundary as it stands then, or denies, and it ends `rejected`.
//! Decisions are conditional updates, so two approvers racing cannot both
//! decide. Pending calls live in the database and survive restarts; with
//! `approvals.expire_after_seconds` they end `rejected` with code `expired`.

use super::sessions::page;
use super::{Result, Service, ServiceError};
use crate::auth::Principal;
use crate::config::Role;
use crate::model::{Approval, Call, CallError, CallStatus};
use crate::store::{Link, Rejection, StoreError};
use crate::util;
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

/// A reason is a sentence or two for the record.
pub const MAX_REASON_BYTES: usize = 4096;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub decision: String,
    pub reason: Option<String>,
}

fn require_approver(p: &Principal) -> Result<()> {
    if p.has_role(Role::Approver) {
        Ok(())
    } else {
        Err(ServiceError::forbidden("role_required", "only principals with role approver decide approvals"))
    }
}

fn already_decided() -> ServiceError {
    StoreError::Rejected(Rejection::NotPending).into()
}

impl Service {
    /// Pending calls the approver may decide, oldest first, with who asked.
    pub async fn list_approvals(&self, p: &Principal, after: Option<String>, limit: Option<u32>) -> Result<Vec<Value>> {
        require_approver(p)?;
        let (me, after, limit) = (p.name.clone(), after.unwrap_or_default(), page(limit));
        let rows = self.store.pending_approvals_for(&me, after, limit).await?;
        let mut out = Vec::with_capacity(rows.len());
        // Several pending calls often share a session: each is read once.
        let mut sessions = std::collections::HashMap::new();
        for (call, requester) in rows {
            // What an approver needs to decide: whose session it is, what the
            // tool may do in it, and what its review found.
            if !sessions.contains_key(&call.session) {
                sessions.insert(call.session.clone(), self.store.session(&call.session).await?);
            }
            let session = &sessions[&call.session];
            let mut v = serde_json::to_value(&call).expect("a call serializes");
            v["requested_by"] = Value::String(requester);
            v["session_principal"] = session.as_ref().map(|s| Value::String(s.principal.clone())).unwrap_or_default();
            v["boundary"] = session
                .as_ref()
                .and_then(|s| s.tools.get(&call.tool))
                .map(|b| serde_json::to_value(b).expect("a boundary serializes"))
                .unwrap_or_default();
            v["review"] = self.review_of(&call.tool);
            out.push(v);
        }
        Ok(out)
    }

    /// Approves (runs the call and answers with it finished) or denies.
    pub async fn decide(self: &Arc<Self>, p: &Principal, cid: &str, d: Decision) -> Result<Call> {
        require_approver(p)?;
        let approve = match d.decision.as_str() {
            "approve" => true,
            "deny" => false,
            _ => return Err(ServiceError::bad_request("decision must be \"approve\" or \"deny\"")),
        };
        if d.reason.as_ref().is_some_and(|r| r.len() > MAX_REASON_BYTES) {
            return Err(ServiceError::bad_request(format!("reason is over {MAX_REASON_BYTES} bytes")));
        }
        if !util::is_id(cid) {
            return Err(ServiceError::not_found("call"));
        }
        let (mut call, requester) =
            self.store.call_with_requester(cid).await?.ok_or_else(|| ServiceError::not_found("call"))?;
        let session = self.store.session(&call.session).await?.ok_or_else(|| ServiceError::not_found("call"))?;
        if p.name == session.principal || p.name == requester {
            return Err(ServiceError::forbidden("four_eyes", "a principal cannot approve calls of its own sessions"));
        }
        if call.status != CallStatus::PendingApproval {
            return Err(already_decided());
        }
        let now = util::now_rfc3339();
        call.approval = Some(Approval {
            required: true,
            decision: Some(d.decision.clone()),
            decided_by: Some(p.name.clone()),
            reason: d.reason.clone(),
            decided_at: Some(now.clone()),
        });
        let in_boundary = session.tools.contains_key(&call.tool) && self.tool(&call.tool).is_some();
        if approve && in_boundary {
            let slot = self.call_slots.clone().try_acquire_owned().map_err(|_| ServiceError::Busy)?;
            call.status = CallStatus::Running;
            call.started_at = Some(now);
            self.record_decision(&call, &p.name, false).await?;
            // As in `call`: an approver who disconnects does not cancel the
            // call half-way.
            return self.start_execute(call, (Arc::new(session), None), requester, (slot, None, Link::Alone)).await;
        }
        call.status = CallStatus::Rejected;
        call.finished_at = Some(now);
        call.error = Some(if approve {
            CallError {
                code: "tool_not_allowed".into(),
                message: "approved, but the tool is no longer in the session's boundary".into(),
            }
        } else {
            CallError {
                code: "rejected".into(),
                message: d.reason.clone().unwrap_or_else(|| "denied by an approver".into()),
            }
        });
        self.record_decision(&call, &p.name, true).await?;
        self.count_call(&call, 0);
        let _ = self.finished.send(call.id.clone());
        Ok(call)
    }

    /// Writes a decision (and, when it ends the call, its `call_finished`).
    async fn record_decision(&self, call: &Call, actor: &str, ends_call: bool) -> Result<()> {
        self.store.record_decision(call, actor, ends_call).await.map_err(ServiceError::from)
    }

    /// Ends pending calls older than the configured expiry. Returns how many.
    pub async fn expire_approvals(&self) -> Result<usize> {
        let Some(secs) = self.config.approvals.expire_after_seconds else { return Ok(0) };
        let cutoff =
            humantime::format_rfc3339_millis(std::time::SystemTime::now() - std::time::Duration::from_secs(secs))
                .to_string();
        let expired = self.store.pending_before(cutoff).await?;
        let mut n = 0;
        for mut call in expired {
            call.status = CallStatus::Rejected;
            call.finished_at = Some(util::now_rfc3339());
            call.error = Some(CallError { code: "expired".into(), message: format!("no decision within {secs} s") });
            call.approval = Some(Approval {
                required: true,
                decision: Some("expired".into()),
                decided_by: None,
                reason: None,
                decided_at: call.finished_at.clone(),
            });
            match self.record_decision(&call, "bulkhead", true).await {
                Ok(()) => {
                    n += 1;
                    self.count_call(&call, 0);
                    let _ = self.finished.send(call.id.clone());
                }
                Err(ServiceError::Conflict { .. }) => {} // decided meanwhile
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
}
