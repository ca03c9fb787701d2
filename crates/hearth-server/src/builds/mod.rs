//! E2B's template build API on this server: a build is requested
//! (`POST /v3/templates`), its files are uploaded by hash to a one-time URL
//! this server serves, and its steps start it (`POST
//! /v2/templates/{id}/builds/{build}`); the node then runs the [`Recipe`]
//! in a background task while the store keeps the build's status, log and
//! tags for the status route.
//!
//! Uploads live in `<data>/cache/uploads/<hash>.tar`; each `COPY` step's
//! upload is unpacked into `<data>/build-contexts/<build>/step-<n>/`,
//! removed when the build ends.

pub mod recipe;
mod snapshot;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use hearth_image::Base;
use hearth_node::{BuildError, BuildLog, BuildOptions, Node, RegistryOptions};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::task::AbortHandle;

use crate::cluster::templates::Peers;
use crate::error::{ApiError, chain};
use crate::manager::{Manager, Shape, TemplateRef, now_ms};
use crate::store::{BuildLogEntry, BuildRecord, Store};
use recipe::{BuildStart, MapError, Mapped};

/// How long a template may take to boot, in a build VM or for its snapshot.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a template's ready command may keep failing.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an upload URL stays valid.
const UPLOAD_GRANT_TTL: Duration = Duration::from_secs(3600);
/// The largest upload accepted.
const MAX_UPLOAD_BYTES: u64 = 16 << 30;
/// The most tags one request may name.
const MAX_TAGS: usize = 32;
/// The tag a build gets when its request names none (E2B's).
pub const DEFAULT_TAG: &str = "default";

/// Whether `name` can be a template's name (and id): 1 to 128 letters,
/// digits, `-`, `_` and `.`, starting with a letter or digit.
pub fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A name's refusal, saying what names may be.
pub fn check_name(name: &str, what: &str) -> Result<(), ApiError> {
    if valid_name(name) {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "{what} {name:?} is not a valid name: use 1 to 128 letters, digits, '-', '_' and '.', \
         starting with a letter or digit (Hearth has no team namespaces)"
    )))
}

/// Checks a tag: the same characters as a name.
pub fn check_tag(tag: &str) -> Result<(), ApiError> {
    if valid_name(tag) {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "tag {tag:?} is not valid: use 1 to 128 letters, digits, '-', '_' and '.', starting \
         with a letter or digit"
    )))
}

/// `name` or `name:tag`, checked.
pub fn split_name_tag(text: &str) -> Result<(&str, Option<&str>), ApiError> {
    let (name, tag) = match text.split_once(':') {
        Some((name, tag)) => (name, Some(tag)),
        None => (text, None),
    };
    check_name(name, "template")?;
    if let Some(tag) = tag {
        check_tag(tag)?;
    }
    Ok((name, tag))
}

/// A fresh random UUID (version 4), the shape E2B's build ids have.
pub fn new_uuid() -> Result<String, ApiError> {
    hearth_node::random_uuid()
        .map_err(|e| ApiError::internal(format!("cannot draw a build id: {e}")))
}

/// Permission to upload one file: what the one-time URL's token grants.
struct Grant {
    template: String,
    hash: String,
    expires: Instant,
}

/// The builds this server runs, and the uploads they read.
pub struct Builds {
    node: Arc<Node>,
    store: Arc<Store>,
    manager: Arc<Manager>,
    /// The static guest init put into image bases.
    init_binary: PathBuf,
    /// The machine shape when a request names none.
    shape: Shape,
    uploads: PathBuf,
    contexts: PathBuf,
    grants: Mutex<HashMap<String, Grant>>,
    /// One build of a name at a time; later ones wait.
    name_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    running: Mutex<HashMap<String, AbortHandle>>,
    /// On a cluster node: the other nodes, to fetch builds from.
    peers: Option<Arc<Peers>>,
}

impl Builds {
    /// Takes over from a previous server: builds it left unfinished fail,
    /// and the contexts they unpacked are removed.
    pub fn new(
        node: Arc<Node>,
        store: Arc<Store>,
        manager: Arc<Manager>,
        init_binary: PathBuf,
        shape: Shape,
        peers: Option<Arc<Peers>>,
    ) -> Result<Self, ApiError> {
        let interrupted = store.interrupt_builds(now_ms())?;
        if interrupted > 0 {
            tracing::warn!(
                builds = interrupted,
                "template builds of a previous run were interrupted"
            );
        }
        let layout = node.layout();
        let uploads = layout.cache().join("uploads");
        let contexts = layout.data_dir().join("build-contexts");
        if contexts.exists() {
            std::fs::remove_dir_all(&contexts).map_err(|e| {
                ApiError::internal(format!("cannot remove {}: {e}", contexts.display()))
            })?;
        }
        Ok(Self {
            node,
            store,
            manager,
            init_binary,
            shape,
            uploads,
            contexts,
            grants: Mutex::new(HashMap::new()),
            name_locks: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            peers,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn default_shape(&self) -> Shape {
        self.shape
    }

    /// Where the upload with files hash `hash` is kept.
    pub fn upload_path(&self, hash: &str) -> PathBuf {
        self.uploads.join(format!("{hash}.tar"))
    }

    /// Whether `template` is known: built, or with a build recorded.
    pub fn template_known(&self, template: &str) -> Result<bool, ApiError> {
        Ok(
            hearth_image::find_template(&self.node.layout().templates(), template)
                .ok()
                .flatten()
                .is_some()
                || !self.store.template_builds(template)?.is_empty(),
        )
    }

    /// A one-time token to upload `hash` for `template`.
    pub fn grant_upload(&self, template: &str, hash: &str) -> Result<String, ApiError> {
        let token = crate::keys::random_hex::<24>()
            .map_err(|e| ApiError::internal(format!("cannot draw an upload token: {e}")))?;
        let mut grants = lock(&self.grants);
        let now = Instant::now();
        grants.retain(|_, g| g.expires > now);
        grants.insert(
            token.clone(),
            Grant {
                template: template.to_owned(),
                hash: hash.to_owned(),
                expires: now + UPLOAD_GRANT_TTL,
            },
        );
        Ok(token)
    }

    /// Spends the token of an upload of `hash` for `template`.
    pub fn take_grant(&self, token: &str, template: &str, hash: &str) -> Result<(), ApiError> {
        let mut grants = lock(&self.grants);
        let valid = grants.get(token).is_some_and(|g| {
            g.template == template && g.hash == hash && g.expires > Instant::now()
        });
        if !valid {
            return Err(ApiError::unauthorized(
                "the upload token is missing, used, expired or for another file; ask \
                 GET /templates/{templateID}/files/{hash} for a new upload URL",
            ));
        }
        grants.remove(token);
        Ok(())
    }

    /// Streams an upload to a temporary file and renames it into place.
    pub async fn store_upload(&self, hash: &str, body: Body) -> Result<(), ApiError> {
        let io = |what: &str, path: &Path, e: std::io::Error| {
            ApiError::internal(format!("cannot {what} {}: {e}", path.display()))
        };
        tokio::fs::create_dir_all(&self.uploads)
            .await
            .map_err(|e| io("create", &self.uploads, e))?;
        let suffix = crate::keys::random_hex::<6>()
            .map_err(|e| ApiError::internal(format!("cannot draw a file name: {e}")))?;
        let part = self.uploads.join(format!(".{hash}.{suffix}.part"));
        let written = async {
            let mut file = tokio::fs::File::create(&part)
                .await
                .map_err(|e| io("create", &part, e))?;
            let mut body = body;
            let mut size = 0u64;
            while let Some(frame) = body.frame().await {
                let frame = frame
                    .map_err(|e| ApiError::bad_request(format!("the upload was cut short: {e}")))?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                size += data.len() as u64;
                if size > MAX_UPLOAD_BYTES {
                    return Err(ApiError::new(
                        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                        format!("uploads are limited to {} GiB", MAX_UPLOAD_BYTES >> 30),
                    ));
                }
                file.write_all(&data)
                    .await
                    .map_err(|e| io("write", &part, e))?;
            }
            file.sync_all().await.map_err(|e| io("write", &part, e))?;
            Ok(size)
        }
        .await;
        let size = match written {
            Ok(size) => size,
            Err(e) => {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(e);
            }
        };
        let path = self.upload_path(hash);
        if let Err(e) = tokio::fs::rename(&part, &path).await {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(io("rename into", &path, e));
        }
        tracing::info!(hash, bytes = size, "stored a template file upload");
        Ok(())
    }

    /// The working directory a base template sets, for relative paths.
    fn base_workdir(&self, base: &Base) -> Option<String> {
        match base {
            Base::Template { name } => {
                hearth_image::find_template(&self.node.layout().templates(), name)
                    .ok()
                    .flatten()
                    .and_then(|t| t.run.config.workdir)
            }
            Base::Image { .. } => None,
        }
    }

    /// Checks a build request and turns it into a recipe; a request that
    /// cannot be built fails its build too, so its status says why.
    pub fn prepare(&self, build: &BuildRecord, start: &BuildStart) -> Result<Mapped, ApiError> {
        let dir = self.contexts.join(&build.build_id);
        let mapped = recipe::map_request(
            start,
            |base| self.base_workdir(base),
            |i| dir.join(format!("step-{}", i + 1)),
        )
        .and_then(|mapped| {
            for (i, hash) in &mapped.uploads {
                if !self.upload_path(hash).is_file() {
                    return Err(missing_upload(*i, hash));
                }
            }
            Ok(mapped)
        });
        mapped.map_err(|e| {
            let log = StoreLog::new(Arc::clone(&self.store), &build.build_id);
            log.error(&e.message, e.step.as_deref());
            if let Err(store) =
                self.store
                    .fail_build(&build.build_id, &e.message, e.step.as_deref(), now_ms())
            {
                tracing::warn!("recording a refused build: {store}");
            }
            ApiError::bad_request(e.message)
        })
    }

    /// Runs a build in the background; its status tells how it went.
    pub fn spawn(self: &Arc<Self>, build: BuildRecord, mapped: Mapped) {
        let this = Arc::clone(self);
        let id = build.build_id.clone();
        // The handle is registered before the task can finish and remove it.
        let mut running = lock(&self.running);
        let task = tokio::spawn(async move {
            let id = build.build_id.clone();
            this.run(build, mapped).await;
            lock(&this.running).remove(&id);
        });
        running.insert(id, task.abort_handle());
    }

    async fn run(&self, build: BuildRecord, mapped: Mapped) {
        let id = build.build_id.as_str();
        let template = build.template.as_str();
        let log = StoreLog::new(Arc::clone(&self.store), id);
        let name_lock = Arc::clone(
            lock(&self.name_locks)
                .entry(template.to_owned())
                .or_default(),
        );
        let _one_at_a_time = match name_lock.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                log.line(&format!(
                    "waiting for the running build of template {template} to end"
                ));
                name_lock.lock().await
            }
        };
        match self.store.start_build(id, now_ms()) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(build = id, "starting a template build: {e}");
                return;
            }
        }
        tracing::info!(template, build = id, "template build started");
        let started = Instant::now();
        let result = self.execute(&build, mapped, &log).await;
        let dir = self.contexts.join(id);
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        let now = now_ms();
        match result {
            Ok(node_build) => {
                // New sandboxes come from the new build before anyone
                // hears it is ready.
                self.manager.refresh_pool(template).await;
                match self.prune(template) {
                    Ok(pruned) if !pruned.removed.is_empty() => {
                        log.line(&format!("removed old builds {}", pruned.removed.join(", ")));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(template, "removing old template builds: {e}"),
                }
                if let Err(e) = self.store.finish_build(id, &node_build, now) {
                    tracing::warn!(build = id, "recording a finished template build: {e}");
                }
                self.observe_build("ready", started.elapsed());
                tracing::info!(
                    template,
                    build = id,
                    node_build,
                    secs = started.elapsed().as_secs_f64(),
                    "template build ready"
                );
            }
            Err(e) => {
                log.error(&e.message, e.step.as_deref());
                if let Err(store) = self
                    .store
                    .fail_build(id, &e.message, e.step.as_deref(), now)
                {
                    tracing::warn!(build = id, "recording a failed template build: {store}");
                }
                self.observe_build("error", started.elapsed());
                tracing::info!(
                    template,
                    build = id,
                    secs = started.elapsed().as_secs_f64(),
                    "template build failed: {}",
                    e.message
                );
            }
        }
    }

    fn observe_build(&self, status: &'static str, took: std::time::Duration) {
        let metrics = self.manager.server_metrics();
        metrics
            .builds
            .get_or_create(&crate::metrics::StatusLabel { status })
            .inc();
        metrics.build_seconds.observe(took.as_secs_f64());
    }

    /// Unpacks the uploads and runs the recipe; the node build's id.
    async fn execute(
        &self,
        build: &BuildRecord,
        mapped: Mapped,
        log: &StoreLog,
    ) -> Result<String, MapError> {
        for (i, hash) in &mapped.uploads {
            let archive = self.upload_path(hash);
            if !archive.is_file() {
                return Err(missing_upload(*i, hash));
            }
            let dir = self
                .contexts
                .join(&build.build_id)
                .join(format!("step-{}", i + 1));
            log.set_step(&(i + 1).to_string());
            log.line(&format!("unpacking the files of step {}", i + 1));
            let unpacked = tokio::task::spawn_blocking({
                let dir = dir.clone();
                move || {
                    std::fs::create_dir_all(&dir)?;
                    hearth_image::unpack_upload(&archive, &dir)
                        .map_err(|e| std::io::Error::other(chain(&e)))
                }
            })
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r);
            if let Err(e) = unpacked {
                return Err(MapError {
                    message: format!(
                        "step {}: cannot unpack the uploaded files {hash}: {e}",
                        i + 1
                    ),
                    step: Some((i + 1).to_string()),
                });
            }
        }
        log.set_step("base");
        let opts = BuildOptions {
            name: build.template.clone(),
            recipe: mapped.recipe,
            source: "e2b".to_owned(),
            vcpus: build.cpu_count,
            memory_mib: build.memory_mb,
            no_cache: mapped.no_cache,
            registry: RegistryOptions {
                auth: mapped.auth,
                insecure: Vec::new(),
            },
            init_binary: self.init_binary.clone(),
            boot_timeout: BOOT_TIMEOUT,
            ready_timeout: READY_TIMEOUT,
        };
        match self.node.build_template(&opts, log).await {
            Ok(built) => Ok(built.template.build_id),
            Err(e) => Err(MapError {
                message: chain(&e),
                step: failed_step(&e).or_else(|| Some(log.step())),
            }),
        }
    }

    /// Stops the running builds (server shutdown); their records say they
    /// were interrupted.
    pub fn shutdown(&self) {
        for (_, task) in lock(&self.running).drain() {
            task.abort();
        }
        if let Err(e) = self.store.interrupt_builds(now_ms()) {
            tracing::warn!("recording interrupted template builds: {e}");
        }
    }

    /// Whether a build of `template` was started and has not ended (a
    /// requested build whose steps never came does not count).
    pub fn building(&self, template: &str) -> Result<bool, ApiError> {
        let builds = self.store.template_builds(template)?;
        let running = lock(&self.running);
        Ok(builds
            .iter()
            .any(|b| !b.status.is_final() && running.contains_key(&b.build_id)))
    }

    /// Checks and splits tags a request names, with `name:tag`'s own tag.
    pub fn request_tags(tag: Option<&str>, tags: &[String]) -> Result<Vec<String>, ApiError> {
        let mut all: Vec<String> = Vec::new();
        for tag in tag.into_iter().chain(tags.iter().map(String::as_str)) {
            check_tag(tag)?;
            if !all.iter().any(|t| t == tag) {
                all.push(tag.to_owned());
            }
        }
        if all.len() > MAX_TAGS {
            return Err(ApiError::bad_request(format!(
                "at most {MAX_TAGS} tags per request"
            )));
        }
        if all.is_empty() {
            all.push(DEFAULT_TAG.to_owned());
        }
        Ok(all)
    }

    /// Deletes the builds of `template` that are neither current, tagged nor
    /// used by a sandbox.
    fn prune(&self, template: &str) -> Result<hearth_node::Pruned, ApiError> {
        let keep = self
            .store
            .tagged_node_builds(template)?
            .into_iter()
            .map(|(_, build)| build)
            .collect();
        Ok(hearth_node::prune_template(
            self.node.layout(),
            template,
            &keep,
        )?)
    }

    /// The build a sandbox of `spec` (`name` or `name:tag`) starts from:
    /// the template's current build, or the one a tag names. On a cluster
    /// node, the catalog says which build that is, and a build this node
    /// lacks is fetched from one that holds it first.
    pub async fn resolve(&self, spec: &str) -> Result<TemplateRef, ApiError> {
        match &self.peers {
            Some(peers) => self.resolve_in_cluster(peers, spec).await,
            None => self.resolve_here(spec),
        }
    }

    fn resolve_here(&self, spec: &str) -> Result<TemplateRef, ApiError> {
        let Some((name, tag)) = spec.split_once(':') else {
            return Ok(TemplateRef::current(spec));
        };
        split_name_tag(spec)?;
        let current = hearth_image::find_template(&self.node.layout().templates(), name)
            .ok()
            .flatten()
            .ok_or_else(|| ApiError::not_found(format!("template '{name}' not found")))?;
        Ok(match self.tagged_build(name, tag)? {
            None => TemplateRef::current(name),
            Some(build) => TemplateRef {
                name: name.to_owned(),
                build: (build != current.build_id).then_some(build),
            },
        })
    }

    /// The build tag `tag` of `name` names; `None` when the template has
    /// no such tag and it is the default one (E2B's templates built before
    /// tags, and templates not built through the API, have none).
    fn tagged_build(&self, name: &str, tag: &str) -> Result<Option<String>, ApiError> {
        let Some(tagged) = self.store.tag(name, tag)? else {
            if tag == DEFAULT_TAG {
                return Ok(None);
            }
            return Err(ApiError::not_found(format!(
                "template '{name}' has no tag '{tag}'"
            )));
        };
        let build = self
            .store
            .get_build(&tagged.build_id)?
            .and_then(|b| b.node_build)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "tag '{tag}' of template '{name}' names build {}, which is not ready",
                    tagged.build_id
                ))
            })?;
        Ok(Some(build))
    }

    /// [`Self::resolve`] on a cluster node. The build a template's default
    /// tag names is its current build on every node; a template without
    /// one (built with `hearth template build`) keeps this node's current
    /// build, or takes another node's when this one has none.
    async fn resolve_in_cluster(&self, peers: &Peers, spec: &str) -> Result<TemplateRef, ApiError> {
        let (name, tag) = split_name_tag(spec)?;
        let templates = self.node.layout().templates();
        let current = hearth_image::find_template(&templates, name)
            .ok()
            .flatten()
            .map(|t| t.build_id);
        let tag = tag.unwrap_or(DEFAULT_TAG);
        let wanted = match self.tagged_build(name, tag)? {
            Some(build) => build,
            None => match current {
                Some(_) => return Ok(TemplateRef::current(name)),
                None => peers
                    .current_elsewhere(name)
                    .await?
                    .ok_or_else(|| ApiError::not_found(format!("template '{name}' not found")))?,
            },
        };
        if current.as_deref() == Some(wanted.as_str()) {
            return Ok(TemplateRef::current(name));
        }
        peers.ensure(name, &wanted).await?;
        if tag != DEFAULT_TAG {
            return Ok(TemplateRef {
                name: name.to_owned(),
                build: Some(wanted),
            });
        }
        hearth_image::set_current_build(&templates, name, &wanted)
            .map_err(|e| ApiError::internal(chain(&e)))?;
        tracing::info!(
            template = name,
            build = wanted,
            "the cluster's current build of the template is current here now"
        );
        self.manager.refresh_pool(name).await;
        Ok(TemplateRef::current(name))
    }
}

fn missing_upload(index: usize, hash: &str) -> MapError {
    MapError {
        message: format!(
            "step {}: COPY: its files (hash {hash}) were never uploaded; upload them to the URL \
             GET /templates/{{templateID}}/files/{hash} gives, then start the build",
            index + 1
        ),
        step: Some((index + 1).to_string()),
    }
}

/// The E2B step a build error belongs to, when it names one.
fn failed_step(e: &BuildError) -> Option<String> {
    match e {
        BuildError::Copy { origin, .. }
        | BuildError::StepFailed { origin, .. }
        | BuildError::Vm { origin, .. } => origin.strip_prefix("step ").map(str::to_owned),
        BuildError::Image(_) | BuildError::Init(..) => Some("base".to_owned()),
        _ => None,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A build's log in the store, each line stamped with the step it is in:
/// `base` until the first step, each step's number from the builder's
/// `step N/M …` line, `finalize` from the snapshot on.
pub struct StoreLog {
    store: Arc<Store>,
    build_id: String,
    step: Mutex<String>,
}

impl StoreLog {
    pub fn new(store: Arc<Store>, build_id: &str) -> Self {
        Self {
            store,
            build_id: build_id.to_owned(),
            step: Mutex::new("base".to_owned()),
        }
    }

    fn step(&self) -> String {
        lock(&self.step).clone()
    }

    fn set_step(&self, step: &str) {
        step.clone_into(&mut lock(&self.step));
    }

    fn append(&self, level: &str, text: &str, step: Option<&str>) {
        let entry = BuildLogEntry {
            timestamp_ms: now_ms(),
            level: level.to_owned(),
            message: text.to_owned(),
            step: step.map(str::to_owned).or_else(|| Some(self.step())),
        };
        if let Err(e) = self.store.append_build_log(&self.build_id, &entry) {
            tracing::warn!(build = self.build_id, "recording a build log line: {e}");
        }
    }

    fn error(&self, text: &str, step: Option<&str>) {
        self.append("error", text, step);
    }
}

/// The step a builder line starts, if it starts one.
fn step_of_line(text: &str) -> Option<String> {
    if let Some(rest) = text.strip_prefix("step ") {
        let number: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !number.is_empty() && rest[number.len()..].starts_with('/') {
            return Some(number);
        }
    }
    text.starts_with("snapshotting ")
        .then(|| "finalize".to_owned())
}

impl BuildLog for StoreLog {
    fn line(&self, text: &str) {
        if let Some(step) = step_of_line(text) {
            self.set_step(&step);
        }
        self.append("info", text, None);
    }
}

/// The most log entries one status answer carries (E2B's).
pub const MAX_LOG_PAGE: u64 = 100;

/// One page of a build's log: from `offset`, at most `limit` (capped at
/// [`MAX_LOG_PAGE`]) entries at `level` or above.
pub fn log_page(
    store: &Store,
    build_id: &str,
    offset: Option<u64>,
    limit: Option<u64>,
    level: Option<&str>,
) -> Result<Vec<BuildLogEntry>, ApiError> {
    let limit = limit.unwrap_or(MAX_LOG_PAGE).min(MAX_LOG_PAGE);
    let min_level = match level.filter(|l| !l.is_empty()) {
        None => 0,
        Some(l @ ("debug" | "info" | "warn" | "error")) => crate::store::level_rank(l),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "level {other:?} is not one of debug, info, warn, error"
            )));
        }
    };
    Ok(store.build_logs(build_id, offset.unwrap_or(0), limit, min_level)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tags() {
        for good in ["sdk-app", "a", "web_1.2", "A9"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "team/app",
            "a b",
            "..",
            &"a".repeat(129),
            "é",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert_eq!(split_name_tag("app").unwrap(), ("app", None));
        assert_eq!(split_name_tag("app:v1.2").unwrap(), ("app", Some("v1.2")));
        let err = split_name_tag("team/app:v1").unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST);
        assert!(err.message.contains("not a valid name"), "{}", err.message);
        assert!(split_name_tag("app:").is_err());
        assert!(split_name_tag("app:a:b").is_err());

        assert_eq!(Builds::request_tags(None, &[]).unwrap(), ["default"]);
        assert_eq!(
            Builds::request_tags(Some("v1"), &["v1".into(), "stable".into()]).unwrap(),
            ["v1", "stable"]
        );
        assert!(Builds::request_tags(None, &["bad tag".into()]).is_err());
    }

    #[test]
    fn build_ids_are_version_4_uuids() {
        let id = new_uuid().unwrap();
        assert_eq!(id.len(), 36);
        let groups: Vec<&str> = id.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(groups[2].starts_with('4'));
        assert!(groups[3].starts_with(['8', '9', 'a', 'b']));
        assert_ne!(id, new_uuid().unwrap());
    }

    #[test]
    fn builder_lines_set_the_step() {
        assert_eq!(step_of_line("step 3/7 RUN make"), Some("3".into()));
        assert_eq!(
            step_of_line("step 12/12 COPY a /b (cached)"),
            Some("12".into())
        );
        assert_eq!(
            step_of_line("snapshotting app (0123456789abcdef)"),
            Some("finalize".into())
        );
        assert_eq!(step_of_line("steps are fun"), None);
        assert_eq!(step_of_line("step x/2"), None);
        assert_eq!(step_of_line("  done in 1.0 s"), None);
    }

    #[test]
    fn the_log_is_paged_by_the_status_route() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("hearth.db")).unwrap());
        let log = StoreLog::new(Arc::clone(&store), "b");
        for i in 0..150 {
            log.line(&format!("line {i}"));
        }
        log.line("step 1/1 RUN false");
        log.line("output");
        log.error("step 1: `false` exited with status 1", Some("1"));

        let page = log_page(&store, "b", None, None, None).unwrap();
        assert_eq!(page.len(), 100, "E2B's page size");
        assert_eq!(page[0].step.as_deref(), Some("base"));
        let page = log_page(&store, "b", Some(100), Some(1000), None).unwrap();
        assert_eq!(page.len(), 53);
        assert_eq!(page[51].message, "output");
        assert_eq!(page[51].step.as_deref(), Some("1"));
        let page = log_page(&store, "b", Some(149), Some(2), None).unwrap();
        let messages: Vec<_> = page.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, ["line 149", "step 1/1 RUN false"]);
        let errors = log_page(&store, "b", None, None, Some("error")).unwrap();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].level, "error");
        assert!(
            log_page(&store, "b", Some(153), None, None)
                .unwrap()
                .is_empty()
        );
        assert!(log_page(&store, "b", None, None, Some("loud")).is_err());
    }
}
