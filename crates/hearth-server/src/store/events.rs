//! Lifecycle events, webhooks and their outbox.
//!
//! An event is written in the transaction of the change it tells of
//! ([`Store::transact`]), and with it one delivery row for every enabled
//! webhook that asked for its type. A delivery leaves the outbox only when
//! its target answered 2xx or it ran out of attempts, so a delivery cut
//! short by a crash is made again after a restart: at least once, each
//! event with its own id for the receiver to drop repeats by.

use super::db::{DbError, OptionalExt, Row, Sql, Value, params};
use serde_json::json;

use super::{Store, StoreError};
use crate::events::{EventRecord, EventType, kill_reason};

/// Version 7: events, webhooks and the deliveries still to make.
pub(super) const SCHEMA_7: &str = "
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    type        TEXT NOT NULL,
    at_ms       INTEGER NOT NULL,
    sandbox_id  TEXT,
    template_id TEXT,
    build_id    TEXT,
    data        TEXT
);
CREATE INDEX events_by_sandbox ON events (sandbox_id, seq);
CREATE INDEX events_by_time ON events (at_ms);
CREATE TABLE webhooks (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    url           TEXT NOT NULL,
    enabled       INTEGER NOT NULL,
    events        TEXT NOT NULL,
    secret        TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    failing       INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT
);
CREATE TABLE webhook_deliveries (
    webhook_id TEXT NOT NULL,
    event_seq  INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    next_at_ms INTEGER NOT NULL,
    PRIMARY KEY (webhook_id, event_seq)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at_ms);
";

const EVENT_COLUMNS: &str = "seq, id, type, at_ms, sandbox_id, template_id, build_id, data";

const WEBHOOK_COLUMNS: &str =
    "id, name, url, enabled, events, secret, created_at_ms, failing, last_error";

/// A webhook: where events of the types it names are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub id: String,
    pub name: String,
    pub url: String,
    pub enabled: bool,
    /// Event type names.
    pub events: Vec<String>,
    /// Signs each delivery; never shown again once set.
    pub secret: String,
    pub created_at_ms: i64,
    /// Its last delivery was given up.
    pub failing: bool,
    pub last_error: Option<String>,
}

/// What a `PATCH` changes; `None` keeps the field.
#[derive(Debug, Clone, Default)]
pub struct WebhookChange {
    pub name: Option<String>,
    pub url: Option<String>,
    pub enabled: Option<bool>,
    pub events: Option<Vec<String>>,
    pub secret: Option<String>,
}

/// A delivery that is due: the event, and where and how to send it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub webhook_id: String,
    pub url: String,
    pub secret: String,
    /// Attempts made before this one.
    pub attempts: u32,
    pub event: EventRecord,
}

/// Which events [`Store::events`] returns.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// One sandbox's, else every sandbox's.
    pub sandbox_id: Option<String>,
    /// Any of these types; empty for every sandbox type.
    pub types: Vec<EventType>,
    pub offset: u64,
    pub limit: u32,
    /// Oldest first; newest first otherwise.
    pub oldest_first: bool,
}

/// Records an event of `kind` inside transaction `c`, queueing it for the
/// webhooks that want it. Returns its sequence number.
pub(super) fn record(
    c: &mut dyn Sql,
    kind: EventType,
    sandbox_id: Option<&str>,
    template_id: Option<&str>,
    build_id: Option<&str>,
    data: Option<&serde_json::Value>,
    at_ms: i64,
) -> Result<i64, DbError> {
    let id = hearth_node::random_uuid()
        .map_err(|e| DbError::Other(format!("cannot make an event id: {e}")))?;
    let seq: i64 = c.query_row(
        "INSERT INTO events (id, type, at_ms, sandbox_id, template_id, build_id, data) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING seq",
        params![
            id,
            kind.as_str(),
            at_ms,
            sandbox_id,
            template_id,
            build_id,
            data.map(|d| d.to_string())
        ],
        |r| r.get(0),
    )?;
    let wanted = c.dialect().json_elements("webhooks.events");
    c.execute(
        &format!(
            "INSERT INTO webhook_deliveries (webhook_id, event_seq, next_at_ms) \
             SELECT id, ?1, ?2 FROM webhooks WHERE enabled = 1 \
             AND EXISTS (SELECT 1 FROM {wanted} WHERE value = ?3)"
        ),
        params![seq, at_ms, kind.as_str()],
    )?;
    Ok(seq)
}

/// Records a sandbox's event, with its template and metadata read from its
/// row and `extra` fields in its data. Nothing if it has no row.
pub(super) fn record_sandbox(
    c: &mut dyn Sql,
    kind: EventType,
    sandbox_id: &str,
    extra: serde_json::Map<String, serde_json::Value>,
    at_ms: i64,
) -> Result<(), DbError> {
    let row: Option<(String, String)> = c
        .query_row(
            "SELECT template_id, metadata FROM sandboxes WHERE sandbox_id = ?1",
            params![sandbox_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((template, metadata)) = row else {
        return Ok(());
    };
    let mut data = extra;
    let metadata: serde_json::Value = serde_json::from_str(&metadata).unwrap_or(json!({}));
    if metadata.as_object().is_some_and(|m| !m.is_empty()) {
        data.insert("sandbox_metadata".into(), metadata);
    }
    let data = (!data.is_empty()).then_some(serde_json::Value::Object(data));
    record(
        c,
        kind,
        Some(sandbox_id),
        Some(&template),
        None,
        data.as_ref(),
        at_ms,
    )?;
    Ok(())
}

/// The event data of a killed sandbox.
pub(super) fn killed_data(reason: &str) -> serde_json::Map<String, serde_json::Value> {
    let mut data = serde_json::Map::new();
    data.insert("kill_reason".into(), json!(kill_reason(reason)));
    data.insert("reason".into(), json!(reason));
    data
}

/// ` AND type IN (…)` for `types` (nothing if empty), their names added
/// to `args` as the numbered parameters it names.
fn types_filter(types: &[EventType], args: &mut Vec<Value>) -> String {
    if types.is_empty() {
        return String::new();
    }
    let marks: Vec<String> = types
        .iter()
        .map(|t| {
            args.push(Value::Text(t.as_str().to_owned()));
            format!("?{}", args.len())
        })
        .collect();
    format!(" AND type IN ({})", marks.join(", "))
}

fn event_from_row(row: &Row) -> Result<EventRecord, DbError> {
    event_at(row, 0)
}

/// The event whose [`EVENT_COLUMNS`] start at column `first` of `row`.
fn event_at(row: &Row, first: usize) -> Result<EventRecord, DbError> {
    let data: Option<String> = row.get(first + 7)?;
    Ok(EventRecord {
        seq: row.get(first)?,
        id: row.get(first + 1)?,
        kind: row.get(first + 2)?,
        at_ms: row.get(first + 3)?,
        sandbox_id: row.get(first + 4)?,
        template_id: row.get(first + 5)?,
        build_id: row.get(first + 6)?,
        data: data.and_then(|d| serde_json::from_str(&d).ok()),
    })
}

/// A webhook's values in [`WEBHOOK_COLUMNS`] order, its `events` as
/// JSON.
fn webhook_params(hook: &Webhook, events: &str) -> Vec<Value> {
    params![
        hook.id,
        hook.name,
        hook.url,
        hook.enabled,
        events,
        hook.secret,
        hook.created_at_ms,
        hook.failing,
        hook.last_error,
    ]
    .to_vec()
}

fn webhook_from_row(row: &Row) -> Result<Webhook, DbError> {
    let events: String = row.get(4)?;
    Ok(Webhook {
        id: row.get(0)?,
        name: row.get(1)?,
        url: row.get(2)?,
        enabled: row.get(3)?,
        events: serde_json::from_str(&events).unwrap_or_default(),
        secret: row.get(5)?,
        created_at_ms: row.get(6)?,
        failing: row.get(7)?,
        last_error: row.get(8)?,
    })
}

impl Store {
    /// A receiver of the newest event's sequence number, changed as events
    /// are recorded through this store (other processes' are seen by
    /// reading).
    pub fn event_feed(&self) -> tokio::sync::watch::Receiver<i64> {
        self.events.subscribe()
    }

    /// The sandbox events `query` selects.
    pub fn events(&self, query: &EventQuery) -> Result<Vec<EventRecord>, StoreError> {
        let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE ");
        let mut args: Vec<Value> = Vec::new();
        match &query.sandbox_id {
            Some(id) => {
                args.push(Value::Text(id.clone()));
                sql.push_str("sandbox_id = ?1");
            }
            None => sql.push_str("sandbox_id IS NOT NULL"),
        }
        sql.push_str(&types_filter(&query.types, &mut args));
        let order = if query.oldest_first { "ASC" } else { "DESC" };
        args.push(Value::Integer(i64::from(query.limit)));
        args.push(Value::Integer(
            i64::try_from(query.offset).unwrap_or(i64::MAX),
        ));
        sql.push_str(&format!(
            " ORDER BY seq {order} LIMIT ?{} OFFSET ?{}",
            args.len() - 1,
            args.len()
        ));
        self.with(|c| c.query_map(&sql, &args, event_from_row))
    }

    /// Up to `limit` events (of sandboxes and builds) after sequence
    /// number `after`, oldest first: the stream's next page.
    pub fn events_after(&self, after: i64, limit: u32) -> Result<Vec<EventRecord>, StoreError> {
        self.with(|c| {
            c.query_map(
                &format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2"),
                params![after, limit],
                event_from_row,
            )
        })
    }

    /// The sequence number before the newest `count` events of `types`
    /// (any if empty) and of sandbox `sandbox_id` (any if `None`), 0 if
    /// there are fewer: where a stream starts to show the last `count`.
    pub fn seq_before_last(
        &self,
        count: u32,
        types: &[EventType],
        sandbox_id: Option<&str>,
    ) -> Result<i64, StoreError> {
        if count == 0 {
            return self.last_seq();
        }
        let mut args: Vec<Value> = vec![Value::Integer(i64::from(count))];
        let mut filter = String::from("1 = 1");
        if let Some(id) = sandbox_id {
            args.push(Value::Text(id.to_owned()));
            filter.push_str(&format!(" AND sandbox_id = ?{}", args.len()));
        }
        filter.push_str(&types_filter(types, &mut args));
        self.with(|c| {
            c.query_row(
                &format!(
                    "SELECT COALESCE(MIN(seq) - 1, 0) FROM \
                     (SELECT seq FROM events WHERE {filter} ORDER BY seq DESC LIMIT ?1) AS newest"
                ),
                &args,
                |r| r.get(0),
            )
        })
    }

    /// The newest event's sequence number, 0 if there is none.
    pub fn last_seq(&self) -> Result<i64, StoreError> {
        self.with(|c| {
            c.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", params![], |r| {
                r.get(0)
            })
        })
    }

    /// Removes events recorded before `before_ms` and what was left to
    /// deliver of them; returns how many events went.
    pub fn forget_events(&self, before_ms: i64) -> Result<usize, StoreError> {
        self.transact(|tx| {
            tx.execute(
                "DELETE FROM webhook_deliveries WHERE event_seq IN \
                 (SELECT seq FROM events WHERE at_ms < ?1)",
                params![before_ms],
            )?;
            tx.execute("DELETE FROM events WHERE at_ms < ?1", params![before_ms])
        })
    }

    // Webhooks.

    pub fn insert_webhook(&self, hook: &Webhook) -> Result<(), StoreError> {
        let events = serde_json::to_string(&hook.events).expect("strings serialise");
        self.with(|c| {
            c.execute(
                &format!(
                    "INSERT INTO webhooks ({WEBHOOK_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
                ),
                &webhook_params(hook, &events),
            )
        })?;
        Ok(())
    }

    /// Every webhook, oldest first.
    pub fn webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        self.with(|c| {
            c.query_map(
                &format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY created_at_ms, id"),
                params![],
                webhook_from_row,
            )
        })
    }

    pub fn webhook(&self, id: &str) -> Result<Option<Webhook>, StoreError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = ?1"),
                params![id],
                webhook_from_row,
            )
            .optional()
        })
    }

    /// Applies `change` to webhook `id`; its changed form, or `None` if
    /// there is no such webhook. Disabling it drops what it had left to
    /// deliver; a new URL clears its failing mark.
    pub fn update_webhook(
        &self,
        id: &str,
        change: &WebhookChange,
    ) -> Result<Option<Webhook>, StoreError> {
        let Some(mut hook) = self.webhook(id)? else {
            return Ok(None);
        };
        if let Some(name) = &change.name {
            hook.name.clone_from(name);
        }
        if let Some(url) = &change.url {
            if *url != hook.url {
                hook.failing = false;
                hook.last_error = None;
            }
            hook.url.clone_from(url);
        }
        if let Some(enabled) = change.enabled {
            hook.enabled = enabled;
        }
        if let Some(events) = &change.events {
            hook.events.clone_from(events);
        }
        if let Some(secret) = &change.secret {
            hook.secret.clone_from(secret);
        }
        let events = serde_json::to_string(&hook.events).expect("strings serialise");
        // Every column but created_at_ms (the 7th), which stays.
        let mut values = webhook_params(&hook, &events);
        values.remove(6);
        self.transact(|tx| {
            tx.execute(
                "UPDATE webhooks SET name = ?2, url = ?3, enabled = ?4, events = ?5, \
                 secret = ?6, failing = ?7, last_error = ?8 WHERE id = ?1",
                &values,
            )?;
            if !hook.enabled {
                tx.execute(
                    "DELETE FROM webhook_deliveries WHERE webhook_id = ?1",
                    params![id],
                )?;
            }
            Ok(())
        })?;
        Ok(Some(hook))
    }

    /// Removes webhook `id` and what it had left to deliver; false if there
    /// was none.
    pub fn delete_webhook(&self, id: &str) -> Result<bool, StoreError> {
        self.transact(|tx| {
            tx.execute(
                "DELETE FROM webhook_deliveries WHERE webhook_id = ?1",
                params![id],
            )?;
            tx.execute("DELETE FROM webhooks WHERE id = ?1", params![id])
        })
        .map(|n| n > 0)
    }

    // The outbox.

    /// Takes deliveries for this process to send: of each enabled webhook
    /// not in `busy` and with no delivery leased (in flight in any
    /// process: a webhook gets its events one at a time, in order), its
    /// oldest delivery due at `now_ms`; at most `limit`,
    /// oldest event first. Each is leased to this process until
    /// `lease_until_ms`: no other process sharing the store takes it
    /// before, and it is due again then if this one never says how it went
    /// (it stopped). One statement claims them, and a row another process
    /// claimed meanwhile no longer qualifies, so each goes to one process.
    pub fn claim_deliveries(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        busy: &[String],
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut args = params![now_ms, lease_until_ms, self.claimant(), limit].to_vec();
        let mut not_busy = String::new();
        if !busy.is_empty() {
            let first = args.len() + 1;
            let marks: Vec<String> = (first..first + busy.len())
                .map(|i| format!("?{i}"))
                .collect();
            not_busy = format!(" AND d.webhook_id NOT IN ({})", marks.join(", "));
            args.extend(busy.iter().map(|id| Value::Text(id.clone())));
        }
        self.transact(|tx| {
            let claimed: Vec<(String, i64)> = tx.query_map(
                &format!(
                    "UPDATE webhook_deliveries SET next_at_ms = ?2, claimed_by = ?3 \
                     WHERE next_at_ms <= ?1 AND (webhook_id, event_seq) IN \
                     (SELECT d.webhook_id, MIN(d.event_seq) FROM webhook_deliveries d \
                     JOIN webhooks w ON w.id = d.webhook_id \
                     WHERE d.next_at_ms <= ?1 AND w.enabled = 1{not_busy} \
                     AND NOT EXISTS (SELECT 1 FROM webhook_deliveries l \
                     WHERE l.webhook_id = d.webhook_id AND l.claimed_by IS NOT NULL \
                     AND l.next_at_ms > ?1) \
                     GROUP BY d.webhook_id ORDER BY MIN(d.event_seq) LIMIT ?4) \
                     RETURNING webhook_id, event_seq"
                ),
                &args,
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if claimed.is_empty() {
                return Ok(Vec::new());
            }
            let which: Vec<String> = (0..claimed.len())
                .map(|i| {
                    format!(
                        "(d.webhook_id = ?{} AND d.event_seq = ?{})",
                        2 * i + 1,
                        2 * i + 2
                    )
                })
                .collect();
            let keys: Vec<Value> = claimed
                .iter()
                .flat_map(|(hook, seq)| [Value::Text(hook.clone()), Value::Integer(*seq)])
                .collect();
            tx.query_map(
                &format!(
                    "SELECT d.webhook_id, w.url, w.secret, d.attempts, \
                     e.seq, e.id, e.type, e.at_ms, e.sandbox_id, e.template_id, e.build_id, e.data \
                     FROM webhook_deliveries d \
                     JOIN webhooks w ON w.id = d.webhook_id \
                     JOIN events e ON e.seq = d.event_seq \
                     WHERE {} ORDER BY d.event_seq",
                    which.join(" OR ")
                ),
                &keys,
                |r| {
                    Ok(Delivery {
                        webhook_id: r.get(0)?,
                        url: r.get(1)?,
                        secret: r.get(2)?,
                        attempts: r.get(3)?,
                        event: event_at(r, 4)?,
                    })
                },
            )
        })
    }

    /// Makes the deliveries this process's predecessor (the same node, or
    /// the one server) had taken due at `now_ms`: it stopped before saying
    /// how they went. Returns how many.
    pub fn release_claims(&self, now_ms: i64) -> Result<usize, StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE webhook_deliveries SET next_at_ms = ?1, claimed_by = NULL \
                 WHERE claimed_by = ?2",
                params![now_ms, self.claimant()],
            )
        })
    }

    /// Who claims deliveries through this store: its node, or the one
    /// server.
    fn claimant(&self) -> String {
        self.node.clone().unwrap_or_default()
    }

    /// When the next delivery is due (Unix milliseconds), if any is queued.
    pub fn next_delivery_at(&self) -> Result<Option<i64>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT MIN(d.next_at_ms) FROM webhook_deliveries d \
                 JOIN webhooks w ON w.id = d.webhook_id WHERE w.enabled = 1",
                params![],
                |r| r.get(0),
            )
        })
    }

    /// A delivery's target answered 2xx: it leaves the outbox, and its
    /// webhook is no longer failing.
    pub fn delivered(&self, webhook_id: &str, seq: i64) -> Result<(), StoreError> {
        self.transact(|tx| {
            tx.execute(
                "DELETE FROM webhook_deliveries WHERE webhook_id = ?1 AND event_seq = ?2",
                params![webhook_id, seq],
            )?;
            tx.execute(
                "UPDATE webhooks SET failing = 0, last_error = NULL WHERE id = ?1",
                params![webhook_id],
            )
        })?;
        Ok(())
    }

    /// An attempt failed with `error`: tried again at `retry_at_ms`, or,
    /// with `None`, given up and its webhook marked failing.
    pub fn delivery_failed(
        &self,
        webhook_id: &str,
        seq: i64,
        error: &str,
        retry_at_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        self.transact(|tx| {
            match retry_at_ms {
                Some(at) => tx.execute(
                    "UPDATE webhook_deliveries SET attempts = attempts + 1, next_at_ms = ?3, \
                     claimed_by = NULL WHERE webhook_id = ?1 AND event_seq = ?2",
                    params![webhook_id, seq, at],
                )?,
                None => tx.execute(
                    "DELETE FROM webhook_deliveries WHERE webhook_id = ?1 AND event_seq = ?2",
                    params![webhook_id, seq],
                )?,
            };
            tx.execute(
                "UPDATE webhooks SET failing = ?2, last_error = ?3 WHERE id = ?1",
                params![webhook_id, retry_at_ms.is_none(), error],
            )
        })?;
        Ok(())
    }

    /// Deliveries still queued for webhook `id` (for tests and listing).
    pub fn pending_deliveries(&self, id: &str) -> Result<u64, StoreError> {
        let n: i64 = self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM webhook_deliveries WHERE webhook_id = ?1",
                params![id],
                |r| r.get(0),
            )
        })?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SandboxState;
    use crate::store::tests::sandbox;

    fn hook(id: &str, events: &[EventType]) -> Webhook {
        Webhook {
            id: id.to_owned(),
            name: format!("hook {id}"),
            url: format!("http://127.0.0.1:9/{id}"),
            enabled: true,
            events: events.iter().map(|t| t.as_str().to_owned()).collect(),
            secret: "s".to_owned(),
            created_at_ms: 1,
            failing: false,
            last_error: None,
        }
    }

    fn kinds(events: &[EventRecord]) -> Vec<&str> {
        events.iter().map(|e| e.kind.as_str()).collect()
    }

    fn all_of(store: &Store, id: &str) -> Vec<EventRecord> {
        store
            .events(&EventQuery {
                sandbox_id: Some(id.to_owned()),
                limit: 100,
                oldest_first: true,
                ..EventQuery::default()
            })
            .unwrap()
    }

    store_test! {
    fn every_change_of_a_sandbox_is_an_event_and_a_stop_is_one_kill(store) {
        let mut feed = store.event_feed();
        let mut record = sandbox("a", 1000);
        record.metadata.insert("owner".into(), "ci".into());
        store.insert_sandbox(&record).unwrap();
        assert!(feed.has_changed().unwrap(), "a new event is announced");
        feed.mark_unchanged();
        store.set_end_at("a", 5000).unwrap();
        store.set_state("a", SandboxState::Paused).unwrap();
        // Paused again is no new event.
        store.set_state("a", SandboxState::Paused).unwrap();
        record.state = SandboxState::Running;
        store.update_sandbox(&record).unwrap();
        store.set_egress("a", false, &record.egress).unwrap();
        assert!(store.stop_sandbox("a", "timed out", 9000).unwrap());
        assert!(!store.stop_sandbox("a", "killed", 9100).unwrap());
        assert!(feed.has_changed().unwrap());

        let events = all_of(&store, "a");
        assert_eq!(
            kinds(&events),
            vec![
                "sandbox.lifecycle.created",
                "sandbox.lifecycle.updated",
                "sandbox.lifecycle.paused",
                "sandbox.lifecycle.resumed",
                "sandbox.lifecycle.updated",
                "sandbox.lifecycle.killed",
            ]
        );
        for e in &events {
            assert_eq!(e.template_id.as_deref(), Some("base"));
            assert_eq!(
                e.data.as_ref().unwrap()["sandbox_metadata"]["owner"],
                "ci",
                "{e:?}"
            );
        }
        let data = |i: usize| events[i].data.clone().unwrap();
        assert!(
            data(1)["set_timeout"]
                .as_str()
                .unwrap()
                .starts_with("1970-01-01T00:00:05")
        );
        assert_eq!(data(4)["network_egress"]["allowInternetAccess"], false);
        assert_eq!(data(5)["kill_reason"], "timeout");
        assert_eq!(data(5)["reason"], "timed out");
        assert_eq!(events[0].at_ms, 1000);
        assert_eq!(events[5].at_ms, 9000);
        let ids: std::collections::HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids.len(), events.len(), "ids are unique");

        // Newest first by default, a page at a time, filtered by type.
        let newest = store
            .events(&EventQuery {
                limit: 2,
                offset: 1,
                ..EventQuery::default()
            })
            .unwrap();
        assert_eq!(
            kinds(&newest),
            vec!["sandbox.lifecycle.updated", "sandbox.lifecycle.resumed"]
        );
        let killed = store
            .events(&EventQuery {
                types: vec![EventType::SandboxKilled, EventType::SandboxCreated],
                limit: 10,
                ..EventQuery::default()
            })
            .unwrap();
        assert_eq!(
            kinds(&killed),
            vec!["sandbox.lifecycle.killed", "sandbox.lifecycle.created"]
        );
        // Another sandbox's are not this one's; an unknown id has none.
        store.insert_sandbox(&sandbox("b", 2000)).unwrap();
        assert_eq!(all_of(&store, "a").len(), 6);
        assert!(all_of(&store, "nobody").is_empty());
    }
    }

    store_test! {
    fn builds_are_events_of_the_stream_not_of_the_sandbox_list(store) {
        let build = crate::store::BuildRecord {
            build_id: "b1".into(),
            template: "py".into(),
            status: crate::store::BuildStatus::Waiting,
            reason: None,
            reason_step: None,
            node_build: None,
            tags: vec!["default".into()],
            cpu_count: 1,
            memory_mb: 256,
            created_at_ms: 1,
            updated_at_ms: 1,
            finished_at_ms: None,
        };
        store.insert_build(&build).unwrap();
        assert!(store.start_build("b1", 2).unwrap());
        store
            .fail_build("b1", "RUN exited 1", Some("2"), 3)
            .unwrap();
        let stream = store.events_after(0, 10).unwrap();
        assert_eq!(
            kinds(&stream),
            vec!["template.build.started", "template.build.failed"]
        );
        assert_eq!(stream[1].template_id.as_deref(), Some("py"));
        assert_eq!(stream[1].build_id.as_deref(), Some("b1"));
        assert_eq!(stream[1].data.as_ref().unwrap()["reason"], "RUN exited 1");
        let listed = store
            .events(&EventQuery {
                limit: 10,
                ..EventQuery::default()
            })
            .unwrap();
        assert!(listed.is_empty(), "{listed:?}");
        // The stream pages and starts at the last N.
        store.insert_sandbox(&sandbox("s", 5)).unwrap();
        assert_eq!(store.last_seq().unwrap(), 3);
        assert_eq!(store.seq_before_last(1, &[], None).unwrap(), 2);
        assert_eq!(store.seq_before_last(10, &[], None).unwrap(), 0);
        assert_eq!(store.seq_before_last(0, &[], None).unwrap(), 3);
        // The last N of a kind or of a sandbox, however many others follow.
        assert_eq!(
            store
                .seq_before_last(1, &[EventType::BuildStarted], None)
                .unwrap(),
            0
        );
        assert_eq!(store.seq_before_last(1, &[], Some("s")).unwrap(), 2);
        assert_eq!(store.seq_before_last(1, &[], Some("nobody")).unwrap(), 0);
        assert_eq!(
            kinds(&store.events_after(1, 1).unwrap()),
            vec!["template.build.failed"]
        );
    }
    }

    store_test! {
    fn the_outbox_queues_each_event_for_the_hooks_that_want_it(store) {
        store
            .insert_webhook(&hook(
                "all",
                &[EventType::SandboxCreated, EventType::SandboxKilled],
            ))
            .unwrap();
        store
            .insert_webhook(&hook("kills", &[EventType::SandboxKilled]))
            .unwrap();
        let mut off = hook("off", &[EventType::SandboxCreated]);
        off.enabled = false;
        store.insert_webhook(&off).unwrap();

        store.insert_sandbox(&sandbox("a", 1000)).unwrap();
        store.set_end_at("a", 2000).unwrap();
        store.stop_sandbox("a", "killed", 3000).unwrap();
        assert_eq!(store.pending_deliveries("all").unwrap(), 2);
        assert_eq!(store.pending_deliveries("kills").unwrap(), 1);
        assert_eq!(store.pending_deliveries("off").unwrap(), 0);

        assert!(
            store.claim_deliveries(999, 2000, &[], 10).unwrap().is_empty(),
            "not due yet"
        );
        // The oldest due delivery of each webhook, leased until 6000.
        let kinds = |due: &[Delivery]| -> Vec<(String, String)> {
            due.iter()
                .map(|d| (d.webhook_id.clone(), d.event.kind.clone()))
                .collect()
        };
        let due = store.claim_deliveries(5000, 6000, &[], 10).unwrap();
        let pair = |h: &str, k: &str| (h.to_owned(), format!("sandbox.lifecycle.{k}"));
        assert_eq!(kinds(&due), [pair("all", "created"), pair("kills", "killed")]);
        let created = &due[0];
        // Leased: the next claim takes what is left, not those.
        let next = store.claim_deliveries(5000, 6000, &["kills".to_owned()], 10).unwrap();
        assert!(next.is_empty(), "all's next waits for its first: {:?}", kinds(&next));

        // A retry waits; giving up marks the hook failing; a success clears it.
        store
            .delivery_failed("all", created.event.seq, "HTTP 500", Some(8000))
            .unwrap();
        assert_eq!(store.next_delivery_at().unwrap(), Some(3000));
        let busy = ["kills".to_owned()];
        let killed = store.claim_deliveries(5000, 6000, &busy, 10).unwrap();
        assert_eq!(kinds(&killed), [pair("all", "killed")]);
        store.delivered("all", killed[0].event.seq).unwrap();
        // The lease of kills' delivery ends: it is due again.
        let again = store.claim_deliveries(6000, 7000, &[], 10).unwrap();
        assert_eq!(kinds(&again), [pair("kills", "killed")]);
        let retried = store.claim_deliveries(8000, 9000, &busy, 10).unwrap();
        assert_eq!(kinds(&retried), [pair("all", "created")]);
        assert_eq!(retried[0].attempts, 1);
        store
            .delivery_failed("all", created.event.seq, "HTTP 500", None)
            .unwrap();
        let all = store.webhook("all").unwrap().unwrap();
        assert!(all.failing);
        assert_eq!(all.last_error.as_deref(), Some("HTTP 500"));
        store.delivered("kills", again[0].event.seq).unwrap();
        assert_eq!(store.pending_deliveries("all").unwrap(), 0);
        assert_eq!(store.pending_deliveries("kills").unwrap(), 0);

        // What a stopped process had taken is due again when it restarts.
        store.insert_sandbox(&sandbox("b", 9000)).unwrap();
        let taken = store.claim_deliveries(i64::MAX - 1, i64::MAX, &[], 10).unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(store.release_claims(9500).unwrap(), 1);
        assert_eq!(store.next_delivery_at().unwrap(), Some(9500));

        // Disabling drops what was queued; deleting removes the hook.
        let changed = store
            .update_webhook(
                "kills",
                &WebhookChange {
                    enabled: Some(false),
                    name: Some("renamed".into()),
                    ..WebhookChange::default()
                },
            )
            .unwrap()
            .unwrap();
        assert_eq!(changed.name, "renamed");
        assert_eq!(store.pending_deliveries("kills").unwrap(), 0);
        assert!(
            store
                .update_webhook("nope", &WebhookChange::default())
                .unwrap()
                .is_none()
        );
        assert!(store.delete_webhook("kills").unwrap());
        assert!(!store.delete_webhook("kills").unwrap());
        let names: Vec<String> = store
            .webhooks()
            .unwrap()
            .into_iter()
            .map(|h| h.id)
            .collect();
        assert_eq!(names, ["all", "off"]);
    }
    }

    store_test! {
    fn old_events_and_their_deliveries_are_forgotten(store) {
        store
            .insert_webhook(&hook("h", &[EventType::SandboxCreated]))
            .unwrap();
        store.insert_sandbox(&sandbox("old", 1000)).unwrap();
        store.insert_sandbox(&sandbox("new", 9000)).unwrap();
        assert_eq!(store.forget_events(5000).unwrap(), 1);
        assert!(all_of(&store, "old").is_empty());
        assert_eq!(all_of(&store, "new").len(), 1);
        assert_eq!(store.pending_deliveries("h").unwrap(), 1);
    }
    }

    #[test]
    fn events_survive_a_reopen_and_the_feed_starts_at_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hearth.db");
        {
            let store = Store::open(&path).unwrap();
            store
                .insert_webhook(&hook("h", &[EventType::SandboxCreated]))
                .unwrap();
            store.insert_sandbox(&sandbox("a", 1000)).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(*store.event_feed().borrow(), 1);
        assert_eq!(
            store
                .claim_deliveries(i64::MAX, i64::MAX, &[], 10)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn two_processes_never_take_the_same_delivery() {
        let stores = crate::store::testing::postgres_stores(2);
        for i in 0..20 {
            stores[0]
                .insert_webhook(&hook(&format!("h{i}"), &[EventType::SandboxCreated]))
                .unwrap();
        }
        stores[0].insert_sandbox(&sandbox("a", 1000)).unwrap();
        let barrier = std::sync::Barrier::new(2);
        let taken: Vec<Vec<String>> = std::thread::scope(|scope| {
            let runs: Vec<_> = stores
                .iter()
                .map(|store| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        let mut mine = Vec::new();
                        barrier.wait();
                        loop {
                            let claimed = store.claim_deliveries(5000, 60_000, &[], 3).unwrap();
                            if claimed.is_empty() {
                                return mine;
                            }
                            mine.extend(claimed.into_iter().map(|d| d.webhook_id));
                        }
                    })
                })
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let mut all: Vec<&String> = taken.iter().flatten().collect();
        all.sort();
        let total = all.len();
        all.dedup();
        assert_eq!(total, 20, "every delivery taken: {taken:?}");
        assert_eq!(all.len(), 20, "none twice: {taken:?}");
    }
}
