//! A real OCI registry for the tests: Debian's `docker-registry` (the CNCF
//! Distribution registry; `.ci/run` installs it), on a free port of
//! 127.0.0.1, storing blobs in a temporary folder.
//!
//! Cleanup: the registry runs under a `sh` watchdog that waits for EOF on a
//! pipe only the test process writes. Dropping the handle closes the pipe;
//! so does the test process's end, however it ends (panic, SIGKILL). The
//! watchdog then stops the registry and removes the folder.

use anyhow::{Context, Result, bail};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Registry {
    pub port: u16,
    dir: PathBuf,
    watchdog: Child,
}

const BINARY: &str = "/usr/bin/docker-registry";

impl Registry {
    pub async fn start() -> Result<Registry> {
        Registry::start_with(None).await
    }

    /// A registry that answers only `user` with `password` (htpasswd, bcrypt).
    pub async fn start_with_login(user: &str, password: &str) -> Result<Registry> {
        Registry::start_with(Some((user, password))).await
    }

    async fn start_with(login: Option<(&str, &str)>) -> Result<Registry> {
        if !Path::new(BINARY).exists() {
            bail!("{BINARY} is missing: install Debian's docker-registry (.ci/run does)");
        }
        let dir = super::unique_dir("bulkhead-registry");
        std::fs::create_dir_all(dir.join("blobs"))?;
        let port = super::free_port();
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("blobs").display()
        );
        let auth = match login {
            None => String::new(),
            Some((user, password)) => {
                let hash = bcrypt::hash(password, 4).context("bcrypt")?;
                std::fs::write(dir.join("htpasswd"), format!("{user}:{hash}\n"))?;
                format!("auth:\n  htpasswd:\n    realm: bulkhead-test\n    path: {}\n", dir.join("htpasswd").display())
            }
        };
        std::fs::write(dir.join("config.yml"), config + &auth)?;
        let script = r#"dir=$1; "$2" serve "$dir/config.yml" >"$dir/log" 2>&1 & pid=$!; read -r _; kill $pid; wait $pid; rm -rf "$dir""#;
        let watchdog = Command::new("sh")
            .args(["-c", script, "watchdog"])
            .arg(&dir)
            .arg(BINARY)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("cannot start the registry's watchdog (sh)")?;
        let registry = Registry { port, dir, watchdog };
        let url = format!("http://127.0.0.1:{port}/v2/");
        for _ in 0..100 {
            // Up: 200, or 401 when it asks for a login.
            if reqwest::get(&url).await.is_ok_and(|r| r.status().is_success() || r.status() == 401) {
                return Ok(registry);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(registry.dir.join("log")).unwrap_or_default();
        bail!("the registry did not answer on {url}; its log:\n{log}")
    }

    /// `127.0.0.1:PORT/<repo>` as an OCI reference's prefix.
    pub fn reference(&self, rest: &str) -> String {
        format!("127.0.0.1:{}/{rest}", self.port)
    }

    /// The stored file of blob `digest` (`sha256:...`), to tamper with.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir.join(format!("blobs/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }
}

impl Registry {
    /// Pushes blobs and a hand-made OCI manifest to `repo:tag` through the
    /// distribution API directly (for artifacts `bulkhead tools push` would
    /// never make); returns the manifest's digest.
    pub async fn push_raw(
        &self,
        repo: &str,
        tag: &str,
        blobs: &[Vec<u8>],
        manifest: &serde_json::Value,
    ) -> Result<String> {
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{}/v2/{repo}", self.port);
        for blob in blobs {
            let digest = format!("sha256:{}", super::sha256_hex_of(blob));
            let start = http.post(format!("{base}/blobs/uploads/")).send().await?;
            let location = start.headers().get("location").context("upload location")?.to_str()?.to_string();
            let url = if location.starts_with("http") {
                location
            } else {
                format!("http://127.0.0.1:{}{location}", self.port)
            };
            let sep = if url.contains('?') { '&' } else { '?' };
            let put = http.put(format!("{url}{sep}digest={digest}")).body(blob.clone()).send().await?;
            if !put.status().is_success() {
                bail!("blob upload: {} {}", put.status(), put.text().await?);
            }
        }
        let body = serde_json::to_vec(manifest)?;
        let put = http
            .put(format!("{base}/manifests/{tag}"))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(body.clone())
            .send()
            .await?;
        if !put.status().is_success() {
            bail!("manifest upload: {} {}", put.status(), put.text().await?);
        }
        Ok(format!("sha256:{}", super::sha256_hex_of(&body)))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // EOF on the pipe: the watchdog stops the registry and cleans up.
        drop(self.watchdog.stdin.take());
        let _ = self.watchdog.wait();
    }
}
