//! One host per data folder.
//!
//! The writer keeps what it knows in memory: each audit chain's head, the
//! tool state it cached, which calls it runs. A second process writing the
//! same database would fork audit chains, lose state writes, and on start
//! mark the first host's running calls `interrupted`. So the database is
//! opened for writing only under an exclusive lock on `bulkhead.lock` in
//! its folder. The lock is the kernel's (`flock`): it goes with the
//! process, also after `kill -9`, so a crash never leaves a stale lock.
//! Read-only openers (`bulkhead audit verify`) take no lock.

use super::{Result, StoreError};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = "bulkhead.lock";

/// A data folder's lock, held until dropped.
#[derive(Debug)]
pub struct Folder {
    dir: PathBuf,
    _file: File,
}

impl Folder {
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Takes the folder's lock, or says which process holds it. The lock file
/// holds the holder's pid, for that message only.
pub fn lock(dir: &Path) -> Result<Folder> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim().parse::<u32>() {
                Ok(pid) => format!("another bulkhead process (pid {pid})"),
                Err(_) => "another bulkhead process".to_string(),
            };
            return Err(StoreError::Unavailable(format!(
                "the data folder {} is in use by {holder}; one host per data folder",
                dir.display()
            )));
        }
        Err(TryLockError::Error(e)) => {
            return Err(StoreError::Unavailable(format!("cannot lock {}: {e}", path.display())));
        }
    }
    // Best effort: the pid only improves the message above.
    let _ = file.set_len(0).and_then(|()| file.rewind()).and_then(|()| write!(file, "{}", std::process::id()));
    Ok(Folder { dir: dir.to_path_buf(), _file: file })
}

/// The lock of `dir` if it is a data folder whose host is gone: its lock
/// file is older than a minute (not one being taken right now) and no
/// process holds it. Held by the caller while it removes the folder, so
/// that no process can take the folder meanwhile.
pub fn abandoned(dir: &Path) -> Option<File> {
    let file = File::open(dir.join(LOCK_FILE)).ok()?;
    let old = file
        .metadata()
        .and_then(|m| m.modified())
        .is_ok_and(|at| at.elapsed().is_ok_and(|age| age > std::time::Duration::from_secs(60)));
    (old && file.try_lock().is_ok()).then_some(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second lock on a folder is refused, naming the holder; it is
    /// free again once the first is dropped.
    #[test]
    fn a_folder_is_locked_once() {
        let dir = std::env::temp_dir().join(format!("bulkhead-lock-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let held = lock(&dir).unwrap();
        let refused = lock(&dir).unwrap_err().to_string();
        assert!(refused.contains(&format!("pid {}", std::process::id())), "{refused}");
        assert!(refused.contains("in use"), "{refused}");
        drop(held);
        let again = lock(&dir);
        assert!(again.is_ok(), "free once the holder is gone: {again:?}");
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
