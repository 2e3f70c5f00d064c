//! Builds every guest component (example tools and the test programs in
//! `guests/`) before the tests compile, the way wasmtime's test-programs
//! are built: the tests always run against components of the current source.

use std::path::Path;
use std::process::Command;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent");
    for dir in ["guest-tools", "tests/guests", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    // The guests' own target folder is under target/guests, not watched.
    let status = Command::new("sh")
        .arg(root.join("scripts/build-guests"))
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .expect("cannot run scripts/build-guests");
    assert!(status.success(), "building the guest components failed (scripts/build-guests)");
}
