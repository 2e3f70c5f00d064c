//! The wasmtime side: one [`Engine`] for the process, tools compiled once and
//! pre-linked, a fresh `Store` and instance per call.
//!
//! - [`engine`]: engine settings (pooling allocator, fuel, epochs) and the
//!   precompiled-component cache.
//! - [`loader`]: a bundle folder to a [`loader::LoadedTool`], checking the
//!   component's real imports against what the host and the manifest allow.
//! - [`invoke`]: one call in its sandbox, with limits, classified outcome.

pub mod engine;
pub mod invoke;
pub mod loader;

use crate::caps::{HostState, Tool};
use crate::config::Limits;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

/// How often the epoch advances: the granularity of timeouts, and how often a
/// busy guest yields its thread to other tasks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

pub struct Runtime {
    pub engine: Engine,
    linker: Linker<HostState>,
    cache_dir: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot start the wasm runtime: {0:#}")]
pub struct RuntimeError(wasmtime::Error);

impl Runtime {
    /// Builds the engine and linker; `cache_dir` keeps precompiled tools.
    pub fn new(limits: &Limits, cache_dir: Option<&Path>) -> Result<Arc<Runtime>, RuntimeError> {
        let engine = Engine::new(&engine::config(limits)).map_err(RuntimeError)?;
        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(RuntimeError)?;
        crate::caps::files::add_to_linker(&mut linker).map_err(RuntimeError)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(RuntimeError)?;
        Tool::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(RuntimeError)?;
        // The epoch only moves forward; a weak handle lets the ticker end
        // with the engine.
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("bulkhead-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| RuntimeError(wasmtime::Error::msg(e.to_string())))?;
        if let Some(dir) = cache_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| RuntimeError(wasmtime::Error::msg(format!("{}: {e}", dir.display()))))?;
        }
        Ok(Arc::new(Runtime { engine, linker, cache_dir: cache_dir.map(Path::to_path_buf) }))
    }
}
