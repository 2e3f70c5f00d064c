//! Puts the locked versions of `extism` and `wasmtime` into the binary, so the
//! table it prints names the runtime it measured.

fn main() {
    let lock = std::fs::read_to_string("../Cargo.lock").unwrap_or_default();
    for (name, var) in [("extism", "LOCKED_EXTISM_VERSION"), ("wasmtime", "LOCKED_WASMTIME_VERSION")] {
        let version = locked_version(&lock, name).unwrap_or_else(|| "?".into());
        println!("cargo:rustc-env={var}={version}");
    }
    println!("cargo:rerun-if-changed=../Cargo.lock");
}

/// The `version` of the `[[package]]` named `name` in a Cargo.lock.
fn locked_version(lock: &str, name: &str) -> Option<String> {
    let wanted = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == wanted {
            let version = lines.next()?.trim().strip_prefix("version = \"")?.strip_suffix('"')?;
            return Some(version.to_string());
        }
    }
    None
}
