//! Sandbox snapshots as template builds: a running sandbox captured by the
//! node becomes a ready build of a template, its current one, recorded
//! like any other build plus the sandbox it came from.

use super::{Builds, DEFAULT_TAG, lock, new_uuid, recipe};
use crate::error::ApiError;
use crate::manager::now_ms;
use crate::store::{BuildRecord, BuildStatus, SnapshotRecord};

impl Builds {
    /// Saves running sandbox `sandbox` as the new current build of template
    /// `name` (made if new), tagged `default` and `tag`; with `memory` its
    /// processes too, else its disk alone. Waits for a running build of
    /// the same template to end. The sandbox goes on.
    pub async fn snapshot(
        &self,
        sandbox: &str,
        name: &str,
        tag: Option<&str>,
        memory: bool,
    ) -> Result<SnapshotRecord, ApiError> {
        if name == recipe::BASE_TEMPLATE {
            return Err(ApiError::bad_request(
                "'base' is the built-in template every other one starts from; name the snapshot otherwise",
            ));
        }
        let name_lock =
            std::sync::Arc::clone(lock(&self.name_locks).entry(name.to_owned()).or_default());
        let _one_at_a_time = name_lock.lock().await;
        let build_id = new_uuid()?;
        let captured = self.manager.capture(sandbox, name, memory).await?;
        let node_build = captured.template.build_id.clone();
        let now = now_ms();
        let mut tags = vec![DEFAULT_TAG.to_owned()];
        tags.extend(tag.filter(|t| *t != DEFAULT_TAG).map(str::to_owned));
        let build = BuildRecord {
            build_id: build_id.clone(),
            template: name.to_owned(),
            status: BuildStatus::Ready,
            reason: None,
            reason_step: None,
            node_build: Some(node_build.clone()),
            tags,
            cpu_count: captured.vcpus,
            memory_mb: captured.memory_mib,
            created_at_ms: now,
            updated_at_ms: now,
            finished_at_ms: Some(now),
        };
        let record = SnapshotRecord {
            build_id,
            template: name.to_owned(),
            sandbox_id: sandbox.to_owned(),
            memory,
            created_at_ms: now,
        };
        let templates = self.node.layout().templates();
        // Recorded before it is current: whoever finds the build finds its
        // machine shape, which its snapshot needs.
        let current = self
            .store
            .insert_snapshot(&build, &record)
            .map_err(ApiError::from)
            .and_then(|()| {
                hearth_image::set_current_build(&templates, name, &node_build)
                    .map_err(|e| ApiError::internal(e.to_string()))
            });
        if let Err(e) = current {
            let _ = std::fs::remove_dir_all(&captured.template.dir);
            let _ = std::fs::remove_dir(templates.join(name));
            return Err(e);
        }
        self.manager.refresh_pool(name).await;
        match self.prune(name) {
            Ok(pruned) if !pruned.removed.is_empty() => {
                tracing::info!(template = name, removed = ?pruned.removed, "old builds removed");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(template = name, "removing old template builds: {e}"),
        }
        Ok(record)
    }
}
