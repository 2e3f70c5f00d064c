//! Loading bundles: every broken bundle is refused with a message naming
//! its file, and the host serves the others; compiled code is cached.

use bulkhead_tests::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn broken_bundles_are_refused_by_name_and_the_rest_still_serve() -> anyhow::Result<()> {
    let counter_wasm = std::fs::read(example_tool("counter").join("counter.wasm"))?;
    let good = "name = \"x\"\nversion = \"1\"\ncomponent = \"c.wasm\"\n";
    let builder = TestHost::builder()
        .bundle("counter", example_tool("counter"))
        .raw_bundle(
            "malformed",
            vec![("tool.toml", b"name = \"malformed\"\nversion = ".to_vec()), ("c.wasm", counter_wasm.clone())],
        )
        .raw_bundle(
            "unknown-key",
            vec![("tool.toml", format!("{good}colour = \"red\"").into_bytes()), ("c.wasm", counter_wasm.clone())],
        )
        .raw_bundle(
            "garbage",
            vec![
                ("tool.toml", good.replace("\"x\"", "\"garbage\"").into_bytes()),
                ("c.wasm", b"\0asm garbage bytes".to_vec()),
            ],
        )
        .raw_bundle("missing", vec![("tool.toml", good.replace("\"x\"", "\"missing\"").into_bytes())])
        .raw_bundle(
            "pinned",
            vec![
                (
                    "tool.toml",
                    format!("{}sha256 = \"{}\"", good.replace("\"x\"", "\"pinned\""), "0".repeat(64)).into_bytes(),
                ),
                ("c.wasm", counter_wasm),
            ],
        )
        .bundle("unknown-import", test_program("unknown-import"));
    let host = builder.start().await?;
    let stderr = host.stderr();
    let expectations = [
        ("malformed/tool.toml", "malformed"),
        ("unknown-key/tool.toml", "colour"),
        ("garbage/c.wasm", "not a valid WebAssembly component"),
        ("missing/c.wasm", "component not found"),
        ("pinned/c.wasm", "does not match the manifest's pin"),
        ("unknown-import/unknown_import.wasm", "test:backdoor/shell@0.1.0"),
    ];
    for (file, reason) in expectations {
        let line =
            stderr.lines().find(|l| l.contains(file)).unwrap_or_else(|| panic!("no report for {file} in:\n{stderr}"));
        assert!(line.starts_with("refused bundle:") && line.contains(reason), "{line}");
    }
    let api = host.agent();
    let (_, tools) = api.get("/v1/tools").await?;
    let names: Vec<&str> = tools["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["counter"]);
    let counter = &tools["tools"][0];
    assert!(counter["digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(counter["imports"].as_array().unwrap().iter().any(|i| i == "bulkhead:tool/state@0.1.0"));
    assert_eq!(counter["review"]["surface"][0], "may read and write its own state in each session");
    assert!(
        counter["review"]["ids"].as_array().unwrap().iter().any(|id| id == "BH050"),
        "unpinned: {}",
        counter["review"]
    );
    let sid = api.session(json!({})).await?;
    let (status, call) = api.call(&sid, "counter", json!({})).await?;
    assert_eq!((status, call["status"].as_str()), (StatusCode::OK, Some("succeeded")));

    let config = host.config_path();
    let (code, out, _) = run_cli(&["tools", "check", "--config", config.to_str().unwrap()])?;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("1 loaded, 6 refused"), "{out}");
    Ok(())
}

#[tokio::test]
async fn a_restart_loads_precompiled_tools_and_compiles_nothing() -> anyhow::Result<()> {
    let mut host = TestHost::builder()
        .bundle("counter", example_tool("counter"))
        .bundle("notes", example_tool("notes"))
        .start()
        .await?;
    assert_eq!(host.stderr().matches(", compiled)").count(), 2, "{}", host.stderr());
    host.restart().await?;
    assert_eq!(host.stderr().matches(", precompiled)").count(), 2, "{}", host.stderr());
    let api = host.agent();
    let sid = api.session(json!({})).await?;
    let (_, call) = api.call(&sid, "notes", json!({"op": "add", "text": "cached"})).await?;
    assert_eq!(call["output"]["count"], 1);
    Ok(())
}

#[tokio::test]
async fn bulkhead_run_calls_a_bundle_without_a_server() -> anyhow::Result<()> {
    let bundle = example_tool("counter");
    let bundle = bundle.to_str().unwrap();
    let state = ScratchDir::new("bulkhead-run-test")?;
    let state_arg = state.path().to_str().unwrap();
    for expected in [3, 6] {
        let (code, out, err) = run_cli(&["run", bundle, "--input", "{\"by\": 3}", "--state-dir", state_arg])?;
        assert_eq!(code, 0, "{out}{err}");
        let printed: serde_json::Value = serde_json::from_str(&out)?;
        assert_eq!(printed["output"]["value"], expected, "state persists in --state-dir");
        assert!(printed["usage"]["fuel"].as_u64().unwrap() > 0);
    }
    let (code, _, err) = run_cli(&["run", bundle, "--input", "{not json"])?;
    assert_eq!(code, 2);
    assert!(err.contains("--input is not JSON"), "{err}");
    let (code, out, _) = run_cli(&["run", bundle, "--input", "{\"by\": \"x\"}"])?;
    assert_ne!(code, 0, "{out}");
    Ok(())
}

/// A `bulkhead run` killed mid-way leaves its temporary folder behind; a
/// later run removes it once no process holds the folder's lock. A folder
/// whose run is alive, one whose lock is being taken right now (fresh),
/// and one not marked as a run's (a user's `--state-dir`) stay.
#[tokio::test]
async fn bulkhead_run_removes_the_folders_of_killed_runs() -> anyhow::Result<()> {
    use std::time::{Duration, SystemTime};
    let tmp = std::env::temp_dir();
    let runs = || -> std::io::Result<Vec<std::path::PathBuf>> {
        Ok(std::fs::read_dir(&tmp)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("temporary-bulkhead-run").is_file() && p.join("bulkhead.lock").is_file())
            .collect())
    };
    let spin = test_program("spin-forever");
    let mut killed = std::process::Command::new(binary())
        .args(["run", spin.to_str().unwrap(), "--input", "{}"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // Its own: the lock file holds the holder's pid (other tests run too),
    // and the lock is held (not a folder left with a reused pid).
    let pid = killed.id().to_string();
    let own = |d: &std::path::PathBuf| {
        let lock = d.join("bulkhead.lock");
        std::fs::read_to_string(&lock).is_ok_and(|p| p == pid)
            && std::fs::File::open(&lock).is_ok_and(|f| f.try_lock().is_err())
    };
    let left = eventually("the run to make its folder", || async { Ok(runs()?.into_iter().find(own)) }).await?;
    killed.kill()?;
    killed.wait()?;
    assert!(left.exists(), "kill -9 leaves the folder");

    let ten_minutes_ago = SystemTime::now() - Duration::from_secs(600);
    let lock_at = |dir: &std::path::Path| {
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("bulkhead.lock"))
    };
    lock_at(&left)?.set_modified(ten_minutes_ago)?;
    let control = |name: &str, marked: bool| -> anyhow::Result<(std::path::PathBuf, std::fs::File)> {
        let dir = tmp.join(format!("bulkhead-run-e2e-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        if marked {
            std::fs::write(dir.join("temporary-bulkhead-run"), b"")?;
        }
        let lock = lock_at(&dir)?;
        Ok((dir, lock))
    };
    let (alive, held) = control("alive", true)?;
    // Locked before it looks old: other tests' runs sweep too.
    held.lock()?;
    held.set_modified(ten_minutes_ago)?;
    let (fresh, _) = control("fresh", true)?;
    let (unmarked, free) = control("users", false)?;
    free.set_modified(ten_minutes_ago)?;

    let counter = example_tool("counter");
    let (code, out, err) = run_cli(&["run", counter.to_str().unwrap(), "--input", "{}"])?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(!left.exists(), "the killed run's folder is removed");
    for (dir, why) in [(&alive, "its run is alive"), (&fresh, "its lock is fresh"), (&unmarked, "not a run's")] {
        assert!(dir.exists(), "kept: {why}");
    }
    drop(held);
    for dir in [alive, fresh, unmarked] {
        std::fs::remove_dir_all(dir)?;
    }
    Ok(())
}
