//! A tool bundle's manifest, `tool.toml` (contract §4).
//!
//! Unknown keys and bad values are errors that name the file and the key;
//! limits above the operator's ceilings are refused, not silently lowered.

use crate::config::Limits;
use crate::policy::{Grant, GrantSpec};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const MANIFEST_FILE: &str = "tool.toml";
/// A manifest is a few KB; anything larger is not one.
pub const MAX_MANIFEST_BYTES: usize = 256 << 10;
/// Components are tools, not applications: bound what a bundle may make the
/// host read and compile.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// Path of the component, relative to `tool.toml`, inside the bundle.
    pub component: PathBuf,
    /// Optional pin: the host refuses a component with another digest.
    pub sha256: Option<String>,
    #[serde(default = "any_object")]
    pub input_schema: serde_json::Value,
    /// `[grants]` as written.
    #[serde(default)]
    pub grants: GrantSpec,
    /// The same, parsed: what the tool may ever use (filled by `parse`).
    #[serde(skip)]
    pub grant: Grant,
    #[serde(default)]
    pub limits: ManifestLimits,
    #[serde(default)]
    pub approval: Approval,
    /// `sha256:<hex>` of the manifest's text (filled by `parse`): with the
    /// component's digest, what names this version of the tool.
    #[serde(skip)]
    pub digest: String,
}

fn any_object() -> serde_json::Value {
    serde_json::json!({ "type": "object" })
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestLimits {
    pub timeout_ms: Option<u64>,
    pub memory_mb: Option<u64>,
    pub output_kb: Option<u64>,
    pub state_kb: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    #[serde(default)]
    pub required: bool,
}

/// The limits a tool's calls run under: the manifest's, or a default, never
/// above the operator's ceilings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ToolLimits {
    pub timeout_ms: u64,
    pub memory_mb: u64,
    pub output_kb: u64,
    pub state_kb: u64,
}

/// Used when a manifest does not say (the contract's example values).
pub const DEFAULT_TOOL_LIMITS: ToolLimits =
    ToolLimits { timeout_ms: 10_000, memory_mb: 64, output_kb: 256, state_kb: 1024 };

#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ManifestError {
    pub file: String,
    pub message: String,
}

impl Manifest {
    /// Reads and validates `<bundle>/tool.toml`; returns it with the
    /// component's full path.
    pub fn load(bundle: &Path, ceilings: &Limits) -> Result<(Manifest, PathBuf), ManifestError> {
        let path = bundle.join(MANIFEST_FILE);
        let file = path.display().to_string();
        let err = |message: String| ManifestError { file: file.clone(), message };
        let meta = std::fs::metadata(&path).map_err(|e| err(format!("cannot read: {e}")))?;
        if meta.len() > MAX_MANIFEST_BYTES as u64 {
            return Err(err(format!("is {} bytes, over the {MAX_MANIFEST_BYTES}-byte limit", meta.len())));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| err(format!("cannot read: {e}")))?;
        let manifest = Manifest::parse(&text, ceilings).map_err(err)?;
        let component = bundle.join(&manifest.component);
        Ok((manifest, component))
    }

    pub fn parse(text: &str, ceilings: &Limits) -> Result<Manifest, String> {
        let mut m: Manifest = toml::from_str(text).map_err(|e| crate::util::toml_error(text, &e))?;
        if !crate::util::is_valid_name(&m.name) {
            return Err(format!("name = {:?} must match [a-z0-9-]{{1,64}}", m.name));
        }
        if m.version.is_empty() || m.version.len() > 64 {
            return Err("version must be 1 to 64 characters".into());
        }
        if m.description.len() > 4096 {
            return Err("description is over 4096 bytes".into());
        }
        if !crate::util::is_inside_relative(&m.component) {
            return Err(format!("component = {:?} must be a relative path inside the bundle", m.component));
        }
        if let Some(pin) = &m.sha256
            && (pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err("sha256 must be 64 hex digits".into());
        }
        if !m.input_schema.is_object() {
            return Err("input_schema must be a table (a JSON Schema object)".into());
        }
        jsonschema::validator_for(&m.input_schema)
            .map_err(|e| format!("input_schema is not a valid JSON Schema: {e}"))?;
        m.grant = Grant::from_manifest(&m.grants)?;
        m.digest = crate::util::sha256_digest(text.as_bytes());
        m.limits(ceilings)?;
        Ok(m)
    }

    /// Effective limits; a value above the ceiling is an error naming the key.
    pub fn limits(&self, ceilings: &Limits) -> Result<ToolLimits, String> {
        let pick = |key: &str, asked: Option<u64>, default: u64, ceiling: u64| match asked {
            Some(0) => Err(format!("limits.{key} must be above 0")),
            Some(v) if v > ceiling => Err(format!("limits.{key} = {v} is above the host's ceiling {ceiling}")),
            Some(v) => Ok(v),
            None => Ok(default.min(ceiling)),
        };
        let d = DEFAULT_TOOL_LIMITS;
        let l = &self.limits;
        Ok(ToolLimits {
            timeout_ms: pick("timeout_ms", l.timeout_ms, d.timeout_ms, ceilings.max_timeout_ms)?,
            memory_mb: pick("memory_mb", l.memory_mb, d.memory_mb, ceilings.max_memory_mb)?,
            output_kb: pick("output_kb", l.output_kb, d.output_kb, ceilings.max_output_kb)?,
            state_kb: pick("state_kb", l.state_kb, d.state_kb, ceilings.max_state_kb)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        name = "http-fetch"
        version = "0.1.0"
        description = "Fetch a URL"
        component = "http_fetch.wasm"
        input_schema = { type = "object", required = ["url"], properties = { url = { type = "string" } } }
        [grants]
        network = ["api.example.com", "*.example.org:8443"]
        files = [{ path = "/workspace", source = "session", access = "read-write" }]
        secrets = ["GITHUB_TOKEN"]
        env = ["TZ"]
        history = false
        [limits]
        timeout_ms = 10000
        [approval]
        required = true
    "#;

    #[test]
    fn contract_example_parses_with_defaults_filled() {
        let m = Manifest::parse(GOOD, &Limits::default()).unwrap();
        assert_eq!(m.name, "http-fetch");
        assert!(m.approval.required);
        let l = m.limits(&Limits::default()).unwrap();
        assert_eq!((l.timeout_ms, l.memory_mb), (10_000, DEFAULT_TOOL_LIMITS.memory_mb));
    }

    #[test]
    fn defaults_never_exceed_ceilings() {
        let m = Manifest::parse("name = \"t\"\nversion = \"1\"\ncomponent = \"t.wasm\"", &Limits::default()).unwrap();
        let ceilings = Limits { max_memory_mb: 8, ..Limits::default() };
        assert_eq!(m.limits(&ceilings).unwrap().memory_mb, 8);
        assert_eq!(m.input_schema, serde_json::json!({"type": "object"}));
    }

    #[test]
    fn bad_manifests_name_the_key() {
        let base = "version = \"1\"\ncomponent = \"t.wasm\"\n";
        let cases = [
            (format!("name = \"t\"\n{base}colour = \"red\""), "colour"),
            (format!("name = \"T!\"\n{base}"), "name"),
            (base.to_string(), "name"),
            ("name = \"t\"\nversion = \"1\"\ncomponent = \"../../etc/passwd\"".to_string(), "component"),
            ("name = \"t\"\nversion = \"1\"\ncomponent = \"/abs.wasm\"".to_string(), "component"),
            (format!("name = \"t\"\n{base}sha256 = \"abc\""), "sha256"),
            (format!("name = \"t\"\n{base}input_schema = \"string\""), "input_schema"),
            (format!("name = \"t\"\n{base}input_schema = {{ type = \"no-such-type\" }}"), "input_schema"),
            (format!("name = \"t\"\n{base}[limits]\ntimeout_ms = 99999999"), "limits.timeout_ms"),
            (format!("name = \"t\"\n{base}[limits]\nmemory_mb = 0"), "limits.memory_mb"),
            (format!("name = \"t\"\n{base}[limits]\ncpu = 1"), "cpu"),
            (format!("name = \"t\"\n{base}[grants]\nnetwork = [\"http://x\"]"), "grants.network"),
            (format!("name = \"t\"\n{base}[grants]\nsockets = true"), "sockets"),
            (format!("name = \"t\"\n{base}[approval]\nrequired = \"yes\""), "required"),
        ];
        for (text, needle) in cases {
            let err = Manifest::parse(&text, &Limits::default()).expect_err(&text);
            assert!(err.contains(needle), "{text:?} gave {err:?}");
        }
    }
}
