//! Workspace quotas: a tool with a read-write workspace cannot fill the
//! host's disk (and the database with it).
//!
//! Each session's workspace has a quota of bytes (apparent file sizes, a
//! hard-linked file once) and entries (files, folders, links), from
//! `[limits] max_workspace_mb` and `max_workspace_files`. The host overrides
//! the `wasi:filesystem` functions that make a folder bigger and charges
//! them before they run. A charge past the quota fails with
//! `insufficient-space` (ENOSPC), as a full disk would, and the call gets
//! one `capability_denied` audit event.
//!
//! - Usage is measured by walking the folder when a call starts and no
//!   other call of the session holds its count; calls that overlap share
//!   one count. Deletions and truncations are seen at the next walk, so
//!   while calls overlap the count only grows.
//! - A descriptor is charged when it was opened under a workspace preopen:
//!   `get-directories` and `open-at`, the only ways to get a descriptor,
//!   record where each one comes from.
//! - Renames and hard links into a workspace from another mount fail with
//!   `cross-device`, as between two file systems: a copy goes through the
//!   quota.
//! - Operator volumes have no quota: their size is the operator's.

use super::{HostState, Mount};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::filesystem::preopens;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    DescriptorFlags, ErrorCode, HostDescriptor, OpenFlags, PathFlags,
};
use wasmtime_wasi::p2::{DynOutputStream, FsResult, OutputStream, Pollable, StreamError, StreamResult};

/// The `wasi:filesystem` version wasmtime-wasi links: the overrides must
/// shadow its functions by the same names (the e2e quota tests fail if not).
const TYPES: &str = "wasi:filesystem/types@0.2.12";
const PREOPENS: &str = "wasi:filesystem/preopens@0.2.12";

/// One workspace's quota and what is used of it.
#[derive(Debug)]
pub struct WorkspaceQuota {
    max_bytes: u64,
    max_entries: u64,
    bytes: AtomicU64,
    entries: AtomicU64,
    /// The folder is walked once, by the first call to hold this count.
    measured: Mutex<bool>,
}

impl WorkspaceQuota {
    pub fn new(max_bytes: u64, max_entries: u64) -> WorkspaceQuota {
        WorkspaceQuota {
            max_bytes,
            max_entries,
            bytes: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            measured: Mutex::new(false),
        }
    }

    /// Counts what the folder holds, unless a call sharing this count did.
    pub fn measure_once(&self, dir: &Path) {
        let mut measured = self.measured.lock().unwrap_or_else(|e| e.into_inner());
        if !*measured {
            let (bytes, entries) = measure(dir);
            self.bytes.store(bytes, Ordering::SeqCst);
            self.entries.store(entries, Ordering::SeqCst);
            *measured = true;
        }
    }

    /// (bytes, entries) in use.
    pub fn used(&self) -> (u64, u64) {
        (self.bytes.load(Ordering::SeqCst), self.entries.load(Ordering::SeqCst))
    }

    fn charge_bytes(&self, n: u64) -> bool {
        n == 0 || charge(&self.bytes, self.max_bytes, n)
    }

    fn charge_entry(&self) -> bool {
        charge(&self.entries, self.max_entries, 1)
    }
}

fn charge(used: &AtomicU64, max: u64, n: u64) -> bool {
    used.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| u.checked_add(n).filter(|total| *total <= max)).is_ok()
}

/// Bytes and entries under `dir`, without following links. A folder that
/// cannot be read counts as empty: nothing in it can have been written by
/// a tool either.
fn measure(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut entries) = (0u64, 0u64);
    let mut linked = HashSet::new();
    let mut folders: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let Ok(list) = std::fs::read_dir(&folder) else { continue };
        for entry in list.flatten() {
            entries += 1;
            // `DirEntry::metadata` does not follow a link.
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                folders.push(entry.path());
            } else if meta.is_file() && (meta.nlink() == 1 || linked.insert((meta.dev(), meta.ino()))) {
                bytes = bytes.saturating_add(meta.len());
            }
        }
    }
    (bytes, entries)
}

/// A call's handle on its workspace quota: charges, and remembers a refusal
/// for the audit.
#[derive(Clone)]
struct Meter {
    quota: Arc<WorkspaceQuota>,
    refused: Arc<AtomicBool>,
}

impl Meter {
    fn bytes(&self, n: u64) -> Result<(), ErrorCode> {
        self.check(self.quota.charge_bytes(n))
    }

    fn entry(&self) -> Result<(), ErrorCode> {
        self.check(self.quota.charge_entry())
    }

    fn check(&self, charged: bool) -> Result<(), ErrorCode> {
        if charged {
            Ok(())
        } else {
            self.refused.store(true, Ordering::Relaxed);
            Err(ErrorCode::InsufficientSpace)
        }
    }
}

/// Per call: which descriptors are under a workspace with a quota.
#[derive(Default)]
pub struct Files {
    meter: Option<Meter>,
    /// Guest paths of the mounts with a quota.
    roots: Vec<String>,
    /// Table indexes of descriptors opened under them. Every descriptor is
    /// created by `get-directories` or `open-at`, which set or clear its
    /// index, so a reused index never carries a stale answer.
    charged: HashSet<u32>,
}

impl Files {
    pub fn new(mounts: &[Mount]) -> Files {
        let meter = mounts
            .iter()
            .find_map(|m| m.quota.clone())
            .map(|quota| Meter { quota, refused: Arc::new(AtomicBool::new(false)) });
        let roots = mounts.iter().filter(|m| m.quota.is_some()).map(|m| m.guest.clone()).collect();
        Files { meter, roots, charged: HashSet::new() }
    }

    fn meter(&self, rep: u32) -> Option<Meter> {
        self.meter.clone().filter(|_| self.charged.contains(&rep))
    }

    fn opened(&mut self, rep: u32, charged: bool) {
        if charged {
            self.charged.insert(rep);
        } else {
            self.charged.remove(&rep);
        }
    }

    /// The quota (bytes, entries) if this call hit it.
    pub fn refused(&self) -> Option<(u64, u64)> {
        let meter = self.meter.as_ref().filter(|m| m.refused.load(Ordering::Relaxed))?;
        Some((meter.quota.max_bytes, meter.quota.max_entries))
    }
}

/// Shadows the growing functions of `wasi:filesystem` with charged ones.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let result = define(linker);
    linker.allow_shadowing(false);
    result
}

type Fd = Resource<Descriptor>;
type Answer<T> = wasmtime::Result<(Result<T, ErrorCode>,)>;

/// The guest's answer for a wasmtime-wasi result: its error code, or a
/// trap for what is not one (a bad handle).
fn answer<T>(r: FsResult<T>) -> Answer<T> {
    match r {
        Ok(v) => Ok((Ok(v),)),
        Err(e) => Ok((Err(e.downcast()?),)),
    }
}

fn refused<T>(code: ErrorCode) -> Answer<T> {
    Ok((Err(code),))
}

/// The open file behind a descriptor, if it is one.
fn file_of(s: &mut HostState, fd: &Fd) -> Option<Arc<std::fs::File>> {
    match s.filesystem().table.get(fd) {
        Ok(Descriptor::File(f)) => Some(f.file.clone()),
        _ => None,
    }
}

fn size_of(file: &std::fs::File) -> u64 {
    file.metadata().map(|m| m.len()).unwrap_or(0)
}

/// Charges what a write of `len` bytes at `offset` adds to the file.
fn charge_write(s: &mut HostState, fd: &Fd, offset: u64, len: u64) -> Result<(), ErrorCode> {
    match (s.files.meter(fd.rep()), file_of(s, fd)) {
        (Some(meter), Some(file)) => meter.bytes(offset.saturating_add(len).saturating_sub(size_of(&file))),
        _ => Ok(()),
    }
}

/// Refuses moving an entry into a workspace from outside it.
fn same_device(s: &HostState, from: &Fd, to: &Fd) -> Result<(), ErrorCode> {
    let charged = |fd: &Fd| s.files.charged.contains(&fd.rep());
    if charged(to) && !charged(from) { Err(ErrorCode::CrossDevice) } else { Ok(()) }
}

fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.instance(PREOPENS)?.func_wrap("get-directories", |mut store: StoreContextMut<'_, HostState>, (): ()| {
        let s = store.data_mut();
        let dirs = preopens::Host::get_directories(&mut s.filesystem())?;
        for (fd, guest) in &dirs {
            let charged = s.files.roots.contains(guest);
            s.files.opened(fd.rep(), charged);
        }
        Ok((dirs,))
    })?;

    let mut types = linker.instance(TYPES)?;
    types.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store: StoreContextMut<'_, HostState>,
         (fd, path_flags, path, open_flags, flags): (Fd, PathFlags, String, OpenFlags, DescriptorFlags)| {
            Box::new(async move {
                let s = store.data_mut();
                let meter = s.files.meter(fd.rep());
                if let Some(meter) = &meter
                    && open_flags.contains(OpenFlags::CREATE)
                {
                    let at = Resource::new_borrow(fd.rep());
                    let exists =
                        HostDescriptor::stat_at(&mut s.filesystem(), at, path_flags, path.clone()).await.is_ok();
                    if !exists && let Err(code) = meter.entry() {
                        return refused(code);
                    }
                }
                let opened =
                    HostDescriptor::open_at(&mut s.filesystem(), fd, path_flags, path, open_flags, flags).await;
                if let Ok(new) = &opened {
                    s.files.opened(new.rep(), meter.is_some());
                }
                answer(opened)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.create-directory-at",
        |mut store: StoreContextMut<'_, HostState>, (fd, path): (Fd, String)| {
            Box::new(async move {
                let s = store.data_mut();
                if let Some(Err(code)) = s.files.meter(fd.rep()).map(|m| m.entry()) {
                    return refused(code);
                }
                answer(HostDescriptor::create_directory_at(&mut s.filesystem(), fd, path).await)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.symlink-at",
        |mut store: StoreContextMut<'_, HostState>, (fd, target, path): (Fd, String, String)| {
            Box::new(async move {
                let s = store.data_mut();
                if let Some(Err(code)) = s.files.meter(fd.rep()).map(|m| m.entry()) {
                    return refused(code);
                }
                answer(HostDescriptor::symlink_at(&mut s.filesystem(), fd, target, path).await)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.link-at",
        |mut store: StoreContextMut<'_, HostState>,
         (fd, old_flags, old_path, to, new_path): (Fd, PathFlags, String, Fd, String)| {
            Box::new(async move {
                let s = store.data_mut();
                if let Err(code) = same_device(s, &fd, &to) {
                    return refused(code);
                }
                if let Some(Err(code)) = s.files.meter(to.rep()).map(|m| m.entry()) {
                    return refused(code);
                }
                answer(HostDescriptor::link_at(&mut s.filesystem(), fd, old_flags, old_path, to, new_path).await)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.rename-at",
        |mut store: StoreContextMut<'_, HostState>, (fd, old_path, to, new_path): (Fd, String, Fd, String)| {
            Box::new(async move {
                let s = store.data_mut();
                if let Err(code) = same_device(s, &fd, &to) {
                    return refused(code);
                }
                answer(HostDescriptor::rename_at(&mut s.filesystem(), fd, old_path, to, new_path).await)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.write",
        |mut store: StoreContextMut<'_, HostState>, (fd, buffer, offset): (Fd, Vec<u8>, u64)| {
            Box::new(async move {
                let s = store.data_mut();
                if let Err(code) = charge_write(s, &fd, offset, buffer.len() as u64) {
                    return refused(code);
                }
                answer(HostDescriptor::write(&mut s.filesystem(), fd, buffer, offset).await)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.set-size",
        |mut store: StoreContextMut<'_, HostState>, (fd, size): (Fd, u64)| {
            Box::new(async move {
                let s = store.data_mut();
                if let Err(code) = charge_write(s, &fd, size, 0) {
                    return refused(code);
                }
                answer(HostDescriptor::set_size(&mut s.filesystem(), fd, size).await)
            })
        },
    )?;
    types.func_wrap(
        "[method]descriptor.write-via-stream",
        |mut store: StoreContextMut<'_, HostState>, (fd, offset): (Fd, u64)| {
            let s = store.data_mut();
            let (meter, file) = (s.files.meter(fd.rep()), file_of(s, &fd));
            let stream = HostDescriptor::write_via_stream(&mut s.filesystem(), fd, offset);
            metered(s, stream, meter.zip(file), Some(offset))
        },
    )?;
    types.func_wrap(
        "[method]descriptor.append-via-stream",
        |mut store: StoreContextMut<'_, HostState>, (fd,): (Fd,)| {
            let s = store.data_mut();
            let (meter, file) = (s.files.meter(fd.rep()), file_of(s, &fd));
            let stream = HostDescriptor::append_via_stream(&mut s.filesystem(), fd);
            metered(s, stream, meter.zip(file), None)
        },
    )?;
    Ok(())
}

/// Puts a charging wrapper around a new file stream under a workspace.
fn metered(
    s: &mut HostState,
    stream: FsResult<Resource<DynOutputStream>>,
    charge: Option<(Meter, Arc<std::fs::File>)>,
    position: Option<u64>,
) -> Answer<Resource<DynOutputStream>> {
    let (stream, meter, file) = match (stream, charge) {
        (Ok(stream), Some((meter, file))) => (stream, meter, file),
        (stream, _) => return answer(stream),
    };
    let table = s.filesystem().table;
    let inner = table.delete(stream)?;
    let wrapped: DynOutputStream = Box::new(MeteredStream { inner, meter, file, position, failed: false });
    Ok((Ok(table.push(wrapped)?),))
}

/// A file's output stream that charges what each write adds to the file.
/// `position` is where the next write lands; `None` appends.
struct MeteredStream {
    inner: DynOutputStream,
    meter: Meter,
    file: Arc<std::fs::File>,
    position: Option<u64>,
    failed: bool,
}

#[wasmtime_wasi::async_trait]
impl Pollable for MeteredStream {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for MeteredStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if self.failed {
            return Err(StreamError::Closed);
        }
        let len = bytes.len() as u64;
        let growth = match self.position {
            Some(at) => at.saturating_add(len).saturating_sub(size_of(&self.file)),
            None => len,
        };
        if self.meter.bytes(growth).is_err() {
            self.failed = true;
            let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
            return Err(StreamError::LastOperationFailed(full.into()));
        }
        if let Some(at) = &mut self.position {
            *at = at.saturating_add(len);
        }
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        if self.failed {
            return Err(StreamError::Closed);
        }
        self.inner.check_write()
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

/// Quotas of the workspaces that calls are using, by session: calls that
/// overlap share one count; the last to finish drops it, so the next call
/// measures again and sees what was deleted.
#[derive(Default)]
pub struct WorkspaceQuotas {
    by_session: Mutex<HashMap<String, std::sync::Weak<WorkspaceQuota>>>,
}

impl WorkspaceQuotas {
    /// The session's shared count, or a new one to measure
    /// ([`WorkspaceQuota::measure_once`]) before use.
    pub fn get(&self, session: &str, max_bytes: u64, max_entries: u64) -> Arc<WorkspaceQuota> {
        let mut map = self.by_session.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(session).and_then(std::sync::Weak::upgrade) {
            Some(q) => q,
            None => {
                // Only sessions with calls in flight stay.
                map.retain(|_, q| q.strong_count() > 0);
                let q = Arc::new(WorkspaceQuota::new(max_bytes, max_entries));
                map.insert(session.to_string(), Arc::downgrade(&q));
                q
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_apparent_sizes_and_entries_without_following_links() {
        let dir = std::env::temp_dir().join(format!("bulkhead-quota-{}", crate::util::new_id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/one"), vec![1; 1000]).unwrap();
        std::fs::write(dir.join("a/b/two"), vec![2; 24]).unwrap();
        std::fs::hard_link(dir.join("a/one"), dir.join("again")).unwrap();
        std::os::unix::fs::symlink("/usr", dir.join("out")).unwrap();
        // a, a/b, a/one, a/b/two, again, out: the link to /usr is not walked.
        assert_eq!(measure(&dir), (1024, 6));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_charge_past_the_quota_is_refused_and_changes_nothing() {
        let q = WorkspaceQuota::new(100, 2);
        assert!(q.charge_bytes(60) && q.charge_bytes(40));
        assert!(!q.charge_bytes(1));
        assert!(q.charge_bytes(0), "a write that adds nothing always passes");
        assert!(q.charge_entry() && q.charge_entry() && !q.charge_entry());
        assert_eq!(q.used(), (100, 2));
    }
}
