//! The output stream of a file under a workspace quota.

use super::Meter;
use bytes::Bytes;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// How much one `write` may take: the thread is held while it lands.
const WRITE_CAPACITY: usize = 64 * 1024;

/// Charges each write for what it adds to the file, then makes it on the
/// calling thread before `write` returns. wasmtime-wasi's own file stream
/// writes on a blocking thread that outlives the call if the guest returns
/// first; a write still landing after the call would not be in the count
/// the next call measures.
pub(super) struct MeteredStream {
    pub(super) file: Arc<std::fs::File>,
    pub(super) meter: Meter,
    /// Where the next write lands; `None` appends.
    pub(super) position: Option<u64>,
    pub(super) closed: bool,
}

impl MeteredStream {
    fn land(&self, bytes: &[u8]) -> std::io::Result<()> {
        match self.position {
            Some(at) => self.file.write_all_at(bytes, at),
            None => append(&self.file, bytes),
        }
    }
}

/// Appends atomically (`RWF_APPEND`), as wasmtime-wasi does, so two calls
/// appending to one file do not overwrite each other; where the kernel or
/// file system lacks it, at the file's end.
fn append(file: &std::fs::File, mut bytes: &[u8]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    while !bytes.is_empty() {
        let iov = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
        // SAFETY: one iovec over `bytes`, which outlives the call; the
        // descriptor is open for the lifetime of `file`.
        let n = unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, 0, libc::RWF_APPEND) };
        match n {
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            n if n > 0 => bytes = &bytes[n as usize..],
            _ => {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => {}
                    Some(libc::ENOSYS | libc::EOPNOTSUPP) => return file.write_all_at(bytes, super::size_of(file)),
                    _ => return Err(e),
                }
            }
        }
    }
    Ok(())
}

#[wasmtime_wasi::async_trait]
impl Pollable for MeteredStream {
    /// Always ready: no write is ever pending.
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for MeteredStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if self.closed {
            return Err(StreamError::Closed);
        }
        if bytes.len() > WRITE_CAPACITY {
            return Err(StreamError::trap("write past the permit `check-write` gave"));
        }
        let len = bytes.len() as u64;
        let growth = match self.position {
            Some(at) => at.saturating_add(len).saturating_sub(super::size_of(&self.file)),
            None => len,
        };
        let Ok(charge) = self.meter.charge(growth, 0) else {
            self.closed = true;
            let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
            return Err(StreamError::LastOperationFailed(full.into()));
        };
        let landed = self.land(&bytes);
        // A failed write may have landed in part: its charge stays.
        charge.landed();
        if let Err(e) = landed {
            self.closed = true;
            return Err(StreamError::LastOperationFailed(e.into()));
        }
        if let Some(at) = &mut self.position {
            *at = at.saturating_add(len);
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        if self.closed { Err(StreamError::Closed) } else { Ok(()) }
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        if self.closed { Err(StreamError::Closed) } else { Ok(WRITE_CAPACITY) }
    }
}
