//! `hearth server`: the store, the node, the API and the proxy on one port.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::middleware;
use axum::serve::ListenerExt;
use hearth_node::{Layout, Node, NodeOptions};
use tokio::net::TcpListener;

use crate::api::{self, Api};
use crate::builds::Builds;
use crate::manager::{Manager, Shape};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::tls::{TlsFiles, TlsListener};

/// How often sandboxes are checked for their end time.
const EXPIRY_TICK: Duration = Duration::from_millis(250);
/// How often the team's metrics are sampled (E2B's finest step).
pub const TEAM_SAMPLE_TICK: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub listen: SocketAddr,
    /// Domain of sandbox host names (`<port>-<id>.<domain>`), if any.
    pub domain: Option<String>,
    /// Parked sandboxes kept ready per template.
    pub pool_size: usize,
    pub shape: Shape,
    pub node: NodeOptions,
    /// The static `hearth-init` that template builds put into image bases.
    pub init_binary: PathBuf,
    /// Where to serve `GET /metrics` without an API key (for a Prometheus
    /// on a trusted network); on the API's port it needs the key.
    pub metrics_listen: Option<SocketAddr>,
    /// Kill the running sandboxes when the server stops. By default they
    /// keep running, and the next server on this data directory adopts
    /// them (as it does after a crash).
    pub kill_on_exit: bool,
    /// Sandboxes may publish host ports below 1024.
    pub allow_privileged_ports: bool,
    /// Serve the API and the proxy over TLS.
    pub tls: Option<Tls>,
    /// Run as a node of a cluster (`hearth node`): registered in the
    /// catalog, heartbeating, answering only its API servers. The store
    /// must be scoped to it ([`Store::for_node`]).
    pub cluster: Option<crate::cluster::NodeIdentity>,
}

/// Where the listener's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// PEM files the operator gives: a certificate chain and its key.
    Files { cert: PathBuf, key: PathBuf },
    /// A local CA and a certificate for the domain and its subdomains,
    /// made at first start in `<data>/tls` ([`crate::tls::local_ca`]).
    Local,
}

/// Where the server listens, for `ready`.
#[derive(Debug, Clone)]
pub struct Listening {
    pub addr: SocketAddr,
    /// The files served, when over TLS.
    pub tls: Option<TlsFiles>,
}

impl Listening {
    /// `http://ADDR` or `https://ADDR`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

/// `hearth-init` beside the running binary, where a build or an install
/// puts it.
pub fn default_init_binary() -> std::io::Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name("hearth-init"))
}

/// Where the server keeps its catalog and its first API key.
pub fn store_path(layout: &Layout) -> PathBuf {
    layout.data_dir().join("hearth.db")
}

pub fn key_path(layout: &Layout) -> PathBuf {
    layout.data_dir().join("api-key")
}

/// Serves until `shutdown` resolves, then leaves the running sandboxes to
/// the next server (or kills them, with [`ServerOptions::kill_on_exit`];
/// paused ones stay) and returns. `ready` learns where it listens.
pub async fn serve(
    layout: Layout,
    store: Arc<Store>,
    options: ServerOptions,
    ready: impl FnOnce(&Listening),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // The certificate before anything starts: a bad one stops here.
    let tls = match &options.tls {
        None => None,
        Some(tls) => {
            let files = tls_files(tls, &layout, options.domain.as_deref())?;
            let config = crate::tls::server_config(&files.cert, &files.key)?;
            Some((files, config))
        }
    };
    // One server per data directory: it owns every sandbox there.
    let lock_path = layout.data_dir().join("server.lock");
    let server_lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)?;
    if server_lock.try_lock().is_err() {
        anyhow::bail!(
            "another hearth server runs on {} (it holds {})",
            layout.data_dir().display(),
            lock_path.display()
        );
    }
    let node_options = NodeOptions {
        vmms_outlive: true,
        ..options.node.clone()
    };
    let node = Arc::new(Node::open(layout, &node_options)?);
    let metrics = Arc::new(Metrics::default());
    metrics.set_node(node.host());
    let manager = Arc::new(
        Manager::open(
            Arc::clone(&node),
            Arc::clone(&store),
            options.shape,
            options.pool_size,
            Arc::clone(&metrics),
        )
        .await?,
    );
    let peers = options.cluster.as_ref().map(|identity| {
        Arc::new(crate::cluster::templates::Peers::new(
            Arc::clone(&store),
            Arc::clone(&node),
            identity.secret.clone(),
            identity.node_id.clone(),
            Arc::clone(&metrics),
        ))
    });
    let builds = Arc::new(Builds::new(
        Arc::clone(&node),
        Arc::clone(&store),
        Arc::clone(&manager),
        options.init_binary.clone(),
        options.shape,
        peers,
    )?);
    if options.cluster.is_some() {
        // A new node may have no base yet, and the nodes that hold it may
        // not have started: its first create fetches it then.
        let warmed = async {
            builds.resolve("base").await?;
            manager.warm(&["base"]).await
        };
        if let Err(e) = warmed.await {
            tracing::warn!(
                "the base template is not ready on this node yet: {}",
                e.message
            );
        }
    } else {
        manager.warm(&["base"]).await?;
    }
    let listener = TcpListener::bind(options.listen).await?;
    let listen = listener.local_addr()?;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let api = Arc::new(Api {
        manager: Arc::clone(&manager),
        builds: Arc::clone(&builds),
        domain: options.domain.clone(),
        listen,
        stopping,
        allow_privileged_ports: options.allow_privileged_ports,
    });
    let metrics_server = match options.metrics_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr).await?;
            tracing::info!(addr = %listener.local_addr()?, "serving /metrics without a key");
            let app = axum::Router::new()
                .route("/metrics", axum::routing::get(crate::metrics::scrape))
                .with_state(Arc::clone(&api));
            Some(tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::warn!("the metrics listener ended: {e}");
                }
            }))
        }
        None => None,
    };
    let mut app = api::router(Arc::clone(&api));
    if options.cluster.is_some() {
        app = app.merge(crate::cluster::templates::routes(Arc::clone(&node)));
    }
    let mut app = app.layer(middleware::from_fn_with_state(api, crate::proxy::route));
    let cluster_tasks = match &options.cluster {
        Some(identity) => {
            app = app.layer(middleware::from_fn_with_state(
                identity.secret.clone(),
                crate::cluster::require_secret,
            ));
            let capacity = crate::cluster::capacity(manager.node());
            let address = identity
                .advertise
                .clone()
                .unwrap_or_else(|| listen.to_string());
            vec![
                tokio::spawn(crate::cluster::heartbeat(
                    Arc::clone(&manager),
                    identity.clone(),
                    address,
                    capacity,
                )),
                tokio::spawn(crate::cluster::templates::sync_builds(
                    Arc::clone(&manager),
                    identity.node_id.clone(),
                )),
            ]
        }
        None => Vec::new(),
    };
    ready(&Listening {
        addr: listen,
        tls: tls.as_ref().map(|(files, _)| files.clone()),
    });

    let expiry = {
        let manager = Arc::clone(&manager);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EXPIRY_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                manager.expire().await;
            }
        })
    };
    let sampler = {
        let manager = Arc::clone(&manager);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TEAM_SAMPLE_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                manager.sample_team();
            }
        })
    };
    let webhooks =
        tokio::spawn(Arc::new(crate::webhooks::Sender::new(Arc::clone(&manager))?).run());
    let shutdown = async move {
        shutdown.await;
        stop.send_replace(true);
    };
    let served = match tls {
        Some((_, config)) => {
            axum::serve(TlsListener::new(listener, config)?, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            // Small HTTP/2 frames go out at once, not after the peer's
            // delayed ACK.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    };
    for task in cluster_tasks {
        task.abort();
    }
    expiry.abort();
    sampler.abort();
    webhooks.abort();
    if let Some(metrics_server) = metrics_server {
        metrics_server.abort();
    }
    builds.shutdown();
    manager.shutdown(options.kill_on_exit).await;
    Ok(served?)
}

/// The certificate and key `tls` names, made first when they are the
/// server's own.
fn tls_files(tls: &Tls, layout: &Layout, domain: Option<&str>) -> anyhow::Result<TlsFiles> {
    match tls {
        Tls::Files { cert, key } => Ok(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: None,
        }),
        Tls::Local => {
            let domain = domain.ok_or_else(|| {
                anyhow::anyhow!("a certificate of the server's own needs --domain: it is made for the domain and its subdomains")
            })?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            Ok(crate::tls::local_ca(
                &layout.data_dir().join("tls"),
                domain,
                now,
            )?)
        }
    }
}
