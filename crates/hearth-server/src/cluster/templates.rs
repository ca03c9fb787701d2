//! Templates across nodes: a build made on one node starts sandboxes on
//! any other.
//!
//! Each node lists the template builds it holds in the catalog
//! (`node_builds`), with the size and SHA-256 of the files that travel:
//! `meta.json` and `rootfs.ext4`. It hashes a build once and keeps the
//! result beside it in `files.json`. A node asked for a build it lacks
//! fetches those files from a live node that holds it
//! (`GET /cluster/builds/{template}/{build}/{file}` on that node's API,
//! behind the cluster secret), as the data regions of the file only
//! ([`hearth_image::sparse`]). It checks each against the size and digest
//! in the catalog as it writes it, then publishes the build beside its
//! own, where it stays as a cache: from then on it holds the build too.
//! Snapshots do not travel: they depend on the host, and each node takes
//! its own on first use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use hearth_image::Template;
use hearth_image::sparse::{SparseReader, SparseWriter};
use hearth_node::{Node, NodeError};
use http_body_util::BodyExt;

use super::forward::NodeConnections;
use super::{HEARTBEAT, Secret, is_live};
use crate::error::ApiError;
use crate::manager::Manager;
use crate::manager::now_ms;
use crate::metrics::{Metrics, ResultLabel};
use crate::store::{BuildFile, HeldBuild, NodeBuild, Store};

/// Beside each build: the size and SHA-256 of its files that travel.
const FILES: &str = "files.json";
/// The files of a build that travel to other nodes.
const SHIPPED: [&str; 2] = ["meta.json", "rootfs.ext4"];

/// The files of the build in `dir` that travel, from its `files.json`;
/// hashed (and that file written) the first time, or when a size no
/// longer matches. Blocking: it may read the whole root filesystem.
pub fn manifest(dir: &Path) -> std::io::Result<Vec<BuildFile>> {
    let path = dir.join(FILES);
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(files) = serde_json::from_str::<Vec<BuildFile>>(&text)
        && files.len() == SHIPPED.len()
        && files.iter().zip(SHIPPED).all(|(f, name)| {
            f.name == name && std::fs::metadata(dir.join(name)).is_ok_and(|m| m.len() == f.size)
        })
    {
        return Ok(files);
    }
    let files = SHIPPED
        .iter()
        .map(|name| {
            let digest = hearth_image::sparse::digest(&dir.join(name))?;
            Ok(BuildFile {
                name: (*name).to_owned(),
                size: digest.size,
                sha256: digest.sha256,
            })
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    write_manifest(dir, &files)?;
    Ok(files)
}

fn write_manifest(dir: &Path, files: &[BuildFile]) -> std::io::Result<()> {
    let staged = dir.join(format!(".{FILES}.new"));
    std::fs::write(
        &staged,
        serde_json::to_vec(files).expect("file lists serialise"),
    )?;
    std::fs::rename(&staged, dir.join(FILES))
}

/// Every build this node holds, with its files. Blocking.
fn local_builds(node: &Node) -> Result<Vec<NodeBuild>, String> {
    let templates = node.layout().templates();
    let mut builds = Vec::new();
    for build in hearth_image::list_templates(&templates).map_err(|e| e.to_string())? {
        let current = hearth_image::find_template(&templates, &build.name)
            .map_err(|e| e.to_string())?
            .is_some_and(|c| c.build_id == build.build_id);
        let files = manifest(&build.dir)
            .map_err(|e| format!("hashing the files of {}: {e}", build.dir.display()))?;
        builds.push(NodeBuild {
            template: build.name,
            build_id: build.build_id,
            current,
            files,
        });
    }
    Ok(builds)
}

/// Keeps the catalog's list of this node's builds up to date, until
/// aborted: each [`HEARTBEAT`], what changed since the last is written,
/// after the copies of templates deleted since they were built are
/// removed. Apart from the heartbeat, which hashing a new build must not
/// delay.
pub async fn sync_builds(manager: Arc<Manager>, node_id: String) {
    let mut written: Option<Vec<NodeBuild>> = None;
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        remove_deleted(&manager).await;
        let node = Arc::clone(manager.node());
        let builds = match tokio::task::spawn_blocking(move || local_builds(&node)).await {
            Ok(Ok(builds)) => builds,
            Ok(Err(e)) => {
                tracing::warn!("listing this node's template builds: {e}");
                continue;
            }
            Err(e) => {
                tracing::warn!("listing this node's template builds: {e}");
                continue;
            }
        };
        if written.as_ref() == Some(&builds) {
            continue;
        }
        let (store, id, list) = (
            Arc::clone(manager.store_arc()),
            node_id.clone(),
            builds.clone(),
        );
        match tokio::task::spawn_blocking(move || store.set_node_builds(&id, &list)).await {
            Ok(Ok(())) => written = Some(builds),
            Ok(Err(e)) => tracing::warn!("recording this node's template builds: {e}"),
            Err(e) => tracing::warn!("recording this node's template builds: {e}"),
        }
    }
}

/// Removes this node's copies of the templates deleted (through another
/// node) after every build of them here was made. One in use stays until
/// its sandboxes are gone.
async fn remove_deleted(manager: &Manager) {
    let store = Arc::clone(manager.store_arc());
    let node = Arc::clone(manager.node());
    let found = tokio::task::spawn_blocking(move || -> Result<Vec<String>, String> {
        let deletions = store.template_deletions().map_err(|e| e.to_string())?;
        if deletions.is_empty() {
            return Ok(Vec::new());
        }
        let builds =
            hearth_image::list_templates(&node.layout().templates()).map_err(|e| e.to_string())?;
        Ok(deleted_copies(&builds, &deletions))
    })
    .await;
    let stale = match found {
        Ok(Ok(stale)) => stale,
        Ok(Err(e)) => return tracing::warn!("looking for deleted templates: {e}"),
        Err(e) => return tracing::warn!("looking for deleted templates: {e}"),
    };
    for template in stale {
        manager.drop_pool(&template).await;
        let (layout, name) = (manager.node().layout().clone(), template.clone());
        match tokio::task::spawn_blocking(move || hearth_node::remove_template(&layout, &name))
            .await
        {
            Ok(Ok(())) => tracing::info!(
                template,
                "removed this node's copy of a template deleted in the catalog"
            ),
            Ok(Err(NodeError::TemplateInUse { .. })) => {
                tracing::debug!(template, "a deleted template is still in use here");
            }
            Ok(Err(e)) => tracing::warn!(template, "removing a deleted template: {e}"),
            Err(e) => tracing::warn!(template, "removing a deleted template: {e}"),
        }
    }
}

/// The templates of `deletions` every build of which in `builds` was made
/// before the template was deleted.
fn deleted_copies(builds: &[Template], deletions: &[(String, i64)]) -> Vec<String> {
    // `created_at` is in seconds: a build of the second of the deletion
    // stays.
    let built_before = |build: &Template, deleted_at_ms: i64| {
        i64::try_from(build.created_at + 1).is_ok_and(|s| s * 1000 <= deleted_at_ms)
    };
    deletions
        .iter()
        .filter(|(name, deleted_at_ms)| {
            let mut here = builds.iter().filter(|b| &b.name == name).peekable();
            here.peek().is_some() && here.all(|b| built_before(b, *deleted_at_ms))
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// The node API route other nodes fetch a build's files from.
pub fn routes(node: Arc<Node>) -> Router {
    Router::new()
        .route("/cluster/builds/{template}/{build}/{file}", get(serve_file))
        .with_state(node)
}

/// `GET /cluster/builds/{template}/{build}/{file}`: the file's data
/// regions as [`hearth_image::sparse`] records.
async fn serve_file(
    State(node): State<Arc<Node>>,
    UrlPath((template, build, file)): UrlPath<(String, String, String)>,
) -> Result<Response, ApiError> {
    if !SHIPPED.contains(&file.as_str()) {
        return Err(ApiError::not_found(format!(
            "a build's files that travel are {}, not {file:?}",
            SHIPPED.join(" and ")
        )));
    }
    let found = node
        .template_build(&template, &build)
        .map_err(|e| match e {
            NodeError::NoTemplate(_) | NodeError::Template(_) => ApiError::not_found(format!(
                "build {build} of template '{template}' is not here"
            )),
            e => e.into(),
        })?;
    let path = found.dir.join(&file);
    let mut reader = tokio::task::spawn_blocking(move || SparseReader::open(&path))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(format!("opening {file} of build {build}: {e}")))?;
    let (records, mut next) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(8);
    tokio::task::spawn_blocking(move || {
        loop {
            let record = match reader.next_record() {
                Ok(Some(record)) => Ok(Bytes::from(record)),
                Ok(None) => break,
                Err(e) => Err(e),
            };
            let failed = record.is_err();
            if records.blocking_send(record).is_err() || failed {
                break;
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| next.poll_recv(cx));
    Ok((
        [("content-type", "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// What a node needs to fetch builds from the others.
pub struct Peers {
    store: Arc<Store>,
    node: Arc<Node>,
    secret: Secret,
    node_id: String,
    metrics: Arc<Metrics>,
    connections: NodeConnections,
    /// One fetch of a build at a time; later askers wait for it.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Peers {
    pub fn new(
        store: Arc<Store>,
        node: Arc<Node>,
        secret: Secret,
        node_id: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            node,
            secret,
            node_id,
            metrics,
            connections: NodeConnections::default(),
            fetching: Mutex::new(HashMap::new()),
        }
    }

    /// The builds of `template` that live nodes other than this one hold.
    async fn held_elsewhere(&self, template: &str) -> Result<Vec<HeldBuild>, ApiError> {
        let store = Arc::clone(&self.store);
        let name = template.to_owned();
        let held = tokio::task::spawn_blocking(move || store.held_builds(&name))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??;
        let now = now_ms();
        Ok(held
            .into_iter()
            .filter(|h| h.node_id != self.node_id && is_live(h.status, h.heartbeat_at_ms, now))
            .collect())
    }

    /// The build that another live node gives new sandboxes of `template`,
    /// for a node that has no build of it at all.
    pub async fn current_elsewhere(&self, template: &str) -> Result<Option<String>, ApiError> {
        Ok(self
            .held_elsewhere(template)
            .await?
            .into_iter()
            .find(|h| h.build.current)
            .map(|h| h.build.build_id))
    }

    /// Build `build_id` of `template` on this node: here already, or
    /// fetched from a live node that holds it.
    pub async fn ensure(&self, template: &str, build_id: &str) -> Result<Template, ApiError> {
        let gate = {
            let mut fetching = self.fetching.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(
                fetching
                    .entry(format!("{template}/{build_id}"))
                    .or_default(),
            )
        };
        let _one_at_a_time = gate.lock().await;
        if let Ok(found) = self.node.template_build(template, build_id) {
            return Ok(found);
        }
        let holders: Vec<HeldBuild> = self
            .held_elsewhere(template)
            .await?
            .into_iter()
            .filter(|h| h.build.build_id == build_id)
            .collect();
        if holders.is_empty() {
            return Err(ApiError::not_found(format!(
                "build {build_id} of template '{template}' is on no live node"
            )));
        }
        let mut failures = Vec::new();
        for holder in &holders {
            match self.fetch(holder).await {
                Ok(found) => return Ok(found),
                Err(e) => {
                    self.metrics.template_fetches.get_or_create(&failed()).inc();
                    tracing::warn!(
                        template,
                        build = build_id,
                        from = holder.node_id,
                        "fetching a template build failed: {}",
                        e.message
                    );
                    failures.push(format!("from {}: {}", holder.node_id, e.message));
                }
            }
        }
        Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!(
                "build {build_id} of template '{template}' could not be fetched: {}",
                failures.join("; ")
            ),
        ))
    }

    /// Fetches `held`'s files into a staging directory, checks each, and
    /// publishes the build. Nothing is left behind on failure.
    async fn fetch(&self, held: &HeldBuild) -> Result<Template, ApiError> {
        let started = Instant::now();
        let templates = self.node.layout().templates();
        let suffix = crate::keys::random_hex::<4>()
            .map_err(|e| ApiError::internal(format!("naming a staging directory: {e}")))?;
        let staging = Staging(templates.join(format!(".fetch-{}-{suffix}", held.build.build_id)));
        std::fs::create_dir_all(&staging.0)
            .map_err(|e| ApiError::internal(format!("creating {}: {e}", staging.0.display())))?;
        let mut bytes = 0;
        for file in &held.build.files {
            bytes += self.fetch_file(held, file, &staging.0).await?;
        }
        let (staged, files) = (staging.0.clone(), held.build.files.clone());
        let (template, build) = (held.build.template.clone(), held.build.build_id.clone());
        let found = tokio::task::spawn_blocking(move || {
            write_manifest(&staged, &files).map_err(|e| e.to_string())?;
            hearth_image::adopt_build(&templates, &staged, &template, &build)
                .map_err(|e| crate::error::chain(&e))
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(ApiError::internal)?;
        self.metrics
            .template_fetches
            .get_or_create(&fetched())
            .inc();
        self.metrics.template_fetch_bytes.inc_by(bytes);
        tracing::info!(
            template = held.build.template,
            build = held.build.build_id,
            from = held.node_id,
            data_mib = bytes >> 20,
            secs = format!("{:.2}", started.elapsed().as_secs_f64()),
            "fetched a template build"
        );
        Ok(found)
    }

    /// Fetches one file into `dir`, checking its size and digest as it
    /// writes; returns the bytes that came.
    async fn fetch_file(
        &self,
        held: &HeldBuild,
        file: &BuildFile,
        dir: &Path,
    ) -> Result<u64, ApiError> {
        // The catalog names the files; only these may be written.
        if !SHIPPED.contains(&file.name.as_str()) {
            return Err(ApiError::internal(format!(
                "the catalog lists a file {:?} that builds do not ship",
                file.name
            )));
        }
        let path = format!(
            "/cluster/builds/{}/{}/{}",
            held.build.template, held.build.build_id, file.name
        );
        let response = self
            .connections
            .get(&held.address, &self.secret, &path)
            .await?;
        let status = response.status();
        let mut body = response.into_body();
        if status != StatusCode::OK {
            let text = body
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("GET {path} answered {status}: {text}"),
            ));
        }
        let target = dir.join(&file.name);
        let out = std::fs::File::create(&target)
            .map_err(|e| ApiError::internal(format!("creating {}: {e}", target.display())))?;
        let size = file.size;
        let (chunks, mut next) = tokio::sync::mpsc::channel::<Bytes>(16);
        let writer = tokio::task::spawn_blocking(move || {
            let mut writer = SparseWriter::new(out, size)?;
            while let Some(chunk) = next.blocking_recv() {
                writer.push(&chunk)?;
            }
            writer.finish()
        });
        let mut came = 0u64;
        let mut broken = None;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        came += data.len() as u64;
                        if chunks.send(data).await.is_err() {
                            break; // The writer refused the stream.
                        }
                    }
                }
                Err(e) => {
                    broken = Some(e.to_string());
                    break;
                }
            }
        }
        drop(chunks);
        let written = writer
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let bad = |what: String| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("{} of build {}: {what}", file.name, held.build.build_id),
            )
        };
        if let Some(e) = broken {
            return Err(bad(format!("the transfer broke off: {e}")));
        }
        let written = written.map_err(|e| bad(e.to_string()))?;
        if written.size != file.size || written.sha256 != file.sha256 {
            return Err(bad(format!(
                "it came as {} bytes with SHA-256 {}; the catalog says {} bytes with SHA-256 {}",
                written.size, written.sha256, file.size, file.sha256
            )));
        }
        Ok(came)
    }
}

fn fetched() -> ResultLabel {
    ResultLabel { result: "fetched" }
}

fn failed() -> ResultLabel {
    ResultLabel { result: "failed" }
}

/// A staging directory, removed when dropped (moved away on success).
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        if self.0.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.0)
        {
            tracing::warn!("removing {}: {e}", self.0.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(name: &str, build_id: &str, created_at: u64) -> Template {
        Template {
            name: name.into(),
            build_id: build_id.into(),
            dir: PathBuf::from("/t").join(name).join(build_id),
            rootfs: PathBuf::from("/t")
                .join(name)
                .join(build_id)
                .join("rootfs.ext4"),
            init_path: "/usr/sbin/hearth-init".into(),
            created_at,
            size: 0,
            source: String::new(),
            run: hearth_image::TemplateRun::default(),
            build_secs: 0,
        }
    }

    #[test]
    fn copies_made_before_their_template_was_deleted_go() {
        let builds = [
            build("old", "a", 10),
            build("old", "b", 11),
            build("rebuilt", "a", 10),
            build("rebuilt", "b", 30),
            build("kept", "a", 10),
            build("same-second", "a", 20),
        ];
        let deletions = [
            ("old".to_owned(), 20_000),
            ("rebuilt".to_owned(), 20_000),
            ("same-second".to_owned(), 20_500),
            ("not-here".to_owned(), 20_000),
        ];
        assert_eq!(deleted_copies(&builds, &deletions), ["old"]);
    }

    #[test]
    fn a_build_is_hashed_once_and_again_when_a_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("meta.json"), b"{}").unwrap();
        let rootfs = std::fs::File::create(dir.path().join("rootfs.ext4")).unwrap();
        rootfs.set_len(5 << 20).unwrap();
        let files = manifest(dir.path()).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, SHIPPED);
        assert_eq!(files[1].size, 5 << 20);
        assert_eq!(
            files[1].sha256,
            hearth_image::sparse::digest(&dir.path().join("rootfs.ext4"))
                .unwrap()
                .sha256
        );
        // Kept: a doctored files.json is believed while the sizes match...
        let mut doctored = files.clone();
        doctored[1].sha256 = "kept".into();
        write_manifest(dir.path(), &doctored).unwrap();
        assert_eq!(manifest(dir.path()).unwrap(), doctored);
        // ...and hashed again when they do not.
        rootfs.set_len(6 << 20).unwrap();
        let again = manifest(dir.path()).unwrap();
        assert_eq!(again[1].size, 6 << 20);
        assert_ne!(again[1].sha256, "kept");
        assert_eq!(manifest(dir.path()).unwrap(), again);
    }
}
