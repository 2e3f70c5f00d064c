//! JWT principals from `[[auth.issuers]]` against the test identity
//! provider (`src/idp.rs`): who a valid token names, every way a token is
//! refused, key rotation and an identity provider that is down, names that
//! cannot be taken, and the protected resource metadata MCP clients
//! discover issuers by.

use anyhow::{Context, Result};
use bulkhead_tests::idp::{SigningKey, TestIdp};
use bulkhead_tests::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// `roles = ["admin"]` tokens get every tool; the issuer's own policy is
/// the counter; approvers need none.
const POLICY: &str = "tools = [\"counter\"]\n[[auth.issuers.policies]]\nrole = \"admin\"\ntools = [\"*\"]\n";

async fn host_with(idp: &TestIdp, extra: &str) -> Result<TestHost> {
    TestHost::builder()
        .bundle("counter", example_tool("counter"))
        .bundle("notes", example_tool("notes"))
        .config(&idp.issuer_config("bulkhead", extra))
        .start()
        .await
}

fn www_authenticate(resp: &reqwest::Response) -> String {
    resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
}

/// A valid token names `<issuer>#<sub>` with its roles and its policy.
#[tokio::test]
async fn a_valid_token_names_its_principal_role_and_policy() -> Result<()> {
    let idp = TestIdp::start().await?;
    let host = host_with(&idp, POLICY).await?;
    let name = format!("{}#alice", idp.issuer);

    for kid in ["ed-1", "rsa-1"] {
        let agent = host.api(&idp.token_with(kid, json!({})));
        let (status, session) = agent.post("/v1/sessions", json!({})).await?;
        assert_eq!(status, StatusCode::CREATED, "{kid}: {session}");
        assert_eq!(session["principal"], name.as_str(), "{session}");
        let sid = session["id"].as_str().unwrap();
        let (status, call) = agent.call(sid, "counter", json!({"name": "n", "by": 1})).await?;
        assert_eq!(status, StatusCode::OK, "{call}");
        // The issuer's policy: the counter only.
        let (status, body) = agent.call(sid, "notes", json!({"op": "list"})).await?;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }

    let approver = host.api(&idp.token(json!({"sub": "bob", "roles": ["approver"]})));
    assert_eq!(approver.get("/v1/approvals").await?.0, StatusCode::OK);
    let (status, body) = approver.post("/v1/sessions", json!({})).await?;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("role_required")), "{body}");

    let admin = host.api(&idp.token(json!({"sub": "root", "roles": "admin agent"})));
    assert_eq!(admin.get("/v1/tools/audit").await?.0, StatusCode::OK);
    let sid = admin.session(json!({})).await?;
    assert_eq!(admin.call(&sid, "notes", json!({"op": "list"})).await?.0, StatusCode::OK, "admin policy: every tool");

    // Static tokens keep working beside the issuer.
    assert_eq!(host.agent().post("/v1/sessions", json!({})).await?.0, StatusCode::CREATED);
    Ok(())
}

/// Every way a token can be wrong: 401 with the contract's body and a
/// challenge naming the reason and the resource metadata.
#[tokio::test]
async fn bad_tokens_are_refused_with_401_each() -> Result<()> {
    let idp = TestIdp::start().await?;
    let host = host_with(&idp, POLICY).await?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let good = idp.token(json!({}));
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], b64(&idp.claims(json!({"sub": "mallory"}))), parts[2]);
    let unsigned = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&idp.claims(json!({}))));
    // The classic confusion: HS256 keyed with the issuer's public key.
    let hs256 = {
        let key = idp.key("rsa-1");
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        jsonwebtoken::encode(&header, &idp.claims(json!({})), &jsonwebtoken::EncodingKey::from_secret(&key.public_der))?
    };
    let stranger = SigningKey::ed25519("ed-1").sign(&idp.claims(json!({})));
    idp.add_key("never-published", false);
    let cases: Vec<(&str, String, &str)> = vec![
        ("expired", idp.token(json!({"exp": now - 120})), "expired"),
        ("not yet valid", idp.token(json!({"nbf": now + 600})), "not valid yet"),
        ("wrong aud", idp.token(json!({"aud": "another-service"})), "audience"),
        ("wrong iss", idp.token(json!({"iss": "https://evil.example"})), "issuer"),
        ("no exp", idp.token(json!({"exp": null})), "exp"),
        ("no aud", idp.token(json!({"aud": null})), "aud"),
        ("alg none", unsigned, "algorithm"),
        ("HS256 with the public key", hs256, "algorithm"),
        ("tampered payload", tampered, "signature"),
        ("another key with a known kid", stranger, "signature"),
        ("unknown kid", idp.token_with("never-published", json!({})), "signing key"),
        ("no subject", idp.token(json!({"sub": null})), "sub"),
        ("garbage", "eyJhbGciOi.not-base64.!!".into(), "JWT"),
        ("oversized", format!("{}.{}.x", "a".repeat(20_000), "b"), "too long"),
    ];
    for (what, token, reason) in cases {
        let resp = host.api(&token).request(reqwest::Method::GET, "/v1/sessions").send().await?;
        let challenge = www_authenticate(&resp);
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{what}");
        let body: Value = resp.json().await?;
        assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(reason), "{what}: {message}");
        assert!(challenge.contains("error=\"invalid_token\""), "{what}: {challenge}");
        assert!(challenge.contains("resource_metadata=\""), "{what}: {challenge}");
    }
    // Refused tokens made nothing.
    let (_, sessions) = host.api(&idp.token(json!({}))).get("/v1/sessions").await?;
    assert_eq!(sessions["sessions"].as_array().map(Vec::len), Some(0), "{sessions}");
    Ok(())
}

/// A rotated key is fetched once when a token names it; made-up kids do
/// not make the host hammer the provider.
#[tokio::test]
async fn a_rotated_key_is_fetched_and_unknown_kids_are_refused() -> Result<()> {
    let idp = TestIdp::start().await?;
    let host = host_with(&idp, POLICY).await?;
    assert_eq!(host.api(&idp.token(json!({}))).get("/v1/sessions").await?.0, StatusCode::OK);
    let before = idp.jwks_fetches();
    idp.add_key("ed-2", true);
    // Past the refetch interval (2 s) so the rotation is looked for.
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    let (status, body) = host.api(&idp.token_with("ed-2", json!({}))).get("/v1/sessions").await?;
    assert_eq!(status, StatusCode::OK, "the rotated key is fetched: {body}");
    assert_eq!(idp.jwks_fetches(), before + 1);
    idp.add_key("ed-3", false);
    for _ in 0..20 {
        let (status, _) = host.api(&idp.token_with("ed-3", json!({}))).get("/v1/sessions").await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert!(idp.jwks_fetches() <= before + 2, "{} fetches for 20 unknown kids", idp.jwks_fetches() - before);
    Ok(())
}

/// An identity provider that is down never lets a token through: 503
/// until its keys can be read; static tokens are unaffected.
#[tokio::test]
async fn an_identity_provider_that_is_down_refuses_and_never_accepts() -> Result<()> {
    let idp = TestIdp::start().await?;
    idp.set_down(true);
    let host = host_with(&idp, POLICY).await?;
    let token = idp.token(json!({}));
    let (status, body) = host.api(&token).get("/v1/sessions").await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "identity_provider_unavailable");
    assert!(!body.to_string().contains("jwks.json"), "no internals: {body}");
    assert_eq!(host.agent().get("/v1/sessions").await?.0, StatusCode::OK, "static tokens");
    idp.set_down(false);
    let (status, body) = eventually("the provider's keys are read again", || async {
        let reply = host.api(&token).get("/v1/sessions").await?;
        if reply.0 == StatusCode::OK { Ok(Some(reply)) } else { Ok(None) }
    })
    .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Down again: the keys already read keep verifying; a new kid cannot be
    // checked, so it is refused (503), not accepted.
    idp.set_down(true);
    idp.add_key("ed-9", true);
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    assert_eq!(host.api(&idp.token(json!({"sub": "carol"}))).get("/v1/sessions").await?.0, StatusCode::OK);
    let (status, body) = host.api(&idp.token_with("ed-9", json!({}))).get("/v1/sessions").await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    Ok(())
}

/// A JWT subject never becomes a static principal: by default its name
/// carries the issuer; with `name_prefix = ""` a colliding name is refused.
#[tokio::test]
async fn a_jwt_agent_cannot_reach_a_static_principals_sessions() -> Result<()> {
    let idp = TestIdp::start().await?;
    let host = host_with(&idp, POLICY).await?;
    let sid = host.agent().session(json!({})).await?;
    let impostor = host.api(&idp.token(json!({"sub": "agent"})));
    let (status, body) = impostor.get(&format!("/v1/sessions/{sid}")).await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (_, listed) = impostor.get("/v1/sessions").await?;
    assert_eq!(listed["sessions"].as_array().map(Vec::len), Some(0), "{listed}");
    drop(host);

    let host = host_with(&idp, &format!("name_prefix = \"\"\n{POLICY}")).await?;
    let (status, body) = host.api(&idp.token(json!({"sub": "agent"}))).get("/v1/sessions").await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "principal_conflict");
    let (status, body) = host.api(&idp.token(json!({"sub": "someone-new"}))).post("/v1/sessions", json!({})).await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["principal"], "someone-new");
    Ok(())
}

/// A valid token that maps to no role or no policy: 403 `no_policy`.
#[tokio::test]
async fn a_token_that_maps_to_no_policy_is_forbidden() -> Result<()> {
    let idp = TestIdp::start().await?;
    // Only tokens in group "payments" get a policy.
    let host =
        host_with(&idp, "[[auth.issuers.policies]]\nclaim = \"groups\"\nvalue = \"payments\"\ntools = [\"counter\"]\n")
            .await?;
    for claims in [json!({}), json!({"roles": ["wizard"], "groups": ["payments"]}), json!({"groups": "other"})] {
        let (status, body) = host.api(&idp.token(claims.clone())).get("/v1/sessions").await?;
        assert_eq!(status, StatusCode::FORBIDDEN, "{claims}: {body}");
        assert_eq!(body["error"]["code"], "no_policy", "{body}");
    }
    let (status, body) = host.api(&idp.token(json!({"groups": ["payments"]}))).post("/v1/sessions", json!({})).await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    Ok(())
}

/// Keys from a JWKS file, and claims by other names.
#[tokio::test]
async fn keys_from_a_file_and_claims_by_other_names() -> Result<()> {
    let idp = TestIdp::start().await?;
    let jwks = idp.jwks().to_string();
    let host = TestHost::builder()
        .bundle("counter", example_tool("counter"))
        .before_start(move |dir| std::fs::write(dir.join("jwks.json"), jwks))
        .config(&format!(
            "[[auth.issuers]]\nissuer = \"{}\"\naudience = [\"other\", \"bulkhead\"]\njwks_file = \"jwks.json\"\nname_claim = \"email\"\nroles_claim = \"realm_access.roles\"\nname_prefix = \"corp:\"\ntools = [\"counter\"]\nalgorithms = [\"EdDSA\"]\n",
            idp.issuer
        ))
        .start()
        .await?;
    let token = idp.token(json!({"email": "dana@corp.example", "roles": null, "realm_access": {"roles": ["agent"]}}));
    let (status, body) = host.api(&token).post("/v1/sessions", json!({})).await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["principal"], "corp:dana@corp.example");
    assert_eq!(idp.jwks_fetches(), 0, "the file, not the URL");
    // RS256 is outside this issuer's `algorithms`.
    let rsa = idp.token_with("rsa-1", json!({"email": "dana@corp.example", "realm_access": {"roles": ["agent"]}}));
    let (status, body) = host.api(&rsa).get("/v1/sessions").await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    Ok(())
}

/// RFC 9728: the metadata names the issuers and the resource; a 401 from
/// MCP points to it. Without issuers there is none.
#[tokio::test]
async fn the_protected_resource_metadata_names_the_issuers() -> Result<()> {
    let idp = TestIdp::start().await?;
    let host = host_with(&idp, POLICY).await?;
    let http = reqwest::Client::new();
    let resource = format!("{}/mcp", host.base);
    for path in ["/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"] {
        let (status, meta) = host.anonymous().get(path).await?;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(meta["resource"], resource.as_str(), "{meta}");
        assert_eq!(meta["authorization_servers"], json!([idp.issuer]), "{meta}");
        assert_eq!(meta["bearer_methods_supported"], json!(["header"]));
    }
    let resp = http
        .post(&resource)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string())
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let challenge = www_authenticate(&resp);
    let expected = format!("resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"", host.base);
    assert!(challenge.starts_with("Bearer") && challenge.contains(&expected), "{challenge}");
    assert!(!challenge.contains("error="), "no token, no error: {challenge}");
    drop(host);

    let plain = TestHost::builder().bundle("counter", example_tool("counter")).start().await?;
    let (status, body) = plain.anonymous().get("/.well-known/oauth-protected-resource/mcp").await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let resp = http.get(format!("{}/v1/sessions", plain.base)).send().await?;
    assert_eq!(www_authenticate(&resp), "Bearer");
    Ok(())
}

/// The official MCP Python SDK's OAuth support, given only the server URL
/// and client credentials: 401 → RFC 9728 metadata → the issuer's
/// authorization server metadata → a token for this resource → tools.
#[tokio::test]
async fn the_mcp_sdk_discovers_the_issuer_and_gets_a_token() -> Result<()> {
    let idp = TestIdp::start().await?;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let host = TestHost::builder()
        .bundle("counter", example_tool("counter"))
        .listen(&format!("127.0.0.1:{port}"))
        .config(&idp.issuer_config(&format!("{base}/mcp"), "tools = [\"counter\"]"))
        .start()
        .await?;
    let mut cmd = std::process::Command::new(crate::mcp::python());
    cmd.arg(repo_root().join("tests/mcp/oauth.py"))
        .env("BULKHEAD_URL", &host.base)
        .env("IDP_ISSUER", &idp.issuer)
        .env("IDP_CLIENT_ID", bulkhead_tests::idp::CLIENT_ID)
        .env("IDP_CLIENT_SECRET", bulkhead_tests::idp::CLIENT_SECRET);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "oauth.py failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).context("summary")?;
    assert_eq!(summary["values"][1].as_i64(), summary["values"][0].as_i64().map(|v| v + 1), "{summary}");
    assert!(summary["tools"].as_array().unwrap().iter().any(|t| t == "counter"), "{summary}");
    assert!(idp.token_requests() >= 1, "a token was requested");
    assert_eq!(idp.last_resource().as_deref(), Some(format!("{base}/mcp").as_str()), "RFC 8707 resource");
    // The session it used belongs to the client's principal.
    let sid = summary["session"].as_str().context("session")?;
    let (status, body) = host.agent().get(&format!("/v1/sessions/{sid}")).await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "another principal's session: {body}");
    Ok(())
}
