//! The envd-compatible agent: plain HTTP routes (`/health`, `/init`,
//! `/files`, `/envs`, `/metrics`) and the Connect services
//! (`/process.Process/*`, `/filesystem.Filesystem/*` with its watches).

mod auth;
mod connect;
mod files;
mod filesystem;
mod info;
mod metadata;
mod process;
mod spawn;
mod watch;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hearth_proto::agent::{ENVD_VERSION, ENVD_VERSION_HEADER, InitRequest};
use hearth_proto::connect::{CONTENT_TYPE_JSON, Code, ConnectError};
use tokio::net::TcpListener;

use crate::reaper::Reaper;
use crate::{clock, identity};

/// What the agent may change outside its own state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// PID 1 of a guest: `/init` sets the clock and host name.
    Guest,
    /// Agent only (tests, development): the host's clock and name are left alone.
    Standalone,
}

/// Settings that `POST /init` updates.
#[derive(Debug, Clone)]
struct Settings {
    env: HashMap<String, String>,
    default_user: String,
    default_workdir: Option<PathBuf>,
    access_token: Option<String>,
}

/// Shared state of all handlers.
#[derive(Debug)]
pub(crate) struct Agent {
    mode: Mode,
    /// Directory holding passwd, group, hostname, hosts.
    etc: PathBuf,
    reaper: Reaper,
    settings: RwLock<Settings>,
    processes: Mutex<process::Table>,
    watchers: watch::Watchers,
    cpu: info::CpuSampler,
}

impl Agent {
    pub(crate) fn new(mode: Mode, etc: PathBuf, reaper: Reaper, default_user: String) -> Self {
        Agent {
            mode,
            etc,
            reaper,
            settings: RwLock::new(Settings {
                env: HashMap::new(),
                default_user,
                default_workdir: None,
                access_token: None,
            }),
            processes: Mutex::default(),
            watchers: watch::Watchers::default(),
            cpu: info::CpuSampler::default(),
        }
    }

    fn settings(&self) -> Settings {
        self.settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn processes(&self) -> MutexGuard<'_, process::Table> {
        self.processes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The agent's routes.
pub(crate) fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/init", post(init))
        .merge(process::routes())
        .merge(filesystem::routes())
        .merge(watch::routes())
        .merge(info::routes())
        .layer(middleware::from_fn_with_state(agent.clone(), require_token))
        // `/files` takes the token or a signed URL itself; health stays
        // reachable without the token.
        .merge(files::routes())
        .route("/health", get(|| async { StatusCode::NO_CONTENT }))
        .with_state(agent)
}

/// Serves the agent on `listener` until the process ends, over HTTP/1.1 or
/// HTTP/2 with prior knowledge (h2c), whichever the client speaks.
pub(crate) async fn serve(listener: TcpListener, agent: Arc<Agent>) -> io::Result<()> {
    axum::serve(listener, router(agent)).await
}

/// Once `/init` has set an access token, every route but `/health` and
/// `/files` needs it.
async fn require_token(State(agent): State<Arc<Agent>>, request: Request, next: Next) -> Response {
    let token = agent.settings().access_token;
    match token {
        Some(token) if !auth::has_token(request.headers(), &token) => {
            connect::unary_error(&ConnectError::new(
                Code::Unauthenticated,
                "Missing or wrong X-Access-Token header",
            ))
        }
        _ => next.run(request).await,
    }
}

#[derive(Debug, thiserror::Error)]
enum InitError {
    #[error("Malformed /init body")]
    Body(#[source] serde_json::Error),
    #[error("Invalid timestamp")]
    Clock(#[from] clock::ClockError),
    #[error("Invalid hostname")]
    Hostname(#[from] crate::cmdline::CmdlineError),
    #[error("Cannot apply the hostname")]
    Identity(#[from] identity::IdentityError),
    #[error("Invalid entropy: {0}")]
    BadEntropy(String),
    #[error("Cannot reseed the kernel random pool")]
    Reseed(#[source] io::Error),
    #[error(transparent)]
    Volume(#[from] crate::volumes::VolumeError),
}

/// Applies `/init`. Its answer, success or not, names the agent's envd
/// version, as envd's does, so the host can read what runs in the guest.
/// (A request without the access token is refused before it gets here.)
async fn init(State(agent): State<Arc<Agent>>, body: Bytes) -> Response {
    // Mounting a volume waits for its disk: not on an async thread.
    let mut response = tokio::task::spawn_blocking(move || init_response(&agent, &body))
        .await
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    response
        .headers_mut()
        .insert(ENVD_VERSION_HEADER, HeaderValue::from_static(ENVD_VERSION));
    response
}

fn init_response(agent: &Agent, body: &[u8]) -> Response {
    match apply_init(agent, body) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => {
            let message = crate::error_chain(&e);
            tracing::warn!("/init failed: {message}");
            let status = match e {
                InitError::Body(_) | InitError::Clock(clock::ClockError::Timestamp(_)) => {
                    StatusCode::BAD_REQUEST
                }
                InitError::Hostname(_)
                | InitError::BadEntropy(_)
                | InitError::Volume(crate::volumes::VolumeError::Relative(_)) => {
                    StatusCode::BAD_REQUEST
                }
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            let body = serde_json::json!({ "code": status.as_u16(), "message": message });
            (
                status,
                [(header::CONTENT_TYPE, CONTENT_TYPE_JSON)],
                body.to_string(),
            )
                .into_response()
        }
    }
}

fn apply_init(agent: &Agent, body: &[u8]) -> Result<(), InitError> {
    let request: InitRequest = if body.is_empty() {
        InitRequest::default()
    } else {
        serde_json::from_slice(body).map_err(InitError::Body)?
    };
    if let Some(timestamp) = &request.timestamp {
        let now = clock::parse_rfc3339(timestamp)?;
        if agent.mode == Mode::Guest {
            clock::set_realtime(now)?;
        }
    }
    if let Some(hostname) = &request.hostname {
        let hostname = crate::cmdline::parse_hostname(hostname)?;
        if agent.mode == Mode::Guest {
            identity::apply_hostname(&agent.etc, &hostname)?;
        }
    }
    if let Some(entropy) = &request.entropy {
        let seed = hearth_proto::connect::base64_decode(entropy)
            .filter(|s| !s.is_empty() && s.len() <= crate::entropy::MAX_SEED)
            .ok_or_else(|| {
                InitError::BadEntropy(format!(
                    "expected 1 to {} bytes of base64",
                    crate::entropy::MAX_SEED
                ))
            })?;
        if agent.mode == Mode::Guest {
            crate::entropy::reseed(&seed).map_err(InitError::Reseed)?;
        }
    }
    for disk in request.volume_disks.iter().flatten() {
        if agent.mode == Mode::Guest {
            crate::volumes::mount_disk(Path::new("/sys/block"), &disk.serial, &disk.path)?;
        }
    }
    let mut settings = agent
        .settings
        .write()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(env) = request.env_vars {
        settings.env.extend(env);
    }
    if let Some(user) = request.default_user.filter(|u| !u.is_empty()) {
        settings.default_user = user;
    }
    if let Some(dir) = request.default_workdir.filter(|d| !d.is_empty()) {
        settings.default_workdir = Some(PathBuf::from(dir));
    }
    if let Some(token) = request.access_token {
        settings.access_token = (!token.is_empty()).then_some(token);
    }
    tracing::info!("applied /init");
    Ok(())
}

/// The request's user: from the Basic header, else the default user.
fn request_user(headers: &HeaderMap, settings: &Settings) -> Result<String, ConnectError> {
    Ok(auth::basic_user(headers)?.unwrap_or_else(|| settings.default_user.clone()))
}
