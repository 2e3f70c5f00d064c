//! The `bulkhead` commands (contract §2).

use crate::auth::Principal;
use crate::config::Config;
use crate::service::calls::NewCall;
use crate::service::sessions::CreateSession;
use crate::service::{Credentials, Service, StartReport, ToolSource};
use crate::store::sqlite::audit;
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod tools;
mod usage;

#[derive(Parser)]
#[command(
    name = "bulkhead",
    version,
    about = "A stateful tool host for AI agents: durable sessions running sandboxed WASI tool components."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the host: the HTTP session API over the tools of the tools folder.
    ///
    /// Without --config it runs on embedded defaults: listens on
    /// 127.0.0.1:7070, keeps its data in ./bulkhead-data, serves the example
    /// tools of ./guest-tools (build them with scripts/build-guests), and
    /// creates a dev agent and a dev approver whose tokens it prints once and
    /// keeps in ./bulkhead-data/dev-tokens.env (mode 0600).
    Serve {
        /// The operator config (bulkhead.toml); paths in it are relative to it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Tool bundles: check, sign, verify, push to and pull from OCI registries.
    Tools {
        #[command(subcommand)]
        command: tools::ToolsCommand,
    },
    /// Run one tool call locally, without a server, and print the call:
    /// output or error, logs, usage, and any capability denials.
    ///
    /// The call runs with the manifest's grants in a session of a local
    /// principal. With --state-dir the session (and so the tool's state)
    /// persists there between runs; without it everything is discarded.
    /// Exits 0 when the call succeeded, 1 when it did not, 2 on bad usage.
    Run {
        /// The bundle folder: tool.toml and its component.
        bundle: PathBuf,
        /// The call's input, as JSON.
        #[arg(long)]
        input: String,
        /// Keep the session and its state in this folder across runs.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Security review of tool bundles: the capability surface from the
    /// manifest and the component's real WIT imports, and findings with a
    /// severity, a stable id and a fix.
    ///
    /// PATH is a bundle folder or a folder of bundles. Exits 0 when clean,
    /// 1 when a finding at or above --fail-on is present, 2 when a bundle
    /// could not be reviewed.
    Review {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// text (for people), json (stable schema), markdown (PR comments), sarif (code scanning).
        #[arg(long, default_value = "text", value_parser = ["text", "json", "markdown", "sarif"])]
        format: String,
        /// The approved version of the bundle: report what changed since.
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// Lowest severity that fails the review: info, low, medium, high, critical.
        #[arg(long, default_value = "high", value_parser = ["info", "low", "medium", "high", "critical"])]
        fail_on: String,
    },
    /// Bridge a local MCP client on stdio to a running host's /mcp.
    ///
    /// Desktop assistants launch MCP servers as subprocesses; this command
    /// is that subprocess. It speaks for the session given with --session,
    /// or for a new session with the principal's default boundary, created
    /// on first use and named on stderr.
    Mcp {
        /// The host, e.g. http://127.0.0.1:7070 (the path defaults to /mcp).
        #[arg(long)]
        connect: String,
        /// The environment variable holding the agent's bearer token.
        #[arg(long)]
        token_env: String,
        /// An existing session of the principal to speak for.
        #[arg(long)]
        session: Option<String>,
    },
    /// Copy a SQLite data folder into an empty PostgreSQL database:
    /// sessions, messages, tool state, calls and approvals, audit chains.
    ///
    /// Stop the host on the folder first (the folder is locked while it is
    /// read). Every copied chain is verified before the copy commits.
    Migrate {
        /// `sqlite:PATH`, the data folder (or its bulkhead.sqlite3).
        #[arg(long)]
        from: String,
        /// The environment variable holding the target's PostgreSQL URL.
        #[arg(long)]
        to_env: String,
    },
    /// A running host's usage report: units and cost per principal, for
    /// the sessions created in a window (`GET /v1/usage`).
    Usage(usage::UsageArgs),
    /// Check the audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify every session's audit hash chain. Exits 1 and names the first
    /// broken record when the trail was tampered with.
    Verify {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

pub fn main() -> ExitCode {
    crate::util::quiet_library_backtraces();
    let cli = Cli::parse();
    // `serve` sets up its own, as its `[telemetry]` says.
    if !matches!(cli.command, Command::Serve { .. }) {
        crate::telemetry::init_logs();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { config } => serve(config.as_deref()).await,
            Command::Tools { command } => tools::run(command).await,
            Command::Run { bundle, input, state_dir } => run(&bundle, &input, state_dir.as_deref()).await,
            Command::Audit { command: AuditCommand::Verify { config } } => audit_verify(config.as_deref()).await,
            Command::Migrate { from, to_env } => migrate(&from, &to_env).await,
            Command::Mcp { connect, token_env, session } => mcp_bridge(&connect, &token_env, session).await,
            Command::Usage(args) => usage::run(args).await,
            Command::Review { paths, format, baseline, fail_on } => {
                review(&paths, &format, baseline.as_deref(), &fail_on)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn mcp_bridge(url: &str, token_env: &str, session: Option<String>) -> Result<ExitCode> {
    let token =
        std::env::var(token_env).with_context(|| format!("--token-env {token_env}: the variable is not set"))?;
    crate::mcp::bridge::run(url, token.trim().to_string(), session).await?;
    Ok(ExitCode::SUCCESS)
}

fn report_start(report: &StartReport, service: &Service) {
    for e in &report.refused {
        eprintln!("refused bundle: {e}");
    }
    let set = service.tools();
    for (name, t) in &set.tools {
        let from = if t.cached { "precompiled" } else { "compiled" };
        let signed = match &set.info[name].signature {
            crate::supply::signature::Verdict::Verified { key } => format!(", signed by {key}"),
            crate::supply::signature::Verdict::Unsigned => String::new(),
            other => format!(", signature {}", other.refusal().unwrap_or_default()),
        };
        eprintln!("tool {} {} ({}, {from}{signed})", t.manifest.name, t.manifest.version, t.digest);
    }
    if report.interrupted > 0 {
        eprintln!("{} call(s) left running by the previous host are now interrupted", report.interrupted);
    }
}

async fn serve(config_path: Option<&Path>) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    crate::tls::init(&config.network.extra_ca_files)?;
    let telemetry = crate::telemetry::init(&config.telemetry)?;
    let listen = config.listen;
    let (service, report) = Service::start(config).await?;
    report_start(&report, &service);
    if service.tools().is_empty() {
        eprintln!("warning: no tools loaded from {}", service.config.tools_dir.display());
    }
    match &report.credentials {
        Credentials::Dev(tokens) if tokens.fresh => {
            println!("dev tokens (printed once, kept in {}):", tokens.file.display());
            println!("  dev-agent:    {}", tokens.agent);
            println!("  dev-approver: {}", tokens.approver);
        }
        Credentials::Dev(tokens) => println!("dev tokens: {}", tokens.file.display()),
        Credentials::Configured if service.auth.is_empty() => {
            eprintln!("warning: the config names no principals and no issuers; every API call will answer 401")
        }
        Credentials::Configured => {}
    }
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    println!("bulkhead listening on http://{}", listener.local_addr()?);
    spawn_reload_on_sighup(&service);
    // In the background: an identity provider that is slow or down must
    // not hold up the start (static tokens keep working).
    let keys = service.clone();
    tokio::spawn(async move { keys.auth.issuers().prefetch().await });
    let served = axum::serve(listener, crate::api::router(service)).with_graceful_shutdown(shutdown_signal()).await;
    telemetry.shutdown();
    served?;
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP reloads the tool set, as `POST /v1/tools/reload` does.
fn spawn_reload_on_sighup(service: &std::sync::Arc<Service>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            eprintln!("warning: cannot listen for SIGHUP; reload tools with POST /v1/tools/reload");
            return;
        };
        let service = std::sync::Arc::downgrade(service);
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let Some(service) = service.upgrade() else { break };
                match service.reload_tools("operator:sighup").await {
                    Ok(r) => {
                        for u in &r.updated {
                            eprintln!("tool updated: {u}");
                        }
                        for e in &r.refused {
                            eprintln!(
                                "reload refused: {}: {}",
                                e["file"].as_str().unwrap_or(""),
                                e["message"].as_str().unwrap_or("")
                            );
                        }
                        eprintln!(
                            "tools reloaded: {} changed, {} unchanged, {} refused (generation {})",
                            r.updated.len(),
                            r.unchanged.len(),
                            r.refused.len(),
                            r.generation
                        );
                    }
                    Err(e) => eprintln!("tool reload failed, the old tools keep serving: {e}"),
                }
            }
        });
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    eprintln!("shutting down");
}

const RUN_SESSION_FILE: &str = "run-session";

async fn run(bundle: &Path, input: &str, state_dir: Option<&Path>) -> Result<ExitCode> {
    let input: serde_json::Value = match serde_json::from_str(input) {
        Ok(v) => v,
        Err(e) => bail!("--input is not JSON: {e}"),
    };
    let temp = match state_dir {
        Some(_) => None,
        None => Some(temporary_run_folder()?),
    };
    let data_dir = state_dir.map(Path::to_path_buf).or(temp.clone()).expect("one of the two is set");
    let mut config = Config::embedded();
    config.data_dir = data_dir.clone();
    config.principals = Some(Vec::new());
    let result = run_in(config, bundle, input, &data_dir).await;
    if let Some(dir) = temp {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

/// Where `bulkhead run` without `--state-dir` keeps its state: a new
/// folder in the system's temporary folder, marked as this command's, so
/// that a run killed before it could remove it is cleaned up by a later
/// run (and a user's `--state-dir`, never marked, never is).
const RUN_FOLDER_PREFIX: &str = "bulkhead-run-";
const RUN_FOLDER_MARK: &str = "temporary-bulkhead-run";

fn temporary_run_folder() -> Result<PathBuf> {
    let tmp = std::env::temp_dir();
    remove_abandoned_run_folders(&tmp);
    let dir = tmp.join(format!("{RUN_FOLDER_PREFIX}{}", crate::util::new_id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join(RUN_FOLDER_MARK), b"").with_context(|| format!("cannot write in {}", dir.display()))?;
    Ok(dir)
}

/// Removes the marked folders of earlier runs whose process is gone
/// (`store::lock::abandoned`). Symbolic links are never followed.
fn remove_abandoned_run_folders(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let ours = entry.file_name().to_string_lossy().starts_with(RUN_FOLDER_PREFIX)
            && entry.file_type().is_ok_and(|t| t.is_dir())
            && entry.path().join(RUN_FOLDER_MARK).is_file();
        if ours && let Some(_held) = crate::store::sqlite::lock::abandoned(&entry.path()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

async fn run_in(config: Config, bundle: &Path, input: serde_json::Value, data_dir: &Path) -> Result<ExitCode> {
    let (service, report) = Service::start_with(config, ToolSource::Bundle(bundle.to_path_buf())).await?;
    if let Some(e) = report.refused.first() {
        bail!("{e}");
    }
    let tool = service.tools().tools.keys().next().cloned().context("no tool loaded")?;
    let me = Principal::local("local");
    let session_file = data_dir.join(RUN_SESSION_FILE);
    let existing = std::fs::read_to_string(&session_file).ok().map(|s| s.trim().to_string());
    let session = match existing {
        Some(sid) if service.owned_session(&me, &sid).await.is_ok() => sid,
        _ => {
            let s = service.create_session(&me, CreateSession::default()).await?;
            std::fs::write(&session_file, &s.id)?;
            s.id
        }
    };
    let reply = service.call(&me, &session, NewCall { tool, input, idempotency_key: None }, Default::default()).await?;
    let call = reply.call;
    let audit = service.list_audit(&me, &session, None, Some(1000)).await?;
    let denials: Vec<_> = audit
        .iter()
        .filter(|e| e.kind == "capability_denied" && e.call.as_deref() == Some(&call.id))
        .map(|e| &e.data)
        .collect();
    let printed = serde_json::json!({
        "status": call.status,
        "output": call.output,
        "error": call.error,
        "logs": call.logs,
        "usage": call.usage,
        "denials": denials,
        "session": session,
    });
    println!("{}", serde_json::to_string_pretty(&printed)?);
    Ok(if call.status == crate::model::CallStatus::Succeeded { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

async fn migrate(from: &str, to_env: &str) -> Result<ExitCode> {
    let Some(path) = from.strip_prefix("sqlite:") else {
        bail!("--from {from:?}: give sqlite:PATH (the data folder of a SQLite host)");
    };
    let url = std::env::var(to_env).with_context(|| format!("--to-env {to_env}: the variable is not set"))?;
    let copied = crate::store::postgres::copy::from_sqlite(Path::new(path), &url).await?;
    for (table, n) in &copied.tables {
        println!("{table}: {n} rows");
    }
    println!("audit trail intact: {} events verified in the copy", copied.events_verified);
    Ok(ExitCode::SUCCESS)
}

async fn audit_verify(config_path: Option<&Path>) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let verified = match config.storage.backend {
        crate::config::Backend::Postgres => {
            let var = config.storage.url_env.as_deref().unwrap_or_default();
            let url = std::env::var(var).with_context(|| format!("storage.url_env names {var}, which is not set"))?;
            crate::store::postgres::verify_url(&url).await?
        }
        crate::config::Backend::Sqlite => {
            if !config.data_dir.join(crate::store::sqlite::DB_FILE).exists() {
                bail!("no database in {}", config.data_dir.display());
            }
            // Read-only: verifying writes nothing (no migration, no filing), so it
            // can run beside a live host.
            let conn = rusqlite::Connection::open_with_flags(
                config.data_dir.join(crate::store::sqlite::DB_FILE),
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            audit::verify_all(&conn)?
        }
    };
    match verified {
        Ok(n) => {
            println!("audit trail intact: {n} events verified");
            Ok(ExitCode::SUCCESS)
        }
        Err(b) => {
            println!("audit trail broken: session {} seq {}: {}", b.session, b.seq, b.reason);
            Ok(ExitCode::from(1))
        }
    }
}

fn review(paths: &[PathBuf], format: &str, baseline: Option<&Path>, fail_on: &str) -> Result<ExitCode> {
    use crate::review::{self, ReviewError, Severity, render};
    let fail_on = Severity::parse(fail_on).context("bad --fail-on")?;
    let mut reviews = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let bundles = review::bundles_in(path);
        if bundles.is_empty() {
            errors.push(ReviewError {
                file: path.display().to_string(),
                message: "no tool.toml here or in its sub-folders".into(),
            });
        }
        if baseline.is_some() && bundles.len() > 1 {
            bail!("--baseline compares one bundle; {} holds {}", path.display(), bundles.len());
        }
        for bundle in bundles {
            let result = match baseline {
                Some(old) => review::review_with_baseline(&bundle, old),
                None => review::review_bundle(&bundle),
            };
            match result {
                Ok(r) => reviews.push(r),
                Err(e) => errors.push(e),
            }
        }
    }
    let out = match format {
        "json" => render::json(&reviews, &errors),
        "markdown" => render::markdown(&reviews, &errors),
        "sarif" => render::sarif(&reviews, &errors),
        _ => render::text(&reviews, &errors),
    };
    print!("{out}");
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("error: could not review {e}");
        }
        return Ok(ExitCode::from(2));
    }
    let failed = reviews.iter().filter_map(|r| r.worst()).any(|s| s >= fail_on);
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
