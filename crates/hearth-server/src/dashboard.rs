//! The operator dashboard at `/dashboard`: a static single-page app
//! (`dashboard/` in this crate, embedded in the binary) that logs in with
//! an API key and calls the keyed REST API from the browser, plus what the
//! REST API lacks for it: the node's capacity (`/dashboard/api/node`), the
//! recent builds of every template (`/dashboard/api/builds`), and a
//! terminal into a sandbox over a WebSocket, bridged to a PTY process that
//! the sandbox's agent runs.
//!
//! The pages embed no data and need no key; every data route does. A
//! browser cannot set headers on a WebSocket, so the terminal takes the key
//! as one of the subprotocols it offers (`key.<API key>`); the server
//! answers with [`TERMINAL_PROTOCOL`] only, so the key is never echoed.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::api::Api;
use crate::error::ApiError;
use crate::manager::rfc3339_ms;
use hearth_node::AgentClient;
use hearth_proto::agent::AGENT_PORT;
use hearth_proto::process::process_event::{Event, data_event::Output};
use hearth_proto::process::{ProcessConfig, Pty, StartRequest, pty};

/// The subprotocol the terminal WebSocket speaks; the server picks it.
pub(crate) const TERMINAL_PROTOCOL: &str = "hearth-terminal";
/// The prefix of the subprotocol that carries the API key.
const KEY_PROTOCOL_PREFIX: &str = "key.";
/// The account the terminal's shell runs as (every template has it).
const TERMINAL_USER: &str = "user";
/// The terminal's shell: bash as a login shell where there is one, else
/// the user's own shell.
const SHELL_SCRIPT: &str =
    r#"if [ -x /bin/bash ]; then exec /bin/bash -l; else exec "${SHELL:-/bin/sh}" -l; fi"#;
/// The terminal type the page's renderer stands for.
const TERM: &str = "xterm";
/// Terminal size when the page names none, and the largest it may ask.
const DEFAULT_SIZE: (u32, u32) = (80, 24);
const MAX_SIZE: u32 = 1000;
/// Linux `SIGKILL`: what ends the shell when the page goes away.
const SIGKILL: i32 = 9;

const INDEX_HTML: &str = include_str!("../dashboard/index.html");
const APP_JS: &str = include_str!("../dashboard/app.js");
const TERMINAL_JS: &str = include_str!("../dashboard/terminal.js");
const STYLE_CSS: &str = include_str!("../dashboard/style.css");

/// What the pages may load and reach: this origin only (its WebSockets
/// included), no inline script, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The dashboard's routes, for [`crate::api::router`] to merge: the pages
/// and the terminal without the key middleware (the terminal checks the
/// key itself), the data routes behind it.
pub(crate) fn routes(api: &Arc<Api>) -> Router<Arc<Api>> {
    let keyed = Router::new()
        .route("/dashboard/api/node", get(node))
        .route("/dashboard/api/builds", get(builds))
        .layer(middleware::from_fn_with_state(
            Arc::clone(api),
            crate::api::require_key,
        ));
    Router::new()
        .route(
            "/dashboard",
            get(|| asset("text/html; charset=utf-8", INDEX_HTML)),
        )
        .route(
            "/dashboard/",
            get(|| asset("text/html; charset=utf-8", INDEX_HTML)),
        )
        .route(
            "/dashboard/app.js",
            get(|| asset("text/javascript; charset=utf-8", APP_JS)),
        )
        .route(
            "/dashboard/terminal.js",
            get(|| asset("text/javascript; charset=utf-8", TERMINAL_JS)),
        )
        .route(
            "/dashboard/style.css",
            get(|| asset("text/css; charset=utf-8", STYLE_CSS)),
        )
        .route("/dashboard/terminal/{id}", get(terminal))
        .merge(keyed)
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /dashboard/api/node`: the node's slots, sandboxes by state,
/// parked pool VMs and the host's view of the VMMs by template.
async fn node(State(api): State<Arc<Api>>) -> axum::Json<serde_json::Value> {
    let gauges = api.manager.gauges().await;
    let mut states: HashMap<&str, i64> = HashMap::new();
    let mut templates: HashMap<&str, i64> = HashMap::new();
    for ((state, template), count) in &gauges.sandboxes {
        *states.entry(state).or_default() += count;
        *templates.entry(template).or_default() += count;
    }
    let vmm: serde_json::Map<String, serde_json::Value> = gauges
        .vmm
        .iter()
        .map(|(template, t)| {
            (
                template.clone(),
                json!({
                    "cpuSeconds": t.cpu_seconds,
                    "memoryBytes": t.memory_bytes,
                    "diskBytes": t.disk_bytes,
                    "netSentBytes": t.net_sent_bytes,
                    "netReceivedBytes": t.net_received_bytes,
                }),
            )
        })
        .collect();
    axum::Json(json!({
        "slotsUsed": gauges.slots_used,
        "slotsCapacity": gauges.slots_capacity,
        "sandboxes": states,
        "sandboxesByTemplate": templates,
        "pooled": gauges.pooled,
        "vmm": vmm,
    }))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct BuildsParams {
    limit: Option<u32>,
}

/// Builds listed when a request names no limit, and the most it may ask.
const DEFAULT_BUILDS: u32 = 20;
const MAX_BUILDS: u32 = 100;

/// `GET /dashboard/api/builds?limit=N`: the newest template builds of
/// every template, running ones included (`GET /templates` lists only
/// templates with a finished build), newest first; their logs are at
/// `GET /templates/{templateID}/builds/{buildID}/status`.
async fn builds(
    State(api): State<Arc<Api>>,
    Query(params): Query<BuildsParams>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let limit = params.limit.unwrap_or(DEFAULT_BUILDS).clamp(1, MAX_BUILDS);
    let builds = api.builds.store().recent_builds(limit)?;
    Ok(axum::Json(serde_json::Value::Array(
        builds
            .iter()
            .map(|b| {
                let mut v = json!({
                    "templateID": b.template,
                    "buildID": b.build_id,
                    "status": b.status.as_str(),
                    "createdAt": rfc3339_ms(b.created_at_ms),
                    "updatedAt": rfc3339_ms(b.updated_at_ms),
                });
                if let Some(finished) = b.finished_at_ms {
                    v["finishedAt"] = json!(rfc3339_ms(finished));
                }
                if let Some(reason) = &b.reason {
                    v["reason"] = json!(reason);
                }
                v
            })
            .collect(),
    )))
}

/// The API key among the subprotocols a WebSocket request offers (the
/// comma-separated values of `Sec-WebSocket-Protocol`), if any.
pub(crate) fn key_from_protocols(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .find_map(|protocol| protocol.strip_prefix(KEY_PROTOCOL_PREFIX))
        .filter(|key| !key.is_empty())
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct TerminalParams {
    cols: Option<u32>,
    rows: Option<u32>,
}

/// A terminal size within bounds: (cols, rows).
fn terminal_size(cols: Option<u32>, rows: Option<u32>) -> (u32, u32) {
    (
        cols.unwrap_or(DEFAULT_SIZE.0).clamp(1, MAX_SIZE),
        rows.unwrap_or(DEFAULT_SIZE.1).clamp(1, MAX_SIZE),
    )
}

/// What the page sends in a text frame: a control message. Keystrokes come
/// in binary frames.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Control {
    Resize { cols: u32, rows: u32 },
}

/// A text frame of the page: `{"resize":[cols,rows]}`; anything else is
/// ignored.
pub(crate) fn parse_control(text: &str) -> Option<Control> {
    #[derive(Deserialize)]
    struct Frame {
        resize: Option<(u32, u32)>,
    }
    let frame: Frame = serde_json::from_str(text).ok()?;
    let (cols, rows) = frame.resize?;
    let (cols, rows) = terminal_size(Some(cols), Some(rows));
    Some(Control::Resize { cols, rows })
}

/// `GET /dashboard/terminal/{id}` (a WebSocket): a login shell in a PTY of
/// the running sandbox `id`. Binary frames carry the terminal's bytes both
/// ways; the page sends `{"resize":[cols,rows]}` text frames, and the
/// server `{"exit":code}` or `{"error":message}` before it closes.
async fn terminal(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    Query(params): Query<TerminalParams>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Some(key) = key_from_protocols(&headers) else {
        return Err(ApiError::unauthorized(
            "missing API key: offer it as the WebSocket subprotocol key.<API key>",
        ));
    };
    if api.manager.store().check_key(key)?.is_none() {
        return Err(ApiError::unauthorized("invalid API key"));
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return Ok(rejection.into_response()),
    };
    let route = api.manager.route(&id, AGENT_PORT)?;
    let record = api.manager.get(&id)?;
    let mut agent = AgentClient::new(route.addr);
    if let Some(token) = &record.envd_access_token {
        agent.use_token(token);
    }
    let size = terminal_size(params.cols, params.rows);
    let ended = route.ended;
    let stopping = api.stopping.clone();
    Ok(upgrade
        .protocols([TERMINAL_PROTOCOL])
        .on_upgrade(move |socket| async move {
            bridge(socket, agent, &id, size, ended, stopping).await;
        }))
}

/// Runs the shell and carries bytes between it and `socket` until either
/// ends, the sandbox goes out of service or the server stops; the shell is
/// killed then.
async fn bridge(
    socket: WebSocket,
    agent: AgentClient,
    id: &str,
    (cols, rows): (u32, u32),
    ended: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let (mut to_page, mut from_page) = socket.split();
    let tag = match hearth_node::random_hex::<8>() {
        Ok(hex) => format!("dashboard-terminal-{hex}"),
        Err(e) => {
            let _ = to_page
                .send(error_frame(&format!("no random tag: {e}")))
                .await;
            return;
        }
    };
    let request = StartRequest {
        process: Some(ProcessConfig {
            cmd: "/bin/sh".to_owned(),
            args: vec!["-c".to_owned(), SHELL_SCRIPT.to_owned()],
            envs: HashMap::from([("TERM".to_owned(), TERM.to_owned())]),
            cwd: None,
        }),
        pty: Some(Pty {
            size: Some(pty::Size { cols, rows }),
        }),
        tag: Some(tag.clone()),
        stdin: None,
    };
    let mut events = match agent.start_as(&request, Some(TERMINAL_USER)).await {
        Ok(events) => events,
        Err(e) => {
            let message = format!("cannot start a shell in sandbox {id}: {e}");
            let _ = to_page.send(error_frame(&message)).await;
            return;
        }
    };
    tracing::info!(sandbox = id, "dashboard terminal opened");

    // Input goes through one task, in order; what queues while a call is
    // in flight is sent as one.
    let (input, mut inputs) = mpsc::unbounded_channel::<Input>();
    let writer = {
        let agent = agent.clone();
        let tag = tag.clone();
        tokio::spawn(async move {
            while let Some(first) = inputs.recv().await {
                let mut pending = vec![first];
                while let Ok(next) = inputs.try_recv() {
                    pending.push(next);
                }
                for batch in coalesce(pending) {
                    let sent = match batch {
                        Input::Keys(bytes) => agent.send_pty_tagged(&tag, bytes).await,
                        Input::Resize(cols, rows) => agent.resize_tagged(&tag, cols, rows).await,
                    };
                    if let Err(e) = sent {
                        tracing::debug!("dashboard terminal input: {e}");
                    }
                }
            }
        })
    };

    let mut ended = ended;
    let server_stops = async move {
        let _ = stopping.wait_for(|stopping| *stopping).await;
    };
    tokio::pin!(server_stops);
    let mut exited = false;
    loop {
        tokio::select! {
            event = events.next() => match event {
                Ok(Some(event)) => match event.event {
                    Some(Event::Data(data)) => {
                        let bytes = match data.output {
                            Some(Output::Pty(b) | Output::Stdout(b) | Output::Stderr(b)) => b,
                            None => continue,
                        };
                        if to_page.send(Message::Binary(bytes.into())).await.is_err() {
                            break;
                        }
                    }
                    Some(Event::End(end)) => {
                        exited = true;
                        let frame = json!({ "exit": end.exit_code }).to_string();
                        let _ = to_page.send(Message::Text(frame.into())).await;
                        break;
                    }
                    Some(Event::Start(_) | Event::Keepalive(_)) | None => {}
                },
                Ok(None) => {
                    exited = true;
                    break;
                }
                Err(e) => {
                    let _ = to_page.send(error_frame(&format!("the shell's output ended: {e}"))).await;
                    break;
                }
            },
            message = from_page.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    let _ = input.send(Input::Keys(bytes.to_vec()));
                }
                Some(Ok(Message::Text(text))) => {
                    if let Some(Control::Resize { cols, rows }) = parse_control(&text) {
                        let _ = input.send(Input::Resize(cols, rows));
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
            },
            () = &mut server_stops => {
                let _ = to_page.send(error_frame("the server is stopping")).await;
                break;
            }
            () = &mut ended => {
                let _ = to_page.send(error_frame(&format!("sandbox {id} paused or stopped"))).await;
                exited = true;
                break;
            }
        }
    }
    drop(input);
    writer.abort();
    if !exited && let Err(e) = agent.signal_tagged(&tag, SIGKILL).await {
        tracing::debug!("killing the dashboard terminal's shell: {e}");
    }
    let _ = to_page.send(Message::Close(None)).await;
    tracing::info!(sandbox = id, "dashboard terminal closed");
}

fn error_frame(message: &str) -> Message {
    Message::Text(json!({ "error": message }).to_string().into())
}

/// One input for the shell.
#[derive(Debug, PartialEq, Eq)]
enum Input {
    Keys(Vec<u8>),
    Resize(u32, u32),
}

/// `inputs` with runs of keystrokes joined and runs of resizes cut to the
/// last, in order.
fn coalesce(inputs: Vec<Input>) -> Vec<Input> {
    let mut out: Vec<Input> = Vec::with_capacity(inputs.len());
    for input in inputs {
        match (out.last_mut(), input) {
            (Some(Input::Keys(keys)), Input::Keys(more)) => keys.extend(more),
            (Some(last @ Input::Resize(..)), resize @ Input::Resize(..)) => *last = resize,
            (_, input) => out.push(input),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn the_key_is_the_key_protocol_among_those_offered() {
        let headers = offered(&["hearth-terminal, key.e2b_0123abcd"]);
        assert_eq!(key_from_protocols(&headers), Some("e2b_0123abcd"));
        let headers = offered(&["key.e2b_1", "hearth-terminal"]);
        assert_eq!(key_from_protocols(&headers), Some("e2b_1"));
        let headers = offered(&["hearth-terminal,key.e2b_2"]);
        assert_eq!(key_from_protocols(&headers), Some("e2b_2"));
    }

    #[test]
    fn no_key_protocol_is_no_key() {
        assert_eq!(key_from_protocols(&HeaderMap::new()), None);
        assert_eq!(key_from_protocols(&offered(&["hearth-terminal"])), None);
        assert_eq!(
            key_from_protocols(&offered(&["hearth-terminal, key."])),
            None
        );
        assert_eq!(key_from_protocols(&offered(&["keyed.e2b_3"])), None);
    }

    #[test]
    fn resize_frames_are_parsed_and_bounded() {
        assert_eq!(
            parse_control(r#"{"resize":[120,40]}"#),
            Some(Control::Resize {
                cols: 120,
                rows: 40
            })
        );
        assert_eq!(
            parse_control(r#"{"resize":[0,100000]}"#),
            Some(Control::Resize {
                cols: 1,
                rows: MAX_SIZE
            })
        );
        assert_eq!(parse_control(r#"{"resize":[-1,2]}"#), None);
        assert_eq!(parse_control(r#"{"other":1}"#), None);
        assert_eq!(parse_control("resize"), None);
    }

    #[test]
    fn sizes_default_and_stay_in_bounds() {
        assert_eq!(terminal_size(None, None), DEFAULT_SIZE);
        assert_eq!(terminal_size(Some(0), Some(5000)), (1, MAX_SIZE));
    }

    #[test]
    fn inputs_coalesce_in_order() {
        let inputs = vec![
            Input::Keys(b"ec".to_vec()),
            Input::Keys(b"ho".to_vec()),
            Input::Resize(80, 24),
            Input::Resize(100, 30),
            Input::Keys(b"\r".to_vec()),
        ];
        assert_eq!(
            coalesce(inputs),
            vec![
                Input::Keys(b"echo".to_vec()),
                Input::Resize(100, 30),
                Input::Keys(b"\r".to_vec()),
            ]
        );
    }
}
