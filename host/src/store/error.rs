//! What can go wrong in storage: an unavailable database (detail for the
//! log, a generic 503 for clients) or a domain check that refused a write.

/// What can go wrong in storage. `Unavailable` carries detail for the log
/// only; clients see a generic 503.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("rejected: {0:?}")]
    Rejected(Rejection),
}

/// A domain check made inside a transaction failed; nothing was written.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    NotFound,
    /// `If-Match` named another version than the current one.
    StaleVersion {
        current: i64,
    },
    /// An idempotency key was reused with another tool or input.
    IdempotencyConflict,
    /// A decision on a call that is no longer pending approval.
    NotPending,
    /// An outcome for a call that is no longer running: another host ended
    /// it `interrupted` when this host's lease expired (shared stores).
    NotRunning,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

impl From<Rejection> for StoreError {
    fn from(r: Rejection) -> Self {
        StoreError::Rejected(r)
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
