//! A running sandbox saved as a template build: its disk flattened into
//! the build's root filesystem and, when its memory is kept, its memory and
//! processes as the build's snapshot. Sandboxes of that template then start
//! as this one was, the way they start from any template.

use std::path::Path;
use std::time::{Duration, Instant};

use hearth_image::{NewBuild, Template};
use hearth_vmm::Vm;

use super::Sandbox;
use crate::snapshot::{SavedMachine, Snapshot};
use crate::{Node, NodeError, id};

/// The state saved while the disk is copied, in the sandbox's directory
/// (its VMM writes nowhere else).
const CAPTURE_STATE: &str = "capture.state";

/// What [`Sandbox::capture`] made.
#[derive(Debug, Clone)]
pub struct Captured {
    /// The new build.
    pub template: Template,
    /// The machine shape the template's sandboxes must have to restore
    /// its snapshot (the source sandbox's).
    pub vcpus: u32,
    pub memory_mib: u32,
    /// How long the source sandbox was stopped.
    pub paused: Duration,
}

impl Sandbox {
    /// Saves this sandbox as a new build of template `name`, not yet its
    /// current one (see [`hearth_image::set_current_build`]): its disk as
    /// the build's root filesystem and, with `memory`, its memory and
    /// processes as the build's snapshot (without, the template's
    /// sandboxes boot from the disk). This sandbox is stopped while its
    /// state is saved and its disk copied, then continues, on failure too;
    /// a failed capture leaves nothing behind. `name` must be a valid
    /// template name; `agent_token` is the access token the sandbox's
    /// agent holds, if any (the saved agent is cleared of it).
    pub async fn capture(
        &mut self,
        node: &Node,
        name: &str,
        memory: bool,
        agent_token: Option<&str>,
    ) -> Result<Captured, NodeError> {
        self.refuse_with_volumes("snapshotted")?;
        let started = Instant::now();
        let build_id = id::random_hex::<8>().map_err(NodeError::io("/dev/urandom"))?;
        let name_dir = node.layout().templates().join(name);
        let staged = name_dir.join(format!(".capture-{build_id}"));
        std::fs::create_dir_all(&staged).map_err(NodeError::io(&staged))?;
        let state = self.dir.join(CAPTURE_STATE);
        let captured = self
            .capture_into(
                node,
                name,
                &build_id,
                &staged,
                memory.then_some((&*state, agent_token)),
            )
            .await;
        super::remove_state(&state);
        let _ = std::fs::remove_dir_all(&staged);
        let (template, paused) = match captured {
            Ok(done) => done,
            Err(e) => {
                // Only succeeds if the template has nothing else.
                let _ = std::fs::remove_dir(&name_dir);
                return Err(e);
            }
        };
        tracing::info!(
            sandbox = %self.id,
            template = name,
            build = build_id,
            memory,
            paused_ms = paused.as_millis(),
            secs = started.elapsed().as_secs_f64(),
            "sandbox captured as a template"
        );
        Ok(Captured {
            template,
            vcpus: self.origin.vcpus,
            memory_mib: self.origin.memory_mib,
            paused,
        })
    }

    /// [`Sandbox::capture`] up to the published build (not yet current):
    /// the build and how long this sandbox was stopped. Saves the memory
    /// into `saved`'s state when there is one (its agent holding the
    /// token with it).
    async fn capture_into(
        &mut self,
        node: &Node,
        name: &str,
        build_id: &str,
        staged: &Path,
        saved: Option<(&Path, Option<&str>)>,
    ) -> Result<(Template, Duration), NodeError> {
        let started = Instant::now();
        let copy = staged.join(self.disk().path.file_name().expect("a disk file"));
        let paused = self
            .checkpoint(saved.map(|(state, _)| state), &copy)
            .await?;
        // This sandbox runs again; the rest works on the copies.
        let rootfs = staged.join("rootfs.ext4");
        let (from, to) = (copy.clone(), rootfs);
        tokio::task::spawn_blocking(move || hearth_image::flatten(&from, &to))
            .await
            .expect("flattening a disk does not panic")?;
        std::fs::remove_file(&copy).map_err(NodeError::io(&copy))?;
        let source = node.template_of(&self.origin.snapshot)?;
        let template = hearth_image::publish_build(
            &node.layout().templates(),
            staged,
            NewBuild {
                name: name.to_owned(),
                build_id: build_id.to_owned(),
                inputs_hash: format!("sandbox {}", self.id),
                source: format!("snapshot of sandbox {} ({})", self.id, self.origin.template),
                run: source.run,
                build_secs: started.elapsed().as_secs(),
            },
        )?;
        if let Some((state, agent_token)) = saved {
            let from =
                Snapshot::load(&self.origin.snapshot)?.ok_or_else(|| NodeError::Corrupt {
                    path: self.origin.snapshot.clone(),
                    reason: "the template snapshot is gone".to_owned(),
                })?;
            let machine = SavedMachine {
                kernel: from.meta.kernel,
                kernel_path: self.origin.kernel_path.clone(),
                vcpus: self.origin.vcpus,
                memory_mib: self.origin.memory_mib,
                stop_signal: self.origin.stop_signal,
                agent_token: agent_token.map(str::to_owned),
            };
            if let Err(e) = node.snapshot_from_state(&template, &machine, state).await {
                let _ = std::fs::remove_dir_all(&template.dir);
                return Err(e);
            }
        }
        Ok((template, paused))
    }

    /// Stops the guest with its disk settled (and its memory saved into
    /// `state`, if given), copies its disk to `copy` and continues it; how
    /// long it was stopped. The guest continues on failure too.
    async fn checkpoint(
        &mut self,
        state: Option<&Path>,
        copy: &Path,
    ) -> Result<Duration, NodeError> {
        let stopped = Instant::now();
        match state {
            Some(state) => self.save_memory(state).await?,
            None => self.settle_disk().await?,
        }
        let (from, to) = (self.disk().path, copy.to_owned());
        let copied = tokio::task::spawn_blocking(move || {
            std::fs::copy(&from, &to)
                .map(drop)
                .map_err(NodeError::io(&to))
        })
        .await
        .expect("copying a disk does not panic");
        let resumed = self.instance_mut().vm.resume().await;
        let paused = stopped.elapsed();
        resumed?;
        copied?;
        Ok(paused)
    }
}
