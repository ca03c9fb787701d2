//! The REST API: E2B's routes and JSON shapes (`spec/openapi.yml` of
//! e2b-dev/infra), as the stock SDKs call them.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, delete, get, patch, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::builds::Builds;
use crate::error::ApiError;
use crate::manager::{CreateRequest, ENVD_VERSION, MAX_TIMEOUT_SECS, Manager, rfc3339_ms};
use crate::store::{SandboxQuery, SandboxRecord, SandboxState, VolumeMount};
use crate::{events_api, snapshot_api, team_api, template_api, volumes_api};
use hearth_node::{Cidr, DomainRule, Egress, PauseMode};

const API_KEY_HEADER: &str = "x-api-key";
/// Default sandbox lifetime when a request names none (E2B's).
const DEFAULT_TIMEOUT_SECS: u64 = 300;
/// The disk size reported for sandboxes (the base template's image).
const DISK_SIZE_MB: u64 = 1280;

/// Shared state of the handlers.
pub struct Api {
    pub manager: Arc<Manager>,
    pub builds: Arc<Builds>,
    /// Domain reported to clients for sandbox host names, if any.
    pub domain: Option<String>,
    /// Where the server listens: the host of upload URLs when a request
    /// names none.
    pub listen: std::net::SocketAddr,
    /// Turns true when the server starts to shut down: answers that stream
    /// until their client leaves (the event stream) end then, or the
    /// server would wait for them.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// Host ports below 1024 may be published.
    pub allow_privileged_ports: bool,
}

/// One route: how it is served and how it is documented. [`ROUTES`] is the
/// single source of both the router and `/openapi.json`.
struct Route {
    method: &'static str,
    path: &'static str,
    operation: &'static str,
    summary: &'static str,
    /// Query parameters: (name, description).
    query: &'static [(&'static str, &'static str)],
    /// Request body schema, in `#/components/schemas`; `binary` for raw
    /// bytes.
    body: Option<&'static str>,
    /// (status, response schema); `[Name]` is an array of `Name`.
    responses: &'static [(u16, Option<&'static str>)],
    handler: fn() -> MethodRouter<Arc<Api>>,
}

/// What a template name (its id) may be; see [`crate::builds::valid_name`].
const NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$";

const ERRORS: &[(u16, Option<&str>)] = &[
    (400, Some("Error")),
    (401, Some("Error")),
    (404, Some("Error")),
];

/// Every API route but `/health` and `/openapi.json` (which need no key).
const ROUTES: &[Route] = &[
    Route {
        method: "post",
        path: "/sandboxes",
        operation: "createSandbox",
        summary: "Create a sandbox (secure only when asked)",
        query: &[],
        body: Some("NewSandbox"),
        responses: &[(201, Some("Sandbox"))],
        handler: || post(create_v1),
    },
    Route {
        method: "get",
        path: "/sandboxes",
        operation: "listSandboxes",
        summary: "List running sandboxes",
        query: &[("metadata", "URL-encoded key=value pairs joined by &")],
        body: None,
        responses: &[(200, Some("[ListedSandbox]"))],
        handler: || get(list_v1),
    },
    Route {
        method: "post",
        path: "/v2/sandboxes",
        operation: "createSandboxV2",
        summary: "Create a sandbox (always secure)",
        query: &[],
        body: Some("NewSandbox"),
        responses: &[(201, Some("Sandbox"))],
        handler: || post(create_v2),
    },
    Route {
        method: "get",
        path: "/v2/sandboxes",
        operation: "listSandboxesV2",
        summary: "List sandboxes by state and metadata, a page at a time (next page token in x-next-token)",
        query: &[
            ("metadata", "URL-encoded key=value pairs joined by &"),
            (
                "state",
                "running, paused or both, comma-separated; killed (Hearth's): those stopped in the last day, with stopReason",
            ),
            ("limit", "page size, at least 1"),
            ("nextToken", "token of the next page"),
            (
                "order",
                "asc (oldest first) or desc (newest first, the default), by start time",
            ),
            (
                "startedAfter",
                "only sandboxes started at or after this RFC 3339 time",
            ),
            (
                "template",
                "only sandboxes of this template, by id or alias",
            ),
        ],
        body: None,
        responses: &[(200, Some("[ListedSandbox]"))],
        handler: || get(list_v2),
    },
    Route {
        method: "get",
        path: "/sandboxes/{id}",
        operation: "getSandbox",
        summary: "A sandbox",
        query: &[],
        body: None,
        responses: &[(200, Some("SandboxDetail"))],
        handler: || get(detail),
    },
    Route {
        method: "delete",
        path: "/sandboxes/{id}",
        operation: "killSandbox",
        summary: "Kill a sandbox",
        query: &[],
        body: None,
        responses: &[(204, None)],
        handler: || delete(kill),
    },
    Route {
        method: "post",
        path: "/sandboxes/{id}/timeout",
        operation: "setSandboxTimeout",
        summary: "End the sandbox this many seconds from now",
        query: &[],
        body: Some("SetTimeoutRequest"),
        responses: &[(204, None)],
        handler: || post(set_timeout),
    },
    Route {
        method: "post",
        path: "/sandboxes/{id}/refreshes",
        operation: "refreshSandbox",
        summary: "Keep the sandbox at least this many seconds more",
        query: &[],
        body: Some("RefreshRequest"),
        responses: &[(204, None)],
        handler: || post(refresh),
    },
    Route {
        method: "put",
        path: "/sandboxes/{id}/network",
        operation: "updateSandboxNetwork",
        summary: "Replace the egress policy of a running sandbox (omitted fields are cleared)",
        query: &[],
        body: Some("SandboxNetworkUpdate"),
        responses: &[(204, None), (409, Some("Error"))],
        handler: || put(update_network),
    },
    Route {
        method: "post",
        path: "/sandboxes/{id}/pause",
        operation: "pauseSandbox",
        summary: "Pause a sandbox",
        query: &[],
        body: Some("SandboxPauseRequest"),
        responses: &[(204, None), (409, Some("Error"))],
        handler: || post(pause),
    },
    Route {
        method: "post",
        path: "/sandboxes/{id}/resume",
        operation: "resumeSandbox",
        summary: "Resume a paused sandbox",
        query: &[],
        body: Some("TimeoutRequest"),
        responses: &[(201, Some("Sandbox")), (409, Some("Error"))],
        handler: || post(resume),
    },
    Route {
        method: "post",
        path: "/sandboxes/{id}/connect",
        operation: "connectSandbox",
        summary: "Resume a paused sandbox (201) or extend a running one (200)",
        query: &[],
        body: Some("TimeoutRequest"),
        responses: &[(200, Some("Sandbox")), (201, Some("Sandbox"))],
        handler: || post(connect),
    },
    Route {
        method: "post",
        path: "/v2/sandboxes/{id}/connect",
        operation: "connectSandboxV2",
        summary: "Resume a paused sandbox (201) or extend a running one (200)",
        query: &[],
        body: Some("TimeoutRequest"),
        responses: &[(200, Some("Sandbox")), (201, Some("Sandbox"))],
        handler: || post(connect),
    },
    Route {
        method: "post",
        path: "/sandboxes/{id}/fork",
        operation: "forkSandbox",
        summary: "Copies of a running sandbox: memory, processes and files",
        query: &[],
        body: Some("ForkRequest"),
        responses: &[(201, Some("[ForkResult]")), (409, Some("Error"))],
        handler: || post(fork),
    },
    Route {
        method: "post",
        path: "/sandboxes/{id}/snapshots",
        operation: "createSandboxSnapshot",
        summary: "Save a running sandbox (memory, processes and files, or with memory false its files) as a template new sandboxes start from; it goes on",
        query: &[],
        body: Some("SandboxSnapshotRequest"),
        responses: &[(201, Some("SnapshotInfo")), (409, Some("Error"))],
        handler: || post(snapshot_api::create),
    },
    Route {
        method: "get",
        path: "/snapshots",
        operation: "listSnapshots",
        summary: "Snapshots, oldest first, a page at a time (next page token in x-next-token)",
        query: &[
            ("sandboxID", "those taken of this sandbox"),
            ("name", "the snapshot of this name (name or name:tag)"),
            ("limit", "at most this many (1 to 100, default 100)"),
            ("nextToken", "token of the next page"),
        ],
        body: None,
        responses: &[(200, Some("[SnapshotInfo]"))],
        handler: || get(snapshot_api::list),
    },
    Route {
        method: "post",
        path: "/volumes",
        operation: "createVolume",
        summary: "Make a named volume: an empty ext4 file system of size bytes (default 1 GiB; Hearth's size and fs) that sandboxes mount with volumeMounts",
        query: &[],
        body: Some("NewVolume"),
        responses: &[(201, Some("VolumeAndToken")), (409, Some("Error"))],
        handler: || post(volumes_api::create),
    },
    Route {
        method: "get",
        path: "/volumes",
        operation: "listVolumes",
        summary: "Every volume, by name",
        query: &[],
        body: None,
        responses: &[(200, Some("[Volume]"))],
        handler: || get(volumes_api::list),
    },
    Route {
        method: "get",
        path: "/volumes/{id}",
        operation: "getVolume",
        summary: "One volume, by id or name, with the sandbox that mounts it",
        query: &[],
        body: None,
        responses: &[(200, Some("VolumeAndToken"))],
        handler: || get(volumes_api::get),
    },
    Route {
        method: "delete",
        path: "/volumes/{id}",
        operation: "deleteVolume",
        summary: "Remove a volume and its data; 409 while a sandbox (running or paused) mounts it",
        query: &[],
        body: None,
        responses: &[(204, None), (409, Some("Error"))],
        handler: || delete(volumes_api::delete),
    },
    Route {
        method: "get",
        path: "/sandboxes/metrics",
        operation: "getSandboxesMetrics",
        summary: "Current metrics of several sandboxes",
        query: &[("sandbox_ids", "comma-separated sandbox ids")],
        body: None,
        responses: &[(200, Some("SandboxesWithMetrics"))],
        handler: || get(many_metrics),
    },
    Route {
        method: "get",
        path: "/sandboxes/{id}/metrics",
        operation: "getSandboxMetrics",
        summary: "Current metrics of a sandbox (empty when paused)",
        query: &[],
        body: None,
        responses: &[(200, Some("[SandboxMetric]"))],
        handler: || get(metrics),
    },
    Route {
        method: "get",
        path: "/sandboxes/{id}/logs",
        operation: "getSandboxLogsV1",
        summary: "The guest console since create or resume, as lines and as entries",
        query: &[("limit", "the last this many lines")],
        body: None,
        responses: &[(200, Some("SandboxLogsV1"))],
        handler: || get(logs_v1),
    },
    Route {
        method: "get",
        path: "/v2/sandboxes/{id}/logs",
        operation: "getSandboxLogs",
        summary: "The guest console since create or resume",
        query: &[
            (
                "cursor",
                "Unix milliseconds: entries from (forward) or up to (backward) this time",
            ),
            (
                "limit",
                "most entries to return (at most 1000, the default)",
            ),
            (
                "direction",
                "backward (newest first, the default) or forward (oldest first)",
            ),
            ("level", "debug, info, warn or error: this level and above"),
            ("search", "only entries whose message contains this text"),
        ],
        body: None,
        responses: &[(200, Some("SandboxLogs"))],
        handler: || get(logs),
    },
    Route {
        method: "get",
        path: "/templates/aliases/{alias}",
        operation: "getTemplateByAlias",
        summary: "The template an alias names",
        query: &[],
        body: None,
        responses: &[(200, Some("TemplateAlias"))],
        handler: || get(template_alias),
    },
    Route {
        method: "get",
        path: "/templates",
        operation: "listTemplates",
        summary: "The current build of every template",
        query: &[("teamID", "ignored: Hearth has no teams")],
        body: None,
        responses: &[(200, Some("[Template]"))],
        handler: || get(templates),
    },
    Route {
        method: "get",
        path: "/v2/templates",
        operation: "listTemplatesV2",
        summary: "The current build of every template",
        query: &[("teamID", "ignored: Hearth has no teams")],
        body: None,
        responses: &[(200, Some("[Template]"))],
        handler: || get(template_api::templates_v2),
    },
    Route {
        method: "post",
        path: "/v3/templates",
        operation: "requestTemplateBuild",
        summary: "Request a template build (name or name:tag); start it with its steps",
        query: &[],
        body: Some("TemplateBuildRequestV3"),
        responses: &[(202, Some("TemplateRequestResponseV3"))],
        handler: || post(template_api::request_build),
    },
    Route {
        method: "get",
        path: "/templates/{templateID}/files/{hash}",
        operation: "getTemplateFileUpload",
        summary: "Whether a COPY step's files are uploaded, and a one-time URL to upload them to",
        query: &[],
        body: None,
        responses: &[(201, Some("TemplateBuildFileUpload"))],
        handler: || get(template_api::file_upload_link),
    },
    Route {
        method: "post",
        path: "/v2/templates/{templateID}/builds/{buildID}",
        operation: "startTemplateBuild",
        summary: "Start a requested build with its base, steps and start and ready commands",
        query: &[],
        body: Some("TemplateBuildStartV2"),
        responses: &[(202, None), (409, Some("Error"))],
        handler: || post(template_api::start_build),
    },
    Route {
        method: "get",
        path: "/templates/{templateID}/builds/{buildID}/status",
        operation: "getTemplateBuildStatus",
        summary: "A build's status, a page of its log, and why it failed",
        query: &[
            ("logsOffset", "log entries to skip"),
            ("limit", "most log entries to return (at most 100)"),
            ("level", "debug, info, warn or error: this level and above"),
        ],
        body: None,
        responses: &[(200, Some("TemplateBuildInfo"))],
        handler: || get(template_api::build_status),
    },
    Route {
        method: "get",
        path: "/templates/{templateID}",
        operation: "getTemplate",
        summary: "A template with its builds, newest first",
        query: &[
            ("limit", "most builds to list"),
            ("nextToken", "ignored: every build is on the first page"),
        ],
        body: None,
        responses: &[(200, Some("TemplateWithBuilds"))],
        handler: || get(template_api::template_detail),
    },
    Route {
        method: "delete",
        path: "/templates/{templateID}",
        operation: "deleteTemplate",
        summary: "Delete a template and its builds (refused while sandboxes use it)",
        query: &[],
        body: None,
        responses: &[(204, None), (409, Some("Error"))],
        handler: || delete(template_api::delete_template),
    },
    Route {
        method: "post",
        path: "/templates/tags",
        operation: "assignTemplateTags",
        summary: "Give tags to the build a name:tag names",
        query: &[],
        body: Some("AssignTemplateTagsRequest"),
        responses: &[(201, Some("AssignedTemplateTags"))],
        handler: || post(template_api::assign_tags),
    },
    Route {
        method: "delete",
        path: "/templates/tags",
        operation: "deleteTemplateTags",
        summary: "Remove tags of a template",
        query: &[],
        body: Some("DeleteTemplateTagsRequest"),
        responses: &[(204, None)],
        handler: || delete(template_api::remove_tags),
    },
    Route {
        method: "get",
        path: "/templates/{templateID}/tags",
        operation: "getTemplateTags",
        summary: "The tags of a template",
        query: &[],
        body: None,
        responses: &[(200, Some("[TemplateTag]"))],
        handler: || get(template_api::template_tags),
    },
    Route {
        method: "get",
        path: "/api-keys",
        operation: "listApiKeys",
        summary: "The API keys that work, oldest first (masked)",
        query: &[],
        body: None,
        responses: &[(200, Some("[TeamAPIKey]"))],
        handler: || get(team_api::list_keys),
    },
    Route {
        method: "post",
        path: "/api-keys",
        operation: "createApiKey",
        summary: "Make an API key; its value is in this answer only",
        query: &[],
        body: Some("NewTeamAPIKey"),
        responses: &[(201, Some("CreatedTeamAPIKey"))],
        handler: || post(team_api::create_key),
    },
    Route {
        method: "patch",
        path: "/api-keys/{apiKeyID}",
        operation: "updateApiKey",
        summary: "Rename an API key",
        query: &[],
        body: Some("NewTeamAPIKey"),
        responses: &[(200, None)],
        handler: || patch(team_api::rename_key),
    },
    Route {
        method: "delete",
        path: "/api-keys/{apiKeyID}",
        operation: "deleteApiKey",
        summary: "Revoke an API key at once (refused for the last one that works)",
        query: &[],
        body: None,
        responses: &[(204, None), (409, Some("Error"))],
        handler: || delete(team_api::delete_key),
    },
    Route {
        method: "get",
        path: "/teams/{teamID}/metrics",
        operation: "getTeamMetrics",
        summary: "Sandboxes running at once and started per second, for the server's team (local)",
        query: &[
            ("start", "Unix seconds (default: 7 days before end)"),
            ("end", "Unix seconds (default: now)"),
        ],
        body: None,
        responses: &[(200, Some("[TeamMetric]")), (403, Some("Error"))],
        handler: || get(team_api::team_metrics),
    },
    Route {
        method: "get",
        path: "/teams/{teamID}/metrics/max",
        operation: "getTeamMetricsMax",
        summary: "The highest of a team metric in a range, and when",
        query: &[
            ("start", "Unix seconds (default: 7 days before end)"),
            ("end", "Unix seconds (default: now)"),
            (
                "metric",
                "concurrent_sandboxes or sandbox_start_rate (required)",
            ),
        ],
        body: None,
        responses: &[(200, Some("MaxTeamMetric")), (403, Some("Error"))],
        handler: || get(team_api::team_metrics_max),
    },
    Route {
        method: "get",
        path: "/events/sandboxes",
        operation: "getSandboxesEvents",
        summary: "Every sandbox's lifecycle events, newest first",
        query: EVENT_QUERY,
        body: None,
        responses: &[(200, Some("[SandboxEvent]"))],
        handler: || get(events_api::list_events),
    },
    Route {
        method: "get",
        path: "/events/sandboxes/{sandboxID}",
        operation: "getSandboxEvents",
        summary: "One sandbox's lifecycle events, newest first (kept after it stops)",
        query: EVENT_QUERY,
        body: None,
        responses: &[(200, Some("[SandboxEvent]"))],
        handler: || get(events_api::sandbox_events),
    },
    Route {
        method: "get",
        path: "/events/stream",
        operation: "streamEvents",
        summary: "Every event (sandboxes' and template builds') as Server-Sent Events; Last-Event-ID resumes",
        query: &[
            ("since", "the sequence number (SSE id) after which to start"),
            (
                "tail",
                "start with the last N events (default 0: new ones only)",
            ),
            ("follow", "false: end after the events recorded so far"),
            ("types", "event types, repeated or comma-separated"),
            ("sandboxID", "one sandbox's events only"),
        ],
        body: None,
        responses: &[(200, None)],
        handler: || get(events_api::stream),
    },
    Route {
        method: "post",
        path: "/events/webhooks",
        operation: "createWebhook",
        summary: "Register a webhook for lifecycle events",
        query: &[],
        body: Some("NewWebhook"),
        responses: &[(201, Some("Webhook"))],
        handler: || post(events_api::create_webhook),
    },
    Route {
        method: "get",
        path: "/events/webhooks",
        operation: "listWebhooks",
        summary: "The webhooks, oldest first",
        query: &[],
        body: None,
        responses: &[(200, Some("[Webhook]"))],
        handler: || get(events_api::list_webhooks),
    },
    Route {
        method: "get",
        path: "/events/webhooks/{webhookID}",
        operation: "getWebhook",
        summary: "A webhook",
        query: &[],
        body: None,
        responses: &[(200, Some("Webhook"))],
        handler: || get(events_api::get_webhook),
    },
    Route {
        method: "patch",
        path: "/events/webhooks/{webhookID}",
        operation: "updateWebhook",
        summary: "Replace the fields given of a webhook",
        query: &[],
        body: Some("WebhookUpdate"),
        responses: &[(200, Some("Webhook"))],
        handler: || patch(events_api::update_webhook),
    },
    Route {
        method: "delete",
        path: "/events/webhooks/{webhookID}",
        operation: "deleteWebhook",
        summary: "Unregister a webhook; what it had left to deliver is dropped",
        query: &[],
        body: None,
        responses: &[(200, None)],
        handler: || delete(events_api::delete_webhook),
    },
];

/// The list parameters of the event routes (E2B's).
const EVENT_QUERY: &[(&str, &str)] = &[
    ("offset", "events to skip (default 0)"),
    ("limit", "events to return, 1 to 100 (default 10)"),
    ("orderAsc", "true: oldest first"),
    ("types", "event types, repeated or comma-separated"),
];

/// Routes that need no API key: they carry their own authorization.
const OPEN_ROUTES: &[Route] = &[Route {
    method: "put",
    path: "/templates/{templateID}/files/{hash}",
    operation: "uploadTemplateFiles",
    summary: "Upload a COPY step's files (a tar, gzipped or not) to the URL getTemplateFileUpload gave; its token authorizes it",
    query: &[("token", "the one-time token of the upload URL")],
    body: Some("binary"),
    responses: &[(201, None)],
    handler: || put(template_api::upload_file),
}];

/// The API routes; every one but `/health`, `/openapi.json` and
/// [`OPEN_ROUTES`] needs `X-API-Key`.
pub fn router(api: Arc<Api>) -> Router {
    let mut routes = Router::new();
    for route in ROUTES {
        routes = routes.route(route.path, (route.handler)());
    }
    routes = routes
        .route("/metrics", get(crate::metrics::scrape))
        .layer(middleware::from_fn_with_state(api.clone(), require_key));
    for route in OPEN_ROUTES {
        routes = routes.route(route.path, (route.handler)());
    }
    routes
        // E2B's volume content routes (which carry a volume's token, not
        // the key): answered, not served, and not in the OpenAPI document.
        .route("/volumecontent/{*rest}", any(volumes_api::content))
        .merge(crate::dashboard::routes(&api))
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/openapi.json", get(|| async { Json(openapi()) }))
        .layer(middleware::from_fn_with_state(
            api.clone(),
            crate::metrics::track,
        ))
        .with_state(api)
}

fn schema_ref(name: &str) -> Value {
    match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        Some(item) => {
            json!({ "type": "array", "items": { "$ref": format!("#/components/schemas/{item}") } })
        }
        None => json!({ "$ref": format!("#/components/schemas/{name}") }),
    }
}

/// The OpenAPI 3.0 document of what this server implements, from [`ROUTES`].
pub fn openapi() -> Value {
    let mut paths = serde_json::Map::new();
    let keyed = ROUTES.iter().map(|route| (route, false));
    for (route, open) in keyed.chain(OPEN_ROUTES.iter().map(|route| (route, true))) {
        let mut responses = serde_json::Map::new();
        for (status, schema) in route.responses.iter().chain(ERRORS) {
            let mut response = json!({ "description": StatusCode::from_u16(*status).map_or("", |s| s.canonical_reason().unwrap_or("")) });
            if let Some(schema) = schema {
                response["content"] =
                    json!({ "application/json": { "schema": schema_ref(schema) } });
            }
            responses.entry(status.to_string()).or_insert(response);
        }
        let mut parameters: Vec<Value> = route
            .query
            .iter()
            .map(|(name, description)| {
                let schema = match *name {
                    "limit" => json!({ "type": "integer", "minimum": 1 }),
                    "cursor" | "start" | "end" => json!({ "type": "integer", "minimum": 0 }),
                    "metric" => json!({ "type": "string", "enum": ["concurrent_sandboxes", "sandbox_start_rate"] }),
                    "direction" => json!({ "type": "string", "enum": ["forward", "backward"] }),
                    "logsOffset" => json!({ "type": "integer", "minimum": 0 }),
                    "level" => json!({ "type": "string", "enum": ["debug", "info", "warn", "error"] }),
                    "offset" | "since" | "tail" => json!({ "type": "integer", "minimum": 0 }),
                    "orderAsc" | "follow" => json!({ "type": "boolean" }),
                    _ => json!({ "type": "string" }),
                };
                json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema })
            })
            .collect();
        let path_names = route
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'));
        for name in path_names {
            let schema = match name {
                "templateID" => json!({ "type": "string", "pattern": NAME_PATTERN }),
                "hash" => json!({ "type": "string", "pattern": "^[0-9a-f]{1,128}$" }),
                "buildID" => json!({ "type": "string", "format": "uuid" }),
                _ => json!({ "type": "string" }),
            };
            parameters
                .push(json!({ "name": name, "in": "path", "required": true, "schema": schema }));
        }
        let mut operation = json!({
            "operationId": route.operation,
            "summary": route.summary,
            "parameters": parameters,
            "responses": responses,
        });
        match route.body {
            Some("binary") => {
                operation["requestBody"] = json!({ "required": true, "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } });
            }
            Some(body) => {
                let required = route.method == "post" && body == "NewSandbox";
                operation["requestBody"] = json!({ "required": required, "content": { "application/json": { "schema": schema_ref(body) } } });
            }
            None => {}
        }
        if open {
            operation["security"] = json!([]);
        }
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        entry[route.method] = operation;
    }
    paths.insert("/health".into(), json!({ "get": { "operationId": "health", "summary": "Liveness", "security": [], "responses": { "200": { "description": "OK" } } } }));
    json!({
        "openapi": "3.0.3",
        "info": { "title": "Hearth API (E2B-compatible)", "version": env!("CARGO_PKG_VERSION") },
        "security": [{ "ApiKeyAuth": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": { "ApiKeyAuth": { "type": "apiKey", "in": "header", "name": "X-API-Key" } },
            "schemas": schemas(),
        },
    })
}

fn schemas() -> Value {
    let mut all = sandbox_schemas();
    for more in [template_schemas(), event_schemas()] {
        if let (Some(all), Value::Object(more)) = (all.as_object_mut(), more) {
            all.extend(more);
        }
    }
    all
}

/// The schemas of the event routes.
fn event_schemas() -> Value {
    json!({
        "SandboxEvent": { "type": "object", "required": ["version", "id", "type", "timestamp"], "properties": {
            "version": { "type": "string" }, "id": { "type": "string", "format": "uuid" }, "type": { "type": "string" },
            "eventData": { "type": "object", "nullable": true }, "sandboxId": { "type": "string", "nullable": true },
            "sandboxBuildId": { "type": "string", "nullable": true }, "sandboxExecutionId": { "type": "string", "nullable": true },
            "sandboxTeamId": { "type": "string" }, "sandboxTemplateId": { "type": "string", "nullable": true },
            "timestamp": { "type": "string", "format": "date-time" } } },
        "NewWebhook": { "type": "object", "required": ["url", "events", "signatureSecret"], "properties": {
            "name": { "type": "string", "maxLength": 256 }, "url": { "type": "string", "format": "uri" }, "enabled": { "type": "boolean" },
            "events": { "type": "array", "minItems": 1, "items": { "type": "string" } }, "signatureSecret": { "type": "string", "minLength": 1 } } },
        "WebhookUpdate": { "type": "object", "properties": {
            "name": { "type": "string", "maxLength": 256 }, "url": { "type": "string", "format": "uri" }, "enabled": { "type": "boolean" },
            "events": { "type": "array", "minItems": 1, "items": { "type": "string" } }, "signatureSecret": { "type": "string", "minLength": 1 } } },
        "Webhook": { "type": "object", "required": ["id", "teamId", "name", "createdAt", "enabled", "url", "events"], "properties": {
            "id": { "type": "string" }, "teamId": { "type": "string" }, "name": { "type": "string" },
            "createdAt": { "type": "string", "format": "date-time" }, "enabled": { "type": "boolean" }, "url": { "type": "string" },
            "events": { "type": "array", "items": { "type": "string" } }, "failing": { "type": "boolean" },
            "lastError": { "type": "string", "nullable": true } } },
    })
}

/// The schemas of the template routes.
fn template_schemas() -> Value {
    let strings = json!({ "type": "array", "items": { "type": "string" } });
    let build_status =
        json!({ "type": "string", "enum": ["waiting", "building", "ready", "error"] });
    let template = json!({ "type": "object", "properties": {
        "templateID": { "type": "string" }, "buildID": { "type": "string" }, "cpuCount": { "type": "integer" }, "memoryMB": { "type": "integer" },
        "diskSizeMB": { "type": "integer" }, "public": { "type": "boolean" }, "aliases": strings, "names": strings,
        "createdAt": { "type": "string", "format": "date-time" }, "updatedAt": { "type": "string", "format": "date-time" },
        "createdBy": { "type": "object", "nullable": true }, "lastSpawnedAt": { "type": "string", "format": "date-time", "nullable": true },
        "spawnCount": { "type": "integer" }, "buildCount": { "type": "integer" },
        "envdVersion": { "type": "string" }, "buildStatus": build_status } });
    json!({
        "Template": template,
        "TemplateWithBuilds": { "allOf": [ { "$ref": "#/components/schemas/Template" }, { "type": "object", "properties": {
            "builds": { "type": "array", "items": { "$ref": "#/components/schemas/TemplateBuild" } } } } ] },
        "TemplateBuild": { "type": "object", "required": ["buildID", "status", "createdAt", "updatedAt", "cpuCount", "memoryMB"], "properties": {
            "buildID": { "type": "string", "format": "uuid" }, "status": build_status, "createdAt": { "type": "string", "format": "date-time" },
            "updatedAt": { "type": "string", "format": "date-time" }, "finishedAt": { "type": "string", "format": "date-time" },
            "cpuCount": { "type": "integer" }, "memoryMB": { "type": "integer" }, "envdVersion": { "type": "string" } } },
        "TemplateBuildRequestV3": { "type": "object", "properties": {
            "name": { "type": "string", "description": "name or name:tag", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}(:[A-Za-z0-9][A-Za-z0-9._-]{0,127})?$" }, "tags": strings, "alias": { "type": "string", "description": "deprecated: name" },
            "teamID": { "type": "string" }, "cpuCount": { "type": "integer", "minimum": 1, "maximum": 64 },
            "memoryMB": { "type": "integer", "minimum": 128, "maximum": 262_144 }, "minFreeDiskMb": { "type": "integer" } } },
        "TemplateRequestResponseV3": { "type": "object", "required": ["templateID", "buildID", "public", "aliases", "names", "tags"], "properties": {
            "templateID": { "type": "string" }, "buildID": { "type": "string" }, "public": { "type": "boolean" },
            "aliases": strings, "names": strings, "tags": strings } },
        "TemplateBuildFileUpload": { "type": "object", "required": ["present"], "properties": {
            "present": { "type": "boolean" }, "url": { "type": "string" } } },
        "TemplateStep": { "type": "object", "required": ["type"], "properties": {
            "type": { "type": "string", "enum": ["COPY", "ENV", "RUN", "USER", "WORKDIR"] }, "args": strings,
            "filesHash": { "type": "string", "pattern": "^[0-9a-f]{1,128}$" }, "force": { "type": "boolean" } } },
        "TemplateBuildStartV2": { "type": "object", "properties": {
            "fromImage": { "type": "string" }, "fromTemplate": { "type": "string" },
            "fromImageRegistry": { "type": "object", "description": "type registry with username and password; aws and gcp are refused",
                "properties": { "type": { "type": "string" }, "username": { "type": "string" }, "password": { "type": "string" } } },
            "force": { "type": "boolean" }, "steps": { "type": "array", "items": { "$ref": "#/components/schemas/TemplateStep" } },
            "startCmd": { "type": "string" }, "readyCmd": { "type": "string" } } },
        "BuildLogEntry": { "type": "object", "required": ["timestamp", "message", "level"], "properties": {
            "timestamp": { "type": "string", "format": "date-time" }, "message": { "type": "string" },
            "level": { "type": "string", "enum": ["debug", "info", "warn", "error"] }, "step": { "type": "string" } } },
        "BuildStatusReason": { "type": "object", "required": ["message"], "properties": {
            "message": { "type": "string" }, "step": { "type": "string" },
            "logEntries": { "type": "array", "items": { "$ref": "#/components/schemas/BuildLogEntry" } } } },
        "TemplateBuildInfo": { "type": "object", "required": ["templateID", "buildID", "status", "logs", "logEntries"], "properties": {
            "templateID": { "type": "string" }, "buildID": { "type": "string" }, "status": build_status, "logs": strings,
            "logEntries": { "type": "array", "items": { "$ref": "#/components/schemas/BuildLogEntry" } },
            "reason": { "$ref": "#/components/schemas/BuildStatusReason" } } },
        "AssignTemplateTagsRequest": { "type": "object", "required": ["target", "tags"], "properties": {
            "target": { "type": "string", "description": "name:tag of the build to tag" }, "tags": strings } },
        "AssignedTemplateTags": { "type": "object", "required": ["buildID", "tags"], "properties": {
            "buildID": { "type": "string", "format": "uuid" }, "tags": strings } },
        "DeleteTemplateTagsRequest": { "type": "object", "required": ["name", "tags"], "properties": {
            "name": { "type": "string" }, "tags": strings } },
        "TemplateTag": { "type": "object", "required": ["tag", "buildID", "createdAt"], "properties": {
            "tag": { "type": "string" }, "buildID": { "type": "string", "format": "uuid" }, "createdAt": { "type": "string", "format": "date-time" } } },
    })
}

fn sandbox_schemas() -> Value {
    let string_map = json!({ "type": "object", "additionalProperties": { "type": "string" } });
    let blocks = json!({ "type": "array", "description": "IPv4 addresses or CIDR blocks",
        "items": { "type": "string", "pattern": "^[0-9]{1,3}(\\.[0-9]{1,3}){3}(/[0-9]{1,2})?$" } });
    let allows = json!({ "type": "array",
        "description": "IPv4 addresses, CIDR blocks or domain names (example.com, *.example.com: HTTP on port 80 and TLS on 443, with denyOut 0.0.0.0/0)",
        "items": { "type": "string", "pattern": "^([0-9]{1,3}(\\.[0-9]{1,3}){3}(/[0-9]{1,2})?|(\\*\\.)?[A-Za-z0-9-]{1,63}(\\.[A-Za-z0-9-]{1,63})*)$" } });
    let addresses = json!({ "type": "array", "items": { "type": "string", "format": "ipv4" } });
    json!({
        "Error": { "type": "object", "required": ["code", "message"], "properties": { "code": { "type": "integer" }, "message": { "type": "string" } } },
        "NewSandbox": { "type": "object", "required": ["templateID"], "properties": {
            "templateID": { "type": "string" }, "timeout": { "type": "integer", "minimum": 0, "maximum": MAX_TIMEOUT_SECS },
            "metadata": string_map, "envVars": string_map, "secure": { "type": "boolean" },
            "allow_internet_access": { "type": "boolean" }, "autoPause": { "type": "boolean" },
            "publish": { "type": "array", "description": "Hearth's: host ports forwarded to the guest, [ADDR:]HOSTPORT:GUESTPORT[/tcp|udp]", "items": { "type": "string" } },
            "autoPauseMemory": { "type": "boolean", "description": "false: an auto-pause keeps the disk only, and a resume boots the sandbox again" },
            "autoResume": { "type": "object", "required": ["enabled"], "properties": { "enabled": { "type": "boolean" } } },
            "volumeMounts": { "type": "array", "maxItems": 4, "description": "named volumes and where the guest mounts them (one sandbox at a time per volume)",
                "items": { "type": "object", "required": ["name", "path"], "properties": { "name": { "type": "string" }, "path": { "type": "string" } } } },
            "network": { "$ref": "#/components/schemas/SandboxNetworkConfig" } } },
        "SandboxPauseRequest": { "type": "object", "properties": { "memory": { "type": "boolean",
            "description": "false: keep the disk only; a resume boots the sandbox again, and auto-resume refuses it" } } },
        "SandboxNetworkConfig": { "type": "object", "properties": {
            "allowOut": allows, "denyOut": blocks, "dnsServers": addresses,
            "allowPublicTraffic": { "type": "boolean", "enum": [true] } } },
        "SandboxNetworkUpdate": { "type": "object", "properties": {
            "allowOut": allows, "denyOut": blocks, "dnsServers": addresses,
            "allow_internet_access": { "type": "boolean" } } },
        "Sandbox": { "type": "object", "required": ["templateID", "sandboxID", "clientID", "envdVersion"], "properties": {
            "templateID": { "type": "string" }, "sandboxID": { "type": "string" }, "alias": { "type": "string" },
            "clientID": { "type": "string" }, "envdVersion": { "type": "string" }, "envdAccessToken": { "type": "string" },
            "domain": { "type": "string", "nullable": true } } },
        "ListedSandbox": { "type": "object", "required": ["templateID", "sandboxID", "clientID", "startedAt", "endAt", "cpuCount", "memoryMB", "diskSizeMB", "state", "envdVersion"], "properties": {
            "templateID": { "type": "string" }, "sandboxID": { "type": "string" }, "alias": { "type": "string" }, "clientID": { "type": "string" },
            "startedAt": { "type": "string", "format": "date-time" }, "endAt": { "type": "string", "format": "date-time" },
            "cpuCount": { "type": "integer" }, "memoryMB": { "type": "integer" }, "diskSizeMB": { "type": "integer" },
            "metadata": string_map, "state": { "type": "string", "enum": ["running", "paused", "killed"] }, "envdVersion": { "type": "string" },
            "stopReason": { "type": "string", "description": "Hearth's: why a killed sandbox stopped" },
            "lifecycleState": { "type": "string", "enum": ["starting", "running", "pausing", "paused", "resuming", "stopping", "stopped"],
                "description": "Hearth's: where the sandbox is in its lifecycle, finer than state" } } },
        "SandboxDetail": { "allOf": [ { "$ref": "#/components/schemas/ListedSandbox" }, { "type": "object", "properties": {
            "domain": { "type": "string", "nullable": true }, "allowInternetAccess": { "type": "boolean" }, "envdAccessToken": { "type": "string" },
            "network": { "$ref": "#/components/schemas/SandboxNetworkConfig" },
            "lifecycle": { "type": "object", "required": ["autoResume", "onTimeout"], "properties": {
                "autoResume": { "type": "boolean" }, "onTimeout": { "type": "string", "enum": ["kill", "pause"] } } } } } ] },
        "TimeoutRequest": { "type": "object", "properties": { "timeout": { "type": "integer", "minimum": 0, "maximum": MAX_TIMEOUT_SECS } } },
        "SetTimeoutRequest": { "type": "object", "required": ["timeout"], "properties": { "timeout": { "type": "integer", "minimum": 0, "maximum": MAX_TIMEOUT_SECS } } },
        "ForkRequest": { "type": "object", "properties": { "timeout": { "type": "integer", "minimum": 0, "maximum": MAX_TIMEOUT_SECS }, "count": { "type": "integer", "minimum": 1, "maximum": MAX_FORKS } } },
        "SandboxSnapshotRequest": { "type": "object", "properties": { "name": { "type": "string" }, "memory": { "type": "boolean" } } },
        "NewVolume": { "type": "object", "required": ["name"], "properties": {
            "name": { "type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$" },
            "size": { "description": "Hearth's: bytes, or a string like 10G (default 1 GiB)", "oneOf": [{ "type": "integer", "minimum": 16777216 }, { "type": "string" }] },
            "fs": { "type": "string", "enum": ["ext4"] } } },
        "Volume": { "type": "object", "required": ["volumeID", "name"], "properties": {
            "volumeID": { "type": "string" }, "name": { "type": "string" }, "fs": { "type": "string" },
            "sizeBytes": { "type": "integer" }, "usedBytes": { "type": "integer" },
            "mountedBy": { "type": "string", "nullable": true } } },
        "VolumeAndToken": { "type": "object", "required": ["volumeID", "name", "token"], "properties": {
            "volumeID": { "type": "string" }, "name": { "type": "string" }, "token": { "type": "string" },
            "fs": { "type": "string" }, "sizeBytes": { "type": "integer" }, "usedBytes": { "type": "integer" },
            "mountedBy": { "type": "string", "nullable": true } } },
        "SnapshotInfo": { "type": "object", "required": ["snapshotID", "names"], "properties": { "snapshotID": { "type": "string" }, "names": { "type": "array", "items": { "type": "string" } } } },
        "ForkResult": { "type": "object", "properties": { "sandbox": { "$ref": "#/components/schemas/Sandbox" }, "error": { "$ref": "#/components/schemas/Error" } } },
        "RefreshRequest": { "type": "object", "properties": { "duration": { "type": "integer", "minimum": 0, "maximum": MAX_TIMEOUT_SECS } } },
        "SandboxMetric": { "type": "object", "properties": {
            "timestamp": { "type": "string", "format": "date-time" }, "timestampUnix": { "type": "integer" }, "cpuCount": { "type": "integer" },
            "cpuUsedPct": { "type": "number" }, "memUsed": { "type": "integer" }, "memTotal": { "type": "integer" }, "memCache": { "type": "integer" },
            "diskUsed": { "type": "integer" }, "diskTotal": { "type": "integer" } } },
        "SandboxesWithMetrics": { "type": "object", "properties": { "sandboxes": { "type": "object", "additionalProperties": { "$ref": "#/components/schemas/SandboxMetric" } } } },
        "SandboxLogEntry": { "type": "object", "properties": {
            "timestamp": { "type": "string", "format": "date-time" }, "level": { "type": "string" }, "message": { "type": "string" }, "fields": string_map } },
        "SandboxLogs": { "type": "object", "properties": { "logs": { "type": "array", "items": { "$ref": "#/components/schemas/SandboxLogEntry" } } } },
        "SandboxLogsV1": { "type": "object", "properties": {
            "logs": { "type": "array", "items": { "type": "object", "properties": {
                "timestamp": { "type": "string", "format": "date-time" }, "line": { "type": "string" } } } },
            "logEntries": { "type": "array", "items": { "$ref": "#/components/schemas/SandboxLogEntry" } } } },
        "NewTeamAPIKey": { "type": "object", "required": ["name"], "properties": { "name": { "type": "string", "minLength": 1, "maxLength": 128 } } },
        "IdentifierMaskingDetails": { "type": "object", "required": ["prefix", "valueLength", "maskedValuePrefix", "maskedValueSuffix"], "properties": {
            "prefix": { "type": "string" }, "valueLength": { "type": "integer" }, "maskedValuePrefix": { "type": "string" }, "maskedValueSuffix": { "type": "string" } } },
        "TeamAPIKey": { "type": "object", "required": ["id", "name", "mask", "createdAt"], "properties": {
            "id": { "type": "string" }, "name": { "type": "string" }, "mask": { "$ref": "#/components/schemas/IdentifierMaskingDetails" },
            "createdAt": { "type": "string", "format": "date-time" }, "lastUsed": { "type": "string", "format": "date-time", "nullable": true } } },
        "CreatedTeamAPIKey": { "allOf": [ { "$ref": "#/components/schemas/TeamAPIKey" }, { "type": "object", "required": ["key"], "properties": { "key": { "type": "string" } } } ] },
        "TeamMetric": { "type": "object", "required": ["timestamp", "timestampUnix", "concurrentSandboxes", "sandboxStartRate"], "properties": {
            "timestamp": { "type": "string", "format": "date-time" }, "timestampUnix": { "type": "integer" },
            "concurrentSandboxes": { "type": "integer" }, "sandboxStartRate": { "type": "number" } } },
        "MaxTeamMetric": { "type": "object", "required": ["timestamp", "timestampUnix", "value"], "properties": {
            "timestamp": { "type": "string", "format": "date-time" }, "timestampUnix": { "type": "integer" }, "value": { "type": "number" } } },
        "TemplateAlias": { "type": "object", "required": ["templateID", "public"], "properties": {
            "templateID": { "type": "string" }, "public": { "type": "boolean" } } },
    })
}

pub(crate) async fn require_key(
    State(api): State<Arc<Api>>,
    request: Request,
    next: Next,
) -> Response {
    let key = request
        .headers()
        .get(API_KEY_HEADER)
        .and_then(|v| v.to_str().ok());
    let Some(key) = key else {
        return ApiError::unauthorized("missing X-API-Key header").into_response();
    };
    match api.manager.store().check_key(key) {
        Ok(Some(_)) => next.run(request).await,
        Ok(None) => ApiError::unauthorized("invalid API key").into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// A JSON body, with E2B's 400 for a malformed one.
pub(crate) fn body<T: for<'de> Deserialize<'de> + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

fn timeout_secs(value: Option<i64>, field: &str) -> Result<u64, ApiError> {
    match value {
        None => Ok(DEFAULT_TIMEOUT_SECS),
        Some(secs) => u64::try_from(secs)
            .ok()
            .filter(|s| *s <= MAX_TIMEOUT_SECS)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{field} must be between 0 and {MAX_TIMEOUT_SECS} seconds, not {secs}"
                ))
            }),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewSandbox {
    #[serde(rename = "templateID")]
    template_id: Option<String>,
    timeout: Option<i64>,
    metadata: Option<BTreeMap<String, String>>,
    env_vars: Option<BTreeMap<String, String>>,
    secure: Option<bool>,
    #[serde(rename = "allow_internet_access")]
    allow_internet_access: Option<bool>,
    auto_pause: Option<bool>,
    auto_pause_memory: Option<bool>,
    auto_resume: Option<AutoResume>,
    network: Option<Network>,
    /// Hearth's: host ports forwarded to the guest,
    /// `[ADDR:]HOSTPORT:GUESTPORT[/tcp|udp]` each.
    publish: Option<Vec<String>>,
    /// E2B features Hearth does not have, kept to refuse them by name.
    mcp: Option<Value>,
    iam: Option<Value>,
    /// Named volumes and where the guest mounts them.
    volume_mounts: Option<Vec<VolumeMount>>,
}

impl NewSandbox {
    /// A 400 naming the first feature asked for that this server lacks: a
    /// sandbox without it would fail later and less clearly.
    fn refuse_unsupported(&self) -> Result<(), ApiError> {
        let unsupported = [
            (self.mcp.as_ref().is_some_and(|m| !m.is_null()), "mcp"),
            (self.iam.as_ref().is_some_and(|i| !i.is_null()), "iam"),
        ];
        refuse_first(&unsupported, "")
    }
}

/// `envVars` as a process can have them: a name that is not empty and has
/// no `=`, and neither name nor value with a NUL byte. Anything else could
/// never start a process in the sandbox, so it is a 400 at create.
fn checked_env(env: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ApiError> {
    for (name, value) in &env {
        if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
            return Err(ApiError::bad_request(format!(
                "envVars: {name:?} cannot be an environment variable: names must be non-empty \
                 without '=', and neither names nor values may hold a NUL byte"
            )));
        }
    }
    Ok(env)
}

/// E2B's `SandboxAutoResumeConfig`.
#[derive(Debug, Default, Deserialize)]
struct AutoResume {
    #[serde(default)]
    enabled: bool,
}

/// The timeout policy of a create request, checked as E2B checks it:
/// `(autoPause, autoPauseMemory, autoResume)`.
fn timeout_policy(new: &NewSandbox) -> Result<(bool, bool, bool), ApiError> {
    let auto_pause = new.auto_pause.unwrap_or(false);
    let memory = new.auto_pause_memory.unwrap_or(true);
    let auto_resume = new.auto_resume.as_ref().is_some_and(|r| r.enabled);
    if auto_resume && !auto_pause {
        return Err(ApiError::bad_request(
            "autoResume needs autoPause: a sandbox that is killed at its timeout has nothing to resume",
        ));
    }
    if auto_resume && !memory {
        return Err(ApiError::bad_request(
            "autoResume cannot be combined with autoPauseMemory false: a sandbox paused without its memory boots again, so it must be resumed explicitly (connect or resume)",
        ));
    }
    Ok((auto_pause, memory, auto_resume))
}

/// A 400 naming the first `(asked, field)` asked for, if any: features this
/// server lacks are refused by name rather than ignored.
fn refuse_first(unsupported: &[(bool, &str)], prefix: &str) -> Result<(), ApiError> {
    match unsupported.iter().find(|(asked, _)| *asked) {
        Some((_, field)) => Err(ApiError::bad_request(format!(
            "{prefix}{field} is not supported by this server"
        ))),
        None => Ok(()),
    }
}

/// The `publish` entries of a create, parsed; a host port below 1024 only
/// with `allow_privileged` (`--allow-privileged-ports`). Two entries that
/// take the same host port are a 400.
fn published(
    entries: &[String],
    allow_privileged: bool,
) -> Result<Vec<hearth_node::Published>, ApiError> {
    let mut all: Vec<hearth_node::Published> = Vec::new();
    for entry in entries {
        let p: hearth_node::Published = entry
            .parse()
            .map_err(|e| ApiError::bad_request(format!("publish: {e}")))?;
        if p.host_port < 1024 && !allow_privileged {
            return Err(ApiError::bad_request(format!(
                "publish: {entry}: host ports below 1024 need the server's \
                 --allow-privileged-ports"
            )));
        }
        if all.iter().any(|q| q.clashes_with(&p)) {
            return Err(ApiError::bad_request(format!(
                "publish: {entry}: host port {}/{} is given twice",
                p.host_port,
                p.proto.as_str()
            )));
        }
        all.push(p);
    }
    Ok(all)
}

/// `SandboxNetworkConfig` of a create, and `SandboxNetworkUpdate`: the
/// egress lists Hearth enforces, and the E2B fields it does not, kept only
/// to refuse them by name rather than ignore them.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Network {
    allow_out: Option<Vec<String>>,
    deny_out: Option<Vec<String>>,
    dns_servers: Option<Vec<String>>,
    allow_public_traffic: Option<bool>,
    mask_request_host: Option<String>,
    egress_proxy: Option<Value>,
    https_ports: Option<Vec<Value>>,
    rules: Option<serde_json::Map<String, Value>>,
    /// Only in an update.
    #[serde(rename = "allow_internet_access")]
    allow_internet_access: Option<bool>,
}

/// The policy that `allow_internet_access` and `network` ask for together:
/// `false` denies every address, and `allowOut` wins over any denial.
fn egress(allow_internet_access: Option<bool>, network: &Network) -> Result<Egress, ApiError> {
    let unsupported = [
        (
            network.allow_public_traffic == Some(false),
            "allowPublicTraffic=false",
        ),
        (network.mask_request_host.is_some(), "maskRequestHost"),
        (
            network.egress_proxy.as_ref().is_some_and(|p| !p.is_null()),
            "egressProxy",
        ),
        (
            network.https_ports.as_ref().is_some_and(|p| !p.is_empty()),
            "httpsPorts",
        ),
        (
            network.rules.as_ref().is_some_and(|r| !r.is_empty()),
            "rules",
        ),
    ];
    refuse_first(&unsupported, "network.")?;
    for server in network.dns_servers.iter().flatten() {
        if server.parse::<std::net::Ipv4Addr>().is_err() {
            return Err(ApiError::bad_request(format!(
                "network.dnsServers: {server:?} is not an IPv4 address"
            )));
        }
    }
    let mut egress = Egress::default();
    for entry in network.allow_out.iter().flatten() {
        match entry.parse::<Cidr>() {
            Ok(block) => {
                if !egress.allow.contains(&block) {
                    egress.allow.push(block);
                }
            }
            Err(e) if !looks_like_a_name(entry) => {
                return Err(ApiError::bad_request(format!("network.allowOut: {e}")));
            }
            Err(_) => {
                let rule = entry
                    .parse::<DomainRule>()
                    .map_err(|e| ApiError::bad_request(format!("network.allowOut: {e}")))?;
                if !egress.domains.contains(&rule) {
                    egress.domains.push(rule);
                }
            }
        }
    }
    for entry in network.deny_out.iter().flatten() {
        let block = entry.parse::<Cidr>().map_err(|e| {
            ApiError::bad_request(if looks_like_a_name(entry) {
                format!(
                    "network.denyOut: {entry:?}: domain names may only be allowed (allowOut); \
                     deny IPv4 addresses or CIDR blocks"
                )
            } else {
                format!("network.denyOut: {e}")
            })
        })?;
        if !egress.deny.contains(&block) {
            egress.deny.push(block);
        }
    }
    if allow_internet_access == Some(false) && !egress.deny.contains(&Cidr::ANY) {
        egress.deny.push(Cidr::ANY);
    }
    if !egress.domains.is_empty() && !egress.deny.contains(&Cidr::ANY) {
        return Err(ApiError::bad_request(format!(
            "network.allowOut: domain names ({}) restrict only a sandbox that is otherwise \
             denied: add \"0.0.0.0/0\" to network.denyOut (or set allowInternetAccess to false)",
            egress.domains[0]
        )));
    }
    Ok(egress)
}

/// Whether a list entry that is not a CIDR block was meant as a host name.
fn looks_like_a_name(entry: &str) -> bool {
    !entry.contains(':') && entry.chars().any(|c| c.is_ascii_alphabetic() || c == '*')
}

/// `Sandbox`: what create, connect and resume answer.
fn sandbox_json(api: &Api, r: &SandboxRecord) -> Value {
    let mut v = json!({
        "templateID": r.template_id,
        "sandboxID": r.sandbox_id,
        "clientID": r.client_id,
        "envdVersion": ENVD_VERSION,
        "domain": api.domain,
    });
    if let Some(alias) = &r.alias {
        v["alias"] = json!(alias);
    }
    if let Some(token) = &r.envd_access_token {
        v["envdAccessToken"] = json!(token);
    }
    v
}

/// `ListedSandbox`.
fn listed_json(r: &SandboxRecord) -> Value {
    let mut v = json!({
        "templateID": r.template_id,
        "sandboxID": r.sandbox_id,
        "clientID": r.client_id,
        "startedAt": rfc3339_ms(r.started_at_ms),
        "endAt": rfc3339_ms(r.end_at_ms),
        "cpuCount": r.cpu_count,
        "memoryMB": r.memory_mb,
        "diskSizeMB": DISK_SIZE_MB,
        "metadata": r.metadata,
        "state": r.state.as_str(),
        "envdVersion": ENVD_VERSION,
    });
    if let Some(alias) = &r.alias {
        v["alias"] = json!(alias);
    }
    if let Some(reason) = &r.stop_reason {
        v["stopReason"] = json!(reason);
    }
    if let Some(lifecycle) = &r.lifecycle {
        v["lifecycleState"] = json!(lifecycle);
    }
    v
}

/// `SandboxDetail`.
fn detail_json(api: &Api, r: &SandboxRecord) -> Value {
    let mut v = listed_json(r);
    v["domain"] = json!(api.domain);
    v["allowInternetAccess"] = json!(r.allow_internet_access);
    if let Some(token) = &r.envd_access_token {
        v["envdAccessToken"] = json!(token);
    }
    if !r.egress.is_open() || !r.egress.allow.is_empty() {
        let mut allow: Vec<String> = r.egress.allow.iter().map(ToString::to_string).collect();
        allow.extend(r.egress.domains.iter().map(ToString::to_string));
        v["network"] = json!({ "allowOut": allow, "denyOut": r.egress.deny });
    }
    if !r.egress.publish.is_empty() {
        v["publish"] = json!(r.egress.publish);
    }
    v["lifecycle"] = json!({
        "autoResume": r.auto_resume,
        "onTimeout": if r.auto_pause { "pause" } else { "kill" },
    });
    v
}

/// `POST /sandboxes`: secure only when asked.
async fn create_v1(
    State(api): State<Arc<Api>>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    create(&api, body(&bytes)?).await
}

/// `POST /v2/sandboxes`: always secure ("all system communication with the
/// sandbox is always secured"), so every sandbox gets an access token.
async fn create_v2(
    State(api): State<Arc<Api>>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let mut new: NewSandbox = body(&bytes)?;
    new.secure = Some(true);
    create(&api, new).await
}

async fn create(api: &Api, new: NewSandbox) -> Result<Response, ApiError> {
    new.refuse_unsupported()?;
    let (auto_pause, auto_pause_memory, auto_resume) = timeout_policy(&new)?;
    let template = new
        .template_id
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::bad_request("templateID is required"))?;
    // `name:tag` names a build; sandboxes start from current builds.
    let template = api.builds.resolve(&template).await?;
    let request = CreateRequest {
        template,
        timeout_secs: timeout_secs(new.timeout, "timeout")?,
        metadata: new.metadata.unwrap_or_default(),
        env_vars: checked_env(new.env_vars.unwrap_or_default())?,
        secure: new.secure.unwrap_or(false),
        allow_internet_access: new.allow_internet_access != Some(false),
        egress: egress(
            new.allow_internet_access,
            new.network.as_ref().unwrap_or(&Network::default()),
        )?,
        auto_pause,
        auto_pause_memory,
        auto_resume,
        volumes: new.volume_mounts.unwrap_or_default(),
    };
    api.manager.check_resolvable(&request.egress)?;
    let mut request = request;
    request.egress.publish = published(
        new.publish.as_deref().unwrap_or_default(),
        api.allow_privileged_ports,
    )?;
    let record = api.manager.create(request).await?;
    Ok((StatusCode::CREATED, Json(sandbox_json(api, &record))).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListParams {
    metadata: Option<String>,
    state: Option<String>,
    limit: Option<u32>,
    next_token: Option<String>,
    order: Option<String>,
    started_after: Option<String>,
    template: Option<String>,
}

impl ListParams {
    /// `order`: `desc` (newest first, the default) or `asc`.
    fn oldest_first(&self) -> Result<bool, ApiError> {
        match self.order.as_deref() {
            None | Some("desc") => Ok(false),
            Some("asc") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "order must be asc or desc, not \"{other}\""
            ))),
        }
    }

    /// `startedAfter`: an RFC 3339 time, any offset.
    fn started_after_ms(&self) -> Result<Option<i64>, ApiError> {
        let Some(text) = self.started_after.as_deref() else {
            return Ok(None);
        };
        let (seconds, nanos) = hearth_proto::time::parse_rfc3339(text).ok_or_else(|| {
            ApiError::bad_request(format!("startedAfter is not an RFC 3339 time: \"{text}\""))
        })?;
        Ok(Some(
            seconds
                .saturating_mul(1000)
                .saturating_add(i64::from(nanos / 1_000_000)),
        ))
    }
}

/// `metadata=k1%3Dv1%26k2%3Dv2`: URL-encoded `k=v` pairs joined by `&`.
fn parse_metadata(text: Option<&str>) -> Result<BTreeMap<String, String>, ApiError> {
    let mut pairs = BTreeMap::new();
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return Ok(pairs);
    };
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            ApiError::bad_request(format!("metadata filter '{pair}' is not key=value"))
        })?;
        pairs.insert(percent_decode(k)?, percent_decode(v)?);
    }
    Ok(pairs)
}

fn percent_decode(text: &str) -> Result<String, ApiError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("bad percent-encoding in '{text}'"))
                    })?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::bad_request(format!("'{text}' is not UTF-8")))
}

async fn list_v1(
    State(api): State<Arc<Api>>,
    Query(params): Query<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let query = SandboxQuery {
        states: vec![SandboxState::Running],
        metadata: parse_metadata(params.metadata.as_deref())?,
        limit: None,
        next_token: None,
        oldest_first: false,
        started_after_ms: None,
        template: None,
    };
    let page = api.manager.store().list_sandboxes(&query)?;
    Ok(Json(Value::Array(
        page.sandboxes.iter().map(listed_json).collect(),
    )))
}

async fn list_v2(
    State(api): State<Arc<Api>>,
    Query(params): Query<ListParams>,
) -> Result<Response, ApiError> {
    if params.limit == Some(0) {
        return Err(ApiError::bad_request("limit must be at least 1"));
    }
    let query = SandboxQuery {
        states: SandboxState::parse_list(params.state.as_deref().unwrap_or_default())
            .map_err(|e| ApiError::bad_request(e.to_string()))?,
        metadata: parse_metadata(params.metadata.as_deref())?,
        limit: params.limit,
        oldest_first: params.oldest_first()?,
        started_after_ms: params.started_after_ms()?,
        template: params.template.clone().filter(|t| !t.is_empty()),
        next_token: params.next_token,
    };
    let page = api.manager.store().list_sandboxes(&query)?;
    let mut headers = HeaderMap::new();
    if let Some(token) = page.next_token
        && let Ok(value) = HeaderValue::from_str(&token)
    {
        headers.insert("x-next-token", value);
    }
    let body = Value::Array(page.sandboxes.iter().map(listed_json).collect());
    Ok((headers, Json(body)).into_response())
}

async fn detail(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = api.manager.get(&id)?;
    Ok(Json(detail_json(&api, &record)))
}

async fn kill(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    api.manager.kill(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /sandboxes/{id}/network`: the whole policy is replaced, so an
/// omitted field is cleared.
async fn update_network(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let network: Network = body(&bytes)?;
    let egress = egress(network.allow_internet_access, &network)?;
    api.manager.check_resolvable(&egress)?;
    api.manager
        .set_network(&id, network.allow_internet_access != Some(false), egress)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize)]
struct TimeoutBody {
    timeout: Option<i64>,
}

async fn set_timeout(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let body: TimeoutBody = body(&bytes)?;
    let secs = body
        .timeout
        .ok_or_else(|| ApiError::bad_request("timeout is required"))?;
    api.manager
        .set_timeout(&id, timeout_secs(Some(secs), "timeout")?)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize)]
struct RefreshBody {
    duration: Option<i64>,
}

async fn refresh(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let body: RefreshBody = body(&bytes)?;
    let secs = timeout_secs(body.duration.or(Some(60)), "duration")?;
    api.manager.refresh(&id, secs)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize)]
struct PauseBody {
    /// `false`: keep the disk only.
    memory: Option<bool>,
}

async fn pause(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let body: PauseBody = body(&bytes)?;
    let mode = if body.memory == Some(false) {
        PauseMode::Filesystem
    } else {
        PauseMode::Full
    };
    api.manager.pause(&id, mode).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn resume(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let body: TimeoutBody = body(&bytes)?;
    let secs = timeout_secs(body.timeout, "timeout")?;
    if !api.manager.resume(&id, secs).await? {
        return Err(ApiError::conflict(format!(
            "sandbox {id} is already running"
        )));
    }
    let record = api.manager.get(&id)?;
    Ok((StatusCode::CREATED, Json(sandbox_json(&api, &record))).into_response())
}

/// Connect: resume if paused (201), else move the timeout (200).
async fn connect(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let body: TimeoutBody = body(&bytes)?;
    let secs = timeout_secs(body.timeout, "timeout")?;
    let resumed = api.manager.resume(&id, secs).await?;
    let record = api.manager.get(&id)?;
    let status = if resumed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(sandbox_json(&api, &record))).into_response())
}

async fn metrics(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let metric = api.manager.metrics(&id).await?;
    Ok(Json(Value::Array(metric.into_iter().collect())))
}

#[derive(Debug, Default, Deserialize)]
struct ManyMetricsParams {
    sandbox_ids: Option<String>,
}

async fn many_metrics(
    State(api): State<Arc<Api>>,
    Query(params): Query<ManyMetricsParams>,
) -> Result<Json<Value>, ApiError> {
    let ids = params.sandbox_ids.unwrap_or_default();
    let mut sandboxes = serde_json::Map::new();
    for id in ids.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Some(metric) = api.manager.metrics(id).await? {
            sandboxes.insert(id.to_owned(), metric);
        }
    }
    Ok(Json(json!({ "sandboxes": sandboxes })))
}

#[derive(Debug, Default, Deserialize)]
struct LogParams {
    cursor: Option<i64>,
    limit: Option<usize>,
    direction: Option<String>,
    level: Option<String>,
    search: Option<String>,
}

/// Most entries one logs request returns (E2B's limit and default).
const MAX_LOG_ENTRIES: usize = 1000;
/// Longest `search` (E2B's).
const MAX_LOG_SEARCH: usize = 256;

/// A console entry: Unix milliseconds, level, message.
type LogEntry = (i64, &'static str, String);

fn log_rank(level: &str) -> Option<u8> {
    ["debug", "info", "warn", "error"]
        .iter()
        .position(|l| *l == level)
        .and_then(|p| u8::try_from(p).ok())
}

/// A page of `entries` (oldest first) as E2B's v2 logs route picks it:
/// `backward` (the default) ends at `cursor` (or now) newest first,
/// `forward` starts at `cursor` oldest first; at most `limit` entries
/// (1000 at most and by default), at `level` or above, whose message
/// contains `search`.
fn select_logs(entries: Vec<LogEntry>, params: &LogParams) -> Result<Vec<LogEntry>, ApiError> {
    let limit = params.limit.unwrap_or(MAX_LOG_ENTRIES);
    if limit > MAX_LOG_ENTRIES {
        return Err(ApiError::bad_request(format!(
            "limit must be at most {MAX_LOG_ENTRIES}, not {limit}"
        )));
    }
    let min = match params.level.as_deref() {
        None => 0,
        Some(level) => log_rank(level).ok_or_else(|| {
            ApiError::bad_request(format!(
                "level must be debug, info, warn or error, not '{level}'"
            ))
        })?,
    };
    let forward = match params.direction.as_deref() {
        None | Some("backward") => false,
        Some("forward") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "direction must be forward or backward, not '{other}'"
            )));
        }
    };
    let search = params.search.as_deref().unwrap_or("");
    if search.len() > MAX_LOG_SEARCH {
        return Err(ApiError::bad_request(format!(
            "search must be at most {MAX_LOG_SEARCH} bytes"
        )));
    }
    let keep = |(ms, level, message): &LogEntry| {
        let in_window = match params.cursor {
            None => true,
            Some(cursor) if forward => *ms >= cursor,
            Some(cursor) => *ms <= cursor,
        };
        in_window && log_rank(level).unwrap_or(0) >= min && message.contains(search)
    };
    let kept = entries.into_iter().filter(keep);
    Ok(if forward {
        kept.take(limit).collect()
    } else {
        kept.rev().take(limit).collect()
    })
}

fn log_json((ms, level, message): &LogEntry) -> Value {
    json!({ "timestamp": rfc3339_ms(*ms), "level": level, "message": message, "fields": {} })
}

/// `GET /sandboxes/{id}/logs`: the last `limit` console lines, oldest
/// first, as lines and as entries.
async fn logs_v1(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    Query(params): Query<LogParams>,
) -> Result<Json<Value>, ApiError> {
    let params = LogParams {
        limit: params.limit,
        ..LogParams::default()
    };
    let mut entries = select_logs(api.manager.logs(&id)?, &params)?;
    entries.reverse();
    let lines: Vec<Value> = entries
        .iter()
        .map(|(ms, _, line)| json!({ "timestamp": rfc3339_ms(*ms), "line": line }))
        .collect();
    let entries: Vec<Value> = entries.iter().map(log_json).collect();
    Ok(Json(json!({ "logs": lines, "logEntries": entries })))
}

/// `GET /v2/sandboxes/{id}/logs`: the guest's console since create or
/// resume, a page at a time ([`select_logs`]).
async fn logs(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    Query(params): Query<LogParams>,
) -> Result<Json<Value>, ApiError> {
    let entries = select_logs(api.manager.logs(&id)?, &params)?;
    let entries: Vec<Value> = entries.iter().map(log_json).collect();
    Ok(Json(json!({ "logs": entries })))
}

/// Most copies one fork request may make (E2B's limit).
const MAX_FORKS: usize = 100;

#[derive(Debug, Default, Deserialize)]
struct ForkBody {
    timeout: Option<i64>,
    count: Option<i64>,
}

async fn fork(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let body: ForkBody = body(&bytes)?;
    let secs = timeout_secs(body.timeout, "timeout")?;
    let count = usize::try_from(body.count.unwrap_or(1))
        .ok()
        .filter(|c| (1..=MAX_FORKS).contains(c))
        .ok_or_else(|| ApiError::bad_request(format!("count must be between 1 and {MAX_FORKS}")))?;
    let results: Vec<Value> = api
        .manager
        .fork(&id, count, secs)
        .await?
        .iter()
        .map(|copy| match copy {
            Ok(record) => json!({ "sandbox": sandbox_json(&api, record) }),
            Err(e) => json!({ "error": { "code": e.status.as_u16(), "message": e.message } }),
        })
        .collect();
    Ok((StatusCode::CREATED, Json(Value::Array(results))).into_response())
}

async fn templates(State(api): State<Arc<Api>>) -> Result<Json<Value>, ApiError> {
    let list = api.manager.templates()?;
    Ok(Json(Value::Array(list)))
}

async fn template_alias(
    State(api): State<Arc<Api>>,
    Path(alias): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let named = |t: &Value| {
        t["templateID"] == alias.as_str()
            || t["aliases"]
                .as_array()
                .is_some_and(|a| a.iter().any(|n| n == alias.as_str()))
    };
    let template = api
        .manager
        .templates()?
        .into_iter()
        .find(named)
        .ok_or_else(|| ApiError::not_found(format!("template alias '{alias}' not found")))?;
    Ok(Json(
        json!({ "templateID": template["templateID"], "public": template["public"] }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(json: Value) -> Network {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn egress_from_a_request() {
        let none = Network::default();
        assert_eq!(egress(None, &none).unwrap(), Egress::open());
        assert_eq!(egress(Some(true), &none).unwrap(), Egress::open());
        assert_eq!(egress(Some(false), &none).unwrap(), Egress::closed());
        let lists = network(json!({
            "allowOut": ["10.1.2.3", "10.1.2.3/32"],
            "denyOut": ["0.0.0.0/0", "10.0.0.0/8"],
            "dnsServers": ["8.8.8.8"],
            "allowPublicTraffic": true,
        }));
        let got = egress(Some(false), &lists).unwrap();
        assert_eq!(got.allow, ["10.1.2.3".parse().unwrap()]);
        assert_eq!(got.deny, [Cidr::ANY, "10.0.0.0/8".parse().unwrap()]);
        assert!(got.domains.is_empty());
        // Names and blocks mix in allowOut, as E2B's SDKs send them.
        let named = network(json!({
            "allowOut": ["api.example.com", "*.Example.org", "1.1.1.1", "api.example.com"],
            "denyOut": ["0.0.0.0/0"],
        }));
        let got = egress(None, &named).unwrap();
        assert_eq!(got.allow, ["1.1.1.1".parse().unwrap()]);
        let domains: Vec<String> = got.domains.iter().map(ToString::to_string).collect();
        assert_eq!(domains, ["api.example.com", "*.example.org"]);
        let denied_by_switch = network(json!({ "allowOut": ["api.example.com"] }));
        assert_eq!(
            egress(Some(false), &denied_by_switch).unwrap().deny,
            [Cidr::ANY]
        );
    }

    #[test]
    fn features_this_server_lacks_are_refused_by_name() {
        let new = |json: Value| serde_json::from_value::<NewSandbox>(json).unwrap();
        for json in [
            json!({ "templateID": "base" }),
            json!({ "autoResume": { "enabled": false }, "mcp": null, "volumeMounts": [] }),
        ] {
            assert!(new(json.clone()).refuse_unsupported().is_ok(), "{json}");
        }
        for (json, field) in [
            (json!({ "mcp": { "github": {} } }), "mcp"),
            (json!({ "iam": { "tokens": {} } }), "iam"),
        ] {
            let err = new(json.clone()).refuse_unsupported().unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert!(err.message.starts_with(field), "{json}: {}", err.message);
        }
    }

    #[test]
    fn log_pages_follow_cursor_direction_level_and_search() {
        let entries: Vec<LogEntry> = (1..=5)
            .map(|i| {
                let level = if i == 4 { "error" } else { "info" };
                (i * 10, level, format!("line {i}"))
            })
            .collect();
        let page = |query: Value| {
            let params: LogParams = serde_json::from_value(query).unwrap();
            select_logs(entries.clone(), &params)
                .map(|page| page.into_iter().map(|(ms, _, _)| ms).collect::<Vec<i64>>())
        };
        assert_eq!(page(json!({})).unwrap(), [50, 40, 30, 20, 10]);
        assert_eq!(page(json!({ "limit": 2 })).unwrap(), [50, 40]);
        assert_eq!(page(json!({ "cursor": 30 })).unwrap(), [30, 20, 10]);
        assert_eq!(
            page(json!({ "cursor": 30, "direction": "forward", "limit": 2 })).unwrap(),
            [30, 40]
        );
        assert_eq!(page(json!({ "level": "warn" })).unwrap(), [40]);
        assert_eq!(page(json!({ "search": "line 2" })).unwrap(), [20]);
        assert_eq!(page(json!({ "limit": 0 })).unwrap(), Vec::<i64>::new());
        for (query, said) in [
            (json!({ "limit": 1001 }), "limit"),
            (json!({ "direction": "sideways" }), "direction"),
            (json!({ "level": "loud" }), "level"),
            (json!({ "search": "x".repeat(257) }), "search"),
        ] {
            let err = page(query.clone()).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert!(err.message.starts_with(said), "{query}: {}", err.message);
        }
    }

    #[test]
    fn env_vars_a_process_cannot_have_are_refused() {
        let env = |pairs: &[(&str, &str)]| {
            checked_env(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            )
        };
        assert!(env(&[("PATH", "/bin"), ("EMPTY", "")]).is_ok());
        for bad in [
            &[("", "x")][..],
            &[("A=B", "x")],
            &[("A\0", "x")],
            &[("A", "x\0y")],
        ] {
            let err = env(bad).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert!(err.message.starts_with("envVars"), "{}", err.message);
        }
    }

    #[test]
    fn timeout_policies_are_checked_as_e2b_checks_them() {
        let policy = |json: Value| timeout_policy(&serde_json::from_value(json).unwrap());
        assert_eq!(policy(json!({})).unwrap(), (false, true, false));
        assert_eq!(
            policy(json!({ "autoPause": true, "autoResume": { "enabled": true } })).unwrap(),
            (true, true, true)
        );
        assert_eq!(
            policy(json!({ "autoPause": true, "autoPauseMemory": false })).unwrap(),
            (true, false, false)
        );
        for (json, said) in [
            (
                json!({ "autoResume": { "enabled": true } }),
                "needs autoPause",
            ),
            (
                json!({ "autoPause": true, "autoPauseMemory": false, "autoResume": { "enabled": true } }),
                "cannot be combined",
            ),
        ] {
            let err = policy(json.clone()).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert!(err.message.contains(said), "{json}: {}", err.message);
        }
    }

    #[test]
    fn egress_refusals_name_the_field() {
        for (json, message) in [
            (
                json!({ "allowOut": ["api.example.com"] }),
                "network.allowOut: domain names (api.example.com) restrict only a sandbox that is \
                 otherwise denied",
            ),
            (
                json!({ "allowOut": ["api.exa mple.com"], "denyOut": ["0.0.0.0/0"] }),
                "network.allowOut: \"api.exa mple.com\" is not a domain name",
            ),
            (
                json!({ "allowOut": ["a.*.example.com"], "denyOut": ["0.0.0.0/0"] }),
                "network.allowOut: \"a.*.example.com\" is not a domain name",
            ),
            (
                json!({ "allowOut": ["10.0.0.300"] }),
                "network.allowOut: \"10.0.0.300\" is not an IPv4 address",
            ),
            (
                json!({ "denyOut": ["*.example.com"] }),
                "network.denyOut: \"*.example.com\": domain names may only be allowed",
            ),
            (
                json!({ "denyOut": ["10.1.0.0/8"] }),
                "network.denyOut: \"10.1.0.0/8\" has host bits set; the block is 10.0.0.0/8",
            ),
            (
                json!({ "denyOut": ["::/0"] }),
                "network.denyOut: \"::/0\" is an IPv6",
            ),
            (
                json!({ "dnsServers": ["dns"] }),
                "network.dnsServers: \"dns\"",
            ),
            (
                json!({ "allowPublicTraffic": false }),
                "network.allowPublicTraffic=false is not",
            ),
            (
                json!({ "maskRequestHost": "x" }),
                "network.maskRequestHost is not",
            ),
            (json!({ "rules": { "a.com": [] } }), "network.rules is not"),
        ] {
            let err = egress(None, &network(json.clone())).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert!(err.message.starts_with(message), "{json}: {}", err.message);
        }
    }

    #[test]
    fn the_document_covers_every_route_and_schema() {
        let doc = openapi();
        let paths = doc["paths"].as_object().unwrap();
        for route in ROUTES.iter().chain(OPEN_ROUTES) {
            assert!(
                paths[route.path][route.method].is_object(),
                "{} {}",
                route.method,
                route.path
            );
        }
        assert_eq!(
            paths
                .values()
                .map(|p| p.as_object().unwrap().len())
                .sum::<usize>(),
            ROUTES.len() + OPEN_ROUTES.len() + 1
        );
        // Only the upload and the health check go without a key.
        let open: Vec<&str> = paths
            .values()
            .flat_map(|p| p.as_object().unwrap().values())
            .filter(|op| op["security"] == json!([]))
            .map(|op| op["operationId"].as_str().unwrap())
            .collect();
        assert_eq!(open.len(), 2, "{open:?}");
        assert!(open.contains(&"uploadTemplateFiles") && open.contains(&"health"));
        // Every referenced schema exists.
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for reference in text.split("#/components/schemas/").skip(1) {
            let name: String = reference
                .chars()
                .take_while(|c| c.is_alphanumeric())
                .collect();
            assert!(schemas.contains_key(&name), "missing schema {name}");
        }
    }

    #[test]
    fn the_routes_fit_one_router() {
        // Overlapping paths would panic here rather than at server start.
        let mut routes: Router<Arc<Api>> = Router::new();
        for route in ROUTES.iter().chain(OPEN_ROUTES) {
            routes = routes.route(route.path, (route.handler)());
        }
        drop(routes);
    }

    #[test]
    fn metadata_filters_are_url_encoded_pairs() {
        let m = parse_metadata(Some("user%3Dalice&env=prod+eu")).unwrap_err();
        assert_eq!(m.status, StatusCode::BAD_REQUEST);
        let m = parse_metadata(Some("user=alice&env=prod%20eu")).unwrap();
        assert_eq!(m["user"], "alice");
        assert_eq!(m["env"], "prod eu");
        assert!(parse_metadata(None).unwrap().is_empty());
        assert!(parse_metadata(Some("a=%zz")).is_err());
    }

    #[test]
    fn timeouts_are_checked() {
        assert_eq!(timeout_secs(None, "timeout").unwrap(), 300);
        assert_eq!(timeout_secs(Some(15), "timeout").unwrap(), 15);
        let err = timeout_secs(Some(-1), "timeout").unwrap_err();
        assert!(err.message.contains("timeout"), "{}", err.message);
        assert!(timeout_secs(Some(86_401), "timeout").is_err());
    }
}
