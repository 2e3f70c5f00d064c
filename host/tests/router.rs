//! The HTTP layer in process (contract §7): the real router
//! (`bulkhead::api::router`) over a real `Service` (SQLite in a temp data
//! folder, the example tool bundles), driven with `tower::ServiceExt::oneshot`,
//! no socket.
//!
//! Every non-2xx answer is checked for the contract's body
//! `{"error": {"code", "message"}}`, and every refused request for having
//! written nothing: no session, no call, no tool state, no version bump.
//!
//! Needs the guest components built first: `scripts/build-guests`.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use base64::Engine as _;
use bulkhead::config::{Config, PrincipalConfig, Role};
use bulkhead::service::{Service, ToolSource};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use tower::ServiceExt;

const ALICE: &str = "alice-token-0123456789abcdef";
const BOB: &str = "bob-token-0123456789abcdef";
const CAROL: &str = "carol-approver-token-0123456789";
const DAVE: &str = "dave-agent-and-approver-token-0123";

/// The wall-clock limit of the `spin` tool (an endless loop): long enough
/// that a request made right after starting it finds it still running.
const SPIN_TIMEOUT_MS: u64 = 4000;

/// A folder removed when dropped, whether the test passed or not.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("bulkhead-router-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp folder");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A bundle folder in `tools`: the component copied from `from`, and
/// `manifest` as its tool.toml.
fn bundle(tools: &Path, folder: &str, from: &Path, wasm: &str, manifest: &str) {
    let dir = tools.join(folder);
    std::fs::create_dir_all(&dir).unwrap();
    let source = from.join(wasm);
    assert!(source.exists(), "{} is missing: run scripts/build-guests first", source.display());
    std::fs::copy(&source, dir.join(wasm)).unwrap();
    std::fs::write(dir.join("tool.toml"), manifest).unwrap();
}

fn principal(name: &str, token: &str, roles: &[Role], tools: &[&str]) -> PrincipalConfig {
    PrincipalConfig {
        name: name.into(),
        token_env: None,
        token_sha256: Some(hex::encode(Sha256::digest(token.as_bytes()))),
        roles: roles.to_vec(),
        tools: tools.iter().map(|t| t.to_string()).collect(),
        grants: Default::default(),
        approval_required: Vec::new(),
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    /// Asserts the status and the contract's error body with `code`.
    #[track_caller]
    fn error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.body);
        let object = self.body.as_object().unwrap_or_else(|| panic!("not a JSON object: {}", self.body));
        assert_eq!(object.keys().collect::<Vec<_>>(), ["error"], "body: {}", self.body);
        let error = &self.body["error"];
        let got = error["code"].as_str().unwrap_or_else(|| panic!("no error.code: {}", self.body));
        assert!(
            !got.is_empty()
                && got.starts_with(|c: char| c.is_ascii_lowercase())
                && got.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "error.code {got:?} is not snake_case"
        );
        assert_eq!(got, code, "body: {}", self.body);
        let message = error["message"].as_str().unwrap_or_else(|| panic!("no error.message: {}", self.body));
        assert!(!message.trim().is_empty(), "empty error.message: {}", self.body);
    }

    #[track_caller]
    fn ok(&self, status: StatusCode) -> &Value {
        assert_eq!(self.status, status, "body: {}", self.body);
        &self.body
    }
}

struct Host {
    app: Router,
    service: Arc<Service>,
    // Last: the folder goes after the service is dropped.
    _dir: TempDir,
}

impl Host {
    async fn start(name: &str) -> Host {
        Host::start_with(name, |_| {}).await
    }

    /// A service on a fresh data folder with four principals (alice and bob
    /// agents, bob only for `counter`; carol an approver; dave both agent
    /// and approver) and three tools: `counter`, `gated-counter` (the same
    /// component, every call needing approval) and `spin` (an endless loop
    /// stopped at its timeout).
    async fn start_with(name: &str, adjust: impl FnOnce(&mut Config)) -> Host {
        let dir = TempDir::new(name);
        let tools = dir.0.join("tools");
        let counter = repo().join("guest-tools/counter");
        let counter_manifest = std::fs::read_to_string(counter.join("tool.toml")).unwrap();
        bundle(&tools, "counter", &counter, "counter.wasm", &counter_manifest);
        let gated = counter_manifest.replace("name = \"counter\"", "name = \"gated-counter\"")
            + "\n[approval]\nrequired = true\n";
        bundle(&tools, "gated-counter", &counter, "counter.wasm", &gated);
        let spin = format!(
            "name = \"spin\"\nversion = \"0.0.0\"\ndescription = \"an endless loop\"\n\
             component = \"spin_forever.wasm\"\n\n[limits]\ntimeout_ms = {SPIN_TIMEOUT_MS}\n"
        );
        bundle(&tools, "spin", &repo().join("tests/guests/spin-forever"), "spin_forever.wasm", &spin);

        let mut config = Config::embedded();
        config.data_dir = dir.0.join("data");
        config.tools_dir = tools.clone();
        config.volumes.clear();
        config.principals = Some(vec![
            principal("alice", ALICE, &[Role::Agent], &["*"]),
            principal("bob", BOB, &[Role::Agent], &["counter"]),
            principal("carol", CAROL, &[Role::Approver], &[]),
            principal("dave", DAVE, &[Role::Agent, Role::Approver], &["*"]),
        ]);
        adjust(&mut config);
        let (service, report) = Service::start_with(config, ToolSource::Dir(tools)).await.expect("service starts");
        assert!(report.refused.is_empty(), "refused bundles: {:?}", report.refused);
        assert_eq!(service.tools().len(), 3);
        Host { app: bulkhead::api::router(service.clone()), service, _dir: dir }
    }

    async fn raw(&self, req: Request<Body>) -> Reply {
        let response = self.app.clone().oneshot(req).await.expect("the router answers");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.expect("a body").to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Reply { status, headers, body }
    }

    /// A request as `token` with a JSON body (when given) and extra headers.
    async fn send(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req =
            Request::builder().method(method).uri(path).header(header::AUTHORIZATION, format!("Bearer {token}"));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = match body {
            Some(body) => {
                req.header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string())).unwrap()
            }
            None => req.body(Body::empty()).unwrap(),
        };
        self.raw(req).await
    }

    async fn get(&self, path: &str, token: &str) -> Reply {
        self.send(Method::GET, path, token, None, &[]).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.send(Method::POST, path, token, Some(body), &[]).await
    }

    /// A new session of `token`'s principal with these tools; its id.
    async fn session(&self, token: &str, tools: &[&str]) -> String {
        let reply = self.post("/v1/sessions", token, json!({ "tools": tools })).await;
        reply.ok(StatusCode::CREATED)["id"].as_str().expect("a session id").to_string()
    }

    async fn call(&self, token: &str, sid: &str, body: Value) -> Reply {
        self.post(&format!("/v1/sessions/{sid}/calls"), token, body).await
    }

    /// The session's calls, as its owner sees them.
    async fn calls(&self, token: &str, sid: &str) -> Vec<Value> {
        let reply = self.get(&format!("/v1/sessions/{sid}/calls"), token).await;
        reply.ok(StatusCode::OK)["calls"].as_array().expect("a list of calls").clone()
    }

    async fn version(&self, token: &str, sid: &str) -> i64 {
        self.get(&format!("/v1/sessions/{sid}"), token).await.ok(StatusCode::OK)["version"].as_i64().unwrap()
    }

    /// The counter's stored value in the session (None: nothing stored),
    /// read from the state endpoint without running the tool.
    async fn counter_state(&self, token: &str, sid: &str, tool: &str) -> Option<String> {
        let reply = self.get(&format!("/v1/sessions/{sid}/state/{tool}"), token).await;
        let entries = reply.ok(StatusCode::OK)["entries"].as_object().expect("entries").clone();
        let value = entries.get("count/default")?.as_str().expect("a base64 value");
        let bytes = base64::engine::general_purpose::STANDARD.decode(value).expect("base64");
        Some(String::from_utf8(bytes).expect("utf-8"))
    }

    async fn session_count(&self, token: &str) -> usize {
        self.get("/v1/sessions", token).await.ok(StatusCode::OK)["sessions"].as_array().unwrap().len()
    }
}

// ---- 400 ----

#[tokio::test]
async fn a_malformed_json_body_answers_400_and_writes_nothing() {
    let host = Host::start("malformed").await;
    let req = |path: &str, text: &'static str| {
        Request::post(path)
            .header(header::AUTHORIZATION, format!("Bearer {ALICE}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(text))
            .unwrap()
    };
    host.raw(req("/v1/sessions", r#"{"tools": ["counter""#)).await.error(StatusCode::BAD_REQUEST, "invalid_json");
    assert_eq!(host.session_count(ALICE).await, 0);

    let sid = host.session(ALICE, &["counter"]).await;
    let path = format!("/v1/sessions/{sid}/calls");
    host.raw(req(&path, r#"{"tool": "counter", "input": {"#)).await.error(StatusCode::BAD_REQUEST, "invalid_json");
    host.raw(req(&path, "[1, 2]")).await.error(StatusCode::BAD_REQUEST, "invalid_json");
    assert!(host.calls(ALICE, &sid).await.is_empty());
    assert_eq!(host.counter_state(ALICE, &sid, "counter").await, None);
    assert_eq!(host.version(ALICE, &sid).await, 0);
}

#[tokio::test]
async fn an_unknown_field_in_a_body_answers_400_and_writes_nothing() {
    let host = Host::start("unknown-field").await;
    host.post("/v1/sessions", ALICE, json!({ "tools": ["counter"], "tool": "counter" }))
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_json");
    assert_eq!(host.session_count(ALICE).await, 0);

    let sid = host.session(ALICE, &["counter"]).await;
    host.call(ALICE, &sid, json!({ "tool": "counter", "input": {}, "priority": 1 }))
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_json");
    host.send(Method::PATCH, &format!("/v1/sessions/{sid}"), ALICE, Some(json!({ "tool": ["counter"] })), &[])
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_json");
    assert!(host.calls(ALICE, &sid).await.is_empty());
    assert_eq!(host.counter_state(ALICE, &sid, "counter").await, None);
    assert_eq!(host.version(ALICE, &sid).await, 0);
}

#[tokio::test]
async fn input_failing_the_tools_input_schema_answers_400_invalid_input_and_runs_nothing() {
    let host = Host::start("schema").await;
    let sid = host.session(ALICE, &["counter"]).await;
    // `by` must be an integer; the counter takes no other property.
    host.call(ALICE, &sid, json!({ "tool": "counter", "input": { "by": "two" } }))
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_input");
    host.call(ALICE, &sid, json!({ "tool": "counter", "input": { "extra": true } }))
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_input");
    host.call(ALICE, &sid, json!({ "tool": "counter", "input": [] }))
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_input");
    assert!(host.calls(ALICE, &sid).await.is_empty());
    assert_eq!(host.counter_state(ALICE, &sid, "counter").await, None);
    assert_eq!(host.version(ALICE, &sid).await, 0);
}

// ---- 401 ----

#[tokio::test]
async fn a_request_without_an_authorization_header_answers_401() {
    let host = Host::start("no-auth").await;
    let get = host.raw(Request::get("/v1/sessions").body(Body::empty()).unwrap()).await;
    get.error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(get.headers.get(header::WWW_AUTHENTICATE).unwrap(), "Bearer");
    let post = Request::post("/v1/sessions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"tools": ["counter"]}"#))
        .unwrap();
    host.raw(post).await.error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(host.session_count(ALICE).await, 0);
    // /healthz needs no token.
    host.raw(Request::get("/healthz").body(Body::empty()).unwrap()).await.ok(StatusCode::OK);
}

#[tokio::test]
async fn a_wrong_token_answers_401() {
    let host = Host::start("bad-token").await;
    host.get("/v1/sessions", "not-a-known-token-0123456789").await.error(StatusCode::UNAUTHORIZED, "unauthorized");
    // The right token under another scheme is no bearer token.
    let basic =
        Request::get("/v1/sessions").header(header::AUTHORIZATION, format!("Basic {ALICE}")).body(Body::empty());
    host.raw(basic.unwrap()).await.error(StatusCode::UNAUTHORIZED, "unauthorized");
    let sid = host.session(ALICE, &["counter"]).await;
    host.call("not-a-known-token-0123456789", &sid, json!({ "tool": "counter" }))
        .await
        .error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(host.calls(ALICE, &sid).await.is_empty());
    assert_eq!(host.counter_state(ALICE, &sid, "counter").await, None);
}

// ---- 403 ----

#[tokio::test]
async fn an_approver_creating_a_session_answers_403_role_required() {
    let host = Host::start("approver-session").await;
    host.post("/v1/sessions", CAROL, json!({})).await.error(StatusCode::FORBIDDEN, "role_required");
    assert_eq!(host.session_count(CAROL).await, 0);
}

#[tokio::test]
async fn a_tool_the_principal_may_not_use_answers_403_tool_not_allowed() {
    let host = Host::start("tool-not-allowed").await;
    host.post("/v1/sessions", BOB, json!({ "tools": ["counter", "spin"] }))
        .await
        .error(StatusCode::FORBIDDEN, "tool_not_allowed");
    assert_eq!(host.session_count(BOB).await, 0);
    // Without a list, bob's session holds only what bob may use.
    let reply = host.post("/v1/sessions", BOB, json!({})).await;
    let tools = reply.ok(StatusCode::CREATED)["tools"].as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(tools, ["counter"]);
}

#[tokio::test]
async fn widening_a_session_on_patch_answers_403_and_leaves_it_unchanged() {
    let host = Host::start("widen").await;
    let sid = host.session(ALICE, &["counter"]).await;
    let path = format!("/v1/sessions/{sid}");
    let before = host.get(&path, ALICE).await.ok(StatusCode::OK).clone();
    let patch = |body: Value| host.send(Method::PATCH, &path, ALICE, Some(body), &[]);
    patch(json!({ "tools": ["counter", "spin"] })).await.error(StatusCode::FORBIDDEN, "grant_widening");
    patch(json!({ "grants": { "spin": {} } })).await.error(StatusCode::FORBIDDEN, "grant_widening");
    patch(json!({ "grants": { "counter": { "network": ["example.com"] } } }))
        .await
        .error(StatusCode::FORBIDDEN, "grant_widening");
    assert_eq!(host.get(&path, ALICE).await.ok(StatusCode::OK), &before);
    // A tool outside the boundary cannot be called either, and nothing runs.
    host.call(ALICE, &sid, json!({ "tool": "spin" })).await.error(StatusCode::FORBIDDEN, "tool_not_allowed");
    assert!(host.calls(ALICE, &sid).await.is_empty());
    // Narrowing is allowed and bumps the version.
    let narrowed = patch(json!({ "tools": [] })).await;
    assert_eq!(narrowed.ok(StatusCode::OK)["version"], 1);
}

// ---- 404 ----

#[tokio::test]
async fn an_unknown_session_id_answers_404() {
    let host = Host::start("unknown-session").await;
    let sid = uuid::Uuid::now_v7().to_string();
    host.get(&format!("/v1/sessions/{sid}"), ALICE).await.error(StatusCode::NOT_FOUND, "session_not_found");
    host.call(ALICE, &sid, json!({ "tool": "counter" })).await.error(StatusCode::NOT_FOUND, "session_not_found");
    host.get(&format!("/v1/sessions/{sid}/calls"), ALICE).await.error(StatusCode::NOT_FOUND, "session_not_found");
    host.send(Method::DELETE, &format!("/v1/sessions/{sid}"), ALICE, None, &[])
        .await
        .error(StatusCode::NOT_FOUND, "session_not_found");
}

#[tokio::test]
async fn another_principals_session_answers_404_as_if_unknown() {
    let host = Host::start("others-session").await;
    let sid = host.session(ALICE, &["counter"]).await;
    let path = format!("/v1/sessions/{sid}");
    host.get(&path, BOB).await.error(StatusCode::NOT_FOUND, "session_not_found");
    host.call(BOB, &sid, json!({ "tool": "counter" })).await.error(StatusCode::NOT_FOUND, "session_not_found");
    host.get(&format!("{path}/state/counter"), BOB).await.error(StatusCode::NOT_FOUND, "session_not_found");
    host.get(&format!("{path}/audit"), BOB).await.error(StatusCode::NOT_FOUND, "session_not_found");
    host.send(Method::PATCH, &path, BOB, Some(json!({ "tools": [] })), &[])
        .await
        .error(StatusCode::NOT_FOUND, "session_not_found");
    host.send(Method::DELETE, &path, BOB, None, &[]).await.error(StatusCode::NOT_FOUND, "session_not_found");
    assert_eq!(host.session_count(BOB).await, 0);
    // Alice's session is as it was.
    assert!(host.calls(ALICE, &sid).await.is_empty());
    assert_eq!(host.counter_state(ALICE, &sid, "counter").await, None);
    assert_eq!(host.version(ALICE, &sid).await, 0);
}

#[tokio::test]
async fn a_garbage_session_id_answers_404() {
    let host = Host::start("garbage-id").await;
    host.get("/v1/sessions/not-an-id", ALICE).await.error(StatusCode::NOT_FOUND, "session_not_found");
    host.get("/v1/sessions/..%2F..%2Fetc/calls", ALICE).await.error(StatusCode::NOT_FOUND, "session_not_found");
    host.get("/v1/sessions/%zz", ALICE).await.error(StatusCode::NOT_FOUND, "session_not_found");
    // A path parameter that is not UTF-8 once decoded.
    host.get("/v1/sessions/%FF", ALICE).await.error(StatusCode::NOT_FOUND, "not_found");
    host.call(ALICE, "'%20OR%201=1", json!({ "tool": "counter" }))
        .await
        .error(StatusCode::NOT_FOUND, "session_not_found");
}

#[tokio::test]
async fn an_unknown_call_answers_404_call_not_found() {
    let host = Host::start("unknown-call").await;
    let sid = host.session(ALICE, &["counter"]).await;
    let unknown = uuid::Uuid::now_v7();
    host.get(&format!("/v1/sessions/{sid}/calls/{unknown}"), ALICE)
        .await
        .error(StatusCode::NOT_FOUND, "call_not_found");
    host.get(&format!("/v1/sessions/{sid}/calls/garbage"), ALICE).await.error(StatusCode::NOT_FOUND, "call_not_found");
    host.post(&format!("/v1/approvals/{unknown}"), CAROL, json!({ "decision": "approve" }))
        .await
        .error(StatusCode::NOT_FOUND, "call_not_found");
    // A call of one session is not found under another of the same owner.
    let first = host.call(ALICE, &sid, json!({ "tool": "counter" })).await;
    let cid = first.ok(StatusCode::OK)["id"].as_str().unwrap().to_string();
    let other = host.session(ALICE, &["counter"]).await;
    host.get(&format!("/v1/sessions/{other}/calls/{cid}"), ALICE).await.error(StatusCode::NOT_FOUND, "call_not_found");
}

#[tokio::test]
async fn a_call_to_an_unknown_tool_answers_404_unknown_tool_and_runs_nothing() {
    let host = Host::start("unknown-tool").await;
    let sid = host.session(ALICE, &["counter"]).await;
    host.call(ALICE, &sid, json!({ "tool": "no-such-tool", "input": {} }))
        .await
        .error(StatusCode::NOT_FOUND, "unknown_tool");
    assert!(host.calls(ALICE, &sid).await.is_empty());
    assert_eq!(host.version(ALICE, &sid).await, 0);
    host.post("/v1/sessions", ALICE, json!({ "tools": ["no-such-tool"] }))
        .await
        .error(StatusCode::NOT_FOUND, "unknown_tool");
    assert_eq!(host.session_count(ALICE).await, 1);
}

#[tokio::test]
async fn an_unknown_route_answers_404_and_a_wrong_method_405_with_the_error_body() {
    let host = Host::start("unknown-route").await;
    host.get("/v1/nothing-here", ALICE).await.error(StatusCode::NOT_FOUND, "not_found");
    host.raw(Request::get("/nothing").body(Body::empty()).unwrap()).await.error(StatusCode::NOT_FOUND, "not_found");
    host.send(Method::DELETE, "/v1/tools", ALICE, None, &[])
        .await
        .error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

// ---- 409 and idempotent replays ----

#[tokio::test]
async fn the_same_idempotency_key_with_the_same_input_replays_the_first_call_without_running_it_again() {
    let host = Host::start("replay").await;
    let sid = host.session(ALICE, &["counter"]).await;
    let body = json!({ "tool": "counter", "input": { "by": 5 }, "idempotency_key": "k-1" });
    let first = host.call(ALICE, &sid, body.clone()).await;
    let first_call = first.ok(StatusCode::OK).clone();
    assert_eq!(first_call["status"], "succeeded");
    assert_eq!(first_call["output"]["value"], 5);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let version = host.version(ALICE, &sid).await;

    let again = host.call(ALICE, &sid, body).await;
    assert_eq!(again.ok(StatusCode::OK), &first_call);
    assert_eq!(again.headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(host.counter_state(ALICE, &sid, "counter").await.as_deref(), Some("5"));
    assert_eq!(host.calls(ALICE, &sid).await.len(), 1);
    assert_eq!(host.version(ALICE, &sid).await, version);
}

#[tokio::test]
async fn the_same_idempotency_key_with_another_input_answers_409_and_runs_nothing() {
    let host = Host::start("idem-conflict").await;
    let sid = host.session(ALICE, &["counter", "spin"]).await;
    let first =
        host.call(ALICE, &sid, json!({ "tool": "counter", "input": { "by": 2 }, "idempotency_key": "k" })).await;
    first.ok(StatusCode::OK);
    let version = host.version(ALICE, &sid).await;

    host.call(ALICE, &sid, json!({ "tool": "counter", "input": { "by": 3 }, "idempotency_key": "k" }))
        .await
        .error(StatusCode::CONFLICT, "idempotency_conflict");
    // Another tool under the same key: the same.
    host.call(ALICE, &sid, json!({ "tool": "spin", "input": {}, "idempotency_key": "k" }))
        .await
        .error(StatusCode::CONFLICT, "idempotency_conflict");
    assert_eq!(host.counter_state(ALICE, &sid, "counter").await.as_deref(), Some("2"));
    assert_eq!(host.calls(ALICE, &sid).await.len(), 1);
    assert_eq!(host.version(ALICE, &sid).await, version);
}

// ---- 412 ----

#[tokio::test]
async fn a_stale_if_match_answers_412_and_runs_nothing() {
    let host = Host::start("if-match").await;
    let sid = host.session(ALICE, &["counter"]).await;
    host.call(ALICE, &sid, json!({ "tool": "counter" })).await.ok(StatusCode::OK);
    let version = host.version(ALICE, &sid).await;
    assert_eq!(version, 1);

    let path = format!("/v1/sessions/{sid}/calls");
    let call = |tag: String| {
        let (host, path) = (&host, &path);
        async move { host.send(Method::POST, path, ALICE, Some(json!({ "tool": "counter" })), &[("if-match", &tag)]).await }
    };
    call("\"0\"".into()).await.error(StatusCode::PRECONDITION_FAILED, "stale_version");
    call("7".into()).await.error(StatusCode::PRECONDITION_FAILED, "stale_version");
    assert_eq!(host.counter_state(ALICE, &sid, "counter").await.as_deref(), Some("1"));
    assert_eq!(host.calls(ALICE, &sid).await.len(), 1);
    assert_eq!(host.version(ALICE, &sid).await, version);
    // Not a version at all: 400, nothing run.
    call("\"abc\"".into()).await.error(StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(host.calls(ALICE, &sid).await.len(), 1);

    let fresh = call(format!("\"{version}\"")).await;
    assert_eq!(fresh.ok(StatusCode::OK)["output"]["value"], 2);
    assert_eq!(host.version(ALICE, &sid).await, version + 1);
}

// ---- 413, 415 ----

#[tokio::test]
async fn a_body_over_max_request_kb_answers_413_and_runs_nothing() {
    let host = Host::start_with("too-large", |c| c.limits.max_request_kb = 1).await;
    let sid = host.session(ALICE, &["counter"]).await;
    let big = "x".repeat(2048);
    host.call(ALICE, &sid, json!({ "tool": "counter", "input": { "name": big } }))
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    host.post("/v1/sessions", ALICE, json!({ "labels": { "a": big } }))
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert!(host.calls(ALICE, &sid).await.is_empty());
    assert_eq!(host.session_count(ALICE).await, 1);
    // Under the limit the same call runs.
    host.call(ALICE, &sid, json!({ "tool": "counter", "input": { "name": "small" } })).await.ok(StatusCode::OK);
}

#[tokio::test]
async fn a_post_without_a_json_content_type_answers_415_and_runs_nothing() {
    let host = Host::start("media-type").await;
    let sid = host.session(ALICE, &["counter"]).await;
    let path = format!("/v1/sessions/{sid}/calls");
    let body = r#"{"tool": "counter"}"#;
    let without = Request::post(&path).header(header::AUTHORIZATION, format!("Bearer {ALICE}")).body(Body::from(body));
    host.raw(without.unwrap()).await.error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    let text = Request::post(&path)
        .header(header::AUTHORIZATION, format!("Bearer {ALICE}"))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(body));
    host.raw(text.unwrap()).await.error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    let form = Request::post("/v1/sessions")
        .header(header::AUTHORIZATION, format!("Bearer {ALICE}"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("tools=counter"));
    host.raw(form.unwrap()).await.error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    assert!(host.calls(ALICE, &sid).await.is_empty());
    assert_eq!(host.counter_state(ALICE, &sid, "counter").await, None);
    assert_eq!(host.session_count(ALICE).await, 1);
}

// ---- 429 and Prefer: respond-async ----

#[tokio::test]
async fn a_call_over_max_concurrent_calls_answers_429_and_runs_nothing() {
    let host = Host::start_with("busy", |c| c.limits.max_concurrent_calls = 1).await;
    let sid = host.session(ALICE, &["counter", "spin"]).await;
    let path = format!("/v1/sessions/{sid}/calls");
    // The one slot, held by an endless loop until its timeout.
    let spin =
        host.send(Method::POST, &path, ALICE, Some(json!({ "tool": "spin" })), &[("prefer", "respond-async")]).await;
    let spin_id = spin.ok(StatusCode::ACCEPTED)["id"].as_str().unwrap().to_string();
    assert_eq!(spin.body["status"], "running");

    host.call(ALICE, &sid, json!({ "tool": "counter" })).await.error(StatusCode::TOO_MANY_REQUESTS, "too_many_calls");
    // In another session too: the limit is the host's.
    let other = host.session(ALICE, &["counter"]).await;
    host.call(ALICE, &other, json!({ "tool": "counter" })).await.error(StatusCode::TOO_MANY_REQUESTS, "too_many_calls");
    assert_eq!(host.counter_state(ALICE, &sid, "counter").await, None);
    assert_eq!(host.counter_state(ALICE, &other, "counter").await, None);
    let calls = host.calls(ALICE, &sid).await;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["id"], spin_id);
    assert!(host.calls(ALICE, &other).await.is_empty());

    let waited = host.get(&format!("{path}/{spin_id}?wait=20"), ALICE).await;
    assert_eq!(waited.ok(StatusCode::OK)["status"], "trapped", "{}", waited.body);
    assert_eq!(waited.body["error"]["code"], "timeout");
    // The slot is free by the time a long-poll sees the call end.
    let after = host.call(ALICE, &sid, json!({ "tool": "counter" })).await;
    assert_eq!(after.ok(StatusCode::OK)["output"]["value"], 1);
}

#[tokio::test]
async fn prefer_respond_async_answers_202_running_and_a_long_poll_returns_it_succeeded() {
    let host = Host::start("async").await;
    let sid = host.session(ALICE, &["counter"]).await;
    let path = format!("/v1/sessions/{sid}/calls");
    let accepted = host
        .send(
            Method::POST,
            &path,
            ALICE,
            Some(json!({ "tool": "counter", "input": { "by": 3 } })),
            &[("prefer", "respond-async")],
        )
        .await;
    let call = accepted.ok(StatusCode::ACCEPTED).clone();
    assert_eq!(call["status"], "running");
    let cid = call["id"].as_str().unwrap();
    assert_eq!(accepted.headers.get(header::LOCATION).unwrap(), &format!("{path}/{cid}"));

    let done = host.get(&format!("{path}/{cid}?wait=5"), ALICE).await;
    let done = done.ok(StatusCode::OK);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"], json!({ "name": "default", "value": 3 }));
    assert_eq!(host.counter_state(ALICE, &sid, "counter").await.as_deref(), Some("3"));
    // A malformed wait is refused, not ignored.
    host.get(&format!("{path}/{cid}?wait=soon"), ALICE).await.error(StatusCode::BAD_REQUEST, "invalid_request");
}

// ---- approvals ----

#[tokio::test]
async fn an_approval_required_call_waits_until_an_approver_other_than_the_requester_approves_it() {
    let host = Host::start("approval").await;
    let sid = host.session(ALICE, &["gated-counter"]).await;
    let pending = host.call(ALICE, &sid, json!({ "tool": "gated-counter", "input": { "by": 4 } })).await;
    let call = pending.ok(StatusCode::ACCEPTED).clone();
    assert_eq!(call["status"], "pending_approval");
    assert_eq!(call["approval"]["required"], true);
    let cid = call["id"].as_str().unwrap().to_string();
    assert_eq!(host.counter_state(ALICE, &sid, "gated-counter").await, None);

    // The requesting agent cannot decide (it is no approver), nor list.
    host.post(&format!("/v1/approvals/{cid}"), ALICE, json!({ "decision": "approve" }))
        .await
        .error(StatusCode::FORBIDDEN, "role_required");
    host.get("/v1/approvals", ALICE).await.error(StatusCode::FORBIDDEN, "role_required");
    // A malformed decision changes nothing.
    host.post(&format!("/v1/approvals/{cid}"), CAROL, json!({ "decision": "maybe" }))
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_request");
    let still = host.get(&format!("/v1/sessions/{sid}/calls/{cid}"), ALICE).await;
    assert_eq!(still.ok(StatusCode::OK)["status"], "pending_approval");
    assert_eq!(host.counter_state(ALICE, &sid, "gated-counter").await, None);

    let listed = host.get("/v1/approvals", CAROL).await;
    let listed = listed.ok(StatusCode::OK)["approvals"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], cid.as_str());
    assert_eq!(listed[0]["requested_by"], "alice");

    let approved =
        host.post(&format!("/v1/approvals/{cid}"), CAROL, json!({ "decision": "approve", "reason": "ok" })).await;
    let approved = approved.ok(StatusCode::OK);
    assert_eq!(approved["status"], "succeeded", "{approved}");
    assert_eq!(approved["output"]["value"], 4);
    assert_eq!(approved["approval"]["decided_by"], "carol");
    assert_eq!(host.counter_state(ALICE, &sid, "gated-counter").await.as_deref(), Some("4"));
    let got = host.get(&format!("/v1/sessions/{sid}/calls/{cid}"), ALICE).await;
    assert_eq!(got.ok(StatusCode::OK)["status"], "succeeded");

    // Decided once: a second decision is a conflict and runs nothing.
    host.post(&format!("/v1/approvals/{cid}"), CAROL, json!({ "decision": "approve" }))
        .await
        .error(StatusCode::CONFLICT, "already_decided");
    assert_eq!(host.counter_state(ALICE, &sid, "gated-counter").await.as_deref(), Some("4"));
}

#[tokio::test]
async fn an_approver_cannot_approve_a_call_of_its_own_session_four_eyes() {
    let host = Host::start("four-eyes").await;
    let sid = host.session(DAVE, &["gated-counter"]).await;
    let pending = host.call(DAVE, &sid, json!({ "tool": "gated-counter" })).await;
    let cid = pending.ok(StatusCode::ACCEPTED)["id"].as_str().unwrap().to_string();
    host.post(&format!("/v1/approvals/{cid}"), DAVE, json!({ "decision": "approve" }))
        .await
        .error(StatusCode::FORBIDDEN, "four_eyes");
    let still = host.get(&format!("/v1/sessions/{sid}/calls/{cid}"), DAVE).await;
    assert_eq!(still.ok(StatusCode::OK)["status"], "pending_approval");
    assert_eq!(host.counter_state(DAVE, &sid, "gated-counter").await, None);
    // Dave's own pending call is not among those he may decide.
    let listed = host.get("/v1/approvals", DAVE).await;
    assert!(listed.ok(StatusCode::OK)["approvals"].as_array().unwrap().is_empty(), "{}", listed.body);

    let denied = host.post(&format!("/v1/approvals/{cid}"), CAROL, json!({ "decision": "deny", "reason": "no" })).await;
    assert_eq!(denied.ok(StatusCode::OK)["status"], "rejected");
    assert_eq!(host.counter_state(DAVE, &sid, "gated-counter").await, None);
}

// ---- 5xx ----

#[tokio::test]
async fn storage_at_its_cap_answers_503_without_internal_detail() {
    let host = Host::start_with("storage-cap", |c| c.storage.max_size_mb = Some(1)).await;
    let sid = host.session(ALICE, &["counter"]).await;
    let content = "m".repeat(200 << 10);
    let mut refused = None;
    for _ in 0..20 {
        let reply = host
            .post(&format!("/v1/sessions/{sid}/messages"), ALICE, json!({ "role": "user", "content": content }))
            .await;
        if reply.status != StatusCode::CREATED {
            refused = Some(reply);
            break;
        }
    }
    let refused = refused.expect("a 1 MiB database refuses 4 MiB of messages");
    refused.error(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable");
    let message = refused.body["error"]["message"].as_str().unwrap().to_lowercase();
    let data_dir = host.service.config.data_dir.display().to_string().to_lowercase();
    for internal in ["sqlite", "sql", "disk", "full", "database", ".rs", "panick", data_dir.as_str()] {
        assert!(!message.contains(internal), "the 503 message shows {internal:?}: {message}");
    }
    // Reads go on at the cap.
    host.get(&format!("/v1/sessions/{sid}"), ALICE).await.ok(StatusCode::OK);
}
