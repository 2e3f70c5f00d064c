//! The MCP message path under property tests (issue 30): JSON-RPC
//! messages made up by proptest, real method names with arbitrary params
//! and arbitrary everything, posted to a real host's `/mcp` with and
//! without a bound session. Each gets an answer below 500, the host never
//! panics, and it still serves afterwards. Bounded: 160 cases.

use super::mcp::{initialize, mcp_post};
use bulkhead_tests::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value, json};

const METHODS: &[&str] = &[
    "initialize",
    "notifications/initialized",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "tasks/get",
    "tasks/cancel",
    "prompts/list",
    "completion/complete",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e9f64..1e9).prop_map(|f| json!(f)),
        "\\PC{0,24}".prop_map(Value::String),
        prop::sample::select(vec!["counter", "notes", "bulkhead://session", "2025-11-25", ""]).prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z_]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A JSON-RPC message, mostly well-formed around a real method, with
/// params (and sometimes `arguments`, `name`, `uri`) made up.
fn message() -> impl Strategy<Value = Value> {
    let method = prop_oneof![prop::sample::select(METHODS.to_vec()).prop_map(str::to_string), "\\PC{0,16}"];
    let params = prop_oneof![
        Just(json!({})),
        json_value(),
        (prop::sample::select(vec!["counter", "notes", "nope", ""]), json_value(), json_value())
            .prop_map(|(name, arguments, meta)| json!({ "name": name, "arguments": arguments, "_meta": meta })),
        json_value().prop_map(|uri| json!({ "uri": uri })),
    ];
    let id = prop_oneof![3 => (0i64..1000).prop_map(|n| json!(n)), 1 => "[a-z0-9]{1,8}".prop_map(|s| json!(s)), 1 => json_value()];
    let well_formed = (method, params, id, any::<bool>()).prop_map(|(method, params, id, notify)| {
        let mut m = json!({ "jsonrpc": "2.0", "method": method, "params": params });
        if !notify {
            m["id"] = id;
        }
        m
    });
    prop_oneof![4 => well_formed, 1 => json_value()]
}

#[test]
fn any_mcp_message_gets_an_answer_below_500_and_the_host_lives() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let host = rt.block_on(
        TestHost::builder().bundle("counter", example_tool("counter")).bundle("notes", example_tool("notes")).start(),
    )?;
    let (status, session, _, text) = rt.block_on(mcp_post(&host, Some(AGENT), &[], initialize()))?;
    assert!(status.is_success(), "{status}: {text}");
    let session = session.expect("a handshake-era session id");
    let statuses = std::cell::RefCell::new(std::collections::BTreeMap::<u16, usize>::new());
    let mut runner = TestRunner::new(Config { cases: 160, failure_persistence: None, ..Config::default() });
    runner
        .run(&(message(), any::<bool>()), |(message, bound)| {
            let headers: Vec<(&str, &str)> =
                if bound { vec![("mcp-session-id", session.as_str())] } else { Vec::new() };
            let (status, _, _, text) = rt
                .block_on(mcp_post(&host, Some(AGENT), &headers, message.clone()))
                .map_err(|e| TestCaseError::fail(format!("no answer to {message}: {e}")))?;
            prop_assert!(status.as_u16() < 500, "{} for {}: {}", status, message, text);
            *statuses.borrow_mut().entry(status.as_u16()).or_default() += 1;
            Ok(())
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Both kinds of answer came: the cases reached past the refusals.
    let statuses = statuses.into_inner();
    eprintln!("answers by status: {statuses:?}");
    assert!(statuses.contains_key(&200), "some messages were served: {statuses:?}");
    assert!(statuses.keys().any(|s| (400..500).contains(s)), "{statuses:?}");
    let (status, _) = rt.block_on(host.agent().get("/healthz"))?;
    assert!(status.is_success(), "the host still serves");
    assert!(!host.stderr().contains("panicked"), "{}", host.stderr());
    Ok(())
}
