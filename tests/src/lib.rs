//! The end-to-end test harness: starts the real `bulkhead` binary on a
//! fresh data folder with chosen tool bundles, and talks to it over HTTP.
//!
//! - [`HostBuilder`] lays out a temporary folder: `bulkhead.toml`, `data/`,
//!   `tools/<bundle>/` (copied from `guest-tools/` or `guests/`, optionally
//!   with another manifest).
//! - [`TestHost`] runs `bulkhead serve` there; it can be killed with SIGKILL
//!   and restarted on the same folder.
//! - [`Api`] is an HTTP client acting as one principal; [`Api::open`] gives
//!   a [`Session`] handle that calls tools in it.
//! - [`eventually`] waits on a condition the host reaches in the background
//!   (a call shown running, a row purged) instead of a fixed sleep.
//!
//! The chain a test reads: `TestHost::builder().bundle(..).principal(..)
//! .start()` → `host.api(token).open(json!({}))` → `session.call(tool, input)`.
//!
//! The binary is `target/release/bulkhead` next to the test executable
//! (`scripts/test` builds it), or `$BULKHEAD_BIN`.

pub mod idp;
pub mod load;
pub mod otlp;
pub mod postgres;
pub mod registry;
pub mod tls;

use anyhow::{Context, Result, bail};
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Tokens of the principals every test config defines.
pub const AGENT: &str = "test-agent-token-0000000001";
pub const OTHER_AGENT: &str = "test-agent-token-0000000002";
pub const APPROVER: &str = "test-approver-token-00000001";
pub const ADMIN: &str = "test-admin-token-000000000001";
/// Has both roles: may approve others' calls, never its own.
pub const SELF_APPROVER: &str = "test-self-approver-token-0001";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

/// The `bulkhead` binary under test.
pub fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("BULKHEAD_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/e2e-… (a test) or target/<profile>/loadgen (a
    // bin) → target/<profile>/bulkhead
    let dir = exe.parent().expect("target dir");
    let bin = [dir.join("bulkhead"), dir.parent().expect("target dir").join("bulkhead")]
        .into_iter()
        .find(|b| b.exists())
        .unwrap_or_else(|| dir.join("bulkhead"));
    assert!(bin.exists(), "{} is missing: build it first (scripts/test does)", bin.display());
    bin
}

/// Where a bundle comes from: an example tool or a test program.
pub fn example_tool(name: &str) -> PathBuf {
    repo_root().join("guest-tools").join(name)
}

pub fn test_program(name: &str) -> PathBuf {
    repo_root().join("tests/guests").join(name)
}

/// A bundle manifest for tool `name` in component `wasm`, with `extra`
/// TOML (limits, grants) after it.
pub fn manifest(name: &str, wasm: &str, extra: &str) -> String {
    format!("name = \"{name}\"\nversion = \"0.0.0\"\ncomponent = \"{wasm}\"\n{extra}\n")
}

/// The backend the suite runs against: `BULKHEAD_TEST_BACKEND=postgres`
/// gives every host that configures no `[storage]` of its own a database
/// of its own on the harness's PostgreSQL server ([`postgres::shared`]);
/// otherwise (default `sqlite`) hosts use their data folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn backend() -> Backend {
    match std::env::var("BULKHEAD_TEST_BACKEND").as_deref() {
        Ok("postgres") => Backend::Postgres,
        _ => Backend::Sqlite,
    }
}

/// For a test of SQLite's own files (its bytes, its WAL, its size cap):
/// false, with a line saying so, when the suite runs on PostgreSQL.
pub fn sqlite_only(test: &str) -> bool {
    let runs = backend() == Backend::Sqlite;
    if !runs {
        eprintln!("{test}: SQLite-specific, skipped on the postgres backend");
    }
    runs
}

/// The variable the test hosts read their PostgreSQL URL from.
pub const PG_URL_ENV: &str = "BULKHEAD_TEST_PG_URL";

/// A new database on the shared server, from sync code (a runtime of its own).
pub fn new_test_database() -> Result<String> {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!("t{}_{}", std::process::id(), COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async { postgres::shared().await?.create_database(&name).await })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("creating a test database panicked"))?
}

/// The `[storage]` table of a host on the PostgreSQL database in
/// [`PG_URL_ENV`], with a short lease (tests wait for leases to expire).
pub fn postgres_storage(lease_seconds: u64) -> String {
    format!("\n[storage]\nbackend = \"postgres\"\nurl_env = \"{PG_URL_ENV}\"\nlease_seconds = {lease_seconds}\n")
}

/// Hex SHA-256 of bytes.
pub fn sha256_hex_of(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn unique_dir(prefix: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    std::env::temp_dir().join(format!("{prefix}-{}-{n}-{nanos}", std::process::id()))
}

/// A directory of the test's own (volumes, files outside the sandbox), removed
/// when dropped unless the test failed, like the host's data dir.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(prefix: &str) -> std::io::Result<Self> {
        let dir = unique_dir(prefix);
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

struct Bundle {
    name: String,
    source: PathBuf,
    manifest: Option<String>,
    /// Extra files written into the bundle: (relative path, bytes).
    files: Vec<(String, Vec<u8>)>,
}

type Setup = Box<dyn FnOnce(&Path) -> std::io::Result<()>>;

#[derive(Default)]
pub struct HostBuilder {
    bundles: Vec<Bundle>,
    listen: Option<String>,
    config: String,
    setup: Vec<Setup>,
    /// The PostgreSQL database of the host, if it uses one.
    pg_url: Option<String>,
    /// Variables of the host's environment (kept in the folder for restarts).
    env: Vec<(String, String)>,
}

impl HostBuilder {
    /// A bundle folder `name` copied from `source` (its tool.toml and .wasm).
    pub fn bundle(mut self, name: &str, source: PathBuf) -> Self {
        self.bundles.push(Bundle { name: name.into(), source, manifest: None, files: vec![] });
        self
    }

    /// A bundle from `source` whose tool.toml is replaced by `manifest`.
    pub fn bundle_with_manifest(mut self, name: &str, source: PathBuf, manifest: &str) -> Self {
        self.bundles.push(Bundle { name: name.into(), source, manifest: Some(manifest.into()), files: vec![] });
        self
    }

    /// A bundle made only of the given files (for broken bundles).
    pub fn raw_bundle(mut self, name: &str, files: Vec<(&str, Vec<u8>)>) -> Self {
        let files = files.into_iter().map(|(p, b)| (p.to_string(), b)).collect();
        self.bundles.push(Bundle { name: name.into(), source: PathBuf::new(), manifest: None, files });
        self
    }

    /// A variable in the host's environment (e.g. registry credentials).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// A fixed address (default: a free port chosen by the OS at each start).
    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = Some(addr.into());
        self
    }

    /// The host stores its data in the PostgreSQL database at `url` (shared
    /// with other hosts given the same URL), with a lease of `lease_seconds`.
    pub fn postgres(mut self, url: &str, lease_seconds: u64) -> Self {
        self.pg_url = Some(url.to_string());
        self.config.push_str(&postgres_storage(lease_seconds));
        self
    }

    /// Extra TOML appended to the config (e.g. a `[limits]` table).
    pub fn config(mut self, toml: &str) -> Self {
        self.config.push_str(toml);
        self.config.push('\n');
        self
    }

    /// One more principal, with `token` and its policy as `[[principals]]`
    /// lines (`roles = [...]`, `tools = [...]`, `approval_required`, grants).
    pub fn principal(mut self, name: &str, token: &str, policy: &str) -> Self {
        let hash = sha256_hex(token);
        self.config.push_str(&format!("\n[[principals]]\nname = \"{name}\"\ntoken_sha256 = \"{hash}\"\n{policy}\n"));
        self
    }

    /// Runs `f` on the test folder after it is laid out (e.g. to write a
    /// secret file the config names).
    pub fn before_start(mut self, f: impl FnOnce(&Path) -> std::io::Result<()> + 'static) -> Self {
        self.setup.push(Box::new(f));
        self
    }

    /// Writes the folder without starting a host.
    pub fn layout(mut self) -> Result<PathBuf> {
        if self.pg_url.is_none() && backend() == Backend::Postgres && !self.config.contains("[storage]") {
            self = self.postgres(&new_test_database()?, 2);
        }
        let dir = unique_dir("bulkhead-test");
        let tools = dir.join("tools");
        std::fs::create_dir_all(&tools)?;
        for b in &self.bundles {
            let dest = tools.join(&b.name);
            std::fs::create_dir_all(&dest)?;
            if !b.source.as_os_str().is_empty() {
                for entry in std::fs::read_dir(&b.source).with_context(|| format!("{}", b.source.display()))? {
                    let path = entry?.path();
                    let keep = path.extension().is_some_and(|e| e == "wasm")
                        || path.file_name().is_some_and(|n| n == "tool.toml");
                    if keep {
                        std::fs::copy(&path, dest.join(path.file_name().unwrap()))?;
                    }
                }
            }
            if let Some(m) = &b.manifest {
                std::fs::write(dest.join("tool.toml"), m)?;
            }
            for (rel, bytes) in &b.files {
                std::fs::write(dest.join(rel), bytes)?;
            }
        }
        let principals = [
            ("agent", AGENT, r#"["agent"]"#, r#"["*"]"#),
            ("other-agent", OTHER_AGENT, r#"["agent"]"#, r#"["*"]"#),
            ("approver", APPROVER, r#"["approver"]"#, "[]"),
            ("admin", ADMIN, r#"["admin"]"#, r#"["*"]"#),
            ("self-approver", SELF_APPROVER, r#"["agent", "approver"]"#, r#"["*"]"#),
        ];
        let listen = self.listen.as_deref().unwrap_or("127.0.0.1:0");
        let mut config = format!("listen = \"{listen}\"\ndata_dir = \"data\"\ntools_dir = \"tools\"\n");
        config.push_str(&self.config);
        for (name, token, roles, tools) in principals {
            let hash = sha256_hex(token);
            config.push_str(&format!(
                "\n[[principals]]\nname = \"{name}\"\ntoken_sha256 = \"{hash}\"\nroles = {roles}\ntools = {tools}\n"
            ));
        }
        std::fs::write(dir.join("bulkhead.toml"), config)?;
        if let Some(url) = &self.pg_url {
            std::fs::write(dir.join(PG_URL_FILE), url)?;
        }
        if !self.env.is_empty() {
            let lines: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            std::fs::write(dir.join(ENV_FILE), lines.join("\n"))?;
        }
        for f in self.setup {
            f(&dir)?;
        }
        Ok(dir)
    }

    pub async fn start(self) -> Result<TestHost> {
        let dir = self.layout()?;
        TestHost::start_in(dir).await
    }
}

/// Where a laid-out folder keeps its host's PostgreSQL URL (for `spawn`).
const PG_URL_FILE: &str = "pg_url";
/// And the rest of its host's environment, `KEY=VALUE` lines.
const ENV_FILE: &str = "host.env";

pub struct TestHost {
    pub dir: PathBuf,
    child: Option<Child>,
    pub base: String,
    /// Everything the host wrote to stderr so far (load reports, errors).
    pub stderr_path: PathBuf,
}

impl TestHost {
    pub fn builder() -> HostBuilder {
        HostBuilder::default()
    }

    pub async fn start_in(dir: PathBuf) -> Result<TestHost> {
        let mut host = TestHost { stderr_path: dir.join("stderr.log"), dir, child: None, base: String::new() };
        host.spawn().await?;
        Ok(host)
    }

    async fn spawn(&mut self) -> Result<()> {
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&self.stderr_path)?;
        let mut command = Command::new(binary());
        // Quiet unless the test's environment says otherwise.
        command.env("RUST_LOG", "warn");
        if let Ok(url) = std::fs::read_to_string(self.dir.join(PG_URL_FILE)) {
            command.env(PG_URL_ENV, url);
        }
        for line in std::fs::read_to_string(self.dir.join(ENV_FILE)).unwrap_or_default().lines() {
            if let Some((k, v)) = line.split_once('=') {
                command.env(k, v);
            }
        }
        let mut child = command
            .arg("serve")
            .arg("--config")
            .arg(self.dir.join("bulkhead.toml"))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("cannot start bulkhead")?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("bulkhead listening on ") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        self.child = Some(child);
        let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60))).await?;
        match addr {
            Ok(addr) => self.base = addr,
            Err(_) => bail!("the host did not start; stderr:\n{}", self.stderr()),
        }
        Ok(())
    }

    /// The host's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the host with SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL, then a new host on the same folder.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.spawn().await
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join("data/bulkhead.sqlite3")
    }

    /// One value of a query on the host's database, whichever backend it
    /// uses (`$1` is `param`): a count as a string, or a text column.
    pub async fn db_value(&self, sql: &str, param: &str) -> Result<Option<String>> {
        match std::fs::read_to_string(self.dir.join(PG_URL_FILE)) {
            Ok(url) => {
                let client = postgres::connect(&url).await?;
                let rows = client.query(&format!("SELECT ({sql})::text"), &[&param]).await?;
                Ok(rows.first().and_then(|r| r.get::<_, Option<String>>(0)))
            }
            Err(_) => {
                let db = rusqlite::Connection::open(self.db_path())?;
                let value: Option<rusqlite::types::Value> = db
                    .query_row(&sql.replace("$1", "?1"), [param], |r| r.get(0))
                    .map(Some)
                    .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })?;
                Ok(value.and_then(|v| match v {
                    rusqlite::types::Value::Integer(n) => Some(n.to_string()),
                    rusqlite::types::Value::Text(t) => Some(t),
                    _ => None,
                }))
            }
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("bulkhead.toml")
    }

    pub fn api(&self, token: &str) -> Api {
        Api { base: self.base.clone(), token: Some(token.into()), http: reqwest::Client::new() }
    }

    pub fn agent(&self) -> Api {
        self.api(AGENT)
    }

    pub fn anonymous(&self) -> Api {
        Api { base: self.base.clone(), token: None, http: reqwest::Client::new() }
    }

    /// The value of one unlabelled series of `/metrics`.
    pub async fn metric(&self, name: &str) -> Result<u64> {
        let text = self.anonymous().request(reqwest::Method::GET, "/metrics").send().await?.text().await?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .with_context(|| format!("no metric {name} in {text}"))
    }
}

/// Polls `check` until it answers `Some`, for at most 30 s: for what the
/// host does in the background. Fails naming `what` it waited for.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("waited 30 s for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.kill9();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// An HTTP client acting as one principal. Answers are (status, JSON body).
#[derive(Clone)]
pub struct Api {
    pub base: String,
    token: Option<String>,
    pub http: reqwest::Client,
}

pub type Reply = (StatusCode, Value);

impl Api {
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    pub async fn send(req: reqwest::RequestBuilder) -> Result<Reply> {
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))?
        };
        Ok((status, body))
    }

    pub async fn get(&self, path: &str) -> Result<Reply> {
        Api::send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Reply> {
        Api::send(self.request(reqwest::Method::POST, path).json(&body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Reply> {
        Api::send(self.request(reqwest::Method::DELETE, path)).await
    }

    /// Creates a session (asserting 201) and returns a handle to it.
    pub async fn open(&self, body: Value) -> Result<Session> {
        Ok(Session { id: self.session(body).await?, api: self.clone() })
    }

    /// Creates a session (asserting 201) and returns its id.
    pub async fn session(&self, body: Value) -> Result<String> {
        let (status, s) = self.post("/v1/sessions", body).await?;
        if status != StatusCode::CREATED {
            bail!("create session: {status} {s}");
        }
        Ok(s["id"].as_str().context("session id")?.to_string())
    }

    pub async fn call(&self, sid: &str, tool: &str, input: Value) -> Result<Reply> {
        self.post(&format!("/v1/sessions/{sid}/calls"), serde_json::json!({ "tool": tool, "input": input })).await
    }

    /// A tool's state in a session, values decoded as UTF-8.
    pub async fn state(&self, sid: &str, tool: &str) -> Result<std::collections::BTreeMap<String, String>> {
        use base64::Engine as _;
        let (status, body) = self.get(&format!("/v1/sessions/{sid}/state/{tool}")).await?;
        if status != StatusCode::OK {
            bail!("state: {status} {body}");
        }
        let entries = body["entries"].as_object().context("entries")?;
        Ok(entries
            .iter()
            .map(|(k, v)| {
                let bytes =
                    base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or("")).unwrap_or_default();
                (k.clone(), String::from_utf8_lossy(&bytes).into_owned())
            })
            .collect())
    }

    /// The audit event kinds of a session, in order.
    pub async fn audit_kinds(&self, sid: &str) -> Result<Vec<String>> {
        let (_, body) = self.get(&format!("/v1/sessions/{sid}/audit?limit=1000")).await?;
        Ok(body["events"]
            .as_array()
            .context("events")?
            .iter()
            .map(|e| e["kind"].as_str().unwrap_or("").to_string())
            .collect())
    }
}

/// A session as seen by the principal that opened it.
#[derive(Clone)]
pub struct Session {
    pub id: String,
    pub api: Api,
}

impl Session {
    pub async fn call(&self, tool: &str, input: Value) -> Result<Reply> {
        self.api.call(&self.id, tool, input).await
    }

    /// `GET /v1/sessions/{sid}{rest}`.
    pub async fn get(&self, rest: &str) -> Result<Reply> {
        self.api.get(&format!("/v1/sessions/{}{rest}", self.id)).await
    }

    /// The ids of the session's calls with `status` (e.g. `running`).
    pub async fn calls_with(&self, status: &str) -> Result<Vec<String>> {
        let (code, list) = self.get(&format!("/calls?status={status}&limit=100")).await?;
        if code != StatusCode::OK {
            bail!("list calls: {code} {list}");
        }
        Ok(list["calls"]
            .as_array()
            .context("calls")?
            .iter()
            .filter_map(|c| c["id"].as_str().map(String::from))
            .collect())
    }
}

/// A port that was free a moment ago (for a host restarted on one address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Runs the binary with arguments; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> Result<(i32, String, String)> {
    run_cli_env(args, &[])
}

/// [`run_cli`] with variables added to the command's environment.
pub fn run_cli_env(args: &[&str], env: &[(&str, &str)]) -> Result<(i32, String, String)> {
    let mut command = Command::new(binary());
    command.envs(env.iter().copied());
    // A host folder's PostgreSQL URL goes with its config.
    if let Some(at) = args.iter().position(|a| *a == "--config")
        && let Some(config) = args.get(at + 1)
        && let Some(dir) = Path::new(config).parent()
        && let Ok(url) = std::fs::read_to_string(dir.join(PG_URL_FILE))
    {
        command.env(PG_URL_ENV, url);
    }
    let out = command.args(args).env("RUST_LOG", "warn").output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A tiny HTTP/1.1 server on loopback for outbound-HTTP tests. Routes:
/// `/hello` (200), `/redirect-metadata` (302 to 169.254.169.254),
/// `/big` (20 MiB), `/echo` (the request head as the body), else 404.
pub struct TestHttpServer {
    pub port: u16,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TestHttpServer {
    pub async fn start() -> Result<TestHttpServer> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head).into_owned();
                    let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let (status, extra, body): (&str, String, Vec<u8>) = match path.as_str() {
                        "/hello" => ("200 OK", String::new(), b"hello from the test server".to_vec()),
                        "/redirect-metadata" => {
                            ("302 Found", "Location: http://169.254.169.254/latest/meta-data/\r\n".into(), Vec::new())
                        }
                        "/big" => ("200 OK", String::new(), vec![b'b'; 20 << 20]),
                        "/echo" => ("200 OK", String::new(), text.clone().into_bytes()),
                        _ => ("404 Not Found", String::new(), b"no".to_vec()),
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
                        body.len()
                    );
                    let _ = sock.write_all(response.as_bytes()).await;
                    let _ = sock.write_all(&body).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Ok(TestHttpServer { port, hits, task })
    }

    /// Connections accepted so far.
    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for TestHttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every file under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) {
                hits.push(path);
            }
        }
    }
    hits
}
