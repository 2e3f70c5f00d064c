//! File grants (issue 3): session workspaces and operator volumes, with
//! the known escapes as named regressions.

use bulkhead_tests::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

const PROBE: &str = r#"
    name = "fs-probe"
    version = "0.0.0"
    component = "fs_probe.wasm"
    [grants]
    files = [
      { path = "/ws", source = "session", access = "read-write" },
      { path = "/ledger", source = "volume:ledger", access = "read-write" },
    ]
"#;

/// Runs ops through the probe; returns each result's (ok, data or error).
async fn probe(api: &Api, sid: &str, ops: Value) -> anyhow::Result<Vec<(bool, String)>> {
    let (status, call) = api.call(sid, "fs-probe", json!({ "ops": ops })).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(call["status"], "succeeded", "{call}");
    Ok(call["output"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["ok"].as_bool().unwrap(), r["data"].as_str().or(r["error"].as_str()).unwrap_or("").to_string()))
        .collect())
}

struct Fixture {
    host: TestHost,
    ledger: std::path::PathBuf,
    outside: std::path::PathBuf,
    _root: ScratchDir,
}

async fn fixture() -> anyhow::Result<Fixture> {
    let root = ScratchDir::new("bulkhead-fs")?;
    let ledger = root.path().join("ledger");
    let outside = root.path().join("outside");
    std::fs::create_dir_all(&ledger)?;
    std::fs::create_dir_all(&outside)?;
    std::fs::write(ledger.join("jan.csv"), "id,amount\n1,100\n")?;
    std::fs::write(outside.join("secret.txt"), "outside the sandbox")?;
    // Planted by someone with access to the volume: links pointing out.
    std::os::unix::fs::symlink(&outside, ledger.join("out"))?;
    std::os::unix::fs::symlink(outside.join("secret.txt"), ledger.join("secret-link"))?;
    let config = format!("[volumes]\nledger = {{ path = \"{}\", access = \"read-only\" }}", ledger.display());
    let host = TestHost::builder()
        .bundle_with_manifest("fs-probe", test_program("fs-probe"), PROBE)
        .config(&config)
        .start()
        .await?;
    Ok(Fixture { host, ledger, outside, _root: root })
}

#[tokio::test]
async fn the_session_workspace_persists_is_private_and_goes_with_the_session() -> anyhow::Result<()> {
    let f = fixture().await?;
    let api = f.host.agent();
    let a = api.session(json!({})).await?;
    let b = api.session(json!({})).await?;
    let r = probe(
        &api,
        &a,
        json!([{"op": "mkdir", "path": "/ws/reports"}, {"op": "write", "path": "/ws/reports/q1.txt", "data": "draft"}]),
    )
    .await?;
    assert!(r.iter().all(|(ok, _)| *ok), "{r:?}");
    let r =
        probe(&api, &a, json!([{"op": "read", "path": "/ws/reports/q1.txt"}, {"op": "list", "path": "/ws"}])).await?;
    assert_eq!(r, [(true, "draft".to_string()), (true, "reports".to_string())], "persists between calls");
    let r =
        probe(&api, &b, json!([{"op": "read", "path": "/ws/reports/q1.txt"}, {"op": "list", "path": "/ws"}])).await?;
    assert!(!r[0].0, "another session's workspace is unreachable");
    assert_eq!(r[1], (true, String::new()));
    let workspace = f.host.dir.join("data/workspaces").join(&a);
    assert!(workspace.join("reports/q1.txt").exists());
    // A link the guest plants must not redirect the host's deletion.
    probe(&api, &a, json!([{"op": "symlink", "path": "/ws/escape", "to": f.outside.display().to_string()}])).await?;
    assert_eq!(api.delete(&format!("/v1/sessions/{a}")).await?.0, StatusCode::NO_CONTENT);
    assert!(!workspace.exists(), "the workspace went with the session");
    assert!(f.outside.join("secret.txt").exists(), "deleting the workspace followed no link");
    Ok(())
}

#[tokio::test]
async fn a_read_only_volume_can_be_read_but_not_changed() -> anyhow::Result<()> {
    let f = fixture().await?;
    let api = f.host.agent();
    let sid = api.session(json!({})).await?;
    let r = probe(&api, &sid, json!([{"op": "read", "path": "/ledger/jan.csv"}, {"op": "list", "path": "/ledger"}]))
        .await?;
    assert_eq!(r[0], (true, "id,amount\n1,100\n".to_string()));
    assert!(r[1].0 && r[1].1.contains("jan.csv"));
    // The manifest asks read-write; the volume is read-only: read-only wins.
    let writes = json!([
        {"op": "write", "path": "/ledger/jan.csv", "data": "forged"},
        {"op": "append", "path": "/ledger/jan.csv", "data": "2,999\n"},
        {"op": "truncate", "path": "/ledger/jan.csv"},
        {"op": "write", "path": "/ledger/new.csv", "data": "x"},
        {"op": "remove", "path": "/ledger/jan.csv"},
        {"op": "rename", "path": "/ledger/jan.csv", "to": "/ledger/feb.csv"},
        {"op": "hardlink", "path": "/ledger/jan.csv", "to": "/ledger/jan-link.csv"},
        {"op": "hardlink", "path": "/ledger/jan.csv", "to": "/ws/jan.csv"},
        {"op": "mkdir", "path": "/ledger/sub"},
        {"op": "symlink", "path": "/ledger/link", "to": "jan.csv"},
    ]);
    let r = probe(&api, &sid, writes).await?;
    for (i, (ok, msg)) in r.iter().enumerate() {
        assert!(!ok, "write op {i} through a read-only mount succeeded: {msg}");
    }
    assert_eq!(std::fs::read_to_string(f.ledger.join("jan.csv"))?, "id,amount\n1,100\n", "the file is untouched");
    let mut names: Vec<_> =
        std::fs::read_dir(&f.ledger)?.map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["jan.csv", "out", "secret-link"]);
    Ok(())
}

#[tokio::test]
async fn path_and_symlink_escapes_are_refused() -> anyhow::Result<()> {
    let f = fixture().await?;
    let api = f.host.agent();
    let sid = api.session(json!({})).await?;
    let outside = f.outside.display().to_string();
    // Links the guest plants in its own workspace.
    let plant = json!([
        {"op": "symlink", "path": "/ws/abs", "to": outside},
        {"op": "symlink", "path": "/ws/up", "to": "../../../../../../../../"},
        {"op": "symlink", "path": "/ws/etc", "to": "/etc"},
    ]);
    probe(&api, &sid, plant).await?;
    let attempts = json!([
        {"op": "read", "path": "/etc/passwd"},
        {"op": "read", "path": "/ws/../../../../etc/passwd"},
        {"op": "read", "path": "/ledger/../outside/secret.txt"},
        {"op": "read", "path": "../../etc/passwd"},
        {"op": "read", "path": "/ledger/secret-link"},
        {"op": "read", "path": "/ledger/out/secret.txt"},
        {"op": "list", "path": "/ledger/out"},
        {"op": "list", "path": "/ledger/out/"},
        {"op": "list", "path": "/ledger/out/."},
        {"op": "read", "path": "/ws/abs/secret.txt"},
        {"op": "list", "path": "/ws/abs/"},
        {"op": "list", "path": "/ws/up"},
        {"op": "list", "path": "/ws/up/."},
        {"op": "read", "path": "/ws/etc/passwd"},
        {"op": "write", "path": "/ws/abs/planted.txt", "data": "x"},
        {"op": "write", "path": "/ws/up/planted.txt", "data": "x"},
        {"op": "list", "path": "/"},
    ]);
    let r = probe(&api, &sid, attempts.clone()).await?;
    for (i, (ok, msg)) in r.iter().enumerate() {
        assert!(!ok, "escape {} succeeded: {msg}", attempts[i]);
    }
    assert!(!f.outside.join("planted.txt").exists());
    Ok(())
}

#[tokio::test]
async fn a_volume_the_config_lacks_refuses_the_bundle() -> anyhow::Result<()> {
    let host = TestHost::builder()
        .bundle_with_manifest("fs-probe", test_program("fs-probe"), PROBE)
        .bundle("counter", example_tool("counter"))
        .start()
        .await?;
    let stderr = host.stderr();
    assert!(stderr.lines().any(|l| l.contains("fs-probe/tool.toml") && l.contains("volume \"ledger\"")), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn file_search_finds_lines_in_its_read_only_mount_only() -> anyhow::Result<()> {
    let scratch = ScratchDir::new("bulkhead-docs")?;
    let docs = scratch.path();
    std::fs::create_dir_all(docs.join("sub"))?;
    std::fs::write(docs.join("a.md"), "intro\nthe Needle is here\n")?;
    std::fs::write(docs.join("sub/b.txt"), "another needle\nnothing\n")?;
    let config = format!("[volumes]\ndocs = {{ path = \"{}\", access = \"read-only\" }}", docs.display());
    let host = TestHost::builder().bundle("file-search", example_tool("file-search")).config(&config).start().await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    let (_, call) = api.call(&sid, "file-search", json!({"query": "needle"})).await?;
    assert_eq!(call["status"], "succeeded", "{call}");
    let found: Vec<(String, u64)> = call["output"]["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["path"].as_str().unwrap().to_string(), m["line"].as_u64().unwrap()))
        .collect();
    assert_eq!(found, [("/docs/a.md".to_string(), 2), ("/docs/sub/b.txt".to_string(), 1)]);
    assert_eq!(call["output"]["files_searched"], 2);
    Ok(())
}
