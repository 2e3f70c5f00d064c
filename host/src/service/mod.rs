//! The operations of Bulkhead, shared by the HTTP API and the CLI: sessions,
//! messages, calls. Every check of the permission boundary happens here.
//!
//! - [`sessions`]: create, read, list, narrow, delete; messages.
//! - [`calls`]: run a tool call durably (admission, execution, recovery); read calls.
//! - [`approvals`]: human decisions on calls that need them.
//! - [`state`], [`audit`], [`tools`]: what a session's tools hold, its
//!   audit trail, the tool set and what a principal sees of it.
//! - [`reload`]: loading the tool set (tools folder, OCI sources,
//!   signatures) at start and on reload.
//! - [`call_store`]: the narrow store handle each call reads through.
//! - [`workspace`]: session workspaces and operator volumes as mounts.
//! - [`usage`]: priced usage, the usage report.
//! - [`metrics`], [`error`]: counters for `/metrics`; errors to status codes.

pub mod approvals;
pub mod audit;
pub mod call_store;
pub mod calls;
pub mod error;
pub mod metrics;
pub mod reload;
pub mod sessions;
pub mod state;
pub mod tools;
pub mod usage;
pub mod workspace;

pub use error::{Result, ServiceError};

use crate::auth::{AuthError, Authenticator, DevTokens, Principal, Principals};
use crate::caps::secrets::SecretStore;
use crate::config::Config;
use crate::runtime::Runtime;
use crate::runtime::loader::LoadError;
use crate::store::sqlite::{Db, Durability, SqliteStore};
use crate::store::state_cache::StateCache;
use crate::store::{Sharing, Store};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::{Semaphore, broadcast};

/// Which bundles a service serves.
pub enum ToolSource {
    /// Every bundle folder in a tools folder.
    Dir(std::path::PathBuf),
    /// One bundle folder (`bulkhead run`).
    Bundle(std::path::PathBuf),
}

/// Where a started service's principals came from.
pub enum Credentials {
    Configured,
    Dev(DevTokens),
}

/// What `start` found: refused bundles and recovered calls, for the operator.
pub struct StartReport {
    pub refused: Vec<LoadError>,
    pub interrupted: usize,
    pub credentials: Credentials,
}

/// Tool state kept in memory across sessions: a miss costs one read.
const STATE_CACHE_BYTES: u64 = 32 << 20;

type ToolLock = Weak<tokio::sync::Mutex<()>>;

pub struct Service {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub runtime: Arc<Runtime>,
    /// The tools served now, swapped whole by a reload (`tools`, `reload`).
    tool_set: std::sync::RwLock<Arc<tools::ToolSet>>,
    tools_changed: tokio::sync::watch::Sender<u64>,
    /// Ids of sessions whose boundary was just narrowed on this host.
    narrowed: broadcast::Sender<String>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    pub auth: Authenticator,
    pub secrets: Arc<SecretStore>,
    /// Committed tool state in memory (see its module for the rule that
    /// keeps it coherent: the (session, tool) turn).
    pub state_cache: Arc<StateCache>,
    pub metrics: metrics::Metrics,
    call_slots: Arc<Semaphore>,
    /// One lock per (session, tool): calls that share state run in order.
    tool_locks: Mutex<HashMap<(String, String), ToolLock>>,
    /// The operator's `network.allow_private`, shared with every call.
    allow_private: Arc<crate::policy::PrivateRanges>,
    /// Ids of calls that just left `running`/`pending_approval`, for long-polls.
    finished: broadcast::Sender<String>,
    /// Counts committed changes to any session's boundary (narrowing,
    /// deletion, expiry): a call that saw no change since it read its
    /// session need not read it again when its turn comes.
    boundary_epoch: AtomicU64,
    /// Sessions read by calls, with the epoch read before each (see
    /// `session_for_call`).
    call_sessions: Mutex<HashMap<String, (u64, Arc<crate::model::Session>)>>,
    /// Calls the host failed mid-way, to be finished `failed` (see `calls::reap`).
    abandoned: Mutex<calls::AbandonedCalls>,
    /// What the workspaces of sessions with calls in flight hold.
    workspace_quotas: crate::caps::files::WorkspaceQuotas,
    /// The data folder's lock, when the store does not hold it (PostgreSQL:
    /// the folder still holds the cache and dev tokens of this one host).
    _data_folder: Option<crate::store::sqlite::lock::Folder>,
}

impl Service {
    /// Opens the data folder, loads principals, secrets and tools, and marks
    /// calls a previous host left running as interrupted.
    pub async fn start(config: Config) -> anyhow::Result<(Arc<Service>, StartReport)> {
        let dir = config.tools_dir.clone();
        Service::start_with(config, ToolSource::Dir(dir)).await
    }

    pub async fn start_with(config: Config, source: ToolSource) -> anyhow::Result<(Arc<Service>, StartReport)> {
        use anyhow::Context;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create the data folder {}", config.data_dir.display()))?;
        // Before anything is written in the folder (dev tokens, the cache).
        let folder = crate::store::sqlite::lock::lock(&config.data_dir).map_err(|e| match e {
            // A plain message: this is not storage failing.
            crate::store::StoreError::Unavailable(message) => anyhow::Error::msg(message),
            other => other.into(),
        })?;
        let (principals, credentials) = match &config.principals {
            Some(list) => (Principals::from_config(list).map_err(anyhow::Error::msg)?, Credentials::Configured),
            None => {
                let (p, tokens) = Principals::dev(&config.data_dir)
                    .with_context(|| format!("cannot set up dev tokens in {}", config.data_dir.display()))?;
                (p, Credentials::Dev(tokens))
            }
        };
        let auth = Authenticator::new(principals, &config.auth.issuers).map_err(anyhow::Error::msg)?;
        let secrets = Arc::new(SecretStore::load(&config.secrets).map_err(anyhow::Error::msg)?);
        // A read-write volume inside the data folder (the embedded defaults'
        // adjustments journal) is created on start; others are the operator's.
        for v in config.volumes.values() {
            if v.access == crate::policy::Access::ReadWrite && v.path.starts_with(&config.data_dir) {
                let _ = std::fs::create_dir_all(&v.path);
            }
        }
        let (store, data_folder) = open_store(&config, folder).await?;
        let runtime = Runtime::new(&config.limits, Some(&config.data_dir.join("cache")))?;
        let (found, refused) = match &source {
            ToolSource::Dir(dir) => {
                reload::load_all(&runtime, &config, dir, &config.tools).await.map_err(anyhow::Error::msg)?
            }
            // `bulkhead run`: one bundle, as its author has it.
            ToolSource::Bundle(bundle) => match runtime.load_bundle(bundle, &config.limits) {
                Ok(tool) => {
                    let mut refused = Vec::new();
                    let tools = workspace::check_volumes(vec![tool], &config.volumes, &mut refused);
                    let found = tools.into_iter().map(|tool| reload::Found {
                        tool,
                        signature: crate::supply::signature::Verdict::Unsigned,
                        source: serde_json::json!({ "kind": "dir", "path": bundle }),
                    });
                    (found.collect(), refused)
                }
                Err(e) => (vec![], vec![e]),
            },
        };
        let tool_set = reload::first_set(found);
        let metrics = metrics::Metrics::new(tool_set.tools.keys());
        let allow_private = Arc::new(config.network.allow_private.clone());
        let service = Arc::new(Service {
            call_slots: Arc::new(Semaphore::new(config.limits.max_concurrent_calls as usize)),
            config,
            store,
            runtime,
            tool_set: std::sync::RwLock::new(Arc::new(tool_set)),
            tools_changed: tokio::sync::watch::channel(0).0,
            narrowed: broadcast::channel(256).0,
            reloading: tokio::sync::Mutex::new(()),
            auth,
            secrets,
            state_cache: Arc::new(StateCache::new(STATE_CACHE_BYTES)),
            metrics,
            tool_locks: Mutex::new(HashMap::new()),
            finished: broadcast::channel(1024).0,
            boundary_epoch: AtomicU64::new(0),
            call_sessions: Mutex::new(HashMap::new()),
            abandoned: Mutex::default(),
            workspace_quotas: Default::default(),
            allow_private,
            _data_folder: data_folder,
        });
        let interrupted = service.recover().await?;
        if matches!(source, ToolSource::Dir(_)) {
            service.record_started_tools().await?;
        }
        // After recovery: a host stopped at its cap must still be able to
        // close the calls it left running, then serve deletes to free space.
        if let Some(mb) = service.config.storage.max_size_mb {
            let cap = service.store.cap_size(mb << 20).await?;
            if cap > mb << 20 {
                tracing::warn!(
                    "the database is already {} MiB, above storage.max_size_mb; capped at its size",
                    cap >> 20
                );
            }
        }
        spawn_sweeper(&service);
        Ok((service, StartReport { refused, interrupted, credentials }))
    }

    pub async fn authenticate(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        self.auth.authenticate(token).await
    }

    /// Ids of calls as they leave `running` or `pending_approval` on this host.
    pub fn subscribe_finished(&self) -> broadcast::Receiver<String> {
        self.finished.subscribe()
    }

    pub fn calls_in_flight(&self) -> usize {
        self.config.limits.max_concurrent_calls as usize - self.call_slots.available_permits()
    }

    fn count_call(&self, call: &crate::model::Call, denials: usize) {
        self.metrics.record(call, denials);
    }

    /// Gauges for `/metrics`, read from the database.
    pub async fn gauges(&self) -> Result<metrics::Gauges> {
        let stats = self.store.stats().await?;
        Ok(metrics::Gauges {
            calls_in_flight: self.calls_in_flight(),
            call_waiters: self.finished.receiver_count(),
            tools_loaded: self.tools().len(),
            sessions: stats.sessions,
            pending_approvals: stats.pending_approvals,
            storage_bytes: stats.storage_bytes,
            db_commits: stats.commits,
            db_write_jobs: stats.write_jobs,
            db_write_jobs_run_by_callers: stats.write_jobs_run_by_callers,
        })
    }

    /// Whether in-memory copies of stored data stay valid: only while this
    /// host is the store's one writer.
    pub(crate) fn caches(&self) -> bool {
        self.store.sharing() == Sharing::OneHost
    }

    /// The store handle a call of `tool` in `session` reads through;
    /// `prefetched`: the tool's committed state read under the call's turn
    /// (shared stores), for its first read.
    pub fn call_store(
        &self,
        session: &str,
        tool: &str,
        prefetched: Option<crate::store::state_cache::Committed>,
    ) -> Arc<dyn crate::caps::CallStore> {
        let store = call_store::ScopedStore::new(self.store.clone(), self.state_cache.clone(), session, tool);
        Arc::new(store.with_state(prefetched))
    }

    fn tool_lock(&self, session: &str, tool: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.tool_locks.lock().expect("tool lock map poisoned");
        let key = (session.to_string(), tool.to_string());
        if let Some(lock) = locks.get(&key).and_then(Weak::upgrade) {
            return lock;
        }
        if locks.len() >= 1024 {
            locks.retain(|_, w| w.strong_count() > 0);
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(key, Arc::downgrade(&lock));
        lock
    }
}

/// The configured backend: SQLite in the data folder (which it locks), or
/// the PostgreSQL database named by the URL in `storage.url_env`.
async fn open_store(
    config: &Config,
    folder: crate::store::sqlite::lock::Folder,
) -> anyhow::Result<(Arc<dyn Store>, Option<crate::store::sqlite::lock::Folder>)> {
    use crate::config::{Backend, StorageConfig};
    let storage = &config.storage;
    match storage.backend {
        Backend::Sqlite => {
            let durability = match storage.durability {
                crate::config::DurabilityMode::Normal => Durability::Normal,
                crate::config::DurabilityMode::Full => Durability::Full,
            };
            Ok((Arc::new(SqliteStore::new(Db::open_locked(folder, durability)?)), None))
        }
        Backend::Postgres => {
            let var = storage.url_env.as_deref().unwrap_or_default();
            let url = std::env::var(var).map_err(|_| {
                anyhow::anyhow!("storage.url_env names {var}, which is not set (it holds the PostgreSQL URL)")
            })?;
            let options = crate::store::postgres::PgOptions {
                url,
                pool_size: storage.pool_size.unwrap_or(StorageConfig::DEFAULT_POOL_SIZE) as usize,
                statement_timeout: std::time::Duration::from_millis(
                    storage.statement_timeout_ms.unwrap_or(StorageConfig::DEFAULT_STATEMENT_TIMEOUT_MS),
                ),
                lease: std::time::Duration::from_secs(
                    storage.lease_seconds.unwrap_or(StorageConfig::DEFAULT_LEASE_SECONDS),
                ),
            };
            let name = format!("{} pid {}", config.listen, std::process::id());
            let store = crate::store::postgres::PgStore::connect(&options, &name)
                .await
                .map_err(|e| anyhow::anyhow!("cannot open the PostgreSQL store: {e}"))?;
            Ok((Arc::new(store), Some(folder)))
        }
    }
}

/// Once a second while the service lives: expire undecided approvals,
/// purge expired sessions, and (shared stores) interrupt the calls of
/// hosts whose lease expired.
fn spawn_sweeper(service: &Arc<Service>) {
    let weak = Arc::downgrade(service);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(service) = weak.upgrade() else { break };
            if let Err(e) = service.expire_approvals().await {
                tracing::warn!("approval expiry sweep failed: {e}");
            }
            if let Err(e) = service.purge_expired_sessions().await {
                tracing::warn!("session expiry sweep failed: {e}");
            }
            // Other hosts' calls, once their lease expired (shared stores).
            if !service.caches() {
                match service.recover().await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::warn!("{n} call(s) left running by a host whose lease expired are now interrupted")
                    }
                    Err(e) => tracing::warn!("lease sweep failed: {e}"),
                }
            }
        }
    });
}

impl Service {
    /// The boundary epoch now; read before reading a session.
    fn boundary_epoch(&self) -> u64 {
        self.boundary_epoch.load(Ordering::SeqCst)
    }

    /// Called after a boundary change committed (whatever its result).
    fn boundary_changed(&self) {
        self.boundary_epoch.fetch_add(1, Ordering::SeqCst);
    }
}
