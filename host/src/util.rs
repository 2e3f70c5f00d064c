//! Small helpers shared across modules: timestamps, ids, hashing.

use sha2::{Digest, Sha256};
use std::time::SystemTime;

/// RFC 3339 UTC timestamp with millisecond precision, as stored and served.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now_ms() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Whether a URL's host (`localhost`, `127.0.0.1`, `[::1]`) is this
/// machine: the one place plain HTTP is allowed for registries and JWKS.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// RFC 3339 timestamp `secs` seconds from now.
pub fn rfc3339_in(secs: u64) -> String {
    humantime::format_rfc3339_millis(SystemTime::now() + std::time::Duration::from_secs(secs)).to_string()
}

/// Whether an RFC 3339 timestamp written by [`now_rfc3339`] lies in the past.
pub fn is_past(rfc3339: &str) -> bool {
    humantime::parse_rfc3339(rfc3339).is_ok_and(|t| t <= SystemTime::now())
}

/// A new time-ordered id (UUID v7): sorting ids sorts by creation time.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, at most 128 bytes.
pub fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 128
        && bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `[a-z0-9-]{1,64}`: tool and principal names.
pub fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Only `a/b.wasm`-like paths: relative, nothing that climbs out (`..`).
pub fn is_inside_relative(p: &std::path::Path) -> bool {
    use std::path::Component;
    !p.as_os_str().is_empty() && p.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// `sha256:<hex>`, the form OCI and `GET /v1/tools` use.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// Whether `s` is `sha256:` and 64 lowercase hex digits.
pub fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Whether `s` looks like an id this host generated, so lookups of garbage
/// answer 404 without touching the database.
pub fn is_id(s: &str) -> bool {
    uuid::Uuid::try_parse(s).is_ok()
}

/// A TOML error on one line: `line N: message` (toml's own rendering spans
/// several lines, which a log line or a test cannot show well).
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let line = text[..start].matches('\n').count() + 1;
            let source: String = text.lines().nth(line - 1).unwrap_or("").trim().chars().take(80).collect();
            format!("line {line} (`{source}`): {}", e.message().trim())
        }
        None => e.message().trim().to_string(),
    }
}

/// Turns off backtrace capture for library errors unless the operator asked
/// for it with `RUST_LIB_BACKTRACE`. wasmtime builds an internal error value
/// while dropping every `Store`; with `RUST_BACKTRACE=1` in the environment
/// each one captured a backtrace, about 6% of the CPU under load. Panics keep
/// their backtraces (`RUST_BACKTRACE` alone governs those).
///
/// Call before any other thread starts: it sets an environment variable.
pub fn quiet_library_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: called at the top of `main`, before the process has other
        // threads, so nothing reads the environment concurrently.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}

/// Runs `fut` to its end, returning a panic inside it as an error instead
/// of unwinding out of the caller (the task that awaits it can still clean
/// up). The future is dropped, with what it holds, when the one returned is.
///
/// Not an async fn, and `fut` boxed: an async fn would hold `fut` twice
/// (as its argument and pinned), and a caller's future holds the result
/// inline; a call's future was kilobytes, copied whole at each move.
pub fn catch_panic<F: std::future::Future>(
    fut: F,
) -> impl std::future::Future<Output = std::thread::Result<F::Output>> {
    let mut fut = Box::pin(fut);
    std::future::poll_fn(move |cx| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(cx)))
            .map_or_else(|panic| std::task::Poll::Ready(Err(panic)), |poll| poll.map(Ok))
    })
}

/// Writes `path` through a temporary file in its folder and a rename, so a
/// reader sees the old file or the whole new one, never half of it.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_panic_after_an_await_is_caught_and_what_the_future_held_is_dropped() {
        let held = std::sync::Arc::new(());
        let inside = held.clone();
        let caught = super::catch_panic(async move {
            let _inside = inside;
            tokio::task::yield_now().await;
            panic!("a bug");
        })
        .await;
        assert!(caught.is_err());
        assert_eq!(std::sync::Arc::strong_count(&held), 1, "the future's captures were dropped");
        assert_eq!(super::catch_panic(async { 7 }).await.ok(), Some(7));
    }
}
