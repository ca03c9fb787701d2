//! The template routes of the REST API: E2B's build API (request a build,
//! upload its files, start it, follow its status and logs), template
//! details and deletion, and tags. The routes themselves are in
//! [`crate::api`]'s table; the builds run in [`crate::builds`].

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{Api, body};
use crate::builds::recipe::{self, BuildStart};
use crate::builds::{self, Builds, DEFAULT_TAG, check_name, check_tag, split_name_tag};
use crate::error::ApiError;
use crate::manager::{ENVD_VERSION, now_ms, rfc3339_ms};
use crate::store::{BuildLogEntry, BuildRecord, BuildStatus};

/// Most vCPUs and memory a template may ask for.
const MAX_CPU_COUNT: i64 = 64;
const MIN_MEMORY_MB: i64 = 128;
const MAX_MEMORY_MB: i64 = 256 * 1024;

/// `TemplateBuildRequestV3`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BuildRequest {
    name: Option<String>,
    tags: Option<Vec<String>>,
    /// Deprecated by E2B for `name`.
    alias: Option<String>,
    cpu_count: Option<i64>,
    #[serde(rename = "memoryMB")]
    memory_mb: Option<i64>,
}

fn entry_json(e: &BuildLogEntry) -> Value {
    let mut v = json!({
        "timestamp": rfc3339_ms(e.timestamp_ms),
        "level": e.level,
        "message": e.message,
    });
    if let Some(step) = &e.step {
        v["step"] = json!(step);
    }
    v
}

fn build_json(b: &BuildRecord) -> Value {
    let mut v = json!({
        "buildID": b.build_id,
        "status": b.status.as_str(),
        "createdAt": rfc3339_ms(b.created_at_ms),
        "updatedAt": rfc3339_ms(b.updated_at_ms),
        "cpuCount": b.cpu_count,
        "memoryMB": b.memory_mb,
        "envdVersion": ENVD_VERSION,
    });
    if let Some(finished) = b.finished_at_ms {
        v["finishedAt"] = json!(rfc3339_ms(finished));
    }
    v
}

/// `POST /v3/templates`: records a build, waiting for its steps.
pub async fn request_build(
    State(api): State<Arc<Api>>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let request: BuildRequest = body(&bytes)?;
    let full = request
        .name
        .or(request.alias)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("name is required"))?;
    let (name, tag) = split_name_tag(&full)?;
    if name == recipe::BASE_TEMPLATE {
        return Err(ApiError::bad_request(
            "'base' is the built-in Debian template and cannot be rebuilt over the API; choose \
             another name (start from it with fromTemplate \"base\")",
        ));
    }
    let tags = Builds::request_tags(tag, request.tags.as_deref().unwrap_or_default())?;
    let shape = api.builds.default_shape();
    let cpu_count = match request.cpu_count {
        None => shape.vcpus,
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|n| (1..=MAX_CPU_COUNT).contains(&i64::from(*n)))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "cpuCount must be between 1 and {MAX_CPU_COUNT}, not {n}"
                ))
            })?,
    };
    let memory_mb = match request.memory_mb {
        None => shape.memory_mib,
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|n| (MIN_MEMORY_MB..=MAX_MEMORY_MB).contains(&i64::from(*n)))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "memoryMB must be between {MIN_MEMORY_MB} and {MAX_MEMORY_MB}, not {n}"
                ))
            })?,
    };
    let now = now_ms();
    let build = BuildRecord {
        build_id: builds::new_uuid()?,
        template: name.to_owned(),
        status: BuildStatus::Waiting,
        reason: None,
        reason_step: None,
        node_build: None,
        tags: tags.clone(),
        cpu_count,
        memory_mb,
        created_at_ms: now,
        updated_at_ms: now,
        finished_at_ms: None,
    };
    api.builds.store().insert_build(&build)?;
    tracing::info!(
        template = name,
        build = build.build_id,
        "template build requested"
    );
    let answer = json!({
        "templateID": name,
        "buildID": build.build_id,
        "public": false,
        "aliases": [name],
        "names": [name],
        "tags": tags,
    });
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

fn check_hash(hash: &str) -> Result<(), ApiError> {
    if recipe::valid_files_hash(hash) {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "files hash {hash:?} is not lowercase hex (the SDK's SHA-256 of the files)"
    )))
}

fn known_template(api: &Api, id: &str) -> Result<(), ApiError> {
    check_name(id, "template")?;
    if api.builds.template_known(id)? {
        return Ok(());
    }
    Err(ApiError::not_found(format!("template '{id}' not found")))
}

/// The `scheme://host` clients reached this server at: the request's
/// `Host` (or HTTP/2 authority), else the address it listens on.
fn base_url(api: &Api, headers: &HeaderMap, uri: &axum::http::Uri) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(axum::http::uri::Authority::as_str))
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
        })
        .map_or_else(|| api.listen.to_string(), str::to_owned);
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    format!("{}://{host}", if https { "https" } else { "http" })
}

/// `GET /templates/{id}/files/{hash}`: whether the files are here, and a
/// one-time URL of this server to upload them to.
pub async fn file_upload_link(
    State(api): State<Arc<Api>>,
    Path((id, hash)): Path<(String, String)>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    known_template(&api, &id)?;
    check_hash(&hash)?;
    let present = api.builds.upload_path(&hash).is_file();
    let token = api.builds.grant_upload(&id, &hash)?;
    let url = format!(
        "{}/templates/{id}/files/{hash}?token={token}",
        base_url(&api, &headers, &uri)
    );
    Ok((
        StatusCode::CREATED,
        Json(json!({ "present": present, "url": url })),
    )
        .into_response())
}

#[derive(Debug, Default, Deserialize)]
pub struct UploadParams {
    token: Option<String>,
}

/// `PUT /templates/{id}/files/{hash}?token=…`: the upload itself. The SDK
/// sends no API key here: the one-time token in the URL authorizes it.
pub async fn upload_file(
    State(api): State<Arc<Api>>,
    Path((id, hash)): Path<(String, String)>,
    Query(params): Query<UploadParams>,
    request_body: Body,
) -> Result<StatusCode, ApiError> {
    check_name(&id, "template")?;
    check_hash(&hash)?;
    api.builds
        .take_grant(params.token.as_deref().unwrap_or_default(), &id, &hash)?;
    api.builds.store_upload(&hash, request_body).await?;
    Ok(StatusCode::CREATED)
}

/// The build `build_id` of template `id`.
fn find_build(api: &Api, id: &str, build_id: &str) -> Result<BuildRecord, ApiError> {
    check_name(id, "template")?;
    api.builds
        .store()
        .get_build(build_id)?
        .filter(|b| b.template == id)
        .ok_or_else(|| {
            ApiError::not_found(format!("build '{build_id}' of template '{id}' not found"))
        })
}

/// `POST /v2/templates/{id}/builds/{build}`: starts a requested build with
/// its steps; it runs in the background.
pub async fn start_build(
    State(api): State<Arc<Api>>,
    Path((id, build_id)): Path<(String, String)>,
    bytes: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let mut start: BuildStart = body(&bytes)?;
    let build = find_build(&api, &id, &build_id)?;
    if build.status != BuildStatus::Waiting {
        return Err(ApiError::conflict(format!(
            "build '{build_id}' of template '{id}' was already started (it is {})",
            build.status
        )));
    }
    // On a cluster node this also fetches a base built elsewhere.
    if let Some(base) = start.from_template.as_deref() {
        let base = api.builds.resolve(base).await?;
        if base.build.is_some() {
            return Err(ApiError::bad_request(format!(
                "fromTemplate: that tag names an older build of '{}'; a build starts from a \
                 template's current build: use '{}' or tag its current build",
                base.name, base.name
            )));
        }
        start.from_template = Some(base.name);
    }
    let mapped = api.builds.prepare(&build, &start)?;
    api.builds.spawn(build, mapped);
    Ok(StatusCode::ACCEPTED)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusParams {
    logs_offset: Option<String>,
    limit: Option<String>,
    level: Option<String>,
}

fn count(value: Option<&str>, field: &str) -> Result<Option<u64>, ApiError> {
    value
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse().map_err(|_| {
                ApiError::bad_request(format!("{field} must be a whole number, not {v:?}"))
            })
        })
        .transpose()
}

/// `GET /templates/{id}/builds/{build}/status`: status, a page of the log
/// from `logsOffset`, and why the build failed.
pub async fn build_status(
    State(api): State<Arc<Api>>,
    Path((id, build_id)): Path<(String, String)>,
    Query(params): Query<StatusParams>,
) -> Result<Json<Value>, ApiError> {
    let build = find_build(&api, &id, &build_id)?;
    let entries = builds::log_page(
        api.builds.store(),
        &build_id,
        count(params.logs_offset.as_deref(), "logsOffset")?,
        count(params.limit.as_deref(), "limit")?,
        params.level.as_deref(),
    )?;
    let mut answer = json!({
        "templateID": id,
        "buildID": build_id,
        "status": build.status.as_str(),
        "logs": entries.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
        "logEntries": entries.iter().map(entry_json).collect::<Vec<_>>(),
    });
    if build.status == BuildStatus::Error {
        let mut reason = json!({
            "message": build.reason.as_deref().unwrap_or("the build failed"),
        });
        if let Some(step) = &build.reason_step {
            reason["step"] = json!(step);
        }
        let errors = api
            .builds
            .store()
            .build_logs(&build_id, 0, builds::MAX_LOG_PAGE, 3)?;
        reason["logEntries"] = Value::Array(errors.iter().map(entry_json).collect());
        answer["reason"] = reason;
    }
    Ok(Json(answer))
}

/// `GET /v2/templates`: as `GET /templates`.
pub async fn templates_v2(State(api): State<Arc<Api>>) -> Result<Json<Value>, ApiError> {
    Ok(Json(Value::Array(api.manager.templates()?)))
}

#[derive(Debug, Default, Deserialize)]
pub struct DetailParams {
    limit: Option<String>,
}

/// `GET /templates/{id}`: `TemplateWithBuilds`, newest build first.
pub async fn template_detail(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    Query(params): Query<DetailParams>,
) -> Result<Json<Value>, ApiError> {
    known_template(&api, &id)?;
    let limit = count(params.limit.as_deref(), "limit")?;
    let records = api.builds.store().template_builds(&id)?;
    let current = hearth_image::find_template(&api.manager.node().layout().templates(), &id)
        .ok()
        .flatten();
    let mut detail = match &current {
        Some(template) => api.manager.template_json(template)?,
        None => {
            // Known from its builds only: none has finished yet.
            let latest = records
                .first()
                .ok_or_else(|| ApiError::not_found(format!("template '{id}' not found")))?;
            let first = records.last().unwrap_or(latest);
            json!({
                "templateID": id,
                "buildID": latest.build_id,
                "cpuCount": latest.cpu_count,
                "memoryMB": latest.memory_mb,
                "diskSizeMB": 0,
                "public": false,
                "aliases": [id],
                "names": [id],
                "createdAt": rfc3339_ms(first.created_at_ms),
                "updatedAt": rfc3339_ms(latest.updated_at_ms),
                "createdBy": null,
                "lastSpawnedAt": null,
                "spawnCount": 0,
                "buildCount": records.len(),
                "envdVersion": ENVD_VERSION,
                "buildStatus": latest.status.as_str(),
            })
        }
    };
    let shown = usize::try_from(limit.unwrap_or(u64::MAX)).unwrap_or(usize::MAX);
    detail["builds"] = Value::Array(records.iter().take(shown).map(build_json).collect());
    Ok(Json(detail))
}

/// `DELETE /templates/{id}`: the template, all its builds and their
/// records; refused while sandboxes use it or a build of it runs.
pub async fn delete_template(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_name(&id, "template")?;
    if id == recipe::BASE_TEMPLATE {
        return Err(ApiError::bad_request(
            "'base' is the built-in template every other one starts from; it cannot be deleted",
        ));
    }
    if api.builds.building(&id)? {
        return Err(ApiError::conflict(format!(
            "a build of template '{id}' is running; delete it once the build ends"
        )));
    }
    let recorded = !api.builds.store().template_builds(&id)?.is_empty();
    api.manager.drop_pool(&id).await;
    let layout = api.manager.node().layout().clone();
    let name = id.clone();
    let removed = tokio::task::spawn_blocking(move || hearth_node::remove_template(&layout, &name))
        .await
        .map_err(|e| ApiError::internal(format!("removing template '{id}': {e}")))?;
    match removed {
        Ok(()) => {}
        Err(hearth_node::NodeError::NoTemplate(_)) if recorded => {
            // Only failed builds: at most the node's build lock is left.
            let dir = api.manager.node().layout().templates().join(&id);
            let only_lock = std::fs::read_dir(&dir).is_ok_and(|entries| {
                entries
                    .filter_map(Result::ok)
                    .all(|e| e.file_name() == ".build.lock")
            });
            if only_lock && let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(template = id, "removing {}: {e}", dir.display());
            }
        }
        Err(e) => return Err(e.into()),
    }
    api.builds.store().delete_template_records(&id, now_ms())?;
    tracing::info!(template = id, "template deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `AssignTemplateTagsRequest`.
#[derive(Debug, Default, Deserialize)]
struct AssignTags {
    target: Option<String>,
    tags: Option<Vec<String>>,
}

/// `DeleteTemplateTagsRequest`.
#[derive(Debug, Default, Deserialize)]
struct RemoveTags {
    name: Option<String>,
    tags: Option<Vec<String>>,
}

fn checked_tags(tags: Option<Vec<String>>) -> Result<Vec<String>, ApiError> {
    let tags = tags.unwrap_or_default();
    if tags.is_empty() {
        return Err(ApiError::bad_request("tags must name at least one tag"));
    }
    for tag in &tags {
        check_tag(tag)?;
    }
    Ok(tags)
}

/// `POST /templates/tags`: gives `tags` to the build `target` (`name:tag`,
/// or `name` for its current build) names.
pub async fn assign_tags(
    State(api): State<Arc<Api>>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let request: AssignTags = body(&bytes)?;
    let target = request
        .target
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::bad_request("target is required (name:tag)"))?;
    let tags = checked_tags(request.tags)?;
    let (name, tag) = split_name_tag(&target)?;
    let tag = tag.unwrap_or(DEFAULT_TAG);
    let store = api.builds.store();
    let build_id = match store.tag(name, tag)? {
        Some(tagged) => tagged.build_id,
        None if tag == DEFAULT_TAG => {
            let current = api
                .manager
                .node()
                .template(name)
                .map_err(|_| ApiError::not_found(format!("template '{name}' not found")))?;
            store
                .build_of_node_build(name, &current.build_id)?
                .ok_or_else(|| {
                    ApiError::not_found(format!(
                        "template '{name}' was not built through the build API; tags name \
                         builds of that API"
                    ))
                })?
                .build_id
        }
        None => {
            return Err(ApiError::not_found(format!(
                "template '{name}' has no tag '{tag}'"
            )));
        }
    };
    store.set_tags(name, &tags, &build_id, now_ms())?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "buildID": build_id, "tags": tags })),
    )
        .into_response())
}

/// `DELETE /templates/tags`: removes tags of a template.
pub async fn remove_tags(
    State(api): State<Arc<Api>>,
    bytes: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let request: RemoveTags = body(&bytes)?;
    let name = request
        .name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("name is required"))?;
    let tags = checked_tags(request.tags)?;
    known_template(&api, &name)?;
    if api.builds.store().remove_tags(&name, &tags)? == 0 {
        return Err(ApiError::not_found(format!(
            "template '{name}' has none of the tags {}",
            tags.join(", ")
        )));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /templates/{id}/tags`.
pub async fn template_tags(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    known_template(&api, &id)?;
    let tags = api.builds.store().template_tags(&id)?;
    Ok(Json(Value::Array(
        tags.iter()
            .map(|t| {
                json!({ "tag": t.tag, "buildID": t.build_id, "createdAt": rfc3339_ms(t.created_at_ms) })
            })
            .collect(),
    )))
}
