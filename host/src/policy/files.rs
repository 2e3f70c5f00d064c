//! The files capability's policy (contract §4, §6), pure code: which host
//! folders a tool sees at which guest path, read-only or read-write.
//!
//! A grant entry names a guest path and a source: `session` (the session's
//! own workspace, under the data folder, with a quota) or `volume:NAME` (a
//! folder the operator's config defines). The runtime side (preopens, the
//! workspace quota) is `caps::files`; resolving sources to folders is
//! `service::workspace`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileGrant {
    /// Where the guest sees the folder, e.g. `/workspace`.
    pub path: String,
    /// `session` (the session's workspace) or `volume:NAME` (an operator folder).
    pub source: String,
    pub access: Access,
}

/// What a [`FileGrant`]'s `source` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<'a> {
    /// The session's own workspace.
    Session,
    /// An operator volume, by its name in `[volumes]`.
    Volume(&'a str),
}

impl FileGrant {
    /// The source, or None for one that [`validate`] refuses.
    pub fn source(&self) -> Option<Source<'_>> {
        match self.source.as_str() {
            "session" => Some(Source::Session),
            s => s.strip_prefix("volume:").filter(|v| !v.is_empty()).map(Source::Volume),
        }
    }

    /// Whether `other` names the same folder at the same place.
    fn same_mount(&self, other: &FileGrant) -> bool {
        self.path == other.path && self.source == other.source
    }
}

/// Checks each entry's guest path and source; errors name the entry.
pub fn validate(files: &[FileGrant]) -> Result<(), String> {
    for f in files {
        validate_guest_path(&f.path)?;
        if f.source().is_none() {
            return Err(format!("source {:?} must be \"session\" or \"volume:NAME\"", f.source));
        }
    }
    Ok(())
}

/// An absolute guest path other than `/`, without `.` or `..` parts.
fn validate_guest_path(path: &str) -> Result<(), String> {
    let ok = path.starts_with('/')
        && path.len() <= 256
        && path != "/"
        && !path.split('/').any(|c| c == ".." || c == ".")
        && !path.contains('\0');
    if ok { Ok(()) } else { Err(format!("guest path {path:?} must be absolute, not /, without . or ..")) }
}

/// The intersection with a policy: mounts the policy lists, at the lower
/// of the two accesses (read-write ∩ read-only = read-only).
pub fn intersect(mine: &[FileGrant], policy: &[FileGrant]) -> Vec<FileGrant> {
    mine.iter()
        .filter_map(|f| {
            let p = policy.iter().find(|p| p.same_mount(f))?;
            Some(FileGrant { access: f.access.min(p.access), ..f.clone() })
        })
        .collect()
}

/// A narrowing: every wanted mount must be granted, at no higher access.
pub fn narrow(mine: &[FileGrant], want: &[FileGrant]) -> Result<Vec<FileGrant>, String> {
    for f in want {
        if !mine.iter().any(|m| m.same_mount(f) && f.access <= m.access) {
            return Err(format!("files {:?} ({:?}) is not within the grant", f.path, f.source));
        }
    }
    Ok(want.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(path: &str, source: &str, access: Access) -> FileGrant {
        FileGrant { path: path.into(), source: source.into(), access }
    }

    #[test]
    fn a_file_grant_with_a_bad_path_or_source_is_refused() {
        let cases = [
            (grant("/a/../etc", "session", Access::ReadOnly), false),
            (grant("/a/./b", "session", Access::ReadOnly), false),
            (grant("rel", "session", Access::ReadOnly), false),
            (grant("/", "session", Access::ReadOnly), false),
            (grant("/x", "host:/etc", Access::ReadOnly), false),
            (grant("/x", "volume:", Access::ReadOnly), false),
            (grant("/x", "session", Access::ReadWrite), true),
            (grant("/ledger", "volume:ledger", Access::ReadOnly), true),
        ];
        for (f, ok) in cases {
            assert_eq!(validate(std::slice::from_ref(&f)).is_ok(), ok, "{f:?}");
        }
    }

    #[test]
    fn a_source_reads_as_the_session_workspace_or_a_named_volume() {
        assert_eq!(grant("/w", "session", Access::ReadOnly).source(), Some(Source::Session));
        assert_eq!(grant("/w", "volume:ledger", Access::ReadOnly).source(), Some(Source::Volume("ledger")));
        assert_eq!(grant("/w", "sessions", Access::ReadOnly).source(), None);
    }

    #[test]
    fn narrowing_can_lower_access_but_not_raise_it() {
        let rw = grant("/w", "session", Access::ReadWrite);
        let ro = grant("/w", "session", Access::ReadOnly);
        assert!(narrow(std::slice::from_ref(&ro), std::slice::from_ref(&rw)).is_err());
        assert_eq!(narrow(std::slice::from_ref(&rw), std::slice::from_ref(&ro)), Ok(vec![ro.clone()]));
        assert!(narrow(std::slice::from_ref(&rw), &[grant("/other", "session", Access::ReadOnly)]).is_err());
        assert_eq!(intersect(std::slice::from_ref(&rw), std::slice::from_ref(&ro)), vec![ro.clone()]);
        assert_eq!(intersect(&[rw], &[grant("/w", "volume:v", Access::ReadWrite)]), vec![]);
    }
}
