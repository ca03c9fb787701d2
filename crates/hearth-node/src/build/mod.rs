//! Template builds: a [`Recipe`] (from a Dockerfile or E2B's build API) run
//! on this node. The base (an image or another template) becomes a raw ext4
//! image; each step that writes the disk runs in a build VM over a qcow2
//! layer of the disk so far, and the layer is kept in the step cache under
//! the step's key; the last layer is flattened into the template's
//! `rootfs.ext4`, which is then booted with its start command and
//! snapshotted once its ready command succeeds.
//!
//! On disk: `cache/images/<key>/rootfs.ext4` (image bases),
//! `cache/layers/<key>/{disk.qcow2,layer.json}` (steps), and
//! `builds/<id>/` while a step's VM runs (removed by [`Node::open`] if a
//! crash left it). A template's build appears under `templates/<name>/`
//! only once complete, and becomes current only once its snapshot exists.

mod error;
mod plan;
mod vm;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use hearth_image::{
    Base, ImageFormat, NewBuild, Recipe, RunConfig, SourcedStep, Step, Template, TemplateRun,
};
use serde::{Deserialize, Serialize};

pub use error::BuildError;
pub(crate) use vm::{Tail, stream_to_end};

use crate::node::try_lock;
use crate::snapshot::{unix_now, write_json};
use crate::{Node, NodeError, SandboxSpec, Snapshot};
use vm::{BuildMachine, Parent};

/// The template every build starts from when its recipe names no base.
const DEFAULT_BASE: &str = "base";
/// Bump when an image base's root filesystem changes for the same inputs.
const IMAGE_RECIPE: &str = "hearth-image-base-1";

/// Receives a build's progress, one line at a time.
pub trait BuildLog: Send + Sync {
    fn line(&self, text: &str);
}

/// Credentials and plain-HTTP registries for image bases.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    pub auth: Option<hearth_image::RegistryAuth>,
    /// Registries reached over plain HTTP besides localhost.
    pub insecure: Vec<String>,
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub name: String,
    pub recipe: Recipe,
    /// For people: `Dockerfile`, `image REF`, `e2b`.
    pub source: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Rebuild every step even if cached.
    pub no_cache: bool,
    pub registry: RegistryOptions,
    /// The static `hearth-init` to put into image bases.
    pub init_binary: PathBuf,
    /// How long a build VM or the template may take to boot.
    pub boot_timeout: Duration,
    /// How long the ready command may keep failing.
    pub ready_timeout: Duration,
}

/// A finished build.
#[derive(Debug, Clone)]
pub struct Built {
    pub template: Template,
    pub snapshot: Snapshot,
    /// Steps taken from the cache / all steps.
    pub cached: usize,
    pub steps: usize,
}

/// A step's cached result (`layer.json`).
#[derive(Debug, Serialize, Deserialize)]
struct LayerMeta {
    /// The disk this layer goes over.
    parent: PathBuf,
    parent_format: String,
    step: String,
    created_at: u64,
    secs: f64,
}

/// The root filesystem a build starts from.
struct Resolved {
    key: String,
    parent: Parent,
    config: RunConfig,
    start_cmd: Option<Vec<String>>,
    ready_cmd: Option<Vec<String>>,
}

impl Node {
    /// Builds template `opts.name` from its recipe, reusing cached steps,
    /// and snapshots it. Refused while another build of the name runs.
    pub async fn build_template(
        &self,
        opts: &BuildOptions,
        log: &dyn BuildLog,
    ) -> Result<Built, BuildError> {
        let started = Instant::now();
        if opts.name == DEFAULT_BASE {
            return Err(BuildError::Reserved(opts.name.clone()));
        }
        let name_dir = self.layout.templates().join(&opts.name);
        mkdir(&name_dir)?;
        let lock_path = name_dir.join(".build.lock");
        let Some(_lock) = try_lock(&lock_path)? else {
            return Err(BuildError::Busy(opts.name.clone()));
        };
        let kernel = self.kernel()?;
        let base = self.resolve_base(opts, log).await?;

        let hashes = files_hashes(&opts.recipe.steps).await?;
        let (planned, end) = plan::plan(&base.key, &base.config, &opts.recipe.steps, |i| {
            hashes[i].clone()
        });
        let machine = BuildMachine {
            kernel: kernel.clone(),
            vcpus: opts.vcpus,
            memory_mib: opts.memory_mib,
            boot_timeout: opts.boot_timeout,
        };
        let total = opts.recipe.steps.len();
        let mut parent = base.parent.clone();
        let mut last_key = base.key.clone();
        let mut forced = opts.no_cache;
        let mut cached = 0;
        for (i, (sourced, planned)) in opts.recipe.steps.iter().zip(&planned).enumerate() {
            forced |= sourced.force;
            last_key.clone_from(&planned.key);
            let label = format!("step {}/{total} {}", i + 1, sourced.text);
            if !sourced.step.writes_disk() {
                log.line(&label);
                cached += 1;
                continue;
            }
            let layer_dir = self.layout.cache().join("layers").join(&planned.key);
            if !forced && layer_is_whole(&layer_dir) {
                log.line(&format!("{label} (cached)"));
                cached += 1;
                parent = Parent {
                    path: layer_dir.join("disk.qcow2"),
                    format: ImageFormat::Qcow2,
                };
                continue;
            }
            log.line(&label);
            parent = self
                .build_layer(&machine, &parent, sourced, &planned.state, &layer_dir, log)
                .await?;
        }

        let run = template_run(&opts.recipe, &base, end);
        let run_json = serde_json::to_string(&run).expect("plain data serialises");
        let build_id = plan::key_of(&[&last_key, &run_json])[..16].to_owned();
        let template = match hearth_image::find_template(&self.layout.templates(), &opts.name)?
            .filter(|t| t.build_id == build_id)
            .or(existing_build(&name_dir, &build_id)?)
        {
            Some(template) => template,
            None => {
                let staged = name_dir.join(format!(".build-{build_id}-{}", std::process::id()));
                let published = self
                    .publish(
                        &staged,
                        &parent,
                        NewBuild {
                            name: opts.name.clone(),
                            build_id: build_id.clone(),
                            inputs_hash: last_key.clone(),
                            source: opts.source.clone(),
                            run,
                            build_secs: started.elapsed().as_secs(),
                        },
                    )
                    .await;
                if published.is_err() {
                    let _ = std::fs::remove_dir_all(&staged);
                }
                published?
            }
        };
        log.line(&format!(
            "snapshotting {} ({})",
            opts.name, template.build_id
        ));
        let spec = SandboxSpec {
            template: template.clone(),
            kernel,
            vcpus: opts.vcpus,
            memory_mib: opts.memory_mib,
            boot_timeout: opts.boot_timeout.max(opts.ready_timeout),
        };
        let snapshot = match self
            .snapshot_with_ready(&spec, opts.ready_timeout, log)
            .await
        {
            Ok(snapshot) => snapshot,
            Err(e) => {
                // Never current and used by nobody: nothing to keep.
                if hearth_image::find_template(&self.layout.templates(), &opts.name)?
                    .is_none_or(|t| t.build_id != template.build_id)
                {
                    let _ = std::fs::remove_dir_all(&template.dir);
                }
                return Err(e.into());
            }
        };
        hearth_image::set_current_build(&self.layout.templates(), &opts.name, &build_id)?;
        log.line(&format!(
            "built {} ({}) in {:.1} s, {cached} of {total} steps cached",
            opts.name,
            build_id,
            started.elapsed().as_secs_f64()
        ));
        Ok(Built {
            template,
            snapshot,
            cached,
            steps: total,
        })
    }

    /// How the base a recipe names runs (its environment, user, working
    /// directory, entrypoint): what a Dockerfile's `ENV` and `WORKDIR`
    /// build on. Pulls an image's manifest and config (and its layers, which
    /// the build needs next anyway).
    pub async fn base_config(
        &self,
        base: Option<&Base>,
        registry: &RegistryOptions,
    ) -> Result<RunConfig, BuildError> {
        match self.base_template_name(base)? {
            Some(name) => Ok(self.template(&name)?.run.config),
            None => {
                let Some(Base::Image { reference }) = base else {
                    unreachable!("only images are not templates");
                };
                Ok(self.pull_image(reference, registry, &NoLog).await?.config)
            }
        }
    }

    /// The template a base names, if it names one of this node's templates.
    fn base_template_name(&self, base: Option<&Base>) -> Result<Option<String>, BuildError> {
        Ok(match base {
            None => Some(DEFAULT_BASE.to_owned()),
            Some(Base::Template { name }) => Some(name.clone()),
            Some(Base::Image { reference }) => {
                let plain = !reference.contains(['/', ':', '@']);
                (plain
                    && hearth_image::find_template(&self.layout.templates(), reference)?.is_some())
                .then(|| reference.clone())
            }
        })
    }

    async fn pull_image(
        &self,
        reference: &str,
        registry: &RegistryOptions,
        log: &dyn BuildLog,
    ) -> Result<hearth_image::PulledImage, BuildError> {
        let source = hearth_image::ImageSource::from_str(reference)?;
        log.line(&format!("pulling {source}"));
        let pull = hearth_image::PullOptions {
            auth: registry.auth.clone(),
            insecure_registries: registry.insecure.clone(),
            blobs_dir: self.layout.cache().join("blobs"),
        };
        Ok(hearth_image::pull(&source, &pull, &LogProgress(log)).await?)
    }

    /// The base the recipe names: a template of this node, else an image.
    async fn resolve_base(
        &self,
        opts: &BuildOptions,
        log: &dyn BuildLog,
    ) -> Result<Resolved, BuildError> {
        if let Some(name) = self.base_template_name(opts.recipe.base.as_ref())? {
            return self.template_base(&name);
        }
        let Some(Base::Image { reference }) = &opts.recipe.base else {
            unreachable!("only images are not templates");
        };
        let image = self.pull_image(reference, &opts.registry, log).await?;
        let init_sha = {
            let init = opts.init_binary.clone();
            tokio::task::spawn_blocking(move || hearth_image::sha256_file(&init))
                .await
                .expect("hashing does not panic")
                .map_err(|e| BuildError::Init(opts.init_binary.clone(), e))?
        };
        let key = plan::key_of(&[IMAGE_RECIPE, &image.manifest_digest, &init_sha]);
        let dir = self.layout.cache().join("images").join(&key);
        let rootfs = dir.join("rootfs.ext4");
        if !rootfs.is_file() {
            log.line(&format!("unpacking {} layers", image.layers.len()));
            let work = self
                .layout
                .cache()
                .join("images")
                .join(format!(".work-{key}-{}", std::process::id()));
            let (init, image_for_unpack, work_for) =
                (opts.init_binary.clone(), image.clone(), work.clone());
            let made = tokio::task::spawn_blocking(move || {
                image_rootfs(&image_for_unpack, &init, &work_for)
            })
            .await
            .expect("unpacking does not panic");
            if let Err(e) = made.and_then(|()| {
                std::fs::rename(work.join("out"), &dir).map_err(|e| BuildError::Io {
                    path: dir.clone(),
                    source: e,
                })
            }) {
                let _ = std::fs::remove_dir_all(&work);
                return Err(e);
            }
            let _ = std::fs::remove_dir_all(&work);
        }
        Ok(Resolved {
            key,
            parent: Parent {
                path: rootfs,
                format: ImageFormat::Raw,
            },
            start_cmd: Some(image.config.start_argv()).filter(|argv| !argv.is_empty()),
            ready_cmd: None,
            config: image.config,
        })
    }

    fn template_base(&self, name: &str) -> Result<Resolved, BuildError> {
        let template = self.template(name)?;
        Ok(Resolved {
            key: plan::key_of(&["template", &template.name, &template.build_id]),
            parent: Parent {
                path: template.rootfs.clone(),
                format: ImageFormat::Raw,
            },
            config: template.run.config.clone(),
            start_cmd: template.run.start_cmd.clone(),
            ready_cmd: template.run.ready_cmd.clone(),
        })
    }

    /// Runs one disk step in a build VM and stores its layer.
    async fn build_layer(
        &self,
        machine: &BuildMachine,
        parent: &Parent,
        sourced: &SourcedStep,
        state: &RunConfig,
        layer_dir: &Path,
        log: &dyn BuildLog,
    ) -> Result<Parent, BuildError> {
        let started = Instant::now();
        let builds = self.layout.builds();
        mkdir(&builds)?;
        let id = crate::id::new_sandbox_id().map_err(NodeError::io("/dev/urandom"))?;
        let lock = crate::node::lock_wait(&self.layout.build_locks().join(format!("{id}.lock")))?;
        let work = builds.join(&id);
        mkdir(&work)?;
        let ran = vm::run_step(self, &work, machine, parent, sourced, state, log).await;
        let stored = ran.and_then(|()| {
            let staged = work.join("layer");
            mkdir(&staged)?;
            let disk = staged.join("disk.qcow2");
            std::fs::rename(work.join("disk.qcow2"), &disk).map_err(NodeError::io(&disk))?;
            let meta = LayerMeta {
                parent: parent.path.clone(),
                parent_format: format_name(parent.format).to_owned(),
                step: sourced.text.clone(),
                created_at: unix_now(),
                secs: started.elapsed().as_secs_f64(),
            };
            write_json(&staged.join("layer.json"), &meta)?;
            if layer_dir.exists() {
                // A forced rebuild replaces the cached layer.
                std::fs::remove_dir_all(layer_dir).map_err(NodeError::io(layer_dir))?;
            }
            let layers = layer_dir.parent().expect("a layer dir has a parent");
            mkdir(layers)?;
            std::fs::rename(&staged, layer_dir).map_err(NodeError::io(layer_dir))?;
            Ok(())
        });
        let _ = std::fs::remove_dir_all(&work);
        let _ = std::fs::remove_file(self.layout.build_locks().join(format!("{id}.lock")));
        drop(lock);
        stored?;
        log.line(&format!(
            "  done in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        Ok(Parent {
            path: layer_dir.join("disk.qcow2"),
            format: ImageFormat::Qcow2,
        })
    }

    /// Makes `staged/rootfs.ext4` from the last disk and publishes it.
    async fn publish(
        &self,
        staged: &Path,
        parent: &Parent,
        build: NewBuild,
    ) -> Result<Template, BuildError> {
        mkdir(staged)?;
        let rootfs = staged.join("rootfs.ext4");
        let (source, format, out) = (parent.path.clone(), parent.format, rootfs.clone());
        tokio::task::spawn_blocking(move || match format {
            ImageFormat::Qcow2 => hearth_image::flatten(&source, &out).map_err(NodeError::from),
            // An untouched base: the template shares its (read-only) file.
            ImageFormat::Raw => std::fs::hard_link(&source, &out)
                .or_else(|_| std::fs::copy(&source, &out).map(drop))
                .map_err(NodeError::io(&out)),
        })
        .await
        .expect("making the root filesystem does not panic")?;
        Ok(hearth_image::publish_build(
            &self.layout.templates(),
            staged,
            build,
        )?)
    }
}

/// What the template's sandboxes get: the state after the last step, the
/// recipe's start and ready commands (else the base's, with Docker's rules
/// for `ENTRYPOINT` and `CMD`), its stop signal, ports and labels added to
/// the base's.
fn template_run(recipe: &Recipe, base: &Resolved, mut config: RunConfig) -> TemplateRun {
    let start_cmd =
        if recipe.start_cmd.is_some() || recipe.entrypoint.is_some() || recipe.cmd.is_some() {
            recipe.start_command(&base.config)
        } else {
            base.start_cmd.clone()
        };
    if let Some(entrypoint) = &recipe.entrypoint {
        config.entrypoint = entrypoint.argv();
        config.cmd.clear();
    }
    if let Some(cmd) = &recipe.cmd {
        config.cmd = cmd.argv();
    }
    if let Some(signal) = &recipe.stop_signal {
        config.stop_signal = Some(signal.clone());
    }
    for port in &recipe.exposed_ports {
        if !config.exposed_ports.contains(port) {
            config.exposed_ports.push(port.clone());
        }
    }
    config.labels.extend(recipe.labels.clone());
    TemplateRun {
        config,
        start_cmd,
        ready_cmd: recipe
            .ready_cmd
            .as_ref()
            .map(hearth_image::CommandLine::argv)
            .or_else(|| base.ready_cmd.clone()),
    }
}

/// The hash of the files each step reads ("" for steps that read none);
/// fails on a `COPY` whose sources are missing or outside the context.
async fn files_hashes(steps: &[SourcedStep]) -> Result<Vec<String>, BuildError> {
    let steps = steps.to_vec();
    tokio::task::spawn_blocking(move || {
        steps
            .iter()
            .map(|s| match &s.step {
                Step::Copy {
                    context,
                    sources,
                    dest,
                    ..
                } => {
                    let copy_error = |message: String| BuildError::Copy {
                        origin: s.origin.clone(),
                        message,
                    };
                    let ignore = hearth_image::Ignore::load(context)
                        .map_err(|e| copy_error(e.to_string()))?;
                    let entries = hearth_image::select(context, sources, dest, &ignore)
                        .map_err(|e| copy_error(e.to_string()))?;
                    hearth_image::files_hash(&entries).map_err(|e| copy_error(e.to_string()))
                }
                _ => Ok(String::new()),
            })
            .collect()
    })
    .await
    .expect("hashing files does not panic")
}

/// An image's root filesystem in `work/out/rootfs.ext4`. Blocks.
fn image_rootfs(
    image: &hearth_image::PulledImage,
    init_binary: &Path,
    work: &Path,
) -> Result<(), BuildError> {
    let tree = work.join("tree");
    let out = work.join("out");
    if work.exists() {
        std::fs::remove_dir_all(work).map_err(NodeError::io(work))?;
    }
    mkdir(&tree)?;
    mkdir(&out)?;
    hearth_image::unpack(image, &tree)?;
    hearth_image::prepare_tree(&tree, init_binary)?;
    hearth_image::make_ext4(&tree, &out.join("rootfs.ext4"), &hearth_image::NoProgress)?;
    std::fs::remove_dir_all(&tree).map_err(NodeError::io(&tree))?;
    Ok(())
}

/// A published build of this name and id that is not current (yet).
fn existing_build(name_dir: &Path, build_id: &str) -> Result<Option<Template>, BuildError> {
    let dir = name_dir.join(build_id);
    if !dir.join("meta.json").is_file() {
        return Ok(None);
    }
    let templates_dir = name_dir.parent().expect("a template dir has a parent");
    let name = name_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    Ok(hearth_image::list_templates(templates_dir)?
        .into_iter()
        .find(|t| t.name == name && t.build_id == build_id))
}

/// Whether a cached layer and every disk below it are there.
fn layer_is_whole(dir: &Path) -> bool {
    let mut dir = dir.to_owned();
    loop {
        let Ok(text) = std::fs::read(dir.join("layer.json")) else {
            return false;
        };
        let Ok(meta) = serde_json::from_slice::<LayerMeta>(&text) else {
            return false;
        };
        if !dir.join("disk.qcow2").is_file() || !meta.parent.is_file() {
            return false;
        }
        if meta.parent_format == "raw" {
            return true;
        }
        match meta.parent.parent() {
            Some(parent) => dir = parent.to_owned(),
            None => return false,
        }
    }
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Raw => "raw",
        ImageFormat::Qcow2 => "qcow2",
    }
}

fn mkdir(path: &Path) -> Result<(), NodeError> {
    std::fs::create_dir_all(path).map_err(NodeError::io(path))
}

/// A build log that drops everything.
pub(crate) struct NoLog;

impl BuildLog for NoLog {
    fn line(&self, _text: &str) {}
}

/// Image pull progress as build log lines.
struct LogProgress<'a>(&'a dyn BuildLog);

impl hearth_image::Progress for LogProgress<'_> {
    fn stage(&self, name: &str) {
        self.0.line(name);
    }

    fn set_total(&self, _total: u64) {}

    fn set_done(&self, _done: u64) {}

    fn message(&self, line: &str) {
        self.0.line(line);
    }
}
