//! The TLS client every outbound connection of the host uses: tools'
//! HTTPS egress (`caps::http`) and the MCP stdio bridge. Web PKI roots
//! (Mozilla's, built in) and the operator's `[network] extra_ca_files`,
//! TLS 1.2 and 1.3 with ring; one configuration for the process, built at
//! start ([`init`]) or, without it, on first use with the built-in roots.

use anyhow::{Context as _, Result, bail};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();

/// Trusts the CA certificates of `extra_ca_files` besides the built-in
/// roots. Every file must hold at least one certificate, and each must be
/// one rustls accepts as a root: an operator who names a CA file means it.
/// Called once, before any connection (a later call changes nothing).
pub fn init(extra_ca_files: &[PathBuf]) -> Result<()> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() };
    for path in extra_ca_files {
        let what = || format!("network.extra_ca_files: {}", path.display());
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(path).with_context(what)?.collect::<Result<_, _>>().with_context(what)?;
        if certs.is_empty() {
            bail!("{}: no PEM certificate in it", what());
        }
        for cert in certs {
            roots.add(cert).with_context(|| format!("{}: not a usable CA certificate", what()))?;
        }
    }
    let _ = CONFIG.set(client_config(roots));
    Ok(())
}

fn client_config(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A connector sharing the process's one client configuration.
pub fn connector() -> tokio_rustls::TlsConnector {
    let config =
        CONFIG.get_or_init(|| client_config(rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() }));
    tokio_rustls::TlsConnector::from(config.clone())
}
