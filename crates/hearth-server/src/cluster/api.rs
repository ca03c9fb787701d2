//! `hearth api`: a stateless API server in front of a cluster's nodes.
//!
//! Every request goes on to a node ([`super::forward`]), chosen by what it
//! is about:
//! - sandbox traffic (`E2b-Sandbox-Id`, or host `<port>-<id>.<domain>`)
//!   and `/sandboxes/{id}…`, `/v2/sandboxes/{id}…`: the node that runs the
//!   sandbox;
//! - `POST /sandboxes` and `POST /v2/sandboxes`: the node [`super::place`]
//!   picks;
//! - anything else (lists, keys, templates, events): any live node, all of
//!   which read the one catalog.
//!
//! A sandbox whose node is gone goes to a live node, which answers from the
//! catalog (it was reported lost). The node admin routes (`/nodes`) are
//! served here, with the cluster secret as `X-Admin-Token`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::{Secret, heard_from, place, takes_sandboxes};
use crate::error::ApiError;
use crate::manager::now_ms;
use crate::store::{NodeLoad, NodeStatus, Store};

/// The largest create request read to place it.
const CREATE_BODY_LIMIT: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct ApiOptions {
    pub listen: SocketAddr,
    /// Domain of sandbox host names (`<port>-<id>.<domain>`), as the nodes
    /// have it.
    pub domain: Option<String>,
    pub secret: Secret,
}

struct Front {
    store: Arc<Store>,
    domain: Option<String>,
    secret: Secret,
}

/// Serves until `shutdown` resolves; marks silent nodes unhealthy
/// meanwhile. `ready` learns where it listens.
pub async fn serve(
    store: Arc<Store>,
    options: ApiOptions,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(options.listen).await?;
    let front = Arc::new(Front {
        store: Arc::clone(&store),
        domain: options.domain,
        secret: options.secret,
    });
    let app = Router::new()
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/nodes", get(list_nodes))
        .route("/nodes/{id}", get(node_detail).post(set_status))
        .fallback(route)
        .with_state(front);
    ready(listener.local_addr()?);
    let watcher = tokio::spawn(super::watch_nodes(store));
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    watcher.abort();
    Ok(served?)
}

/// What a request is about, for routing.
#[derive(Debug, PartialEq, Eq)]
enum Destination {
    /// The node of this sandbox.
    Sandbox(String),
    /// A node chosen for a new sandbox.
    Create,
    /// Any live node.
    Any,
}

fn destination(request: &Request, domain: Option<&str>) -> Result<Destination, ApiError> {
    if let Some(target) = crate::proxy::target(request, domain)? {
        return Ok(Destination::Sandbox(target.sandbox));
    }
    let path = request.uri().path();
    // E2B's create, and the SDKs' (v2).
    if request.method() == Method::POST
        && matches!(path.trim_end_matches('/'), "/sandboxes" | "/v2/sandboxes")
    {
        return Ok(Destination::Create);
    }
    let rest = path
        .strip_prefix("/v2/sandboxes/")
        .or_else(|| path.strip_prefix("/sandboxes/"));
    match rest
        .and_then(|r| r.split('/').next())
        .filter(|id| !id.is_empty())
    {
        Some(id) => Ok(Destination::Sandbox(id.to_owned())),
        None => Ok(Destination::Any),
    }
}

async fn route(State(front): State<Arc<Front>>, request: Request) -> Response {
    match forward(&front, request).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn nodes(front: &Front) -> Result<Vec<NodeLoad>, ApiError> {
    let store = Arc::clone(&front.store);
    Ok(tokio::task::spawn_blocking(move || store.nodes())
        .await
        .map_err(|e| ApiError::internal(format!("reading the nodes: {e}")))??)
}

async fn forward(front: &Front, request: Request) -> Result<Response, ApiError> {
    match destination(&request, front.domain.as_deref())? {
        Destination::Sandbox(id) => {
            let store = Arc::clone(&front.store);
            let lookup = id.clone();
            let found = tokio::task::spawn_blocking(move || store.sandbox_node(&lookup))
                .await
                .map_err(|e| ApiError::internal(format!("finding a sandbox's node: {e}")))??;
            let address = match found {
                Some(node) if node.status != NodeStatus::Unhealthy => node.address,
                // Unknown here, or its node is gone: a live node answers
                // from the catalog.
                _ => any_live(&nodes(front).await?)?.node.address.clone(),
            };
            super::forward::to_node(&address, &front.secret, request).await
        }
        Destination::Create => {
            let (parts, body) = request.into_parts();
            let bytes = axum::body::to_bytes(body, CREATE_BODY_LIMIT)
                .await
                .map_err(|e| ApiError::bad_request(format!("reading the request: {e}")))?;
            let template = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| {
                    v.get("templateID")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| "base".to_owned());
            let nodes = nodes(front).await?;
            let node = place(&nodes, &template, now_ms(), random_below).ok_or_else(|| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no node takes sandboxes: none is ready, heartbeating and with a free slot",
                )
            })?;
            let request = Request::from_parts(parts, Body::from(bytes));
            super::forward::to_node(&node.node.address, &front.secret, request).await
        }
        Destination::Any => {
            let nodes = nodes(front).await?;
            let node = any_live(&nodes)?;
            super::forward::to_node(&node.node.address, &front.secret, request).await
        }
    }
}

/// A node that heartbeats (ready or draining), the least loaded first.
fn any_live(nodes: &[NodeLoad]) -> Result<&NodeLoad, ApiError> {
    let now = now_ms();
    nodes
        .iter()
        .filter(|n| n.node.status != NodeStatus::Unhealthy && heard_from(&n.node, now))
        .min_by(|a, b| super::load(a).total_cmp(&super::load(b)))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no node is live: start `hearth node` on a machine of the cluster",
            )
        })
}

fn random_below(n: usize) -> usize {
    let random = crate::keys::random_hex::<8>()
        .ok()
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .unwrap_or(0);
    usize::try_from(random % u64::try_from(n.max(1)).unwrap_or(1)).unwrap_or(0)
}

// E2B's node admin routes.

fn check_admin(front: &Front, headers: &HeaderMap) -> Result<(), ApiError> {
    let offered = headers.get("x-admin-token").map(|v| v.as_bytes());
    if offered.is_some_and(|o| front.secret.matches(o)) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the node routes need X-Admin-Token: the cluster secret",
        ))
    }
}

/// A node as E2B's `Node` shows it, plus what Hearth knows besides.
fn node_json(load: &NodeLoad, now: i64) -> Value {
    let node = &load.node;
    // A node that stopped heartbeating but is not marked yet reads as
    // connecting, E2B's word for a node not (or no longer) in contact.
    let status = match node.status {
        NodeStatus::Unhealthy => "unhealthy",
        _ if !heard_from(node, now) => "connecting",
        other => other.as_str(),
    };
    json!({
        "id": node.node_id,
        "serviceInstanceID": node.node_id,
        "clusterID": "00000000-0000-0000-0000-000000000000",
        "status": status,
        "sandboxCount": load.sandboxes,
        "sandboxStartingCount": 0,
        "createSuccesses": 0,
        "createFails": 0,
        "version": node.version,
        "commit": "",
        "machineInfo": {
            "cpuFamily": "",
            "cpuModel": "",
            "cpuModelName": "",
            "cpuArchitecture": std::env::consts::ARCH,
        },
        "metrics": {
            "allocatedCPU": load.allocated_vcpus,
            "allocatedMemoryBytes": load.allocated_memory_mb.saturating_mul(1 << 20),
            "cpuPercent": 0,
            "memoryUsedBytes": 0,
            "cpuCount": node.capacity.vcpus,
            "memoryTotalBytes": node.capacity.memory_mb.saturating_mul(1 << 20),
            "disks": [],
        },
        "address": node.address,
        "slots": node.capacity.slots,
        "slotsUsed": node.slots_used,
        "diskFreeMB": node.capacity.disk_free_mb,
        "templates": node.templates,
        "takesSandboxes": takes_sandboxes(load, now),
        "heartbeatAt": crate::manager::rfc3339_ms(node.heartbeat_at_ms),
        "startedAt": crate::manager::rfc3339_ms(node.started_at_ms),
    })
}

async fn list_nodes(
    State(front): State<Arc<Front>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    check_admin(&front, &headers)?;
    let nodes = nodes(&front).await?;
    let now = now_ms();
    Ok(Json(Value::Array(
        nodes.iter().map(|n| node_json(n, now)).collect(),
    )))
}

async fn node_detail(
    State(front): State<Arc<Front>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    check_admin(&front, &headers)?;
    let store = Arc::clone(&front.store);
    let lookup = id.clone();
    let node = tokio::task::spawn_blocking(move || store.node(&lookup))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??
        .ok_or_else(|| ApiError::not_found(format!("node {id} not found")))?;
    let mut detail = node_json(&node, now_ms());
    detail["cachedBuilds"] = json!(node.node.templates);
    Ok(Json(detail))
}

#[derive(Deserialize)]
struct StatusChange {
    status: String,
}

async fn set_status(
    State(front): State<Arc<Front>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(change): Json<StatusChange>,
) -> Result<StatusCode, ApiError> {
    check_admin(&front, &headers)?;
    let status = match change.status.as_str() {
        "ready" => NodeStatus::Ready,
        "draining" => NodeStatus::Draining,
        other => {
            return Err(ApiError::bad_request(format!(
                "a node's status can be set to ready or draining, not {other:?}"
            )));
        }
    };
    let store = Arc::clone(&front.store);
    let lookup = id.clone();
    let found = tokio::task::spawn_blocking(move || store.set_node_status(&lookup, status))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    if !found {
        return Err(ApiError::not_found(format!("node {id} not found")));
    }
    tracing::info!(node = id, status = status.as_str(), "node status set");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, uri: &str, host: Option<&str>) -> Request {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(host) = host {
            builder = builder.header("host", host);
        }
        builder.body(Body::empty()).unwrap()
    }

    #[test]
    fn requests_go_to_the_node_of_what_they_are_about() {
        let d = |method, uri, host| {
            destination(&request(method, uri, host), Some("hearth.test")).unwrap()
        };
        let sandbox = |id: &str| Destination::Sandbox(id.to_owned());
        assert_eq!(d(Method::POST, "/sandboxes", None), Destination::Create);
        assert_eq!(d(Method::POST, "/v2/sandboxes", None), Destination::Create);
        assert_eq!(d(Method::GET, "/sandboxes", None), Destination::Any);
        assert_eq!(
            d(Method::GET, "/v2/sandboxes?limit=5", None),
            Destination::Any
        );
        assert_eq!(d(Method::GET, "/sandboxes/abc", None), sandbox("abc"));
        assert_eq!(d(Method::DELETE, "/sandboxes/abc", None), sandbox("abc"));
        assert_eq!(
            d(Method::POST, "/sandboxes/abc/timeout", None),
            sandbox("abc")
        );
        assert_eq!(
            d(Method::GET, "/v2/sandboxes/abc/logs", None),
            sandbox("abc")
        );
        assert_eq!(d(Method::GET, "/templates", None), Destination::Any);
        assert_eq!(
            d(
                Method::POST,
                "/process.Process/Start",
                Some("49983-xyz.hearth.test")
            ),
            sandbox("xyz")
        );
        let headers = Request::builder()
            .uri("/files")
            .header("E2b-Sandbox-Id", "hdr")
            .body(Body::empty())
            .unwrap();
        assert_eq!(destination(&headers, None).unwrap(), sandbox("hdr"));
    }
}
