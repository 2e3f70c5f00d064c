//! Issue 26: the console at `/ui/` in a real headless browser (Debian's
//! Chromium driven by Playwright for Python, `tests/console/browser.py`),
//! against the real binary; plus the protocol edges a browser hides.

use anyhow::{Result, bail};
use bulkhead_tests::*;
use reqwest::StatusCode;
use std::path::PathBuf;

const GATED_COUNTER: &str =
    "name = \"gated-counter\"\nversion = \"0.1.0\"\ncomponent = \"counter.wasm\"\n[approval]\nrequired = true\n";

/// Playwright's Python: `$BULKHEAD_CONSOLE_PYTHON`, or the virtual
/// environment `scripts/test` makes in `target/console-venv`.
fn python() -> PathBuf {
    std::env::var("BULKHEAD_CONSOLE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target/console-venv/bin/python"))
}

async fn console_host() -> Result<TestHost> {
    TestHost::builder()
        .bundle("counter", example_tool("counter"))
        .bundle_with_manifest("gated", example_tool("counter"), GATED_COUNTER)
        .start()
        .await
}

#[tokio::test]
async fn the_console_in_a_real_browser() -> Result<()> {
    if backend() != Backend::Sqlite {
        // The pages read through the same service on both backends; one
        // browser run is enough.
        eprintln!("the_console_in_a_real_browser: run once, on the SQLite pass");
        return Ok(());
    }
    let host = console_host().await?;
    let mut cmd = std::process::Command::new(python());
    cmd.arg(repo_root().join("tests/console/browser.py"))
        .env("BULKHEAD_URL", &host.base)
        .env("BULKHEAD_AGENT_TOKEN", AGENT)
        .env("BULKHEAD_OTHER_TOKEN", OTHER_AGENT)
        .env("BULKHEAD_APPROVER_TOKEN", APPROVER)
        .env("BULKHEAD_SELF_TOKEN", SELF_APPROVER)
        .env("BULKHEAD_ADMIN_TOKEN", ADMIN);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.contains("all ok") {
        bail!("browser.py failed:\n{stdout}\n{}\nhost log:\n{}", String::from_utf8_lossy(&out.stderr), host.stderr());
    }
    assert!(!host.stderr().contains("panicked"), "{}", host.stderr());
    Ok(())
}

#[tokio::test]
async fn console_forms_refuse_a_missing_or_foreign_csrf_token() -> Result<()> {
    let host = console_host().await?;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let url = |p: &str| format!("{}{p}", host.base);
    // Sign-in needs the form's own cookie and field to match.
    let r = client.post(url("/ui/signin")).form(&[("token", APPROVER), ("csrf", "x")]).send().await?;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = client
        .post(url("/ui/signin"))
        .header("cookie", "bulkhead_signin=abc")
        .form(&[("token", APPROVER), ("csrf", "abc")])
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let set: Vec<_> = r.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    let console = set.iter().find(|c| c.starts_with("bulkhead_console=")).expect("a console cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age="] {
        assert!(console.contains(flag), "{console} lacks {flag}");
    }
    assert!(!console.contains("Secure"), "no Secure flag over plain HTTP");
    let cookie = console.split(';').next().unwrap().to_string();
    // A signed-in POST without the sign-in's token decides nothing.
    let r = client.post(url("/ui/signout")).header("cookie", &cookie).form(&[("csrf", "wrong")]).send().await?;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = client.post(url("/ui/signout")).header("cookie", &cookie).body("not a form").send().await?;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "a body that is no form is no CSRF token");
    assert!(r.headers()["content-type"].to_str()?.starts_with("text/html"));
    let r = client.get(url("/ui/approvals")).header("cookie", &cookie).send().await?;
    assert_eq!(r.status(), StatusCode::OK, "still signed in");
    // Behind a TLS proxy the cookie is Secure.
    let r = client
        .post(url("/ui/signin"))
        .header("cookie", "bulkhead_signin=abc")
        .header("x-forwarded-proto", "https")
        .form(&[("token", APPROVER), ("csrf", "abc")])
        .send()
        .await?;
    let secure = r.headers().get_all("set-cookie").iter().any(|v| v.to_str().unwrap().contains("; Secure"));
    assert!(secure, "behind TLS the cookies are Secure");
    // A forged cookie is no sign-in.
    let r = client.get(url("/ui/sessions")).header("cookie", "bulkhead_console=00ff").send().await?;
    assert_eq!((r.status(), r.headers()["location"].to_str()?), (StatusCode::SEE_OTHER, "/ui/signin"));
    Ok(())
}
