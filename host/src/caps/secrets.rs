//! `bulkhead:tool/secrets`: secrets granted to this tool in this session.
//!
//! Values come from the host's environment or files named in the config,
//! read once at start; never from the API or the database. They live in a
//! zeroizing, redacting type, and a read is audited by name only.

use super::HostState;
use super::iface::secrets::Host;
use crate::config::SecretSource;
use crate::events::{Denial, SecretRead};
use std::collections::BTreeMap;
use zeroize::Zeroizing;

/// A secret value: zeroed on drop, never shown by `Debug`.
pub struct Secret(Zeroizing<String>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Default)]
pub struct SecretStore {
    values: BTreeMap<String, Secret>,
}

/// A secret file is a token or a password, not a document.
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

impl SecretStore {
    /// Reads every configured secret; a missing variable or file is an error
    /// naming the secret (never its value).
    pub fn load(sources: &BTreeMap<String, SecretSource>) -> Result<SecretStore, String> {
        let mut values = BTreeMap::new();
        for (name, source) in sources {
            let value = match (&source.env, &source.file) {
                (Some(var), _) => {
                    std::env::var(var).map_err(|_| format!("secret {name}: environment variable {var} is not set"))?
                }
                (None, Some(path)) => {
                    let meta = std::fs::metadata(path)
                        .map_err(|e| format!("secret {name}: cannot read {}: {e}", path.display()))?;
                    if meta.len() > MAX_SECRET_FILE_BYTES {
                        return Err(format!("secret {name}: {} is too large", path.display()));
                    }
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| format!("secret {name}: cannot read {}: {e}", path.display()))?;
                    text.trim_end_matches(['\n', '\r']).to_string()
                }
                (None, None) => return Err(format!("secret {name}: no source")),
            };
            values.insert(name.clone(), Secret(Zeroizing::new(value)));
        }
        Ok(SecretStore { values })
    }

    pub fn get(&self, name: &str) -> Option<&Secret> {
        self.values.get(name)
    }
}

impl Host for HostState {
    async fn get(&mut self, name: String) -> Result<String, String> {
        let granted = self.env.grant.secrets.contains(&name);
        // The name only when granted (an operator's name): a refused one is
        // the tool's text, which could be anything it read.
        let _span = tracing::trace_span!(
            target: crate::telemetry::TARGET,
            "secret.read",
            bulkhead.secret = granted.then_some(name.as_str()),
            bulkhead.granted = granted,
        )
        .entered();
        let value = granted.then(|| self.env.secrets.get(&name)).flatten();
        match value {
            Some(secret) => {
                let value = secret.expose().to_string();
                self.remember_secret(&name, &value);
                self.notes.push(SecretRead::of(&self.env.tool, &name).into());
                Ok(value)
            }
            None => {
                let shown: String = name.chars().take(128).collect();
                self.deny(Denial::Secret { name: &shown });
                Err(format!("secret {shown:?} is not granted to this tool"))
            }
        }
    }
}
