//! A request sent on to a node as it came: method, path, headers (the
//! host name among them, which the node's proxy routes by), a body that
//! streams both ways, an upgrade spliced; plus the cluster secret.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{SECRET_HEADER, Secret};
use crate::error::ApiError;

/// An HTTP/1.1 connection to the node API at `address` (`host:port`).
async fn connect(address: &str) -> Result<SendRequest<Body>, String> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!("connection to a node ended: {e}");
        }
    });
    Ok(sender)
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

/// `GET path` of the node API at `address`, with the cluster secret.
pub(super) async fn get(
    address: &str,
    secret: &Secret,
    path: &str,
) -> Result<hyper::Response<Incoming>, ApiError> {
    let mut sender = connect(address)
        .await
        .map_err(|e| unreachable(address, &e))?;
    let request = hyper::Request::get(path)
        .header(axum::http::header::HOST, address)
        .header(SECRET_HEADER, secret_value(secret)?)
        .body(Body::empty())
        .map_err(|e| ApiError::internal(format!("a request to a node: {e}")))?;
    sender
        .send_request(request)
        .await
        .map_err(|e| unreachable(address, &e))
}

/// Sends `request` to the node API at `address` (`host:port`).
pub(super) async fn to_node(
    address: &str,
    secret: &Secret,
    mut request: Request,
) -> Result<Response, ApiError> {
    let mut sender = connect(address)
        .await
        .map_err(|e| unreachable(address, &e))?;
    let client_upgrade = hyper::upgrade::on(&mut request);
    let (mut parts, body) = request.into_parts();
    parts.headers.insert(SECRET_HEADER, secret_value(secret)?);
    // HTTP/1.1 to the node: an HTTP/2 request's URI carries scheme and
    // authority, which go into the Host header instead.
    if parts.headers.get(axum::http::header::HOST).is_none()
        && let Some(host) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        parts.headers.insert(axum::http::header::HOST, host);
    }
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
