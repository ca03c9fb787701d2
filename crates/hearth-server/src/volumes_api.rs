//! The volume routes of the REST API (E2B's `/volumes`): create, list, get
//! and delete named volumes, which `volumeMounts` at sandbox create mounts.
//! E2B's volume content routes (`/volumecontent/...`, files of a volume
//! without a sandbox) answer 501 with what to do instead. The routes
//! themselves are in [`crate::api`]'s table.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{Api, body};
use crate::error::ApiError;
use crate::volumes::{DEFAULT_SIZE, FS, VolumeInfo, parse_size};

/// E2B's `NewVolume`, with Hearth's `size` and `fs`.
#[derive(Debug, Default, Deserialize)]
struct NewVolume {
    name: Option<String>,
    /// Bytes, or a string like `10G`.
    size: Option<Value>,
    fs: Option<String>,
}

pub async fn create(
    State(api): State<Arc<Api>>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let request: NewVolume = body(&bytes)?;
    let name = request
        .name
        .ok_or_else(|| ApiError::bad_request("name is required"))?;
    let size = match &request.size {
        None | Some(Value::Null) => DEFAULT_SIZE,
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| ApiError::bad_request(format!("size: {n} is not a number of bytes")))?,
        Some(Value::String(s)) => parse_size(s)?,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "size: {other} is not a size (bytes, or a string like \"10G\")"
            )));
        }
    };
    let fs = request.fs.as_deref().unwrap_or(FS);
    let record = api.manager.volumes().create(&name, size, fs).await?;
    let info = api.manager.volumes().get(&record.name)?;
    Ok((StatusCode::CREATED, Json(volume_json(&info, true))).into_response())
}

pub async fn list(State(api): State<Arc<Api>>) -> Result<Json<Value>, ApiError> {
    let volumes = api.manager.volumes().list()?;
    Ok(Json(
        volumes.iter().map(|v| volume_json(v, false)).collect(),
    ))
}

pub async fn get(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let info = api.manager.volumes().get(&id)?;
    Ok(Json(volume_json(&info, true)))
}

pub async fn delete(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    api.manager.volumes().delete(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `/volumecontent/...`: not served.
pub async fn content() -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "this server does not serve a volume's files without a sandbox (E2B's volume content \
         routes): mount the volume in a sandbox (volumeMounts) and use its files API",
    )
}

/// E2B's `Volume` (`volumeID`, `name`), or with `token` its
/// `VolumeAndToken`; Hearth adds what the volume holds and who mounts it.
fn volume_json(info: &VolumeInfo, token: bool) -> Value {
    let record = &info.record;
    let mut v = json!({
        "volumeID": record.volume_id,
        "name": record.name,
        "fs": record.fs,
        "sizeBytes": record.size_bytes,
        "usedBytes": info.used_bytes,
        "mountedBy": info.mounted_by,
    });
    if token {
        v["token"] = json!(record.token);
    }
    v
}
