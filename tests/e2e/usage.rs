//! Priced usage: a session's units and cost, `GET /v1/usage`, `bulkhead
//! usage`, and the same numbers after a restart and after a deletion.

use base64::Engine as _;
use bulkhead_tests::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

const PRICING: &str = r#"
[pricing]
currency = "EUR"
call = 0.01
fuel_million = 0.5
memory_mib_second = 0.002
stored_mib_hour = 3.0
egress_mib = 1.0
"#;

/// The cost of `u`'s units at `PRICING`, computed here from the answer.
fn expected_cost(u: &Value) -> f64 {
    let n = |k: &str| u[k].as_f64().unwrap_or_else(|| panic!("usage.{k} missing in {u}"));
    n("calls") * 0.01
        + n("fuel") / 1e6 * 0.5
        + n("memory_mib_seconds") * 0.002
        + n("stored_mib_hours") * 3.0
        + n("egress_bytes") / 1_048_576.0
}

fn assert_priced(what: &str, u: &Value) {
    let (got, want) = (u["cost"].as_f64().unwrap(), expected_cost(u));
    assert!((got - want).abs() <= 1e-12 + want * 1e-9, "{what}: cost {got}, units × prices {want}: {u}");
    assert_eq!(u["currency"], "EUR", "{what}");
}

/// Bytes the session keeps, summed here from what the API returns.
async fn kept_bytes(api: &Api, sid: &str) -> anyhow::Result<u64> {
    let (_, state) = api.get(&format!("/v1/sessions/{sid}/state/counter")).await?;
    let mut n = 0;
    for (key, value) in state["entries"].as_object().unwrap() {
        n += key.len() + base64::engine::general_purpose::STANDARD.decode(value.as_str().unwrap())?.len();
    }
    let (_, messages) = api.get(&format!("/v1/sessions/{sid}/messages")).await?;
    for m in messages["messages"].as_array().unwrap() {
        n += m["content"].as_str().unwrap().len();
        if !m["metadata"].is_null() {
            n += m["metadata"].to_string().len();
        }
    }
    Ok(n as u64)
}

#[tokio::test]
async fn a_sessions_cost_is_its_units_times_the_prices_across_a_restart_and_a_deletion() -> anyhow::Result<()> {
    let mut host = TestHost::builder().bundle("counter", example_tool("counter")).config(PRICING).start().await?;
    let (agent, other, admin) = (host.agent(), host.api(OTHER_AGENT), host.api(ADMIN));
    let sid = agent.session(json!({})).await?;
    let (status, created) = agent.get(&format!("/v1/sessions/{sid}")).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(created["usage"]["cost"], 0.0, "nothing used yet: {created}");
    for (i, name) in ["a", "b", "a"].iter().enumerate() {
        let (status, call) = agent.call(&sid, "counter", json!({"by": i + 1, "name": name})).await?;
        assert_eq!(status, StatusCode::OK, "{call}");
    }
    for text in ["first ✓", "second"] {
        let body = json!({"role": "user", "content": text, "metadata": {"n": text.len()}});
        assert_eq!(agent.post(&format!("/v1/sessions/{sid}/messages"), body).await?.0, StatusCode::CREATED);
    }
    let doomed = other.session(json!({})).await?;
    assert_eq!(other.call(&doomed, "counter", json!({})).await?.0, StatusCode::OK);

    let (_, calls) = agent.get(&format!("/v1/sessions/{sid}/calls")).await?;
    let calls = calls["calls"].as_array().unwrap().clone();
    let memory: f64 = calls
        .iter()
        .map(|c| {
            c["usage"]["memory_peak_bytes"].as_f64().unwrap() / 1_048_576.0 * c["usage"]["wall_ms"].as_f64().unwrap()
                / 1000.0
        })
        .sum();
    let fuel: u64 = calls.iter().map(|c| c["usage"]["fuel"].as_u64().unwrap()).sum();
    let (_, session) = agent.get(&format!("/v1/sessions/{sid}")).await?;
    let u = &session["usage"];
    assert_eq!(u["calls"], 3);
    assert_eq!(u["fuel"], fuel, "the session's fuel is its calls' fuel");
    assert!(fuel > 0);
    assert!((u["memory_mib_seconds"].as_f64().unwrap() - memory).abs() < 1e-9, "{u} vs {memory}");
    let kept = kept_bytes(&agent, &sid).await?;
    assert_eq!(u["stored_bytes"], kept, "stored_bytes follows every state commit and message");
    let hours = u["stored_mib_hours"].as_f64().unwrap();
    assert!(hours > 0.0 && hours < 1e-3, "a few hundred bytes for seconds: {hours}");
    assert_priced("the session", u);

    assert_eq!(other.delete(&format!("/v1/sessions/{doomed}")).await?.0, StatusCode::NO_CONTENT);

    // The report: per principal, the deleted session still counted.
    let (status, report) = admin.get("/v1/usage").await?;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["currency"], "EUR");
    assert_eq!(report["prices"]["stored_mib_hour"], 3.0);
    let lines = report["principals"].as_array().unwrap();
    let line = |name: &str| lines.iter().find(|l| l["principal"] == name).cloned().unwrap_or(Value::Null);
    assert_eq!(line("agent")["sessions"], 1);
    assert_eq!(line("agent")["usage"]["calls"], 3);
    assert_eq!(line("agent")["usage"]["fuel"], fuel);
    assert_eq!(
        (line("other-agent")["sessions"].clone(), line("other-agent")["deleted_sessions"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(line("other-agent")["usage"]["calls"], 1);
    for l in lines {
        assert_priced(l["principal"].as_str().unwrap(), &l["usage"]);
    }
    let sum: f64 = lines.iter().map(|l| l["usage"]["cost"].as_f64().unwrap()).sum();
    assert!((report["total"]["usage"]["cost"].as_f64().unwrap() - sum).abs() < 1e-9, "{report}");
    assert_eq!(report["total"]["usage"]["calls"], 4);

    // Who may see what, and what a window is.
    let (status, own) = agent.get("/v1/usage").await?;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&Value> = own["principals"].as_array().unwrap().iter().map(|l| &l["principal"]).collect();
    assert_eq!(names, [&json!("agent")], "an agent sees its own usage only");
    let (status, body) = agent.get("/v1/usage?principal=other-agent").await?;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::FORBIDDEN, json!("forbidden")));
    assert_eq!(host.anonymous().get("/v1/usage").await?.0, StatusCode::UNAUTHORIZED);
    let (_, one) = admin.get("/v1/usage?principal=other-agent").await?;
    assert_eq!(one["principals"].as_array().unwrap().len(), 1);
    let (_, future) = admin.get("/v1/usage?from=2999-01-01").await?;
    assert_eq!(future["total"]["sessions"], 0, "{future}");
    let (_, today) = admin
        .get(&format!(
            "/v1/usage?from={}&to={}",
            &session["created_at"].as_str().unwrap()[..10],
            &session["created_at"].as_str().unwrap()[..10]
        ))
        .await?;
    assert_eq!(today["total"]["sessions"], 2, "a day as `to` takes the whole day in: {today}");
    for bad in ["from=yesterday", "from=2026-12-02&to=2026-12-01T00:00:00Z", "to=2026-13-01", "colour=blue"] {
        let (status, body) = admin.get(&format!("/v1/usage?{bad}")).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body["error"]["message"].is_string(), "{bad}: {body}");
    }

    // `bulkhead usage`, as CSV and JSON, reads the same report.
    let usage = |format: &str| {
        std::process::Command::new(binary())
            .args(["usage", "--connect", &host.base, "--token-env", "USAGE_TOKEN", "--format", format])
            .env("USAGE_TOKEN", ADMIN)
            .output()
    };
    let csv = usage("csv")?;
    assert!(csv.status.success(), "{}", String::from_utf8_lossy(&csv.stderr));
    let csv = String::from_utf8(csv.stdout)?;
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows[0][0], "principal");
    assert_eq!(rows.last().unwrap()[0], "*", "{csv}");
    let cost_column = rows[0].iter().position(|h| *h == "cost").unwrap();
    let total: f64 = rows.last().unwrap()[cost_column].parse()?;
    assert!((total - sum).abs() < 1e-5, "{csv}");
    let json_out = usage("json")?;
    let parsed: Value = serde_json::from_slice(&json_out.stdout)?;
    assert_eq!(parsed["total"]["usage"]["calls"], 4);
    let table = String::from_utf8(usage("table")?.stdout)?;
    assert!(table.contains("in EUR") && table.lines().any(|l| l.starts_with("other-agent")), "{table}");
    let refused = std::process::Command::new(binary())
        .args(["usage", "--connect", &host.base, "--token-env", "USAGE_TOKEN", "--principal", "admin"])
        .env("USAGE_TOKEN", AGENT)
        .output()?;
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("403"), "{}", String::from_utf8_lossy(&refused.stderr));

    // After a restart: the same units (storage-time only grows), priced again.
    host.restart().await?;
    let agent = host.agent();
    let (_, again) = agent.get(&format!("/v1/sessions/{sid}")).await?;
    let v = &again["usage"];
    for key in ["calls", "fuel", "wall_ms", "stored_bytes", "egress_bytes", "memory_mib_seconds"] {
        assert_eq!(v[key], u[key], "{key} after the restart");
    }
    assert!(v["stored_mib_hours"].as_f64().unwrap() >= hours);
    assert_priced("after the restart", v);
    let (_, report) = host.api(ADMIN).get("/v1/usage").await?;
    assert_eq!(report["total"]["sessions"], 2, "the deleted session is still in the report: {report}");
    assert_eq!(report["total"]["usage"]["calls"], 4);
    Ok(())
}

#[tokio::test]
async fn without_pricing_costs_are_zero_and_the_units_are_still_counted() -> anyhow::Result<()> {
    let host = TestHost::builder().bundle("counter", example_tool("counter")).start().await?;
    let agent = host.agent();
    let sid = agent.session(json!({})).await?;
    let (status, call) = agent.call(&sid, "counter", json!({})).await?;
    assert_eq!(status, StatusCode::OK, "{call}: {}", host.stderr());
    let (_, s) = agent.get(&format!("/v1/sessions/{sid}")).await?;
    assert_eq!((s["usage"]["cost"].clone(), s["usage"]["currency"].clone()), (json!(0.0), json!("USD")));
    assert_eq!(s["usage"]["stored_bytes"], kept_bytes(&agent, &sid).await?);
    let (_, report) = agent.get("/v1/usage").await?;
    assert_eq!(report["total"]["usage"]["calls"], 1);
    assert_eq!(report["total"]["usage"]["cost"], 0.0);
    Ok(())
}
