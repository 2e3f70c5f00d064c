//! The TLS client every outbound connection of the host uses: tools'
//! HTTPS egress (`caps::http`) and the MCP stdio bridge. Web PKI roots
//! (Mozilla's, built in) and the operator's `[network] extra_ca_files`,
//! TLS 1.2 and 1.3 with ring; one pair of configurations for the process,
//! built at start ([`init`]) or, without it, on first use with the
//! built-in roots. Egress offers HTTP/2 and HTTP/1.1 (ALPN) and speaks
//! what the server picks; the bridge speaks HTTP/1.1 only.

use anyhow::{Context as _, Result, bail};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// For the bridge (no ALPN) and for egress (`h2`, `http/1.1`).
struct Configs {
    http1: Arc<rustls::ClientConfig>,
    egress: Arc<rustls::ClientConfig>,
}

static CONFIG: OnceLock<Configs> = OnceLock::new();

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
    let _ = CONFIG.set(configs(roots));
    Ok(())
}

fn configs(roots: rustls::RootCertStore) -> Configs {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let http1 = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut egress = http1.clone();
    egress.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Configs { http1: Arc::new(http1), egress: Arc::new(egress) }
}

fn get() -> &'static Configs {
    CONFIG.get_or_init(|| configs(rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() }))
}

/// A connector for HTTP/1.1 (the MCP bridge).
pub fn connector() -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(get().http1.clone())
}

/// A connector offering HTTP/2 and HTTP/1.1 (tools' egress): the stream
/// says which one the server chose.
pub fn egress_connector() -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(get().egress.clone())
}
