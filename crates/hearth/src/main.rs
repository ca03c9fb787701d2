//! `hearth`: the command-line front end. Parses arguments and calls into the
//! library crates; one module per command under `commands/`.

mod commands;
mod progress;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "hearth", version, about = "Self-hosted microVM sandboxes")]
struct Cli {
    /// Where kernels, templates and sandboxes live.
    #[arg(
        long,
        global = true,
        env = "HEARTH_DATA_DIR",
        default_value = "/var/lib/hearth"
    )]
    data_dir: PathBuf,
    /// Where per-boot locks live.
    #[arg(
        long,
        global = true,
        env = "HEARTH_RUN_DIR",
        default_value = "/run/hearth"
    )]
    run_dir: PathBuf,
    /// The catalog (keys, sandboxes, builds, events): an SQLite file, by
    /// default <data-dir>/hearth.db, or a PostgreSQL URL
    /// (postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE) shared by a
    /// cluster.
    #[arg(long, global = true, env = "HEARTH_STORE", value_name = "PATH|URL")]
    store: Option<String>,
    /// Log verbosity (error, warn, info, debug, trace); RUST_LOG overrides.
    #[arg(long, global = true, env = "HEARTH_LOG", default_value = "warn")]
    log: String,
    /// How log lines are written to stderr: `text` for people, `json` for
    /// log shippers (one object per line, its fields, the sandbox id
    /// among them, as keys).
    #[arg(long, global = true, env = "HEARTH_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Build and list guest kernels.
    #[command(subcommand)]
    Kernel(commands::kernel::KernelCommand),
    /// Build and list templates.
    #[command(subcommand)]
    Template(commands::template::TemplateCommand),
    /// Run sandboxes.
    #[command(subcommand)]
    Sandbox(commands::sandbox::SandboxCommand),
    /// Create, list and remove named volumes (through the server).
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Run the E2B-compatible API and sandbox proxy with the node in-process.
    Server(commands::server::ServerArgs),
    /// Run a node of a cluster: a server that registers in the shared
    /// catalog (--store postgres://…) and answers only its API servers.
    Node(commands::server::NodeArgs),
    /// Run a stateless API server of a cluster: it places sandboxes on the
    /// nodes and routes each request to the node it is about.
    Api(commands::server::ApiArgs),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(commands::server::KeysCommand),
    /// Measure create latency, exec round trip, pause/resume, memory and
    /// density on this machine.
    Bench(commands::bench::BenchArgs),
    /// Print the server's events (sandbox lifecycle, template builds), the
    /// last ones or as they happen.
    Events(commands::events::EventsArgs),
}

#[derive(Subcommand)]
enum VolumeCommand {
    /// Make an empty volume.
    Create(commands::remote::VolumeCreateArgs),
    /// Volumes with their size, what they hold and the sandbox that mounts each.
    #[command(alias = "ls")]
    List(commands::remote::VolumeListArgs),
    /// Remove a volume and its data (refused while a sandbox mounts it).
    Rm(commands::remote::VolumeRmArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    let layout = hearth_node::Layout::new(&cli.data_dir, &cli.run_dir);
    let result = match cli.command {
        Command::Kernel(cmd) => commands::kernel::run(cmd, &layout),
        Command::Template(cmd) => commands::template::run(cmd, &layout, cli.store.as_deref()),
        Command::Sandbox(cmd) => commands::sandbox::run(cmd, &layout),
        Command::Bench(args) => commands::bench::run(args, &layout),
        Command::Volume(VolumeCommand::Create(args)) => {
            commands::remote::volume_create(args, &layout)
        }
        Command::Volume(VolumeCommand::List(args)) => commands::remote::volume_list(args, &layout),
        Command::Volume(VolumeCommand::Rm(args)) => commands::remote::volume_rm(args, &layout),
        Command::Server(args) => commands::server::run(args, &layout, cli.store.as_deref()),
        Command::Node(args) => commands::server::node(args, &layout, cli.store.as_deref()),
        Command::Api(args) => commands::server::api(args, cli.store.as_deref()),
        Command::Keys(cmd) => commands::server::keys(cmd, &layout, cli.store.as_deref()),
        Command::Events(args) => commands::events::run(args, &layout),
    };
    match result {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("hearth: {:#}", failure.error);
            failure.exit_code
        }
    }
}
