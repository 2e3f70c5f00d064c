//! Reading calls: one (with a long-poll for its end) and listings.

use super::MAX_WAIT_SECONDS;
use crate::auth::Principal;
use crate::model::{Call, CallStatus};
use crate::service::sessions::page;
use crate::service::{Result, Service, ServiceError};
use crate::util;
use std::time::Duration;

/// How often a long-poll re-reads a call with a shared store: first
/// after this, then twice as long each time, up to `SHARED_POLL_MAX`.
const SHARED_POLL_FIRST: Duration = Duration::from_millis(50);
const SHARED_POLL_MAX: Duration = Duration::from_secs(1);

impl Service {
    /// One call; with `wait`, holds until it leaves `pending_approval` or
    /// `running` or the wait ends (no database connection is held meanwhile).
    pub async fn get_call(&self, p: &Principal, sid: &str, cid: &str, wait: Option<u64>) -> Result<Call> {
        let session = self.owned_session(p, sid).await?;
        if !util::is_id(cid) {
            return Err(ServiceError::not_found("call"));
        }
        let read = || async { self.store.call(&session.id, cid).await?.ok_or_else(|| ServiceError::not_found("call")) };
        let wait = wait.unwrap_or(0).min(MAX_WAIT_SECONDS);
        if wait == 0 {
            return read().await;
        }
        // Subscribed before the first read, so an end between the read and
        // the wait is not missed; a subscriber counts as a waiter in /metrics.
        let mut finished = self.finished.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
        // With a shared store the call may end on another host, which no
        // broadcast here announces: re-read it now and then as well.
        let mut poll = (!self.caches()).then_some(SHARED_POLL_FIRST);
        loop {
            let call = read().await?;
            if !call.status.is_open() {
                return Ok(call);
            }
            // Wake on any finished call; re-read when it is this one (or the
            // channel lagged and it might have been).
            let woke = loop {
                let until = poll.map_or(deadline, |p| deadline.min(tokio::time::Instant::now() + p));
                match tokio::time::timeout_at(until, finished.recv()).await {
                    Err(_) if until < deadline => {
                        poll = poll.map(|p| (p * 2).min(SHARED_POLL_MAX));
                        break true;
                    }
                    Err(_) => break false,
                    Ok(Ok(id)) if id != cid => continue,
                    Ok(_) => break true,
                }
            };
            if !woke {
                return Ok(call);
            }
        }
    }

    pub async fn list_calls(
        &self,
        p: &Principal,
        sid: &str,
        status: Option<&str>,
        after: Option<String>,
        limit: Option<u32>,
    ) -> Result<Vec<Call>> {
        let session = self.owned_session(p, sid).await?;
        let status = match status {
            None => None,
            Some(s) => Some(CallStatus::parse(s).ok_or_else(|| {
                ServiceError::bad_request(format!("unknown status {:?}", s.chars().take(32).collect::<String>()))
            })?),
        };
        let (after, limit) = (after.unwrap_or_default(), page(limit));
        Ok(self.store.calls(&session.id, status, after, limit).await?)
    }
}
