//! `hearth server` and `hearth keys`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use hearth_node::{Layout, NodeError, NodeOptions};
use hearth_server::cluster::api::ApiOptions;
use hearth_server::cluster::{NodeIdentity, Secret};
use hearth_server::manager::Shape;
use hearth_server::server::{self, ServerOptions, Tls};
use hearth_server::store::Store;
use hearth_vmm::{AccelChoice, VmmChoice};
use tokio::signal::unix::{SignalKind, signal};

use super::CommandResult;

#[derive(Args)]
pub(crate) struct ServerArgs {
    /// Address of the API and the sandbox proxy.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Domain of sandbox host names: port P of sandbox S answers at
    /// `P-S.<domain>`.
    #[arg(long)]
    domain: Option<String>,
    /// Parked sandboxes kept ready per template.
    #[arg(long, default_value_t = 2)]
    pool: usize,
    /// Virtual CPUs per sandbox.
    #[arg(long, default_value_t = 2)]
    vcpus: u32,
    /// Most sandboxes (pooled ones included) that may exist at once: each
    /// takes a network slot. Creates beyond it fail with a clear error.
    #[arg(long, default_value_t = NodeOptions::default().slot_capacity)]
    max_sandboxes: u32,
    /// Nameserver (IPv4) that guests booted here are given and that
    /// resolves the domain names of egress policies (repeatable); by
    /// default those of the host's /etc/resolv.conf.
    #[arg(long = "dns", value_name = "ADDR")]
    dns: Vec<std::net::Ipv4Addr>,
    /// Guest memory per sandbox in MiB.
    #[arg(long, default_value_t = 512)]
    memory: u32,
    /// Accelerator: auto, kvm or tcg.
    #[arg(long, default_value = "auto")]
    accel: AccelChoice,
    /// VMM driver: auto (Firecracker where firecracker and jailer are on
    /// PATH and KVM runs guests, else QEMU), qemu or firecracker.
    #[arg(long, default_value = "auto", env = "HEARTH_VMM")]
    vmm: VmmChoice,
    /// The guest init that template builds put into image bases (default:
    /// hearth-init beside hearth).
    #[arg(long, env = "HEARTH_INIT_BINARY")]
    init_binary: Option<std::path::PathBuf>,
    /// Also serve Prometheus metrics at `/metrics` on this address,
    /// without an API key (on the API port they need one).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Kill the running sandboxes when the server stops. Without it they
    /// keep running, and the next `hearth server` on this data directory
    /// takes them over, as after a crash.
    #[arg(long)]
    kill_on_exit: bool,
    /// Let sandboxes publish host ports below 1024.
    #[arg(long)]
    allow_privileged_ports: bool,
    /// Serve the API and the proxy over HTTPS with this PEM certificate
    /// (chain); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Serve over HTTPS with a certificate for --domain and its
    /// subdomains signed by a local CA this server makes at first start
    /// (<data-dir>/tls/ca.pem: have clients trust it).
    #[arg(long, requires = "domain", conflicts_with = "tls_cert")]
    tls_self_signed: bool,
}

#[derive(Subcommand)]
pub(crate) enum KeysCommand {
    /// Create an API key and print it (it is not shown again).
    Create {
        #[arg(long, default_value = "cli")]
        name: String,
    },
    /// List API keys (prefixes only).
    List,
    /// Revoke an API key by id.
    Revoke { id: String },
}

/// The store `--store` names, else the SQLite file in the data directory.
fn open_store(layout: &Layout, spec: Option<&str>) -> anyhow::Result<Arc<Store>> {
    let store = match spec {
        Some(spec) => Store::open_spec(spec)?,
        None => {
            std::fs::create_dir_all(layout.data_dir())?;
            Store::open(&server::store_path(layout))?
        }
    };
    Ok(Arc::new(store))
}

#[derive(Args)]
pub(crate) struct NodeArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// This node's name in the catalog (default: the host name).
    #[arg(long, env = "HEARTH_NODE_ID")]
    node_id: Option<String>,
    /// host:port where the API servers reach this node (default: --listen).
    #[arg(long, env = "HEARTH_NODE_ADVERTISE", value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// Shared by the cluster's nodes and API servers (16 characters or
    /// more): a node answers only requests that carry it.
    #[arg(long, env = "HEARTH_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: String,
}

#[derive(Args)]
pub(crate) struct ApiArgs {
    /// Address of the API and the sandbox proxy.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Domain of sandbox host names, as the nodes have it.
    #[arg(long)]
    domain: Option<String>,
    /// Shared by the cluster's nodes and API servers (16 characters or
    /// more); it is also the X-Admin-Token of the /nodes routes.
    #[arg(long, env = "HEARTH_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: String,
}

/// `hearth node`: a server that is a node of a cluster.
pub(crate) fn node(args: NodeArgs, layout: &Layout, store: Option<&str>) -> CommandResult {
    let secret = Secret::new(args.cluster_secret).map_err(anyhow::Error::msg)?;
    let node_id = match args.node_id {
        Some(id) => id,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .map_err(|e| anyhow::anyhow!("reading the host name ({e}): pass --node-id"))?,
    };
    let identity = NodeIdentity {
        advertise: args.advertise,
        node_id,
        secret,
    };
    serve_node(args.server, layout, store, Some(identity))
}

/// `hearth api`: a stateless API server in front of a cluster's nodes.
pub(crate) fn api(args: ApiArgs, store: Option<&str>) -> CommandResult {
    let Some(spec) = store else {
        return Err(anyhow::anyhow!(
            "hearth api needs the cluster's catalog: --store postgres://… (or HEARTH_STORE)"
        )
        .into());
    };
    let options = ApiOptions {
        listen: args.listen,
        domain: args.domain,
        secret: Secret::new(args.cluster_secret).map_err(anyhow::Error::msg)?,
    };
    let store = Arc::new(Store::open_spec(spec)?);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        hearth_server::cluster::api::serve(
            store,
            options,
            |addr| eprintln!("hearth: API server listening on http://{addr}"),
            shutdown_signal()?,
        )
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves at SIGTERM or SIGINT.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("hearth: shutting down");
    })
}

pub(crate) fn run(args: ServerArgs, layout: &Layout, store: Option<&str>) -> CommandResult {
    serve_node(args, layout, store, None)
}

fn serve_node(
    args: ServerArgs,
    layout: &Layout,
    store: Option<&str>,
    cluster: Option<NodeIdentity>,
) -> CommandResult {
    // The base template (and its snapshot) before anything listens.
    let kernel_missing = hearth_image::current_kernel(&layout.kernels())?.is_none();
    if kernel_missing {
        return Err(anyhow::Error::from(NodeError::NoKernel).into());
    }
    if hearth_image::find_template(&layout.templates(), "base")?.is_none() {
        eprintln!("hearth: template 'base' is missing; building it (first start only)");
        super::template::build(layout, "base", None)?;
    }
    let mut store = open_store(layout, store)?;
    if let Some(identity) = &cluster {
        let owned = Arc::into_inner(store).expect("opened here");
        store = Arc::new(owned.for_node(&identity.node_id));
    }
    if let Some(key) = hearth_server::keys::ensure_first_key(&store, &server::key_path(layout))? {
        println!(
            "API key (shown once; also in {}): {key}",
            server::key_path(layout).display()
        );
    }
    let options = ServerOptions {
        listen: args.listen,
        domain: args.domain,
        pool_size: args.pool,
        shape: Shape {
            vcpus: args.vcpus,
            memory_mib: args.memory,
        },
        node: NodeOptions {
            accel: args.accel,
            vmm: args.vmm,
            slot_capacity: args.max_sandboxes,
            dns: (!args.dns.is_empty()).then_some(args.dns),
            ..NodeOptions::default()
        },
        init_binary: match args.init_binary {
            Some(path) => path,
            None => server::default_init_binary()?,
        },
        kill_on_exit: args.kill_on_exit,
        metrics_listen: args.metrics_listen,
        allow_privileged_ports: args.allow_privileged_ports,
        tls: match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(Tls::Files { cert, key }),
            _ if args.tls_self_signed => Some(Tls::Local),
            _ => None,
        },
        cluster,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        server::serve(
            layout.clone(),
            store,
            options,
            |listening| {
                if let Some(ca) = listening.tls.as_ref().and_then(|t| t.ca.as_ref()) {
                    eprintln!(
                        "hearth: clients must trust the CA in {} (made by this server)",
                        ca.display()
                    );
                }
                eprintln!("hearth: listening on {}", listening.url());
            },
            shutdown,
        )
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn keys(cmd: KeysCommand, layout: &Layout, store: Option<&str>) -> CommandResult {
    let store = open_store(layout, store)?;
    match cmd {
        KeysCommand::Create { name } => {
            let (info, key) = store.create_key(&name)?;
            println!("{key}");
            eprintln!(
                "hearth: created key {} ({}); it is not shown again",
                info.id, info.name
            );
        }
        KeysCommand::List => {
            println!(
                "{:<14} {:<16} {:<16} {:<8}",
                "ID", "NAME", "PREFIX", "STATE"
            );
            for key in store.list_keys()? {
                let state = if key.revoked { "revoked" } else { "active" };
                println!(
                    "{:<14} {:<16} {:<16} {:<8}",
                    key.id, key.name, key.prefix, state
                );
            }
        }
        KeysCommand::Revoke { id } => {
            if !store.revoke_key(&id)? {
                return Err(anyhow::anyhow!("no API key {id}").into());
            }
            println!("revoked {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
