//! The agent in agent-only mode, driven over real HTTP with Connect and
//! protobuf, as the SDK would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use hearth_proto::connect::{
    CONTENT_TYPE_CONNECT_PROTO, CONTENT_TYPE_PROTO, Code, ConnectError, EnvelopeDecoder, envelope,
    parse_end_stream,
};
use hearth_proto::process::process_event::{EndEvent, Event, data_event::Output};
use hearth_proto::process::{
    CloseStdinRequest, ListRequest, ListResponse, ProcessConfig, ProcessInput, ProcessSelector,
    SendInputRequest, SendSignalRequest, Signal, StartRequest, StartResponse, process_input,
    process_selector,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use prost::Message;

mod support;
use support::{Agent, post};

async fn unary<Req: Message, Resp: Message + Default>(
    agent: &Agent,
    method: &str,
    req: &Req,
) -> Result<Resp, ConnectError> {
    let path = format!("/process.Process/{method}");
    let headers = [("content-type", CONTENT_TYPE_PROTO)];
    let response = post(agent, &path, &headers, req.encode_to_vec()).await;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    if status == StatusCode::OK {
        Ok(Resp::decode(body).unwrap())
    } else {
        Err(ConnectError::from_unary_response(status.as_u16(), &body))
    }
}

/// A Start response stream being read.
struct Stream {
    body: Incoming,
    decoder: EnvelopeDecoder,
    end: Option<Result<(), ConnectError>>,
}

impl Stream {
    async fn open(agent: &Agent, request: &StartRequest, user: Option<&str>) -> Stream {
        let auth;
        let mut headers = vec![("content-type", CONTENT_TYPE_CONNECT_PROTO)];
        if let Some(user) = user {
            auth = format!("Basic {}", base64(&format!("{user}:")));
            headers.push(("authorization", &auth));
        }
        let body = envelope(0, &request.encode_to_vec()).to_vec();
        let response = post(agent, "/process.Process/Start", &headers, body).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"],
            CONTENT_TYPE_CONNECT_PROTO
        );
        Stream {
            body: response.into_body(),
            decoder: EnvelopeDecoder::new(1 << 20),
            end: None,
        }
    }

    /// The next event, `None` after the end-stream message.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(env) = self.decoder.next().unwrap() {
                if env.is_end_stream() {
                    self.end = Some(parse_end_stream(&env.payload));
                    return None;
                }
                let msg = StartResponse::decode(env.payload).unwrap();
                return Some(msg.event.unwrap().event.unwrap());
            }
            let frame = self
                .body
                .frame()
                .await
                .expect("stream ended without end-stream");
            if let Ok(data) = frame.unwrap().into_data() {
                self.decoder.push(&data);
            }
        }
    }

    async fn finish(mut self) -> Outcome {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        assert!(self.body.frame().await.is_none(), "data after end-stream");
        Outcome::new(events, self.end.unwrap())
    }
}

#[derive(Debug)]
struct Outcome {
    events: Vec<Event>,
    result: Result<(), ConnectError>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Outcome {
    fn new(events: Vec<Event>, result: Result<(), ConnectError>) -> Outcome {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        for event in &events {
            match event {
                Event::Data(d) => match d.output.as_ref().unwrap() {
                    Output::Stdout(b) => stdout.extend_from_slice(b),
                    Output::Stderr(b) => stderr.extend_from_slice(b),
                    Output::Pty(_) => panic!("pty output without a pty"),
                },
                Event::Start(_) | Event::End(_) | Event::Keepalive(_) => {}
            }
        }
        Outcome {
            events,
            result,
            stdout,
            stderr,
        }
    }

    /// Checks the event order (start first, end last) and returns the end.
    fn end(&self) -> &EndEvent {
        assert_eq!(self.result, Ok(()));
        assert!(
            matches!(self.events.first(), Some(Event::Start(s)) if s.pid > 0),
            "{self:?}"
        );
        match self.events.last() {
            Some(Event::End(end)) => end,
            other => panic!("last event is not the end: {other:?}"),
        }
    }

    fn stdout(&self) -> &str {
        std::str::from_utf8(&self.stdout).unwrap()
    }
}

fn request(cmd: &str, args: &[&str]) -> StartRequest {
    StartRequest {
        process: Some(ProcessConfig {
            cmd: cmd.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            envs: HashMap::new(),
            cwd: None,
        }),
        pty: None,
        tag: None,
        stdin: None,
    }
}

fn sh(script: &str) -> StartRequest {
    request("sh", &["-c", script])
}

async fn run(agent: &Agent, request: &StartRequest) -> Outcome {
    Stream::open(agent, request, None).await.finish().await
}

fn base64(input: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test]
async fn health_is_204() {
    let agent = Agent::start();
    let response = hyper_get(agent.addr, "/health").await;
    assert_eq!(response, StatusCode::NO_CONTENT);
}

async fn hyper_get(addr: SocketAddr, path: &str) -> StatusCode {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = Request::get(path).header("host", addr.to_string());
    let response = sender
        .send_request(request.body(Full::new(Bytes::new())).unwrap())
        .await;
    response.unwrap().status()
}

#[tokio::test]
async fn separates_stdout_and_stderr_and_reports_exit_codes() {
    let agent = Agent::start();
    let out = run(&agent, &sh("echo out; echo err >&2; exit 7")).await;
    assert_eq!(out.stdout(), "out\n");
    assert_eq!(out.stderr, b"err\n");
    let end = out.end();
    assert_eq!(
        (end.exit_code, end.exited, end.status.as_str()),
        (7, true, "exit status 7")
    );

    let ok = run(&agent, &request("true", &[])).await;
    let end = ok.end();
    assert_eq!(
        (end.exit_code, end.exited, end.status.as_str()),
        (0, true, "exit status 0")
    );
    assert_eq!(ok.events.len(), 2, "only start and end: {:?}", ok.events);
}

#[tokio::test]
async fn reports_death_by_signal() {
    let agent = Agent::start();
    let out = run(&agent, &sh("kill -9 $$")).await;
    let end = out.end();
    assert_eq!(
        (end.exit_code, end.exited, end.status.as_str()),
        (-1, false, "signal: killed")
    );
}

#[tokio::test]
async fn environment_layers_and_cwd() {
    let agent = Agent::start();
    let init = br#"{"envVars":{"FROM_INIT":"a","OVERRIDE":"init"}}"#.to_vec();
    let response = post(
        &agent,
        "/init",
        &[("content-type", "application/json")],
        init,
    )
    .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let mut req = sh("echo $FROM_INIT $OVERRIDE $FROM_REQ $HOME $USER; pwd");
    let config = req.process.as_mut().unwrap();
    config.envs = HashMap::from([
        ("OVERRIDE".to_owned(), "req".to_owned()),
        ("FROM_REQ".to_owned(), "r".to_owned()),
    ]);
    config.cwd = Some("/tmp".to_owned());
    let out = run(&agent, &req).await;
    assert_eq!(out.end().exit_code, 0);
    assert_eq!(out.stdout(), "a req r /root root\n/tmp\n");
}

#[tokio::test]
async fn missing_executable_is_not_found() {
    let agent = Agent::start();
    let out = run(&agent, &request("no-such-command-xyz", &[])).await;
    assert!(out.events.is_empty(), "{:?}", out.events);
    let err = out.result.unwrap_err();
    assert_eq!(err.code, Code::NotFound);
    assert_eq!(
        err.message,
        "Executable 'no-such-command-xyz' not found in PATH"
    );
}

#[tokio::test]
async fn bad_cwd_is_invalid_argument() {
    let agent = Agent::start();
    let mut req = request("true", &[]);
    req.process.as_mut().unwrap().cwd = Some("/no/such/dir".into());
    let err = run(&agent, &req).await.result.unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);
}

#[tokio::test]
async fn ten_mebibytes_of_stdout_arrive_intact() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob");
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let data: Vec<u8> = (0..10 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect();
    std::fs::write(&path, &data).unwrap();
    let out = run(&agent, &request("cat", &[path.to_str().unwrap()])).await;
    assert_eq!(out.end().exit_code, 0);
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data, "stdout differs from the file");
    let largest = out.events.iter().filter_map(|e| match e {
        Event::Data(d) => match &d.output {
            Some(Output::Stdout(b)) => Some(b.len()),
            _ => None,
        },
        _ => None,
    });
    assert!(largest.max().unwrap() <= 32 * 1024);
}

#[tokio::test]
async fn switches_to_the_basic_auth_user() {
    let agent = Agent::start();
    let out = Stream::open(&agent, &sh("id -u; id -g; pwd"), Some("nobody"))
        .await
        .finish()
        .await;
    assert_eq!(out.end().exit_code, 0);
    // nobody's home (/nonexistent) is missing, so the process starts in /.
    assert_eq!(out.stdout(), "65534\n65534\n/\n");

    let out = Stream::open(&agent, &request("true", &[]), Some("ghost-user"))
        .await
        .finish()
        .await;
    assert_eq!(out.result.unwrap_err().code, Code::Unauthenticated);
}

#[tokio::test]
async fn rejects_other_content_types() {
    let agent = Agent::start();
    // A unary content type on a streaming RPC, and gRPC.
    for content_type in ["application/json", "application/grpc"] {
        let headers = [("content-type", content_type)];
        let response = post(&agent, "/process.Process/Start", &headers, b"{}".to_vec()).await;
        assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(
            response.headers()["accept-post"],
            "application/connect+proto, application/connect+json"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let err = ConnectError::from_unary_response(415, &body);
        assert_eq!(err.code, Code::Unimplemented);
        assert!(err.message.contains("application/connect+json"), "{err}");
    }
}

#[tokio::test]
async fn reaps_orphans() {
    let agent = Agent::start();
    let out = run(&agent, &sh("sleep 0.2 >/dev/null 2>&1 & echo $!")).await;
    assert_eq!(out.end().exit_code, 0);
    let orphan: u32 = out.stdout().trim().parse().unwrap();
    let stat = format!("/proc/{orphan}/stat");
    for _ in 0..100 {
        if std::fs::read_to_string(&stat).is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "orphan {orphan} was not reaped: {:?}",
        std::fs::read_to_string(&stat)
    );
}

fn by_pid(pid: u32) -> Option<ProcessSelector> {
    Some(ProcessSelector {
        selector: Some(process_selector::Selector::Pid(pid)),
    })
}

#[tokio::test]
async fn stdin_input_list_and_close() {
    let agent = Agent::start();
    let mut req = request("cat", &[]);
    req.stdin = Some(true);
    req.tag = Some("cat-job".into());
    let mut stream = Stream::open(&agent, &req, None).await;
    let Some(Event::Start(start)) = stream.next().await else {
        panic!("no start event")
    };

    let list: ListResponse = unary(&agent, "List", &ListRequest {}).await.unwrap();
    let info = list
        .processes
        .iter()
        .find(|p| p.pid == start.pid)
        .expect("listed");
    assert_eq!(info.tag.as_deref(), Some("cat-job"));
    assert_eq!(info.config.as_ref().unwrap().cmd, "cat");

    let input = SendInputRequest {
        process: by_pid(start.pid),
        input: Some(ProcessInput {
            input: Some(process_input::Input::Stdin(b"hello".to_vec())),
        }),
    };
    unary::<_, hearth_proto::process::SendInputResponse>(&agent, "SendInput", &input)
        .await
        .unwrap();
    let close = CloseStdinRequest {
        process: by_pid(start.pid),
    };
    unary::<_, hearth_proto::process::CloseStdinResponse>(&agent, "CloseStdin", &close)
        .await
        .unwrap();
    let mut events = vec![Event::Start(start)];
    while let Some(event) = stream.next().await {
        events.push(event);
    }
    let out = Outcome::new(events, stream.end.take().unwrap());
    assert_eq!(out.end().exit_code, 0);
    assert_eq!(out.stdout(), "hello");

    let gone = unary::<_, ListResponse>(&agent, "List", &ListRequest {})
        .await
        .unwrap();
    assert!(gone.processes.iter().all(|p| p.pid != start.pid));
    let err = unary::<_, hearth_proto::process::CloseStdinResponse>(&agent, "CloseStdin", &close)
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::NotFound);
}

#[tokio::test]
async fn send_signal_by_tag() {
    let agent = Agent::start();
    let mut req = request("sleep", &["30"]);
    req.tag = Some("sleeper".into());
    let mut stream = Stream::open(&agent, &req, None).await;
    let Some(Event::Start(start)) = stream.next().await else {
        panic!("no start event")
    };
    let signal = SendSignalRequest {
        process: Some(ProcessSelector {
            selector: Some(process_selector::Selector::Tag("sleeper".into())),
        }),
        signal: Signal::Sigterm as i32,
    };
    unary::<_, hearth_proto::process::SendSignalResponse>(&agent, "SendSignal", &signal)
        .await
        .unwrap();
    let mut events = vec![Event::Start(start)];
    while let Some(event) = stream.next().await {
        events.push(event);
    }
    let out = Outcome::new(events, stream.end.take().unwrap());
    let end = out.end();
    assert_eq!(
        (end.exit_code, end.status.as_str()),
        (-1, "signal: terminated")
    );
}

#[tokio::test]
async fn sigkill_reaches_children_that_ignore_sigterm_and_hold_the_pipes() {
    let agent = Agent::start();
    // The shell and its background sleep both ignore SIGTERM, and the sleep
    // holds stdout: the process ends only when the whole group is killed.
    let req = sh("trap '' TERM; sleep 600 & echo started; wait");
    let mut stream = Stream::open(&agent, &req, None).await;
    let Some(Event::Start(start)) = stream.next().await else {
        panic!("no start event")
    };
    let Some(Event::Data(_)) = stream.next().await else {
        panic!("no output before the signal")
    };
    let signal = |signal: Signal| SendSignalRequest {
        process: Some(ProcessSelector {
            selector: Some(process_selector::Selector::Pid(start.pid)),
        }),
        signal: signal as i32,
    };
    for sig in [Signal::Sigterm, Signal::Sigkill] {
        unary::<_, hearth_proto::process::SendSignalResponse>(&agent, "SendSignal", &signal(sig))
            .await
            .unwrap();
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while stream.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the stream did not end after SIGKILL");
    let end = stream.end.take().unwrap();
    assert!(end.is_ok(), "{end:?}");
}

#[tokio::test]
async fn client_disconnect_does_not_block_the_process() {
    let agent = Agent::start();
    // More output than the pipe and the stream buffers hold together.
    let mut stream = Stream::open(&agent, &sh("head -c 67108864 /dev/zero"), None).await;
    let Some(Event::Start(start)) = stream.next().await else {
        panic!("no start event")
    };
    drop(stream);
    for _ in 0..100 {
        let list: ListResponse = unary(&agent, "List", &ListRequest {}).await.unwrap();
        if list.processes.iter().all(|p| p.pid != start.pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("process {} still listed after its client left", start.pid);
}

#[tokio::test]
async fn slow_client_throttles_the_process() {
    let agent = Agent::start();
    let mut stream = Stream::open(&agent, &request("yes", &[]), None).await;
    let Some(Event::Start(start)) = stream.next().await else {
        panic!("no start event")
    };
    // Read nothing for a while: `yes` must block on its pipe instead of the
    // agent buffering its output.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.child.id())).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(
        rss_kib < 64 * 1024,
        "agent grew to {rss_kib} KiB while the client was idle"
    );
    let kill = SendSignalRequest {
        process: by_pid(start.pid),
        signal: Signal::Sigkill as i32,
    };
    unary::<_, hearth_proto::process::SendSignalResponse>(&agent, "SendSignal", &kill)
        .await
        .unwrap();
    let mut events = vec![Event::Start(start)];
    while let Some(event) = stream.next().await {
        events.push(event);
    }
    let out = Outcome::new(events, stream.end.take().unwrap());
    assert_eq!(out.end().status, "signal: killed");
    assert!(out.stdout.starts_with(b"y\ny\n"));
}

#[tokio::test]
async fn access_token_guards_everything_but_health() {
    let agent = Agent::start();
    let json = [("content-type", "application/json")];
    let init = br#"{"accessToken":"s3cret"}"#.to_vec();
    assert_eq!(
        post(&agent, "/init", &json, init).await.status(),
        StatusCode::NO_CONTENT
    );
    let body = envelope(0, &request("true", &[]).encode_to_vec()).to_vec();
    let start = [("content-type", CONTENT_TYPE_CONNECT_PROTO)];
    let denied = post(&agent, "/process.Process/Start", &start, body.clone()).await;
    assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
    let with_token = [start[0], ("x-access-token", "s3cret")];
    let allowed = post(&agent, "/process.Process/Start", &with_token, body).await;
    assert_eq!(allowed.status(), StatusCode::OK);
    assert_eq!(
        hyper_get(agent.addr, "/health").await,
        StatusCode::NO_CONTENT
    );
}
