//! Engine settings and the precompiled-component cache.

use crate::config::Limits;
use std::hash::{Hash, Hasher};
use std::path::Path;
use wasmtime::component::Component;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Linear memory and tables kept resident in a pool slot between calls:
/// resetting them costs less than faulting them in again.
const KEEP_RESIDENT_BYTES: usize = 4 << 20;
/// Instance slots beyond `max_concurrent_calls`, for `bulkhead run` and calls
/// finishing while others start.
const SLOT_SLACK: u32 = 8;

/// The engine configuration: pooling allocator sized for the concurrency
/// ceiling, fuel metering (reported as usage), epoch interruption (timeouts).
pub fn config(limits: &Limits) -> Config {
    let slots = limits.max_concurrent_calls + SLOT_SLACK;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        .total_core_instances(slots * 8)
        .total_memories(slots * 2)
        .total_tables(slots * 8)
        .total_stacks(slots)
        .max_memory_size((limits.max_memory_mb as usize) << 20)
        .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
        .table_keep_resident(KEEP_RESIDENT_BYTES)
        .pagemap_scan(Enabled::Auto);
    let mut config = Config::new();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool)).consume_fuel(true).epoch_interruption(true);
    config
}

/// A key for compiled code: changes whenever the engine's settings or
/// wasmtime's version would make a precompiled component unusable.
pub fn engine_key(engine: &Engine) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Loads `<cache>/<digest>-<engine>.cwasm` if present and valid, otherwise
/// compiles `bytes` and stores the result for the next start.
pub fn compile_cached(
    engine: &Engine,
    bytes: &[u8],
    digest: &str,
    cache: Option<&Path>,
) -> wasmtime::Result<(Component, bool)> {
    let Some(cache) = cache else {
        return Ok((Component::from_binary(engine, bytes)?, false));
    };
    let path = cache.join(format!("{digest}-{}.cwasm", engine_key(engine)));
    if path.exists() {
        // SAFETY: the cache folder is written only by this host (files
        // created 0600 in the operator's data folder), keyed by the
        // component's digest and the engine's settings; wasmtime checks the
        // header and refuses a file made by other settings.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => return Ok((component, true)),
            Err(e) => tracing::warn!("precompiled {} unusable, recompiling: {e:#}", path.display()),
        }
    }
    let component = Component::from_binary(engine, bytes)?;
    if let Err(e) = write_atomically(&path, &component.serialize()?) {
        tracing::warn!("cannot write precompiled {}: {e}", path.display());
    }
    Ok((component, false))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
