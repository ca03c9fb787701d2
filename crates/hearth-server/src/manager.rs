//! The sandboxes of one server: created from a template's pool, recorded in
//! the store, killed or paused when their time runs out, paused and resumed
//! on request. The store is the catalog; this module keeps the live VMs.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use hearth_node::{
    Egress, Lifecycle, Node, NodeError, Origin, PauseMode, Pool, Proto, Published, Sandbox,
    SandboxHandle, SandboxSpec, Snapshot, State, StopReason, VolumeAttachment, Watcher,
};
use hearth_proto::agent::InitRequest;
use hearth_proto::signature::{Operation, SignedUrl, file_signature, same_bytes};

use crate::error::ApiError;
use crate::metrics::{Gauges, Metrics, ModeLabel, ReasonLabel, ResumeLabels, TemplateLabel};
use crate::store::{SandboxRecord, SandboxState, Store, VolumeMount};
use crate::volumes::Volumes;

/// The envd version the agent implements (what the e2b SDKs check).
pub use hearth_proto::agent::ENVD_VERSION;
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
    /// An auto-pause keeps memory; else the disk only.
    pub auto_pause_memory: bool,
    /// Traffic through the proxy resumes it when paused.
    pub auto_resume: bool,
    /// Named volumes to mount, each where it says.
    pub volumes: Vec<VolumeMount>,
}

/// A running sandbox: its supervisor, and where its agent listens (the
/// proxy's target, read without asking the supervisor).
#[derive(Clone)]
struct Running {
    handle: SandboxHandle,
    agent: SocketAddr,
}

/// Where a proxied request goes.
pub struct Route {
    pub addr: SocketAddr,
    /// Resolves when the sandbox pauses or stops.
    pub ended: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

/// The running sandboxes by id. A sandbox leaves when it stops or pauses,
/// whoever asked; no lock is held across an await.
#[derive(Default)]
struct LiveMap(std::sync::Mutex<HashMap<String, Running>>);

impl LiveMap {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, id: &str) -> Option<Running> {
        self.lock().get(id).cloned()
    }
}

/// Keeps the catalog in step with each sandbox's lifecycle: a sandbox that
/// pauses or stops, asked or not (its VM ended by itself), leaves the live
/// map and is recorded, a stopping one at once with its reason (it is
/// unreachable from then on) while its supervisor frees what it held.
struct Catalog {
    store: Arc<Store>,
    live: Arc<LiveMap>,
    metrics: Arc<Metrics>,
}

impl Watcher for Catalog {
    fn changed(&self, id: &str, lifecycle: &Lifecycle) {
        let recorded = match lifecycle.state() {
            State::Paused => {
                self.live.lock().remove(id);
                self.store.set_state(id, SandboxState::Paused).map(drop)
            }
            State::Stopping | State::Stopped => {
                self.live.lock().remove(id);
                if lifecycle.state() == State::Stopping
                    && let Some(reason) = lifecycle.reason()
                {
                    self.metrics
                        .stops
                        .get_or_create(&ReasonLabel {
                            reason: Metrics::stop_reason(reason),
                        })
                        .inc();
                }
                let reason = lifecycle
                    .reason()
                    .map_or_else(|| "stopped".to_owned(), ToString::to_string);
                tracing::info!(sandbox = id, reason, state = %lifecycle.state(), "sandbox stops");
                // Recorded once (the first of the two states); a sandbox
                // that failed to start has no row: nothing to do.
                self.store.stop_sandbox(id, &reason, now_ms()).map(drop)
            }
            _ => Ok(()),
        };
        // Every move, in the finer terms of the lifecycle.
        let recorded = recorded.and_then(|()| {
            self.store
                .set_lifecycle(id, lifecycle.state().as_str())
                .map(drop)
        });
        if let Err(e) = recorded {
            tracing::warn!(sandbox = id, state = %lifecycle.state(), "recording a sandbox's state: {e}");
        }
    }
}

/// The pool of a template's current build, and the machine shape its
/// snapshot has.
#[derive(Clone)]
struct TemplatePool {
    pool: Arc<Pool>,
    shape: Shape,
}

/// A template's pool, started once by whichever create comes first; the
/// others wait on it, and creates of other templates do not.
type PoolCell = Arc<tokio::sync::OnceCell<TemplatePool>>;

pub struct Manager {
    node: Arc<Node>,
    store: Arc<Store>,
    shape: Shape,
    pool_size: usize,
    pools: std::sync::Mutex<HashMap<String, PoolCell>>,
    live: Arc<LiveMap>,
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    /// Sandboxes started (created or forked) since the last team sample.
    started: std::sync::atomic::AtomicU64,
    /// Host ports of creates under way (see [`Manager::reserve_ports`]).
    reserved_ports: std::sync::Mutex<Vec<Published>>,
    /// One resume at a time per sandbox: others wait and find it running.
    resuming: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Named volumes, which sandboxes mount.
    volumes: Volumes,
}

pub(crate) fn now_ms() -> i64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    i64::try_from(ms).unwrap_or(i64::MAX)
}

pub(crate) fn secs_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// How many copies of a fork get ready at once.
const FORK_PARALLEL: usize = 4;

/// How many sandboxes a starting server re-adopts at once.
const ADOPT_PARALLEL: usize = 16;

/// How long after a failed timeout action (kill, pause) it is tried again.
const TIMEOUT_RETRY_MS: i64 = 10_000;

/// How long the team's metric samples are kept (E2B's default range).
const KEEP_TEAM_SAMPLES_MS: i64 = 7 * 24 * 3600 * 1000;

/// How long events are kept (E2B's retention).
const KEEP_EVENTS_MS: i64 = 7 * 24 * 3600 * 1000;

/// How long the catalog lists a stopped sandbox.
const KEEP_STOPPED_MS: i64 = 24 * 3600 * 1000;

impl Manager {
    /// Takes over the catalog and the sandboxes the previous server left:
    /// each recorded as running is re-adopted (its VMM outlived that
    /// server) and supervised again, its timeout still counting; one that
    /// cannot be is stopped and cleaned, and its row says why. Sandbox
    /// directories, VMMs, slots and cgroups that no row owns are removed, so
    /// are paused sandboxes without a row; a paused row whose files are
    /// gone is marked stopped.
    pub async fn open(
        node: Arc<Node>,
        store: Arc<Store>,
        shape: Shape,
        pool_size: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ApiError> {
        let live = Arc::new(LiveMap::default());
        let volumes = Volumes::new(Arc::clone(&store), node.layout().volumes());
        let manager = Self {
            catalog: Arc::new(Catalog {
                store: Arc::clone(&store),
                live: Arc::clone(&live),
                metrics: Arc::clone(&metrics),
            }),
            metrics,
            node,
            store,
            shape,
            pool_size,
            pools: std::sync::Mutex::new(HashMap::new()),
            live,
            resuming: std::sync::Mutex::new(HashMap::new()),
            reserved_ports: std::sync::Mutex::new(Vec::new()),
            started: std::sync::atomic::AtomicU64::new(0),
            volumes,
        };
        manager.take_over().await?;
        Ok(manager)
    }

    async fn take_over(&self) -> Result<(), ApiError> {
        use futures_util::StreamExt;
        let started = std::time::Instant::now();
        let paused = self.node.paused_sandboxes()?;
        let records = self.store.running_sandboxes()?;
        let mut running = Vec::new();
        for record in &records {
            match record.state {
                SandboxState::Paused if !paused.contains(&record.sandbox_id) => {
                    tracing::info!(
                        sandbox = record.sandbox_id,
                        "a paused sandbox's files are gone"
                    );
                    self.store.stop_sandbox(
                        &record.sandbox_id,
                        "its saved state is gone",
                        now_ms(),
                    )?;
                }
                SandboxState::Running => running.push(record.sandbox_id.clone()),
                _ => {}
            }
        }
        let total = running.len();
        let adopted: Vec<String> = futures_util::stream::iter(running)
            .map(|id| async move { self.adopt(&id).await.then_some(id) })
            .buffer_unordered(ADOPT_PARALLEL)
            .filter_map(std::future::ready)
            .collect()
            .await;
        self.node.remove_unadopted(&adopted)?;
        for id in paused {
            let owned = records
                .iter()
                .any(|r| r.sandbox_id == id && r.state == SandboxState::Paused);
            if !owned {
                tracing::info!(sandbox = id, "removing a paused sandbox no row owns");
                if let Err(e) = self.node.delete_paused(&id) {
                    tracing::warn!(sandbox = id, "removing a paused sandbox: {e}");
                }
            }
        }
        if total > 0 {
            tracing::info!(
                adopted = adopted.len(),
                lost = total - adopted.len(),
                ms = started.elapsed().as_millis(),
                "took over the sandboxes of the previous server"
            );
        }
        Ok(())
    }

    /// Re-adopts running sandbox `id` and supervises it again; `false`
    /// (and its row marked stopped with the reason) if it cannot be.
    async fn adopt(&self, id: &str) -> bool {
        let mut sandbox = match Sandbox::adopt(&self.node, id).await {
            Ok(sandbox) => sandbox,
            Err(e) => {
                // Whatever it left is removed with the unadopted.
                tracing::warn!(sandbox = id, "not re-adopted: {e}");
                let reason = format!("lost when the server restarted: {e}");
                if let Err(e) = self.store.stop_sandbox(id, &reason, now_ms()) {
                    tracing::warn!(sandbox = id, "recording a lost sandbox: {e}");
                }
                return false;
            }
        };
        match self.store.get_sandbox(id) {
            Ok(Some(record)) => {
                if let Some(token) = &record.envd_access_token {
                    sandbox.use_token(token);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(sandbox = id, "reading its row: {e}"),
        }
        // A supervisor that fails to start stops it and records why.
        match self.supervise(sandbox, Origin::Adopted, None).await {
            Ok(running) => {
                tracing::info!(sandbox = id, "re-adopted");
                self.go_live(running);
                true
            }
            Err(e) => {
                tracing::warn!(sandbox = id, "not re-adopted: {e}");
                false
            }
        }
    }

    /// The store, to keep beyond a borrow (a stream).
    pub fn store_arc(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn server_metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// What the metrics' gauges show: the catalog's sandboxes, the pools,
    /// the slots, and the VMMs of the running sandboxes by template.
    pub async fn gauges(&self) -> Gauges {
        let mut gauges = Gauges::default();
        let records = match self.store.running_sandboxes() {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!("reading the catalog for the metrics: {e}");
                Vec::new()
            }
        };
        for record in &records {
            *gauges
                .sandboxes
                .entry((record.state.as_str().to_owned(), record.template_id.clone()))
                .or_default() += 1;
            let Some(running) = self.live.get(&record.sandbox_id) else {
                continue;
            };
            let usage = running
                .handle
                .with(|sandbox: &mut Sandbox| Box::pin(async move { sandbox.vmm_usage() }));
            // A sandbox busy with a long job (a pause, a fork) is skipped.
            if let Ok(Ok(usage)) = tokio::time::timeout(Duration::from_secs(1), usage).await {
                let vmm = gauges.vmm.entry(record.template_id.clone()).or_default();
                vmm.cpu_seconds += usage.cpu_seconds;
                let bytes = |b: Option<u64>| b.map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX));
                vmm.memory_bytes += bytes(usage.memory_bytes);
                vmm.disk_bytes += bytes(usage.disk_bytes);
                vmm.net_sent_bytes += bytes(usage.net_sent_bytes);
                vmm.net_received_bytes += bytes(usage.net_received_bytes);
            }
        }
        let pools: Vec<(String, PoolCell)> = self
            .pools()
            .iter()
            .map(|(name, cell)| (name.clone(), Arc::clone(cell)))
            .collect();
        for (name, cell) in pools {
            if let Some(pool) = cell.get() {
                let parked = i64::try_from(pool.pool.len()).unwrap_or(i64::MAX);
                gauges.pooled.insert(name, parked);
            }
        }
        gauges.slots_used = i64::from(self.node.slots_in_use());
        gauges.slots_capacity = i64::from(self.node.slot_capacity());
        gauges.egress = self.node.egress_counts().read();
        match self.volumes.list() {
            Ok(volumes) => {
                gauges.volumes = volumes
                    .iter()
                    .map(|v| (v.mounted_by.is_some(), v.used_bytes))
                    .collect();
            }
            Err(e) => tracing::warn!("reading the volumes for the metrics: {e}"),
        }
        gauges
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    fn pools(&self) -> std::sync::MutexGuard<'_, HashMap<String, PoolCell>> {
        self.pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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

    /// The pool of `template`, started (and its snapshot taken) on first
    /// use. No lock is held while the snapshot boots: creates of other
    /// templates go on, and those of this one wait for it.
    async fn pool(&self, template: &str) -> Result<TemplatePool, ApiError> {
        let cell = Arc::clone(self.pools().entry(template.to_owned()).or_default());
        let pool = cell
            .get_or_try_init(|| self.start_pool(template))
            .await?
            .clone();
        Ok(pool)
    }

    async fn start_pool(&self, template: &str) -> Result<TemplatePool, ApiError> {
        let (snapshot, shape) = self
            .snapshot_of(self.node.template(template), || {
                format!("template '{template}' not found")
            })
            .await?;
        let metrics = Arc::clone(&self.metrics);
        let label = TemplateLabel {
            template: template.to_owned(),
        };
        let on_refill: hearth_node::RefillObserver = Arc::new(move |took| {
            metrics
                .pool_refill_seconds
                .get_or_create(&label)
                .observe(took.as_secs_f64());
        });
        Ok(TemplatePool {
            pool: Arc::new(Pool::start_observed(
                Arc::clone(&self.node),
                snapshot,
                self.pool_size,
                Some(on_refill),
            )),
            shape,
        })
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
        let (snapshot, shape) = self
            .snapshot_of(self.node.template_build(name, build), || {
                format!("build {build} of template '{name}' is gone")
            })
            .await?;
        let sandbox = Sandbox::from_snapshot(&self.node, &snapshot, egress).await?;
        Ok((sandbox, shape))
    }

    /// The snapshot of a template build, in its machine shape, taken (one
    /// boot) if it does not exist yet; a missing build is a 404 saying
    /// `missing()`.
    async fn snapshot_of(
        &self,
        found: Result<hearth_image::Template, NodeError>,
        missing: impl FnOnce() -> String,
    ) -> Result<(Snapshot, Shape), ApiError> {
        let found = match found {
            Ok(found) => found,
            Err(NodeError::NoTemplate(_) | NodeError::Template(_)) => {
                return Err(ApiError::not_found(missing()));
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
        Ok((self.node.snapshot(&spec).await?, shape))
    }

    /// Stops the pool of `template` if it restores an older build than the
    /// current one (after a build): the next create starts a pool of the
    /// current build, and the old build is no longer in use by the pool.
    pub async fn refresh_pool(&self, template: &str) {
        let current = match self.node.template(template) {
            Ok(t) => Some(t.build_id),
            Err(_) => None,
        };
        let old = {
            let mut pools = self.pools();
            let stale = pools
                .get(template)
                .and_then(|cell| cell.get())
                .is_some_and(|p| {
                    // <templates>/<name>/<build>/snapshots/<key>
                    let build = p.pool.snapshot().dir.parent().and_then(|d| d.parent());
                    build.and_then(|b| b.file_name()).and_then(|b| b.to_str()) != current.as_deref()
                });
            if stale { pools.remove(template) } else { None }
        };
        if let Some(old) = old {
            close_cell(old).await;
        }
    }

    /// Stops the pool of `template`, if it has one, and waits for its
    /// parked sandboxes to go (before the template is deleted).
    pub async fn drop_pool(&self, template: &str) {
        let old = self.pools().remove(template);
        if let Some(old) = old {
            close_cell(old).await;
        }
    }

    /// Starts the pools of these templates ahead of the first request.
    pub async fn warm(&self, templates: &[&str]) -> Result<(), ApiError> {
        for template in templates {
            self.pool(template).await?;
        }
        Ok(())
    }

    /// Hands `sandbox` to its supervisor, which waits for its agent.
    async fn supervise(
        &self,
        sandbox: Sandbox,
        origin: Origin,
        init: Option<InitRequest>,
    ) -> Result<Running, ApiError> {
        let id = sandbox.id().to_owned();
        let agent = sandbox.agent().addr();
        let catalog: Arc<dyn Watcher> = Arc::clone(&self.catalog) as Arc<dyn Watcher>;
        // A guest booting afresh (resumed from its disk) takes longer than
        // a restore.
        let ready_timeout = if sandbox.is_booting() {
            SNAPSHOT_BOOT_TIMEOUT
        } else {
            READY_TIMEOUT
        };
        let handle =
            hearth_node::supervise(&id, sandbox, origin, ready_timeout, init, catalog).await?;
        Ok(Running { handle, agent })
    }

    /// Makes a supervised sandbox reachable once its row is in the catalog.
    /// If its VM ended meanwhile, its row is marked stopped instead.
    fn go_live(&self, running: Running) {
        let id = running.handle.id().to_owned();
        let lifecycle = running.handle.lifecycle();
        if lifecycle.state() == State::Running {
            self.live.lock().insert(id.clone(), running);
        }
        // The supervisor may have stopped it before the row or the map
        // entry existed: tell the catalog again.
        let lifecycle = match self.live.get(&id) {
            Some(running) => running.handle.lifecycle(),
            None => lifecycle,
        };
        if matches!(lifecycle.state(), State::Stopping | State::Stopped) {
            self.catalog.changed(&id, &lifecycle);
        }
    }

    /// Named volumes.
    pub fn volumes(&self) -> &Volumes {
        &self.volumes
    }

    pub async fn create(&self, request: CreateRequest) -> Result<SandboxRecord, ApiError> {
        // Held until the row (which then holds the ports and volumes) is
        // written.
        let _ports = self.reserve_ports(&request.egress.publish)?;
        let (_volumes, attachments) = self.volumes.reserve(&request.volumes)?;
        let started = std::time::Instant::now();
        let template = request.template.name.clone();
        let source = if request.template.build.is_some() {
            "restore"
        } else {
            "pool"
        };
        match self.create_now(request, attachments).await {
            Ok(record) => {
                self.metrics
                    .observe_create(&template, source, started.elapsed());
                Ok(record)
            }
            Err(e) => {
                let reason = match e.status {
                    StatusCode::SERVICE_UNAVAILABLE => "capacity",
                    StatusCode::NOT_FOUND => "no_template",
                    StatusCode::BAD_REQUEST => "bad_request",
                    _ => "error",
                };
                self.metrics
                    .create_failures
                    .get_or_create(&ReasonLabel { reason })
                    .inc();
                Err(e)
            }
        }
    }

    async fn create_now(
        &self,
        request: CreateRequest,
        volumes: Vec<VolumeAttachment>,
    ) -> Result<SandboxRecord, ApiError> {
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
        if !volumes.is_empty()
            && let Err(e) = sandbox.attach_volumes(volumes).await
        {
            if let Err(cleanup) = sandbox.destroy().await {
                tracing::warn!("removing a sandbox whose volumes failed: {cleanup}");
            }
            return Err(e.into());
        }
        let token = if request.secure {
            Some(
                // A fresh envd access token: 32 hex characters.
                hearth_node::random_hex::<16>()
                    .map_err(|e| ApiError::internal(format!("cannot draw a token: {e}")))?,
            )
        } else {
            None
        };
        let init = InitRequest {
            env_vars: Some(request.env_vars.clone().into_iter().collect()),
            access_token: token.clone(),
            ..InitRequest::default()
        };
        let running = self.supervise(sandbox, Origin::Created, Some(init)).await?;
        let now = now_ms();
        let record = SandboxRecord {
            sandbox_id: running.handle.id().to_owned(),
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
            stop_reason: None,
            lifecycle: Some(State::Running.as_str().to_owned()),
            auto_pause_memory: request.auto_pause_memory,
            auto_resume: request.auto_resume,
            timeout_secs: request.timeout_secs,
            volumes: request.volumes,
        };
        self.record_started(running, record).await
    }

    /// The record of a sandbox that exists (running or paused).
    pub fn get(&self, id: &str) -> Result<SandboxRecord, ApiError> {
        self.store
            .get_sandbox(id)?
            .filter(|r| r.state != SandboxState::Killed)
            .ok_or_else(|| not_found(id))
    }

    /// Where the proxy reaches port `port` of a running sandbox, and what
    /// resolves when that sandbox goes out of service (a request to it
    /// should end then).
    pub fn route(&self, id: &str, port: u16) -> Result<Route, ApiError> {
        let Some(running) = self.live.get(id) else {
            return Err(match self.store.get_sandbox(id)? {
                Some(r) if r.state == SandboxState::Paused => {
                    ApiError::conflict(format!("sandbox {id} is paused"))
                }
                _ => not_found(id),
            });
        };
        let mut addr = running.agent;
        addr.set_port(port);
        Ok(Route {
            addr,
            ended: Box::pin(running.handle.out_of_service()),
        })
    }

    /// The running sandbox whose access token signed `url` for
    /// `operation` (a `/files` URL the SDKs make with `download_url` and
    /// `upload_url`, which names no sandbox). A 403 if none did, or if the
    /// signature has expired at `now` (Unix seconds).
    pub fn signed_by(
        &self,
        url: &SignedUrl<'_>,
        operation: Operation,
        now: i64,
    ) -> Result<String, ApiError> {
        let Some(given) = url.signature else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "a /files URL without a sandbox id must be signed",
            ));
        };
        let signer = self.store.running_sandboxes()?.into_iter().find(|r| {
            r.state == SandboxState::Running
                && r.envd_access_token.as_deref().is_some_and(|token| {
                    let expected = file_signature(url, operation, token);
                    same_bytes(given.as_bytes(), expected.as_bytes())
                })
        });
        let Some(signer) = signer else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "invalid signature: no running sandbox signed this URL for this path, user and operation",
            ));
        };
        match url.expiration {
            Some(expiration) if expiration < now => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("the signature expired at Unix time {expiration}: sign a new URL"),
            )),
            _ => Ok(signer.sandbox_id),
        }
    }

    pub async fn kill(&self, id: &str) -> Result<(), ApiError> {
        self.end(id, StopReason::Killed).await
    }

    /// Stops sandbox `id` for `reason`: its supervisor frees it and the
    /// catalog records why. A paused sandbox's files are deleted.
    async fn end(&self, id: &str, reason: StopReason) -> Result<(), ApiError> {
        let record = self.get(id)?;
        if let Some(running) = self.live.get(id) {
            running.handle.stop(reason).await?;
            return Ok(());
        }
        if record.state == SandboxState::Paused {
            self.node.delete_paused(id)?;
        }
        self.store.stop_sandbox(id, &reason.to_string(), now_ms())?;
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

    /// The supervisor of a running sandbox; a conflict if it is paused.
    fn running(&self, id: &str, action: &str) -> Result<Running, ApiError> {
        let record = self.get(id)?;
        if record.state == SandboxState::Paused {
            return Err(ApiError::conflict(format!(
                "sandbox {id} is paused; resume it to {action}"
            )));
        }
        self.live.get(id).ok_or_else(|| not_found(id))
    }

    /// A 400 for an egress policy with domains on a node that has no
    /// nameserver to resolve them.
    pub fn check_resolvable(&self, egress: &Egress) -> Result<(), ApiError> {
        if egress.domains.is_empty() || !self.node.nameservers().is_empty() {
            return Ok(());
        }
        Err(ApiError::bad_request(format!(
            "network.allowOut: {}",
            hearth_node::NodeError::NoNameserver
        )))
    }

    /// Replaces the egress policy of a running sandbox; it applies to its
    /// open connections too.
    pub async fn set_network(
        &self,
        id: &str,
        allow_internet_access: bool,
        mut egress: Egress,
    ) -> Result<(), ApiError> {
        let running = self.running(id, "change its network")?;
        // The network update replaces the egress lists; the published
        // ports stay.
        egress.publish = self.get(id)?.egress.publish;
        let policy = egress.clone();
        let node = Arc::clone(&self.node);
        running
            .handle
            .with(move |sandbox: &mut Sandbox| {
                Box::pin(async move { sandbox.set_egress(&node, &policy).await })
            })
            .await??;
        self.store.set_egress(id, allow_internet_access, &egress)?;
        Ok(())
    }

    /// Holds host ports `wanted` for a sandbox being created: a 409 if a
    /// sandbox (running or paused) or another create has one of them, or a
    /// process on the host listens there.
    fn reserve_ports(&self, wanted: &[Published]) -> Result<PortReservation<'_>, ApiError> {
        let reservation = PortReservation {
            manager: self,
            ports: wanted.to_vec(),
        };
        if wanted.is_empty() {
            return Ok(reservation);
        }
        let taken = |p: &Published, by: &str| {
            ApiError::conflict(format!(
                "publish: host port {}/{} is published by {by}",
                p.host_port,
                p.proto.as_str()
            ))
        };
        let mut reserving = self
            .reserved_ports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let sandboxes = self.store.running_sandboxes()?;
        for p in wanted {
            if let Some(owner) = sandboxes
                .iter()
                .find(|r| r.egress.publish.iter().any(|q| q.clashes_with(p)))
            {
                return Err(taken(p, &format!("sandbox {}", owner.sandbox_id)));
            }
            if reserving.iter().any(|q| q.clashes_with(p)) {
                return Err(taken(p, "a sandbox being created"));
            }
            host_port_free(p)?;
        }
        reserving.extend_from_slice(wanted);
        Ok(reservation)
    }

    /// Pauses a running sandbox, keeping what `mode` says.
    pub async fn pause(&self, id: &str, mode: PauseMode) -> Result<(), ApiError> {
        let record = self.get(id)?;
        if record.state == SandboxState::Paused {
            return Err(ApiError::conflict(format!(
                "sandbox {id} is already paused"
            )));
        }
        let running = self.live.get(id).ok_or_else(|| not_found(id))?;
        match running.handle.pause(mode).await {
            Ok(()) => {
                self.metrics
                    .pauses
                    .get_or_create(&ModeLabel {
                        mode: mode.as_str(),
                    })
                    .inc();
                Ok(())
            }
            Err(e) => {
                self.metrics.pause_failures.inc();
                Err(e.into())
            }
        }
    }

    /// For the proxy: resumes sandbox `id` if it is paused and asked for
    /// that (`autoResume`), with the lifetime it last had. `Ok(false)` if
    /// it may not be (not asked, or paused without its memory, which only
    /// an explicit resume may boot again).
    pub async fn auto_resume(&self, id: &str) -> Result<bool, ApiError> {
        let record = self.get(id)?;
        if !record.auto_resume || self.node.paused_mode(id)? != PauseMode::Full {
            return Ok(false);
        }
        self.resume_for(id, record.timeout_secs, "traffic").await?;
        Ok(true)
    }

    /// Resumes a paused sandbox for `timeout_secs`. `Ok(false)` if it was
    /// running already (its timeout is moved then).
    pub async fn resume(&self, id: &str, timeout_secs: u64) -> Result<bool, ApiError> {
        self.resume_for(id, timeout_secs, "api").await
    }

    /// [`Manager::resume`], counted as asked by `trigger`.
    async fn resume_for(
        &self,
        id: &str,
        timeout_secs: u64,
        trigger: &'static str,
    ) -> Result<bool, ApiError> {
        let turn = Arc::clone(
            self.resuming
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(id.to_owned())
                .or_default(),
        );
        let resumed = {
            let _turn = turn.lock().await;
            let mode = self
                .node
                .paused_mode(id)
                .unwrap_or(PauseMode::Full)
                .as_str();
            let resumed = self.resume_now(id, timeout_secs).await;
            match &resumed {
                Ok(true) => {
                    self.metrics
                        .resumes
                        .get_or_create(&ResumeLabels { mode, trigger })
                        .inc();
                }
                Ok(false) => {}
                Err(_) => {
                    self.metrics.resume_failures.inc();
                }
            }
            resumed
        };
        let mut resuming = self
            .resuming
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The map's and ours: nobody waits.
        if Arc::strong_count(&turn) == 2 {
            resuming.remove(id);
        }
        resumed
    }

    async fn resume_now(&self, id: &str, timeout_secs: u64) -> Result<bool, ApiError> {
        let mut record = self.get(id)?;
        if record.state == SandboxState::Running {
            self.refresh(id, timeout_secs)?;
            return Ok(false);
        }
        let sandbox = Sandbox::resume(&self.node, id).await?;
        let init = InitRequest {
            access_token: record.envd_access_token.clone(),
            ..InitRequest::default()
        };
        let running = self.supervise(sandbox, Origin::Resumed, Some(init)).await?;
        record.state = SandboxState::Running;
        record.lifecycle = Some(State::Running.as_str().to_owned());
        record.end_at_ms = now_ms().saturating_add(secs_ms(timeout_secs));
        record.timeout_secs = timeout_secs;
        if let Err(e) = self.store.update_sandbox(&record) {
            let _ = running.handle.stop(StopReason::Killed).await;
            return Err(e.into());
        }
        self.go_live(running);
        Ok(true)
    }

    /// `count` copies of a running sandbox (memory, processes, files), each
    /// ending `timeout_secs` from now, each succeeding or failing on its
    /// own (the outer error: nothing was attempted). Copies keep the
    /// parent's access token (their agents hold it from the parent's
    /// memory), env and metadata.
    pub async fn fork(
        &self,
        id: &str,
        count: usize,
        timeout_secs: u64,
    ) -> Result<Vec<Result<SandboxRecord, ApiError>>, ApiError> {
        use futures_util::StreamExt;
        let parent = self.get(id)?;
        let running = self.running(id, "fork it")?;
        let node = Arc::clone(&self.node);
        let copies = running
            .handle
            .with(move |sandbox: &mut Sandbox| {
                Box::pin(async move { sandbox.fork(&node, count).await })
            })
            .await??;
        let parent = &parent;
        let results: Vec<Result<SandboxRecord, ApiError>> = futures_util::stream::iter(copies)
            .map(|copy| async move { self.start_fork(parent, copy?, timeout_secs).await })
            .buffered(FORK_PARALLEL)
            .collect()
            .await;
        for result in &results {
            match result {
                Ok(_) => self.metrics.fork_copies.inc(),
                Err(_) => self.metrics.fork_copy_failures.inc(),
            };
        }
        Ok(results)
    }

    /// Saves running sandbox `id` as a new build of template `name`, not
    /// yet current (see [`hearth_node::Sandbox::capture`]); the sandbox
    /// goes on. Counted in the snapshot metrics.
    pub async fn capture(
        &self,
        id: &str,
        name: &str,
        memory: bool,
    ) -> Result<hearth_node::Captured, ApiError> {
        let record = self.get(id)?;
        let running = self.running(id, "snapshot it")?;
        let node = Arc::clone(&self.node);
        let name = name.to_owned();
        let token = record.envd_access_token;
        let captured = running
            .handle
            .with(move |sandbox: &mut Sandbox| {
                Box::pin(async move {
                    sandbox
                        .capture(&node, &name, memory, token.as_deref())
                        .await
                })
            })
            .await
            .map_err(ApiError::from)
            .and_then(|captured| captured.map_err(ApiError::from));
        let mode = if memory { "full" } else { "filesystem" };
        let result = if captured.is_ok() { "ok" } else { "failed" };
        self.metrics
            .snapshots
            .get_or_create(&crate::metrics::SnapshotLabels { mode, result })
            .inc();
        if let Ok(captured) = &captured {
            self.metrics
                .snapshot_pause_seconds
                .observe(captured.paused.as_secs_f64());
        }
        captured
    }

    /// Supervises and records one copy made by [`Manager::fork`].
    async fn start_fork(
        &self,
        parent: &SandboxRecord,
        copy: Sandbox,
        timeout_secs: u64,
    ) -> Result<SandboxRecord, ApiError> {
        let init = InitRequest {
            access_token: parent.envd_access_token.clone(),
            ..InitRequest::default()
        };
        let running = self.supervise(copy, Origin::Created, Some(init)).await?;
        let now = now_ms();
        let record = SandboxRecord {
            sandbox_id: running.handle.id().to_owned(),
            started_at_ms: now,
            end_at_ms: now.saturating_add(secs_ms(timeout_secs)),
            lifecycle: Some(State::Running.as_str().to_owned()),
            timeout_secs,
            ..parent.clone()
        };
        self.record_started(running, record).await
    }

    /// Puts a new sandbox's row in the catalog and makes it reachable; if
    /// the row cannot be written, the sandbox is stopped.
    async fn record_started(
        &self,
        running: Running,
        record: SandboxRecord,
    ) -> Result<SandboxRecord, ApiError> {
        if let Err(e) = self.store.insert_sandbox(&record) {
            let _ = running.handle.stop(StopReason::Killed).await;
            return Err(e.into());
        }
        self.go_live(running);
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(record)
    }

    /// Records a sample of the team's metrics: the sandboxes running now,
    /// and those started since the sample before. Samples are kept
    /// [`KEEP_TEAM_SAMPLES_MS`].
    pub fn sample_team(&self) {
        let now = now_ms();
        let running = u64::try_from(self.live.lock().len()).unwrap_or(u64::MAX);
        let started = self.started.swap(0, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) =
            self.store
                .add_team_sample(now, running, started, now - KEEP_TEAM_SAMPLES_MS)
        {
            tracing::warn!("recording the team's metrics: {e}");
        }
    }

    /// Kills the sandboxes this node runs that the catalog says have
    /// stopped: in a cluster, those an API server reported lost while this
    /// node was silent.
    pub async fn kill_stopped_elsewhere(&self) {
        let ids: Vec<String> = self.live.lock().keys().cloned().collect();
        if ids.is_empty() {
            return;
        }
        let stopped = match self.store.stopped_among(&ids) {
            Ok(stopped) => stopped,
            Err(e) => {
                tracing::warn!("reconciling with the catalog: {e}");
                return;
            }
        };
        for id in stopped {
            if let Some(running) = self.live.get(&id) {
                tracing::warn!(sandbox = id, "the catalog says it stopped: killing it");
                if let Err(e) = running.handle.stop(StopReason::Killed).await {
                    tracing::warn!(sandbox = id, "{e}");
                }
            }
        }
    }

    /// Kills (or, with auto-pause, pauses) every running sandbox whose end
    /// has passed, and forgets sandboxes stopped a day ago.
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
                let mode = if record.auto_pause_memory {
                    PauseMode::Full
                } else {
                    PauseMode::Filesystem
                };
                self.pause(id, mode).await
            } else {
                self.end(id, StopReason::TimedOut).await
            };
            match done {
                Ok(()) => tracing::info!(
                    sandbox = id,
                    auto_pause = record.auto_pause,
                    "sandbox timed out"
                ),
                Err(e) => {
                    // Tried again a little later, not at every tick.
                    tracing::warn!(sandbox = id, "ending a timed-out sandbox: {e}");
                    let later = now_ms().saturating_add(TIMEOUT_RETRY_MS);
                    if let Err(e) = self.store.postpone_end(id, later) {
                        tracing::warn!(sandbox = id, "{e}");
                    }
                }
            }
        }
        if let Err(e) = self.store.forget_stopped(now_ms() - KEEP_STOPPED_MS) {
            tracing::warn!("forgetting stopped sandboxes: {e}");
        }
        if let Err(e) = self.store.forget_events(now_ms() - KEEP_EVENTS_MS) {
            tracing::warn!("forgetting old events: {e}");
        }
    }

    /// Stops the pools and, with `kill`, the running sandboxes; without,
    /// they are left running for the next server to re-adopt (server
    /// shutdown). Paused sandboxes stay.
    pub async fn shutdown(&self, kill: bool) {
        let running: Vec<Running> = self.live.lock().values().cloned().collect();
        for running in running {
            let done = if kill {
                running.handle.stop(StopReason::Killed).await
            } else {
                running.handle.detach().await
            };
            if let Err(e) = done {
                tracing::warn!(sandbox = running.handle.id(), kill, "at shutdown: {e}");
            }
        }
        let cells: Vec<PoolCell> = self.pools().drain().map(|(_, cell)| cell).collect();
        for cell in cells {
            close_cell(cell).await;
        }
    }
}

/// Closes the pool a cell holds, if it was started, once no create holds
/// it any more.
async fn close_cell(cell: PoolCell) {
    let Some(mut pool) = cell.get().map(|p| Arc::clone(&p.pool)) else {
        return;
    };
    drop(cell);
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
    /// `SandboxMetric` shape, plus `vmm`: what its VMM uses and may use on
    /// the host (CPU seconds, memory, their cgroup limits, throttled
    /// periods); `None` for a paused sandbox.
    pub async fn metrics(&self, id: &str) -> Result<Option<serde_json::Value>, ApiError> {
        let record = self.get(id)?;
        if record.state != SandboxState::Running {
            return Ok(None);
        }
        // Its row was read just above: only the supervisor is looked up.
        let running = self.live.get(id).ok_or_else(|| not_found(id))?;
        let vmm = running
            .handle
            .with(|sandbox: &mut Sandbox| Box::pin(async move { sandbox.vmm_usage() }))
            .await?;
        let mut addr = running.agent;
        addr.set_port(hearth_proto::agent::AGENT_PORT);
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
            "memCache": m["mem_cache"],
            "diskUsed": m["disk_used"],
            "diskTotal": m["disk_total"],
            // Beyond E2B's shape: the host's view of the VMM.
            "vmm": vmm,
        })))
    }

    /// Lines the guest wrote to its console since the sandbox was created
    /// or last resumed: (unix ms, level, message).
    pub fn logs(&self, id: &str) -> Result<Vec<(i64, &'static str, String)>, ApiError> {
        let record = self.get(id)?;
        let path = self.node.layout().sandboxes().join(id).join("console.log");
        let text = std::fs::read(&path).unwrap_or_default();
        // Times never go back: a line without its own time (a kernel
        // message), or stamped by a guest clock not yet set after a
        // restore, takes the one before it.
        let mut last_ms = record.started_at_ms;
        Ok(String::from_utf8_lossy(&text)
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty())
            .map(|line| {
                let (ms, level, message) = parse_log_line(line, last_ms);
                last_ms = ms.max(last_ms);
                (last_ms, level, message)
            })
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

/// Host ports held for a create; let go when dropped.
struct PortReservation<'a> {
    manager: &'a Manager,
    ports: Vec<Published>,
}

impl Drop for PortReservation<'_> {
    fn drop(&mut self) {
        if self.ports.is_empty() {
            return;
        }
        let mut reserved = self
            .manager
            .reserved_ports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for p in &self.ports {
            if let Some(i) = reserved.iter().position(|q| q == p) {
                reserved.swap_remove(i);
            }
        }
    }
}

/// A 409 if a process on the host listens on `p`'s host port: a sandbox
/// publishing it would take that process's traffic. Tried by binding it.
fn host_port_free(p: &Published) -> Result<(), ApiError> {
    let addr = std::net::SocketAddr::from((
        p.addr.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
        p.host_port,
    ));
    let bound = match p.proto {
        Proto::Tcp => std::net::TcpListener::bind(addr).map(drop),
        Proto::Udp => std::net::UdpSocket::bind(addr).map(drop),
    };
    match bound {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(ApiError::conflict(format!(
            "publish: host port {}/{} is in use on this host",
            p.host_port,
            p.proto.as_str()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => Err(ApiError::bad_request(
            format!("publish: {p}: {} is not an address of this host", addr.ip()),
        )),
        // Any other failure is the address's too: one no socket can take
        // (multicast, broadcast).
        Err(e) => Err(ApiError::bad_request(format!(
            "publish: {p}: cannot take host port {}/{} on {}: {e}",
            p.host_port,
            p.proto.as_str(),
            addr.ip()
        ))),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "sandbox \"{id}\" doesn't exist or you don't have access to it"
    ))
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
