//! The team routes of the REST API: E2B's API-key management
//! (`/api-keys`) and team metrics (`/teams/{teamID}/metrics`). A Hearth
//! server has one team, [`TEAM_ID`]; its API keys are those
//! `hearth server key` manages too. The routes themselves are in
//! [`crate::api`]'s table.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{Api, body};
use crate::error::ApiError;
use crate::keys::KEY_PREFIX;
use crate::manager::{now_ms, rfc3339_ms, secs_ms};
use crate::server::TEAM_SAMPLE_TICK;
use crate::store::KeyInfo;

/// The id of a server's one team.
pub const TEAM_ID: &str = "local";

/// Hex characters of a key after `e2b_`.
const KEY_VALUE_LENGTH: usize = 40;
/// Characters of a key's value E2B's mask shows at its start.
const MASK_PREFIX_CHARS: usize = 2;
/// The range team metrics cover when a request names none (E2B's).
const DEFAULT_RANGE_SECS: i64 = 7 * 24 * 3600;

/// `TeamAPIKey`, without the key itself.
fn key_json(key: &KeyInfo) -> Value {
    let value_start: String = key
        .prefix
        .strip_prefix(KEY_PREFIX)
        .unwrap_or("")
        .chars()
        .take(MASK_PREFIX_CHARS)
        .collect();
    json!({
        "id": key.id,
        "name": key.name,
        "mask": {
            "prefix": KEY_PREFIX,
            "valueLength": KEY_VALUE_LENGTH,
            "maskedValuePrefix": value_start,
            "maskedValueSuffix": key.suffix,
        },
        "createdAt": rfc3339_ms(secs_ms(key.created_at)),
        "createdBy": null,
        "lastUsed": key.last_used.map(|s| rfc3339_ms(secs_ms(s))),
    })
}

/// `GET /api-keys`: the keys that work, oldest first.
pub(crate) async fn list_keys(State(api): State<Arc<Api>>) -> Result<Json<Value>, ApiError> {
    let keys = api.manager.store().list_keys()?;
    Ok(Json(
        keys.iter().filter(|k| !k.revoked).map(key_json).collect(),
    ))
}

/// `NewTeamAPIKey` and `UpdateTeamAPIKey`.
#[derive(Debug, Default, Deserialize)]
struct KeyName {
    name: Option<String>,
}

impl KeyName {
    fn checked(self) -> Result<String, ApiError> {
        let name = self.name.unwrap_or_default();
        let name = name.trim();
        if name.is_empty() || name.len() > 128 {
            return Err(ApiError::bad_request(
                "name must be 1 to 128 characters, not blank",
            ));
        }
        Ok(name.to_owned())
    }
}

/// `POST /api-keys`: a new key, its plaintext shown this once.
pub(crate) async fn create_key(
    State(api): State<Arc<Api>>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let name = body::<KeyName>(&bytes)?.checked()?;
    let (info, plaintext) = api.manager.store().create_key(&name)?;
    let mut created = key_json(&info);
    created["key"] = json!(plaintext);
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// `PATCH /api-keys/{apiKeyID}`: renames a key.
pub(crate) async fn rename_key(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let name = body::<KeyName>(&bytes)?.checked()?;
    if !api.manager.store().rename_key(&id, &name)? {
        return Err(no_key(&id));
    }
    Ok(StatusCode::OK)
}

/// `DELETE /api-keys/{apiKeyID}`: revokes a key, at once. The last one
/// that works is kept: without it nobody could reach the API.
pub(crate) async fn delete_key(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let store = api.manager.store();
    let keys = store.list_keys()?;
    let Some(key) = keys.iter().find(|k| k.id == id && !k.revoked) else {
        return Err(no_key(&id));
    };
    if store.count_active_keys()? <= 1 {
        return Err(ApiError::conflict(format!(
            "API key {} is the last one that works; create another before deleting it",
            key.id
        )));
    }
    store.revoke_key(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

fn no_key(id: &str) -> ApiError {
    ApiError::not_found(format!("API key {id} not found"))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct MetricsParams {
    start: Option<i64>,
    end: Option<i64>,
    metric: Option<String>,
}

impl MetricsParams {
    /// The range in Unix milliseconds: the last 7 days unless named.
    fn range_ms(&self) -> Result<(i64, i64), ApiError> {
        let now = now_ms() / 1000;
        let end = self.end.unwrap_or(now);
        let start = self.start.unwrap_or(end - DEFAULT_RANGE_SECS);
        if start < 0 || end < 0 {
            return Err(ApiError::bad_request("start and end must not be negative"));
        }
        if start > end {
            return Err(ApiError::bad_request("start time cannot be after end time"));
        }
        Ok((start.saturating_mul(1000), end.saturating_mul(1000)))
    }
}

fn check_team(team: &str) -> Result<(), ApiError> {
    if team != TEAM_ID {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("this server has one team, '{TEAM_ID}', not '{team}'"),
        ));
    }
    Ok(())
}

/// A sample of the team's metrics: Unix ms, sandboxes running, started.
type Sample = (i64, u64, u64);

/// The range a team-metrics request asks for and the samples in it.
fn samples_of(
    api: &Api,
    team: &str,
    params: &MetricsParams,
) -> Result<(i64, i64, Vec<Sample>), ApiError> {
    check_team(team)?;
    let (start, end) = params.range_ms()?;
    Ok((start, end, api.manager.store().team_samples(start, end)?))
}

/// The step E2B's team metrics use for a range: under 1000 points.
fn step_ms(range_ms: i64) -> i64 {
    const HOUR: i64 = 3600 * 1000;
    let secs = match range_ms {
        r if r < HOUR => 5,
        r if r < 6 * HOUR => 30,
        r if r < 12 * HOUR => 60,
        r if r < 24 * HOUR => 120,
        r if r < 7 * 24 * HOUR => 300,
        _ => 900,
    };
    secs * 1000
}

/// One point per step that has samples: its start, the most sandboxes
/// running at once in it, and sandboxes started per second.
fn team_points(samples: &[(i64, u64, u64)], start_ms: i64, step_ms: i64) -> Vec<(i64, u64, f64)> {
    let mut points: Vec<(i64, u64, u64)> = Vec::new();
    for &(ms, concurrent, started) in samples {
        let bucket = start_ms + (ms - start_ms).div_euclid(step_ms) * step_ms;
        match points.last_mut() {
            Some(last) if last.0 == bucket => {
                last.1 = last.1.max(concurrent);
                last.2 += started;
            }
            _ => points.push((bucket, concurrent, started)),
        }
    }
    let step_secs = step_ms as f64 / 1000.0;
    points
        .into_iter()
        .map(|(ms, concurrent, started)| (ms, concurrent, started as f64 / step_secs))
        .collect()
}

/// `GET /teams/{teamID}/metrics`: sandboxes running at once and started
/// per second, sampled every 5 s and kept 7 days.
pub(crate) async fn team_metrics(
    State(api): State<Arc<Api>>,
    Path(team): Path<String>,
    Query(params): Query<MetricsParams>,
) -> Result<Json<Value>, ApiError> {
    let (start, end, samples) = samples_of(&api, &team, &params)?;
    let points = team_points(&samples, start, step_ms(end - start));
    Ok(Json(
        points
            .iter()
            .map(|&(ms, concurrent, rate)| {
                json!({
                    "timestamp": rfc3339_ms(ms),
                    "timestampUnix": ms / 1000,
                    "concurrentSandboxes": concurrent,
                    "sandboxStartRate": rate,
                })
            })
            .collect(),
    ))
}

/// `GET /teams/{teamID}/metrics/max`: the most sandboxes running at once
/// (`concurrent_sandboxes`) or started per second over one sample
/// (`sandbox_start_rate`) in the range, and when.
pub(crate) async fn team_metrics_max(
    State(api): State<Arc<Api>>,
    Path(team): Path<String>,
    Query(params): Query<MetricsParams>,
) -> Result<Json<Value>, ApiError> {
    let (_, end, samples) = samples_of(&api, &team, &params)?;
    let tick_secs = TEAM_SAMPLE_TICK.as_secs_f64();
    let value: fn(&(i64, u64, u64), f64) -> f64 = match params.metric.as_deref() {
        Some("concurrent_sandboxes") => |s, _| s.1 as f64,
        Some("sandbox_start_rate") => |s, tick| s.2 as f64 / tick,
        other => {
            return Err(ApiError::bad_request(format!(
                "metric must be concurrent_sandboxes or sandbox_start_rate, not {}",
                other.unwrap_or("missing")
            )));
        }
    };
    // The first of equal highs, as a sample is the time it was taken at.
    let best = samples.iter().fold(None, |best: Option<(i64, f64)>, s| {
        let v = value(s, tick_secs);
        match best {
            Some((_, high)) if high >= v => best,
            _ => Some((s.0, v)),
        }
    });
    let (ms, high) = best.unwrap_or((end, 0.0));
    Ok(Json(json!({
        "timestamp": rfc3339_ms(ms),
        "timestampUnix": ms / 1000,
        "value": high,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_fold_into_steps_with_the_highest_count_and_the_start_rate() {
        let samples = [(0, 1, 1), (5_000, 3, 2), (10_000, 2, 0), (31_000, 1, 3)];
        assert_eq!(
            team_points(&samples, 0, 30_000),
            [(0, 3, 0.1), (30_000, 1, 0.1)]
        );
        assert_eq!(team_points(&[], 0, 5_000), []);
        assert_eq!(step_ms(59 * 60 * 1000), 5_000);
        assert_eq!(step_ms(7 * 24 * 3600 * 1000), 900_000);
    }

    #[test]
    fn masks_show_what_e2b_shows() {
        let key = KeyInfo {
            id: "abc".into(),
            name: "ci".into(),
            prefix: "e2b_1234abcd".into(),
            created_at: 1,
            last_used: None,
            revoked: false,
            suffix: "wxyz".into(),
        };
        let v = key_json(&key);
        assert_eq!(
            v["mask"],
            json!({ "prefix": "e2b_", "valueLength": 40, "maskedValuePrefix": "12", "maskedValueSuffix": "wxyz" })
        );
        assert_eq!(v["lastUsed"], Value::Null);
        assert!(v.get("key").is_none());
    }
}
