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

/// A host whose workspaces hold 1 MiB and `max_files` entries, with
/// `/ledger` a read-write volume (volumes have no quota).
async fn quota_fixture(max_files: u64) -> anyhow::Result<(TestHost, std::path::PathBuf, ScratchDir)> {
    let root = ScratchDir::new("bulkhead-quota")?;
    let ledger = root.path().join("ledger");
    std::fs::create_dir_all(&ledger)?;
    let config = format!(
        "[limits]\nmax_workspace_mb = 1\nmax_workspace_files = {max_files}\n[volumes]\nledger = {{ path = \"{}\", access = \"read-write\" }}",
        ledger.display()
    );
    let host = TestHost::builder()
        .bundle_with_manifest("fs-probe", test_program("fs-probe"), PROBE)
        .config(&config)
        .start()
        .await?;
    Ok((host, ledger, root))
}

/// Bytes of the regular files under `dir`.
fn bytes_under(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| if e.file_type().unwrap().is_dir() { bytes_under(&e.path()) } else { e.metadata().unwrap().len() })
        .sum()
}

#[tokio::test]
async fn a_workspace_cannot_grow_past_its_quota() -> anyhow::Result<()> {
    let (host, _ledger, _root) = quota_fixture(8).await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    let r = probe(&api, &sid, json!([{"op": "fill", "path": "/ws/a", "n": 600_000}])).await?;
    assert_eq!(r, [(true, "600000".to_string())], "within the quota a write works");

    // Through a stream the guest's libc reports an I/O error.
    let r = probe(&api, &sid, json!([{"op": "fill", "path": "/ws/b", "n": 2_000_000}])).await?;
    let written: u64 = r[0].1.split(' ').next().unwrap().parse()?;
    let left = (1 << 20) - 600_000 - written;
    assert!(!r[0].0 && r[0].1.contains("I/O error") && left < 64 * 1024, "{:?}", r[0]);

    // Up to the last byte, then every way to grow fails, as on a full disk.
    let grow = json!([
        {"op": "pwrite", "path": "/ws/a", "data": "x", "n": 600_000 + left - 1},
        {"op": "pwrite", "path": "/ws/sparse", "data": "x", "n": 1u64 << 30},
        {"op": "set_len", "path": "/ws/a", "n": 2u64 << 20},
        {"op": "append", "path": "/ws/a", "data": "x"},
        {"op": "symlink", "path": "/ws/link", "to": "target"},
        {"op": "mkdir", "path": "/ws/many"},
        // Made again: refused as existing, so they take no entry.
        {"op": "mkdir", "path": "/ws/many"},
        {"op": "mkdir", "path": "/ws/many"},
        {"op": "files", "path": "/ws/many", "n": 10},
    ]);
    let (_, call) = api.call(&sid, "fs-probe", json!({ "ops": grow })).await?;
    assert_eq!(call["status"], "succeeded", "the tool sees errors, the call goes on: {call}");
    let r: Vec<(bool, String)> = call["output"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["ok"].as_bool().unwrap(), r["data"].as_str().or(r["error"].as_str()).unwrap_or("").to_string()))
        .collect();
    assert_eq!(r[0], (true, "1".to_string()), "the last byte fits");
    assert!(!r[1].0 && r[1].1.contains("insufficient-space"), "a write far past the end: {:?}", r[1]);
    assert!(!r[2].0 && r[2].1.contains("No space left on device"), "set_len: {:?}", r[2]);
    assert!(!r[3].0, "append: {:?}", r[3]);
    assert!(!r[4].0 && r[4].1.contains("insufficient-space"), "a link's target takes bytes: {:?}", r[4]);
    assert!(r[5..8].iter().all(|(ok, _)| *ok), "{r:?}");
    // a, b, sparse and many are 4 of the 8 entries; the refused link and
    // the repeated folders took none.
    assert_eq!(r[8], (false, "4 files, then No space left on device (os error 51)".to_string()));
    let warned =
        call["logs"].as_array().unwrap().iter().any(|l| l["message"].as_str().unwrap().contains("workspace is full"));
    assert!(warned, "the call's logs say why: {}", call["logs"]);
    let workspace = host.dir.join("data/workspaces").join(&sid);
    let used = bytes_under(&workspace);
    assert_eq!(used, 1 << 20, "full to the byte, nothing past it");
    let (_, events) = api.get(&format!("/v1/sessions/{sid}/audit?limit=1000")).await?;
    let denials: Vec<&Value> =
        events["events"].as_array().unwrap().iter().filter(|e| e["kind"] == "capability_denied").collect();
    assert_eq!(denials.len(), 2, "one denial for each call that hit the quota: {denials:?}");
    assert_eq!(denials[0]["data"]["capability"], "files");
    assert_eq!(denials[0]["data"]["detail"]["reason"], "workspace quota");

    // What a call deletes is free again for the next one.
    probe(&api, &sid, json!([{"op": "remove", "path": "/ws/b"}, {"op": "remove", "path": "/ws/sparse"}])).await?;
    let r = probe(&api, &sid, json!([{"op": "fill", "path": "/ws/c", "n": 300_000}])).await?;
    assert_eq!(r, [(true, "300000".to_string())]);
    // Another session has a quota of its own.
    let other = api.session(json!({})).await?;
    let r = probe(&api, &other, json!([{"op": "fill", "path": "/ws/a", "n": 1_000_000}])).await?;
    assert_eq!(r, [(true, "1000000".to_string())]);
    Ok(())
}

#[tokio::test]
async fn moving_files_into_a_workspace_from_a_volume_is_cross_device() -> anyhow::Result<()> {
    let (host, ledger, _root) = quota_fixture(8).await?;
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    let r = probe(
        &api,
        &sid,
        json!([
            {"op": "fill", "path": "/ledger/big", "n": 3_000_000},
            {"op": "rename", "path": "/ledger/big", "to": "/ws/big"},
            {"op": "hardlink", "path": "/ledger/big", "to": "/ws/big"},
            {"op": "write", "path": "/ws/x", "data": "x"},
            {"op": "rename", "path": "/ws/x", "to": "/ws/y"},
            {"op": "rename", "path": "/ws/y", "to": "/ledger/y"},
        ]),
    )
    .await?;
    assert_eq!(r[0], (true, "3000000".to_string()), "a volume is the operator's to size");
    for (i, (ok, error)) in r[1..3].iter().enumerate() {
        assert!(!ok && error.contains("Cross-device link"), "op {}: {error}", i + 1);
    }
    assert!(r[3..].iter().all(|(ok, _)| *ok), "moves within or out of a workspace work: {r:?}");
    assert_eq!(std::fs::read_to_string(ledger.join("y"))?, "x");
    assert!(!host.dir.join("data/workspaces").join(&sid).join("big").exists());
    Ok(())
}

#[tokio::test]
async fn folders_nested_past_path_max_do_not_hide_bytes_from_the_quota() -> anyhow::Result<()> {
    let (mut host, _ledger, _root) = quota_fixture(100).await?;
    let sid = host.agent().session(json!({})).await?;
    // 20 folders of 250-byte names: the file's path is over 5,000 bytes.
    let nest = json!([{"op": "nest", "path": "/ws/n", "data": "h".repeat(800_000), "n": 20}]);
    let r = probe(&host.agent(), &sid, nest).await?;
    assert_eq!(r, [(true, "800000".to_string())]);
    // After a restart the count is a new walk of the folder.
    host.restart().await?;
    let r = probe(&host.agent(), &sid, json!([{"op": "fill", "path": "/ws/more", "n": 800_000}])).await?;
    assert!(!r[0].0, "the walk found the bytes 20 folders down: {r:?}");
    Ok(())
}
