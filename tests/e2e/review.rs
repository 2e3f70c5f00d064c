//! `bulkhead review` (issue 5): a table of real components with hand-written
//! manifests and the findings each must produce; baseline diffs; golden
//! outputs for every format; exit codes.

use bulkhead_tests::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A bundle folder with `component` from `source` and this manifest.
fn bundle(dir: &Path, name: &str, source: PathBuf, wasm: &str, manifest: &str) -> anyhow::Result<PathBuf> {
    let b = dir.join(name);
    std::fs::create_dir_all(&b)?;
    std::fs::copy(source.join(wasm), b.join(wasm))?;
    std::fs::write(b.join("tool.toml"), manifest)?;
    Ok(b)
}

fn digest(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

const LIMITS: &str = "[limits]\ntimeout_ms = 1000\nmemory_mb = 16\noutput_kb = 64\nstate_kb = 64\n";

fn review_json(path: &Path, extra: &[&str]) -> anyhow::Result<(i32, Value)> {
    let p = path.to_str().unwrap();
    let mut args = vec!["review", p, "--format", "json"];
    args.extend_from_slice(extra);
    let (code, out, err) = run_cli(&args)?;
    let doc: Value = serde_json::from_str(&out).map_err(|e| anyhow::anyhow!("{e}: {out}{err}"))?;
    Ok((code, doc))
}

fn ids(doc: &Value, key: &str) -> Vec<String> {
    doc["bundles"][0][key]
        .as_array()
        .map(|a| a.iter().map(|f| f["id"].as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn each_bundle_produces_exactly_its_findings() -> anyhow::Result<()> {
    let scratch = ScratchDir::new("bulkhead-review-table")?;
    let dir = scratch.path();
    let counter = example_tool("counter");
    let pin = digest(&counter.join("counter.wasm"));
    let exfil = test_program("exfil-probe");
    // (bundle, component source, wasm file, manifest, finding ids, exit code)
    type Case = (&'static str, PathBuf, &'static str, String, Vec<&'static str>, i32);
    let table: Vec<Case> = vec![
        (
            "well-scoped",
            counter.clone(),
            "counter.wasm",
            format!("name = \"counter\"\nversion = \"1\"\ncomponent = \"counter.wasm\"\nsha256 = \"{pin}\"\n{LIMITS}"),
            vec![],
            0,
        ),
        (
            "unpinned-defaults",
            counter.clone(),
            "counter.wasm",
            "name = \"counter\"\nversion = \"1\"\ncomponent = \"counter.wasm\"\n[limits]\nmemory_mb = 512\n"
                .to_string(),
            vec!["BH041", "BH050", "BH040", "BH040", "BH040"],
            0,
        ),
        (
            "wrong-pin",
            counter.clone(),
            "counter.wasm",
            format!(
                "name = \"counter\"\nversion = \"1\"\ncomponent = \"counter.wasm\"\nsha256 = \"{}\"\n{LIMITS}",
                "a".repeat(64)
            ),
            vec!["BH051"],
            1,
        ),
        (
            "dead-grants",
            counter.clone(),
            "counter.wasm",
            format!(
                "name = \"counter\"\nversion = \"1\"\ncomponent = \"counter.wasm\"\nsha256 = \"{pin}\"\n[grants]\nnetwork = [\"api.example.com\"]\nsecrets = [\"X\"]\nhistory = true\n{LIMITS}"
            ),
            vec!["BH004", "BH004", "BH004"],
            0,
        ),
        (
            "exfiltration",
            exfil.clone(),
            "exfil_probe.wasm",
            format!(
                "name = \"exfil\"\nversion = \"1\"\ncomponent = \"exfil_probe.wasm\"\nsha256 = \"{}\"\n[grants]\nnetwork = [\"*.example.com\", \"10.0.0.5:80\", \"169.254.169.254\"]\nsecrets = [\"API_TOKEN\"]\nhistory = true\n{LIMITS}",
                digest(&exfil.join("exfil_probe.wasm"))
            ),
            vec!["BH012", "BH012", "BH030", "BH010", "BH011", "BH011", "BH032", "BH013"],
            1,
        ),
        (
            "not-granted",
            exfil.clone(),
            "exfil_probe.wasm",
            format!(
                "name = \"exfil\"\nversion = \"1\"\ncomponent = \"exfil_probe.wasm\"\nsha256 = \"{}\"\n{LIMITS}",
                digest(&exfil.join("exfil_probe.wasm"))
            ),
            vec!["BH002", "BH003"],
            1,
        ),
        (
            "unknown-import",
            test_program("unknown-import"),
            "unknown_import.wasm",
            format!(
                "name = \"x\"\nversion = \"1\"\ncomponent = \"unknown_import.wasm\"\nsha256 = \"{}\"\n{LIMITS}",
                digest(&test_program("unknown-import").join("unknown_import.wasm"))
            ),
            vec!["BH001"],
            1,
        ),
        (
            "rw-volume",
            test_program("fs-probe"),
            "fs_probe.wasm",
            format!(
                "name = \"fs\"\nversion = \"1\"\ncomponent = \"fs_probe.wasm\"\nsha256 = \"{}\"\n[grants]\nfiles = [{{ path = \"/ledger\", source = \"volume:ledger\", access = \"read-write\" }}, {{ path = \"/ws\", source = \"session\", access = \"read-write\" }}]\n{LIMITS}",
                digest(&test_program("fs-probe").join("fs_probe.wasm"))
            ),
            vec!["BH021", "BH020", "BH032"],
            1,
        ),
    ];
    for (name, source, wasm, manifest, expected, code) in table {
        let b = bundle(dir, name, source, wasm, &manifest)?;
        let (got_code, doc) = review_json(&b, &[])?;
        assert_eq!(ids(&doc, "findings"), expected, "{name}: {}", doc["bundles"][0]["findings"]);
        assert_eq!(got_code, code, "{name}");
    }
    // The surface of the exfiltration bundle says it in plain words.
    let (_, doc) = review_json(&dir.join("exfiltration"), &[])?;
    let surface: Vec<&str> =
        doc["bundles"][0]["surface"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert!(surface.contains(&"may read secret API_TOKEN"), "{surface:?}");
    assert!(
        surface.contains(&"may send HTTP requests to any subdomain of example.com on port 443 (https) or 80 (http)"),
        "{surface:?}"
    );
    assert!(surface.contains(&"may read the session's conversation history"));
    // --fail-on moves the bar.
    let (code, _) = review_json(&dir.join("exfiltration"), &["--fail-on", "critical"])?;
    assert_eq!(code, 0);
    let (code, _) = review_json(&dir.join("unpinned-defaults"), &["--fail-on", "low"])?;
    assert_eq!(code, 1);
    Ok(())
}

#[test]
fn a_baseline_diff_ranks_widening_first() -> anyhow::Result<()> {
    let scratch = ScratchDir::new("bulkhead-review-baseline")?;
    let dir = scratch.path();
    let exfil = test_program("exfil-probe");
    let old = bundle(
        dir,
        "old",
        exfil.clone(),
        "exfil_probe.wasm",
        &format!(
            "name = \"exfil\"\nversion = \"1\"\ncomponent = \"exfil_probe.wasm\"\n[grants]\nnetwork = [\"api.example.com\"]\n[approval]\nrequired = true\n{LIMITS}"
        ),
    )?;
    let new = bundle(
        dir,
        "new",
        exfil,
        "exfil_probe.wasm",
        "name = \"exfil\"\nversion = \"2\"\ncomponent = \"exfil_probe.wasm\"\n[grants]\nnetwork = [\"api.example.com\", \"upload.example.net\"]\nsecrets = [\"API_TOKEN\"]\n[limits]\ntimeout_ms = 5000\nmemory_mb = 16\noutput_kb = 64\nstate_kb = 64\n",
    )?;
    let (code, doc) = review_json(&new, &["--baseline", old.to_str().unwrap()])?;
    assert_eq!(code, 1);
    assert_eq!(ids(&doc, "changes"), ["BH110", "BH110", "BH130", "BH120"]);
    let changes = doc["bundles"][0]["changes"].as_array().unwrap();
    assert_eq!(changes[0]["severity"], "high");
    assert!(changes.iter().any(|c| c["message"] == "network grant \"upload.example.net\" added"));
    assert!(changes.iter().any(|c| c["message"] == "limits.timeout_ms raised from 1000 to 5000"));
    let (code, same) = review_json(&old, &["--baseline", old.to_str().unwrap(), "--fail-on", "critical"])?;
    assert_eq!((code, ids(&same, "changes").len()), (0, 0), "no change, no finding");
    Ok(())
}

#[test]
fn corrupt_bundles_exit_2_with_the_reason() -> anyhow::Result<()> {
    let scratch = ScratchDir::new("bulkhead-review-corrupt")?;
    let dir = scratch.path();
    let garbage = dir.join("garbage");
    std::fs::create_dir_all(&garbage)?;
    std::fs::write(garbage.join("tool.toml"), "name = \"g\"\nversion = \"1\"\ncomponent = \"g.wasm\"\n")?;
    std::fs::write(garbage.join("g.wasm"), b"\0asm\x0d\0\x01\0 not really")?;
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken)?;
    std::fs::write(broken.join("tool.toml"), "name = \"b\"\nversion = ")?;
    for (b, reason) in [(&garbage, "not a WebAssembly component"), (&broken, "tool.toml")] {
        let (code, _, err) = run_cli(&["review", b.to_str().unwrap()])?;
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(reason), "{err}");
    }
    let (code, _, err) = run_cli(&["review", dir.join("nothing-here").to_str().unwrap()])?;
    assert_eq!(code, 2, "{err}");
    Ok(())
}

/// Golden outputs of every format for two bundles. Digests and paths are
/// normalized; `UPDATE_GOLDEN=1` rewrites the files after a deliberate change.
#[test]
fn every_format_matches_its_golden_output() -> anyhow::Result<()> {
    let scratch = ScratchDir::new("bulkhead-review-golden")?;
    let dir = scratch.path();
    let counter = example_tool("counter");
    let pin = digest(&counter.join("counter.wasm"));
    bundle(
        dir,
        "a-counter",
        counter,
        "counter.wasm",
        &format!("name = \"counter\"\nversion = \"1\"\ncomponent = \"counter.wasm\"\nsha256 = \"{pin}\"\n{LIMITS}"),
    )?;
    bundle(
        dir,
        "b-exfil",
        test_program("exfil-probe"),
        "exfil_probe.wasm",
        &format!(
            "name = \"exfil\"\nversion = \"1\"\ncomponent = \"exfil_probe.wasm\"\n[grants]\nnetwork = [\"*.example.com\"]\nsecrets = [\"API_TOKEN\"]\n{LIMITS}"
        ),
    )?;
    let golden_dir = repo_root().join("tests/golden");
    let dir_text = dir.to_str().unwrap().to_string();
    for format in ["text", "json", "markdown", "sarif"] {
        let (_, out, _) = run_cli(&["review", &dir_text, "--format", format])?;
        let normalized = normalize(&out, &dir_text);
        let file = golden_dir.join(format!("review.{format}"));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&file, &normalized)?;
        }
        let expected = std::fs::read_to_string(&file)?;
        assert_eq!(normalized, expected, "{format} output changed; rerun with UPDATE_GOLDEN=1 if intended");
    }
    Ok(())
}

fn normalize(out: &str, dir: &str) -> String {
    let s = out.replace(dir, "<dir>");
    // sha256 digests and 64-hex pins vary with the toolchain that built the guests.
    let mut result = String::with_capacity(s.len());
    let bytes: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let run = bytes[i..].iter().take_while(|c| c.is_ascii_hexdigit()).count();
        if run == 64 {
            result.push_str("<sha256>");
            i += 64;
        } else if run > 0 {
            result.extend(&bytes[i..i + run]);
            i += run;
        } else {
            result.push(bytes[i]);
            i += 1;
        }
    }
    result
}
