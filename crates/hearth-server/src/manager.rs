//! The sandboxes of one server: created from a template's pool, recorded in
//! the store, killed or paused when their time runs out, paused and resumed
//! on request. The store is the catalog; this module keeps the live VMs.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hearth_node::{Egress, Node, NodeError, Pool, Sandbox, SandboxSpec};
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

/// Which build of a template a sandbox starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRef {
    pub name: String,
    /// A build other than the current one (a tag names it); `None` for the
    /// current build.
    pub build: Option<String>,
}

impl TemplateRef {
    pub fn current(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            build: None,
        }
    }
}

/// What `POST /sandboxes` asks for, checked.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub template: TemplateRef,
    pub timeout_secs: u64,
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
    pub secure: bool,
    pub allow_internet_access: bool,
    /// Includes `allow_internet_access`.
    pub egress: Egress,
    pub auto_pause: bool,
}

/// A sandbox whose VM runs in this process.
struct Live {
    sandbox: Sandbox,
}

/// The pool of a template's current build, and the machine shape its
/// snapshot has.
#[derive(Clone)]
struct TemplatePool {
    pool: Arc<Pool>,
    shape: Shape,
}

pub struct Manager {
    node: Arc<Node>,
    store: Arc<Store>,
    shape: Shape,
    pool_size: usize,
    pools: Mutex<HashMap<String, TemplatePool>>,
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

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The machine shape of a template build: what its build asked for
    /// when the build API made it, else the server's.
    fn shape_of(&self, template: &hearth_image::Template) -> Shape {
        match self
            .store
            .build_of_node_build(&template.name, &template.build_id)
        {
            Ok(Some(build)) => Shape {
                vcpus: build.cpu_count,
                memory_mib: build.memory_mb,
            },
            Ok(None) => self.shape,
            Err(e) => {
                tracing::warn!(template = template.name, "reading a template's shape: {e}");
                self.shape
            }
        }
    }

    /// The pool of `template`, started (and its snapshot taken) on first use.
    async fn pool(&self, template: &str) -> Result<TemplatePool, ApiError> {
        let mut pools = self.pools.lock().await;
        if let Some(pool) = pools.get(template) {
            return Ok(pool.clone());
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
        let shape = self.shape_of(&found);
        let spec = SandboxSpec {
            template: found,
            kernel: self.node.kernel()?,
            vcpus: shape.vcpus,
            memory_mib: shape.memory_mib,
            boot_timeout: SNAPSHOT_BOOT_TIMEOUT,
        };
        let snapshot = self.node.snapshot(&spec).await?;
        let pool = TemplatePool {
            pool: Arc::new(Pool::start(
                Arc::clone(&self.node),
                snapshot,
                self.pool_size,
            )),
            shape,
        };
        pools.insert(template.to_owned(), pool.clone());
        Ok(pool)
    }

    /// A sandbox of a build that is not its template's current one (a tag
    /// names it): restored from that build's snapshot, taken on first use,
    /// without a pool.
    async fn restore_build(
        &self,
        name: &str,
        build: &str,
        egress: &Egress,
    ) -> Result<(Sandbox, Shape), ApiError> {
        let found = match self.node.template_build(name, build) {
            Ok(found) => found,
            Err(NodeError::NoTemplate(_) | NodeError::Template(_)) => {
                return Err(ApiError::not_found(format!(
                    "build {build} of template '{name}' is gone"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let shape = self.shape_of(&found);
        let spec = SandboxSpec {
            template: found,
            kernel: self.node.kernel()?,
            vcpus: shape.vcpus,
            memory_mib: shape.memory_mib,
            boot_timeout: SNAPSHOT_BOOT_TIMEOUT,
        };
        let snapshot = self.node.snapshot(&spec).await?;
        let sandbox = Sandbox::from_snapshot(&self.node, &snapshot, egress).await?;
        Ok((sandbox, shape))
    }

    /// Stops the pool of `template` if it restores an older build than the
    /// current one (after a build): the next create starts a pool of the
    /// current build, and the old build is no longer in use by the pool.
    pub async fn refresh_pool(&self, template: &str) {
        let current = match self.node.template(template) {
            Ok(t) => Some(t.build_id),
            Err(_) => None,
        };
        let mut pools = self.pools.lock().await;
        let stale = pools.get(template).is_some_and(|p| {
            // <templates>/<name>/<build>/snapshots/<key>
            let build = p.pool.snapshot().dir.parent().and_then(|d| d.parent());
            build.and_then(|b| b.file_name()).and_then(|b| b.to_str()) != current.as_deref()
        });
        let old = if stale { pools.remove(template) } else { None };
        drop(pools);
        if let Some(old) = old {
            close_pool(old.pool).await;
        }
    }

    /// Stops the pool of `template`, if it has one, and waits for its
    /// parked sandboxes to go (before the template is deleted).
    pub async fn drop_pool(&self, template: &str) {
        let old = self.pools.lock().await.remove(template);
        if let Some(old) = old {
            close_pool(old.pool).await;
        }
    }

    /// Starts the pools of these templates ahead of the first request.
    pub async fn warm(&self, templates: &[&str]) -> Result<(), ApiError> {
        for template in templates {
            self.pool(template).await?;
        }
        Ok(())
    }

    pub async fn create(&self, request: CreateRequest) -> Result<SandboxRecord, ApiError> {
        let (mut sandbox, shape) = match &request.template.build {
            None => {
                let TemplatePool { pool, shape } = self.pool(&request.template.name).await?;
                (pool.create(&request.egress).await?, shape)
            }
            Some(build) => {
                self.restore_build(&request.template.name, build, &request.egress)
                    .await?
            }
        };
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
            template_id: request.template.name.clone(),
            alias: Some(request.template.name.clone()),
            client_id: "hearth".to_owned(),
            state: SandboxState::Running,
            metadata: request.metadata,
            env_vars: request.env_vars,
            started_at_ms: now,
            end_at_ms: now.saturating_add(secs_ms(request.timeout_secs)),
            cpu_count: shape.vcpus,
            memory_mb: shape.memory_mib,
            secure: request.secure,
            envd_access_token: token,
            auto_pause: request.auto_pause,
            allow_internet_access: request.allow_internet_access,
            egress: request.egress,
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

    /// Replaces the egress policy of a running sandbox; it applies to its
    /// open connections too.
    pub async fn set_network(
        &self,
        id: &str,
        allow_internet_access: bool,
        egress: Egress,
    ) -> Result<(), ApiError> {
        let record = self.get(id)?;
        if record.state == SandboxState::Paused {
            return Err(ApiError::conflict(format!(
                "sandbox {id} is paused; resume it to change its network"
            )));
        }
        let entry = self.live.lock().await.get(id).cloned();
        let entry = entry.ok_or_else(|| not_found(id))?;
        let mut live = entry.lock().await;
        let live = live.as_mut().ok_or_else(|| not_found(id))?;
        live.sandbox.set_egress(&egress).await?;
        self.store.set_egress(id, allow_internet_access, &egress)?;
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

    /// `count` copies of a running sandbox (memory, processes, files), each
    /// ending `timeout_secs` from now. Copies keep the parent's access token
    /// (their agents hold it from the parent's memory), env and metadata.
    pub async fn fork(
        &self,
        id: &str,
        count: usize,
        timeout_secs: u64,
    ) -> Result<Vec<SandboxRecord>, ApiError> {
        let parent = self.get(id)?;
        if parent.state != SandboxState::Running {
            return Err(ApiError::conflict(format!(
                "sandbox {id} is paused; resume it to fork it"
            )));
        }
        let entry = self
            .live
            .lock()
            .await
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(id))?;
        let copies = {
            let mut live = entry.lock().await;
            let live = live.as_mut().ok_or_else(|| not_found(id))?;
            live.sandbox.fork(&self.node, count).await?
        };
        let mut records = Vec::with_capacity(copies.len());
        let mut failure = None;
        for mut copy in copies {
            let init = InitRequest {
                access_token: parent.envd_access_token.clone(),
                ..InitRequest::default()
            };
            if let Err(e) = copy.wait_ready(READY_TIMEOUT, init).await {
                let _ = copy.destroy().await;
                failure = Some(ApiError::from(e));
                continue;
            }
            let now = now_ms();
            let record = SandboxRecord {
                sandbox_id: copy.id().to_owned(),
                started_at_ms: now,
                end_at_ms: now.saturating_add(secs_ms(timeout_secs)),
                ..parent.clone()
            };
            if let Err(e) = self.store.insert_sandbox(&record) {
                let _ = copy.destroy().await;
                failure = Some(e.into());
                continue;
            }
            self.live.lock().await.insert(
                record.sandbox_id.clone(),
                Arc::new(Mutex::new(Some(Live { sandbox: copy }))),
            );
            records.push(record);
        }
        match failure {
            Some(e) if records.is_empty() => Err(e),
            _ => Ok(records),
        }
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
        let pools: Vec<Arc<Pool>> = self
            .pools
            .lock()
            .await
            .drain()
            .map(|(_, p)| p.pool)
            .collect();
        for pool in pools {
            match Arc::try_unwrap(pool) {
                Ok(pool) => pool.close().await,
                Err(_) => tracing::warn!("a pool is still in use at shutdown"),
            }
        }
    }
}

/// Closes a pool once no create holds it any more.
async fn close_pool(mut pool: Arc<Pool>) {
    loop {
        match Arc::try_unwrap(pool) {
            Ok(pool) => return pool.close().await,
            Err(shared) => {
                pool = shared;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Manager {
    /// `GET /templates`: the current build of every template, in E2B's
    /// `Template` shape. Its `buildID` is the build API's id of that build
    /// when the API made it, else the node's.
    pub fn templates(&self) -> Result<Vec<serde_json::Value>, ApiError> {
        let mut current = Vec::new();
        for template in self.node.templates()? {
            current.push(self.template_json(&template)?);
        }
        Ok(current)
    }

    /// One template's current build in E2B's `Template` shape.
    pub fn template_json(
        &self,
        template: &hearth_image::Template,
    ) -> Result<serde_json::Value, ApiError> {
        let built =
            hearth_proto::time::format_since_epoch(Duration::from_secs(template.created_at));
        let builds = self.store.template_builds(&template.name)?;
        let api_build = builds
            .iter()
            .find(|b| b.node_build.as_deref() == Some(template.build_id.as_str()));
        let shape = self.shape_of(template);
        let first = builds
            .last()
            .map_or(built.clone(), |b| rfc3339_ms(b.created_at_ms));
        Ok(serde_json::json!({
            "templateID": template.name,
            "buildID": api_build.map_or(template.build_id.as_str(), |b| b.build_id.as_str()),
            "cpuCount": shape.vcpus,
            "memoryMB": shape.memory_mib,
            "diskSizeMB": template.size >> 20,
            "public": false,
            "aliases": [template.name],
            "names": [template.name],
            "createdAt": first,
            "updatedAt": built,
            "createdBy": null,
            "lastSpawnedAt": null,
            "spawnCount": 0,
            "buildCount": builds.len().max(1),
            "envdVersion": ENVD_VERSION,
            "buildStatus": "ready",
        }))
    }
}

pub(crate) fn rfc3339_ms(ms: i64) -> String {
    hearth_proto::time::format_since_epoch(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
}

impl Manager {
    /// The guest's current CPU, memory and disk use in E2B's
    /// `SandboxMetric` shape; `None` for a paused sandbox.
    pub async fn metrics(&self, id: &str) -> Result<Option<serde_json::Value>, ApiError> {
        let record = self.get(id)?;
        if record.state != SandboxState::Running {
            return Ok(None);
        }
        let addr = self.address(id, hearth_proto::agent::AGENT_PORT).await?;
        let agent = hearth_node::AgentClient::new(addr);
        let m = agent
            .get_json("/metrics", record.envd_access_token.as_deref())
            .await
            .map_err(|e| ApiError::internal(format!("metrics of sandbox {id}: {e}")))?;
        let ts = m["ts"].as_i64().unwrap_or(0);
        Ok(Some(serde_json::json!({
            "timestamp": hearth_proto::time::format_rfc3339(ts, 0),
            "timestampUnix": ts,
            "cpuCount": m["cpu_count"],
            "cpuUsedPct": m["cpu_used_pct"],
            "memUsed": m["mem_used"],
            "memTotal": m["mem_total"],
            "memCache": 0,
            "diskUsed": m["disk_used"],
            "diskTotal": m["disk_total"],
        })))
    }

    /// Lines the guest wrote to its console since the sandbox was created
    /// or last resumed: (unix ms, level, message).
    pub fn logs(&self, id: &str) -> Result<Vec<(i64, &'static str, String)>, ApiError> {
        let record = self.get(id)?;
        let path = self.node.layout().sandboxes().join(id).join("console.log");
        let text = std::fs::read(&path).unwrap_or_default();
        Ok(String::from_utf8_lossy(&text)
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty())
            .map(|line| parse_log_line(line, record.started_at_ms))
            .collect())
    }
}

/// A console line: hearth-init's `<RFC 3339>  LEVEL target: message`, or
/// anything else (kernel messages) at info level stamped `fallback_ms`.
fn parse_log_line(line: &str, fallback_ms: i64) -> (i64, &'static str, String) {
    let (stamp, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let Some(ms) = parse_rfc3339_ms(stamp) else {
        return (fallback_ms, "info", line.to_owned());
    };
    let rest = rest.trim_start();
    let (level, message) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let level = match level {
        "ERROR" => "error",
        "WARN" => "warn",
        "DEBUG" | "TRACE" => "debug",
        _ => "info",
    };
    (ms, level, message.trim_start().to_owned())
}

/// An RFC 3339 time as unix milliseconds.
fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let since = hearth_proto::time::parse_since_epoch(s)?;
    i64::try_from(since.as_millis()).ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_become_log_entries() {
        let (ms, level, message) = parse_log_line(
            "2026-11-23T10:53:38.060000Z  WARN hearth_init::agent: /init failed",
            7,
        );
        assert_eq!(ms, 1_795_431_218_060);
        assert_eq!(level, "warn");
        assert_eq!(message, "hearth_init::agent: /init failed");
        assert_eq!(
            parse_log_line("[    0.123] virtio_blk: 1 disk", 7),
            (7, "info", "[    0.123] virtio_blk: 1 disk".to_owned())
        );
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(
            parse_rfc3339_ms("2000-02-29T00:00:00.5Z"),
            Some(951_782_400_500)
        );
    }
}
