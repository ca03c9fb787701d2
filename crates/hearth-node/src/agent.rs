//! Host-side client of the guest agent (envd-compatible, port 49983).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use http_body_util::{BodyDataStream, BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use prost::Message;
use tokio::net::TcpStream;

use hearth_proto::agent::InitRequest;
use hearth_proto::connect::{self, ConnectError, EnvelopeDecoder};
use hearth_proto::process::process_event::Event;
use hearth_proto::process::process_input::Input;
use hearth_proto::process::process_selector::Selector;
use hearth_proto::process::{
    ConnectRequest, ProcessConfig, ProcessEvent, ProcessInput, ProcessSelector, Pty,
    SendInputRequest, SendSignalRequest, StartRequest, StartResponse, UpdateRequest, pty,
};

/// Largest process event accepted from the agent (it sends chunks of at
/// most tens of KiB).
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// Errors talking to the guest agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot reach the guest agent at {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP error talking to the guest agent")]
    Http(#[from] hyper::Error),
    #[error("the guest agent answered {status} to {path}: {body}")]
    Status {
        path: &'static str,
        status: StatusCode,
        body: String,
    },
    #[error("{}", .0.message)]
    Rpc(ConnectError),
    #[error("the guest agent sent a malformed message: {0}")]
    Protocol(String),
    #[error("the connection to the guest agent closed before the process ended")]
    Truncated,
}

/// Talks to one guest agent.
#[derive(Debug, Clone)]
pub struct AgentClient {
    addr: SocketAddr,
    /// Sent with every request: the access token once one is set.
    headers: hyper::HeaderMap,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl AgentClient {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            headers: hyper::HeaderMap::new(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends `token` in `X-Access-Token` from now on: the host's own
    /// requests to an agent that has one (stopping a service, a
    /// filesystem-only pause) need it as the SDKs' do.
    pub fn use_token(&mut self, token: &str) {
        if let Ok(value) = hyper::header::HeaderValue::from_str(token) {
            self.headers.insert("x-access-token", value);
        }
    }

    async fn connect(&self, timeout: Duration) -> Result<Sender, AgentError> {
        let addr = self.addr;
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(result) => result.map_err(|source| AgentError::Connect { addr, source })?,
            Err(_) => {
                return Err(AgentError::Connect {
                    addr,
                    source: std::io::ErrorKind::TimedOut.into(),
                });
            }
        };
        stream
            .set_nodelay(true)
            .map_err(|source| AgentError::Connect { addr, source })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("agent connection ended: {e}");
            }
        });
        Ok(sender)
    }

    fn request(&self, path: &str, content_type: &str, body: Bytes) -> Request<Full<Bytes>> {
        let mut request = Request::post(path)
            .header(hyper::header::HOST, self.addr.to_string())
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(body))
            .expect("static request parts are valid");
        request.headers_mut().extend(self.headers.clone());
        request
    }

    /// One health probe: `Ok(true)` when the agent answers `GET /health`.
    pub async fn health(&self, timeout: Duration) -> bool {
        let probe = async {
            let mut sender = self.connect(timeout).await.ok()?;
            let req = Request::get("/health")
                .header(hyper::header::HOST, self.addr.to_string())
                .body(Full::new(Bytes::new()))
                .ok()?;
            let resp = sender.send_request(req).await.ok()?;
            Some(resp.status().is_success())
        };
        tokio::time::timeout(timeout, probe)
            .await
            .ok()
            .flatten()
            .unwrap_or(false)
    }

    /// `GET path` as JSON, with `token` in `X-Access-Token` when given
    /// (`/metrics`, `/envs`).
    pub async fn get_json(
        &self,
        path: &'static str,
        token: Option<&str>,
    ) -> Result<serde_json::Value, AgentError> {
        let mut sender = self.connect(Duration::from_secs(5)).await?;
        let mut request = Request::get(path)
            .header(hyper::header::HOST, self.addr.to_string())
            .body(Full::new(Bytes::new()))
            .expect("static request parts are valid");
        if let Some(value) = token.and_then(|t| hyper::header::HeaderValue::from_str(t).ok()) {
            request.headers_mut().insert("x-access-token", value);
        }
        let resp = sender.send_request(request).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Err(AgentError::Status {
                path,
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| AgentError::Protocol(e.to_string()))
    }

    /// `POST /init`: clock, default environment and user of the guest. An
    /// agent that has a token already (a resumed sandbox) wants it again in
    /// `X-Access-Token`: the token of `init` is sent there too.
    pub async fn init(&self, init: &InitRequest) -> Result<(), AgentError> {
        self.init_as(init, init.access_token.as_deref()).await
    }

    /// [`AgentClient::init`] authorised by `token`, the one the agent holds
    /// now, when it is not the one `init` sets.
    pub async fn init_as(&self, init: &InitRequest, token: Option<&str>) -> Result<(), AgentError> {
        let mut sender = self.connect(Duration::from_secs(5)).await?;
        let body = serde_json::to_vec(init).expect("init request serialises");
        let mut request = self.request("/init", "application/json", body.into());
        if let Some(token) = token
            && let Ok(value) = hyper::header::HeaderValue::from_str(token)
        {
            request.headers_mut().insert("x-access-token", value);
        }
        let resp = sender.send_request(request).await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.into_body().collect().await?.to_bytes();
            return Err(AgentError::Status {
                path: "/init",
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Ok(())
    }

    /// `POST /files?path=PATH` with `body` as the file's contents, written
    /// as `user`.
    pub async fn upload(&self, path: &str, user: &str, body: Bytes) -> Result<(), AgentError> {
        let mut sender = self.connect(Duration::from_secs(5)).await?;
        let query = format!(
            "/files?path={}&username={}",
            query_escape(path),
            query_escape(user)
        );
        let resp = sender
            .send_request(self.request(&query, "application/octet-stream", body))
            .await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.into_body().collect().await?.to_bytes();
            return Err(AgentError::Status {
                path: "/files",
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Ok(())
    }

    /// Runs `cmd` with `args` as the default user, output discarded, and
    /// returns its exit code.
    pub async fn run(&self, cmd: &str, args: &[&str]) -> Result<i32, AgentError> {
        let request = StartRequest {
            process: Some(ProcessConfig {
                cmd: cmd.to_owned(),
                args: args.iter().map(|a| (*a).to_owned()).collect(),
                ..ProcessConfig::default()
            }),
            stdin: Some(false),
            ..StartRequest::default()
        };
        let mut stream = self.start(&request).await?;
        while let Some(event) = stream.next().await? {
            if let Some(Event::End(end)) = event.event {
                return Ok(end.exit_code);
            }
        }
        Err(AgentError::Truncated)
    }

    /// `process.Process/Start`: starts a process and streams its events.
    pub async fn start(&self, request: &StartRequest) -> Result<ProcessStream, AgentError> {
        self.start_as(request, None).await
    }

    /// [`AgentClient::start`] as `user` (else the agent's default user).
    pub async fn start_as(
        &self,
        request: &StartRequest,
        user: Option<&str>,
    ) -> Result<ProcessStream, AgentError> {
        self.stream("/process.Process/Start", &request.encode_to_vec(), user)
            .await
    }

    /// `process.Process/Connect` to the process tagged `tag`: its events
    /// from now on. A process that is not running is an
    /// [`AgentError::Rpc`] with code `not_found`.
    pub async fn connect_tagged(&self, tag: &str) -> Result<ProcessStream, AgentError> {
        let request = ConnectRequest {
            process: Some(tagged(tag)),
        };
        self.stream("/process.Process/Connect", &request.encode_to_vec(), None)
            .await
    }

    /// `process.Process/SendSignal`: Linux signal number `signal` to the
    /// process group of the process tagged `tag`.
    pub async fn signal_tagged(&self, tag: &str, signal: i32) -> Result<(), AgentError> {
        let request = SendSignalRequest {
            process: Some(tagged(tag)),
            signal,
        };
        self.unary("/process.Process/SendSignal", request.encode_to_vec())
            .await
    }

    /// `process.Process/SendInput`: `data` typed into the terminal of the
    /// process tagged `tag` (started with `pty`).
    pub async fn send_pty_tagged(&self, tag: &str, data: Vec<u8>) -> Result<(), AgentError> {
        let request = SendInputRequest {
            process: Some(tagged(tag)),
            input: Some(ProcessInput {
                input: Some(Input::Pty(data)),
            }),
        };
        self.unary("/process.Process/SendInput", request.encode_to_vec())
            .await
    }

    /// `process.Process/Update`: the terminal of the process tagged `tag`
    /// resized to `cols` × `rows`.
    pub async fn resize_tagged(&self, tag: &str, cols: u32, rows: u32) -> Result<(), AgentError> {
        let request = UpdateRequest {
            process: Some(tagged(tag)),
            pty: Some(Pty {
                size: Some(pty::Size { cols, rows }),
            }),
        };
        self.unary("/process.Process/Update", request.encode_to_vec())
            .await
    }

    /// A unary call in binary protobuf whose answer is an empty message.
    async fn unary(&self, path: &'static str, message: Vec<u8>) -> Result<(), AgentError> {
        let mut sender = self.connect(Duration::from_secs(5)).await?;
        let http = self.request(path, connect::CONTENT_TYPE_PROTO, Bytes::from(message));
        let resp = sender.send_request(http).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if status.is_success() {
            Ok(())
        } else {
            Err(AgentError::Rpc(ConnectError::from_unary_response(
                status.as_u16(),
                &body,
            )))
        }
    }

    /// A server-streaming call whose messages hold one process event each.
    async fn stream(
        &self,
        path: &str,
        message: &[u8],
        user: Option<&str>,
    ) -> Result<ProcessStream, AgentError> {
        let mut sender = self.connect(Duration::from_secs(5)).await?;
        let body = connect::envelope(0, message);
        let mut http = self.request(path, connect::CONTENT_TYPE_CONNECT_PROTO, body);
        if let Some(user) = user {
            http.headers_mut()
                .insert(hyper::header::AUTHORIZATION, basic(user)?);
        }
        let resp = sender.send_request(http).await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.into_body().collect().await?.to_bytes();
            return Err(AgentError::Rpc(ConnectError::from_unary_response(
                status.as_u16(),
                &body,
            )));
        }
        // The chunks own the sender, which keeps the connection open
        // while the body streams.
        let chunks = BodyDataStream::new(resp.into_body()).map(move |chunk| {
            let _connection = &sender;
            chunk.map_err(AgentError::Http)
        });
        Ok(ProcessStream::from_chunks(chunks))
    }
}

fn tagged(tag: &str) -> ProcessSelector {
    ProcessSelector {
        selector: Some(Selector::Tag(tag.to_owned())),
    }
}

/// `s` with everything but unreserved characters percent-encoded.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `Authorization: Basic base64("<user>:")`, how envd is told the user.
fn basic(user: &str) -> Result<hyper::header::HeaderValue, AgentError> {
    let value = format!(
        "Basic {}",
        connect::base64_encode(format!("{user}:").as_bytes())
    );
    hyper::header::HeaderValue::from_str(&value)
        .map_err(|_| AgentError::Protocol(format!("'{user}' cannot be a user name")))
}

/// The events of one started process, in order.
pub struct ProcessStream {
    chunks: BoxStream<'static, Result<Bytes, AgentError>>,
    decoder: EnvelopeDecoder,
}

impl ProcessStream {
    /// The events of a `process.Process/Start` or `Connect` response body
    /// in binary protobuf (`application/connect+proto`) that arrives as
    /// `chunks`, however it is carried; an error in them ends the stream.
    pub fn from_chunks(
        chunks: impl Stream<Item = Result<Bytes, AgentError>> + Send + 'static,
    ) -> Self {
        Self {
            chunks: chunks.boxed(),
            decoder: EnvelopeDecoder::new(MAX_EVENT_BYTES),
        }
    }

    /// The next event; `Ok(None)` after the end of the stream.
    pub async fn next(&mut self) -> Result<Option<ProcessEvent>, AgentError> {
        loop {
            if let Some(envelope) = self.decoder.next().map_err(AgentError::Rpc)? {
                if envelope.is_end_stream() {
                    return match connect::parse_end_stream(&envelope.payload) {
                        Ok(()) => Ok(None),
                        Err(err) => Err(AgentError::Rpc(err)),
                    };
                }
                // `StartResponse` and `ConnectResponse` are one event each,
                // field 1: one decoder reads both.
                let response = StartResponse::decode(envelope.payload)
                    .map_err(|e| AgentError::Protocol(e.to_string()))?;
                match response.event {
                    Some(event) => return Ok(Some(event)),
                    None => continue,
                }
            }
            match self.chunks.next().await {
                Some(chunk) => self.decoder.push(&chunk?),
                None => return Err(AgentError::Truncated),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// One request a fake agent received: its head and body.
    struct Received {
        head: String,
        body: Vec<u8>,
    }

    /// A fake agent that answers one request with `status` and `body`,
    /// and hands back what it received.
    async fn fake_agent(
        status: &'static str,
        body: &'static str,
    ) -> (SocketAddr, tokio::task::JoinHandle<Received>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut bytes = Vec::new();
            let mut buf = [0; 4096];
            let (head, length) = loop {
                let n = stream.read(&mut buf).await.unwrap();
                bytes.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&bytes).into_owned();
                if let Some(end) = text.find("\r\n\r\n") {
                    let head = text[..end].to_owned();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(str::to_owned)
                        })
                        .map_or(0, |v| v.trim().parse().unwrap());
                    bytes.drain(..end + 4);
                    break (head, length);
                }
            };
            while bytes.len() < length {
                let n = stream.read(&mut buf).await.unwrap();
                bytes.extend_from_slice(&buf[..n]);
            }
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(answer.as_bytes()).await.unwrap();
            Received { head, body: bytes }
        });
        (addr, served)
    }

    #[tokio::test]
    async fn terminal_input_is_sent_to_the_tagged_process_with_the_token() {
        let (addr, served) = fake_agent("200 OK", "").await;
        let mut agent = AgentClient::new(addr);
        agent.use_token("secret");
        agent
            .send_pty_tagged("term-1", b"ls\r".to_vec())
            .await
            .unwrap();
        let received = served.await.unwrap();
        assert!(
            received
                .head
                .starts_with("POST /process.Process/SendInput ")
        );
        assert!(received.head.contains("x-access-token: secret"));
        let request = SendInputRequest::decode(received.body.as_slice()).unwrap();
        assert_eq!(request.process, Some(tagged("term-1")));
        let input = request.input.and_then(|i| i.input);
        assert_eq!(input, Some(Input::Pty(b"ls\r".to_vec())));
    }

    #[tokio::test]
    async fn a_resize_updates_the_tagged_process_terminal() {
        let (addr, served) = fake_agent("200 OK", "").await;
        AgentClient::new(addr)
            .resize_tagged("term-1", 120, 40)
            .await
            .unwrap();
        let received = served.await.unwrap();
        assert!(received.head.starts_with("POST /process.Process/Update "));
        let request = UpdateRequest::decode(received.body.as_slice()).unwrap();
        assert_eq!(request.process, Some(tagged("term-1")));
        let size = request.pty.and_then(|p| p.size).unwrap();
        assert_eq!((size.cols, size.rows), (120, 40));
    }

    #[tokio::test]
    async fn a_refused_input_is_the_agent_error() {
        let (addr, _served) = fake_agent(
            "404 Not Found",
            r#"{"code":"not_found","message":"no process tagged term-2"}"#,
        )
        .await;
        let err = AgentClient::new(addr)
            .send_pty_tagged("term-2", b"x".to_vec())
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "no process tagged term-2");
    }
}
