//! HTTPS for the egress tests: a CA made per run (rcgen), server
//! certificates it signs (valid, for another name, expired), and a small
//! TLS server on loopback that answers every request it reads.

use anyhow::Result;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The body the server answers with.
pub const TLS_HELLO: &str = "hello over tls";

/// A certificate authority of this run only.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate and its key.
pub struct ServerCert {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl TestCa {
    pub fn new(name: &str) -> Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ok(TestCa { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate()?)? })
    }

    /// The CA certificate as PEM, for `[network] extra_ca_files`.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `name`, valid now.
    pub fn server(&self, name: &str) -> Result<ServerCert> {
        self.sign(name, |_| {})
    }

    /// A certificate for `name` that expired in 2021.
    pub fn expired_server(&self, name: &str) -> Result<ServerCert> {
        self.sign(name, |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        })
    }

    fn sign(&self, name: &str, adjust: impl FnOnce(&mut CertificateParams)) -> Result<ServerCert> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![name.to_string()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        adjust(&mut params);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ServerCert {
            chain: vec![cert.der().clone(), self.issuer.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        })
    }
}

/// An HTTPS server on 127.0.0.1 presenting one certificate; every request
/// whose head it reads gets `200` with [`TLS_HELLO`]. Stops when dropped.
pub struct TestTlsServer {
    pub port: u16,
    served: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TestTlsServer {
    pub async fn start(cert: ServerCert) -> Result<TestTlsServer> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(cert.chain, cert.key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let served = Arc::new(AtomicUsize::new(0));
        let count = served.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, count) = (acceptor.clone(), count.clone());
                tokio::spawn(async move {
                    // A refused handshake ends here, having served nothing.
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{TLS_HELLO}",
                        TLS_HELLO.len()
                    );
                    let _ = tls.write_all(reply.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Ok(TestTlsServer { port, served, task })
    }

    /// Requests answered so far (a refused handshake is none).
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for TestTlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
