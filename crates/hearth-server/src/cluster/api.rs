//! `hearth api`: a stateless API server in front of a cluster's nodes.
//!
//! Every request goes on to a node ([`super::forward`]), chosen by what it
//! is about:
//! - sandbox traffic (`E2b-Sandbox-Id`, or host `<port>-<id>.<domain>`)
//!   and `/sandboxes/{id}…`, `/v2/sandboxes/{id}…`: the node that runs the
//!   sandbox;
//! - `POST /sandboxes` and `POST /v2/sandboxes`: the node [`super::place`]
//!   picks;
//! - a template's routes (`/templates/{id}…`, `/v2/templates/{id}…`, and a
//!   new build of it): the node that ran its newest build, which holds
//!   the build's uploads and upload grants; a template's first build goes
//!   to any live node;
//! - the list of templates: every live node, each of which lists the
//!   templates it holds; merged here;
//! - a volume's routes (`/volumes/{id}…`), and a create that mounts
//!   volumes: the node that keeps them;
//! - anything else (lists, keys, events): any live node, all of which read
//!   the one catalog.
//!
//! A sandbox or template whose node is gone goes to a live node, which
//! answers from the catalog (a sandbox there was reported lost). The node
//! admin routes (`/nodes`) are served here, with the cluster secret as
//! `X-Admin-Token`; the nodes' own routes (`/cluster/…`) are not.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::forward::NodeConnections;
use super::{Secret, heard_from, is_live, place, takes_sandboxes};
use crate::error::ApiError;
use crate::manager::now_ms;
use crate::store::{NodeLoad, NodeStatus, SandboxNode, Store};

/// The largest create request (of a sandbox or a template build) read to
/// route it.
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
    connections: NodeConnections,
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
        connections: NodeConnections::default(),
    });
    let app = Router::new()
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/nodes", get(list_nodes))
        .route("/nodes/{id}", get(node_detail).post(set_status))
        .fallback(route)
        .with_state(front);
    ready(listener.local_addr()?);
    let watcher = tokio::spawn(super::watch_nodes(store));
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
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
    /// The node of this template.
    Template(String),
    /// A new build of the template its body names.
    NewBuild,
    /// The list of templates: every live node's, merged.
    TemplateList,
    /// The node that keeps this volume.
    Volume(String),
    /// Any live node.
    Any,
}

fn destination(request: &Request, domain: Option<&str>) -> Result<Destination, ApiError> {
    if let Some(target) = crate::proxy::target(request, domain)? {
        return Ok(Destination::Sandbox(target.sandbox));
    }
    let path = request.uri().path();
    if path == "/cluster" || path.starts_with("/cluster/") {
        return Err(ApiError::not_found(
            "the nodes' own routes are not served to clients",
        ));
    }
    let first_segment = |prefixes: &[&str]| {
        prefixes
            .iter()
            .find_map(|p| path.strip_prefix(p))
            .and_then(|rest| rest.split('/').next())
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
    };
    if request.method() == Method::POST {
        match path.trim_end_matches('/') {
            // E2B's create, and the SDKs' (v2).
            "/sandboxes" | "/v2/sandboxes" => return Ok(Destination::Create),
            "/templates" | "/v2/templates" | "/v3/templates" => {
                return Ok(Destination::NewBuild);
            }
            _ => {}
        }
    }
    if request.method() == Method::GET
        && matches!(path.trim_end_matches('/'), "/templates" | "/v2/templates")
    {
        return Ok(Destination::TemplateList);
    }
    if let Some(id) = first_segment(&["/v2/sandboxes/", "/sandboxes/"]) {
        return Ok(Destination::Sandbox(id));
    }
    if let Some(id) = first_segment(&["/volumes/"]) {
        return Ok(Destination::Volume(id));
    }
    match first_segment(&["/v2/templates/", "/templates/"]) {
        // Routes about all templates' aliases and tags read the catalog.
        Some(id) if id != "aliases" && id != "tags" => Ok(Destination::Template(id)),
        _ => Ok(Destination::Any),
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

/// Reads a create request's body, to route it by what it asks for.
async fn read_body(
    request: Request,
) -> Result<(axum::http::request::Parts, Bytes, Value), ApiError> {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, CREATE_BODY_LIMIT)
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request: {e}")))?;
    let json = serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null);
    Ok((parts, bytes, json))
}

/// The node `lookup` finds in the catalog, if it is not unhealthy; else
/// any live node.
async fn located_or_any(
    front: &Front,
    lookup: impl FnOnce(&Store) -> Result<Option<SandboxNode>, crate::store::StoreError>
    + Send
    + 'static,
) -> Result<String, ApiError> {
    let store = Arc::clone(&front.store);
    let found = tokio::task::spawn_blocking(move || lookup(&store))
        .await
        .map_err(|e| ApiError::internal(format!("finding a node: {e}")))??;
    Ok(match found {
        Some(node) if node.status != NodeStatus::Unhealthy => node.address,
        _ => any_live(&nodes(front).await?)?.node.address.clone(),
    })
}

/// The node that keeps the volumes a create's `volumeMounts` name, if any
/// is known; refused when they are on different nodes.
async fn volumes_node(front: &Front, create: &Value) -> Result<Option<String>, ApiError> {
    let names: Vec<String> = create
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect();
    if names.is_empty() {
        return Ok(None);
    }
    let store = Arc::clone(&front.store);
    let kept = tokio::task::spawn_blocking(move || {
        names
            .into_iter()
            .map(|name| Ok((store.volume_node(&name)?.map(|n| n.node_id), name)))
            .collect::<Result<Vec<_>, crate::store::StoreError>>()
    })
    .await
    .map_err(|e| ApiError::internal(format!("finding the volumes' node: {e}")))??;
    let mut keepers = kept
        .iter()
        .filter_map(|(node, name)| Some((node.as_ref()?, name)));
    let Some((first, first_name)) = keepers.next() else {
        return Ok(None); // Unknown volumes: the node says so.
    };
    if let Some((other, name)) = keepers.find(|(node, _)| *node != first) {
        return Err(ApiError::bad_request(format!(
            "volume {first_name} is on node {first} and volume {name} on node {other}: a \
             sandbox mounts volumes of one node"
        )));
    }
    Ok(Some(first.clone()))
}

async fn forward(front: &Front, request: Request) -> Result<Response, ApiError> {
    let (address, request) = match destination(&request, front.domain.as_deref())? {
        // Unknown here, or its node is gone: a live node answers from the
        // catalog.
        Destination::Sandbox(id) => (
            located_or_any(front, move |store| store.sandbox_node(&id)).await?,
            request,
        ),
        Destination::Template(id) => (
            located_or_any(front, move |store| store.template_node(&id)).await?,
            request,
        ),
        Destination::NewBuild => {
            let (parts, bytes, json) = read_body(request).await?;
            // v3 names it `name` (maybe `name:tag`), v1 and v2 `alias`.
            let name = ["name", "alias"]
                .iter()
                .find_map(|k| json.get(k).and_then(Value::as_str))
                .map(|n| n.split_once(':').map_or(n, |(name, _)| name).to_owned());
            let address = match name {
                Some(name) => {
                    located_or_any(front, move |store| store.template_node(&name)).await?
                }
                None => any_live(&nodes(front).await?)?.node.address.clone(),
            };
            (address, Request::from_parts(parts, Body::from(bytes)))
        }
        Destination::Create => {
            let (parts, bytes, json) = read_body(request).await?;
            let template = json
                .get("templateID")
                .and_then(Value::as_str)
                .unwrap_or("base");
            let nodes = nodes(front).await?;
            let address = match volumes_node(front, &json).await? {
                // A sandbox that mounts volumes runs where they are.
                Some(keeper) => {
                    let node = nodes
                        .iter()
                        .find(|n| n.node.node_id == keeper)
                        .filter(|n| takes_sandboxes(n, now_ms()))
                        .ok_or_else(|| {
                            ApiError::new(
                                StatusCode::SERVICE_UNAVAILABLE,
                                format!(
                                    "the volumes are on node {keeper}, which takes no sandboxes \
                                     now (draining, full or not heartbeating)"
                                ),
                            )
                        })?;
                    node.node.address.clone()
                }
                None => place(&nodes, template, now_ms(), random_below)
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "no node takes sandboxes: none is ready, heartbeating and with a free \
                             slot",
                        )
                    })?
                    .node
                    .address
                    .clone(),
            };
            (address, Request::from_parts(parts, Body::from(bytes)))
        }
        Destination::Volume(id) => (
            located_or_any(front, move |store| store.volume_node(&id)).await?,
            request,
        ),
        Destination::TemplateList => return template_list(front, request).await,
        Destination::Any => (
            any_live(&nodes(front).await?)?.node.address.clone(),
            request,
        ),
    };
    front
        .connections
        .to_node(&address, &front.secret, request)
        .await
}

/// The largest list of templates read from one node.
const LIST_BODY_LIMIT: usize = 16 << 20;

/// `GET /templates` (or `/v2/templates`) of every live node, merged: each
/// template once, as the node with its newest build shows it. A node's
/// refusal (a bad key) is the answer.
async fn template_list(front: &Front, request: Request) -> Result<Response, ApiError> {
    let nodes = nodes(front).await?;
    let live = live(&nodes);
    if live.is_empty() {
        return Err(no_live_node());
    }
    let (parts, _) = request.into_parts();
    let asks = live.iter().map(|node| {
        let mut copy = Request::builder()
            .method(parts.method.clone())
            .uri(parts.uri.clone())
            .body(Body::empty())
            .expect("a copy of a valid request");
        *copy.headers_mut() = parts.headers.clone();
        front
            .connections
            .to_node(&node.node.address, &front.secret, copy)
    });
    let mut merged: Vec<Value> = Vec::new();
    for answer in futures_util::future::join_all(asks).await {
        let answer = answer?;
        if answer.status() != StatusCode::OK {
            return Ok(answer);
        }
        let bytes = axum::body::to_bytes(answer.into_body(), LIST_BODY_LIMIT)
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::BAD_GATEWAY, format!("a node's templates: {e}"))
            })?;
        let Ok(Value::Array(templates)) = serde_json::from_slice::<Value>(&bytes) else {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "a node's list of templates is not a JSON array",
            ));
        };
        merge_templates(&mut merged, templates);
    }
    Ok(Json(Value::Array(merged)).into_response())
}

/// Adds `more` to `merged`: a template already there is replaced by a
/// newer build of it (`updatedAt`, RFC 3339 in UTC, compares as text).
fn merge_templates(merged: &mut Vec<Value>, more: Vec<Value>) {
    for template in more {
        let id = template.get("templateID").cloned();
        match merged
            .iter_mut()
            .find(|t| t.get("templateID") == id.as_ref())
        {
            Some(known) => {
                let updated = |t: &Value| {
                    t.get("updatedAt")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                };
                if updated(&template) > updated(known) {
                    *known = template;
                }
            }
            None => merged.push(template),
        }
    }
}

/// A node that heartbeats (ready or draining), the least loaded first.
fn any_live(nodes: &[NodeLoad]) -> Result<&NodeLoad, ApiError> {
    live(nodes)
        .into_iter()
        .min_by(|a, b| super::load(a).total_cmp(&super::load(b)))
        .ok_or_else(no_live_node)
}

/// The nodes that heartbeat (ready or draining).
fn live(nodes: &[NodeLoad]) -> Vec<&NodeLoad> {
    let now = now_ms();
    nodes
        .iter()
        .filter(|n| is_live(n.node.status, n.node.heartbeat_at_ms, now))
        .collect()
}

fn no_live_node() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no node is live: start `hearth node` on a machine of the cluster",
    )
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
        _ if !heard_from(node.heartbeat_at_ms, now) => "connecting",
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

    #[test]
    fn template_lists_merge_to_the_newest_build_of_each() {
        let t = |id: &str, updated: &str| json!({ "templateID": id, "updatedAt": updated });
        let mut merged = Vec::new();
        merge_templates(
            &mut merged,
            vec![
                t("base", "2026-12-01T10:00:00.000Z"),
                t("app", "2026-12-02T10:00:00.000Z"),
            ],
        );
        merge_templates(
            &mut merged,
            vec![
                t("base", "2026-12-01T09:00:00.000Z"),
                t("app", "2026-12-02T11:00:00.000Z"),
                t("web", "2026-12-02T08:00:00.000Z"),
            ],
        );
        assert_eq!(
            merged,
            [
                t("base", "2026-12-01T10:00:00.000Z"),
                t("app", "2026-12-02T11:00:00.000Z"),
                t("web", "2026-12-02T08:00:00.000Z"),
            ]
        );
    }

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
        assert_eq!(
            d(Method::GET, "/templates", None),
            Destination::TemplateList
        );
        assert_eq!(
            d(Method::GET, "/v2/templates", None),
            Destination::TemplateList
        );
        let template = |id: &str| Destination::Template(id.to_owned());
        assert_eq!(
            d(Method::POST, "/v3/templates", None),
            Destination::NewBuild
        );
        assert_eq!(d(Method::POST, "/templates", None), Destination::NewBuild);
        assert_eq!(d(Method::GET, "/templates/app", None), template("app"));
        assert_eq!(
            d(Method::GET, "/templates/app/files/abc", None),
            template("app")
        );
        assert_eq!(
            d(Method::POST, "/v2/templates/app/builds/b1", None),
            template("app")
        );
        assert_eq!(
            d(Method::GET, "/templates/app/builds/b1/status", None),
            template("app")
        );
        assert_eq!(d(Method::DELETE, "/templates/app", None), template("app"));
        assert_eq!(d(Method::POST, "/templates/tags", None), Destination::Any);
        assert_eq!(
            d(Method::DELETE, "/volumes/data", None),
            Destination::Volume("data".into())
        );
        assert_eq!(d(Method::GET, "/volumes", None), Destination::Any);
        assert_eq!(d(Method::POST, "/volumes", None), Destination::Any);
        assert_eq!(
            d(Method::GET, "/templates/aliases/app", None),
            Destination::Any
        );
        let refused = destination(
            &request(Method::GET, "/cluster/builds/base/b/rootfs.ext4", None),
            None,
        )
        .unwrap_err();
        assert_eq!(refused.status, StatusCode::NOT_FOUND);
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
