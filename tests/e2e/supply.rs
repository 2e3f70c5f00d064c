//! The tool supply chain (issue 27): signed bundles, OCI artifacts in a
//! real registry, pinned digests, and reloading the tool set under load.

use bulkhead_tests::registry::Registry;
use bulkhead_tests::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

fn cli(args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    run_cli(args)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A key pair made by `bulkhead tools keygen` in `dir`: (private, public).
fn keygen(dir: &Path, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let key = dir.join(name);
    let (code, out, err) = cli(&["tools", "keygen", "--output", s(&key)])?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.trim().starts_with("SHA256:"), "{out}");
    Ok((key.clone(), dir.join(format!("{name}.pub"))))
}

fn sign(bundle: &Path, key: &Path) -> anyhow::Result<()> {
    let (code, out, err) = cli(&["tools", "sign", s(bundle), "--key", s(key)])?;
    anyhow::ensure!(code == 0, "sign: {out}{err}");
    Ok(())
}

/// A copy of an example tool's bundle (manifest and component) in `dir`.
fn bundle_copy(dir: &Path, tool: &str, manifest: Option<&str>) -> anyhow::Result<PathBuf> {
    let to = dir.join(tool);
    std::fs::create_dir_all(&to)?;
    for entry in std::fs::read_dir(example_tool(tool))? {
        let p = entry?.path();
        if p.extension().is_some_and(|e| e == "wasm") || p.file_name().is_some_and(|n| n == "tool.toml") {
            std::fs::copy(&p, to.join(p.file_name().unwrap()))?;
        }
    }
    if let Some(m) = manifest {
        std::fs::write(to.join("tool.toml"), m)?;
    }
    Ok(to)
}

async fn tools(host: &TestHost) -> anyhow::Result<Vec<Value>> {
    let (status, body) = host.api(ADMIN).get("/v1/tools").await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    Ok(body["tools"].as_array().cloned().unwrap_or_default())
}

fn named<'a>(tools: &'a [Value], name: &str) -> Option<&'a Value> {
    tools.iter().find(|t| t["name"] == name)
}

#[tokio::test]
async fn require_signature_loads_only_bundles_signed_by_a_trusted_key_over_their_bytes() -> anyhow::Result<()> {
    let keys = ScratchDir::new("bulkhead-keys")?;
    let (release, release_pub) = keygen(keys.path(), "release")?;
    let (stranger, _) = keygen(keys.path(), "stranger")?;
    let dir = TestHost::builder()
        .bundle("counter", example_tool("counter"))
        .bundle("notes", example_tool("notes"))
        .bundle("file-search", example_tool("file-search"))
        .bundle("audit-report", example_tool("audit-report"))
        .config(&format!("[tools]\nrequire_signature = true\ntrusted_keys = [\"{}\"]\n", s(&release_pub)))
        .config("[volumes]\ndocs = { path = \"/tmp\", access = \"read-only\" }")
        .layout()?;
    let tools_dir = dir.join("tools");
    sign(&tools_dir.join("counter"), &release)?;
    // notes: unsigned. file-search: signed by a key nobody trusts.
    sign(&tools_dir.join("file-search"), &stranger)?;
    // audit-report: signed, then its manifest changed (a grant, a version):
    // the signature is over the older manifest.
    sign(&tools_dir.join("audit-report"), &release)?;
    let manifest = tools_dir.join("audit-report/tool.toml");
    let text = std::fs::read_to_string(&manifest)?;
    std::fs::write(&manifest, text.replace("history = true", "history = true\nenv = [\"TZ\"]"))?;

    let host = TestHost::start_in(dir).await?;
    let list = tools(&host).await?;
    let names: Vec<&str> = list.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["counter"], "only the bundle signed by the trusted key over its bytes loads");
    let counter = named(&list, "counter").unwrap();
    assert_eq!(counter["signature"]["status"], "verified", "{counter}");
    assert!(counter["signature"]["key"].as_str().unwrap().starts_with("SHA256:"));
    let err = host.stderr();
    for (bundle, why) in [
        ("notes", "is not signed"),
        ("file-search", "which is not among [tools] trusted_keys"),
        ("audit-report", "does not cover this manifest and component"),
    ] {
        assert!(
            err.lines().any(|l| l.contains("refused bundle") && l.contains(bundle) && l.contains(why)),
            "{bundle}: {why}\n{err}"
        );
    }
    // The signed tool works.
    let sid = host.agent().session(json!({})).await?;
    let (status, call) = host.agent().call(&sid, "counter", json!({})).await?;
    assert_eq!((status, &call["status"]), (StatusCode::OK, &json!("succeeded")), "{call}");

    // `tools verify` says the same, with exit codes.
    let (code, out, _) = cli(&["tools", "verify", s(&tools_dir.join("counter")), "--key", s(&release_pub)])?;
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = cli(&["tools", "verify", s(&tools_dir.join("audit-report")), "--key", s(&release_pub)])?;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("NOT verified"), "{out}");
    Ok(())
}

#[tokio::test]
async fn require_signature_without_trusted_keys_is_a_config_error() -> anyhow::Result<()> {
    let dir = TestHost::builder().config("[tools]\nrequire_signature = true\n").layout()?;
    let (code, out, err) = cli(&["tools", "check", "--config", s(&dir.join("bulkhead.toml"))])?;
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("require_signature = true needs at least one tools.trusted_keys"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test]
async fn bundles_travel_through_a_registry_pinned_by_digest_and_checked_byte_for_byte() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let work = ScratchDir::new("bulkhead-oci")?;
    let (key, key_pub) = keygen(work.path(), "release")?;
    let bundle = bundle_copy(work.path(), "counter", None)?;
    sign(&bundle, &key)?;
    let reference = registry.reference("tools/counter:0.1.0");
    let (code, out, err) = cli(&["tools", "push", s(&bundle), &reference])?;
    assert_eq!(code, 0, "{out}{err}");
    let digest = out.trim().to_string();
    assert!(digest.starts_with("sha256:") && digest.len() == 71, "{out}");

    // Pull by tag and by digest: the same files, signature included.
    for (what, r) in [("tag", reference.clone()), ("digest", registry.reference(&format!("tools/counter@{digest}")))] {
        let out_dir = work.path().join(format!("pulled-{what}"));
        let (code, out, err) = cli(&["tools", "pull", &r, "--output", s(&out_dir)])?;
        assert_eq!(code, 0, "{what}: {out}{err}");
        assert_eq!(out.trim(), digest, "{what}");
        for file in ["tool.toml", "counter.wasm", "tool.sig"] {
            assert_eq!(std::fs::read(out_dir.join(file))?, std::fs::read(bundle.join(file))?, "{what}: {file}");
        }
        let review: Value = serde_json::from_slice(&std::fs::read(out_dir.join("review.json"))?)?;
        assert!(review.to_string().contains("counter"), "the review report travels with the bundle");
    }
    let (code, out, _) = cli(&["tools", "verify", &reference, "--key", s(&key_pub)])?;
    assert_eq!(code, 0, "{out}");

    // A host serving it from the registry, signatures required.
    let source = |d: &str| {
        format!(
            "[tools]\nrequire_signature = true\ntrusted_keys = [\"{}\"]\n[[tools.sources]]\noci = \"{reference}\"\ndigest = \"{d}\"\n",
            s(&key_pub)
        )
    };
    let mut host = TestHost::builder().config(&source(&digest)).start().await?;
    let list = tools(&host).await?;
    let counter = named(&list, "counter").expect("served from the registry");
    assert_eq!(counter["source"]["kind"], "oci");
    assert_eq!(counter["source"]["digest"], digest.as_str());
    assert_eq!(counter["signature"]["status"], "verified");
    let sid = host.agent().session(json!({})).await?;
    let (_, call) = host.agent().call(&sid, "counter", json!({})).await?;
    assert_eq!(call["status"], "succeeded", "{call}");

    // A byte changed in the cache is caught when the bundle is opened and
    // the bundle is fetched again from the registry.
    let cached = host.dir.join("data/oci").join(digest.trim_start_matches("sha256:")).join("counter.wasm");
    let good = std::fs::read(&cached)?;
    let mut bad = good.clone();
    *bad.last_mut().unwrap() ^= 1;
    std::fs::write(&cached, &bad)?;
    host.restart().await?;
    assert!(named(&tools(&host).await?, "counter").is_some());
    assert_eq!(std::fs::read(&cached)?, good, "the tampered cache was replaced by the registry's bytes");

    // The tag moves to another digest (a new version pushed under it): the
    // pin refuses it.
    let v2 = bundle_copy(
        &work.path().join("v2"),
        "counter",
        Some(&std::fs::read_to_string(bundle.join("tool.toml"))?.replace("0.1.0", "0.2.0")),
    )?;
    sign(&v2, &key)?;
    let (code, out, err) = cli(&["tools", "push", s(&v2), &reference])?;
    assert_eq!(code, 0, "{out}{err}");
    let v2_digest = out.trim().to_string();
    let moved = TestHost::builder().config(&source(&digest)).start().await?;
    assert!(named(&tools(&moved).await?, "counter").is_none());
    let err = moved.stderr();
    assert!(err.contains("the tag moved") && err.contains(&digest), "{err}");

    // The operator reviews v2 and pins it: a reload serves it, and the
    // pull of v1 no version serves any more is removed from the cache.
    let config = std::fs::read_to_string(host.config_path())?;
    std::fs::write(host.config_path(), config.replace(&digest, &v2_digest))?;
    let (status, report) = host.api(ADMIN).post("/v1/tools/reload", json!({})).await?;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["updated"][0]["new"]["version"], "0.2.0", "{report}");
    assert_eq!(named(&tools(&host).await?, "counter").unwrap()["source"]["digest"], v2_digest.as_str());
    let cache = host.dir.join("data/oci");
    assert!(!cache.join(digest.trim_start_matches("sha256:")).exists(), "the unused pull is gone");
    assert!(cache.join(v2_digest.trim_start_matches("sha256:")).exists());

    // A tampered blob in the registry is refused on pull.
    let (code, out, err) = cli(&["tools", "push", s(&bundle), &registry.reference("tools/tampered:1")])?;
    assert_eq!(code, 0, "{out}{err}");
    let component_digest = format!("sha256:{}", sha256_hex_of(&std::fs::read(bundle.join("counter.wasm"))?));
    let blob = registry.blob_file(&component_digest);
    let mut bytes = std::fs::read(&blob)?;
    bytes[100] ^= 0xff;
    std::fs::write(&blob, &bytes)?;
    let (code, out, err) =
        cli(&["tools", "pull", &registry.reference("tools/tampered:1"), "--output", s(&work.path().join("t"))])?;
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("does not match") || err.contains("digest"), "{err}");
    assert!(!work.path().join("t").exists(), "nothing written from a tampered artifact");
    Ok(())
}

/// The signature is OpenSSH's: a bundle signed with `ssh-keygen -Y sign`
/// over `bulkhead tools statement` verifies, and `ssh-keygen -Y verify`
/// accepts what `bulkhead tools sign` wrote.
#[tokio::test]
async fn signatures_interoperate_with_openssh() -> anyhow::Result<()> {
    use std::process::{Command, Stdio};
    let work = ScratchDir::new("bulkhead-ssh")?;
    let bundle = bundle_copy(work.path(), "counter", None)?;
    let key = work.path().join("id_ed25519");
    let ok = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "ops", "-f", s(&key)]).status()?;
    assert!(ok.success());
    let (code, statement, err) = cli(&["tools", "statement", s(&bundle)])?;
    assert_eq!(code, 0, "{err}");
    assert!(statement.starts_with("bulkhead tool signature v1\nname: counter\n"), "{statement}");
    let mut signer = Command::new("ssh-keygen")
        .args(["-Y", "sign", "-f", s(&key), "-n", "bulkhead-tool"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    std::io::Write::write_all(signer.stdin.as_mut().unwrap(), statement.as_bytes())?;
    let out = signer.wait_with_output()?;
    assert!(out.status.success());
    std::fs::write(bundle.join("tool.sig"), &out.stdout)?;
    let public = work.path().join("id_ed25519.pub");
    let (code, out, _) = cli(&["tools", "verify", s(&bundle), "--key", s(&public)])?;
    assert_eq!(code, 0, "ssh-keygen's signature verifies: {out}");

    // And the other way round.
    let (key2, pub2) = keygen(work.path(), "release")?;
    sign(&bundle, &key2)?;
    let allowed = work.path().join("allowed_signers");
    std::fs::write(&allowed, format!("release {}", std::fs::read_to_string(&pub2)?))?;
    let mut verify = Command::new("ssh-keygen")
        .args(["-Y", "verify", "-f", s(&allowed), "-I", "release", "-n", "bulkhead-tool", "-s"])
        .arg(bundle.join("tool.sig"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(verify.stdin.as_mut().unwrap(), statement.as_bytes())?;
    let out = verify.wait_with_output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// Registry credentials come from the environment only: without them a
/// registry that asks for a login refuses the push and the host's pull;
/// with them both work.
#[tokio::test]
async fn registry_credentials_come_from_the_environment() -> anyhow::Result<()> {
    let registry = Registry::start_with_login("ci", "s3cret-pass").await?;
    let work = ScratchDir::new("bulkhead-login")?;
    let bundle = bundle_copy(work.path(), "counter", None)?;
    let reference = registry.reference("tools/counter:1");
    let (code, _, err) = cli(&["tools", "push", s(&bundle), &reference])?;
    assert_eq!(code, 2, "refused without credentials");
    assert!(err.contains("401") || err.contains("Not authorized"), "{err}");
    let creds = [("BULKHEAD_REGISTRY_USERNAME", "ci"), ("BULKHEAD_REGISTRY_PASSWORD", "s3cret-pass")];
    let (code, out, err) = run_cli_env(&["tools", "push", s(&bundle), &reference], &creds)?;
    assert_eq!(code, 0, "{out}{err}");
    let digest = out.trim().to_string();
    let source = format!("[[tools.sources]]\noci = \"{reference}\"\ndigest = \"{digest}\"\n");

    let without = TestHost::builder().config(&source).start().await?;
    assert!(named(&tools(&without).await?, "counter").is_none());
    assert!(without.stderr().contains("Not authorized") || without.stderr().contains("401"), "{}", without.stderr());
    let with =
        TestHost::builder().config(&source).env(creds[0].0, creds[0].1).env(creds[1].0, creds[1].1).start().await?;
    assert!(named(&tools(&with).await?, "counter").is_some(), "{}", with.stderr());
    // The password is in no file of the data folder.
    assert!(files_containing(&with.dir.join("data"), b"s3cret-pass").is_empty());
    Ok(())
}

/// Artifacts `bulkhead tools push` would never make, pushed by hand: each
/// is refused on pull, naming why, and nothing lands outside the cache.
#[tokio::test]
async fn hostile_artifacts_are_refused_on_pull() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let work = ScratchDir::new("bulkhead-hostile")?;
    let wasm = std::fs::read(example_tool("counter").join("counter.wasm"))?;
    let desc = |media: &str, bytes: &[u8], title: &str| {
        json!({ "mediaType": media, "digest": format!("sha256:{}", sha256_hex_of(bytes)), "size": bytes.len(),
                "annotations": { "org.opencontainers.image.title": title } })
    };
    let config = br#"{"name":"counter","version":"6.6.6"}"#.to_vec();
    let manifest_for = |config_type: &str, layers: Vec<Value>| {
        json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": { "mediaType": config_type, "digest": format!("sha256:{}", sha256_hex_of(&config)), "size": config.len() },
                "layers": layers })
    };
    const CONFIG: &str = "application/vnd.bulkhead.tool.config.v1+json";
    const MANIFEST: &str = "application/vnd.bulkhead.tool.manifest.v1+toml";
    const COMPONENT: &str = "application/vnd.bulkhead.tool.component.v1+wasm";
    let escaping = b"name = \"counter\"\nversion = \"6.6.6\"\ncomponent = \"../../escaped.wasm\"\n".to_vec();
    let good_toml = b"name = \"counter\"\nversion = \"6.6.6\"\ncomponent = \"counter.wasm\"\n".to_vec();
    let extra = b"#!/bin/sh\necho surprise\n".to_vec();
    let cases: Vec<(&str, Vec<Vec<u8>>, Value, &str)> = vec![
        (
            "an ordinary image",
            vec![config.clone(), good_toml.clone(), wasm.clone()],
            manifest_for(
                "application/vnd.oci.image.config.v1+json",
                vec![desc(MANIFEST, &good_toml, "tool.toml"), desc(COMPONENT, &wasm, "counter.wasm")],
            ),
            "not a Bulkhead tool artifact",
        ),
        (
            "a component path out of the bundle",
            vec![config.clone(), escaping.clone(), wasm.clone()],
            manifest_for(CONFIG, vec![desc(MANIFEST, &escaping, "tool.toml"), desc(COMPONENT, &wasm, "x.wasm")]),
            "must be a plain relative path",
        ),
        (
            "a layer of another kind",
            vec![config.clone(), good_toml.clone(), wasm.clone(), extra.clone()],
            manifest_for(
                CONFIG,
                vec![
                    desc(MANIFEST, &good_toml, "tool.toml"),
                    desc(COMPONENT, &wasm, "counter.wasm"),
                    desc("application/x-sh", &extra, "run.sh"),
                ],
            ),
            "layers of unknown media types",
        ),
        (
            "no component",
            vec![config.clone(), good_toml.clone()],
            manifest_for(CONFIG, vec![desc(MANIFEST, &good_toml, "tool.toml")]),
            "no application/vnd.bulkhead.tool.component.v1+wasm layer",
        ),
    ];
    for (i, (what, blobs, manifest, why)) in cases.into_iter().enumerate() {
        registry.push_raw("tools/hostile", &format!("t{i}"), &blobs, &manifest).await?;
        let out_dir = work.path().join(format!("out{i}"));
        let (code, out, err) =
            cli(&["tools", "pull", &registry.reference(&format!("tools/hostile:t{i}")), "--output", s(&out_dir)])?;
        assert_eq!(code, 2, "{what}: {out}{err}");
        assert!(err.contains(why), "{what}: {err}");
        assert!(!out_dir.exists(), "{what}: nothing written");
    }
    assert!(!std::env::temp_dir().join("escaped.wasm").exists());
    Ok(())
}
