//! HTTPS egress (issue 30): a CA made per run, trusted through `[network]
//! extra_ca_files`; a certificate for another name, an expired one and an
//! untrusted CA are each refused before any request is sent, and every
//! attempt is audited.

use bulkhead_tests::tls::{Alpn, ServerCert, TLS_HELLO, TestCa, TestTlsServer};
use bulkhead_tests::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A host whose http-fetch may reach `localhost:port`, trusting `ca` (as
/// the operator's private CA) when given.
async fn https_host(port: u16, ca: Option<&TestCa>) -> anyhow::Result<TestHost> {
    let manifest = format!(
        "name = \"http-fetch\"\nversion = \"0.1.0\"\ncomponent = \"http_fetch.wasm\"\n[grants]\nnetwork = [\"localhost:{port}\"]\n"
    );
    let mut config = "[network]\nallow_private = [\"127.0.0.0/8\"]\n".to_string();
    let mut builder = TestHost::builder().bundle_with_manifest("http-fetch", example_tool("http-fetch"), &manifest);
    if let Some(ca) = ca {
        config.push_str("extra_ca_files = [\"private-ca.pem\"]\n");
        let pem = ca.pem();
        builder = builder.before_start(move |dir| std::fs::write(dir.join("private-ca.pem"), pem));
    }
    builder.config(&config).start().await
}

async fn fetch(host: &TestHost, port: u16) -> anyhow::Result<(Value, Vec<Value>)> {
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    let (status, call) =
        api.call(&sid, "http-fetch", json!({"url": format!("https://localhost:{port}/hello")})).await?;
    assert_eq!(status, StatusCode::OK, "{call}");
    let (_, audit) = api.get(&format!("/v1/sessions/{sid}/audit?limit=100")).await?;
    let egress = audit["events"].as_array().unwrap().iter().filter(|e| e["kind"] == "egress").cloned().collect();
    Ok((call, egress))
}

async fn serving(cert: ServerCert) -> anyhow::Result<TestTlsServer> {
    TestTlsServer::start(cert).await
}

#[tokio::test]
async fn https_to_a_granted_host_under_the_operators_ca_succeeds_and_is_audited() -> anyhow::Result<()> {
    let ca = TestCa::new("bulkhead test CA")?;
    let server = serving(ca.server("localhost")?).await?;
    let host = https_host(server.port, Some(&ca)).await?;
    let (call, egress) = fetch(&host, server.port).await?;
    assert_eq!(call["status"], "succeeded", "{call}");
    assert_eq!(call["output"]["status"], 200);
    assert_eq!(call["output"]["body"], TLS_HELLO);
    assert_eq!(server.served(), 1);
    assert_eq!(egress.len(), 1, "{egress:?}");
    let e = &egress[0]["data"];
    assert_eq!(
        (e["scheme"].as_str(), e["host"].as_str(), e["status"].as_u64()),
        (Some("https"), Some("localhost"), Some(200))
    );
    assert_eq!(e["port"], server.port);
    Ok(())
}

/// Each bad certificate: the call fails with the TLS reason, the server
/// answered nothing, and the attempt is an `egress` event with no status.
#[tokio::test]
async fn https_refuses_an_untrusted_ca_a_wrong_name_and_an_expired_certificate() -> anyhow::Result<()> {
    let ca = TestCa::new("bulkhead test CA")?;
    let other_ca = TestCa::new("a CA nobody trusts")?;
    // What rustls says of each, as the audit records it.
    let cases: [(&str, ServerCert, &str); 3] = [
        ("untrusted CA", other_ca.server("localhost")?, "UnknownIssuer"),
        ("another name", ca.server("elsewhere.example")?, "not valid for name \"localhost\""),
        ("expired", ca.expired_server("localhost")?, "expired"),
    ];
    for (what, cert, reason) in cases {
        let server = serving(cert).await?;
        let host = https_host(server.port, Some(&ca)).await?;
        let (call, egress) = fetch(&host, server.port).await?;
        assert_eq!(call["status"], "failed", "{what}: {call}");
        let message = call["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("TlsCertificateError"), "{what}: the tool is told it is the certificate: {message}");
        assert_eq!(server.served(), 0, "{what}: no request reached the server");
        assert_eq!(egress.len(), 1, "{what}: {egress:?}");
        let e = &egress[0]["data"];
        assert_eq!(e["status"], Value::Null, "{what}: no response");
        let error = e["error"].as_str().unwrap_or_default();
        assert!(error.starts_with("TLS certificate refused: ") && error.contains(reason), "{what}: {error}");
    }
    // And the operator's CA only counts when configured.
    let server = serving(ca.server("localhost")?).await?;
    let host = https_host(server.port, None).await?;
    let (call, _) = fetch(&host, server.port).await?;
    assert_eq!(call["status"], "failed", "without extra_ca_files: {call}");
    assert_eq!(server.served(), 0);
    Ok(())
}

/// Egress offers HTTP/2 and HTTP/1.1 and speaks what the server chose.
#[tokio::test]
async fn https_egress_speaks_http2_when_the_server_offers_it_else_http1() -> anyhow::Result<()> {
    let ca = TestCa::new("bulkhead test CA")?;
    for (alpn, version) in [(Alpn::Both, "HTTP/2.0"), (Alpn::Http1, "HTTP/1.1")] {
        let server = TestTlsServer::with_alpn(ca.server("localhost")?, alpn).await?;
        let host = https_host(server.port, Some(&ca)).await?;
        let (call, egress) = fetch(&host, server.port).await?;
        assert_eq!(call["status"], "succeeded", "{alpn:?}: {call}");
        assert_eq!(call["output"]["body"], TLS_HELLO);
        assert_eq!(call["output"]["headers"]["x-http-version"], version, "{alpn:?}: {call}");
        assert_eq!(egress[0]["data"]["status"], 200);
    }
    Ok(())
}

#[tokio::test]
async fn an_extra_ca_file_that_is_missing_or_holds_no_certificate_stops_the_host() -> anyhow::Result<()> {
    let cases = [
        ("missing.pem", None, "missing.pem"),
        ("empty.pem", Some("no certificate here\n"), "no PEM certificate"),
        ("bad.pem", Some("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"), "bad.pem"),
    ];
    for (file, content, want) in cases {
        let mut builder = TestHost::builder().config(&format!("[network]\nextra_ca_files = [\"{file}\"]\n"));
        if let Some(content) = content {
            builder = builder.before_start(move |dir| std::fs::write(dir.join(file), content));
        }
        let err = match builder.start().await {
            Ok(_) => panic!("{file}: the host started"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("network.extra_ca_files") && err.contains(want), "{file}: {err}");
    }
    Ok(())
}
