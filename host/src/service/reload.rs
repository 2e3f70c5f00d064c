//! Loading the tool set, at start and on reload (SIGHUP, `POST
//! /v1/tools/reload`).
//!
//! A reload re-reads the config file's `tools_dir` and `[tools]` (nothing
//! else: other changes need a restart), pulls the pinned OCI sources, loads
//! and checks every bundle off the async threads, and then swaps the whole
//! set at once. Per tool:
//!
//! - same bytes (component and manifest digests): the loaded tool is kept;
//! - new bytes that load and pass the signature rule: the new version
//!   serves new calls, calls in flight finish on theirs; a `tool_updated`
//!   event goes to the `tools` audit chain before the swap;
//! - a bundle that fails to load: the old version keeps serving;
//! - a tool whose folder or source is gone: removed, audited.
//!
//! Sessions keep the boundary fixed at their creation: each call meets it
//! with the grants of the version that runs (`calls/execute.rs`), so a
//! wider version never widens an existing session.

use super::tools::{ToolInfo, ToolSet, capability_diff, review_summary};
use super::{Result, Service, ServiceError};
use crate::config::{Config, ToolsConfig};
use crate::events::{TOOLS_CHAIN, ToolUpdated, ToolVersion};
use crate::runtime::Runtime;
use crate::runtime::loader::{LoadError, LoadedTool, bundle_dirs, refuse_duplicates};
use crate::supply::signature::{self, Statement, TrustedKeys, Verdict};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The OCI cache, under the data folder.
pub const OCI_CACHE_DIR: &str = "oci";

/// A loaded bundle with what the supply chain found out about it.
pub struct Found {
    pub tool: LoadedTool,
    pub signature: Verdict,
    pub source: Value,
}

/// Every bundle of `tools_dir` and of `[[tools.sources]]`, loaded and
/// checked; the refused ones with their reason. Fails only when the trusted
/// keys cannot be read (no bundle could be judged).
pub async fn load_all(
    runtime: &Arc<Runtime>,
    config: &Config,
    tools_dir: &Path,
    tools: &ToolsConfig,
) -> std::result::Result<(Vec<Found>, Vec<LoadError>), String> {
    let trusted = TrustedKeys::load(&tools.trusted_keys)?;
    let mut refused = Vec::new();
    let mut candidates: Vec<(PathBuf, Value)> = match bundle_dirs(tools_dir) {
        Ok(dirs) => dirs.into_iter().map(|d| (d.clone(), json!({ "kind": "dir", "path": d }))).collect(),
        // No tools folder is normal when every tool comes from a registry.
        Err(_) if !tools.sources.is_empty() && !tools_dir.exists() => Vec::new(),
        Err(e) => {
            refused.push(e);
            Vec::new()
        }
    };
    let cache = config.data_dir.join(OCI_CACHE_DIR);
    for s in &tools.sources {
        match crate::supply::oci::pull(&s.oci, Some(&s.digest), &cache).await {
            Ok((digest, dir)) => candidates.push((dir, json!({ "kind": "oci", "reference": s.oci, "digest": digest }))),
            Err(message) => refused.push(LoadError { file: s.oci.clone(), message }),
        }
    }
    let (runtime, ceilings, volumes) = (runtime.clone(), config.limits.clone(), config.volumes.clone());
    let require = tools.require_signature;
    let loaded = tokio::task::spawn_blocking(move || {
        let mut errors = Vec::new();
        let mut found = Vec::new();
        for (dir, source) in candidates {
            match runtime.load_bundle(&dir, &ceilings) {
                Ok(tool) => found.push((tool, source)),
                Err(e) => errors.push(e),
            }
        }
        let (sources, tools): (Vec<Value>, Vec<LoadedTool>) = found.into_iter().map(|(t, s)| (s, t)).unzip();
        let by_bundle: BTreeMap<PathBuf, Value> = tools.iter().map(|t| t.bundle.clone()).zip(sources).collect();
        let tools = super::workspace::check_volumes(tools, &volumes, &mut errors);
        let (tools, mut errors) = refuse_duplicates(tools, &mut errors);
        let mut out = Vec::new();
        for tool in tools {
            let verdict = verify(&tool, &trusted);
            if require && let Some(why) = verdict.refusal() {
                errors.push(LoadError {
                    file: tool.bundle.display().to_string(),
                    message: format!("bundle {:?} {why}", tool.manifest.name),
                });
                continue;
            }
            if let Some(why) = verdict.refusal().filter(|_| !matches!(verdict, Verdict::Unsigned)) {
                tracing::warn!("tool {} {why} (loaded: require_signature is off)", tool.manifest.name);
            }
            let source = by_bundle.get(&tool.bundle).cloned().unwrap_or_default();
            out.push(Found { tool, signature: verdict, source });
        }
        (out, errors)
    })
    .await
    .map_err(|e| format!("loading the tools failed: {e}"))?;
    refused.extend(loaded.1);
    Ok((loaded.0, refused))
}

/// The signature verdict over the bytes the loader actually loaded.
fn verify(tool: &LoadedTool, trusted: &TrustedKeys) -> Verdict {
    let statement = Statement {
        name: &tool.manifest.name,
        version: &tool.manifest.version,
        manifest: &tool.manifest.digest,
        component: &tool.digest,
    };
    signature::check(&tool.bundle, &statement.text(), trusted)
}

fn info(found: &Found, previous: Option<ToolVersion>) -> ToolInfo {
    ToolInfo {
        review: review_summary(&found.tool.bundle),
        signature: found.signature.clone(),
        source: found.source.clone(),
        loaded_at: crate::util::now_rfc3339(),
        previous,
    }
}

/// The tool set a start serves (what changed since the last recorded
/// versions is `record_started_tools`'s).
pub(super) fn first_set(found: Vec<Found>) -> ToolSet {
    let mut set = ToolSet::default();
    for f in found {
        let name = f.tool.manifest.name.clone();
        set.info.insert(name.clone(), info(&f, None));
        set.tools.insert(name, Arc::new(f.tool));
    }
    set
}

/// What a reload did.
#[derive(Debug, Default, serde::Serialize)]
pub struct ReloadReport {
    pub updated: Vec<Value>,
    pub unchanged: Vec<String>,
    pub refused: Vec<Value>,
    pub generation: u64,
}

impl Service {
    /// Records `tool_updated` for each tool whose version differs from the
    /// last one the `tools` chain holds (a start after the bundles changed).
    pub(super) async fn record_started_tools(&self) -> Result<()> {
        let mut last: BTreeMap<String, Value> = BTreeMap::new();
        let mut after = 0;
        loop {
            let page = self.store.audit(TOOLS_CHAIN, after, 1000).await?;
            let Some(end) = page.last().map(|e| e.seq) else { break };
            for e in page {
                if let Some(tool) = e.data["tool"].as_str() {
                    last.insert(tool.to_string(), e.data["new"].clone());
                }
            }
            after = end;
        }
        let set = self.tools();
        for (name, tool) in &set.tools {
            let now = tool.version();
            let recorded = last.get(name).and_then(|v| serde_json::from_value::<RecordedVersion>(v.clone()).ok());
            if recorded.as_ref().is_some_and(|r| r.same(&now)) {
                continue;
            }
            let old = recorded.map(RecordedVersion::into_version);
            let info = &set.info[name];
            let diff = capability_diff(None, Some(&info.review));
            let sig = serde_json::to_value(&info.signature).unwrap_or_default();
            let event = ToolUpdated::of(name, old.as_ref(), Some(&now), &diff, &sig, &info.source);
            self.store.record_event(TOOLS_CHAIN, "bulkhead", event.into()).await?;
        }
        Ok(())
    }

    /// Reloads the tool set (see the module's rules); `actor` names who
    /// asked, for the audit trail.
    pub async fn reload_tools_as(&self, p: &crate::auth::Principal) -> Result<ReloadReport> {
        super::audit::require_admin(p)?;
        self.reload_tools(&p.name).await
    }

    pub async fn reload_tools(&self, actor: &str) -> Result<ReloadReport> {
        let _one = self.reloading.lock().await;
        let config = match &self.config.file {
            Some(path) => Config::load(Some(path))
                .map_err(|e| ServiceError::BadRequest { code: "invalid_config", message: e.to_string() })?,
            None => self.config.clone(),
        };
        let (found, refused) = load_all(&self.runtime, &self.config, &config.tools_dir, &config.tools)
            .await
            .map_err(|message| ServiceError::BadRequest { code: "invalid_config", message })?;
        let old = self.tools();
        let mut next = ToolSet { generation: old.generation, ..ToolSet::default() };
        let mut report = ReloadReport::default();
        let mut events = Vec::new();
        let mut loaded_names = Vec::new();
        for f in found {
            let name = f.tool.manifest.name.clone();
            loaded_names.push(name.clone());
            match old.tools.get(&name) {
                Some(t) if t.digest == f.tool.digest && t.manifest.digest == f.tool.manifest.digest => {
                    next.tools.insert(name.clone(), t.clone());
                    next.info.insert(name.clone(), old.info[&name].clone());
                    report.unchanged.push(name);
                }
                previous => {
                    let before = previous.map(|t| t.version());
                    let info = info(&f, before.clone());
                    let diff = capability_diff(old.info.get(&name).map(|i| &i.review), Some(&info.review));
                    events.push((name.clone(), before, Some(f.tool.version()), diff, info.clone()));
                    next.tools.insert(name.clone(), Arc::new(f.tool));
                    next.info.insert(name, info);
                }
            }
        }
        for (name, tool) in &old.tools {
            if loaded_names.contains(name) {
                continue;
            }
            let info = &old.info[name];
            if origin_gone(info, &config) {
                let diff = capability_diff(Some(&info.review), None);
                events.push((name.clone(), Some(tool.version()), None, diff, info.clone()));
            } else {
                // It failed to load: the version that works keeps serving.
                next.tools.insert(name.clone(), tool.clone());
                next.info.insert(name.clone(), info.clone());
            }
        }
        for (name, old_v, new_v, diff, info) in &events {
            let sig = match new_v {
                Some(_) => serde_json::to_value(&info.signature).unwrap_or_default(),
                None => Value::Null,
            };
            let source = if new_v.is_some() { info.source.clone() } else { Value::Null };
            let event = ToolUpdated::of(name, old_v.as_ref(), new_v.as_ref(), diff, &sig, &source);
            self.store.record_event(TOOLS_CHAIN, actor, event.into()).await?;
            report.updated.push(json!({ "tool": name, "old": old_v, "new": new_v, "capability_diff": diff }));
        }
        report.refused = refused.iter().map(|e| json!({ "file": e.file, "message": e.message })).collect();
        for e in &refused {
            tracing::warn!("reload: refused {e}");
        }
        if !events.is_empty() {
            next.generation += 1;
            report.generation = next.generation;
            for name in next.tools.keys() {
                self.metrics.add_tool(name);
            }
            let keep: Vec<PathBuf> = next.tools.values().map(|t| t.bundle.clone()).collect();
            *self.tool_set.write().expect("tool set lock poisoned") = Arc::new(next);
            // Pulled bundles no version serves any more: running calls hold
            // their compiled code, not the folder.
            remove_unused_pulls(&self.config.data_dir.join(OCI_CACHE_DIR), &keep);
            let _ = self.tools_changed.send(report.generation);
            tracing::info!("tools reloaded: {} changed", events.len());
        } else {
            report.generation = old.generation;
        }
        Ok(report)
    }
}

fn remove_unused_pulls(cache: &Path, keep: &[PathBuf]) {
    let Ok(entries) = std::fs::read_dir(cache) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let pulled = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.len() == 64);
        if pulled
            && !keep.contains(&path)
            && let Err(e) = std::fs::remove_dir_all(&path)
        {
            tracing::warn!("cannot remove the unused pull {}: {e}", path.display());
        }
    }
}

/// Whether a tool's bundle is no longer part of the configuration: its
/// folder has no `tool.toml`, or no source names its reference any more.
fn origin_gone(info: &ToolInfo, config: &Config) -> bool {
    match info.source["kind"].as_str() {
        Some("dir") => {
            info.source["path"].as_str().is_none_or(|p| !Path::new(p).join(crate::manifest::MANIFEST_FILE).is_file())
        }
        Some("oci") => {
            let reference = info.source["reference"].as_str().unwrap_or_default();
            !config.tools.sources.iter().any(|s| s.oci == reference)
        }
        _ => false,
    }
}

#[derive(serde::Deserialize)]
struct RecordedVersion {
    version: String,
    digest: String,
    manifest_digest: String,
}

impl RecordedVersion {
    fn same(&self, v: &ToolVersion) -> bool {
        self.digest == v.digest && self.manifest_digest == v.manifest_digest && self.version == v.version
    }

    fn into_version(self) -> ToolVersion {
        ToolVersion { version: self.version, digest: self.digest, manifest_digest: self.manifest_digest }
    }
}
