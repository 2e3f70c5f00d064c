//! Contract §7: authentication, ownership, request errors (and that nothing
//! runs on one), messages, idempotency, If-Match.

use bulkhead_tests::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn counter_host(extra_config: &str) -> anyhow::Result<TestHost> {
    TestHost::builder().bundle("counter", example_tool("counter")).config(extra_config).start().await
}

#[tokio::test]
async fn requests_without_a_valid_token_answer_401() -> anyhow::Result<()> {
    let host = counter_host("").await?;
    let cases = [
        host.anonymous().request(Method::GET, "/v1/sessions"),
        host.api("not-a-real-token-at-all").request(Method::GET, "/v1/sessions"),
        host.anonymous().request(Method::GET, "/v1/tools").header("authorization", "Basic dXNlcjpwYXNz"),
        host.anonymous().request(Method::POST, "/v1/sessions").header("authorization", "Bearer").json(&json!({})),
    ];
    for (i, req) in cases.into_iter().enumerate() {
        let resp = req.send().await?;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        // RFC 6750: an offered token that is refused says so; no token, no error.
        let expected = if i == 1 {
            "Bearer error=\"invalid_token\", error_description=\"missing or invalid bearer token\""
        } else {
            "Bearer"
        };
        assert_eq!(resp.headers()["www-authenticate"], expected, "case {i}");
        let body: Value = resp.json().await?;
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let (status, body) = host.anonymous().get("/healthz").await?;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("ok")));
    let metrics = host.anonymous().request(Method::GET, "/metrics").send().await?.text().await?;
    assert!(metrics.contains("bulkhead_tools_loaded 1"), "{metrics}");
    Ok(())
}

#[tokio::test]
async fn a_principal_sees_only_its_own_sessions() -> anyhow::Result<()> {
    let host = counter_host("").await?;
    let mine = host.agent();
    let theirs = host.api(OTHER_AGENT);
    let sid = mine.session(json!({"labels": {"case": "ownership"}})).await?;
    for path in [
        format!("/v1/sessions/{sid}"),
        format!("/v1/sessions/{sid}/messages"),
        format!("/v1/sessions/{sid}/calls"),
        format!("/v1/sessions/{sid}/state/counter"),
        format!("/v1/sessions/{sid}/audit"),
    ] {
        let (status, body) = theirs.get(&path).await?;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(body["error"]["code"], "session_not_found");
    }
    let (status, _) = theirs.call(&sid, "counter", json!({})).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = theirs.delete(&format!("/v1/sessions/{sid}")).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = theirs.get("/v1/sessions").await?;
    assert_eq!(list["sessions"].as_array().unwrap().len(), 0);
    // An admin sees every session; the owner still has it.
    let (_, list) = host.api(ADMIN).get("/v1/sessions").await?;
    assert_eq!(list["sessions"].as_array().unwrap().len(), 1);
    let (status, s) = mine.get(&format!("/v1/sessions/{sid}")).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s["labels"]["case"], "ownership");
    assert_eq!(s["principal"], "agent");
    Ok(())
}

#[tokio::test]
async fn bad_requests_get_the_documented_4xx_and_nothing_runs() -> anyhow::Result<()> {
    let host = counter_host("[limits]\nmax_request_kb = 4").await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    let calls = format!("/v1/sessions/{sid}/calls");
    let post_raw = |body: &'static str, content_type: &'static str| {
        api.request(Method::POST, &calls).header("content-type", content_type).body(body)
    };
    let big = json!({"tool": "counter", "input": {"name": "x".repeat(8 * 1024)}});
    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (post_raw("{\"tool\": ", "application/json"), StatusCode::BAD_REQUEST, "invalid_json"),
        (post_raw("[1, 2]", "application/json"), StatusCode::BAD_REQUEST, "invalid_json"),
        (
            post_raw("{\"tool\": \"counter\"}", "text/plain"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (api.request(Method::POST, &calls).body("{}"), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        (api.request(Method::POST, &calls).json(&big), StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        (
            api.request(Method::POST, &calls).json(&json!({"tool": "nope", "input": {}})),
            StatusCode::NOT_FOUND,
            "unknown_tool",
        ),
        (
            api.request(Method::POST, &calls).json(&json!({"tool": "counter", "input": {"by": "two"}})),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            api.request(Method::POST, &calls).json(&json!({"tool": "counter", "input": {"colour": 1}})),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            api.request(Method::POST, &calls).json(&json!({"tool": "counter", "input": {}, "extra": 1})),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            api.request(Method::POST, &calls).json(&json!({"tool": "counter", "idempotency_key": ""})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            api.request(Method::POST, &calls).header("if-match", "banana").json(&json!({"tool": "counter"})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (api.request(Method::GET, &format!("{calls}?limit=lots")), StatusCode::BAD_REQUEST, "invalid_request"),
        (api.request(Method::GET, &format!("{calls}?status=weird")), StatusCode::BAD_REQUEST, "invalid_request"),
        (api.request(Method::GET, "/v1/sessions/not-an-id"), StatusCode::NOT_FOUND, "session_not_found"),
        (api.request(Method::GET, &format!("{calls}/not-an-id")), StatusCode::NOT_FOUND, "call_not_found"),
        (api.request(Method::GET, "/v1/nothing-here"), StatusCode::NOT_FOUND, "not_found"),
        (api.request(Method::GET, "/v1/sessions/%FF%FE"), StatusCode::NOT_FOUND, "not_found"),
        (api.request(Method::PUT, "/v1/sessions"), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (
            api.request(Method::POST, "/v1/sessions").json(&json!({"tools": ["missing"]})),
            StatusCode::NOT_FOUND,
            "unknown_tool",
        ),
        (
            api.request(Method::POST, "/v1/sessions").json(&json!({"env": {"BAD NAME": "x"}})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            api.request(Method::POST, "/v1/sessions").json(&json!({"ttl_seconds": 0})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            api.request(Method::POST, "/v1/sessions").json(&json!({"grants": {"counter": {"history": true}}})),
            StatusCode::FORBIDDEN,
            "grant_widening",
        ),
        (
            api.request(Method::POST, &format!("/v1/sessions/{sid}/messages"))
                .json(&json!({"role": "", "content": "x"})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (req, want_status, want_code) in cases {
        let (status, body) = Api::send(req).await?;
        assert_eq!((status, body["error"]["code"].as_str()), (want_status, Some(want_code)), "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (_, list) = api.get(&calls).await?;
    assert_eq!(list["calls"], json!([]), "no request above ran anything");
    assert_eq!(api.audit_kinds(&sid).await?, ["session_created"]);
    assert!(api.state(&sid, "counter").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn messages_round_trip_in_order_with_paging() -> anyhow::Result<()> {
    let host = counter_host("").await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    let path = format!("/v1/sessions/{sid}/messages");
    for i in 1..=5 {
        let role = if i % 2 == 1 { "user" } else { "assistant" };
        let (status, m) =
            api.post(&path, json!({"role": role, "content": format!("message {i} ✓"), "metadata": {"i": i}})).await?;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(m["seq"], i);
    }
    let (_, all) = api.get(&path).await?;
    let contents: Vec<&str> =
        all["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(contents, ["message 1 ✓", "message 2 ✓", "message 3 ✓", "message 4 ✓", "message 5 ✓"]);
    assert_eq!(all["messages"][1]["metadata"]["i"], 2);
    let (_, page) = api.get(&format!("{path}?after=2&limit=2")).await?;
    let seqs: Vec<i64> = page["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [3, 4]);
    Ok(())
}

#[tokio::test]
async fn an_idempotency_key_returns_the_first_call_without_running_again() -> anyhow::Result<()> {
    let mut host = counter_host("").await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    let calls = format!("/v1/sessions/{sid}/calls");
    let body = json!({"tool": "counter", "input": {"by": 5}, "idempotency_key": "order-42"});
    let (s1, first) = api.post(&calls, body.clone()).await?;
    let (s2, again) = api.post(&calls, body.clone()).await?;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert_eq!(first["id"], again["id"]);
    assert_eq!(again["output"]["value"], 5);
    host.restart().await?;
    let api = host.agent();
    let (_, after_restart) = api.post(&calls, body).await?;
    assert_eq!(after_restart["id"], first["id"], "across restarts too");
    let (status, conflict) =
        api.post(&calls, json!({"tool": "counter", "input": {"by": 6}, "idempotency_key": "order-42"})).await?;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(conflict["error"]["code"], "idempotency_conflict");
    assert_eq!(api.state(&sid, "counter").await?["count/default"], "5", "the tool ran once");
    Ok(())
}

#[tokio::test]
/// A refused request leaves no trace: no call, no state, no audit event.
async fn a_stale_if_match_answers_412_and_commits_nothing() -> anyhow::Result<()> {
    let host = counter_host("").await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    let calls = format!("/v1/sessions/{sid}/calls");
    let req =
        |v: &str| api.request(Method::POST, &calls).header("if-match", v.to_string()).json(&json!({"tool": "counter"}));
    let (status, call) = Api::send(req("\"0\"")).await?;
    assert_eq!((status, call["status"].as_str()), (StatusCode::OK, Some("succeeded")));
    let (status, body) = Api::send(req("\"0\"")).await?;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::PRECONDITION_FAILED, Some("stale_version")));
    let (status, _) = Api::send(req("1")).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(api.state(&sid, "counter").await?["count/default"], "2");
    let (_, listed) = api.get(&calls).await?;
    assert_eq!(listed["calls"].as_array().map(Vec::len), Some(2), "{listed}");
    let kinds = api.audit_kinds(&sid).await?;
    assert_eq!(kinds.iter().filter(|k| *k == "call_requested").count(), 2, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| *k == "call_finished").count(), 2, "{kinds:?}");
    Ok(())
}

#[tokio::test]
async fn deleting_a_session_removes_it_but_keeps_its_audit_chain() -> anyhow::Result<()> {
    let host = counter_host("").await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    api.call(&sid, "counter", json!({})).await?;
    let (status, _) = api.delete(&format!("/v1/sessions/{sid}")).await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api.get(&format!("/v1/sessions/{sid}")).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The call path keeps sessions in memory; a deletion ends that.
    let (status, _) = api.call(&sid, "counter", json!({})).await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "a call after the deletion");
    let state_rows = host.db_value("SELECT COUNT(*) FROM tool_state WHERE session = $1", &sid).await?;
    let last = host.db_value("SELECT kind FROM audit WHERE session = $1 ORDER BY seq DESC LIMIT 1", &sid).await?;
    assert_eq!((state_rows.as_deref(), last.as_deref()), (Some("0"), Some("session_deleted")));
    Ok(())
}

#[tokio::test]
async fn session_lists_filter_by_label_status_date_and_principal() -> anyhow::Result<()> {
    let host = counter_host("").await?;
    let agent = host.agent();
    let tagged = agent.session(json!({"labels": {"team": "ledger"}})).await?;
    let other_label = agent.session(json!({"labels": {"team": "ops"}})).await?;
    let theirs = host.api(OTHER_AGENT).session(json!({"labels": {"team": "ledger"}})).await?;
    let ids = |body: &Value| -> Vec<String> {
        body["sessions"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
    };
    let (_, body) = agent.get("/v1/sessions?label=team%3Dledger").await?;
    assert_eq!(ids(&body), std::slice::from_ref(&tagged), "only its own session with that label");
    let (_, body) = agent.get("/v1/sessions?label=team").await?;
    assert_eq!(ids(&body), [tagged.clone(), other_label.clone()]);
    let (_, body) = agent.get("/v1/sessions?status=expired").await?;
    assert_eq!(ids(&body), Vec::<String>::new());
    let (_, body) = agent.get("/v1/sessions?from=2000-01-01&to=2000-12-31").await?;
    assert_eq!(ids(&body), Vec::<String>::new(), "none created in 2000");
    // Another principal's name filters to nothing for an agent; an admin
    // filters by it.
    let (_, body) = agent.get("/v1/sessions?principal=other-agent").await?;
    assert_eq!(ids(&body), Vec::<String>::new());
    let (_, body) = host.api(ADMIN).get("/v1/sessions?principal=other-agent").await?;
    assert_eq!(ids(&body), std::slice::from_ref(&theirs));
    // A field left blank (as a form sends it) filters nothing.
    let (_, body) = host.api(ADMIN).get("/v1/sessions?principal=&label=team%3Dledger&status=").await?;
    assert_eq!(ids(&body), [tagged.clone(), theirs]);
    // A page that filled up says where the next begins.
    let (_, body) = agent.get("/v1/sessions?label=team&limit=1").await?;
    assert_eq!((ids(&body), body["next"].as_str()), (vec![tagged.clone()], Some(tagged.as_str())));
    for bad in ["status=gone", "from=yesterday", "to=2026-1-1", "colour=red"] {
        let (status, body) = agent.get(&format!("/v1/sessions?{bad}")).await?;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_request")),
            "{bad}"
        );
    }
    Ok(())
}
