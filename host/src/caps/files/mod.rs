//! Workspace quotas: a tool with a read-write workspace cannot fill the
//! host's disk (and the database with it).
//!
//! Each session's workspace has a quota of bytes (file contents and link
//! targets; a hard-linked file once) and entries (files, folders, links),
//! from `[limits] max_workspace_mb` and `max_workspace_files`. The host
//! shadows the `wasi:filesystem` functions that make a folder bigger and
//! charges them before they run; a charge past the quota fails with
//! `insufficient-space` (ENOSPC), as a full disk would, and the call gets
//! one `capability_denied` audit event. A failed operation gives its
//! charge back.
//!
//! - Usage is measured by walking the folder when a call starts and no
//!   other call of the session holds its count ([`quota`]); calls that
//!   overlap share one count. Deletions and truncations are seen at the
//!   next walk, so while calls overlap the count only grows.
//! - Every write lands before its host function returns (a call with a
//!   quota blocks its thread on file I/O, and [`stream`] writes in place),
//!   so none is still landing when the next call measures.
//! - A descriptor is charged when it was opened under a workspace preopen:
//!   `get-directories` and `open-at`, the only ways to get a descriptor,
//!   record where each one comes from.
//! - Renames and hard links into a workspace from another mount fail with
//!   `cross-device`, as between two file systems: a copy goes through the
//!   quota.
//! - Operator volumes have no quota: their size is the operator's.

mod quota;
mod stream;

pub use quota::{WorkspaceQuota, WorkspaceQuotas};

use super::{HostState, Mount};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::filesystem::preopens;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    DescriptorFlags, ErrorCode, HostDescriptor, OpenFlags, PathFlags,
};
use wasmtime_wasi::p2::{DynOutputStream, FsResult};

/// The `wasi:filesystem` version wasmtime-wasi (pinned at 48.0.x) links:
/// the overrides shadow its functions by these names. Under another
/// version they would be added beside them, unused; the e2e quota tests
/// fail then.
const TYPES: &str = "wasi:filesystem/types@0.2.12";
const PREOPENS: &str = "wasi:filesystem/preopens@0.2.12";

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

    fn entry(&self, bytes: u64) -> Result<(), ErrorCode> {
        if !self.quota.charge_entry() {
            return self.check(false);
        }
        let charged = self.bytes(bytes);
        if charged.is_err() {
            self.quota.refund(0, 1);
        }
        charged
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
    /// All quota'd mounts of a call are the workspace of its one session,
    /// so they share one count.
    meter: Option<Meter>,
    /// Guest paths of the mounts with a quota.
    roots: Vec<String>,
    /// Table indexes of descriptors opened under them. Every descriptor is
    /// created by `get-directories` or `open-at`, which set or clear its
    /// index; the index of a dropped one may stay until it is reused,
    /// which sets or clears it again.
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

    /// Whether the call has a workspace with a quota.
    pub fn metered(&self) -> bool {
        self.meter.is_some()
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

/// [`answer`], giving back what was charged if the operation failed.
fn settle<T>(r: FsResult<T>, meter: Option<&Meter>, bytes: u64, entries: u64) -> Answer<T> {
    if let (Err(_), Some(meter)) = (&r, meter) {
        meter.quota.refund(bytes, entries);
    }
    answer(r)
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

/// Charges what a write of `len` bytes at `offset` adds to the file;
/// returns the meter and the charge, to give back if the write fails.
fn charge_write(s: &mut HostState, fd: &Fd, offset: u64, len: u64) -> Result<Option<(Meter, u64)>, ErrorCode> {
    match (s.files.meter(fd.rep()), file_of(s, fd)) {
        (Some(meter), Some(file)) => {
            let growth = offset.saturating_add(len).saturating_sub(size_of(&file));
            meter.bytes(growth)?;
            Ok(Some((meter, growth)))
        }
        _ => Ok(None),
    }
}

/// Charges one new entry (and `bytes`, a link's target) under `fd`.
fn charge_entry(s: &HostState, fd: &Fd, bytes: u64) -> Result<Option<Meter>, ErrorCode> {
    let meter = s.files.meter(fd.rep());
    if let Some(meter) = &meter {
        meter.entry(bytes)?;
    }
    Ok(meter)
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
                let under_quota = s.files.meter(fd.rep()).is_some();
                let mut charged = None;
                if under_quota && open_flags.contains(OpenFlags::CREATE) {
                    let at = Resource::new_borrow(fd.rep());
                    let exists =
                        HostDescriptor::stat_at(&mut s.filesystem(), at, path_flags, path.clone()).await.is_ok();
                    if !exists {
                        charged = match charge_entry(s, &fd, 0) {
                            Ok(meter) => meter,
                            Err(code) => return refused(code),
                        };
                    }
                }
                let opened =
                    HostDescriptor::open_at(&mut s.filesystem(), fd, path_flags, path, open_flags, flags).await;
                if let Ok(new) = &opened {
                    s.files.opened(new.rep(), under_quota);
                }
                settle(opened, charged.as_ref(), 0, 1)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.create-directory-at",
        |mut store: StoreContextMut<'_, HostState>, (fd, path): (Fd, String)| {
            Box::new(async move {
                let s = store.data_mut();
                let meter = match charge_entry(s, &fd, 0) {
                    Ok(meter) => meter,
                    Err(code) => return refused(code),
                };
                let made = HostDescriptor::create_directory_at(&mut s.filesystem(), fd, path).await;
                settle(made, meter.as_ref(), 0, 1)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.symlink-at",
        |mut store: StoreContextMut<'_, HostState>, (fd, target, path): (Fd, String, String)| {
            Box::new(async move {
                let s = store.data_mut();
                let bytes = target.len() as u64;
                let meter = match charge_entry(s, &fd, bytes) {
                    Ok(meter) => meter,
                    Err(code) => return refused(code),
                };
                let made = HostDescriptor::symlink_at(&mut s.filesystem(), fd, target, path).await;
                settle(made, meter.as_ref(), bytes, 1)
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
                let meter = match charge_entry(s, &to, 0) {
                    Ok(meter) => meter,
                    Err(code) => return refused(code),
                };
                let made = HostDescriptor::link_at(&mut s.filesystem(), fd, old_flags, old_path, to, new_path).await;
                settle(made, meter.as_ref(), 0, 1)
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
                let charged = match charge_write(s, &fd, offset, buffer.len() as u64) {
                    Ok(charged) => charged,
                    Err(code) => return refused(code),
                };
                let written = HostDescriptor::write(&mut s.filesystem(), fd, buffer, offset).await;
                let (meter, growth) = charged.unzip();
                settle(written, meter.as_ref(), growth.unwrap_or(0), 0)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.set-size",
        |mut store: StoreContextMut<'_, HostState>, (fd, size): (Fd, u64)| {
            Box::new(async move {
                let s = store.data_mut();
                let charged = match charge_write(s, &fd, size, 0) {
                    Ok(charged) => charged,
                    Err(code) => return refused(code),
                };
                let set = HostDescriptor::set_size(&mut s.filesystem(), fd, size).await;
                let (meter, growth) = charged.unzip();
                settle(set, meter.as_ref(), growth.unwrap_or(0), 0)
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

/// Replaces a new file stream under a workspace with a [`stream::MeteredStream`].
/// wasmtime-wasi's stream is made first for its checks (the descriptor is a
/// file the grant lets the guest write), then dropped unused.
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
    drop(table.delete(stream)?);
    let own: DynOutputStream = Box::new(stream::MeteredStream { file, meter, position, closed: false });
    Ok((Ok(table.push(own)?),))
}
