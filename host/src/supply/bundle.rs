//! A bundle's files as the supply chain sees them: the manifest's bytes and
//! the component's, and the digests that name this version of the tool.

use crate::manifest::MANIFEST_FILE;
pub use crate::manifest::{MAX_COMPONENT_BYTES, MAX_MANIFEST_BYTES};
use std::path::{Path, PathBuf};

/// The parts of `tool.toml` the supply chain needs; the loader checks the rest.
#[derive(serde::Deserialize)]
struct Head {
    name: String,
    version: String,
    component: PathBuf,
}

/// A bundle read from its folder: every byte that decides what runs.
pub struct BundleFiles {
    pub name: String,
    pub version: String,
    pub manifest: Vec<u8>,
    /// The manifest's `component`, relative to the bundle.
    pub component_path: PathBuf,
    pub component: Vec<u8>,
}

impl BundleFiles {
    pub fn read(bundle: &Path) -> Result<BundleFiles, String> {
        let manifest_path = bundle.join(MANIFEST_FILE);
        let manifest = read_capped(&manifest_path, MAX_MANIFEST_BYTES)?;
        let head = parse_head(&manifest).map_err(|e| format!("{}: {e}", manifest_path.display()))?;
        let component = read_capped(&bundle.join(&head.component), MAX_COMPONENT_BYTES)?;
        Ok(BundleFiles { name: head.name, version: head.version, manifest, component_path: head.component, component })
    }

    pub fn manifest_digest(&self) -> String {
        digest(&self.manifest)
    }

    pub fn component_digest(&self) -> String {
        digest(&self.component)
    }
}

fn parse_head(manifest: &[u8]) -> Result<Head, String> {
    let text = std::str::from_utf8(manifest).map_err(|_| "is not UTF-8".to_string())?;
    let head: Head = toml::from_str(text).map_err(|e| crate::util::toml_error(text, &e))?;
    if !plain_relative(&head.component) {
        return Err(format!("component = {:?} must be a relative path inside the bundle", head.component));
    }
    Ok(head)
}

pub use crate::util::is_inside_relative as plain_relative;

pub use crate::util::{is_sha256_digest as is_digest, sha256_digest as digest};

pub fn read_capped(path: &Path, max: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(max as u64 + 1).read_to_end(&mut bytes).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    if bytes.len() > max {
        return Err(format!("{}: over the {max}-byte limit", path.display()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_and_paths() {
        assert!(is_digest(&digest(b"x")));
        for bad in ["sha256:", "sha256:ABC", "md5:00", &format!("sha256:{}", "A".repeat(64))] {
            assert!(!is_digest(bad), "{bad}");
        }
        for (path, ok) in [
            ("a.wasm", true),
            ("dir/a.wasm", true),
            ("../a.wasm", false),
            ("/a.wasm", false),
            ("./a.wasm", true),
            ("", false),
        ] {
            assert_eq!(plain_relative(Path::new(path)), ok, "{path}");
        }
    }
}
