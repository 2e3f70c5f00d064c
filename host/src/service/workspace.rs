//! File grants: session workspaces and operator volumes.
//!
//! A `session` source is the session's own folder under
//! `<data_dir>/workspaces/<sid>`, created on first use and removed with the
//! session. A `volume:NAME` source is an operator folder from the config;
//! its access is the narrower of the grant's and the volume's. The host
//! removes workspaces through cap-std, relative to the workspaces folder, so
//! links a guest planted inside cannot redirect the deletion. A read-write
//! workspace has a quota (`caps::files`).

use super::Service;
use crate::caps::Mount;
use crate::caps::files::WorkspaceQuota;
use crate::config::VolumeConfig;
use crate::policy::files::Source;
use crate::policy::{Access, Grant};
use crate::runtime::loader::{LoadError, LoadedTool};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const WORKSPACES_DIR: &str = "workspaces";

/// Refuses bundles whose file grants name a volume the config lacks.
pub fn check_volumes(
    tools: Vec<LoadedTool>,
    volumes: &BTreeMap<String, VolumeConfig>,
    refused: &mut Vec<LoadError>,
) -> Vec<LoadedTool> {
    tools
        .into_iter()
        .filter(|t| {
            let missing = t
                .manifest
                .grant
                .files
                .iter()
                .filter_map(|f| match f.source() {
                    Some(Source::Volume(v)) => Some(v),
                    _ => None,
                })
                .find(|v| !volumes.contains_key(*v));
            match missing {
                Some(v) => {
                    refused.push(LoadError {
                        file: t.bundle.join(crate::manifest::MANIFEST_FILE).display().to_string(),
                        message: format!("grants.files names volume {v:?}, which the host config does not define"),
                    });
                    false
                }
                None => true,
            }
        })
        .collect()
}

impl Service {
    fn workspaces_root(&self) -> PathBuf {
        self.config.data_dir.join(WORKSPACES_DIR)
    }

    /// The folders a call of this grant sees.
    pub(super) async fn mounts(&self, session: &str, grant: &Grant) -> Vec<Mount> {
        let mut mounts = Vec::new();
        for f in &grant.files {
            let source = f.source();
            let (host, access, quota) = if source == Some(Source::Session) {
                let dir = self.workspaces_root().join(session);
                if let Err(e) = std::fs::create_dir_all(&dir) {
                    tracing::error!("cannot create workspace {}: {e}", dir.display());
                    continue;
                }
                let quota = match f.access {
                    Access::ReadWrite => match self.workspace_quota(session, &dir).await {
                        Some(quota) => Some(quota),
                        None => continue,
                    },
                    Access::ReadOnly => None,
                };
                (dir, f.access, quota)
            } else if let Some(Source::Volume(v)) = source
                && let Some(volume) = self.config.volumes.get(v)
            {
                (volume.path.clone(), f.access.min(volume.access), None)
            } else {
                continue;
            };
            mounts.push(Mount { host, guest: f.path.clone(), read_only: access == Access::ReadOnly, quota });
        }
        mounts
    }

    /// The count of a session's workspace, measured on first use off the
    /// runtime's threads: a walk of a large folder would stall other calls.
    /// `None` if the walk panicked: the call then runs without the
    /// workspace.
    async fn workspace_quota(&self, session: &str, dir: &Path) -> Option<Arc<WorkspaceQuota>> {
        let limits = &self.config.limits;
        let quota = self.workspace_quotas.get(session, dir, limits.max_workspace_mb << 20, limits.max_workspace_files);
        let q = quota.clone();
        match tokio::task::spawn_blocking(move || q.measure_once()).await {
            Ok(()) => Some(quota),
            Err(e) => {
                tracing::error!("cannot measure the workspace of session {session}: {e}");
                None
            }
        }
    }

    /// Removes a session's workspace, if it has one.
    pub(super) fn remove_workspace(&self, session: &str) {
        self.workspace_quotas.forget(session);
        let root = self.workspaces_root();
        if !root.exists() {
            return;
        }
        let result = cap_std::fs::Dir::open_ambient_dir(&root, cap_std::ambient_authority()).and_then(|dir| match dir
            .remove_dir_all(session)
        {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        });
        if let Err(e) = result {
            tracing::error!("cannot remove the workspace of session {session}: {e}");
        }
    }
}
