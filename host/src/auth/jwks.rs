//! An issuer's signing keys (a JWKS), read from a file or fetched from a
//! URL, and cached.
//!
//! Keys are fetched at the first use, again once they are older than
//! [`REFRESH_AFTER`], and again when a token names a `kid` the set lacks (a
//! rotation), at most once per [`MIN_REFETCH`] so made-up `kid`s cannot
//! flood the identity provider. One fetch at a time per issuer, bounded by
//! [`FETCH_TIMEOUT`] and [`MAX_JWKS_BYTES`]. A failed fetch keeps the last
//! good keys for [`STALE_AFTER`]; a token whose key cannot be found because
//! the fetch failed is refused as unavailable, never accepted.
//!
//! Only signing keys are used: RSA, EC P-256 / P-384 and Ed25519, with
//! `use = "sig"` or no `use`. Symmetric (`oct`) keys are skipped, so a
//! public key can never be used as an HMAC secret.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_JWKS_BYTES: usize = 1 << 20;
const MAX_KEYS: usize = 100;
/// Keys older than this are fetched again at their next use.
pub const REFRESH_AFTER: Duration = Duration::from_secs(300);
/// Past this without a successful fetch, the cached keys are not used.
pub const STALE_AFTER: Duration = Duration::from_secs(3600);
/// A `kid` the set lacks refetches at most this often.
pub const MIN_REFETCH: Duration = Duration::from_secs(2);

/// One usable signing key.
pub struct Key {
    pub kid: Option<String>,
    /// The algorithms this key verifies (its `alg`, or its type's).
    pub algorithms: Vec<Algorithm>,
    pub decoding: DecodingKey,
}

#[derive(Debug, PartialEq)]
pub enum KeyError {
    /// The set, freshly read, has no key for this `kid` and algorithm.
    Unknown,
    /// The keys could not be read and none cached is usable (the detail is
    /// for the log, not for the caller).
    Unavailable(String),
}

enum Source {
    File(PathBuf),
    Url(reqwest::Url),
}

#[derive(Default)]
struct Cache {
    keys: Arc<Vec<Arc<Key>>>,
    fetched: Option<Instant>,
    attempted: Option<Instant>,
    /// Counts successful reads; a token verified by an older set is
    /// checked again.
    generation: u64,
    last_error: Option<String>,
}

pub struct KeySet {
    source: Source,
    cache: RwLock<Cache>,
    fetching: tokio::sync::Mutex<()>,
}

impl KeySet {
    pub fn from_file(path: PathBuf) -> KeySet {
        KeySet::new(Source::File(path))
    }

    pub fn from_url(url: &str) -> Result<KeySet, String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("jwks_url {url:?}: {e}"))?;
        Ok(KeySet::new(Source::Url(url)))
    }

    fn new(source: Source) -> KeySet {
        KeySet { source, cache: RwLock::new(Cache::default()), fetching: tokio::sync::Mutex::new(()) }
    }

    /// Where the keys come from, for log lines.
    pub fn describe(&self) -> String {
        match &self.source {
            Source::File(p) => p.display().to_string(),
            Source::Url(u) => u.to_string(),
        }
    }

    /// The generation of the cached keys while they need no refresh.
    pub fn fresh_generation(&self) -> Option<u64> {
        let c = self.cache.read().expect("jwks cache poisoned");
        c.fetched.filter(|t| t.elapsed() < REFRESH_AFTER).map(|_| c.generation)
    }

    /// The key for a token's `kid` (or the only key for `alg` when the
    /// token names none) and the generation of the set it came from.
    pub async fn find(&self, kid: Option<&str>, alg: Algorithm) -> Result<(Arc<Key>, u64), KeyError> {
        let before = self.look(kid, alg);
        if let (Some(key), true) = (&before.key, before.fresh) {
            return Ok((key.clone(), before.generation));
        }
        let _one_fetch = self.fetching.lock().await;
        let now = self.look(kid, alg);
        if now.generation != before.generation && now.fresh {
            // Another request fetched while this one waited.
            return now.key.map(|k| (k, now.generation)).ok_or(KeyError::Unknown);
        }
        let fetched = if now.may_fetch { Some(self.read_keys().await) } else { None };
        let after = self.look(kid, alg);
        match (after.key, fetched) {
            (Some(key), _) if after.usable => Ok((key, after.generation)),
            (_, Some(Err(e))) => Err(KeyError::Unavailable(e)),
            _ if after.usable => Err(KeyError::Unknown),
            _ => Err(KeyError::Unavailable(self.last_error())),
        }
    }

    fn last_error(&self) -> String {
        let c = self.cache.read().expect("jwks cache poisoned");
        c.last_error.clone().unwrap_or_else(|| format!("{}: no keys read yet", self.describe()))
    }

    fn look(&self, kid: Option<&str>, alg: Algorithm) -> Look {
        let c = self.cache.read().expect("jwks cache poisoned");
        let candidates: Vec<&Arc<Key>> = c
            .keys
            .iter()
            .filter(|k| k.algorithms.contains(&alg) && (kid.is_none() || k.kid.as_deref() == kid))
            .collect();
        // Without a `kid` a key is only chosen when it is the only one.
        let key = if candidates.len() == 1 || kid.is_some() { candidates.first().map(|k| (*k).clone()) } else { None };
        let age = c.fetched.map(|t| t.elapsed());
        Look {
            key,
            fresh: age.is_some_and(|a| a < REFRESH_AFTER),
            usable: age.is_some_and(|a| a < STALE_AFTER),
            may_fetch: c.attempted.is_none_or(|t| t.elapsed() >= MIN_REFETCH),
            generation: c.generation,
        }
    }

    /// Reads the keys once (after any read under way); the cache keeps the
    /// last good set on failure.
    pub async fn refresh(&self) -> Result<(), String> {
        let _one_fetch = self.fetching.lock().await;
        self.read_keys().await
    }

    /// Callers hold `fetching`.
    async fn read_keys(&self) -> Result<(), String> {
        self.cache.write().expect("jwks cache poisoned").attempted = Some(Instant::now());
        let read = match &self.source {
            Source::File(path) => read_file(path).await,
            Source::Url(url) => fetch(url).await,
        };
        let result = read.and_then(|bytes| parse(&bytes)).map_err(|e| format!("{}: {e}", self.describe()));
        let mut c = self.cache.write().expect("jwks cache poisoned");
        match result {
            Ok(keys) => {
                c.keys = Arc::new(keys);
                c.fetched = Some(Instant::now());
                c.generation += 1;
                c.last_error = None;
                Ok(())
            }
            Err(e) => {
                tracing::warn!("issuer keys not read: {e}");
                c.last_error = Some(e.clone());
                Err(e)
            }
        }
    }
}

struct Look {
    key: Option<Arc<Key>>,
    fresh: bool,
    usable: bool,
    may_fetch: bool,
    generation: u64,
}

async fn read_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let bytes = tokio::fs::read(path).await.map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(format!("over {MAX_JWKS_BYTES} bytes"));
    }
    Ok(bytes)
}

fn client() -> Result<&'static reqwest::Client, String> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c);
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        // A redirect could lead to plain HTTP or elsewhere: not followed.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("no HTTP client: {e}"))?;
    Ok(CLIENT.get_or_init(|| client))
}

async fn fetch(url: &reqwest::Url) -> Result<Vec<u8>, String> {
    let request = async {
        let mut response = client()?
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("fetch failed: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        if response.content_length().is_some_and(|n| n > MAX_JWKS_BYTES as u64) {
            return Err(format!("over {MAX_JWKS_BYTES} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| format!("fetch failed: {e}"))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("over {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    tokio::time::timeout(FETCH_TIMEOUT, request).await.map_err(|_| format!("no answer in {FETCH_TIMEOUT:?}"))?
}

/// The usable signing keys of a JWKS document; none is an error.
pub fn parse(bytes: &[u8]) -> Result<Vec<Arc<Key>>, String> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS document: {e}"))?;
    let keys: Vec<Arc<Key>> = set
        .keys
        .into_iter()
        .take(MAX_KEYS)
        .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
        .filter_map(|jwk| usable(&jwk))
        .map(Arc::new)
        .collect();
    if keys.is_empty() {
        return Err("no usable signing key (RSA, EC P-256/P-384 or Ed25519, use \"sig\")".into());
    }
    Ok(keys)
}

fn usable(jwk: &Jwk) -> Option<Key> {
    use Algorithm::*;
    if jwk.common.public_key_use.as_ref().is_some_and(|u| *u != PublicKeyUse::Signature) {
        return None;
    }
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![ES256],
            EllipticCurve::P384 => vec![ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => vec![EdDSA],
            _ => return None,
        },
        // Symmetric keys never verify an issuer's token.
        AlgorithmParameters::OctetKey(_) => return None,
    };
    let algorithms = match jwk.common.key_algorithm {
        None => by_type,
        Some(named) => {
            let alg = match named {
                KeyAlgorithm::RS256 => RS256,
                KeyAlgorithm::RS384 => RS384,
                KeyAlgorithm::RS512 => RS512,
                KeyAlgorithm::PS256 => PS256,
                KeyAlgorithm::PS384 => PS384,
                KeyAlgorithm::PS512 => PS512,
                KeyAlgorithm::ES256 => ES256,
                KeyAlgorithm::ES384 => ES384,
                KeyAlgorithm::EdDSA => EdDSA,
                _ => return None,
            };
            if !by_type.contains(&alg) {
                return None;
            }
            vec![alg]
        }
    };
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key { kid: jwk.common.key_id.clone(), algorithms, decoding })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"ed"}"#;

    #[test]
    fn only_signing_keys_are_kept() {
        let doc = format!(
            r#"{{"keys":[{ED},
                {{"kty":"oct","k":"c2VjcmV0","kid":"hmac"}},
                {{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","use":"enc","kid":"enc"}},
                {{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","alg":"RS256","kid":"mismatch"}},
                {{"kty":"what","kid":"odd"}}, 7]}}"#
        );
        let keys = parse(doc.as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("ed"));
        assert_eq!(keys[0].algorithms, vec![Algorithm::EdDSA]);
    }

    #[test]
    fn a_document_without_a_usable_key_is_an_error() {
        for doc in ["", "{}", "[]", r#"{"keys":[]}"#, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#] {
            assert!(parse(doc.as_bytes()).is_err(), "{doc}");
        }
    }

    #[tokio::test]
    async fn an_unreadable_file_is_unavailable_and_a_good_one_found() {
        let dir = std::env::temp_dir().join(format!("bulkhead-jwks-{}", crate::util::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("jwks.json");
        let set = KeySet::from_file(file.clone());
        assert!(matches!(set.find(Some("ed"), Algorithm::EdDSA).await, Err(KeyError::Unavailable(_))));
        std::fs::write(&file, format!(r#"{{"keys":[{ED}]}}"#)).unwrap();
        tokio::time::sleep(MIN_REFETCH).await;
        let (key, generation) = set.find(Some("ed"), Algorithm::EdDSA).await.unwrap();
        assert_eq!(key.kid.as_deref(), Some("ed"));
        assert_eq!(generation, 1);
        // Fresh keys: no reread, and an unknown kid within MIN_REFETCH is unknown.
        assert_eq!(set.find(Some("other"), Algorithm::EdDSA).await.err(), Some(KeyError::Unknown));
        assert_eq!(set.find(Some("ed"), Algorithm::ES256).await.err(), Some(KeyError::Unknown));
        assert!(set.find(None, Algorithm::EdDSA).await.is_ok(), "the only key is chosen without a kid");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
