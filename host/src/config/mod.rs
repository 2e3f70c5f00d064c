//! The operator's configuration (`bulkhead.toml`, contract §3) and the
//! embedded defaults used when `bulkhead serve` runs without one.
//!
//! Unknown keys are errors that name the key; paths are relative to the
//! config file's folder.

mod auth;
mod pricing;
mod telemetry;

pub use auth::{AuthConfig, DEFAULT_ALGORITHMS, IssuerConfig, IssuerPolicy, PrincipalConfig, Role};
pub use pricing::PricingConfig;
pub use telemetry::TelemetryConfig;

use crate::policy::{Access, PrivateRanges};
use auth::validate_principal;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
pub const DEFAULT_DATA_DIR: &str = "./bulkhead-data";
/// Without a config file the host serves the example tools of the checkout.
pub const DEFAULT_TOOLS_DIR: &str = "./guest-tools";

#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

/// Ceilings for every tool; a manifest may ask for less, never more.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock time of one call, so a looping tool cannot hold a slot.
    pub max_timeout_ms: u64,
    /// Linear memory of one instance, so a tool cannot exhaust host memory.
    pub max_memory_mb: u64,
    /// Size of one call's output, which is stored and sent back.
    pub max_output_kb: u64,
    /// Persistent state of one tool in one session (keys + values).
    pub max_state_kb: u64,
    /// HTTP request bodies, checked before parsing.
    pub max_request_kb: u64,
    /// Calls running at once in this host; beyond it callers get 429.
    pub max_concurrent_calls: u32,
    /// MiB in one session's workspace (file contents and link targets), so
    /// a tool with a read-write workspace cannot fill the host's disk.
    pub max_workspace_mb: u64,
    /// Files, folders and links in one session's workspace; each also
    /// takes a few KiB of disk the MiB do not count. A count of the
    /// workspace walks them all (~3 µs each), so the ceiling is low.
    pub max_workspace_files: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_timeout_ms: 30_000,
            max_memory_mb: 256,
            max_output_kb: 1024,
            max_state_kb: 4096,
            max_request_kb: 1024,
            max_concurrent_calls: 64,
            max_workspace_mb: 1024,
            max_workspace_files: 10_000,
        }
    }
}

impl Limits {
    /// Hard bounds on the ceilings themselves: past them the host would
    /// reserve absurd memory or hold calls for hours.
    fn validate(&self) -> Result<(), String> {
        let checks: [(&str, u64, u64); 8] = [
            ("limits.max_timeout_ms", self.max_timeout_ms, 3_600_000),
            ("limits.max_memory_mb", self.max_memory_mb, 4096),
            ("limits.max_output_kb", self.max_output_kb, 64 * 1024),
            ("limits.max_state_kb", self.max_state_kb, 1024 * 1024),
            ("limits.max_request_kb", self.max_request_kb, 64 * 1024),
            ("limits.max_concurrent_calls", self.max_concurrent_calls.into(), 4096),
            ("limits.max_workspace_mb", self.max_workspace_mb, 1024 * 1024),
            ("limits.max_workspace_files", self.max_workspace_files, 100_000),
        ];
        for (key, value, max) in checks {
            if value == 0 || value > max {
                return Err(format!("{key} = {value} is out of range (1..={max})"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// CIDRs tools may reach although they are not globally routable.
    pub allow_private: PrivateRanges,
    /// PEM files of CA certificates trusted for HTTPS besides the built-in
    /// web PKI roots (an operator's private CA); relative to the config
    /// file. Read at start: a missing file, or one without a certificate,
    /// stops the host.
    pub extra_ca_files: Vec<PathBuf>,
}

/// Where a secret's value comes from: the host's environment or a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    pub env: Option<String>,
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    pub path: PathBuf,
    pub access: Access,
}

/// How commits reach the disk (an extension of contract §3).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `normal` (default: WAL, survives a crash of the process) or `full`
    /// (fsync on every commit: also survives power loss).
    #[serde(default)]
    pub durability: DurabilityMode,
    /// The largest the database file may grow, in MiB; absent, no cap. At
    /// the cap writes answer 503 `storage_unavailable` and change nothing;
    /// reads go on, and pages freed by deleting sessions are reused. A
    /// database already larger is not shrunk: it stays at its size.
    pub max_size_mb: Option<u64>,
    /// `sqlite` (default: one file in the data folder, one host) or
    /// `postgres` (one database shared by several hosts).
    #[serde(default)]
    pub backend: Backend,
    /// PostgreSQL: the environment variable holding the connection URL
    /// (`postgres://user:password@host:port/db`), so a password never sits
    /// in this file or in the database. Required with `postgres`.
    pub url_env: Option<String>,
    /// PostgreSQL: connections for reads and writes (default 16); as many
    /// again hold the turns of running calls, so a host opens up to twice.
    pub pool_size: Option<u32>,
    /// PostgreSQL: the longest one statement may run (default 5000 ms).
    pub statement_timeout_ms: Option<u64>,
    /// PostgreSQL: a host whose heartbeat is older than this is gone, and
    /// the calls it left `running` end `interrupted` (default 10 s).
    pub lease_seconds: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Sqlite,
    Postgres,
}

impl StorageConfig {
    pub const DEFAULT_POOL_SIZE: u32 = 16;
    pub const DEFAULT_STATEMENT_TIMEOUT_MS: u64 = 5_000;
    pub const DEFAULT_LEASE_SECONDS: u64 = 10;

    fn validate(&self) -> Result<(), String> {
        if let Some(mb) = self.max_size_mb
            && !(1..=MAX_STORAGE_MB).contains(&mb)
        {
            return Err(format!("storage.max_size_mb must be 1 to {MAX_STORAGE_MB}"));
        }
        let postgres_only = [
            ("url_env", self.url_env.is_some()),
            ("pool_size", self.pool_size.is_some()),
            ("statement_timeout_ms", self.statement_timeout_ms.is_some()),
            ("lease_seconds", self.lease_seconds.is_some()),
        ];
        match self.backend {
            Backend::Sqlite => {
                if let Some((key, _)) = postgres_only.iter().find(|(_, set)| *set) {
                    return Err(format!("storage.{key} applies to backend = \"postgres\" only"));
                }
            }
            Backend::Postgres => {
                match self.url_env.as_deref() {
                    None => return Err("storage.url_env is required with backend = \"postgres\"".into()),
                    Some(var) if !crate::util::is_env_name(var) => {
                        return Err(format!("storage.url_env = {var:?} is not an environment variable name"));
                    }
                    Some(_) => {}
                }
                if self.max_size_mb.is_some() {
                    return Err("storage.max_size_mb applies to backend = \"sqlite\" only".into());
                }
                if self.durability != DurabilityMode::Normal {
                    return Err("storage.durability applies to backend = \"sqlite\" only (PostgreSQL's own \
                                settings decide)"
                        .into());
                }
                let checks = [
                    ("pool_size", self.pool_size.map(u64::from), 1, 1024),
                    ("statement_timeout_ms", self.statement_timeout_ms, 100, 600_000),
                    ("lease_seconds", self.lease_seconds, 2, 3600),
                ];
                for (key, value, low, high) in checks {
                    if let Some(v) = value
                        && !(low..=high).contains(&v)
                    {
                        return Err(format!("storage.{key} must be {low} to {high}"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The cap on `max_size_mb` (1 TiB): a typo should not read as "no cap".
pub const MAX_STORAGE_MB: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    #[default]
    Normal,
    Full,
}

/// Session defaults (an extension of contract §3).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    /// Sessions created without `ttl_seconds` expire after this long; absent,
    /// they live until deleted. Expired sessions answer 410 and are purged
    /// (their audit chain stays).
    pub default_ttl_seconds: Option<u64>,
}

/// Human approval gates (an extension of contract §3).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// A call left undecided this long ends `rejected` with code `expired`.
    /// Absent: pending calls wait until decided.
    pub expire_after_seconds: Option<u64>,
}

/// The MCP endpoint at `/mcp` (an extension of contract §3).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    /// Origins allowed on `/mcp` requests that carry an `Origin` header, e.g.
    /// `"https://app.example.com:443"`. Empty (the default): every such
    /// request is refused, which stops DNS-rebinding and cross-site
    /// requests; clients that are not browsers send no `Origin`. No CORS
    /// headers are sent, so this does not open `/mcp` to other origins' pages.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// `Host` values accepted on `/mcp`, e.g. `"tools.example.com"`. Empty
    /// (the default): any host; the bearer token is the guard.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

impl McpConfig {
    fn validate(&self) -> Result<(), String> {
        for origin in &self.allowed_origins {
            let ok = origin == "null"
                || ["http://", "https://"].iter().any(|s| origin.strip_prefix(s).is_some_and(|rest| !rest.is_empty()));
            if !ok || origin.len() > 255 {
                return Err(format!(
                    "mcp.allowed_origins: {origin:?} is not an origin like \"https://app.example.com:443\" or \"null\""
                ));
            }
        }
        for host in &self.allowed_hosts {
            if host.is_empty() || host.len() > 255 || host.contains(['/', ' ']) {
                return Err(format!("mcp.allowed_hosts: {host:?} is not a host or host:port"));
            }
        }
        Ok(())
    }
}

/// `[tools]`: where bundles come from besides `tools_dir`, and what proof
/// of origin they need. Defaults: no signature required, no trusted key, no
/// OCI source.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolsConfig {
    /// True: a bundle without a valid signature by a trusted key is refused.
    pub require_signature: bool,
    /// OpenSSH Ed25519 public key files (relative to the config file).
    pub trusted_keys: Vec<PathBuf>,
    pub sources: Vec<OciSource>,
}

/// One `[[tools.sources]]` entry: an OCI reference and the digest it must
/// resolve to (a moved tag is refused).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciSource {
    pub oci: String,
    pub digest: String,
}

impl ToolsConfig {
    fn validate(&self) -> Result<(), String> {
        if self.require_signature && self.trusted_keys.is_empty() {
            return Err("tools.require_signature = true needs at least one tools.trusted_keys file".into());
        }
        for (i, s) in self.sources.iter().enumerate() {
            // The registry client's own parser, so what passes here pulls.
            let plain = !s.oci.is_empty() && s.oci.len() <= 512 && !s.oci.chars().any(|c| c.is_whitespace());
            if !plain || s.oci.parse::<oci_client::Reference>().is_err() {
                return Err(format!(
                    "tools.sources[{i}].oci = {:?} is not an OCI reference like \"registry.example.com/tools/name:1.0.0\"",
                    s.oci.chars().take(80).collect::<String>()
                ));
            }
            if !crate::util::is_sha256_digest(&s.digest) {
                return Err(format!("tools.sources[{i}].digest must be \"sha256:\" and 64 lowercase hex digits"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    tools_dir: Option<PathBuf>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    network: NetworkConfig,
    #[serde(default)]
    secrets: BTreeMap<String, SecretSource>,
    #[serde(default)]
    volumes: BTreeMap<String, VolumeConfig>,
    #[serde(default)]
    approvals: ApprovalsConfig,
    #[serde(default)]
    sessions: SessionsConfig,
    #[serde(default)]
    storage: StorageConfig,
    #[serde(default)]
    mcp: McpConfig,
    #[serde(default)]
    tools: ToolsConfig,
    #[serde(default)]
    auth: AuthConfig,
    #[serde(default)]
    pricing: PricingConfig,
    #[serde(default)]
    telemetry: TelemetryConfig,
    #[serde(default)]
    principals: Vec<PrincipalConfig>,
}

/// A validated configuration with absolute-or-cwd-relative paths.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub tools_dir: PathBuf,
    pub limits: Limits,
    pub network: NetworkConfig,
    pub secrets: BTreeMap<String, SecretSource>,
    pub volumes: BTreeMap<String, VolumeConfig>,
    pub approvals: ApprovalsConfig,
    pub sessions: SessionsConfig,
    pub storage: StorageConfig,
    pub mcp: McpConfig,
    pub tools: ToolsConfig,
    pub auth: AuthConfig,
    pub pricing: PricingConfig,
    pub telemetry: TelemetryConfig,
    /// The file this was read from, re-read by a tool reload (`None`: the
    /// embedded defaults).
    pub file: Option<PathBuf>,
    /// `None` on embedded defaults: a dev agent and a dev approver are made.
    pub principals: Option<Vec<PrincipalConfig>>,
}

impl Config {
    /// The embedded defaults (contract §2): loopback, `./bulkhead-data`, the
    /// example tools, generated dev tokens. The example tools' volumes are
    /// the financial-audit scenario's ledgers and the project's docs
    /// (read-only) and an adjustments folder in the data folder (read-write).
    pub fn embedded() -> Config {
        let volumes = BTreeMap::from([
            (
                "ledger".to_string(),
                VolumeConfig { path: "./examples/financial-audit/ledgers".into(), access: Access::ReadOnly },
            ),
            ("docs".to_string(), VolumeConfig { path: "./docs".into(), access: Access::ReadOnly }),
            (
                "adjustments".to_string(),
                VolumeConfig { path: "./bulkhead-data/adjustments".into(), access: Access::ReadWrite },
            ),
        ]);
        Config {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            data_dir: DEFAULT_DATA_DIR.into(),
            tools_dir: DEFAULT_TOOLS_DIR.into(),
            limits: Limits::default(),
            network: NetworkConfig::default(),
            secrets: BTreeMap::new(),
            volumes,
            approvals: ApprovalsConfig::default(),
            sessions: SessionsConfig::default(),
            storage: StorageConfig::default(),
            mcp: McpConfig::default(),
            tools: ToolsConfig::default(),
            auth: AuthConfig::default(),
            pricing: PricingConfig::default(),
            telemetry: TelemetryConfig::default(),
            file: None,
            principals: None,
        }
    }

    /// Reads the config file, or the embedded defaults when `path` is None.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::embedded());
        };
        let file = path.display().to_string();
        let err = |message: String| ConfigError { file: file.clone(), message };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = Config::parse(&text, base).map_err(err)?;
        config.file = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses config text; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, String> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| crate::util::toml_error(text, &e))?;
        let listen = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen =
            listen.parse().map_err(|_| format!("listen = {listen:?} is not an address like \"127.0.0.1:7070\""))?;
        raw.limits.validate()?;
        if raw.sessions.default_ttl_seconds == Some(0) {
            return Err("sessions.default_ttl_seconds must be above 0".into());
        }
        if raw.approvals.expire_after_seconds == Some(0) {
            return Err("approvals.expire_after_seconds must be above 0".into());
        }
        raw.mcp.validate()?;
        raw.storage.validate()?;
        raw.tools.validate()?;
        raw.auth.validate()?;
        raw.pricing.validate()?;
        raw.telemetry.validate()?;
        for (name, source) in &raw.secrets {
            if source.env.is_some() == source.file.is_some() {
                return Err(format!("secrets.{name}: give exactly one of `env` or `file`"));
            }
        }
        let rel = |p: &Path| {
            if p.is_absolute() { p.to_path_buf() } else { base.join(p) }
        };
        let secrets = raw
            .secrets
            .into_iter()
            .map(|(name, s)| (name, SecretSource { env: s.env, file: s.file.as_deref().map(rel) }))
            .collect();
        let volumes = raw
            .volumes
            .into_iter()
            .map(|(name, v)| (name, VolumeConfig { path: rel(&v.path), access: v.access }))
            .collect();
        for (i, p) in raw.principals.iter().enumerate() {
            validate_principal(p).map_err(|e| format!("principals[{i}]: {e}"))?;
        }
        let mut names = std::collections::BTreeSet::new();
        for p in &raw.principals {
            if !names.insert(&p.name) {
                return Err(format!("principals: name {:?} appears twice", p.name));
            }
        }
        Ok(Config {
            listen,
            data_dir: rel(raw.data_dir.as_deref().unwrap_or(Path::new(DEFAULT_DATA_DIR))),
            tools_dir: rel(raw.tools_dir.as_deref().unwrap_or(Path::new("./tools"))),
            limits: raw.limits,
            network: NetworkConfig {
                extra_ca_files: raw.network.extra_ca_files.iter().map(|p| rel(p)).collect(),
                ..raw.network
            },
            secrets,
            volumes,
            approvals: raw.approvals,
            sessions: raw.sessions,
            storage: raw.storage,
            mcp: raw.mcp,
            tools: ToolsConfig { trusted_keys: raw.tools.trusted_keys.iter().map(|p| rel(p)).collect(), ..raw.tools },
            auth: AuthConfig {
                issuers: raw
                    .auth
                    .issuers
                    .into_iter()
                    .map(|i| IssuerConfig { jwks_file: i.jwks_file.as_deref().map(rel), ..i })
                    .collect(),
                ..raw.auth
            },
            pricing: raw.pricing,
            telemetry: raw.telemetry,
            file: None,
            principals: Some(raw.principals),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/bulkhead"))
    }

    #[test]
    fn empty_config_takes_defaults_and_resolves_paths() {
        let c = parse("").unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(c.data_dir, Path::new("/etc/bulkhead/./bulkhead-data"));
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.principals.unwrap().len(), 0);
    }

    #[test]
    fn full_contract_example_parses() {
        let c = parse(
            r#"
            listen = "0.0.0.0:8080"
            data_dir = "/var/lib/bulkhead"
            tools_dir = "tools"
            [limits]
            max_timeout_ms = 1000
            [network]
            allow_private = ["127.0.0.0/8", "fd00::/8"]
            [secrets]
            GITHUB_TOKEN = { env = "GITHUB_TOKEN" }
            DB_PASSWORD = { file = "db_password" }
            [volumes]
            ledger = { path = "/srv/ledger", access = "read-only" }
            [[principals]]
            name = "audit-agent"
            token_env = "T"
            roles = ["agent"]
            tools = ["*"]
            [principals.grants.http-fetch]
            network = ["api.example.com"]
            "#,
        )
        .unwrap();
        assert_eq!(c.limits.max_timeout_ms, 1000);
        assert_eq!(c.limits.max_memory_mb, 256);
        assert_eq!(c.tools_dir, Path::new("/etc/bulkhead/tools"));
        assert_eq!(c.secrets["DB_PASSWORD"].file.as_deref(), Some(Path::new("/etc/bulkhead/db_password")));
        assert_eq!(c.principals.unwrap()[0].grants["http-fetch"].network.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn the_tools_table_resolves_keys_and_keeps_pins() {
        let pin = format!("sha256:{}", "a".repeat(64));
        let c = parse(&format!(
            "[tools]\nrequire_signature = true\ntrusted_keys = [\"keys/release.pub\"]\n\
             [[tools.sources]]\noci = \"registry.example.com/tools/http-fetch:1.2.0\"\ndigest = \"{pin}\"\n"
        ))
        .unwrap();
        assert!(c.tools.require_signature);
        assert_eq!(c.tools.trusted_keys, [Path::new("/etc/bulkhead/keys/release.pub")]);
        assert_eq!(c.tools.sources[0].digest, pin);
        assert!(!parse("").unwrap().tools.require_signature, "off by default");
    }

    #[test]
    fn extra_ca_files_resolve_against_the_config_folder() {
        let c = parse("[network]\nextra_ca_files = [\"ca/private.pem\", \"/abs/ca.pem\"]").unwrap();
        assert_eq!(c.network.extra_ca_files, [Path::new("/etc/bulkhead/ca/private.pem"), Path::new("/abs/ca.pem")]);
        assert!(parse("").unwrap().network.extra_ca_files.is_empty(), "none by default");
    }

    #[test]
    fn a_bad_config_is_refused_with_an_error_naming_the_problem() {
        let cases = [
            ("lisen = \"x\"", "lisen"),
            ("[limits]\nmax_memory_gb = 1", "max_memory_gb"),
            ("[storage]\ndurability = \"sometimes\"", "sometimes"),
            ("[storage]\nmax_size_mb = 0", "storage.max_size_mb"),
            ("[storage]\nmax_size_mb = 99999999999", "storage.max_size_mb"),
            ("[storage]\nmax_size_mb = -1", "max_size_mb"),
            ("[storage]\nbackend = \"mysql\"", "backend"),
            ("[storage]\nbackend = \"postgres\"", "storage.url_env is required"),
            ("[storage]\nbackend = \"postgres\"\nurl_env = \"A B\"", "storage.url_env"),
            ("[storage]\nurl_env = \"PG_URL\"", "postgres\" only"),
            ("[storage]\nlease_seconds = 5", "storage.lease_seconds applies"),
            ("[storage]\nbackend = \"postgres\"\nurl_env = \"U\"\nmax_size_mb = 10", "storage.max_size_mb applies"),
            ("[storage]\nbackend = \"postgres\"\nurl_env = \"U\"\ndurability = \"full\"", "storage.durability"),
            ("[storage]\nbackend = \"postgres\"\nurl_env = \"U\"\npool_size = 0", "storage.pool_size"),
            ("[storage]\nbackend = \"postgres\"\nurl_env = \"U\"\nlease_seconds = 1", "storage.lease_seconds"),
            ("[storage]\nbackend = \"postgres\"\nurl_env = \"U\"\nstatement_timeout_ms = 1", "statement_timeout_ms"),
            ("[storage]\nbackend = \"postgres\"\nurl_env = \"U\"\npassword = \"x\"", "password"),
            ("[limits]\nmax_timeout_ms = 0", "limits.max_timeout_ms"),
            ("[tools]\nrequire_signature = true", "needs at least one tools.trusted_keys"),
            ("[tools]\nrequire_sig = true", "require_sig"),
            ("[[tools.sources]]\noci = \"r.example/t:1\"", "digest"),
            ("[[tools.sources]]\noci = \"r.example/t:1\"\ndigest = \"sha256:abc\"", "tools.sources[0].digest"),
            ("[[tools.sources]]\noci = \"has space\"\ndigest = \"sha256:abc\"", "tools.sources[0].oci"),
            ("[[tools.sources]]\noci = \"r.example/t:1\"\ndigest = \"sha256:abc\"\ncreds = \"x\"", "creds"),
            ("[limits]\nmax_workspace_mb = 0", "limits.max_workspace_mb"),
            ("[limits]\nmax_workspace_files = 99999999999", "limits.max_workspace_files"),
            ("[limits]\nmax_timeout_ms = -5", "max_timeout_ms"),
            ("listen = \"localhost\"", "listen"),
            ("[network]\nallow_private = [\"10.0.0.0/33\"]", "allow_private"),
            ("[secrets]\nX = {}", "secrets.X"),
            ("[secrets]\nX = { env = \"A\", file = \"b\" }", "secrets.X"),
            ("[volumes]\nv = { path = \"/x\", access = \"rw\" }", "rw"),
            ("[[principals]]\nname = \"a\"\nroles = [\"agent\"]", "token_env"),
            ("[[principals]]\nname = \"a\"\ntoken_env = \"T\"\nroles = [\"root\"]", "root"),
            ("[[principals]]\nname = \"A B\"\ntoken_env = \"T\"\nroles = [\"agent\"]", "principals[0]"),
            (
                "[[principals]]\nname = \"a\"\ntoken_env = \"T\"\nroles = [\"agent\"]\n[[principals]]\nname = \"a\"\ntoken_env = \"U\"\nroles = [\"agent\"]",
                "twice",
            ),
            (
                "[[principals]]\nname = \"a\"\ntoken_env = \"T\"\nroles = [\"agent\"]\n[principals.grants.http-fetch]\nnetwork = [\"not a host\"]",
                "principals[0]: grants.http-fetch.network",
            ),
            (
                "[[principals]]\nname = \"a\"\ntoken_env = \"T\"\nroles = [\"agent\"]\n[principals.grants.t]\nsecrets = [\"1X\"]",
                "grants.t",
            ),
            ("not toml at all [", "line 1"),
            ("[mcp]\nallowed_origins = [\"evil.example\"]", "mcp.allowed_origins"),
            ("[mcp]\nallowed_origins = [\"https://\"]", "mcp.allowed_origins"),
            ("[mcp]\nallowed_hosts = [\"\"]", "mcp.allowed_hosts"),
            ("[mcp]\nallow_origins = []", "allow_origins"),
        ];
        for (text, needle) in cases {
            let err = parse(text).expect_err(text);
            assert!(err.contains(needle), "{text:?} gave {err:?}");
        }
    }
}
