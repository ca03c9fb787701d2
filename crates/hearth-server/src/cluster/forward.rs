//! Requests to nodes. A request goes on as it came: method, path, headers
//! (the host name among them, which the node's proxy routes by), a body
//! that streams both ways; plus the cluster secret.
//!
//! Each node gets one HTTP/2 connection (cleartext, prior knowledge),
//! shared by every request to it and made again when it closes. A request
//! to upgrade (a WebSocket) goes over a connection of its own in HTTP/1.1,
//! which can splice one.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::{SECRET_HEADER, Secret};
use crate::error::ApiError;

/// How often an idle connection to a node is pinged, and how long the
/// answer may take.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// The HTTP/2 connections to the nodes, by address.
#[derive(Default)]
pub struct NodeConnections {
    open: Mutex<HashMap<String, http2::SendRequest<Body>>>,
}

impl NodeConnections {
    /// The open connection to `address`, or a new one.
    async fn to(&self, address: &str) -> Result<http2::SendRequest<Body>, ApiError> {
        let open = |c: &http2::SendRequest<Body>| !c.is_closed();
        if let Some(sender) = self.lock().get(address).filter(|c| open(c)) {
            return Ok(sender.clone());
        }
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| unreachable(address, &e))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // A node that stops answering (a partition) ends its connection
            // within seconds, and the next request makes a new one.
            .keep_alive_interval(KEEP_ALIVE)
            .keep_alive_timeout(KEEP_ALIVE)
            .keep_alive_while_idle(true)
            // Large transfers (a template's files) fill the link.
            .adaptive_window(true)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(address, &e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection to a node ended: {e}");
            }
        });
        self.lock().insert(address.to_owned(), sender.clone());
        Ok(sender)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, http2::SendRequest<Body>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `GET path` of the node API at `address`, with the cluster secret.
    pub async fn get(
        &self,
        address: &str,
        secret: &Secret,
        path: &str,
    ) -> Result<hyper::Response<Incoming>, ApiError> {
        let request = hyper::Request::get(path)
            .body(Body::empty())
            .map_err(|e| ApiError::internal(format!("a request to a node: {e}")))?;
        self.send(address, secret, request).await
    }

    /// Sends `request` to the node API at `address` (`host:port`) and
    /// returns its answer, streaming.
    pub async fn to_node(
        &self,
        address: &str,
        secret: &Secret,
        request: Request,
    ) -> Result<Response, ApiError> {
        if request.headers().contains_key(header::UPGRADE) {
            return upgrade_to_node(address, secret, request).await;
        }
        let response = self.send(address, secret, request).await?;
        let (parts, body) = response.into_parts();
        Ok(Response::from_parts(parts, Body::new(body)))
    }

    async fn send(
        &self,
        address: &str,
        secret: &Secret,
        request: Request,
    ) -> Result<hyper::Response<Incoming>, ApiError> {
        let (mut parts, body) = request.into_parts();
        parts.headers.insert(SECRET_HEADER, secret_value(secret)?);
        keep_host(&mut parts);
        // HTTP/2 wants an authority in the URI: the node's address. The
        // node routes by the `Host` header.
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = format!("http://{address}{path}")
            .parse()
            .map_err(|e| ApiError::bad_request(format!("the request's path: {e}")))?;
        parts.version = hyper::Version::HTTP_2;
        let mut sender = self.to(address).await?;
        sender
            .send_request(hyper::Request::from_parts(parts, body))
            .await
            .map_err(|e| unreachable(address, &e))
    }
}

fn unreachable(address: &str, e: &dyn std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        format!("the node at {address} is unreachable: {e}"),
    )
}

fn secret_value(secret: &Secret) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(secret.as_str()).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the cluster secret is not a valid header value",
        )
    })
}

/// Keeps the host name a client asked for in the `Host` header: a request
/// that came over HTTP/2 carries it in its URI's authority instead.
fn keep_host(parts: &mut axum::http::request::Parts) {
    if parts.headers.get(header::HOST).is_none()
        && let Some(host) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        parts.headers.insert(header::HOST, host);
    }
}

/// A request to upgrade, over an HTTP/1.1 connection of its own; the
/// upgraded connection is spliced to the client's.
async fn upgrade_to_node(
    address: &str,
    secret: &Secret,
    mut request: Request,
) -> Result<Response, ApiError> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| unreachable(address, &e))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(address, &e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!("connection to a node ended: {e}");
        }
    });
    let client_upgrade = hyper::upgrade::on(&mut request);
    let (mut parts, body) = request.into_parts();
    parts.headers.insert(SECRET_HEADER, secret_value(secret)?);
    keep_host(&mut parts);
    if let Some(path) = parts.uri.path_and_query() {
        parts.uri = path.as_str().parse().unwrap_or_default();
    }
    parts.version = hyper::Version::HTTP_11;
    let mut response = sender
        .send_request(hyper::Request::from_parts(parts, body))
        .await
        .map_err(|e| unreachable(address, &e))?;
    crate::proxy::splice_upgrade(client_upgrade, &mut response);
    let (parts, body) = response.into_parts();
    Ok(Response::from_parts(parts, Body::new(body)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use hyper::service::service_fn;

    use super::*;

    /// A node API stand-in: answers each request with its HTTP version,
    /// host, path and cluster secret; counts the connections it accepts.
    async fn echo_node() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let echo = service_fn(|request: hyper::Request<Incoming>| async move {
                    let header = |name: &str| {
                        request
                            .headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_owned()
                    };
                    let text = format!(
                        "{:?} {} {} {}",
                        request.version(),
                        header("host"),
                        request.uri().path(),
                        header(SECRET_HEADER)
                    );
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(text))
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), echo),
                );
            }
        });
        (address, accepted)
    }

    async fn text(response: Response) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn requests_to_a_node_share_one_http2_connection_and_keep_their_host() {
        let (address, accepted) = echo_node().await;
        let connections = NodeConnections::default();
        let secret = Secret::new("0123456789abcdef".into()).unwrap();
        let ask = |uri: &str, host: Option<&str>| {
            let mut request = Request::builder().uri(uri);
            if let Some(host) = host {
                request = request.header(header::HOST, host);
            }
            let request = request.body(Body::empty()).unwrap();
            let (connections, address, secret) = (&connections, &address, &secret);
            async move { text(connections.to_node(address, secret, request).await.unwrap()).await }
        };
        for path in ["/one", "/two?x=1", "/three"] {
            let answer = ask(path, Some("49983-abc.hearth.test")).await;
            let path = path.split('?').next().unwrap();
            assert_eq!(
                answer,
                format!("HTTP/2.0 49983-abc.hearth.test {path} 0123456789abcdef")
            );
        }
        // A request that came over HTTP/2 names its host in its URI.
        assert_eq!(
            ask("http://8000-xyz.hearth.test/app", None).await,
            "HTTP/2.0 8000-xyz.hearth.test /app 0123456789abcdef"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for all");
    }
}
