//! `bulkhead tools ...`: check the tool set, sign and verify bundles, push
//! them to and pull them from OCI registries.

use crate::config::Config;
use crate::runtime::Runtime;
use crate::supply::bundle::BundleFiles;
use crate::supply::oci;
use crate::supply::signature::{self, TrustedKeys, Verdict};
use anyhow::{Context, Result, anyhow};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Subcommand)]
pub enum ToolsCommand {
    /// Load every bundle of the tools folder and of [[tools.sources]], with
    /// the signature rule of [tools], and report errors, without serving.
    /// Exits 1 when any bundle is refused.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Sign a bundle folder: writes tool.sig over its name, version and the
    /// digests of tool.toml and the component. Any later change to either
    /// (a grant, the component) needs a new signature.
    Sign {
        bundle: PathBuf,
        /// An unencrypted OpenSSH Ed25519 private key (`bulkhead tools keygen`
        /// or `ssh-keygen -t ed25519 -N ""`).
        #[arg(long)]
        key: PathBuf,
    },
    /// Check a bundle folder's or an OCI artifact's signature against
    /// trusted keys. Exits 0 when verified, 1 when not.
    Verify {
        /// A bundle folder, or an OCI reference (host/repo:tag or @sha256:...).
        target: String,
        /// A trusted public key file (repeatable); default: the config's trusted_keys.
        #[arg(long)]
        key: Vec<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Push a bundle folder as an OCI artifact (manifest, component, review
    /// report, signature if any); prints the pushed digest to pin.
    Push { bundle: PathBuf, reference: String },
    /// Pull an OCI artifact into a bundle folder (default ./<tool name>),
    /// checking every layer's digest; prints the digest.
    Pull {
        reference: String,
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Print the statement a signature covers (name, version, digests), to
    /// sign it elsewhere: `bulkhead tools statement B | ssh-keygen -Y sign
    /// -f KEY -n bulkhead-tool > B/tool.sig`.
    Statement { bundle: PathBuf },
    /// Make an Ed25519 signing key: FILE (private, mode 0600) and FILE.pub.
    Keygen {
        #[arg(long)]
        output: PathBuf,
        #[arg(long, default_value = "bulkhead tool signing key")]
        comment: String,
    },
}

pub async fn run(command: ToolsCommand) -> Result<ExitCode> {
    match command {
        ToolsCommand::Check { config } => check(config.as_deref()).await,
        ToolsCommand::Sign { bundle, key } => {
            let fp = signature::sign(&bundle, &key).map_err(|e| anyhow!(e))?;
            println!("signed {} with {fp}", bundle.join(signature::SIGNATURE_FILE).display());
            Ok(ExitCode::SUCCESS)
        }
        ToolsCommand::Verify { target, key, config } => verify(&target, key, config.as_deref()).await,
        ToolsCommand::Push { bundle, reference } => {
            let review = crate::review::review_bundle(&bundle).map_err(|e| anyhow!("cannot review the bundle: {e}"))?;
            let report = crate::review::render::json(std::slice::from_ref(&review), &[]);
            let digest = oci::push(&bundle, &reference, report.as_bytes()).await.map_err(|e| anyhow!(e))?;
            println!("{digest}");
            Ok(ExitCode::SUCCESS)
        }
        ToolsCommand::Pull { reference, output } => {
            let scratch = Scratch::new()?;
            let (digest, dir) = oci::pull(&reference, None, &scratch.0).await.map_err(|e| anyhow!(e))?;
            let files = BundleFiles::read(&dir).map_err(|e| anyhow!(e))?;
            let out = output.unwrap_or_else(|| PathBuf::from(&files.name));
            oci::export(&dir, &out).map_err(|e| anyhow!(e))?;
            println!("{digest}");
            eprintln!("pulled {} {} into {}", files.name, files.version, out.display());
            Ok(ExitCode::SUCCESS)
        }
        ToolsCommand::Statement { bundle } => {
            let files = BundleFiles::read(&bundle).map_err(|e| anyhow!(e))?;
            print!("{}", signature::statement_of(&files));
            Ok(ExitCode::SUCCESS)
        }
        ToolsCommand::Keygen { output, comment } => {
            let fp = signature::generate(&output, &comment).map_err(|e| anyhow!(e))?;
            println!("{fp}");
            eprintln!("private key {} (keep it offline), public key {}.pub", output.display(), output.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn check(config_path: Option<&Path>) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let runtime = Arc::new(Runtime::new(&config.limits, None)?);
    let (found, errors) = crate::service::reload::load_all(&runtime, &config, &config.tools_dir, &config.tools)
        .await
        .map_err(|e| anyhow!(e))?;
    for f in &found {
        let t = &f.tool;
        println!("ok     {} {} {}", t.manifest.name, t.manifest.version, t.digest);
        println!("       imports: {}", t.imports.join(", "));
        println!("       signature: {}", verdict_text(&f.signature));
    }
    for e in &errors {
        println!("error  {e}");
    }
    println!("{} loaded, {} refused, from {}", found.len(), errors.len(), config.tools_dir.display());
    Ok(if errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

async fn verify(target: &str, keys: Vec<PathBuf>, config_path: Option<&Path>) -> Result<ExitCode> {
    let keys = match keys.is_empty() {
        false => keys,
        true => Config::load(config_path)?.tools.trusted_keys,
    };
    if keys.is_empty() {
        return Err(anyhow!("no trusted key: give --key FILE or a config with [tools] trusted_keys"));
    }
    let trusted = TrustedKeys::load(&keys).map_err(|e| anyhow!(e))?;
    let scratch;
    let dir = if Path::new(target).is_dir() {
        PathBuf::from(target)
    } else {
        scratch = Scratch::new()?;
        let (digest, dir) = oci::pull(target, None, &scratch.0).await.map_err(|e| anyhow!(e))?;
        println!("artifact:  {digest}");
        dir
    };
    let files = BundleFiles::read(&dir).map_err(|e| anyhow!(e))?;
    let verdict = signature::check(&dir, &signature::statement_of(&files), &trusted);
    println!("tool:      {} {}", files.name, files.version);
    println!("manifest:  {}", files.manifest_digest());
    println!("component: {}", files.component_digest());
    println!("signature: {}", verdict_text(&verdict));
    Ok(if verdict.is_verified() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn verdict_text(v: &Verdict) -> String {
    match v {
        Verdict::Verified { key } => format!("verified, signed by {key}"),
        other => format!("NOT verified: {}", other.refusal().unwrap_or_default()),
    }
}

/// A private temporary folder, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("bulkhead-pull-{}-{}", std::process::id(), crate::util::new_id()));
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
