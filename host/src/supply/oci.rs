//! Tool bundles as OCI artifacts.
//!
//! An artifact is an OCI image manifest whose config and layers carry
//! Bulkhead's own media types: the bundle's `tool.toml`, its component, its
//! `bulkhead review` report (JSON) and, when signed, its signature. Pulled
//! bundles are kept under the data folder in `oci/<hex of the manifest
//! digest>/`, and checked again against that digest every time they are
//! opened, so a changed byte in the cache is a refused bundle, not a tool.
//!
//! Registries on a loopback address are spoken to over plain HTTP (as
//! Docker does for `localhost`); all others over HTTPS. Credentials come
//! from `BULKHEAD_REGISTRY_USERNAME` and `BULKHEAD_REGISTRY_PASSWORD`, never
//! from the config or the database.

use super::bundle::{self, BundleFiles, MAX_COMPONENT_BYTES, MAX_MANIFEST_BYTES, digest, plain_relative};
use super::signature::SIGNATURE_FILE;
use crate::manifest::MANIFEST_FILE;
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const ARTIFACT_TYPE: &str = "application/vnd.bulkhead.tool.v1";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.bulkhead.tool.config.v1+json";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.bulkhead.tool.manifest.v1+toml";
pub const COMPONENT_MEDIA_TYPE: &str = "application/vnd.bulkhead.tool.component.v1+wasm";
pub const REVIEW_MEDIA_TYPE: &str = "application/vnd.bulkhead.tool.review.v1+json";
pub const SIGNATURE_MEDIA_TYPE: &str = "application/vnd.bulkhead.tool.signature.v1+sshsig";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const TITLE: &str = "org.opencontainers.image.title";
/// The OCI manifest kept beside a pulled bundle: what its digest covers.
pub const OCI_MANIFEST_FILE: &str = "oci-manifest.json";
pub const REVIEW_FILE: &str = "review.json";
const MAX_OCI_MANIFEST_BYTES: usize = 64 << 10;
const MAX_SMALL_BLOB: usize = 1 << 20;
pub const USERNAME_ENV: &str = "BULKHEAD_REGISTRY_USERNAME";
pub const PASSWORD_ENV: &str = "BULKHEAD_REGISTRY_PASSWORD";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImageManifest {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    artifact_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

impl Descriptor {
    fn of(media_type: &str, bytes: &[u8], title: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: digest(bytes),
            size: bytes.len() as i64,
            annotations: title.map(|t| BTreeMap::from([(TITLE.to_string(), t.to_string())])).unwrap_or_default(),
        }
    }
}

pub fn parse_reference(s: &str) -> Result<Reference, String> {
    if s.is_empty() || s.len() > 512 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{:?} is not an OCI reference like \"registry.example.com/tools/name:1.0.0\"", s));
    }
    s.parse::<Reference>().map_err(|e| format!("{s:?} is not an OCI reference: {e}"))
}

/// A registry client for `reference`'s registry.
fn client(reference: &Reference) -> Client {
    // reqwest is built without a crypto provider of its own: the host's ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let host = reference.registry().rsplit_once(':').map_or(reference.registry(), |(h, _)| h);
    let loopback = crate::util::is_loopback_host(host);
    Client::new(ClientConfig {
        protocol: if loopback { ClientProtocol::Http } else { ClientProtocol::Https },
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..ClientConfig::default()
    })
}

fn auth() -> RegistryAuth {
    match (std::env::var(USERNAME_ENV), std::env::var(PASSWORD_ENV)) {
        (Ok(user), Ok(password)) if !user.is_empty() => RegistryAuth::Basic(user, password),
        _ => RegistryAuth::Anonymous,
    }
}

/// Pushes the bundle folder to `reference`; returns the artifact's digest.
/// `review` is the bundle's review report as JSON.
pub async fn push(bundle_dir: &Path, reference: &str, review: &[u8]) -> Result<String, String> {
    let reference = parse_reference(reference)?;
    let files = BundleFiles::read(bundle_dir)?;
    let signature = match bundle_dir.join(SIGNATURE_FILE) {
        p if p.exists() => Some(bundle::read_capped(&p, MAX_SMALL_BLOB)?),
        _ => None,
    };
    let config = serde_json::to_vec(&serde_json::json!({ "name": files.name, "version": files.version }))
        .map_err(|e| e.to_string())?;
    let component_title = files.component_path.to_string_lossy().to_string();
    let mut blobs: Vec<(&str, &[u8], Option<&str>)> = vec![
        (MANIFEST_MEDIA_TYPE, &files.manifest, Some(MANIFEST_FILE)),
        (COMPONENT_MEDIA_TYPE, &files.component, Some(&component_title)),
        (REVIEW_MEDIA_TYPE, review, Some(REVIEW_FILE)),
    ];
    if let Some(sig) = &signature {
        blobs.push((SIGNATURE_MEDIA_TYPE, sig, Some(SIGNATURE_FILE)));
    }
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        artifact_type: Some(ARTIFACT_TYPE.into()),
        config: Descriptor::of(CONFIG_MEDIA_TYPE, &config, None),
        layers: blobs.iter().map(|(t, b, title)| Descriptor::of(t, b, *title)).collect(),
        annotations: BTreeMap::from([
            (TITLE.to_string(), files.name.clone()),
            ("org.opencontainers.image.version".to_string(), files.version.clone()),
        ]),
    };
    let body = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    let client = client(&reference);
    let auth = auth();
    client.store_auth_if_needed(reference.resolve_registry(), &auth).await;
    client
        .auth(&reference, &auth, oci_client::RegistryOperation::Push)
        .await
        .map_err(|e| registry_error(&reference, e))?;
    for (blob, d) in blobs
        .iter()
        .map(|(_, b, _)| *b)
        .chain([config.as_slice()])
        .zip(manifest.layers.iter().map(|l| l.digest.clone()).chain([manifest.config.digest.clone()]))
    {
        if !client.blob_exists(&reference, &d).await.map_err(|e| registry_error(&reference, e))? {
            client.push_blob(&reference, blob.to_vec(), &d).await.map_err(|e| registry_error(&reference, e))?;
        }
    }
    let content_type = http::HeaderValue::from_static(OCI_MANIFEST);
    client
        .push_manifest_raw(&reference, body.clone(), content_type)
        .await
        .map_err(|e| registry_error(&reference, e))?;
    Ok(digest(&body))
}

fn registry_error(reference: &Reference, e: oci_client::errors::OciDistributionError) -> String {
    format!("registry {}: {e}", reference.registry())
}

/// Pulls `reference` (a tag or a digest) into `cache/<hex>/`, checking the
/// artifact against `pin` when given; returns the digest and the bundle
/// folder. An artifact already cached under its digest is reused after the
/// registry confirmed the tag (or `pin` named it and the registry is down).
pub async fn pull(reference: &str, pin: Option<&str>, cache: &Path) -> Result<(String, PathBuf), String> {
    let parsed = parse_reference(reference)?;
    let client = client(&parsed);
    let auth = auth();
    let fetched = client.pull_manifest_raw(&parsed, &auth, &[OCI_MANIFEST]).await;
    let (body, digest_now) = match fetched {
        Ok((body, _)) => {
            if body.len() > MAX_OCI_MANIFEST_BYTES {
                return Err(format!("{reference}: the OCI manifest is over {MAX_OCI_MANIFEST_BYTES} bytes"));
            }
            let d = digest(&body);
            (body, d)
        }
        Err(e) => {
            // The pinned bytes are enough when the registry cannot be asked.
            if let Some(pin) = pin
                && let Ok(dir) = open_cached(cache, pin)
            {
                tracing::warn!("{reference}: registry unreachable ({e}); using the cached {pin}");
                return Ok((pin.to_string(), dir));
            }
            return Err(registry_error(&parsed, e));
        }
    };
    if let Some(pin) = pin
        && pin != digest_now
    {
        return Err(format!(
            "{reference} now names {digest_now}, not the pinned {pin}: the tag moved; \
             review the new version and pin its digest"
        ));
    }
    if let Some(d) = parsed.digest()
        && d != digest_now
    {
        return Err(format!("{reference}: the registry answered a manifest with digest {digest_now}"));
    }
    if let Ok(dir) = open_cached(cache, &digest_now) {
        return Ok((digest_now, dir));
    }
    let manifest: ImageManifest =
        serde_json::from_slice(&body).map_err(|e| format!("{reference}: not an OCI image manifest: {e}"))?;
    let layers = check_shape(&manifest).map_err(|e| format!("{reference}: {e}"))?;
    let mut blobs = Vec::new();
    for layer in &layers {
        let max = max_size(&layer.media_type);
        let bytes = pull_blob(&client, &parsed, layer, max).await?;
        blobs.push((*layer, bytes));
    }
    let dir = write_cache(cache, &digest_now, &body, &blobs)?;
    open_cached(cache, &digest_now)?;
    Ok((digest_now, dir))
}

fn max_size(media_type: &str) -> usize {
    match media_type {
        COMPONENT_MEDIA_TYPE => MAX_COMPONENT_BYTES,
        MANIFEST_MEDIA_TYPE => MAX_MANIFEST_BYTES,
        _ => MAX_SMALL_BLOB,
    }
}

async fn pull_blob(client: &Client, reference: &Reference, layer: &Descriptor, max: usize) -> Result<Vec<u8>, String> {
    if layer.size < 0 || layer.size as u64 > max as u64 {
        return Err(format!(
            "{}: layer {} is {} bytes, over the {max}-byte limit",
            reference.whole(),
            layer.digest,
            layer.size
        ));
    }
    let desc = OciDescriptor {
        media_type: layer.media_type.clone(),
        digest: layer.digest.clone(),
        size: layer.size,
        ..OciDescriptor::default()
    };
    let mut stream = client.pull_blob_stream(reference, &desc).await.map_err(|e| registry_error(reference, e))?;
    let mut out = Vec::with_capacity(layer.size as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("registry {}: {e}", reference.registry()))?;
        if out.len() + chunk.len() > layer.size as usize {
            return Err(format!(
                "{}: layer {} is longer than its {} bytes",
                reference.whole(),
                layer.digest,
                layer.size
            ));
        }
        out.extend_from_slice(&chunk);
    }
    // Our own check, whatever the client checked.
    if digest(&out) != layer.digest {
        return Err(format!(
            "{}: layer {} does not match its digest (tampered in the registry or on the way)",
            reference.whole(),
            layer.digest
        ));
    }
    Ok(out)
}

/// The artifact is a bundle: our config, exactly one manifest and one
/// component layer, at most one review and one signature, nothing else.
fn check_shape(m: &ImageManifest) -> Result<Vec<&Descriptor>, String> {
    if m.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(format!("not a Bulkhead tool artifact (config media type {:?})", m.config.media_type));
    }
    let mut all = Vec::new();
    for ty in [MANIFEST_MEDIA_TYPE, COMPONENT_MEDIA_TYPE, REVIEW_MEDIA_TYPE, SIGNATURE_MEDIA_TYPE] {
        let found: Vec<&Descriptor> = m.layers.iter().filter(|l| l.media_type == ty).collect();
        let required = matches!(ty, MANIFEST_MEDIA_TYPE | COMPONENT_MEDIA_TYPE);
        match found.len() {
            0 if required => return Err(format!("no {ty} layer")),
            0 => {}
            1 => all.push(found[0]),
            _ => return Err(format!("more than one {ty} layer")),
        }
        if let Some(l) = found.first()
            && !bundle::is_digest(&l.digest)
        {
            return Err(format!("layer digest {:?} is not sha256", l.digest));
        }
    }
    if all.len() != m.layers.len() {
        return Err("layers of unknown media types".into());
    }
    Ok(all)
}

fn cache_dir(cache: &Path, digest: &str) -> PathBuf {
    cache.join(digest.trim_start_matches("sha256:"))
}

/// Writes a pulled bundle as a folder the loader reads: through a temporary
/// folder and a rename, so a crash leaves no half-written bundle.
fn write_cache(cache: &Path, d: &str, body: &[u8], blobs: &[(&Descriptor, Vec<u8>)]) -> Result<PathBuf, String> {
    let io = |e: std::io::Error| format!("cannot write the OCI cache in {}: {e}", cache.display());
    std::fs::create_dir_all(cache).map_err(io)?;
    let dir = cache_dir(cache, d);
    let tmp = cache.join(format!(".{}.{}.tmp", d.trim_start_matches("sha256:"), std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(io)?;
    let result = (|| {
        write_bundle(&tmp, body, blobs)?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).map_err(io)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result.map(|()| dir)
}

/// The files of a pulled bundle in `dir`: each layer under its own name
/// (the component where the manifest says), and the OCI manifest.
fn write_bundle(dir: &Path, body: &[u8], blobs: &[(&Descriptor, Vec<u8>)]) -> Result<(), String> {
    let io = |e: std::io::Error| format!("cannot write {}: {e}", dir.display());
    let manifest = blobs.iter().find(|(l, _)| l.media_type == MANIFEST_MEDIA_TYPE).map(|(_, b)| b.as_slice());
    let component_path = component_path(manifest.unwrap_or_default())?;
    for (layer, bytes) in blobs {
        let path = match layer.media_type.as_str() {
            MANIFEST_MEDIA_TYPE => dir.join(MANIFEST_FILE),
            COMPONENT_MEDIA_TYPE => dir.join(&component_path),
            REVIEW_MEDIA_TYPE => dir.join(REVIEW_FILE),
            SIGNATURE_MEDIA_TYPE => dir.join(SIGNATURE_FILE),
            _ => continue,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&path, bytes).map_err(io)?;
    }
    std::fs::write(dir.join(OCI_MANIFEST_FILE), body).map_err(io)
}

fn component_path(manifest: &[u8]) -> Result<PathBuf, String> {
    #[derive(Deserialize)]
    struct Head {
        component: PathBuf,
    }
    let text = std::str::from_utf8(manifest).map_err(|_| "tool.toml is not UTF-8".to_string())?;
    let head: Head = toml::from_str(text).map_err(|e| format!("tool.toml: {}", crate::util::toml_error(text, &e)))?;
    if !plain_relative(&head.component) || head.component.as_os_str() == MANIFEST_FILE {
        return Err(format!("tool.toml: component = {:?} must be a plain relative path", head.component));
    }
    Ok(head.component)
}

/// The cached bundle of `digest`, after checking every byte against it: the
/// OCI manifest's digest, and each layer file's digest and size.
pub fn open_cached(cache: &Path, d: &str) -> Result<PathBuf, String> {
    let dir = cache_dir(cache, d);
    let body = bundle::read_capped(&dir.join(OCI_MANIFEST_FILE), MAX_OCI_MANIFEST_BYTES)?;
    if digest(&body) != d {
        return Err(format!("{}: the cached OCI manifest does not match {d}", dir.display()));
    }
    verify_folder(&dir, &body)?;
    Ok(dir)
}

/// Every layer file of `dir` matches the OCI manifest `body`.
fn verify_folder(dir: &Path, body: &[u8]) -> Result<(), String> {
    let manifest: ImageManifest = serde_json::from_slice(body).map_err(|e| format!("{}: {e}", dir.display()))?;
    let layers = check_shape(&manifest)?;
    let tool_toml = bundle::read_capped(&dir.join(MANIFEST_FILE), MAX_MANIFEST_BYTES)?;
    let component = component_path(&tool_toml)?;
    for layer in layers {
        let path = match layer.media_type.as_str() {
            MANIFEST_MEDIA_TYPE => dir.join(MANIFEST_FILE),
            COMPONENT_MEDIA_TYPE => dir.join(&component),
            REVIEW_MEDIA_TYPE => dir.join(REVIEW_FILE),
            _ => dir.join(SIGNATURE_FILE),
        };
        let bytes = bundle::read_capped(&path, max_size(&layer.media_type))?;
        if digest(&bytes) != layer.digest {
            return Err(format!(
                "{}: does not match the artifact's layer {} (changed on disk)",
                path.display(),
                layer.digest
            ));
        }
    }
    Ok(())
}

/// Copies a pulled bundle to `out` (`bulkhead tools pull --output`).
pub fn export(from: &Path, out: &Path) -> Result<(), String> {
    let io = |e: std::io::Error| format!("{}: {e}", out.display());
    if out.exists() && std::fs::read_dir(out).map_err(io)?.next().is_some() {
        return Err(format!("{}: exists and is not empty", out.display()));
    }
    copy_dir(from, out).map_err(io)
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(layers: &[&str]) -> ImageManifest {
        ImageManifest {
            schema_version: 2,
            media_type: None,
            artifact_type: None,
            config: Descriptor::of(CONFIG_MEDIA_TYPE, b"{}", None),
            layers: layers.iter().map(|t| Descriptor::of(t, t.as_bytes(), None)).collect(),
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn only_bundle_shaped_artifacts_are_accepted() {
        let cases = [
            (vec![MANIFEST_MEDIA_TYPE, COMPONENT_MEDIA_TYPE], true),
            (vec![MANIFEST_MEDIA_TYPE, COMPONENT_MEDIA_TYPE, REVIEW_MEDIA_TYPE, SIGNATURE_MEDIA_TYPE], true),
            (vec![COMPONENT_MEDIA_TYPE], false),
            (vec![MANIFEST_MEDIA_TYPE, COMPONENT_MEDIA_TYPE, COMPONENT_MEDIA_TYPE], false),
            (vec![MANIFEST_MEDIA_TYPE, COMPONENT_MEDIA_TYPE, "application/octet-stream"], false),
        ];
        for (layers, ok) in cases {
            assert_eq!(check_shape(&manifest(&layers)).is_ok(), ok, "{layers:?}");
        }
        let mut image = manifest(&[MANIFEST_MEDIA_TYPE, COMPONENT_MEDIA_TYPE]);
        image.config.media_type = "application/vnd.oci.image.config.v1+json".into();
        assert!(check_shape(&image).is_err());
    }

    #[test]
    fn references_and_component_paths() {
        assert!(parse_reference("127.0.0.1:5000/tools/counter:1.0.0").is_ok());
        for bad in ["", "has space/x:1", "UPPER/Case:1"] {
            assert!(parse_reference(bad).is_err(), "{bad}");
        }
        assert!(component_path(b"component = \"../evil.wasm\"").is_err());
        assert!(component_path(b"component = \"tool.toml\"").is_err());
        assert_eq!(component_path(b"component = \"a.wasm\"").unwrap(), PathBuf::from("a.wasm"));
    }
}
