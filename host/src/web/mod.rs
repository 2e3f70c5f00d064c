//! The HTTP pieces the REST API ([`crate::api`]) and MCP ([`crate::mcp`])
//! share, so neither imports the other's internals:
//!
//! - [`error`]: the contract's error body, and service errors to status
//!   codes, in one place.
//! - [`extract`]: the caller's principal, JSON bodies and queries, each
//!   failing with the contract's error body.
//! - [`oauth`]: the protected resource metadata MCP clients discover
//!   issuers by, and the challenge of every 401.

pub mod error;
pub mod extract;
pub mod oauth;
