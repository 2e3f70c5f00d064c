//! The TLS client every outbound connection of the host uses: tools'
//! HTTPS egress (`caps::http`) and the MCP stdio bridge. Web PKI roots
//! (Mozilla's, built in), TLS 1.2 and 1.3 with ring; one configuration
//! for the process, built on first use.

use std::sync::Arc;

/// A connector sharing the process's one client configuration.
pub fn connector() -> tokio_rustls::TlsConnector {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    });
    tokio_rustls::TlsConnector::from(config.clone())
}
