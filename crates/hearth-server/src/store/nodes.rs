//! The nodes of a cluster: who they are, where their node API listens,
//! what they can hold, when they last said they were alive; and which
//! node runs each sandbox.

use serde::{Deserialize, Serialize};

use super::db::{DbError, OptionalExt, Row, params};
use super::{Store, StoreError};

/// Version 10: nodes, the node of each sandbox and template build, and
/// the process that took each webhook delivery to send.
pub(super) const SCHEMA_10: &str = "
CREATE TABLE nodes (
    node_id         TEXT PRIMARY KEY,
    address         TEXT NOT NULL,
    status          TEXT NOT NULL,
    version         TEXT NOT NULL,
    vcpus           INTEGER NOT NULL,
    memory_mb       INTEGER NOT NULL,
    slots           INTEGER NOT NULL,
    slots_used      INTEGER NOT NULL,
    disk_free_mb    INTEGER NOT NULL,
    templates       TEXT NOT NULL,
    started_at_ms   INTEGER NOT NULL,
    heartbeat_at_ms INTEGER NOT NULL
);
ALTER TABLE sandboxes ADD COLUMN node_id TEXT;
CREATE INDEX sandboxes_by_node ON sandboxes (node_id, state);
ALTER TABLE template_builds ADD COLUMN node_id TEXT;
ALTER TABLE webhook_deliveries ADD COLUMN claimed_by TEXT;
";

/// Version 11: the template builds each node holds, with the size and
/// SHA-256 of each of their files, for other nodes to fetch and check;
/// when each deleted template was deleted, for the nodes that hold copies
/// of it; and the node of each volume.
pub(super) const SCHEMA_11: &str = "
ALTER TABLE volumes ADD COLUMN node_id TEXT;
CREATE TABLE template_deletions (
    template      TEXT PRIMARY KEY,
    deleted_at_ms INTEGER NOT NULL
);
CREATE TABLE node_builds (
    node_id    TEXT NOT NULL,
    template   TEXT NOT NULL,
    build_id   TEXT NOT NULL,
    is_current INTEGER NOT NULL,
    files      TEXT NOT NULL,
    PRIMARY KEY (node_id, template, build_id)
);
CREATE INDEX node_builds_by_template ON node_builds (template, build_id);
";

const COLUMNS: &str = "node_id, address, status, version, vcpus, memory_mb, slots, slots_used, \
     disk_free_mb, templates, started_at_ms, heartbeat_at_ms";

/// Why a sandbox of a node that stopped heartbeating is reported stopped.
pub const NODE_LOST: &str = "node lost: it stopped heartbeating";

/// Where a node is in its life, as E2B's node API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Heartbeating; takes new sandboxes.
    Ready,
    /// Heartbeating; serves its sandboxes but takes no new ones.
    Draining,
    /// Missed its heartbeats: its running sandboxes are reported lost.
    Unhealthy,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Draining => "draining",
            Self::Unhealthy => "unhealthy",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "ready" => Some(Self::Ready),
            "draining" => Some(Self::Draining),
            "unhealthy" => Some(Self::Unhealthy),
            _ => None,
        }
    }
}

/// What a node can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capacity {
    pub vcpus: u32,
    pub memory_mb: u64,
    /// Sandboxes it may hold at once (pooled ones included).
    pub slots: u32,
    pub disk_free_mb: u64,
}

/// A node as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub node_id: String,
    /// `host:port` of its node API, as the API servers reach it.
    pub address: String,
    pub status: NodeStatus,
    /// The hearth version it runs.
    pub version: String,
    pub capacity: Capacity,
    /// Slots in use at its last heartbeat.
    pub slots_used: u32,
    /// The templates it can start sandboxes from, by name.
    pub templates: Vec<String>,
    pub started_at_ms: i64,
    pub heartbeat_at_ms: i64,
}

/// A node with the sandboxes the catalog says it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLoad {
    pub node: NodeRecord,
    /// Its running sandboxes.
    pub sandboxes: u32,
    /// Their vCPUs and memory together.
    pub allocated_vcpus: u64,
    pub allocated_memory_mb: u64,
}

/// The node a sandbox runs on, a template was built on, or a volume is
/// kept on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxNode {
    pub node_id: String,
    pub address: String,
    pub status: NodeStatus,
}

/// A file of a template build: its name in the build's directory, its
/// size and the SHA-256 of its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildFile {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// A template build a node holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBuild {
    pub template: String,
    /// The build's directory name on the node.
    pub build_id: String,
    /// Whether it is the build the node's new sandboxes of the template
    /// get.
    pub current: bool,
    pub files: Vec<BuildFile>,
}

/// A template build and a node that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldBuild {
    pub build: NodeBuild,
    pub node_id: String,
    pub address: String,
    pub status: NodeStatus,
    pub heartbeat_at_ms: i64,
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn read(row: &Row) -> Result<NodeRecord, DbError> {
    let status: String = row.get(2)?;
    let templates: String = row.get(9)?;
    Ok(NodeRecord {
        node_id: row.get(0)?,
        address: row.get(1)?,
        status: NodeStatus::parse(&status)
            .ok_or_else(|| DbError::Other(format!("unknown node status {status:?}")))?,
        version: row.get(3)?,
        capacity: Capacity {
            vcpus: row.get(4)?,
            memory_mb: u64::try_from(row.get::<i64>(5)?).unwrap_or(0),
            slots: row.get(6)?,
            disk_free_mb: u64::try_from(row.get::<i64>(8)?).unwrap_or(0),
        },
        slots_used: row.get(7)?,
        templates: serde_json::from_str(&templates)
            .map_err(|e| DbError::Other(format!("a node's templates: {e}")))?,
        started_at_ms: row.get(10)?,
        heartbeat_at_ms: row.get(11)?,
    })
}

impl Store {
    /// Records node `node` as started: new, or back after a restart. A
    /// node an operator drained stays draining; any other is ready.
    pub fn register_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        let templates = serde_json::to_string(&node.templates).expect("strings serialise");
        self.transact(|tx| {
            tx.execute(
                &format!(
                    "INSERT INTO nodes ({COLUMNS}) \
                     VALUES (?1, ?2, 'ready', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
                     ON CONFLICT (node_id) DO UPDATE SET address = excluded.address, \
                     status = CASE WHEN nodes.status = 'draining' THEN 'draining' \
                     ELSE 'ready' END, version = excluded.version, vcpus = excluded.vcpus, \
                     memory_mb = excluded.memory_mb, slots = excluded.slots, \
                     slots_used = excluded.slots_used, disk_free_mb = excluded.disk_free_mb, \
                     templates = excluded.templates, started_at_ms = excluded.started_at_ms, \
                     heartbeat_at_ms = excluded.heartbeat_at_ms"
                ),
                params![
                    node.node_id,
                    node.address,
                    node.version,
                    node.capacity.vcpus,
                    count(node.capacity.memory_mb),
                    node.capacity.slots,
                    node.slots_used,
                    count(node.capacity.disk_free_mb),
                    templates,
                    node.started_at_ms,
                    node.heartbeat_at_ms,
                ],
            )?;
            Ok(())
        })
    }

    /// Node `node_id` is alive at `now_ms`, with `slots_used` slots taken
    /// and `templates` at hand. A node marked unhealthy is ready again
    /// (its lost sandboxes stay lost). Returns its status, or `None` if
    /// the catalog does not know it (it must register).
    pub fn heartbeat(
        &self,
        node_id: &str,
        slots_used: u32,
        templates: &[String],
        now_ms: i64,
    ) -> Result<Option<NodeStatus>, StoreError> {
        let templates = serde_json::to_string(templates).expect("strings serialise");
        let status: Option<String> = self.with(|c| {
            c.query_row(
                "UPDATE nodes SET heartbeat_at_ms = ?2, slots_used = ?3, templates = ?4, \
                 status = CASE WHEN status = 'unhealthy' THEN 'ready' ELSE status END \
                 WHERE node_id = ?1 RETURNING status",
                params![node_id, now_ms, slots_used, templates],
                |r| r.get(0),
            )
            .optional()
        })?;
        Ok(status.as_deref().and_then(NodeStatus::parse))
    }

    /// Every node, by id.
    pub fn nodes(&self) -> Result<Vec<NodeLoad>, StoreError> {
        self.select_nodes("", params![])
    }

    /// Node `node_id`, if the catalog knows it.
    pub fn node(&self, node_id: &str) -> Result<Option<NodeLoad>, StoreError> {
        Ok(self
            .select_nodes(" WHERE n.node_id = ?1", params![node_id])?
            .pop())
    }

    fn select_nodes(
        &self,
        filter: &str,
        args: &[super::Value],
    ) -> Result<Vec<NodeLoad>, StoreError> {
        let columns = COLUMNS
            .split(", ")
            .map(|c| format!("n.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        self.with(|c| {
            c.query_map(
                &format!(
                    "SELECT {columns}, COUNT(s.sandbox_id), \
                     CAST(COALESCE(SUM(s.cpu_count), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(s.memory_mb), 0) AS BIGINT) \
                     FROM nodes n LEFT JOIN sandboxes s \
                     ON s.node_id = n.node_id AND s.state = 'running'{filter} \
                     GROUP BY {columns} ORDER BY n.node_id"
                ),
                args,
                |row| {
                    let total = |i| row.get::<i64>(i).map(|n| u64::try_from(n).unwrap_or(0));
                    Ok(NodeLoad {
                        node: read(row)?,
                        sandboxes: row.get(12)?,
                        allocated_vcpus: total(13)?,
                        allocated_memory_mb: total(14)?,
                    })
                },
            )
        })
    }

    /// Sets the status an operator chose (ready or draining) of node
    /// `node_id`; false if there is no such node.
    pub fn set_node_status(&self, node_id: &str, status: NodeStatus) -> Result<bool, StoreError> {
        let changed = self.with(|c| {
            c.execute(
                "UPDATE nodes SET status = ?2 WHERE node_id = ?1",
                params![node_id, status.as_str()],
            )
        })?;
        Ok(changed > 0)
    }

    /// Marks unhealthy every ready or draining node whose last heartbeat is
    /// before `stale_before_ms`, and reports its running sandboxes stopped
    /// ([`NODE_LOST`]) at `now_ms`. One transaction: however many API
    /// servers run this at once, each node is marked, and each sandbox
    /// reported, once; and no one sees a node marked whose sandboxes are
    /// not yet reported. Returns the nodes marked, each with its lost
    /// sandboxes.
    pub fn mark_dead_nodes(
        &self,
        stale_before_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        let marked: Vec<(String, Vec<String>)> = self.transact(|tx| {
            let nodes: Vec<String> = tx.query_map(
                "UPDATE nodes SET status = 'unhealthy' \
                 WHERE status IN ('ready', 'draining') AND heartbeat_at_ms < ?1 \
                 RETURNING node_id",
                params![stale_before_ms],
                |r| r.get(0),
            )?;
            let mut marked = Vec::new();
            for node in nodes {
                let lost: Vec<String> = tx.query_map(
                    "SELECT sandbox_id FROM sandboxes WHERE node_id = ?1 AND state = 'running' \
                     ORDER BY sandbox_id",
                    params![node],
                    |r| r.get(0),
                )?;
                for id in &lost {
                    super::stop_in(tx, id, NODE_LOST, now_ms)?;
                }
                marked.push((node, lost));
            }
            Ok(marked)
        })?;
        Ok(marked)
    }

    /// The node sandbox `id` runs on, if the catalog knows the sandbox
    /// and it has one.
    pub fn sandbox_node(&self, id: &str) -> Result<Option<SandboxNode>, StoreError> {
        self.locate(
            "SELECT n.node_id, n.address, n.status FROM sandboxes s \
             JOIN nodes n ON n.node_id = s.node_id WHERE s.sandbox_id = ?1",
            id,
        )
    }

    /// The node of the newest build of `template` (the one that ran it,
    /// and keeps its uploads), if a node ran one.
    pub fn template_node(&self, template: &str) -> Result<Option<SandboxNode>, StoreError> {
        self.locate(
            "SELECT n.node_id, n.address, n.status FROM template_builds b \
             JOIN nodes n ON n.node_id = b.node_id WHERE b.template = ?1 \
             ORDER BY b.created_at_ms DESC LIMIT 1",
            template,
        )
    }

    /// The node that keeps volume `name_or_id` (a name or an id).
    pub fn volume_node(&self, name_or_id: &str) -> Result<Option<SandboxNode>, StoreError> {
        self.locate(
            "SELECT n.node_id, n.address, n.status FROM volumes v \
             JOIN nodes n ON n.node_id = v.node_id WHERE v.name = ?1 OR v.volume_id = ?1",
            name_or_id,
        )
    }

    /// The node `query` (of one parameter) finds: its id, address and
    /// status.
    fn locate(&self, query: &str, arg: &str) -> Result<Option<SandboxNode>, StoreError> {
        let found: Option<(String, String, String)> = self.with(|c| {
            c.query_row(query, params![arg], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
        })?;
        Ok(found.and_then(|(node_id, address, status)| {
            Some(SandboxNode {
                node_id,
                address,
                status: NodeStatus::parse(&status)?,
            })
        }))
    }

    /// Records the template builds node `node_id` holds now, in place of
    /// what it held before.
    pub fn set_node_builds(&self, node_id: &str, builds: &[NodeBuild]) -> Result<(), StoreError> {
        self.transact(|tx| {
            tx.execute(
                "DELETE FROM node_builds WHERE node_id = ?1",
                params![node_id],
            )?;
            for build in builds {
                let files = serde_json::to_string(&build.files).expect("file lists serialise");
                tx.execute(
                    "INSERT INTO node_builds (node_id, template, build_id, is_current, files) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        node_id,
                        build.template,
                        build.build_id,
                        build.current,
                        files
                    ],
                )?;
            }
            Ok(())
        })
    }

    /// Each deleted template, with when it was last deleted.
    pub fn template_deletions(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.with(|c| {
            c.query_map(
                "SELECT template, deleted_at_ms FROM template_deletions ORDER BY template",
                params![],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
    }

    /// The builds of `template` the nodes hold, with the nodes, by node.
    pub fn held_builds(&self, template: &str) -> Result<Vec<HeldBuild>, StoreError> {
        self.with(|c| {
            c.query_map(
                "SELECT b.template, b.build_id, b.is_current, b.files, n.node_id, n.address, \
                 n.status, n.heartbeat_at_ms FROM node_builds b \
                 JOIN nodes n ON n.node_id = b.node_id WHERE b.template = ?1 \
                 ORDER BY n.node_id, b.build_id",
                params![template],
                |row| {
                    let files: String = row.get(3)?;
                    let status: String = row.get(6)?;
                    Ok(HeldBuild {
                        build: NodeBuild {
                            template: row.get(0)?,
                            build_id: row.get(1)?,
                            current: row.get(2)?,
                            files: serde_json::from_str(&files)
                                .map_err(|e| DbError::Other(format!("a build's files: {e}")))?,
                        },
                        node_id: row.get(4)?,
                        address: row.get(5)?,
                        status: NodeStatus::parse(&status).ok_or_else(|| {
                            DbError::Other(format!("unknown node status {status:?}"))
                        })?,
                        heartbeat_at_ms: row.get(7)?,
                    })
                },
            )
        })
    }

    /// Of `ids`, those the catalog says have stopped: what a node still
    /// running them must kill.
    pub fn stopped_among(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let marks = vec!["?"; ids.len()].join(", ");
        let args: Vec<super::Value> = ids
            .iter()
            .map(|id| super::Value::Text(id.clone()))
            .collect();
        self.with(|c| {
            c.query_map(
                &format!(
                    "SELECT sandbox_id FROM sandboxes WHERE state = 'killed' \
                     AND sandbox_id IN ({marks}) ORDER BY sandbox_id"
                ),
                &args,
                |r| r.get(0),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::sandbox;

    pub(crate) fn node(id: &str, heartbeat_at_ms: i64) -> NodeRecord {
        NodeRecord {
            node_id: id.to_owned(),
            address: format!("{id}.internal:3001"),
            status: NodeStatus::Ready,
            version: "0.1.0".into(),
            capacity: Capacity {
                vcpus: 8,
                memory_mb: 16_384,
                slots: 40,
                disk_free_mb: 100_000,
            },
            slots_used: 2,
            templates: vec!["base".into()],
            started_at_ms: heartbeat_at_ms,
            heartbeat_at_ms,
        }
    }

    store_test! {
    fn nodes_register_heartbeat_and_drain(store) {
        store.register_node(&node("a", 1_000)).unwrap();
        store.register_node(&node("b", 1_000)).unwrap();
        let listed = store.nodes().unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].node, node("a", 1_000));
        assert_eq!(
            (listed[0].sandboxes, listed[0].allocated_vcpus, listed[0].allocated_memory_mb),
            (0, 0, 0)
        );

        let templates = vec!["base".to_owned(), "app".to_owned()];
        assert_eq!(
            store.heartbeat("a", 5, &templates, 2_000).unwrap(),
            Some(NodeStatus::Ready)
        );
        let a = store.node("a").unwrap().unwrap().node;
        assert_eq!((a.slots_used, a.heartbeat_at_ms), (5, 2_000));
        assert_eq!(a.templates, templates);
        assert_eq!(store.heartbeat("ghost", 0, &[], 2_000).unwrap(), None);

        // A drained node stays drained across a restart.
        assert!(store.set_node_status("b", NodeStatus::Draining).unwrap());
        assert!(!store.set_node_status("ghost", NodeStatus::Draining).unwrap());
        store.register_node(&node("b", 3_000)).unwrap();
        assert_eq!(
            store.node("b").unwrap().unwrap().node.status,
            NodeStatus::Draining
        );
        assert_eq!(store.node("ghost").unwrap(), None);
    }
    }

    store_test! {
    fn a_silent_node_is_marked_once_and_its_running_sandboxes_are_lost(store) {
        store.register_node(&node("a", 1_000)).unwrap();
        store.register_node(&node("b", 1_000)).unwrap();
        let on = |id: &str, node: &str| {
            store.insert_sandbox(&sandbox(id, 10)).unwrap();
            store
                .with(|c| {
                    c.execute(
                        "UPDATE sandboxes SET node_id = ?2 WHERE sandbox_id = ?1",
                        params![id, node],
                    )
                })
                .unwrap();
        };
        on("s1", "a");
        on("s2", "a");
        on("s3", "b");
        store.set_state("s2", crate::store::SandboxState::Paused).unwrap();
        let a = store.node("a").unwrap().unwrap();
        assert_eq!((a.sandboxes, a.allocated_vcpus, a.allocated_memory_mb), (1, 2, 512));
        assert_eq!(
            store.sandbox_node("s3").unwrap(),
            Some(SandboxNode {
                node_id: "b".into(),
                address: "b.internal:3001".into(),
                status: NodeStatus::Ready
            })
        );
        assert_eq!(store.sandbox_node("nope").unwrap(), None);

        store.heartbeat("b", 1, &[], 9_000).unwrap();
        let marked = store.mark_dead_nodes(5_000, 9_500).unwrap();
        assert_eq!(marked, [("a".to_owned(), vec!["s1".to_owned()])]);
        // Once: a second look finds nothing new.
        assert_eq!(store.mark_dead_nodes(5_000, 9_600).unwrap(), []);
        let s1 = store.get_sandbox("s1").unwrap().unwrap();
        assert_eq!(s1.state, crate::store::SandboxState::Killed);
        assert_eq!(s1.stop_reason.as_deref(), Some(NODE_LOST));
        // Paused sandboxes wait on the node's disk for it to return.
        let s2 = store.get_sandbox("s2").unwrap().unwrap();
        assert_eq!(s2.state, crate::store::SandboxState::Paused);
        assert_eq!(
            store.node("a").unwrap().unwrap().node.status,
            NodeStatus::Unhealthy
        );
        // It comes back: ready again, and told which of its sandboxes are gone.
        assert_eq!(
            store.heartbeat("a", 3, &[], 10_000).unwrap(),
            Some(NodeStatus::Ready)
        );
        let ids = ["s1", "s2", "s3", "nope"].map(String::from);
        assert_eq!(store.stopped_among(&ids).unwrap(), ["s1"]);
    }
    }

    store_test! {
    fn a_node_store_records_and_acts_on_its_own_sandboxes_only(store) {
        let store = store.for_node("a");
        assert_eq!(store.node_id(), Some("a"));
        store.insert_sandbox(&sandbox("mine", 10)).unwrap();
        store.insert_sandbox(&sandbox("theirs", 10)).unwrap();
        store
            .with(|c| {
                c.execute(
                    "UPDATE sandboxes SET node_id = 'b' WHERE sandbox_id = 'theirs'",
                    params![],
                )
            })
            .unwrap();
        let ids = |records: Vec<crate::store::SandboxRecord>| {
            records.into_iter().map(|r| r.sandbox_id).collect::<Vec<_>>()
        };
        assert_eq!(ids(store.running_sandboxes().unwrap()), ["mine"]);
        assert_eq!(ids(store.expired(i64::MAX).unwrap()), ["mine"]);
        // Lists are the cluster's.
        let all = store
            .list_sandboxes(&crate::store::SandboxQuery::default())
            .unwrap();
        assert_eq!(all.sandboxes.len(), 2);
    }
    }

    store_test! {
    fn the_builds_a_node_holds_replace_what_it_held(store) {
        store.register_node(&node("a", 1_000)).unwrap();
        store.register_node(&node("b", 1_000)).unwrap();
        let file = |name: &str, sha: &str| BuildFile {
            name: name.into(),
            size: 42,
            sha256: sha.into(),
        };
        let build = |id: &str, current| NodeBuild {
            template: "app".into(),
            build_id: id.into(),
            current,
            files: vec![file("meta.json", "m"), file("rootfs.ext4", id)],
        };
        store
            .set_node_builds("a", &[build("b1", false), build("b2", true)])
            .unwrap();
        store.set_node_builds("b", &[build("b1", true)]).unwrap();
        let held = store.held_builds("app").unwrap();
        let summary: Vec<(&str, &str, bool)> = held
            .iter()
            .map(|h| (h.node_id.as_str(), h.build.build_id.as_str(), h.build.current))
            .collect();
        assert_eq!(
            summary,
            [("a", "b1", false), ("a", "b2", true), ("b", "b1", true)]
        );
        assert_eq!(held[1].build, build("b2", true));
        assert_eq!(held[1].address, "a.internal:3001");
        assert_eq!(held[1].status, NodeStatus::Ready);
        // What a node holds now replaces what it held.
        store.set_node_builds("a", &[build("b3", true)]).unwrap();
        let ids: Vec<String> = store
            .held_builds("app")
            .unwrap()
            .into_iter()
            .map(|h| format!("{}/{}", h.node_id, h.build.build_id))
            .collect();
        assert_eq!(ids, ["a/b3", "b/b1"]);
        assert!(store.held_builds("other").unwrap().is_empty());
    }
    }

    store_test! {
    fn a_volume_is_found_on_the_node_that_made_it(store) {
        store.register_node(&node("a", 1_000)).unwrap();
        let volume = crate::store::VolumeRecord {
            name: "data".into(),
            volume_id: "vol-1".into(),
            token: "t".into(),
            size_bytes: 1,
            fs: "ext4".into(),
            created_at_ms: 1,
        };
        // A single server's volumes have no node.
        store.insert_volume(&volume).unwrap();
        assert_eq!(store.volume_node("data").unwrap(), None);
        store.delete_volume("data").unwrap();
        let store = store.for_node("a");
        store.insert_volume(&volume).unwrap();
        for key in ["data", "vol-1"] {
            assert_eq!(store.volume_node(key).unwrap().unwrap().node_id, "a");
        }
        assert_eq!(store.volume_node("other").unwrap(), None);
    }
    }

    store_test! {
    fn a_template_is_found_on_the_node_of_its_newest_build(store) {
        store.register_node(&node("a", 1_000)).unwrap();
        store.register_node(&node("b", 1_000)).unwrap();
        assert_eq!(store.template_node("app").unwrap(), None);
        let on = |id: &str, node: &str, at| {
            store
                .insert_build(&crate::store::builds::tests::build(id, "app", at))
                .unwrap();
            store
                .with(|c| {
                    c.execute(
                        "UPDATE template_builds SET node_id = ?2 WHERE build_id = ?1",
                        params![id, node],
                    )
                })
                .unwrap();
        };
        on("b1", "a", 10);
        on("b2", "b", 20);
        let found = store.template_node("app").unwrap().unwrap();
        assert_eq!(
            (found.node_id.as_str(), found.address.as_str()),
            ("b", "b.internal:3001")
        );
        on("b3", "a", 30);
        assert_eq!(store.template_node("app").unwrap().unwrap().node_id, "a");
        assert_eq!(store.template_node("other").unwrap(), None);
        // Deleted: the catalog remembers when, for the copies on nodes.
        assert!(store.template_deletions().unwrap().is_empty());
        store.delete_template_records("app", 40).unwrap();
        store.delete_template_records("app", 50).unwrap();
        assert_eq!(store.template_node("app").unwrap(), None);
        assert_eq!(
            store.template_deletions().unwrap(),
            [("app".to_owned(), 50)]
        );
    }
    }
}
