//! Small helpers shared across modules: timestamps, ids, hashing.

use sha2::{Digest, Sha256};
use std::time::SystemTime;

/// RFC 3339 UTC timestamp with millisecond precision, as stored and served.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
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

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
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
