use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use hearth_image::{Template, TemplateOptions};
use hearth_node::{Layout, Node, NodeOptions, SandboxSpec, Snapshot};

use super::CommandResult;

/// How long the template may take to boot for its snapshot.
const SNAPSHOT_BOOT_TIMEOUT: Duration = Duration::from_secs(120);
use crate::progress::Progress;

#[derive(Subcommand)]
pub(crate) enum TemplateCommand {
    /// Build a template (only `base`, Debian bookworm, for now), boot it
    /// once and snapshot it; then delete its old builds that no sandbox uses.
    Build {
        #[arg(default_value = "base")]
        name: String,
        /// The guest init binary to install (default: hearth-init beside hearth).
        #[arg(long, env = "HEARTH_INIT_BINARY")]
        init_binary: Option<PathBuf>,
        /// Virtual CPUs of the snapshot.
        #[arg(long, default_value_t = 2)]
        vcpus: u32,
        /// Guest memory of the snapshot in MiB.
        #[arg(long, default_value_t = 512)]
        memory: u32,
    },
    /// List templates.
    List,
    /// Delete a template and all its builds (refused while sandboxes use them).
    Rm { name: String },
}

pub(crate) fn run(cmd: TemplateCommand, layout: &Layout) -> CommandResult {
    match cmd {
        TemplateCommand::Build {
            name,
            init_binary,
            vcpus,
            memory,
        } => {
            let template = build(layout, &name, init_binary)?;
            let runtime = tokio::runtime::Runtime::new()?;
            let snapshot = runtime.block_on(snapshot(layout, &template, vcpus, memory))?;
            let pruned = hearth_node::prune_template(layout, &name)?;
            if !pruned.in_use.is_empty() {
                eprintln!(
                    "hearth: kept old builds {} of '{name}': sandboxes use them",
                    pruned.in_use.join(", ")
                );
            }
            println!("{} {}", template.name, snapshot.dir.display());
        }
        TemplateCommand::Rm { name } => {
            hearth_node::remove_template(layout, &name)?;
            println!("removed template {name}");
        }
        TemplateCommand::List => {
            println!("{:<16} {:<18} {:>8}  ROOTFS", "NAME", "BUILD", "SIZE");
            for t in hearth_image::list_templates(&layout.templates())? {
                println!(
                    "{:<16} {:<18} {:>6}Mi  {}",
                    t.name,
                    t.build_id,
                    t.size / (1024 * 1024),
                    t.rootfs.display()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds a template with progress on the terminal.
pub(crate) fn build(
    layout: &Layout,
    name: &str,
    init_binary: Option<PathBuf>,
) -> anyhow::Result<Template> {
    if name != "base" {
        bail!("only the 'base' template can be built so far");
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
