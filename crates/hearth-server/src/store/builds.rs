//! Template builds of the E2B build API: each build's status and reason,
//! its log entries, and the tags that name builds.
//!
//! A build's id is the UUID the API hands out; `node_build` is the id the
//! node gave the finished template build (`templates/<name>/<node_build>`),
//! set once it is ready. Tags point at API build ids and are assigned when
//! a build becomes ready.

use std::fmt;
use std::str::FromStr;

use super::db::{DbError, OptionalExt, Row, Sql, Value, params};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};
use crate::events::EventType;

/// Why builds still waiting or building when the server starts failed.
pub const INTERRUPTED: &str = "interrupted: the server stopped during the build";

const BUILD_COLUMNS: &str = "build_id, template, status, reason, reason_step, node_build, tags, \
    cpu_count, memory_mb, created_at_ms, updated_at_ms, finished_at_ms";

/// Where a build is, in E2B's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildStatus {
    /// Requested; its steps have not come yet, or it waits for another
    /// build of the same template.
    Waiting,
    Building,
    Ready,
    Error,
}

impl BuildStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Building => "building",
            Self::Ready => "ready",
            Self::Error => "error",
        }
    }

    /// Whether the build is over, one way or the other.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Ready | Self::Error)
    }
}

impl fmt::Display for BuildStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BuildStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "waiting" => Ok(Self::Waiting),
            "building" => Ok(Self::Building),
            "ready" => Ok(Self::Ready),
            "error" => Ok(Self::Error),
            other => Err(format!("unknown build status '{other}'")),
        }
    }
}

/// One template build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRecord {
    /// A UUID.
    pub build_id: String,
    /// The template's name, which is its id.
    pub template: String,
    pub status: BuildStatus,
    /// Why it failed: the error with its causes.
    pub reason: Option<String>,
    /// The step that failed: `base`, `1`, `2`, … or `finalize` (E2B's).
    pub reason_step: Option<String>,
    /// The node's id of the finished template build.
    pub node_build: Option<String>,
    /// Tags it gets when ready.
    pub tags: Vec<String>,
    pub cpu_count: u32,
    pub memory_mb: u32,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

/// One line of a build's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildLogEntry {
    /// Unix milliseconds.
    pub timestamp_ms: i64,
    /// `debug`, `info`, `warn` or `error`.
    pub level: String,
    pub message: String,
    /// The build step it belongs to, as in [`BuildRecord::reason_step`].
    pub step: Option<String>,
}

/// A tag of a template: a name for one of its builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRecord {
    pub template: String,
    pub tag: String,
    /// The API build id it names.
    pub build_id: String,
    pub created_at_ms: i64,
}

/// Log levels from least to most severe; unknown ones count as `info`.
pub fn level_rank(level: &str) -> u8 {
    match level {
        "debug" => 0,
        "warn" => 2,
        "error" => 3,
        _ => 1,
    }
}

impl Store {
    /// Records a new build; its id must be new.
    pub fn insert_build(&self, b: &BuildRecord) -> Result<(), StoreError> {
        let tags = serde_json::to_string(&b.tags).expect("strings serialise");
        let result = self.with(|c| {
            c.execute(
                &format!(
                    "INSERT INTO template_builds ({BUILD_COLUMNS}, node_id) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
                ),
                params![
                    b.build_id,
                    b.template,
                    b.status.as_str(),
                    b.reason,
                    b.reason_step,
                    b.node_build,
                    tags,
                    b.cpu_count,
                    b.memory_mb,
                    b.created_at_ms,
                    b.updated_at_ms,
                    b.finished_at_ms,
                    self.node,
                ],
            )
        });
        match result {
            Ok(_) => Ok(()),
            Err(StoreError::Query { source, .. }) if source.is_constraint() => {
                Err(StoreError::BuildExists(b.build_id.clone()))
            }
            Err(err) => Err(err),
        }
    }

    /// The build with id `id`, if any.
    pub fn get_build(&self, id: &str) -> Result<Option<BuildRecord>, StoreError> {
        let row = self.with(|c| {
            c.query_row(
                &format!("SELECT {BUILD_COLUMNS} FROM template_builds WHERE build_id = ?1"),
                params![id],
                BuildRow::read,
            )
            .optional()
        })?;
        row.map(|row| row.into_record(self)).transpose()
    }

    /// The builds of `template`, newest first.
    pub fn template_builds(&self, template: &str) -> Result<Vec<BuildRecord>, StoreError> {
        self.select_builds(
            &format!(
                "SELECT {BUILD_COLUMNS} FROM template_builds WHERE template = ?1 \
                 ORDER BY created_at_ms DESC, build_id"
            ),
            vec![Value::Text(template.to_owned())],
        )
    }

    /// The `limit` newest builds of every template, newest first.
    pub fn recent_builds(&self, limit: u32) -> Result<Vec<BuildRecord>, StoreError> {
        self.select_builds(
            &format!(
                "SELECT {BUILD_COLUMNS} FROM template_builds \
                 ORDER BY created_at_ms DESC, build_id LIMIT ?1"
            ),
            vec![Value::Integer(i64::from(limit))],
        )
    }

    /// The newest ready build of `template` that made node build
    /// `node_build`, if the API made it.
    pub fn build_of_node_build(
        &self,
        template: &str,
        node_build: &str,
    ) -> Result<Option<BuildRecord>, StoreError> {
        Ok(self
            .select_builds(
                &format!(
                    "SELECT {BUILD_COLUMNS} FROM template_builds \
                     WHERE template = ?1 AND node_build = ?2 AND status = 'ready' \
                     ORDER BY finished_at_ms DESC, build_id LIMIT 1"
                ),
                vec![
                    Value::Text(template.to_owned()),
                    Value::Text(node_build.to_owned()),
                ],
            )?
            .pop())
    }

    /// Moves a waiting build to building; false if it was not waiting.
    pub fn start_build(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let changed = self.transact(|tx| {
            let changed = tx.execute(
                "UPDATE template_builds SET status = 'building', updated_at_ms = ?2 \
                 WHERE build_id = ?1 AND status = 'waiting'",
                params![id, now_ms],
            )?;
            if changed > 0 {
                build_event(tx, EventType::BuildStarted, id, None, now_ms)?;
            }
            Ok(changed)
        })?;
        Ok(changed > 0)
    }

    /// Marks a build ready as node build `node_build` and gives its tags to
    /// it, taking them from whichever build had them: one transaction.
    pub fn finish_build(&self, id: &str, node_build: &str, now_ms: i64) -> Result<(), StoreError> {
        let build = self
            .get_build(id)?
            .ok_or_else(|| StoreError::NoBuild(id.to_owned()))?;
        self.transact(|tx| {
            tx.execute(
                "UPDATE template_builds SET status = 'ready', node_build = ?2, reason = NULL, \
                 reason_step = NULL, updated_at_ms = ?3, finished_at_ms = ?3 WHERE build_id = ?1",
                params![id, node_build, now_ms],
            )?;
            assign_tags(tx, &build.template, &build.tags, id, now_ms)?;
            let data = serde_json::json!({ "tags": build.tags });
            build_event(tx, EventType::BuildCompleted, id, Some(&data), now_ms)
        })
    }

    /// Marks a build failed with `reason`, naming the failed `step`.
    pub fn fail_build(
        &self,
        id: &str,
        reason: &str,
        step: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let changed = self.transact(|tx| {
            let changed = tx.execute(
                "UPDATE template_builds SET status = 'error', reason = ?2, reason_step = ?3, \
                 updated_at_ms = ?4, finished_at_ms = ?4 WHERE build_id = ?1",
                params![id, reason, step, now_ms],
            )?;
            if changed > 0 {
                let data = serde_json::json!({ "reason": reason, "step": step });
                build_event(tx, EventType::BuildFailed, id, Some(&data), now_ms)?;
            }
            Ok(changed)
        })?;
        if changed == 0 {
            return Err(StoreError::NoBuild(id.to_owned()));
        }
        Ok(())
    }

    /// Fails every build left waiting or building by a server that stopped
    /// (nothing runs them any more); returns how many.
    pub fn interrupt_builds(&self, now_ms: i64) -> Result<usize, StoreError> {
        // A node's store interrupts that node's builds only.
        let (mine, node) = self.node_filter(3);
        self.transact(|tx| {
            let ids: Vec<String> = tx.query_map(
                &format!(
                    "SELECT build_id FROM template_builds \
                     WHERE status IN ('waiting', 'building'){}",
                    mine.replace("?3", "?1")
                ),
                &node,
                |r| r.get(0),
            )?;
            tx.execute(
                &format!(
                    "UPDATE template_builds SET status = 'error', reason = ?1, \
                     updated_at_ms = ?2, finished_at_ms = ?2 \
                     WHERE status IN ('waiting', 'building'){mine}"
                ),
                &[params![INTERRUPTED, now_ms], &node[..]].concat(),
            )?;
            let data = serde_json::json!({ "reason": INTERRUPTED });
            for id in &ids {
                build_event(tx, EventType::BuildFailed, id, Some(&data), now_ms)?;
            }
            Ok(ids.len())
        })
    }

    /// Appends a line to a build's log.
    pub fn append_build_log(&self, id: &str, entry: &BuildLogEntry) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
            "INSERT INTO template_build_logs (build_id, seq, timestamp_ms, level, message, step) \
                 SELECT ?1, COALESCE(MAX(seq) + 1, 0), ?2, ?3, ?4, ?5 \
                 FROM template_build_logs WHERE build_id = ?1",
            params![
                id,
                entry.timestamp_ms,
                entry.level,
                entry.message,
                entry.step
            ],
        )
        })?;
        Ok(())
    }

    /// At most `limit` log entries of a build at `min_level` or above,
    /// skipping the first `offset` of them, oldest first.
    pub fn build_logs(
        &self,
        id: &str,
        offset: u64,
        limit: u64,
        min_level: u8,
    ) -> Result<Vec<BuildLogEntry>, StoreError> {
        let levels: Vec<&str> = ["debug", "info", "warn", "error"]
            .into_iter()
            .filter(|l| level_rank(l) >= min_level)
            .collect();
        // Unknown levels count as info.
        let unknown_ok = min_level <= 1;
        let levels = serde_json::to_string(&levels).expect("strings serialise");
        self.with(|c| {
            let wanted = c.dialect().json_elements("?2");
            c.query_map(
                &format!(
                    "SELECT timestamp_ms, level, message, step FROM template_build_logs \
                 WHERE build_id = ?1 AND (level IN (SELECT value FROM {wanted}) \
                 OR (?3 AND level NOT IN ('debug', 'info', 'warn', 'error'))) \
                 ORDER BY seq LIMIT ?4 OFFSET ?5"
                ),
                params![
                    id,
                    levels,
                    unknown_ok,
                    i64::try_from(limit).unwrap_or(i64::MAX),
                    i64::try_from(offset).unwrap_or(i64::MAX),
                ],
                |row| {
                    Ok(BuildLogEntry {
                        timestamp_ms: row.get(0)?,
                        level: row.get(1)?,
                        message: row.get(2)?,
                        step: row.get(3)?,
                    })
                },
            )
        })
    }

    /// Points `tags` of `template` at build `build_id`.
    pub fn set_tags(
        &self,
        template: &str,
        tags: &[String],
        build_id: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.transact(|tx| assign_tags(tx, template, tags, build_id, now_ms))
    }

    /// Removes `tags` from `template`; returns how many existed.
    pub fn remove_tags(&self, template: &str, tags: &[String]) -> Result<usize, StoreError> {
        self.transact(|tx| {
            let mut removed = 0;
            for tag in tags {
                removed += tx.execute(
                    "DELETE FROM template_tags WHERE template = ?1 AND tag = ?2",
                    params![template, tag],
                )?;
            }
            Ok(removed)
        })
    }

    /// The tags of `template`, by name.
    pub fn template_tags(&self, template: &str) -> Result<Vec<TagRecord>, StoreError> {
        self.with(|c| {
            c.query_map(
                "SELECT template, tag, build_id, created_at_ms FROM template_tags \
                 WHERE template = ?1 ORDER BY tag",
                params![template],
                tag_from_row,
            )
        })
    }

    /// The node builds the tags of `template` name, as `(tag, node build)`
    /// by tag: the builds a prune must keep.
    pub fn tagged_node_builds(&self, template: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.with(|c| {
            c.query_map(
                "SELECT t.tag, b.node_build FROM template_tags t \
                 JOIN template_builds b ON b.build_id = t.build_id \
                 WHERE t.template = ?1 AND b.node_build IS NOT NULL ORDER BY t.tag",
                params![template],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
        })
    }

    /// Tag `tag` of `template`, if it exists.
    pub fn tag(&self, template: &str, tag: &str) -> Result<Option<TagRecord>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT template, tag, build_id, created_at_ms FROM template_tags \
                 WHERE template = ?1 AND tag = ?2",
                params![template, tag],
                tag_from_row,
            )
            .optional()
        })
    }

    /// Forgets everything about `template`: builds, their logs, tags; and
    /// records that it was deleted at `now_ms`, for the nodes of a cluster
    /// that hold copies of it.
    pub fn delete_template_records(&self, template: &str, now_ms: i64) -> Result<(), StoreError> {
        self.transact(|tx| {
            tx.execute(
                "INSERT INTO template_deletions (template, deleted_at_ms) VALUES (?1, ?2) \
                 ON CONFLICT (template) DO UPDATE SET deleted_at_ms = excluded.deleted_at_ms",
                params![template, now_ms],
            )?;
            tx.execute(
                "DELETE FROM template_build_logs WHERE build_id IN \
             (SELECT build_id FROM template_builds WHERE template = ?1)",
                params![template],
            )?;
            tx.execute(
                "DELETE FROM template_builds WHERE template = ?1",
                params![template],
            )?;
            tx.execute(
                "DELETE FROM template_tags WHERE template = ?1",
                params![template],
            )?;
            tx.execute(
                "DELETE FROM snapshots WHERE template = ?1",
                params![template],
            )?;
            Ok(())
        })
    }

    fn select_builds(&self, sql: &str, args: Vec<Value>) -> Result<Vec<BuildRecord>, StoreError> {
        let rows: Vec<BuildRow> = self.with(|c| c.query_map(sql, &args, BuildRow::read))?;
        rows.into_iter().map(|row| row.into_record(self)).collect()
    }
}

/// Records build `id`'s event, with its template.
/// Points `tags` of `template` at build `build_id`, moving them from
/// whichever builds they named.
pub(super) fn assign_tags(
    tx: &mut dyn Sql,
    template: &str,
    tags: &[String],
    build_id: &str,
    now_ms: i64,
) -> Result<(), DbError> {
    for tag in tags {
        tx.execute(
            "INSERT INTO template_tags (template, tag, build_id, created_at_ms) \
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (template, tag) \
             DO UPDATE SET build_id = excluded.build_id, created_at_ms = excluded.created_at_ms",
            params![template, tag, build_id, now_ms],
        )?;
    }
    Ok(())
}

fn build_event(
    tx: &mut dyn Sql,
    kind: EventType,
    id: &str,
    data: Option<&serde_json::Value>,
    now_ms: i64,
) -> Result<(), DbError> {
    let template: Option<String> = tx
        .query_row(
            "SELECT template FROM template_builds WHERE build_id = ?1",
            params![id],
            |r| r.get(0),
        )
        .optional()?;
    super::events::record(tx, kind, None, template.as_deref(), Some(id), data, now_ms)?;
    Ok(())
}

fn tag_from_row(row: &Row) -> Result<TagRecord, DbError> {
    Ok(TagRecord {
        template: row.get(0)?,
        tag: row.get(1)?,
        build_id: row.get(2)?,
        created_at_ms: row.get(3)?,
    })
}

/// A build as its columns hold it: the status as text, tags as JSON.
struct BuildRow {
    record: BuildRecord,
    status: String,
    tags: String,
}

impl BuildRow {
    fn read(row: &Row) -> Result<Self, DbError> {
        Ok(Self {
            record: BuildRecord {
                build_id: row.get(0)?,
                template: row.get(1)?,
                status: BuildStatus::Waiting,
                reason: row.get(3)?,
                reason_step: row.get(4)?,
                node_build: row.get(5)?,
                tags: Vec::new(),
                cpu_count: row.get(7)?,
                memory_mb: row.get(8)?,
                created_at_ms: row.get(9)?,
                updated_at_ms: row.get(10)?,
                finished_at_ms: row.get(11)?,
            },
            status: row.get(2)?,
            tags: row.get(6)?,
        })
    }

    fn into_record(self, store: &Store) -> Result<BuildRecord, StoreError> {
        let id = &self.record.build_id;
        let status = self
            .status
            .parse()
            .map_err(|err| store.corrupt(format_args!("template build {id}: {err}")))?;
        let tags = serde_json::from_str(&self.tags)
            .map_err(|err| store.corrupt(format_args!("template build {id}: tags: {err}")))?;
        Ok(BuildRecord {
            status,
            tags,
            ..self.record
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn build(id: &str, template: &str, created_at_ms: i64) -> BuildRecord {
        BuildRecord {
            build_id: id.to_owned(),
            template: template.to_owned(),
            status: BuildStatus::Waiting,
            reason: None,
            reason_step: None,
            node_build: None,
            tags: vec!["default".to_owned()],
            cpu_count: 2,
            memory_mb: 512,
            created_at_ms,
            updated_at_ms: created_at_ms,
            finished_at_ms: None,
        }
    }

    fn entry(ms: i64, level: &str, message: &str) -> BuildLogEntry {
        BuildLogEntry {
            timestamp_ms: ms,
            level: level.to_owned(),
            message: message.to_owned(),
            step: None,
        }
    }

    store_test! {
    fn recent_builds_are_newest_first_across_templates(store) {
        for (id, template, at) in [("b1", "app", 1), ("b2", "web", 3), ("b3", "app", 2)] {
            store.insert_build(&build(id, template, at)).unwrap();
        }
        let ids = |builds: Vec<BuildRecord>| -> Vec<String> {
            builds.into_iter().map(|b| b.build_id).collect()
        };
        assert_eq!(
            ids(store.recent_builds(10).unwrap()),
            vec!["b2", "b3", "b1"]
        );
        assert_eq!(ids(store.recent_builds(2).unwrap()), vec!["b2", "b3"]);
    }
    }

    store_test! {
    fn a_build_goes_from_waiting_to_ready_and_takes_its_tags(store) {
        let mut first = build("b1", "app", 1);
        first.tags = vec!["default".to_owned(), "v1".to_owned()];
        store.insert_build(&first).unwrap();
        assert!(matches!(
            store.insert_build(&first),
            Err(StoreError::BuildExists(_))
        ));
        assert_eq!(store.get_build("b1").unwrap().unwrap(), first);
        assert!(store.start_build("b1", 5).unwrap());
        assert!(!store.start_build("b1", 6).unwrap(), "only once");
        store.finish_build("b1", "nodebuild1", 9).unwrap();
        let got = store.get_build("b1").unwrap().unwrap();
        assert_eq!(got.status, BuildStatus::Ready);
        assert_eq!(got.node_build.as_deref(), Some("nodebuild1"));
        assert_eq!(got.finished_at_ms, Some(9));
        let tags: Vec<_> = store
            .template_tags("app")
            .unwrap()
            .into_iter()
            .map(|t| (t.tag, t.build_id))
            .collect();
        assert_eq!(
            tags,
            [
                ("default".to_owned(), "b1".to_owned()),
                ("v1".to_owned(), "b1".to_owned())
            ]
        );

        // A second build takes `default` over; `v1` stays with the first.
        store.insert_build(&build("b2", "app", 10)).unwrap();
        store.finish_build("b2", "nodebuild2", 11).unwrap();
        assert_eq!(store.tag("app", "default").unwrap().unwrap().build_id, "b2");
        assert_eq!(store.tag("app", "v1").unwrap().unwrap().build_id, "b1");
        assert_eq!(
            store.tagged_node_builds("app").unwrap(),
            vec![
                ("default".to_owned(), "nodebuild2".to_owned()),
                ("v1".to_owned(), "nodebuild1".to_owned())
            ]
        );
        assert!(store.tagged_node_builds("other").unwrap().is_empty());
        assert_eq!(
            store
                .build_of_node_build("app", "nodebuild1")
                .unwrap()
                .unwrap()
                .build_id,
            "b1"
        );
        assert_eq!(store.build_of_node_build("app", "other").unwrap(), None);
        let ids: Vec<_> = store
            .template_builds("app")
            .unwrap()
            .into_iter()
            .map(|b| b.build_id)
            .collect();
        assert_eq!(ids, ["b2", "b1"]);

        store.set_tags("app", &["v1".to_owned()], "b2", 12).unwrap();
        assert_eq!(store.tag("app", "v1").unwrap().unwrap().build_id, "b2");
        assert_eq!(
            store
                .remove_tags("app", &["v1".to_owned(), "nope".to_owned()])
                .unwrap(),
            1
        );
        assert_eq!(store.tag("app", "v1").unwrap(), None);

        store.delete_template_records("app", 1).unwrap();
        assert!(store.template_builds("app").unwrap().is_empty());
        assert!(store.template_tags("app").unwrap().is_empty());
    }
    }

    store_test! {
    fn a_restarting_node_interrupts_its_own_builds_only(store) {
        let store = store.for_node("a");
        store.insert_build(&build("mine", "t", 1)).unwrap();
        store.insert_build(&build("theirs", "t", 2)).unwrap();
        store
            .with(|c| {
                c.execute(
                    "UPDATE template_builds SET node_id = 'b' WHERE build_id = 'theirs'",
                    params![],
                )
            })
            .unwrap();
        assert_eq!(store.interrupt_builds(3).unwrap(), 1);
        assert_eq!(store.get_build("mine").unwrap().unwrap().status, BuildStatus::Error);
        assert_eq!(store.get_build("theirs").unwrap().unwrap().status, BuildStatus::Waiting);
    }
    }

    store_test! {
    fn failures_keep_their_reason_and_a_restart_interrupts_running_builds(store) {
        for (id, ms) in [("w", 1), ("b", 2), ("r", 3), ("e", 4)] {
            store.insert_build(&build(id, "t", ms)).unwrap();
        }
        store.start_build("b", 5).unwrap();
        store.finish_build("r", "n", 6).unwrap();
        store
            .fail_build("e", "step 2: `false` exited with status 1", Some("2"), 7)
            .unwrap();
        assert!(matches!(
            store.fail_build("ghost", "x", None, 7),
            Err(StoreError::NoBuild(_))
        ));
        let failed = store.get_build("e").unwrap().unwrap();
        assert_eq!(failed.status, BuildStatus::Error);
        assert_eq!(failed.reason_step.as_deref(), Some("2"));

        assert_eq!(store.interrupt_builds(8).unwrap(), 2);
        for id in ["w", "b"] {
            let b = store.get_build(id).unwrap().unwrap();
            assert_eq!(b.status, BuildStatus::Error, "{id}");
            assert_eq!(b.reason.as_deref(), Some(INTERRUPTED));
        }
        assert_eq!(
            store.get_build("r").unwrap().unwrap().status,
            BuildStatus::Ready
        );
        assert_eq!(store.interrupt_builds(9).unwrap(), 0);
    }
    }

    store_test! {
    fn logs_page_by_offset_and_level(store) {
        store.insert_build(&build("b", "t", 1)).unwrap();
        for i in 0..250 {
            let level = if i % 50 == 49 { "error" } else { "info" };
            store
                .append_build_log("b", &entry(i, level, &format!("line {i}")))
                .unwrap();
        }
        store
            .append_build_log("other", &entry(0, "info", "elsewhere"))
            .unwrap();
        let page = store.build_logs("b", 0, 100, 0).unwrap();
        assert_eq!(page.len(), 100);
        assert_eq!(page[0].message, "line 0");
        let page = store.build_logs("b", 200, 100, 0).unwrap();
        assert_eq!(page.len(), 50);
        assert_eq!(page[49].message, "line 249");
        assert!(store.build_logs("b", 250, 100, 0).unwrap().is_empty());
        let errors = store.build_logs("b", 0, 100, level_rank("error")).unwrap();
        let messages: Vec<_> = errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            messages,
            ["line 49", "line 99", "line 149", "line 199", "line 249"]
        );
        assert_eq!(
            store.build_logs("b", 3, 100, level_rank("error")).unwrap()[0].message,
            "line 199"
        );
    }
    }
}
