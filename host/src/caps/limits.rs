//! Memory limits per call, with the peak recorded for usage.

/// Table elements per instance: enough for any real tool, bounded so a
/// guest cannot grow tables to exhaust host memory.
pub const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Marks the trap raised when a guest grows past its memory limit.
#[derive(Debug)]
pub struct MemoryLimitExceeded {
    pub limit: usize,
}

impl std::fmt::Display for MemoryLimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "memory limit of {} MiB exceeded", self.limit >> 20)
    }
}

impl std::error::Error for MemoryLimitExceeded {}

pub struct MemoryLimiter {
    limit: usize,
    pub peak: usize,
    pub exceeded: bool,
}

impl MemoryLimiter {
    pub fn new(limit: usize) -> MemoryLimiter {
        MemoryLimiter { limit, peak: 0, exceeded: false }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exceeded = true;
            return Err(wasmtime::Error::new(MemoryLimitExceeded { limit: self.limit }));
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
