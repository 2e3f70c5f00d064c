//! Errors of the service layer: each maps to one status and code of the
//! contract's error body. Internal detail stays in the log.

use crate::store::{Rejection, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// 400: a malformed request or input that fails `input_schema`.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// 401
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// 403: role, tool or grant not allowed.
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    /// 404
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    /// 410: the session expired (and is purged soon).
    #[error("{message}")]
    Gone { code: &'static str, message: String },
    /// 409: a reused idempotency key, a decision on a decided call.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// 412
    #[error("the session is at version {current}, not the one in If-Match")]
    StaleVersion { current: i64 },
    /// 429
    #[error("too many calls in progress; retry later")]
    Busy,
    /// 503: storage failed; the detail is logged, not returned.
    #[error("storage is unavailable; retry later")]
    Unavailable(String),
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

impl ServiceError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ServiceError::BadRequest { code: "invalid_request", message: message.into() }
    }

    pub fn not_found(what: &str) -> Self {
        let code = match what {
            "session" => "session_not_found",
            "call" => "call_not_found",
            "tool" => "unknown_tool",
            _ => "not_found",
        };
        ServiceError::NotFound { code, message: format!("no such {what}") }
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        ServiceError::Forbidden { code, message: message.into() }
    }

    /// The contract's error code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::BadRequest { code, .. }
            | ServiceError::Forbidden { code, .. }
            | ServiceError::NotFound { code, .. }
            | ServiceError::Gone { code, .. }
            | ServiceError::Conflict { code, .. } => code,
            ServiceError::Unauthorized => "unauthorized",
            ServiceError::StaleVersion { .. } => "stale_version",
            ServiceError::Busy => "too_many_calls",
            ServiceError::Unavailable(_) => "storage_unavailable",
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(detail) => ServiceError::Unavailable(detail),
            StoreError::Rejected(Rejection::NotFound) => ServiceError::not_found("session"),
            StoreError::Rejected(Rejection::StaleVersion { current }) => ServiceError::StaleVersion { current },
            StoreError::Rejected(Rejection::NotPending) => ServiceError::Conflict {
                code: "already_decided",
                message: "the call is not pending approval (already decided or expired)".into(),
            },
            StoreError::Rejected(Rejection::NotRunning) => ServiceError::Conflict {
                code: "call_interrupted",
                message:
                    "the call was ended interrupted while it ran (its host's lease expired); its outcome was not stored"
                        .into(),
            },
            StoreError::Rejected(Rejection::IdempotencyConflict) => ServiceError::Conflict {
                code: "idempotency_conflict",
                message: "idempotency_key was already used with another tool or input".into(),
            },
        }
    }
}
