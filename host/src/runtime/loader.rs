//! Loading a tool bundle: manifest, component, import check, pre-linking.
//!
//! A bundle that fails any check is refused with an error naming the file
//! and the problem; the host keeps serving the others.

use super::Runtime;
use crate::caps::ToolPre;
use crate::config::Limits;
use crate::manifest::{MANIFEST_FILE, MAX_COMPONENT_BYTES, Manifest, ToolLimits};
use crate::policy::imports;
use std::path::{Path, PathBuf};

pub struct LoadedTool {
    pub manifest: Manifest,
    pub limits: ToolLimits,
    /// `sha256:<hex>` of the component file.
    pub digest: String,
    /// The component's imports, e.g. `bulkhead:tool/state@0.1.0`.
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    pub bundle: PathBuf,
    pub schema: jsonschema::Validator,
    pub pre: ToolPre<crate::caps::HostState>,
    /// Whether the compiled code came from the cache.
    pub cached: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}: {message}")]
pub struct LoadError {
    pub file: String,
    pub message: String,
}

impl Runtime {
    /// Loads every bundle folder under `dir` (a folder with a `tool.toml`).
    /// Returns the loaded tools and the refused bundles.
    pub fn load_dir(&self, dir: &Path, ceilings: &Limits) -> (Vec<LoadedTool>, Vec<LoadError>) {
        let mut tools = Vec::new();
        let mut errors = Vec::new();
        let bundles = match bundle_dirs(dir) {
            Ok(b) => b,
            Err(e) => return (tools, vec![e]),
        };
        for bundle in bundles {
            match self.load_bundle(&bundle, ceilings) {
                Ok(tool) => tools.push(tool),
                Err(e) => errors.push(e),
            }
        }
        refuse_duplicates(tools, &mut errors)
    }

    pub fn load_bundle(&self, bundle: &Path, ceilings: &Limits) -> Result<LoadedTool, LoadError> {
        let (manifest, component_path) =
            Manifest::load(bundle, ceilings).map_err(|e| LoadError { file: e.file, message: e.message })?;
        let file = component_path.display().to_string();
        let err = |message: String| LoadError { file: file.clone(), message };
        let meta = std::fs::metadata(&component_path).map_err(|e| {
            err(if e.kind() == std::io::ErrorKind::NotFound {
                "component not found (build the guest tools with scripts/build-guests)".into()
            } else {
                format!("cannot read component: {e}")
            })
        })?;
        if meta.len() > MAX_COMPONENT_BYTES as u64 {
            return Err(err(format!("component is {} bytes, over the {MAX_COMPONENT_BYTES}-byte limit", meta.len())));
        }
        let bytes = std::fs::read(&component_path).map_err(|e| err(format!("cannot read component: {e}")))?;
        let hex = crate::util::sha256_hex(&bytes);
        if let Some(pin) = &manifest.sha256
            && !pin.eq_ignore_ascii_case(&hex)
        {
            return Err(err(format!("component digest sha256:{hex} does not match the manifest's pin sha256:{pin}")));
        }
        let (component, cached) = super::engine::compile_cached(&self.engine, &bytes, &hex, self.cache_dir.as_deref())
            .map_err(|e| err(format!("not a valid WebAssembly component: {e:#}")))?;
        let ty = component.component_type();
        let imports: Vec<String> = ty.imports(&self.engine).map(|(name, _)| name.to_string()).collect();
        let exports: Vec<String> = ty.exports(&self.engine).map(|(name, _)| name.to_string()).collect();
        // The one import table, which `bulkhead review` reads too.
        for name in &imports {
            imports::check(name, &manifest.grant).map_err(|refusal| err(refusal.message(name)))?;
        }
        if ty.get_export(&self.engine, "invoke").is_none() {
            return Err(err("does not export `invoke: func(input: string) -> result<string, string>`".into()));
        }
        let instance_pre =
            self.linker.instantiate_pre(&component).map_err(|e| err(format!("cannot be linked: {e:#}")))?;
        let pre =
            ToolPre::new(instance_pre).map_err(|e| err(format!("does not match the bulkhead:tool world: {e:#}")))?;
        let limits = manifest.limits(ceilings).map_err(&err)?;
        let schema =
            jsonschema::validator_for(&manifest.input_schema).map_err(|e| err(format!("input_schema: {e}")))?;
        Ok(LoadedTool {
            manifest,
            limits,
            digest: format!("sha256:{hex}"),
            imports,
            exports,
            bundle: bundle.to_path_buf(),
            schema,
            pre,
            cached,
        })
    }
}

impl LoadedTool {
    /// What names this version in the audit trail.
    pub fn version(&self) -> crate::events::ToolVersion {
        crate::events::ToolVersion {
            version: self.manifest.version.clone(),
            digest: self.digest.clone(),
            manifest_digest: self.manifest.digest.clone(),
        }
    }
}

/// The bundle folders of a tools folder (those with a `tool.toml`), sorted.
pub fn bundle_dirs(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|e| LoadError {
        file: dir.display().to_string(),
        message: format!("cannot read tools folder: {e}"),
    })?;
    let mut bundles: Vec<PathBuf> =
        entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.join(MANIFEST_FILE).is_file()).collect();
    bundles.sort();
    Ok(bundles)
}

/// Keeps the first bundle of each name; later ones are refused.
pub fn refuse_duplicates(loaded: Vec<LoadedTool>, errors: &mut Vec<LoadError>) -> (Vec<LoadedTool>, Vec<LoadError>) {
    let mut tools: Vec<LoadedTool> = Vec::new();
    for tool in loaded {
        if tools.iter().any(|t| t.manifest.name == tool.manifest.name) {
            errors.push(LoadError {
                file: tool.bundle.join(MANIFEST_FILE).display().to_string(),
                message: format!("another bundle already has the name {:?}", tool.manifest.name),
            });
        } else {
            tools.push(tool);
        }
    }
    (tools, std::mem::take(errors))
}
