//! Shared by the agent integration tests. Each test binary compiles this
//! module on its own and uses a part of it.
#![allow(dead_code)]

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use hearth_proto::connect::{EnvelopeDecoder, base64_decode, envelope};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// `hearth-init agent` on a free localhost port, killed on drop.
pub struct Agent {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Agent {
    pub fn start() -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hearth-init"))
            .args(["agent", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start hearth-init agent");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .expect(&line)
            .parse()
            .unwrap();
        Agent { child, addr }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request to the agent; the response body is left to read.
pub async fn request<B>(
    agent: &Agent,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: B,
) -> hyper::Response<Incoming>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(agent.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = builder(method, path, headers).header("host", agent.addr.to_string());
    sender
        .send_request(request.body(body).unwrap())
        .await
        .unwrap()
}

fn builder(method: &str, uri: &str, headers: &[(&str, &str)]) -> hyper::http::request::Builder {
    let mut request = hyper::Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
}

/// A POST with a body in memory; the response body is left to read.
pub async fn post(
    agent: &Agent,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> hyper::Response<Incoming> {
    let body = Full::new(Bytes::from(body));
    request(agent, "POST", path, headers, body).await
}

/// One HTTP/1.1 request to the agent: status, headers and the whole body.
pub async fn send(
    agent: &Agent,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, hyper::HeaderMap, Bytes) {
    let body = Full::new(Bytes::from(body));
    let response = request(agent, method, path, headers, body).await;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

/// A request body for [`H2`] and streamed requests.
pub type Body = BoxBody<Bytes, Infallible>;

/// One HTTP/2 connection to the agent with prior knowledge (h2c); each
/// request is a stream of it, and several may be open at once.
pub struct H2 {
    sender: hyper::client::conn::http2::SendRequest<Body>,
    addr: SocketAddr,
}

impl H2 {
    pub async fn connect(agent: &Agent) -> H2 {
        let stream = tokio::net::TcpStream::connect(agent.addr).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        H2 {
            sender,
            addr: agent.addr,
        }
    }

    /// One request on a new stream; the response body is left to read.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> hyper::Response<Incoming> {
        let uri = format!("http://{}{path}", self.addr);
        let request = builder(method, &uri, headers).body(body).unwrap();
        let response = self.sender.clone().send_request(request).await.unwrap();
        assert_eq!(response.version(), Version::HTTP_2);
        response
    }
}

/// Headers the Python SDK sends on every stream (`e2b_connect`).
pub const SDK_STREAM_HEADERS: [(&str, &str); 4] = [
    ("content-type", "application/connect+json"),
    ("connect-protocol-version", "1"),
    ("connect-content-encoding", "identity"),
    ("user-agent", "connect-python"),
];

/// A response stream of Connect JSON envelopes.
pub struct Events {
    body: Incoming,
    decoder: EnvelopeDecoder,
    /// The end-stream message, once read.
    pub end: Option<Value>,
}

impl Events {
    /// Calls the server-streaming `process.Process/{method}` over HTTP/1.1.
    pub async fn open(
        agent: &Agent,
        method: &str,
        message: Value,
        extra: &[(&str, &str)],
    ) -> Events {
        let mut headers = SDK_STREAM_HEADERS.to_vec();
        headers.extend_from_slice(extra);
        let path = format!("/process.Process/{method}");
        let body = Full::new(json_envelope(&message)).boxed();
        Events::new(request(agent, "POST", &path, &headers, body).await)
    }

    /// Reads the stream that `response` opens.
    pub fn new(response: hyper::Response<Incoming>) -> Events {
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"],
            "application/connect+json"
        );
        Events {
            body: response.into_body(),
            decoder: EnvelopeDecoder::new(1 << 20),
            end: None,
        }
    }

    /// The next message's `event`, `None` after the end-stream message.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(env) = self.decoder.next().unwrap() {
                let value: Value = serde_json::from_slice(&env.payload).unwrap();
                if env.is_end_stream() {
                    self.end = Some(value);
                    return None;
                }
                return Some(value["event"].clone());
            }
            let frame = timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("no event within 10 s")
                .expect("stream ended without end-stream");
            if let Ok(data) = frame.unwrap().into_data() {
                self.decoder.push(&data);
            }
        }
    }

    /// The pid of the start event, which must come first.
    pub async fn start(&mut self) -> u32 {
        let event = self.next().await.unwrap();
        let pid = event["start"]["pid"].as_u64().expect("start event first");
        u32::try_from(pid).unwrap()
    }

    /// Collects output of `kind` (stdout, stderr, pty) until it contains
    /// `needle`; returns all of it.
    pub async fn output_until(&mut self, kind: &str, needle: &str) -> String {
        let mut out = Vec::new();
        while !String::from_utf8_lossy(&out).contains(needle) {
            let event = self.next().await.expect("ended before the output came");
            if let Some(data) = event["data"][kind].as_str() {
                out.extend(base64_decode(data).unwrap());
            }
        }
        String::from_utf8(out).unwrap()
    }

    /// Reads to the end: (the end event, every event before it).
    pub async fn finish(&mut self) -> (Value, Vec<Value>) {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        assert_eq!(self.end, Some(json!({})), "stream failed");
        let end = events.pop().expect("no events");
        (end["end"].clone(), events)
    }
}

/// The output of `kind` (stdout, stderr, pty) in `events`, decoded.
pub fn output(events: &[Value], kind: &str) -> String {
    let bytes: Vec<u8> = events
        .iter()
        .filter_map(|e| e["data"][kind].as_str())
        .flat_map(|b| base64_decode(b).unwrap())
        .collect();
    String::from_utf8(bytes).unwrap()
}

/// A request body fed envelope by envelope, as a client stream.
pub fn streamed_body() -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|data| (Ok::<_, Infallible>(Frame::data(data)), rx))
    });
    (tx, StreamBody::new(frames).boxed())
}

pub fn json_envelope(value: &Value) -> Bytes {
    envelope(0, value.to_string().as_bytes())
}
