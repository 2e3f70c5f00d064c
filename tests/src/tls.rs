//! HTTPS for the egress tests: a CA made per run (rcgen), server
//! certificates it signs (valid, for another name, expired), and a small
//! HTTPS server on loopback (HTTP/2 or HTTP/1.1) that answers every
//! request it reads.

use anyhow::Result;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// What the server offers in ALPN.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Alpn {
    /// `h2` and `http/1.1`: a client that offers HTTP/2 gets it.
    Both,
    /// `http/1.1` only.
    Http1,
}

/// An HTTPS server on 127.0.0.1 presenting one certificate; every request
/// gets `200` with [`TLS_HELLO`] and an `x-http-version` header naming
/// the version it came in (`HTTP/2.0`, `HTTP/1.1`). Stops when dropped.
pub struct TestTlsServer {
    pub port: u16,
    served: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TestTlsServer {
    pub async fn start(cert: ServerCert) -> Result<TestTlsServer> {
        TestTlsServer::with_alpn(cert, Alpn::Both).await
    }

    pub async fn with_alpn(cert: ServerCert, alpn: Alpn) -> Result<TestTlsServer> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(cert.chain, cert.key)?;
        config.alpn_protocols = match alpn {
            Alpn::Both => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
        };
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
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let answer = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        count.fetch_add(1, Ordering::SeqCst);
                        let version = format!("{:?}", req.version());
                        async move {
                            let body = http_body_util::Full::new(bytes::Bytes::from_static(TLS_HELLO.as_bytes()));
                            hyper::Response::builder().header("x-http-version", version).body(body)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), answer)
                        .await;
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
