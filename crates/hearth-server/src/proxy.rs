//! The sandbox proxy, on the API's port: a request carrying
//! `E2b-Sandbox-Id` + `E2b-Sandbox-Port` (what the SDKs send to
//! `E2B_SANDBOX_URL`), or addressed to host `<port>-<sandboxID>.<domain>`,
//! goes to that port of that sandbox. Bodies stream both ways; upgrades
//! (WebSocket) are spliced. The agent's internal routes are refused.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Body as HttpBody, Bytes, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::api::Api;
use crate::error::ApiError;
use crate::manager::{Manager, Route};
use crate::metrics::DirectionLabel;
use hearth_proto::signature::{Operation, SignedUrl};

const SANDBOX_ID_HEADER: &str = "e2b-sandbox-id";
const SANDBOX_PORT_HEADER: &str = "e2b-sandbox-port";
const AGENT_PORT: u16 = hearth_proto::agent::AGENT_PORT;
/// Agent routes only the node may call.
const INTERNAL_ROUTES: &[&str] = &["/init"];

/// Where a request should go, if it is for a sandbox.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) sandbox: String,
    port: u16,
}

pub(crate) fn target(request: &Request, domain: Option<&str>) -> Result<Option<Target>, ApiError> {
    let headers = request.headers();
    if let Some(id) = headers.get(SANDBOX_ID_HEADER) {
        let sandbox = id
            .to_str()
            .map_err(|_| ApiError::bad_request("E2b-Sandbox-Id is not text"))?
            .to_owned();
        let port = match headers.get(SANDBOX_PORT_HEADER) {
            None => AGENT_PORT,
            Some(port) => port
                .to_str()
                .ok()
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| ApiError::bad_request("E2b-Sandbox-Port is not a port number"))?,
        };
        return Ok(Some(Target { sandbox, port }));
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().host());
    Ok(host.and_then(|host| target_from_host(host, domain?)))
}

/// `<port>-<sandboxID>.<domain>[:<listen port>]`.
fn target_from_host(host: &str, domain: &str) -> Option<Target> {
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let label = host.strip_suffix(domain)?.strip_suffix('.')?;
    let (port, sandbox) = label.split_once('-')?;
    let port = port.parse().ok()?;
    (!sandbox.is_empty() && sandbox.bytes().all(|b| b.is_ascii_alphanumeric())).then(|| Target {
        sandbox: sandbox.to_owned(),
        port,
    })
}

/// The query of a `/files` URL.
#[derive(Debug, Default, serde::Deserialize)]
struct FilesQuery {
    path: Option<String>,
    username: Option<String>,
    signature: Option<String>,
    signature_expiration: Option<i64>,
}

/// A signed `/files` URL with no sandbox id (what the SDKs' `download_url`
/// and `upload_url` give when `E2B_SANDBOX_URL` points here) goes to the
/// running sandbox whose access token signed it; the agent checks it again.
/// `None` if the request is not such a URL.
fn signed_target(request: &Request, api: &Api) -> Option<Result<Target, ApiError>> {
    let operation = match *request.method() {
        Method::GET => Operation::Read,
        Method::POST => Operation::Write,
        _ => return None,
    };
    if request.uri().path() != "/files" {
        return None;
    }
    let query: FilesQuery = Query::try_from_uri(request.uri()).ok()?.0;
    query.signature.as_ref()?;
    let url = SignedUrl {
        path: query.path.as_deref().unwrap_or(""),
        user: query.username.as_deref().unwrap_or(""),
        signature: query.signature.as_deref(),
        expiration: query.signature_expiration,
    };
    let now = crate::manager::now_ms() / 1000;
    Some(
        api.manager
            .signed_by(&url, operation, now)
            .map(|sandbox| Target {
                sandbox,
                port: AGENT_PORT,
            }),
    )
}

/// Runs before the API: sandbox traffic is proxied, the rest goes on.
pub async fn route(State(api): State<Arc<Api>>, request: Request, next: Next) -> Response {
    let target = match target(&request, api.domain.as_deref()) {
        Ok(None) => signed_target(&request, &api).transpose(),
        other => other,
    };
    match target {
        Ok(Some(target)) => {
            let started = std::time::Instant::now();
            let method = request.method().as_str().to_owned();
            let http1 = request.version() <= hyper::Version::HTTP_11;
            let response = match forward(&api, target, request).await {
                Ok(response) => response,
                Err(e) => {
                    let mut response = e.into_response();
                    // The request's body may be unread: the server will not
                    // reuse the connection, and says so, or a client could
                    // send its next request into one being closed.
                    if http1 {
                        response
                            .headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    response
                }
            };
            api.manager.server_metrics().observe_request(
                "proxy".to_owned(),
                method,
                response.status().as_u16(),
                started.elapsed(),
            );
            response
        }
        Ok(None) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

async fn forward(api: &Api, target: Target, mut request: Request) -> Result<Response, ApiError> {
    if target.port == AGENT_PORT && INTERNAL_ROUTES.contains(&request.uri().path()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{} is not reachable through the proxy",
                request.uri().path()
            ),
        ));
    }
    // E2B's proxy answers 502 for a sandbox that is gone or paused, and
    // for a closed port; the SDKs tell the two apart by the message
    // ("was not found", "port is not open"): `is_running()` is false on the
    // first, and a command raises SandboxNotRunningException.
    let id = &target.sandbox;
    let mut route = api.manager.route(id, target.port);
    // A paused sandbox that asked for it (`autoResume`) is resumed, and
    // the request that woke it is answered.
    if route
        .as_ref()
        .is_err_and(|e| e.status == StatusCode::CONFLICT)
        && api.manager.auto_resume(id).await?
    {
        route = api.manager.route(id, target.port);
    }
    let route = match route {
        Ok(route) => route,
        Err(e) if matches!(e.status, StatusCode::NOT_FOUND | StatusCode::CONFLICT) => {
            let paused = if e.status == StatusCode::CONFLICT {
                ": it is paused; connect to it to resume it"
            } else {
                ""
            };
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("The sandbox {id} was not found{paused}"),
            ));
        }
        Err(e) => return Err(e),
    };
    let Route { addr, mut ended } = route;
    // A sandbox that stops meanwhile ends the request at once (its guest
    // never answers, and its address may be given to another).
    let gone = || {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("The sandbox {id} was not found: it stopped"),
        )
    };
    // The client's side of an upgrade, resolved once we answer 101.
    let client_upgrade = hyper::upgrade::on(&mut request);
    let mut response = tokio::select! {
        response = send(addr, target.port, id, &mut request) => response?,
        () = &mut ended => return Err(gone()),
    };

    splice_upgrade(client_upgrade, &mut response);
    let (parts, body) = response.into_parts();
    let body = UntilEnded::new(body, ended, Arc::clone(&api.manager));
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// Once `response` switches protocols (a WebSocket), copies bytes both
/// ways between the client's upgraded connection and the upstream one.
pub(crate) fn splice_upgrade(
    client: hyper::upgrade::OnUpgrade,
    response: &mut hyper::Response<Incoming>,
) {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let upstream = hyper::upgrade::on(response);
    tokio::spawn(async move {
        match (client.await, upstream.await) {
            (Ok(client), Ok(upstream)) => {
                let mut client = TokioIo::new(client);
                let mut upstream = TokioIo::new(upstream);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
            (Err(e), _) | (_, Err(e)) => tracing::debug!("upgrade failed: {e}"),
        }
    });
}

/// Connects to `addr` and sends it the request (whose body streams on).
async fn send(
    addr: SocketAddr,
    port: u16,
    id: &str,
    request: &mut Request,
) -> Result<hyper::Response<Incoming>, ApiError> {
    let stream = TcpStream::connect(addr).await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("The sandbox {id} is running but port is not open: port {port}: {e}"),
        )
    })?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("sandbox connection: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!("proxied connection ended: {e}");
        }
    });
    let request = std::mem::take(request);
    let (mut parts, body) = request.into_parts();
    for name in [SANDBOX_ID_HEADER, SANDBOX_PORT_HEADER] {
        parts.headers.remove(name);
    }
    if let Ok(host) = HeaderValue::from_str(&addr.to_string()) {
        parts.headers.insert(header::HOST, host);
    }
    // HTTP/1.1 upstream: an HTTP/2 request's URI carries scheme and authority.
    if let Some(path) = parts.uri.path_and_query() {
        parts.uri = path.as_str().parse().unwrap_or_default();
    }
    parts.version = hyper::Version::HTTP_11;
    let upstream = hyper::Request::from_parts(parts, body);
    sender
        .send_request(upstream)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("sandbox request: {e}")))
}

/// A sandbox's response body, cut off with an error when the sandbox goes
/// out of service, so a client streaming from it learns at once.
struct UntilEnded {
    body: Incoming,
    ended: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Where its bytes and its being open are counted.
    manager: Arc<Manager>,
}

impl UntilEnded {
    fn new(
        body: Incoming,
        ended: Pin<Box<dyn Future<Output = ()> + Send>>,
        manager: Arc<Manager>,
    ) -> Self {
        manager.server_metrics().proxy_open.inc();
        Self {
            body,
            ended,
            manager,
        }
    }
}

impl Drop for UntilEnded {
    fn drop(&mut self) {
        self.manager.server_metrics().proxy_open.dec();
    }
}

impl HttpBody for UntilEnded {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.ended.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err("the sandbox stopped".into())));
        }
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &frame
            && let Some(data) = frame.data_ref()
        {
            self.manager
                .server_metrics()
                .proxy_bytes
                .get_or_create(&DirectionLabel {
                    direction: "to_client",
                })
                .inc_by(u64::try_from(data.len()).unwrap_or(u64::MAX));
        }
        frame.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_name_a_port_and_a_sandbox() {
        let t = |port, id: &str| {
            Some(Target {
                sandbox: id.to_owned(),
                port,
            })
        };
        assert_eq!(
            target_from_host("8000-abc123.hearth.local", "hearth.local"),
            t(8000, "abc123")
        );
        assert_eq!(
            target_from_host("49983-abc123.hearth.local:3000", "hearth.local"),
            t(49983, "abc123")
        );
        assert_eq!(target_from_host("hearth.local", "hearth.local"), None);
        assert_eq!(target_from_host("x-abc.hearth.local", "hearth.local"), None);
        assert_eq!(
            target_from_host("8000-abc.other.local", "hearth.local"),
            None
        );
        assert_eq!(
            target_from_host("8000-a.b.hearth.local", "hearth.local"),
            None
        );
    }

    #[test]
    fn headers_take_precedence_and_default_to_the_agent_port() {
        let request = Request::builder()
            .uri("/files")
            .header("E2b-Sandbox-Id", "abc")
            .header(header::HOST, "8000-xyz.hearth.local")
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            target(&request, Some("hearth.local")).unwrap(),
            Some(Target {
                sandbox: "abc".into(),
                port: AGENT_PORT
            })
        );
        let request = Request::builder()
            .uri("/")
            .header("E2b-Sandbox-Id", "abc")
            .header("E2b-Sandbox-Port", "http")
            .body(Body::empty())
            .unwrap();
        assert!(target(&request, None).is_err());
        let request = Request::builder()
            .uri("/sandboxes")
            .body(Body::empty())
            .unwrap();
        assert_eq!(target(&request, None).unwrap(), None);
    }
}
