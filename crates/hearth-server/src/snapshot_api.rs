//! The snapshot routes of the REST API (E2B's): `POST
//! /sandboxes/{id}/snapshots` saves a running sandbox as a template that
//! new sandboxes start from, `GET /snapshots` lists them; they are deleted
//! as templates (`DELETE /templates/{id}`). The routes themselves are in
//! [`crate::api`]'s table.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{Api, body};
use crate::builds::{DEFAULT_TAG, split_name_tag};
use crate::error::ApiError;
use crate::store::{SnapshotQuery, SnapshotRecord};

/// Snapshots a list returns when the request names no limit, and at most
/// (E2B's).
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 100;

#[derive(Debug, Default, Deserialize)]
struct SnapshotBody {
    /// `name` or `name:tag`; a fresh id when absent.
    name: Option<String>,
    /// Keep memory and processes (the default), or the disk alone.
    memory: Option<bool>,
}

pub async fn create(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let request: SnapshotBody = body(&bytes)?;
    let (name, tag) = match request.name.as_deref() {
        Some(text) => {
            let (name, tag) = split_name_tag(text)?;
            (name.to_owned(), tag)
        }
        None => (fresh_name()?, None),
    };
    let memory = request.memory.unwrap_or(true);
    let record = api.builds.snapshot(&id, &name, tag, memory).await?;
    Ok((StatusCode::CREATED, Json(snapshot_json(&record, tag))).into_response())
}

/// The name of a snapshot asked for without one: 20 characters of
/// `[a-z0-9]`, like E2B's template ids.
fn fresh_name() -> Result<String, ApiError> {
    let hex = hearth_node::random_hex::<10>()
        .map_err(|e| ApiError::internal(format!("cannot draw a snapshot name: {e}")))?;
    Ok(format!("s{}", &hex[1..]))
}

/// E2B's `SnapshotInfo`: the id sandboxes are created from, which is the
/// template's (a later snapshot of the same name replaces what it starts),
/// and its full names, `name:default` and `name:tag` when it has a tag.
fn snapshot_json(record: &SnapshotRecord, tag: Option<&str>) -> Value {
    let mut names = vec![format!("{}:{DEFAULT_TAG}", record.template)];
    names.extend(
        tag.filter(|t| *t != DEFAULT_TAG)
            .map(|t| format!("{}:{t}", record.template)),
    );
    json!({ "snapshotID": record.template, "names": names })
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListParams {
    #[serde(rename = "sandboxID")]
    sandbox_id: Option<String>,
    name: Option<String>,
    limit: Option<usize>,
    next_token: Option<String>,
}

pub async fn list(
    State(api): State<Arc<Api>>,
    Query(params): Query<ListParams>,
) -> Result<Response, ApiError> {
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    // `name`, `name:tag` or E2B's `team/name`: Hearth has no teams.
    let template = match params.name.as_deref().filter(|n| !n.is_empty()) {
        Some(text) => {
            let text = text.rsplit_once('/').map_or(text, |(_, name)| name);
            Some(split_name_tag(text)?.0.to_owned())
        }
        None => None,
    };
    let page = api.builds.store().snapshots(&SnapshotQuery {
        sandbox_id: params.sandbox_id.filter(|s| !s.is_empty()),
        template,
        next_token: params.next_token.filter(|t| !t.is_empty()),
        limit,
    })?;
    let mut headers = HeaderMap::new();
    if let Some(token) = page.next_token
        && let Ok(value) = HeaderValue::from_str(&token)
    {
        headers.insert("x-next-token", value);
    }
    let body: Vec<Value> = page
        .snapshots
        .iter()
        .map(|s| snapshot_json(s, None))
        .collect();
    Ok((headers, Json(Value::Array(body))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(template: &str) -> SnapshotRecord {
        SnapshotRecord {
            build_id: "b".into(),
            template: template.into(),
            sandbox_id: "s".into(),
            memory: true,
            created_at_ms: 0,
        }
    }

    #[test]
    fn a_snapshot_is_known_by_its_template_and_full_names() {
        assert_eq!(
            snapshot_json(&record("snap"), None),
            json!({ "snapshotID": "snap", "names": ["snap:default"] })
        );
        assert_eq!(
            snapshot_json(&record("snap"), Some("v1")),
            json!({ "snapshotID": "snap", "names": ["snap:default", "snap:v1"] })
        );
        assert_eq!(
            snapshot_json(&record("snap"), Some(DEFAULT_TAG)),
            json!({ "snapshotID": "snap", "names": ["snap:default"] })
        );
    }

    #[test]
    fn fresh_names_are_template_names_of_twenty_characters() {
        let a = fresh_name().unwrap();
        assert_eq!(a.len(), 20);
        assert!(crate::builds::valid_name(&a), "{a}");
        assert_ne!(a, fresh_name().unwrap());
    }
}
