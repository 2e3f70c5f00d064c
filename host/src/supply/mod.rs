//! The tool supply chain: what proves that the bundle a host runs is the
//! one a security team signed off on, and where bundles come from besides
//! the tools folder.
//!
//! - [`bundle`]: a bundle's files and the digests that name a version.
//! - [`signature`]: bundle signatures (OpenSSH SSHSIG over Ed25519) and the
//!   operator's trusted keys.
//! - [`oci`]: bundles as OCI artifacts: push, pull by pinned digest, the
//!   verified cache under the data folder.

pub mod bundle;
pub mod oci;
pub mod signature;
