//! A test identity provider on loopback: signing keys generated per run
//! (Ed25519 and RSA-2048), a JWKS that can rotate or go down, tokens minted
//! with chosen claims, and an OAuth authorization server (RFC 8414 metadata
//! and a `client_credentials` token endpoint) for MCP clients' discovery.
//!
//! Routes: `/jwks.json`, `/.well-known/oauth-authorization-server`,
//! `/.well-known/openid-configuration`, `POST /token`.

use anyhow::Result;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The client the token endpoint knows (client_secret_basic or _post).
pub const CLIENT_ID: &str = "mcp-test-client";
pub const CLIENT_SECRET: &str = "mcp-test-client-secret-0001";

pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    pub jwk: Value,
    /// The public key's DER (what an attacker would use as an HMAC secret).
    pub public_der: Vec<u8>,
}

impl SigningKey {
    pub fn ed25519(kid: &str) -> SigningKey {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("random seed");
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let der = key.to_pkcs8_der().expect("pkcs8").as_bytes().to_vec();
        let public = key.verifying_key().to_bytes().to_vec();
        // jsonwebtoken cannot make an Ed25519 JWK; it is four fields.
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&public);
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA", "use": "sig", "kid": kid});
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(&der),
            jwk,
            public_der: public,
        }
    }

    pub fn rsa(kid: &str) -> SigningKey {
        use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("rsa key");
        let der = key.to_pkcs1_der().expect("pkcs1").as_bytes().to_vec();
        let public = key.to_public_key().to_pkcs1_der().expect("pkcs1").as_bytes().to_vec();
        SigningKey::new(kid, Algorithm::RS256, EncodingKey::from_rsa_der(&der), public)
    }

    fn new(kid: &str, alg: Algorithm, encoding: EncodingKey, public_der: Vec<u8>) -> SigningKey {
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).expect("jwk");
        jwk.common.key_id = Some(kid.into());
        let jwk = serde_json::to_value(&jwk).expect("jwk json");
        SigningKey { kid: kid.into(), alg, encoding, jwk, public_der }
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }
}

struct IdpState {
    issuer: String,
    keys: Mutex<Vec<Arc<SigningKey>>>,
    /// Kids the JWKS shows.
    published: Mutex<Vec<String>>,
    down: AtomicBool,
    jwks_fetches: AtomicUsize,
    token_requests: AtomicUsize,
    /// The `resource` of the last token request.
    last_resource: Mutex<Option<String>>,
}

pub struct TestIdp {
    pub issuer: String,
    state: Arc<IdpState>,
    task: tokio::task::JoinHandle<()>,
}

impl TestIdp {
    /// Keys `ed-1` (EdDSA) and `rsa-1` (RS256), both published.
    pub async fn start() -> Result<TestIdp> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let issuer = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
        let keys = tokio::task::spawn_blocking(|| vec![SigningKey::ed25519("ed-1"), SigningKey::rsa("rsa-1")]).await?;
        let state = Arc::new(IdpState {
            issuer: issuer.clone(),
            published: Mutex::new(keys.iter().map(|k| k.kid.clone()).collect()),
            keys: Mutex::new(keys.into_iter().map(Arc::new).collect()),
            down: AtomicBool::new(false),
            jwks_fetches: AtomicUsize::new(0),
            token_requests: AtomicUsize::new(0),
            last_resource: Mutex::new(None),
        });
        let app = Router::new()
            .route("/jwks.json", get(jwks))
            .route("/.well-known/oauth-authorization-server", get(metadata))
            .route("/.well-known/openid-configuration", get(metadata))
            .route("/token", post(token))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(TestIdp { issuer, state, task })
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/jwks.json", self.issuer)
    }

    /// The JWKS document as served now.
    pub fn jwks(&self) -> Value {
        jwks_document(&self.state)
    }

    /// An `[[auth.issuers]]` block for this provider: `audience`, the JWKS
    /// URL, and `extra` lines (policy, claims, prefix).
    pub fn issuer_config(&self, audience: &str, extra: &str) -> String {
        format!(
            "\n[[auth.issuers]]\nissuer = \"{}\"\naudience = \"{audience}\"\njwks_url = \"{}\"\n{extra}\n",
            self.issuer,
            self.jwks_url()
        )
    }

    /// `claims` over the defaults (`iss` this provider, `aud` "bulkhead",
    /// `sub` "alice", `roles` ["agent"], expiring in 5 minutes); a `null`
    /// removes a default. Signed with `kid`.
    pub fn token_with(&self, kid: &str, claims: Value) -> String {
        let key = self.key(kid);
        key.sign(&self.claims(claims))
    }

    /// As [`TestIdp::token_with`], signed with `ed-1`.
    pub fn token(&self, claims: Value) -> String {
        self.token_with("ed-1", claims)
    }

    pub fn claims(&self, claims: Value) -> Value {
        let now = now();
        let mut out = json!({
            "iss": self.issuer, "aud": "bulkhead", "sub": "alice", "roles": ["agent"],
            "iat": now, "exp": now + 300,
        });
        for (k, v) in claims.as_object().cloned().unwrap_or_default() {
            if v.is_null() {
                out.as_object_mut().unwrap().remove(&k);
            } else {
                out[k] = v;
            }
        }
        out
    }

    pub fn key(&self, kid: &str) -> Arc<SigningKey> {
        self.state.keys.lock().unwrap().iter().find(|k| k.kid == kid).cloned().expect("a key of the test IdP")
    }

    /// A new Ed25519 key, published in the JWKS when `publish`.
    pub fn add_key(&self, kid: &str, publish: bool) {
        self.state.keys.lock().unwrap().push(Arc::new(SigningKey::ed25519(kid)));
        if publish {
            self.state.published.lock().unwrap().push(kid.into());
        }
    }

    /// The JWKS (and token endpoint) answers 503 while down.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    pub fn token_requests(&self) -> usize {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    pub fn last_resource(&self) -> Option<String> {
        self.state.last_resource.lock().unwrap().clone()
    }
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn jwks_document(state: &IdpState) -> Value {
    let published = state.published.lock().unwrap().clone();
    let keys: Vec<Value> =
        state.keys.lock().unwrap().iter().filter(|k| published.contains(&k.kid)).map(|k| k.jwk.clone()).collect();
    json!({ "keys": keys })
}

async fn jwks(State(s): State<Arc<IdpState>>) -> Response {
    s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    if s.down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    axum::Json(jwks_document(&s)).into_response()
}

async fn metadata(State(s): State<Arc<IdpState>>) -> Response {
    axum::Json(json!({
        "issuer": s.issuer,
        "authorization_endpoint": format!("{}/authorize", s.issuer),
        "token_endpoint": format!("{}/token", s.issuer),
        "jwks_uri": format!("{}/jwks.json", s.issuer),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "response_types_supported": ["code"],
    }))
    .into_response()
}

/// `client_credentials` only: a token for the client, its `aud` the
/// requested `resource` (RFC 8707), role agent.
async fn token(State(s): State<Arc<IdpState>>, headers: HeaderMap, body: String) -> Response {
    s.token_requests.fetch_add(1, Ordering::SeqCst);
    if s.down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    let form: Vec<(String, String)> = url_form(&body);
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|t| t.split_once(':').map(|(a, b)| (unescape(a), unescape(b))));
    let (id, secret) =
        basic.unwrap_or((field("client_id").unwrap_or_default(), field("client_secret").unwrap_or_default()));
    if id != CLIENT_ID || secret != CLIENT_SECRET {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "invalid_client"}))).into_response();
    }
    if field("grant_type").as_deref() != Some("client_credentials") {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "unsupported_grant_type"}))).into_response();
    }
    let resource = field("resource");
    *s.last_resource.lock().unwrap() = resource.clone();
    let now = now();
    let claims = json!({
        "iss": s.issuer, "sub": id, "aud": resource.unwrap_or_else(|| "bulkhead".into()),
        "roles": ["agent"], "iat": now, "exp": now + 300,
    });
    let key = s.keys.lock().unwrap()[0].clone();
    axum::Json(json!({ "access_token": key.sign(&claims), "token_type": "Bearer", "expires_in": 300 })).into_response()
}

fn url_form(body: &str) -> Vec<(String, String)> {
    body.split('&').filter_map(|pair| pair.split_once('=')).map(|(k, v)| (unescape(k), unescape(v))).collect()
}

/// `application/x-www-form-urlencoded` decoding.
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(b) => {
                    out.push(b);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
