//! Bundle signatures.
//!
//! The scheme is OpenSSH's signature format (SSHSIG, as `ssh-keygen -Y
//! sign` makes and git uses for commits) over Ed25519 keys, checked with
//! RustCrypto's `ssh-key`/`ed25519-dalek`. Chosen over cosign because it
//! needs no transparency log, no network and no OIDC at load time (hosts
//! may be air-gapped), keys are one-line files security teams already know
//! how to keep, and any machine with OpenSSH can check a signature
//! independently of Bulkhead.
//!
//! What is signed is a [`Statement`]: the tool's name and version and the
//! SHA-256 digests of its manifest and its component. A grant changed in
//! `tool.toml`, a swapped component, or a signature made for an older
//! manifest no longer verifies. The signature lives beside the manifest as
//! [`SIGNATURE_FILE`].

use super::bundle::{BundleFiles, read_capped};
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};
use std::path::{Path, PathBuf};

pub const SIGNATURE_FILE: &str = "tool.sig";
/// The SSHSIG namespace: a signature made for anything else (a git commit,
/// a file) is not a bundle signature.
pub const NAMESPACE: &str = "bulkhead-tool";
const MAX_SIGNATURE_BYTES: usize = 16 << 10;
const MAX_KEY_FILE_BYTES: usize = 64 << 10;

/// The signed message: one line per field, so `ssh-keygen -Y verify` over
/// the same text checks it too.
pub struct Statement<'a> {
    pub name: &'a str,
    pub version: &'a str,
    /// `sha256:<hex>` of `tool.toml`'s bytes.
    pub manifest: &'a str,
    /// `sha256:<hex>` of the component's bytes.
    pub component: &'a str,
}

/// The statement of a bundle read from its folder, as [`Statement::text`]
/// (`tools sign`, `tools verify`, `tools statement`).
pub fn statement_of(files: &BundleFiles) -> String {
    let (manifest, component) = (files.manifest_digest(), files.component_digest());
    Statement { name: &files.name, version: &files.version, manifest: &manifest, component: &component }.text()
}

impl Statement<'_> {
    pub fn text(&self) -> String {
        format!(
            "bulkhead tool signature v1\nname: {}\nversion: {}\nmanifest: {}\ncomponent: {}\n",
            self.name, self.version, self.manifest, self.component
        )
    }
}

/// The operator's `[tools] trusted_keys`: OpenSSH Ed25519 public keys, one
/// or more per file (`ssh-ed25519 AAAA... comment` lines; `#` comments).
#[derive(Default)]
pub struct TrustedKeys {
    keys: Vec<(PathBuf, PublicKey)>,
}

impl TrustedKeys {
    pub fn load(files: &[PathBuf]) -> Result<TrustedKeys, String> {
        let mut keys = Vec::new();
        for file in files {
            let bytes = read_capped(file, MAX_KEY_FILE_BYTES)?;
            let text = String::from_utf8(bytes).map_err(|_| format!("{}: is not UTF-8", file.display()))?;
            let before = keys.len();
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let key = PublicKey::from_openssh(line)
                    .map_err(|e| format!("{}:{}: not an OpenSSH public key: {e}", file.display(), n + 1))?;
                if key.algorithm() != Algorithm::Ed25519 {
                    return Err(format!(
                        "{}:{}: {} keys are not accepted; use an Ed25519 key",
                        file.display(),
                        n + 1,
                        key.algorithm()
                    ));
                }
                keys.push((file.clone(), key));
            }
            if keys.len() == before {
                return Err(format!("{}: holds no public key", file.display()));
            }
        }
        Ok(TrustedKeys { keys })
    }
}

/// What checking a bundle's signature found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Verdict {
    /// Signed by a trusted key over exactly these bytes.
    Verified {
        key: String,
    },
    Unsigned,
    /// A valid-looking signature by a key the operator does not trust.
    Untrusted {
        key: String,
    },
    /// A signature that does not hold: tampered, for other bytes, malformed.
    Invalid {
        reason: String,
    },
}

impl Verdict {
    pub fn is_verified(&self) -> bool {
        matches!(self, Verdict::Verified { .. })
    }

    /// Why a bundle with this verdict is refused under `require_signature`.
    pub fn refusal(&self) -> Option<String> {
        match self {
            Verdict::Verified { .. } => None,
            Verdict::Unsigned => {
                Some(format!("is not signed ({SIGNATURE_FILE} missing) and [tools] require_signature = true"))
            }
            Verdict::Untrusted { key } => Some(format!("is signed by {key}, which is not among [tools] trusted_keys")),
            Verdict::Invalid { reason } => Some(format!("has an invalid signature: {reason}")),
        }
    }
}

/// Checks `bundle`'s signature file against `statement`, which the caller
/// builds from the bytes it actually loaded (so nothing is read twice).
pub fn check(bundle: &Path, statement: &str, trusted: &TrustedKeys) -> Verdict {
    let path = bundle.join(SIGNATURE_FILE);
    if !path.exists() {
        return Verdict::Unsigned;
    }
    let sig = match read_capped(&path, MAX_SIGNATURE_BYTES)
        .and_then(|b| SshSig::from_pem(&b).map_err(|e| format!("{SIGNATURE_FILE} is not an SSH signature: {e}")))
    {
        Ok(sig) => sig,
        Err(reason) => return Verdict::Invalid { reason },
    };
    verify(&sig, statement, trusted)
}

fn verify(sig: &SshSig, statement: &str, trusted: &TrustedKeys) -> Verdict {
    if sig.namespace() != NAMESPACE {
        return Verdict::Invalid { reason: format!("made for namespace {:?}, not {NAMESPACE:?}", sig.namespace()) };
    }
    let signer = sig.public_key().fingerprint(HashAlg::Sha256).to_string();
    let Some((_, key)) = trusted.keys.iter().find(|(_, k)| k.key_data() == sig.public_key()) else {
        return Verdict::Untrusted { key: signer };
    };
    match key.verify(NAMESPACE, statement.as_bytes(), sig) {
        Ok(()) => Verdict::Verified { key: signer },
        Err(_) => Verdict::Invalid {
            reason: format!(
                "the signature by {signer} does not cover this manifest and component \
                 (changed since signing, or signed for another version)"
            ),
        },
    }
}

/// Signs the bundle folder with an unencrypted OpenSSH Ed25519 private key
/// and writes [`SIGNATURE_FILE`]; returns the key's fingerprint.
pub fn sign(bundle: &Path, key_file: &Path) -> Result<String, String> {
    let files = BundleFiles::read(bundle)?;
    let pem = zeroize::Zeroizing::new(read_capped(key_file, MAX_KEY_FILE_BYTES)?);
    let key = PrivateKey::from_openssh(&*pem)
        .map_err(|e| format!("{}: not an OpenSSH private key: {e}", key_file.display()))?;
    if key.is_encrypted() {
        return Err(format!(
            "{}: is passphrase-protected; sign the statement with ssh-keygen: `bulkhead tools statement BUNDLE | \
             ssh-keygen -Y sign -f KEY -n {NAMESPACE} > BUNDLE/{SIGNATURE_FILE}` (docs/supply-chain.md)",
            key_file.display()
        ));
    }
    if key.algorithm() != Algorithm::Ed25519 {
        return Err(format!("{}: {} keys are not accepted; use an Ed25519 key", key_file.display(), key.algorithm()));
    }
    let sig = key
        .sign(NAMESPACE, HashAlg::Sha512, statement_of(&files).as_bytes())
        .map_err(|e| format!("cannot sign: {e}"))?;
    let pem = sig.to_pem(LineEnding::LF).map_err(|e| format!("cannot encode the signature: {e}"))?;
    let out = bundle.join(SIGNATURE_FILE);
    crate::util::write_atomic(&out, pem.as_bytes()).map_err(|e| format!("{}: cannot write: {e}", out.display()))?;
    Ok(key.public_key().fingerprint(HashAlg::Sha256).to_string())
}

/// A new Ed25519 key pair: `<prefix>` (private, mode 0600) and `<prefix>.pub`.
pub fn generate(prefix: &Path, comment: &str) -> Result<String, String> {
    let pub_path = PathBuf::from(format!("{}.pub", prefix.display()));
    for p in [prefix, pub_path.as_path()] {
        if p.exists() {
            return Err(format!("{} exists; not overwriting a key", p.display()));
        }
    }
    let mut key = PrivateKey::random(&mut ssh_key::rand_core::OsRng, Algorithm::Ed25519)
        .map_err(|e| format!("cannot generate a key: {e}"))?;
    key.set_comment(comment);
    let pem = key.to_openssh(LineEnding::LF).map_err(|e| format!("cannot encode the key: {e}"))?;
    write_private(prefix, pem.as_bytes()).map_err(|e| format!("{}: cannot write: {e}", prefix.display()))?;
    let public = key.public_key().to_openssh().map_err(|e| format!("cannot encode the key: {e}"))?;
    std::fs::write(&pub_path, format!("{public}\n"))
        .map_err(|e| format!("{}: cannot write: {e}", pub_path.display()))?;
    Ok(key.public_key().fingerprint(HashAlg::Sha256).to_string())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(manifest: &str, component: &str) -> String {
        Statement { name: "t", version: "1.0.0", manifest, component }.text()
    }

    #[test]
    fn verdicts() {
        let key = PrivateKey::random(&mut ssh_key::rand_core::OsRng, Algorithm::Ed25519).unwrap();
        let other = PrivateKey::random(&mut ssh_key::rand_core::OsRng, Algorithm::Ed25519).unwrap();
        let trusted = TrustedKeys { keys: vec![("k.pub".into(), key.public_key().clone())] };
        let signed = statement("sha256:aa", "sha256:bb");
        let sig = |k: &PrivateKey, ns: &str| k.sign(ns, HashAlg::Sha512, signed.as_bytes()).unwrap();
        let fp = key.public_key().fingerprint(HashAlg::Sha256).to_string();
        type Case<'a> = (&'a str, SshSig, String, fn(&Verdict) -> bool);
        let cases: Vec<Case> = vec![
            ("signed by a trusted key", sig(&key, NAMESPACE), statement("sha256:aa", "sha256:bb"), |v| v.is_verified()),
            ("manifest changed", sig(&key, NAMESPACE), statement("sha256:a0", "sha256:bb"), |v| {
                matches!(v, Verdict::Invalid { .. })
            }),
            ("component changed", sig(&key, NAMESPACE), statement("sha256:aa", "sha256:b0"), |v| {
                matches!(v, Verdict::Invalid { .. })
            }),
            ("another key", sig(&other, NAMESPACE), statement("sha256:aa", "sha256:bb"), |v| {
                matches!(v, Verdict::Untrusted { .. })
            }),
            ("another namespace", sig(&key, "git"), statement("sha256:aa", "sha256:bb"), |v| {
                matches!(v, Verdict::Invalid { .. })
            }),
        ];
        for (what, sig, st, ok) in cases {
            let v = verify(&sig, &st, &trusted);
            assert!(ok(&v), "{what}: {v:?}");
        }
        assert_eq!(verify(&sig(&key, NAMESPACE), &signed, &trusted), Verdict::Verified { key: fp });
        assert_eq!(
            verify(&sig(&key, NAMESPACE), &signed, &TrustedKeys::default()),
            Verdict::Untrusted { key: key.public_key().fingerprint(HashAlg::Sha256).to_string() }
        );
    }
}
