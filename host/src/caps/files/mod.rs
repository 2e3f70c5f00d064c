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
//! - Usage is counted by walking the folder on first use after a start,
//!   then kept and shared by the session's calls; deletions are seen when
//!   a charge would fail and the folder is walked again ([`quota`]).
//! - Every write and new size under a workspace lands on the call's thread
//!   before its host function returns (`write`, `set-size` and [`stream`]
//!   do it here): none is still landing after the call, where the count
//!   would miss it.
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

/// A call's handle on its workspace quota: charges, has the folder walked
/// again when a charge would fail (when a walk is due, see [`quota`]), and
/// remembers a refusal for the audit.
#[derive(Clone)]
struct Meter {
    quota: Arc<WorkspaceQuota>,
    /// Whether a refused charge of this call asked for a walk yet.
    walked_in_call: Arc<AtomicBool>,
    refused: Arc<AtomicBool>,
}

impl Meter {
    fn charge(&self, bytes: u64, entries: u64) -> Result<quota::Charge<'_>, ErrorCode> {
        if let Some(charge) = self.quota.charge(bytes, entries) {
            return Ok(charge);
        }
        // What was deleted since the count was made may make room.
        let first_in_call = !self.walked_in_call.swap(true, Ordering::Relaxed);
        self.quota.remeasure(first_in_call);
        if let Some(charge) = self.quota.charge(bytes, entries) {
            return Ok(charge);
        }
        self.refused.store(true, Ordering::Relaxed);
        Err(ErrorCode::InsufficientSpace)
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
        let meter = mounts.iter().find_map(|m| m.quota.clone()).map(|quota| Meter {
            quota,
            walked_in_call: Arc::default(),
            refused: Arc::default(),
        });
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

/// [`answer`], giving back what was charged if the operation failed (not
/// if it trapped: it may have landed before the trap).
fn settle<T>(r: FsResult<T>, charge: Option<quota::Charge<'_>>) -> Answer<T> {
    match (&r, charge) {
        (Err(e), Some(charge)) if e.downcast_ref().is_some() => charge.refund(),
        (_, Some(charge)) => charge.landed(),
        (_, None) => {}
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

/// For a descriptor under a workspace: its meter, and its file if the
/// guest may write it (wasmtime-wasi's checks: a file, a writable mount).
fn writable(s: &mut HostState, fd: &Fd) -> Option<(Meter, Result<Arc<std::fs::File>, ErrorCode>)> {
    let meter = s.files.meter(fd.rep())?;
    let file = match s.filesystem().table.get(fd) {
        Ok(Descriptor::File(f)) if f.perms.write_not_permitted() => Err(ErrorCode::NotPermitted),
        Ok(Descriptor::File(f)) => Ok(f.file.clone()),
        // A folder, or a bad handle: wasmtime-wasi answers.
        _ => return None,
    };
    Some((meter, file))
}

/// Charges what `op` adds to `file` by making it `end` bytes long at
/// least, then runs it here; a failed `op` gives the charge back.
fn in_place<T>(
    meter: &Meter,
    file: Result<Arc<std::fs::File>, ErrorCode>,
    end: u64,
    op: impl FnOnce(&std::fs::File) -> std::io::Result<T>,
) -> Answer<T> {
    let file = match file {
        Ok(file) => file,
        Err(code) => return refused(code),
    };
    let charge = match meter.charge(end.saturating_sub(size_of(&file)), 0) {
        Ok(charge) => charge,
        Err(code) => return refused(code),
    };
    match op(&file) {
        Ok(v) => {
            charge.landed();
            Ok((Ok(v),))
        }
        Err(e) => {
            charge.refund();
            refused(ErrorCode::from(&e))
        }
    }
}

/// Charges `bytes` and `entries` to `meter`, if the target is under one.
fn charge(meter: &Option<Meter>, bytes: u64, entries: u64) -> Result<Option<quota::Charge<'_>>, ErrorCode> {
    meter.as_ref().map(|m| m.charge(bytes, entries)).transpose()
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
                let under_quota = meter.is_some();
                let mut creates = false;
                if under_quota && open_flags.contains(OpenFlags::CREATE) {
                    let at = Resource::new_borrow(fd.rep());
                    creates = HostDescriptor::stat_at(&mut s.filesystem(), at, path_flags, path.clone()).await.is_err();
                }
                let charge = match charge(&meter, 0, creates.into()) {
                    Ok(charge) => charge,
                    Err(code) => return refused(code),
                };
                let opened =
                    HostDescriptor::open_at(&mut s.filesystem(), fd, path_flags, path, open_flags, flags).await;
                if let Ok(new) = &opened {
                    s.files.opened(new.rep(), under_quota);
                }
                settle(opened, charge)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.create-directory-at",
        |mut store: StoreContextMut<'_, HostState>, (fd, path): (Fd, String)| {
            Box::new(async move {
                let s = store.data_mut();
                let meter = s.files.meter(fd.rep());
                let charge = match charge(&meter, 0, 1) {
                    Ok(charge) => charge,
                    Err(code) => return refused(code),
                };
                settle(HostDescriptor::create_directory_at(&mut s.filesystem(), fd, path).await, charge)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.symlink-at",
        |mut store: StoreContextMut<'_, HostState>, (fd, target, path): (Fd, String, String)| {
            Box::new(async move {
                let s = store.data_mut();
                let meter = s.files.meter(fd.rep());
                let charge = match charge(&meter, target.len() as u64, 1) {
                    Ok(charge) => charge,
                    Err(code) => return refused(code),
                };
                settle(HostDescriptor::symlink_at(&mut s.filesystem(), fd, target, path).await, charge)
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
                let meter = s.files.meter(to.rep());
                let charge = match charge(&meter, 0, 1) {
                    Ok(charge) => charge,
                    Err(code) => return refused(code),
                };
                let made = HostDescriptor::link_at(&mut s.filesystem(), fd, old_flags, old_path, to, new_path).await;
                settle(made, charge)
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
                // A walk beside it could miss what it moves.
                let meter = s.files.meter(to.rep()).or_else(|| s.files.meter(fd.rep()));
                let _moving = meter.as_ref().map(|m| m.quota.moving());
                answer(HostDescriptor::rename_at(&mut s.filesystem(), fd, old_path, to, new_path).await)
            })
        },
    )?;
    // Under a workspace, a write or a new size lands here, on this thread:
    // wasmtime-wasi's lands on a blocking thread, which a call's timeout
    // does not stop, after the call and the next call's count.
    types.func_wrap_async(
        "[method]descriptor.write",
        |mut store: StoreContextMut<'_, HostState>, (fd, buffer, offset): (Fd, Vec<u8>, u64)| {
            Box::new(async move {
                let s = store.data_mut();
                let Some((meter, file)) = writable(s, &fd) else {
                    return answer(HostDescriptor::write(&mut s.filesystem(), fd, buffer, offset).await);
                };
                let end = offset.saturating_add(buffer.len() as u64);
                in_place(&meter, file, end, |f| {
                    std::os::unix::fs::FileExt::write_at(f, &buffer, offset).map(|n| n as u64)
                })
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.set-size",
        |mut store: StoreContextMut<'_, HostState>, (fd, size): (Fd, u64)| {
            Box::new(async move {
                let s = store.data_mut();
                let Some((meter, file)) = writable(s, &fd) else {
                    return answer(HostDescriptor::set_size(&mut s.filesystem(), fd, size).await);
                };
                in_place(&meter, file, size, |f| f.set_len(size))
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
