//! `bulkhead review`: the security review of tool bundles (contract §9).
//!
//! Reads each bundle's manifest and decodes its component's real WIT world
//! (with `wit-component`), groups the imports by capability, states the
//! capability surface in plain words, and reports findings with a severity,
//! a stable id and a one-line fix. With a baseline, it reports what changed
//! since the approved version, widening first.
//!
//! - [`findings`]: the checks, one function each, and the baseline diff.
//! - [`render`]: text, json, markdown and sarif output.

pub mod findings;
pub mod render;

use crate::config::Limits;
use crate::manifest::{MANIFEST_FILE, Manifest, ToolLimits};
use crate::policy::Grant;
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn parse(s: &str) -> Option<Severity> {
        match s {
            "info" => Some(Severity::Info),
            "low" => Some(Severity::Low),
            "medium" => Some(Severity::Medium),
            "high" => Some(Severity::High),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// Stable across versions, e.g. `BH030`.
    pub id: &'static str,
    pub severity: Severity,
    pub title: &'static str,
    pub message: String,
    pub fix: String,
}

/// What a capability group covers, with the imports that make it up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CapabilityUse {
    pub capability: Capability,
    pub imports: Vec<String>,
}

/// The capability an import belongs to: the loader's own table.
pub use crate::policy::imports::Capability;

/// The review of one bundle.
#[derive(Debug, Clone, Serialize)]
pub struct Review {
    pub path: String,
    pub name: String,
    pub version: String,
    pub digest: String,
    pub pinned: bool,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    pub capabilities: Vec<CapabilityUse>,
    /// What the tool can reach at most, in plain words.
    pub surface: Vec<String>,
    pub grants: Grant,
    pub limits: ToolLimits,
    pub approval_required: bool,
    pub findings: Vec<Finding>,
    /// With `--baseline`: what changed since the approved bundle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<Vec<Finding>>,
}

impl Review {
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().chain(self.changes.iter().flatten()).map(|f| f.severity).max()
    }
}

/// Why a bundle could not be reviewed (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ReviewError {
    pub file: String,
    pub message: String,
}

/// Limits a review parses with: wide, so limits above the defaults become
/// findings instead of parse errors.
fn review_ceilings() -> Limits {
    Limits {
        max_timeout_ms: 3_600_000,
        max_memory_mb: 4096,
        max_output_kb: 64 * 1024,
        max_state_kb: 1024 * 1024,
        ..Limits::default()
    }
}

/// The component's world: (imports, exports) as `package/interface@version`
/// or plain function names.
pub fn decode_world(bytes: &[u8]) -> Result<(Vec<String>, Vec<String>), String> {
    let decoded = wit_component::decode(bytes).map_err(|e| format!("not a WebAssembly component: {e:#}"))?;
    let wit_component::DecodedWasm::Component(resolve, world) = decoded else {
        return Err("a WIT package, not a component".into());
    };
    let world = &resolve.worlds[world];
    let name = |key: &wit_parser::WorldKey, item: &wit_parser::WorldItem| -> Option<String> {
        match item {
            wit_parser::WorldItem::Interface { id, .. } => {
                Some(resolve.id_of(*id).unwrap_or_else(|| resolve.name_world_key(key)))
            }
            wit_parser::WorldItem::Function(f) => Some(f.name.clone()),
            wit_parser::WorldItem::Type { .. } => None,
        }
    };
    let imports = world.imports.iter().filter_map(|(k, i)| name(k, i)).collect();
    let exports = world.exports.iter().filter_map(|(k, i)| name(k, i)).collect();
    Ok((imports, exports))
}

/// Reviews one bundle folder.
pub fn review_bundle(bundle: &Path) -> Result<Review, ReviewError> {
    let (manifest, component) =
        Manifest::load(bundle, &review_ceilings()).map_err(|e| ReviewError { file: e.file, message: e.message })?;
    let file = component.display().to_string();
    let bytes = std::fs::read(&component)
        .map_err(|e| ReviewError { file: file.clone(), message: format!("cannot read: {e}") })?;
    let (imports, exports) = decode_world(&bytes).map_err(|message| ReviewError { file: file.clone(), message })?;
    let digest = crate::util::sha256_hex(&bytes);
    let limits = manifest.limits(&review_ceilings()).map_err(|message| ReviewError { file: file.clone(), message })?;
    let mut capabilities: Vec<CapabilityUse> = Vec::new();
    for import in &imports {
        let capability = Capability::of_import(import);
        match capabilities.iter_mut().find(|c| c.capability == capability) {
            Some(c) => c.imports.push(import.clone()),
            None => capabilities.push(CapabilityUse { capability, imports: vec![import.clone()] }),
        }
    }
    capabilities.sort_by_key(|c| c.capability);
    let grants = manifest.grant.clone();
    let mut review = Review {
        path: bundle.display().to_string(),
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        digest: format!("sha256:{digest}"),
        pinned: manifest.sha256.is_some(),
        imports,
        exports,
        capabilities,
        surface: Vec::new(),
        grants,
        limits,
        approval_required: manifest.approval.required,
        findings: Vec::new(),
        changes: None,
    };
    review.surface = findings::surface(&review);
    review.findings = findings::check(&review, &manifest, &digest);
    Ok(review)
}

/// Reviews `bundle` against the approved `baseline` bundle.
pub fn review_with_baseline(bundle: &Path, baseline: &Path) -> Result<Review, ReviewError> {
    let mut review = review_bundle(bundle)?;
    let old = review_bundle(baseline)?;
    review.changes = Some(findings::diff(&old, &review));
    Ok(review)
}

/// Bundles under `path`: the folder itself if it has a `tool.toml`, else
/// its sub-folders that do.
pub fn bundles_in(path: &Path) -> Vec<std::path::PathBuf> {
    if path.join(MANIFEST_FILE).is_file() {
        return vec![path.to_path_buf()];
    }
    let mut found: Vec<_> = std::fs::read_dir(path)
        .map(|entries| {
            entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.join(MANIFEST_FILE).is_file()).collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}
