//! Sandbox snapshots: template builds made from a running sandbox (E2B's
//! `POST /sandboxes/{id}/snapshots`), each recorded as a ready build of
//! its template plus the sandbox it was taken from.

use super::db::{Value, params};

use super::builds::BuildRecord;
use super::{Store, StoreError};
use crate::events::EventType;

pub(super) const SCHEMA_8: &str = "
CREATE TABLE snapshots (
    build_id      TEXT PRIMARY KEY,
    template      TEXT NOT NULL,
    sandbox_id    TEXT NOT NULL,
    memory        INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX snapshots_by_sandbox ON snapshots (sandbox_id);
";

/// One snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// The API id of the build it made.
    pub build_id: String,
    /// The template it is a build of: what sandboxes are created from.
    pub template: String,
    /// The sandbox it was taken from.
    pub sandbox_id: String,
    /// Whether memory and processes were kept, not only the disk.
    pub memory: bool,
    /// Unix milliseconds.
    pub created_at_ms: i64,
}

/// Which snapshots to list: of each template, its newest snapshot that
/// matches; by time, oldest first.
#[derive(Debug, Clone, Default)]
pub struct SnapshotQuery {
    pub sandbox_id: Option<String>,
    pub template: Option<String>,
    /// The `next_token` of the previous page.
    pub next_token: Option<String>,
    pub limit: usize,
}

/// One page of snapshots.
#[derive(Debug, Clone)]
pub struct SnapshotPage {
    pub snapshots: Vec<SnapshotRecord>,
    /// Where the next page starts, if there is one.
    pub next_token: Option<String>,
}

impl Store {
    /// Records snapshot `snapshot` and its ready build `build` (whose tags
    /// are assigned), with a `checkpointed` event of its sandbox.
    pub fn insert_snapshot(
        &self,
        build: &BuildRecord,
        snapshot: &SnapshotRecord,
    ) -> Result<(), StoreError> {
        self.insert_build(build)?;
        let now = snapshot.created_at_ms;
        self.transact(|tx| {
            tx.execute(
                "INSERT INTO snapshots (build_id, template, sandbox_id, memory, created_at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    snapshot.build_id,
                    snapshot.template,
                    snapshot.sandbox_id,
                    snapshot.memory,
                    now
                ],
            )?;
            super::builds::assign_tags(tx, &build.template, &build.tags, &build.build_id, now)?;
            let data = serde_json::json!({
                "snapshot_id": snapshot.template,
                "build_id": snapshot.build_id,
                "memory": snapshot.memory,
            });
            let serde_json::Value::Object(extra) = data else {
                unreachable!("a JSON object")
            };
            super::events::record_sandbox(
                tx,
                EventType::SandboxCheckpointed,
                &snapshot.sandbox_id,
                extra,
                now,
            )
        })
    }

    /// Snapshots matching `q`: see [`SnapshotQuery`].
    pub fn snapshots(&self, q: &SnapshotQuery) -> Result<SnapshotPage, StoreError> {
        let mut filter = String::new();
        let mut args: Vec<Value> = Vec::new();
        if let Some(sandbox) = &q.sandbox_id {
            args.push(Value::Text(sandbox.clone()));
            filter.push_str(&format!(" AND sandbox_id = ?{}", args.len()));
        }
        if let Some(template) = &q.template {
            args.push(Value::Text(template.clone()));
            filter.push_str(&format!(" AND template = ?{}", args.len()));
        }
        let mut after = String::new();
        if let Some(token) = &q.next_token {
            let (at, template) = super::decode_token(token)?;
            args.push(Value::Integer(at));
            args.push(Value::Text(template));
            after = format!(
                " AND (created_at_ms, template) > (?{}, ?{})",
                args.len() - 1,
                args.len()
            );
        }
        // One row past the page tells whether another page follows.
        let limit = q.limit.max(1);
        args.push(Value::Integer(i64::try_from(limit + 1).unwrap_or(i64::MAX)));
        // The newest snapshot of each template.
        let sql = format!(
            "SELECT build_id, template, sandbox_id, memory, created_at_ms FROM \
             (SELECT build_id, template, sandbox_id, memory, created_at_ms, \
             ROW_NUMBER() OVER (PARTITION BY template \
             ORDER BY created_at_ms DESC, build_id DESC) AS newest \
             FROM snapshots WHERE 1 = 1{filter}) AS latest \
             WHERE newest = 1{after} ORDER BY created_at_ms, template LIMIT ?{}",
            args.len()
        );
        let mut snapshots = self.with(|c| {
            c.query_map(&sql, &args, |r| {
                Ok(SnapshotRecord {
                    build_id: r.get(0)?,
                    template: r.get(1)?,
                    sandbox_id: r.get(2)?,
                    memory: r.get(3)?,
                    created_at_ms: r.get(4)?,
                })
            })
        })?;
        let more = snapshots.len() > limit;
        snapshots.truncate(limit);
        let next_token = more
            .then(|| snapshots.last())
            .flatten()
            .map(|last| super::encode_token(last.created_at_ms, &last.template));
        Ok(SnapshotPage {
            snapshots,
            next_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::BuildStatus;
    use crate::store::tests::sandbox;

    fn snapshot(
        build: &str,
        template: &str,
        sandbox_id: &str,
        at: i64,
    ) -> (BuildRecord, SnapshotRecord) {
        let record = BuildRecord {
            build_id: build.to_owned(),
            template: template.to_owned(),
            status: BuildStatus::Ready,
            reason: None,
            reason_step: None,
            node_build: Some(format!("node-{build}")),
            tags: vec!["default".to_owned()],
            cpu_count: 2,
            memory_mb: 512,
            created_at_ms: at,
            updated_at_ms: at,
            finished_at_ms: Some(at),
        };
        let snapshot = SnapshotRecord {
            build_id: build.to_owned(),
            template: template.to_owned(),
            sandbox_id: sandbox_id.to_owned(),
            memory: true,
            created_at_ms: at,
        };
        (record, snapshot)
    }

    fn templates(page: &SnapshotPage) -> Vec<&str> {
        page.snapshots.iter().map(|s| s.template.as_str()).collect()
    }

    store_test! {
    fn snapshots_are_builds_listed_once_per_template_and_paged(store) {
        store.insert_sandbox(&sandbox("sbx-a", 1)).unwrap();
        store.insert_sandbox(&sandbox("sbx-b", 2)).unwrap();
        for (build, template, sandbox_id, at) in [
            ("b1", "one", "sbx-a", 10),
            ("b2", "two", "sbx-b", 20),
            ("b3", "one", "sbx-b", 30),
            ("b4", "three", "sbx-a", 40),
        ] {
            let (build, snapshot) = snapshot(build, template, sandbox_id, at);
            store.insert_snapshot(&build, &snapshot).unwrap();
        }
        // A build with its tag, ready, as any build.
        let build = store.get_build("b3").unwrap().unwrap();
        assert_eq!(build.status, BuildStatus::Ready);
        assert_eq!(store.tag("one", "default").unwrap().unwrap().build_id, "b3");
        let all = |q: SnapshotQuery| store.snapshots(&SnapshotQuery { limit: 100, ..q }).unwrap();
        // "one" is listed once, at its newer snapshot.
        let page = all(SnapshotQuery::default());
        assert_eq!(templates(&page), vec!["two", "one", "three"]);
        assert_eq!(page.snapshots[1].build_id, "b3");
        assert_eq!(page.next_token, None);
        let by_a = all(SnapshotQuery {
            sandbox_id: Some("sbx-a".into()),
            ..SnapshotQuery::default()
        });
        assert_eq!(templates(&by_a), vec!["one", "three"]);
        assert_eq!(
            by_a.snapshots[0].build_id, "b1",
            "sbx-a's snapshot of 'one'"
        );
        let named = all(SnapshotQuery {
            template: Some("two".into()),
            ..SnapshotQuery::default()
        });
        assert_eq!(templates(&named), vec!["two"]);

        let mut seen = Vec::new();
        let mut token = None;
        loop {
            let page = store
                .snapshots(&SnapshotQuery {
                    next_token: token,
                    limit: 2,
                    ..SnapshotQuery::default()
                })
                .unwrap();
            seen.extend(page.snapshots.iter().map(|s| s.template.clone()));
            match page.next_token {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, ["two", "one", "three"]);
        assert!(matches!(
            store.snapshots(&SnapshotQuery {
                next_token: Some("not a token".into()),
                limit: 2,
                ..SnapshotQuery::default()
            }),
            Err(StoreError::BadToken)
        ));

        // Deleting the template deletes its snapshots.
        store.delete_template_records("one", 1).unwrap();
        assert_eq!(
            templates(&all(SnapshotQuery::default())),
            vec!["two", "three"]
        );
    }
    }

    store_test! {
    fn a_snapshot_is_a_checkpointed_event_of_its_sandbox(store) {
        store.insert_sandbox(&sandbox("sbx-a", 1)).unwrap();
        let (build, snapshot) = snapshot("b1", "one", "sbx-a", 10);
        store.insert_snapshot(&build, &snapshot).unwrap();
        let events = store
            .events(&crate::store::EventQuery {
                sandbox_id: Some("sbx-a".into()),
                limit: 100,
                ..crate::store::EventQuery::default()
            })
            .unwrap();
        let checkpointed: Vec<_> = events
            .iter()
            .filter(|e| e.kind == EventType::SandboxCheckpointed.as_str())
            .collect();
        assert_eq!(checkpointed.len(), 1, "{events:?}");
        let data = checkpointed[0].data.as_ref().unwrap();
        assert_eq!(data["snapshot_id"], "one");
        assert_eq!(data["build_id"], "b1");
        assert_eq!(data["memory"], true);
    }
    }
}
