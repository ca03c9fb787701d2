//! Cluster mode: several nodes and API servers on one PostgreSQL catalog.
//!
//! A node (`hearth node`) is a whole server (the node core, its manager,
//! the E2B API and the sandbox proxy) whose store is scoped to it: it
//! records the sandboxes it starts as its own, and times out, adopts and
//! reconciles only those. It registers in the catalog's `nodes` table with
//! its capacity, heartbeats every [`HEARTBEAT`], and answers only requests
//! that carry the cluster secret ([`require_secret`]).
//!
//! An API server (`hearth api`, [`api`]) holds no state: it places each
//! create on a node ([`place`]), sends every request about a sandbox to the
//! node that runs it, the rest to any ready node, serves E2B's node admin
//! routes, and marks nodes that stop heartbeating unhealthy.

pub mod api;
mod forward;
pub mod templates;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::manager::{Manager, now_ms};
use crate::store::{Capacity, NodeLoad, NodeRecord, NodeStatus, Store};

/// How often a node tells the catalog it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A node whose last heartbeat is older than this is unhealthy: three
/// missed beats.
pub const UNHEALTHY_AFTER: Duration = Duration::from_secs(6);
/// How often API servers look for silent nodes.
pub const DEAD_NODE_TICK: Duration = Duration::from_secs(1);

/// The header that carries the cluster secret from API servers to nodes.
pub const SECRET_HEADER: &str = "x-hearth-cluster-secret";

/// What makes a server a cluster node.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// Its name in the catalog (default: the host name).
    pub node_id: String,
    /// `host:port` where API servers reach its API; by default the
    /// address it listens on.
    pub advertise: Option<String>,
    /// What API servers send in [`SECRET_HEADER`].
    pub secret: Secret,
}

/// The cluster secret, never printed.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// A secret of at least 16 characters.
    pub fn new(text: String) -> Result<Self, String> {
        if text.chars().count() < 16 {
            return Err("the cluster secret must be at least 16 characters long".into());
        }
        Ok(Self(text))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `offered` is the secret, compared in time that does not
    /// depend on where they differ.
    pub fn matches(&self, offered: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        offered.len() == expected.len()
            && offered
                .iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// A node answers only API servers: every request but `/health` carries
/// the cluster secret.
pub async fn require_secret(
    State(secret): State<Secret>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == "/health" {
        return next.run(request).await;
    }
    let offered = request
        .headers()
        .get(SECRET_HEADER)
        .map(axum::http::HeaderValue::as_bytes);
    if offered.is_some_and(|o| secret.matches(o)) {
        return next.run(request).await;
    }
    ApiError::new(
        StatusCode::FORBIDDEN,
        "this is a cluster node: it answers only its API servers (the cluster secret is missing or wrong)",
    )
    .into_response()
}

/// What this machine can hold: its CPUs, its memory, the node's slots and
/// the free space of its data directory.
pub fn capacity(node: &hearth_node::Node) -> Capacity {
    let vcpus = std::thread::available_parallelism()
        .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
    let memory_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024);
    let disk_free_mb = nix::sys::statvfs::statvfs(node.layout().data_dir()).map_or(0, |fs| {
        fs.blocks_available() * fs.fragment_size() / (1 << 20)
    });
    Capacity {
        vcpus,
        memory_mb,
        slots: node.slot_capacity(),
        disk_free_mb,
    }
}

/// What a node says about itself at registration.
pub fn node_record(
    identity: &NodeIdentity,
    address: &str,
    capacity: Capacity,
    slots_used: u32,
    templates: Vec<String>,
) -> NodeRecord {
    let now = now_ms();
    NodeRecord {
        node_id: identity.node_id.clone(),
        address: address.to_owned(),
        status: NodeStatus::Ready,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        capacity,
        slots_used,
        templates,
        started_at_ms: now,
        heartbeat_at_ms: now,
    }
}

/// Registers the node, then heartbeats until aborted. At each beat it
/// also kills the sandboxes it still runs that the catalog says have
/// stopped (those an API server reported lost while this node was silent).
pub async fn heartbeat(
    manager: Arc<Manager>,
    identity: NodeIdentity,
    address: String,
    capacity: Capacity,
) {
    let mut registered = false;
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let store = Arc::clone(manager.store_arc());
        let slots_used = manager.node().slots_in_use();
        let node = Arc::clone(manager.node());
        let templates = tokio::task::spawn_blocking(move || {
            node.templates()
                .map(|t| t.into_iter().map(|t| t.name).collect::<Vec<_>>())
        })
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
        let beat = if registered {
            store.heartbeat(&identity.node_id, slots_used, &templates, now_ms())
        } else {
            Ok(None)
        };
        match beat {
            Ok(Some(_)) => {}
            Ok(None) => {
                let record = node_record(&identity, &address, capacity, slots_used, templates);
                match store.register_node(&record) {
                    Ok(()) => {
                        registered = true;
                        tracing::info!(
                            node = identity.node_id,
                            address,
                            "registered in the catalog"
                        );
                    }
                    Err(e) => tracing::warn!("registering the node: {e}"),
                }
            }
            Err(e) => tracing::warn!("heartbeat: {e}"),
        }
        manager.kill_stopped_elsewhere().await;
    }
}

/// Marks silent nodes unhealthy, until aborted.
pub async fn watch_nodes(store: Arc<Store>) {
    let mut tick = tokio::time::interval(DEAD_NODE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = now_ms();
        match store.mark_dead_nodes(now - unhealthy_after_ms(), now) {
            Ok(marked) => {
                for (node, lost) in marked {
                    tracing::warn!(
                        node,
                        lost = lost.len(),
                        "node stopped heartbeating: marked unhealthy, its running sandboxes reported lost"
                    );
                }
            }
            Err(e) => tracing::warn!("looking for silent nodes: {e}"),
        }
    }
}

fn unhealthy_after_ms() -> i64 {
    i64::try_from(UNHEALTHY_AFTER.as_millis()).unwrap_or(i64::MAX)
}

/// Whether a node that last heartbeated at `heartbeat_at_ms` did so within
/// [`UNHEALTHY_AFTER`] before `now_ms`: the one rule placement, routing,
/// the node list and template fetches share.
fn heard_from(heartbeat_at_ms: i64, now_ms: i64) -> bool {
    now_ms - heartbeat_at_ms < unhealthy_after_ms()
}

/// Whether a node of `status` that last heartbeated at `heartbeat_at_ms`
/// is live at `now_ms` (ready or draining, and heard from): the nodes that
/// answer requests and serve their templates.
fn is_live(status: NodeStatus, heartbeat_at_ms: i64, now_ms: i64) -> bool {
    status != NodeStatus::Unhealthy && heard_from(heartbeat_at_ms, now_ms)
}

/// Whether `node` may take a new sandbox at `now_ms`: ready, heard from
/// recently, and with a free slot.
fn takes_sandboxes(node: &NodeLoad, now_ms: i64) -> bool {
    node.node.status == NodeStatus::Ready
        && heard_from(node.node.heartbeat_at_ms, now_ms)
        && node.node.slots_used.max(node.sandboxes) < node.node.capacity.slots
}

/// How full a node is: its running sandboxes per slot.
fn load(node: &NodeLoad) -> f64 {
    f64::from(node.sandboxes) / f64::from(node.node.capacity.slots.max(1))
}

/// Where a sandbox of `template` goes: of the nodes that take sandboxes
/// and have the template (else of those that take sandboxes at all), the
/// less loaded of two picked at random ("the power of two choices": close
/// to least loaded, without every API server piling onto the same node).
/// `pick(n)` returns a random index below `n`.
pub fn place<'a>(
    nodes: &'a [NodeLoad],
    template: &str,
    now_ms: i64,
    mut pick: impl FnMut(usize) -> usize,
) -> Option<&'a NodeLoad> {
    let name = template.split_once(':').map_or(template, |(name, _)| name);
    let open: Vec<&NodeLoad> = nodes
        .iter()
        .filter(|n| takes_sandboxes(n, now_ms))
        .collect();
    let with_template: Vec<&NodeLoad> = open
        .iter()
        .copied()
        .filter(|n| n.node.templates.iter().any(|t| t == name))
        .collect();
    let candidates = if with_template.is_empty() {
        open
    } else {
        with_template
    };
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        n => {
            let a = pick(n);
            let mut b = pick(n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (candidates[a], candidates[b]);
            Some(if load(b) < load(a) { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, sandboxes: u32, slots: u32, templates: &[&str]) -> NodeLoad {
        NodeLoad {
            node: NodeRecord {
                node_id: id.into(),
                address: format!("{id}:3001"),
                status: NodeStatus::Ready,
                version: "0".into(),
                capacity: Capacity {
                    vcpus: 2,
                    memory_mb: 1024,
                    slots,
                    disk_free_mb: 1,
                },
                slots_used: sandboxes,
                templates: templates.iter().map(|t| (*t).to_owned()).collect(),
                started_at_ms: 0,
                heartbeat_at_ms: 1_000,
            },
            sandboxes,
            allocated_vcpus: 0,
            allocated_memory_mb: 0,
        }
    }

    #[test]
    fn the_less_loaded_of_two_takes_the_sandbox() {
        let nodes = [
            node("a", 5, 10, &["base"]),
            node("b", 1, 10, &["base"]),
            node("c", 9, 10, &["base"]),
        ];
        // Picks a and b: b is less loaded.
        let mut picks = [0, 0].into_iter();
        let chosen = place(&nodes, "base", 2_000, |_| picks.next().unwrap()).unwrap();
        assert_eq!(chosen.node.node_id, "b");
        // Picks c and a (the second index skips the first): a.
        let mut picks = [2, 0].into_iter();
        let chosen = place(&nodes, "base", 2_000, |_| picks.next().unwrap()).unwrap();
        assert_eq!(chosen.node.node_id, "a");
    }

    #[test]
    fn only_ready_fresh_nodes_with_room_and_the_template_are_chosen() {
        let mut draining = node("draining", 0, 10, &["base"]);
        draining.node.status = NodeStatus::Draining;
        let mut silent = node("silent", 0, 10, &["base"]);
        silent.node.heartbeat_at_ms = -10_000;
        let full = node("full", 10, 10, &["base"]);
        let other = node("other", 0, 10, &["app"]);
        let good = node("good", 3, 10, &["base"]);
        let nodes = [draining, silent, full, other, good];
        let chosen = place(&nodes, "base:latest", 2_000, |_| 0).unwrap();
        assert_eq!(chosen.node.node_id, "good");
        // No node has it: any node that takes sandboxes (it answers 404).
        let chosen = place(&nodes, "nosuch", 2_000, |n| n - 1).unwrap();
        assert!(["other", "good"].contains(&chosen.node.node_id.as_str()));
        assert!(place(&nodes[..3], "base", 2_000, |_| 0).is_none());
    }

    #[test]
    fn the_secret_is_long_and_compared_whole() {
        assert!(Secret::new("short".into()).is_err());
        let secret = Secret::new("0123456789abcdef".into()).unwrap();
        assert!(secret.matches(b"0123456789abcdef"));
        assert!(!secret.matches(b"0123456789abcdeF"));
        assert!(!secret.matches(b"0123456789abcde"));
        assert_eq!(format!("{secret:?}"), "Secret(…)");
    }
}
