//! The event routes of the REST API: E2B's lifecycle events
//! (`/events/sandboxes`) and webhooks (`/events/webhooks`), and Hearth's
//! live stream of every event (`/events/stream`, Server-Sent Events,
//! resumable with `Last-Event-ID`). The routes themselves are in
//! [`crate::api`]'s table.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{Api, body};
use crate::error::ApiError;
use crate::events::{EventRecord, EventType, check_webhook_url};
use crate::manager::{now_ms, rfc3339_ms};
use crate::store::{EventQuery, Store, Webhook, WebhookChange};
use crate::team_api::TEAM_ID;

/// Events a list returns when the request names no limit (E2B's), and at
/// most.
const DEFAULT_LIMIT: u32 = 10;
const MAX_LIMIT: u32 = 100;

/// Events a stream page reads at a time.
const STREAM_PAGE: u32 = 256;

/// The longest a stream waits without looking at the store: events
/// written by another process are not announced.
const STREAM_POLL: Duration = Duration::from_secs(1);

/// A query string's pairs, a key repeated as often as it was given.
fn pairs(query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, ApiError> {
    value
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{name} must be a whole number, not {value:?}")))
}

fn boolean(name: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "{name} must be true or false, not {value:?}"
        ))),
    }
}

/// `types` given once or more, each one type or several comma-separated.
fn event_types(values: &[&str], sandbox_only: bool) -> Result<Vec<EventType>, ApiError> {
    let mut types = Vec::new();
    for name in values.iter().flat_map(|v| v.split(',')).map(str::trim) {
        if name.is_empty() {
            continue;
        }
        let kind = EventType::parse(name).map_err(ApiError::bad_request)?;
        if sandbox_only && !kind.is_sandbox() {
            return Err(ApiError::bad_request(format!(
                "types: {name} is not a sandbox event"
            )));
        }
        if !types.contains(&kind) {
            types.push(kind);
        }
    }
    Ok(types)
}

/// The list query of `/events/sandboxes[/{id}]`: `offset`, `limit`,
/// `orderAsc`, `types`.
fn list_query(query: Option<&str>, sandbox_id: Option<String>) -> Result<EventQuery, ApiError> {
    let mut q = EventQuery {
        sandbox_id,
        limit: DEFAULT_LIMIT,
        ..EventQuery::default()
    };
    let mut types = Vec::new();
    let given = pairs(query);
    for (key, value) in &given {
        match key.as_str() {
            "offset" => q.offset = number("offset", value)?,
            "limit" => {
                let limit: u32 = number("limit", value)?;
                if !(1..=MAX_LIMIT).contains(&limit) {
                    return Err(ApiError::bad_request(format!(
                        "limit must be 1 to {MAX_LIMIT}, not {limit}"
                    )));
                }
                q.limit = limit;
            }
            "orderAsc" => q.oldest_first = boolean("orderAsc", value)?,
            "types" => types.push(value.as_str()),
            _ => {}
        }
    }
    q.types = event_types(&types, true)?;
    Ok(q)
}

fn events_json(events: &[EventRecord]) -> Json<Value> {
    Json(Value::Array(
        events.iter().map(EventRecord::to_json).collect(),
    ))
}

/// `GET /events/sandboxes`: every sandbox's events, newest first unless
/// `orderAsc=true`.
pub(crate) async fn list_events(
    State(api): State<Arc<Api>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = list_query(query.as_deref(), None)?;
    Ok(events_json(&api.manager.store().events(&q)?))
}

/// `GET /events/sandboxes/{sandboxID}`: one sandbox's events, kept after it
/// stopped (an id that never ran has none).
pub(crate) async fn sandbox_events(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = list_query(query.as_deref(), Some(id))?;
    Ok(events_json(&api.manager.store().events(&q)?))
}

/// Where a stream starts and what it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StreamQuery {
    /// The events after this sequence number.
    after: Option<i64>,
    /// Else, the last `tail` events it selects first (0: only new ones).
    tail: u32,
    /// Keep the stream open for new events; else end after the backlog.
    follow: bool,
    types: Vec<EventType>,
    sandbox_id: Option<String>,
}

/// `Last-Event-ID` wins over `since`; `tail` applies when neither is
/// given.
fn stream_query(query: Option<&str>, last_event_id: Option<&str>) -> Result<StreamQuery, ApiError> {
    let mut q = StreamQuery {
        after: None,
        tail: 0,
        follow: true,
        types: Vec::new(),
        sandbox_id: None,
    };
    let mut types = Vec::new();
    let given = pairs(query);
    for (key, value) in &given {
        match key.as_str() {
            "since" => q.after = Some(number("since", value)?),
            "tail" => q.tail = number::<u32>("tail", value)?.min(10_000),
            "follow" => q.follow = boolean("follow", value)?,
            "types" => types.push(value.as_str()),
            "sandboxID" => q.sandbox_id = Some(value.clone()).filter(|v| !v.is_empty()),
            _ => {}
        }
    }
    q.types = event_types(&types, false)?;
    if let Some(id) = last_event_id {
        q.after = Some(number("Last-Event-ID", id.trim())?);
    }
    Ok(q)
}

impl StreamQuery {
    fn wants(&self, event: &EventRecord) -> bool {
        (self.types.is_empty() || self.types.iter().any(|t| t.as_str() == event.kind))
            && self
                .sandbox_id
                .as_ref()
                .is_none_or(|id| event.sandbox_id.as_ref() == Some(id))
    }
}

/// `GET /events/stream`: every event (sandboxes' and template builds') as
/// Server-Sent Events, each with its sequence number as its id and its
/// type as its event name; `since=SEQ` or `Last-Event-ID` resumes after an
/// event, `tail=N` starts with the last N, `follow=false` ends after what
/// is recorded, `types` and `sandboxID` filter.
pub(crate) async fn stream(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let q = stream_query(query.as_deref(), last_event_id)?;
    let store = Arc::clone(api.manager.store_arc());
    let after = match q.after {
        Some(after) => after,
        None => store.seq_before_last(q.tail, &q.types, q.sandbox_id.as_deref())?,
    };
    let sse = Sse::new(event_stream(store, q, after, api.stopping.clone()))
        .keep_alive(KeepAlive::default());
    Ok(sse.into_response())
}

/// The events after `after` that `q` selects, then (following) new ones
/// as they are recorded, until the server stops.
fn event_stream(
    store: Arc<Store>,
    q: StreamQuery,
    after: i64,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let feed = store.event_feed();
    futures_util::stream::unfold(
        (
            store,
            q,
            after,
            feed,
            std::collections::VecDeque::new(),
            stopping,
        ),
        |(store, q, mut after, mut feed, mut queued, mut stopping)| async move {
            loop {
                if *stopping.borrow() {
                    return None;
                }
                if let Some(event) = queued.pop_front() {
                    let sse = sse_event(&event);
                    return Some((Ok(sse), (store, q, after, feed, queued, stopping)));
                }
                let page = match store.events_after(after, STREAM_PAGE) {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::warn!("reading events for a stream: {e}");
                        return None;
                    }
                };
                if let Some(last) = page.last() {
                    after = last.seq;
                    queued.extend(page.into_iter().filter(|e| q.wants(e)));
                    continue;
                }
                if !q.follow {
                    return None;
                }
                tokio::select! {
                    _ = feed.changed() => {}
                    _ = stopping.changed() => {}
                    () = tokio::time::sleep(STREAM_POLL) => {}
                }
            }
        },
    )
}

fn sse_event(event: &EventRecord) -> Event {
    Event::default()
        .id(event.seq.to_string())
        .event(event.kind.clone())
        .data(event.to_json().to_string())
}

// Webhooks.

/// A webhook as the API shows it: never its secret.
fn webhook_json(hook: &Webhook) -> Value {
    json!({
        "id": hook.id,
        "teamId": TEAM_ID,
        "name": hook.name,
        "createdAt": rfc3339_ms(hook.created_at_ms),
        "enabled": hook.enabled,
        "url": hook.url,
        "events": hook.events,
        "failing": hook.failing,
        "lastError": hook.last_error,
    })
}

/// The body of `POST` and `PATCH /events/webhooks…`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WebhookBody {
    name: Option<String>,
    url: Option<String>,
    enabled: Option<bool>,
    events: Option<Vec<String>>,
    signature_secret: Option<String>,
}

fn checked_events(events: &[String]) -> Result<Vec<String>, ApiError> {
    if events.is_empty() {
        return Err(ApiError::bad_request(
            "events must name at least one event type",
        ));
    }
    let refs: Vec<&str> = events.iter().map(String::as_str).collect();
    Ok(event_types(&refs, false)?
        .into_iter()
        .map(|t| t.as_str().to_owned())
        .collect())
}

fn checked_url(url: &str) -> Result<String, ApiError> {
    check_webhook_url(url).map_err(ApiError::bad_request)?;
    Ok(url.to_owned())
}

fn checked_secret(secret: &str) -> Result<String, ApiError> {
    if secret.is_empty() || secret.len() > 1024 {
        return Err(ApiError::bad_request(
            "signatureSecret must be 1 to 1024 characters",
        ));
    }
    Ok(secret.to_owned())
}

fn checked_name(name: &str) -> Result<String, ApiError> {
    if name.len() > 256 {
        return Err(ApiError::bad_request("name must be at most 256 characters"));
    }
    Ok(name.to_owned())
}

/// `POST /events/webhooks`: registers a webhook (201).
pub(crate) async fn create_webhook(
    State(api): State<Arc<Api>>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let given: WebhookBody = body(&bytes)?;
    let url = checked_url(
        given
            .url
            .as_deref()
            .ok_or_else(|| ApiError::bad_request("url is required"))?,
    )?;
    let events = checked_events(
        given
            .events
            .as_deref()
            .ok_or_else(|| ApiError::bad_request("events is required"))?,
    )?;
    let secret = checked_secret(
        given
            .signature_secret
            .as_deref()
            .ok_or_else(|| ApiError::bad_request("signatureSecret is required"))?,
    )?;
    let hook = Webhook {
        id: hearth_node::random_uuid()
            .map_err(|e| ApiError::internal(format!("cannot draw an id: {e}")))?,
        name: checked_name(given.name.as_deref().unwrap_or_default())?,
        url,
        enabled: given.enabled.unwrap_or(true),
        events,
        secret,
        created_at_ms: now_ms(),
        failing: false,
        last_error: None,
    };
    api.manager.store().insert_webhook(&hook)?;
    Ok((StatusCode::CREATED, Json(webhook_json(&hook))).into_response())
}

/// `GET /events/webhooks`: every webhook, oldest first.
pub(crate) async fn list_webhooks(State(api): State<Arc<Api>>) -> Result<Json<Value>, ApiError> {
    let hooks = api.manager.store().webhooks()?;
    Ok(Json(hooks.iter().map(webhook_json).collect()))
}

fn no_webhook(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("webhook {id} not found"))
}

/// `GET /events/webhooks/{webhookID}`.
pub(crate) async fn get_webhook(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let hook = api
        .manager
        .store()
        .webhook(&id)?
        .ok_or_else(|| no_webhook(&id))?;
    Ok(Json(webhook_json(&hook)))
}

/// `PATCH /events/webhooks/{webhookID}`: replaces the fields given.
pub(crate) async fn update_webhook(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let given: WebhookBody = body(&bytes)?;
    let change = WebhookChange {
        name: given.name.as_deref().map(checked_name).transpose()?,
        url: given.url.as_deref().map(checked_url).transpose()?,
        enabled: given.enabled,
        events: given.events.as_deref().map(checked_events).transpose()?,
        secret: given
            .signature_secret
            .as_deref()
            .map(checked_secret)
            .transpose()?,
    };
    let hook = api
        .manager
        .store()
        .update_webhook(&id, &change)?
        .ok_or_else(|| no_webhook(&id))?;
    Ok(Json(webhook_json(&hook)))
}

/// `DELETE /events/webhooks/{webhookID}`: unregisters it; what it had left
/// to deliver is dropped.
pub(crate) async fn delete_webhook(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !api.manager.store().delete_webhook(&id)? {
        return Err(no_webhook(&id));
    }
    Ok(StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_queries_take_e2b_parameters() {
        let q = list_query(
            Some("offset=5&limit=20&orderAsc=true&types=sandbox.lifecycle.killed&types=sandbox.lifecycle.created"),
            Some("sbx".into()),
        )
        .unwrap();
        assert_eq!(q.offset, 5);
        assert_eq!(q.limit, 20);
        assert!(q.oldest_first);
        assert_eq!(
            q.types,
            [EventType::SandboxKilled, EventType::SandboxCreated]
        );
        assert_eq!(q.sandbox_id.as_deref(), Some("sbx"));
        let default = list_query(None, None).unwrap();
        assert_eq!(
            (default.limit, default.offset, default.oldest_first),
            (10, 0, false)
        );
        for bad in [
            "limit=0",
            "limit=101",
            "offset=-1",
            "orderAsc=yes",
            "types=sandbox.lifecycle.exploded",
            "types=template.build.failed",
        ] {
            assert!(list_query(Some(bad), None).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_stream_resumes_after_the_last_event_id() {
        let q = stream_query(
            Some("since=3&follow=false&types=template.build.failed"),
            None,
        )
        .unwrap();
        assert_eq!(q.after, Some(3));
        assert!(!q.follow);
        assert_eq!(q.types, [EventType::BuildFailed]);
        let q = stream_query(Some("since=3"), Some("42")).unwrap();
        assert_eq!(q.after, Some(42));
        let q = stream_query(Some("tail=20"), None).unwrap();
        assert_eq!((q.after, q.tail, q.follow), (None, 20, true));
        assert!(stream_query(None, Some("x")).is_err());
    }

    #[test]
    fn a_stream_filters_by_type_and_sandbox() {
        let event = |kind: EventType, sandbox: Option<&str>| EventRecord {
            seq: 1,
            id: "e".into(),
            kind: kind.as_str().into(),
            at_ms: 0,
            sandbox_id: sandbox.map(Into::into),
            template_id: None,
            build_id: None,
            data: None,
        };
        let q = stream_query(Some("types=sandbox.lifecycle.killed&sandboxID=a"), None).unwrap();
        assert!(q.wants(&event(EventType::SandboxKilled, Some("a"))));
        assert!(!q.wants(&event(EventType::SandboxKilled, Some("b"))));
        assert!(!q.wants(&event(EventType::SandboxCreated, Some("a"))));
        let all = stream_query(None, None).unwrap();
        assert!(all.wants(&event(EventType::BuildStarted, None)));
    }

    #[test]
    fn webhook_bodies_are_checked() {
        assert!(checked_events(&[]).is_err());
        assert!(checked_events(&["sandbox.lifecycle.nope".into()]).is_err());
        assert_eq!(
            checked_events(&[
                "sandbox.lifecycle.killed".into(),
                "sandbox.lifecycle.killed".into()
            ])
            .unwrap(),
            ["sandbox.lifecycle.killed"]
        );
        assert!(checked_url("ftp://x/y").is_err());
        assert!(checked_secret("").is_err());
        assert!(body::<WebhookBody>(br#"{"url":"http://x","bogus":1}"#).is_err());
    }
}
