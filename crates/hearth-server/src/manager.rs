//! The sandboxes of one server: created from a template's pool, recorded in
//! the store, killed or paused when their time runs out, paused and resumed
//! on request. The store is the catalog; this module keeps the live VMs.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hearth_node::{Node, NodeError, Pool, Sandbox};
use hearth_proto::agent::InitRequest;
use tokio::sync::Mutex;

use crate::error::ApiError;
use crate::store::{SandboxRecord, SandboxState, Store};

/// The envd version the agent implements (what the e2b SDKs check).
pub const ENVD_VERSION: &str = "0.5.7";
/// How long a restored guest may take to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a template may take to boot for its snapshot.
const SNAPSHOT_BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest sandbox lifetime a request may ask for (E2B's limit for paid
/// plans: 24 h).
pub const MAX_TIMEOUT_SECS: u64 = 24 * 3600;

/// Machine shape of every sandbox (templates do not carry their own yet).
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub vcpus: u32,
    pub memory_mib: u32,
}

/// What `POST /sandboxes` asks for, checked.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub template: String,
    pub timeout_secs: u64,
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
    pub secure: bool,
    pub allow_internet_access: bool,
    pub auto_pause: bool,
}

/// A sandbox whose VM runs in this process.
struct Live {
    sandbox: Sandbox,
}

pub struct Manager {
    node: Arc<Node>,
    store: Arc<Store>,
    shape: Shape,
    pool_size: usize,
    pools: Mutex<HashMap<String, Arc<Pool>>>,
    live: Mutex<HashMap<String, Arc<Mutex<Option<Live>>>>>,
}

pub(crate) fn now_ms() -> i64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn secs_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

impl Manager {
    /// Takes over the catalog: sandboxes recorded as running died with the
    /// previous server (their VMs are children of it) and are marked
    /// killed; paused ones stay resumable if their files are there.
    pub fn new(
        node: Arc<Node>,
        store: Arc<Store>,
        shape: Shape,
        pool_size: usize,
    ) -> Result<Self, ApiError> {
        let paused = node.paused_sandboxes()?;
        for record in store.running_sandboxes()? {
            let keep = record.state == SandboxState::Paused && paused.contains(&record.sandbox_id);
            if !keep {
                tracing::info!(
                    sandbox = record.sandbox_id,
                    "marking a sandbox of a previous run killed"
                );
                store.delete_sandbox(&record.sandbox_id)?;
            }
        }
        Ok(Self {
            node,
            store,
            shape,
            pool_size,
            pools: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The pool of `template`, started (and its snapshot taken) on first use.
    async fn pool(&self, template: &str) -> Result<Arc<Pool>, ApiError> {
        let mut pools = self.pools.lock().await;
        if let Some(pool) = pools.get(template) {
            return Ok(Arc::clone(pool));
        }
        let found = match self.node.template(template) {
            Ok(found) => found,
            Err(NodeError::NoTemplate(_) | NodeError::Template(_)) => {
                return Err(ApiError::not_found(format!(
                    "template '{template}' not found"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let kernel = self.node.kernel()?;
        let snapshot = self
            .node
            .snapshot(
                &found,
                &kernel,
                self.shape.vcpus,
                self.shape.memory_mib,
                SNAPSHOT_BOOT_TIMEOUT,
            )
            .await?;
        let pool = Arc::new(Pool::start(
            Arc::clone(&self.node),
            snapshot,
            self.pool_size,
        ));
        pools.insert(template.to_owned(), Arc::clone(&pool));
        Ok(pool)
    }

    /// Starts the pools of these templates ahead of the first request.
    pub async fn warm(&self, templates: &[&str]) -> Result<(), ApiError> {
        for template in templates {
            self.pool(template).await?;
        }
        Ok(())
    }

    pub async fn create(&self, request: CreateRequest) -> Result<SandboxRecord, ApiError> {
        let pool = self.pool(&request.template).await?;
        let mut sandbox = pool.create().await?;
        let token = if request.secure {
            Some(new_token().map_err(|e| ApiError::internal(format!("cannot draw a token: {e}")))?)
        } else {
            None
        };
        let init = InitRequest {
            env_vars: Some(request.env_vars.clone().into_iter().collect()),
            access_token: token.clone(),
            ..InitRequest::default()
        };
        if let Err(e) = sandbox.wait_ready(READY_TIMEOUT, init).await {
            let _ = sandbox.destroy().await;
            return Err(e.into());
        }
        let now = now_ms();
        let record = SandboxRecord {
            sandbox_id: sandbox.id().to_owned(),
            template_id: request.template.clone(),
            alias: Some(request.template.clone()),
            client_id: "hearth".to_owned(),
            state: SandboxState::Running,
            metadata: request.metadata,
            env_vars: request.env_vars,
            started_at_ms: now,
            end_at_ms: now.saturating_add(secs_ms(request.timeout_secs)),
            cpu_count: self.shape.vcpus,
            memory_mb: self.shape.memory_mib,
            secure: request.secure,
            envd_access_token: token,
            auto_pause: request.auto_pause,
            allow_internet_access: request.allow_internet_access,
        };
        if let Err(e) = self.store.insert_sandbox(&record) {
            let _ = sandbox.destroy().await;
            return Err(e.into());
        }
        self.live.lock().await.insert(
            record.sandbox_id.clone(),
            Arc::new(Mutex::new(Some(Live { sandbox }))),
        );
        Ok(record)
    }

    /// The record of a sandbox that exists (running or paused).
    pub fn get(&self, id: &str) -> Result<SandboxRecord, ApiError> {
        self.store
            .get_sandbox(id)?
            .filter(|r| r.state != SandboxState::Killed)
            .ok_or_else(|| not_found(id))
    }

    /// Where the proxy reaches port `port` of a running sandbox.
    pub async fn address(&self, id: &str, port: u16) -> Result<SocketAddr, ApiError> {
        let entry = self.live.lock().await.get(id).cloned();
        let Some(entry) = entry else {
            return Err(match self.store.get_sandbox(id)? {
                Some(r) if r.state == SandboxState::Paused => {
                    ApiError::conflict(format!("sandbox {id} is paused"))
                }
                _ => not_found(id),
            });
        };
        let live = entry.lock().await;
        let live = live.as_ref().ok_or_else(|| not_found(id))?;
        let mut addr = live.sandbox.agent().addr();
        addr.set_port(port);
        Ok(addr)
    }

    pub async fn kill(&self, id: &str) -> Result<(), ApiError> {
        let record = self.get(id)?;
        let entry = self.live.lock().await.remove(id);
        if let Some(entry) = entry
            && let Some(live) = entry.lock().await.take()
        {
            live.sandbox.destroy().await?;
        } else if record.state == SandboxState::Paused {
            self.node.delete_paused(id)?;
        }
        self.store.delete_sandbox(id)?;
        Ok(())
    }

    /// Ends the sandbox `timeout_secs` from now.
    pub fn set_timeout(&self, id: &str, timeout_secs: u64) -> Result<(), ApiError> {
        let record = self.get(id)?;
        self.store.set_end_at(
            &record.sandbox_id,
            now_ms().saturating_add(secs_ms(timeout_secs)),
        )?;
        Ok(())
    }

    /// Moves the end at least `secs` from now.
    pub fn refresh(&self, id: &str, secs: u64) -> Result<(), ApiError> {
        let record = self.get(id)?;
        let end = now_ms().saturating_add(secs_ms(secs)).max(record.end_at_ms);
        self.store.set_end_at(id, end)?;
        Ok(())
    }

    pub async fn pause(&self, id: &str) -> Result<(), ApiError> {
        let record = self.get(id)?;
        if record.state == SandboxState::Paused {
            return Err(ApiError::conflict(format!(
                "sandbox {id} is already paused"
            )));
        }
        let entry = self.live.lock().await.remove(id);
        let live = match entry {
            Some(entry) => entry.lock().await.take(),
            None => None,
        };
        let Some(live) = live else {
            return Err(not_found(id));
        };
        live.sandbox.pause().await?;
        self.store.set_state(id, SandboxState::Paused)?;
        Ok(())
    }

    /// Resumes a paused sandbox for `timeout_secs`. `Ok(false)` if it was
    /// running already (its timeout is moved then).
    pub async fn resume(&self, id: &str, timeout_secs: u64) -> Result<bool, ApiError> {
        let mut record = self.get(id)?;
        if record.state == SandboxState::Running {
            self.refresh(id, timeout_secs)?;
            return Ok(false);
        }
        let mut sandbox = Sandbox::resume(&self.node, id).await?;
        let init = InitRequest {
            access_token: record.envd_access_token.clone(),
            ..InitRequest::default()
        };
        if let Err(e) = sandbox.wait_ready(READY_TIMEOUT, init).await {
            let _ = sandbox.destroy().await;
            return Err(e.into());
        }
        record.state = SandboxState::Running;
        record.end_at_ms = now_ms().saturating_add(secs_ms(timeout_secs));
        self.store.update_sandbox(&record)?;
        self.live
            .lock()
            .await
            .insert(id.to_owned(), Arc::new(Mutex::new(Some(Live { sandbox }))));
        Ok(true)
    }

    /// Kills (or, with auto-pause, pauses) every running sandbox whose end
    /// has passed.
    pub async fn expire(&self) {
        let expired = match self.store.expired(now_ms()) {
            Ok(expired) => expired,
            Err(e) => {
                tracing::warn!("listing expired sandboxes: {e}");
                return;
            }
        };
        for record in expired {
            let id = &record.sandbox_id;
            let done = if record.auto_pause {
                self.pause(id).await
            } else {
                self.kill(id).await
            };
            match done {
                Ok(()) => tracing::info!(
                    sandbox = id,
                    auto_pause = record.auto_pause,
                    "sandbox timed out"
                ),
                Err(e) => tracing::warn!(sandbox = id, "ending a timed-out sandbox: {e}"),
            }
        }
    }

    /// Kills the running sandboxes and stops the pools (server shutdown).
    /// Paused sandboxes stay.
    pub async fn shutdown(&self) {
        let ids: Vec<String> = self.live.lock().await.keys().cloned().collect();
        for id in ids {
            if let Err(e) = self.kill(&id).await {
                tracing::warn!(sandbox = id, "killing at shutdown: {e}");
            }
        }
        let pools: Vec<Arc<Pool>> = self.pools.lock().await.drain().map(|(_, p)| p).collect();
        for pool in pools {
            match Arc::try_unwrap(pool) {
                Ok(pool) => pool.close().await,
                Err(_) => tracing::warn!("a pool is still in use at shutdown"),
            }
        }
    }
}

impl Manager {
    /// `GET /templates`: the current build of every template.
    pub fn templates(&self) -> Result<Vec<serde_json::Value>, ApiError> {
        let mut current = Vec::new();
        for template in self.node.templates()? {
            let created = hearth_node::rfc3339(Duration::from_secs(template.created_at));
            current.push(serde_json::json!({
                "templateID": template.name,
                "buildID": template.build_id,
                "cpuCount": self.shape.vcpus,
                "memoryMB": self.shape.memory_mib,
                "diskSizeMB": template.size >> 20,
                "public": false,
                "aliases": [template.name],
                "createdAt": created,
                "updatedAt": created,
                "envdVersion": ENVD_VERSION,
                "buildStatus": "ready",
            }));
        }
        Ok(current)
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "sandbox \"{id}\" doesn't exist or you don't have access to it"
    ))
}

/// A fresh envd access token: 32 hex characters.
fn new_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut raw = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut raw)?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}
