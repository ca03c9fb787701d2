use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use hearth_image::{Base, Recipe, Template, TemplateOptions};
use hearth_node::{
    BuildLog, BuildOptions, Layout, Node, NodeOptions, RegistryOptions, SandboxSpec, Snapshot,
};
use hearth_server::store::Store;

use super::CommandResult;
use crate::progress::Progress;

/// How long the template may take to boot for its snapshot.
const SNAPSHOT_BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// `hearth template build`'s arguments.
#[derive(Args)]
pub(crate) struct BuildArgs {
    #[arg(default_value = "base")]
    name: String,
    /// Start from an image: REGISTRY/NAME[:TAG|@DIGEST], oci:DIR[:TAG]
    /// or docker-archive:FILE.
    #[arg(long, conflicts_with = "file")]
    from_image: Option<String>,
    /// Build from this Dockerfile; RUN steps run in a build microVM.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// The build context of COPY (default: the Dockerfile's directory).
    context: Option<PathBuf>,
    /// A Dockerfile ARG value.
    #[arg(long = "build-arg", value_name = "NAME=VALUE")]
    build_args: Vec<String>,
    /// Registry credentials.
    #[arg(long, value_name = "USER:PASSWORD", conflicts_with = "creds_file")]
    registry_auth: Option<String>,
    /// A file holding USER:PASSWORD for the registry.
    #[arg(long)]
    creds_file: Option<PathBuf>,
    /// A registry to reach over plain HTTP (localhost always is).
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Run every step again, ignoring the step cache.
    #[arg(long)]
    no_cache: bool,
    /// How long the ready command may keep failing, in seconds.
    #[arg(long, default_value_t = 120)]
    ready_timeout: u64,
    /// The guest init binary to install (default: hearth-init beside hearth).
    #[arg(long, env = "HEARTH_INIT_BINARY")]
    init_binary: Option<PathBuf>,
    /// Virtual CPUs of the snapshot.
    #[arg(long, default_value_t = 2)]
    vcpus: u32,
    /// Guest memory of the snapshot in MiB.
    #[arg(long, default_value_t = 512)]
    memory: u32,
}

#[derive(Subcommand)]
pub(crate) enum TemplateCommand {
    /// Build a template, boot it once and snapshot it; then delete its old
    /// builds that no sandbox uses. `base` is Debian bookworm; any other
    /// name needs --from-image or -f.
    Build(Box<BuildArgs>),
    /// List templates.
    List,
    /// Delete a template and all its builds (refused while sandboxes use them).
    Rm { name: String },
    /// Delete the build caches (pulled images, step layers); templates stay.
    Prune,
}

pub(crate) fn run(cmd: TemplateCommand, layout: &Layout, store: Option<&str>) -> CommandResult {
    match cmd {
        TemplateCommand::Build(args) if args.from_image.is_some() || args.file.is_some() => {
            build_recipe(layout, *args, store)?;
        }
        TemplateCommand::Build(args) => {
            let BuildArgs {
                name,
                init_binary,
                vcpus,
                memory,
                ..
            } = *args;
            let template = build(layout, &name, init_binary)?;
            let runtime = tokio::runtime::Runtime::new()?;
            let snapshot = runtime.block_on(snapshot(layout, &template, vcpus, memory))?;
            prune_old(layout, &name, store)?;
            println!("{} {}", template.name, snapshot.dir.display());
        }
        TemplateCommand::Rm { name } => {
            hearth_node::remove_template(layout, &name)?;
            println!("removed template {name}");
        }
        TemplateCommand::List => {
            let catalog = Catalog::open(layout, store)?;
            println!(
                "{:<16} {:<18} {:>8} {:>7}  {:<28} {:<12} {:<16} START",
                "NAME", "BUILD", "SIZE", "BUILT", "SOURCE", "PORTS", "TAGS"
            );
            for t in hearth_image::list_templates(&layout.templates())? {
                let current = hearth_image::find_template(&layout.templates(), &t.name)?
                    .is_some_and(|c| c.build_id == t.build_id);
                let tags: Vec<String> = catalog
                    .tags(&t.name)?
                    .into_iter()
                    .filter(|(_, build)| *build == t.build_id)
                    .map(|(tag, _)| tag)
                    .collect();
                println!(
                    "{:<16} {:<18} {:>6}Mi {:>6}s  {:<28} {:<12} {:<16} {}",
                    t.name,
                    format!("{}{}", t.build_id, if current { "*" } else { "" }),
                    t.size / (1024 * 1024),
                    t.build_secs,
                    t.source,
                    t.run.config.exposed_ports.join(","),
                    tags.join(","),
                    t.run
                        .start_cmd
                        .as_deref()
                        .map(|a| a.join(" "))
                        .unwrap_or_default(),
                );
            }
        }
        TemplateCommand::Prune => {
            let freed = hearth_node::prune_build_cache(layout)?;
            println!("freed {} MiB of build caches", freed / (1024 * 1024));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A template from an image or a Dockerfile, built and snapshotted.
fn build_recipe(layout: &Layout, args: BuildArgs, store: Option<&str>) -> anyhow::Result<()> {
    let BuildArgs {
        name,
        from_image,
        file,
        context,
        build_args,
        registry_auth,
        creds_file,
        insecure_registries,
        no_cache,
        ready_timeout,
        init_binary,
        vcpus,
        memory,
    } = args;
    let init_binary = match init_binary {
        Some(path) => path,
        None => default_init_binary()?,
    };
    let auth = match (registry_auth, creds_file) {
        (Some(pair), _) => Some(parse_auth(&pair)?),
        (None, Some(path)) => Some(parse_auth(
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .trim(),
        )?),
        (None, None) => None,
    };
    let registry = RegistryOptions {
        auth,
        insecure: insecure_registries,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let built = runtime.block_on(async {
        let node = Node::open(layout.clone(), &NodeOptions::default())?;
        let (recipe, source) =
            recipe(&node, &registry, from_image, file, context, &build_args).await?;
        let opts = BuildOptions {
            name: name.clone(),
            recipe,
            source,
            vcpus,
            memory_mib: memory,
            no_cache,
            registry,
            init_binary,
            boot_timeout: SNAPSHOT_BOOT_TIMEOUT,
            ready_timeout: Duration::from_secs(ready_timeout),
        };
        anyhow::Ok(node.build_template(&opts, &PrintLog).await?)
    })?;
    prune_old(layout, &name, store)?;
    println!("{} {}", built.template.name, built.snapshot.dir.display());
    Ok(())
}

/// The server's catalog on this node, if a server ever ran here: it holds
/// the tags of builds made through the E2B build API.
struct Catalog(Option<Store>);

impl Catalog {
    fn open(layout: &Layout, spec: Option<&str>) -> anyhow::Result<Self> {
        if let Some(spec) = spec {
            return Ok(Self(Some(Store::open_spec(spec)?)));
        }
        let path = hearth_server::server::store_path(layout);
        if !path.exists() {
            return Ok(Self(None));
        }
        Ok(Self(Some(Store::open(&path)?)))
    }

    /// The tags of template `name` as `(tag, build id)`.
    fn tags(&self, name: &str) -> anyhow::Result<Vec<(String, String)>> {
        match &self.0 {
            Some(store) => Ok(store.tagged_node_builds(name)?),
            None => Ok(Vec::new()),
        }
    }
}

/// Deletes the old builds of `name` that no sandbox uses and no tag names.
fn prune_old(layout: &Layout, name: &str, store: Option<&str>) -> anyhow::Result<()> {
    let keep = Catalog::open(layout, store)?
        .tags(name)?
        .into_iter()
        .map(|(_, build)| build)
        .collect();
    let pruned = hearth_node::prune_template(layout, name, &keep)?;
    if !pruned.in_use.is_empty() {
        eprintln!(
            "hearth: kept old builds {} of '{name}': sandboxes use them",
            pruned.in_use.join(", ")
        );
    }
    Ok(())
}

/// The recipe of `--from-image` or `-f`, and what to call its source. A
/// Dockerfile is read twice: once to learn its base, then with the base's
/// environment and working directory, which its `ENV` and `WORKDIR` build on.
async fn recipe(
    node: &Node,
    registry: &RegistryOptions,
    from_image: Option<String>,
    file: Option<PathBuf>,
    context: Option<PathBuf>,
    build_args: &[String],
) -> anyhow::Result<(Recipe, String)> {
    if let Some(reference) = from_image {
        let recipe = Recipe {
            base: Some(Base::Image {
                reference: reference.clone(),
            }),
            ..Recipe::default()
        };
        return Ok((recipe, reference));
    }
    let file = file.expect("clap gives --from-image or -f here");
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read the Dockerfile {}", file.display()))?;
    let context = match context {
        Some(dir) => dir,
        None => file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), PathBuf::from),
    };
    let context = context
        .canonicalize()
        .with_context(|| format!("the build context {} does not exist", context.display()))?;
    let mut args = BTreeMap::new();
    for pair in build_args {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("--build-arg {pair}: expected NAME=VALUE"))?;
        args.insert(k.to_owned(), v.to_owned());
    }
    let label = file.file_name().map_or_else(
        || "Dockerfile".to_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    let first = hearth_image::parse_dockerfile(&text, &label, &context, &args)?;
    let base = node.base_config(first.base.as_ref(), registry).await?;
    let recipe = hearth_image::parse_dockerfile_for_image(&text, &label, &context, &args, &base)?;
    Ok((recipe, label))
}

fn parse_auth(pair: &str) -> anyhow::Result<hearth_image::RegistryAuth> {
    let (username, password) = pair
        .split_once(':')
        .context("registry credentials must be USER:PASSWORD")?;
    Ok(hearth_image::RegistryAuth {
        username: username.to_owned(),
        password: password.to_owned(),
    })
}

/// Build lines on stderr, as they come.
struct PrintLog;

impl BuildLog for PrintLog {
    fn line(&self, text: &str) {
        eprintln!("hearth: {text}");
    }
}

/// Builds a template with progress on the terminal.
pub(crate) fn build(
    layout: &Layout,
    name: &str,
    init_binary: Option<PathBuf>,
) -> anyhow::Result<Template> {
    if name != "base" {
        bail!(
            "template '{name}' needs a source: --from-image REF or -f Dockerfile \
             ('base' alone is built in)"
        );
    }
    let init_binary = match init_binary {
        Some(path) => path,
        None => default_init_binary()?,
    };
    let progress = Progress::new();
    let template = hearth_image::build_base_template(
        &TemplateOptions {
            templates_dir: layout.templates(),
            cache_dir: layout.cache(),
            init_binary,
        },
        &progress,
    );
    progress.finish();
    Ok(template?)
}

/// The template's snapshot for this machine shape, taken now if missing.
async fn snapshot(
    layout: &Layout,
    template: &Template,
    vcpus: u32,
    memory_mib: u32,
) -> anyhow::Result<Snapshot> {
    let node = Node::open(layout.clone(), &NodeOptions::default())?;
    let spec = SandboxSpec {
        template: template.clone(),
        kernel: node.kernel()?,
        vcpus,
        memory_mib,
        boot_timeout: SNAPSHOT_BOOT_TIMEOUT,
    };
    eprintln!("hearth: snapshotting template '{}'", template.name);
    Ok(node.snapshot(&spec).await?)
}

/// `hearth-init` installed beside the running `hearth` binary.
fn default_init_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the hearth binary")?;
    Ok(exe.with_file_name("hearth-init"))
}
