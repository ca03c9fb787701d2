//! The rest of `process.Process` over real HTTP, with the Connect JSON
//! codec the e2b Python SDK uses: PTYs, `Update`, `Connect` fan-out,
//! client-streamed `StreamInput`, keepalives, unary JSON calls.

use std::time::Duration;

use bytes::Bytes;
use hearth_proto::connect::{EnvelopeDecoder, base64_encode};
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use serde_json::{Value, json};

mod support;
use support::{Agent, Events, SDK_STREAM_HEADERS, json_envelope, output, streamed_body};

/// A unary JSON call: (HTTP status, body as JSON).
async fn unary(agent: &Agent, method: &str, body: Value) -> (StatusCode, Value) {
    let headers = [
        ("content-type", "application/json"),
        ("connect-protocol-version", "1"),
        ("content-encoding", "identity"),
    ];
    let path = format!("/process.Process/{method}");
    let body = Full::new(Bytes::from(body.to_string())).boxed();
    let response = support::request(agent, "POST", &path, &headers, body).await;
    let status = response.status();
    if status == StatusCode::OK {
        assert_eq!(response.headers()["content-type"], "application/json");
    }
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

fn b64(text: &str) -> String {
    base64_encode(text.as_bytes())
}

#[tokio::test]
async fn start_streams_json_events_as_the_python_sdk_sends_and_reads_them() {
    let agent = Agent::start();
    // The request as json_format.MessageToJson writes the SDK's StartRequest.
    let request = json!({
        "process": {"cmd": "/bin/sh", "args": ["-c", "echo out; echo err >&2; exit 3"],
                    "envs": {"X": "1"}},
        "stdin": false,
    });
    let mut events = Events::open(
        &agent,
        "Start",
        request,
        &[("keepalive-ping-interval", "50")],
    )
    .await;
    assert!(events.start().await > 0);
    let (end, rest) = events.finish().await;
    assert_eq!(
        end,
        json!({"exitCode": 3, "exited": true, "status": "exit status 3"})
    );
    assert_eq!(output(&rest, "stdout"), "out\n");
    assert_eq!(output(&rest, "stderr"), "err\n");
    // Bytes are base64 on the wire.
    assert!(
        rest.iter()
            .any(|e| e["data"]["stdout"] == json!("b3V0Cg=="))
    );

    // A successful exit leaves out the default exit code.
    let ok = json!({"process": {"cmd": "true"}});
    let (end, _) = Events::open(&agent, "Start", ok, &[]).await.finish().await;
    assert_eq!(end, json!({"exited": true, "status": "exit status 0"}));
}

#[tokio::test]
async fn json_errors_arrive_as_connect_errors() {
    let agent = Agent::start();
    let mut events = Events::open(
        &agent,
        "Start",
        json!({"process": {"cmd": "no-such-tool"}}),
        &[],
    )
    .await;
    assert_eq!(events.next().await, None);
    assert_eq!(events.end.unwrap()["error"]["code"], "not_found");
    let mut bad = Events::open(&agent, "Start", json!({"process": {"cmd": 7}}), &[]).await;
    assert_eq!(bad.next().await, None);
    assert_eq!(bad.end.unwrap()["error"]["code"], "invalid_argument");
    let (status, body) = unary(
        &agent,
        "SendSignal",
        json!({"process": {"pid": 999_999}, "signal": "SIGNAL_SIGKILL"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "not_found");
}

#[tokio::test]
async fn silent_streams_carry_keepalives_at_the_requested_interval() {
    let agent = Agent::start();
    let request = json!({"process": {"cmd": "/bin/sh", "args": ["-c", "sleep 2.5; echo done"]}});
    let mut events = Events::open(
        &agent,
        "Start",
        request,
        &[("keepalive-ping-interval", "1")],
    )
    .await;
    events.start().await;
    let (end, rest) = events.finish().await;
    assert_eq!(end["exited"], json!(true));
    let keepalives = rest.iter().take_while(|e| e.get("data").is_none()).count();
    assert!((1..=3).contains(&keepalives), "{rest:?}");
    assert!(
        rest.iter()
            .all(|e| e.get("keepalive").is_none_or(|k| *k == json!({})))
    );
    assert_eq!(output(&rest, "stdout"), "done\n");
}

#[tokio::test]
async fn unary_json_list_send_input_and_close_stdin() {
    let agent = Agent::start();
    // stdin left out: open, as envd does.
    let request = json!({"process": {"cmd": "cat", "cwd": "/"}, "tag": "cat-job"});
    let mut events = Events::open(&agent, "Start", request, &[]).await;
    let pid = events.start().await;

    let (status, list) = unary(&agent, "List", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let mine: Vec<&Value> = list["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["pid"] == json!(pid))
        .collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["tag"], "cat-job");
    assert_eq!(mine[0]["config"], json!({"cmd": "cat", "cwd": "/"}));

    let input = json!({"process": {"tag": "cat-job"}, "input": {"stdin": b64("hi\n")}});
    assert_eq!(
        unary(&agent, "SendInput", input).await,
        (StatusCode::OK, json!({}))
    );
    assert_eq!(events.output_until("stdout", "hi\n").await, "hi\n");
    let pty_input = json!({"process": {"pid": pid}, "input": {"pty": b64("x")}});
    let (status, body) = unary(&agent, "SendInput", pty_input).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "failed_precondition");

    let close = json!({"process": {"pid": pid}});
    assert_eq!(
        unary(&agent, "CloseStdin", close.clone()).await,
        (StatusCode::OK, json!({}))
    );
    let (end, _) = events.finish().await;
    assert_eq!(end["status"], "exit status 0");
    let (status, _) = unary(&agent, "CloseStdin", close).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn pty_runs_a_shell_with_a_controlling_terminal_and_resizes() {
    let agent = Agent::start();
    let request = json!({
        "process": {"cmd": "/bin/sh", "envs": {"PS1": "$ "}},
        "pty": {"size": {"cols": 80, "rows": 24}},
        "tag": "term",
    });
    let mut events = Events::open(&agent, "Start", request, &[]).await;
    let pid = events.start().await;
    let send = |text: &str| json!({"process": {"pid": pid}, "input": {"pty": b64(text)}});
    assert_eq!(
        unary(&agent, "SendInput", send("echo $((6*7))\n")).await.0,
        StatusCode::OK
    );
    // The echo of the typed line has no 42 in it; the result does.
    events.output_until("pty", "42").await;

    let resize = json!({"process": {"tag": "term"}, "pty": {"size": {"cols": 100, "rows": 30}}});
    assert_eq!(
        unary(&agent, "Update", resize).await,
        (StatusCode::OK, json!({}))
    );
    unary(&agent, "SendInput", send("stty size\n")).await;
    events.output_until("pty", "30 100").await;

    // /dev/tty opens only for a process with a controlling terminal; TERM is set.
    unary(
        &agent,
        "SendInput",
        send("exec 3</dev/tty && echo ctty-$TERM\n"),
    )
    .await;
    events.output_until("pty", "ctty-xterm-256color").await;

    let (status, body) = unary(
        &agent,
        "SendInput",
        json!({"process": {"pid": pid}, "input": {"stdin": b64("x")}}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("failed_precondition"))
    );
    let (status, _) = unary(&agent, "CloseStdin", json!({"process": {"pid": pid}})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let bad = json!({"process": {"pid": pid}, "pty": {"size": {"cols": 0, "rows": 30}}});
    assert_eq!(
        unary(&agent, "Update", bad).await.1["code"],
        "invalid_argument"
    );

    unary(&agent, "SendInput", send("exit 5\n")).await;
    let (end, rest) = events.finish().await;
    assert_eq!(end["exitCode"], 5);
    assert!(rest.iter().all(|e| e["data"].get("stdout").is_none()));
}

#[tokio::test]
async fn connect_timeout_ms_ends_the_stream_and_the_process() {
    let agent = Agent::start();
    let request = json!({"process": {"cmd": "sleep", "args": ["30"]}, "tag": "slow"});
    let mut events = Events::open(&agent, "Start", request, &[("connect-timeout-ms", "700")]).await;
    events.start().await;
    let started = std::time::Instant::now();
    while events.next().await.is_some() {}
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(events.end.unwrap()["error"]["code"], "deadline_exceeded");
    // As envd, the process is killed with its request.
    let mut listed = true;
    for _ in 0..50 {
        let (_, list) = unary(&agent, "List", json!({})).await;
        listed = list.to_string().contains("slow");
        if !listed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!listed, "the timed-out process still runs");

    let bad = json!({"process": {"cmd": "true"}});
    let mut events = Events::open(&agent, "Start", bad, &[("connect-timeout-ms", "soon")]).await;
    assert_eq!(events.next().await, None);
    assert_eq!(events.end.unwrap()["error"]["code"], "invalid_argument");
}

#[tokio::test]
async fn update_needs_a_terminal() {
    let agent = Agent::start();
    let mut events = Events::open(
        &agent,
        "Start",
        json!({"process": {"cmd": "sleep", "args": ["5"]}}),
        &[],
    )
    .await;
    let pid = events.start().await;
    let resize = json!({"process": {"pid": pid}, "pty": {"size": {"cols": 10, "rows": 10}}});
    let (status, body) = unary(&agent, "Update", resize).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("failed_precondition"))
    );
    unary(
        &agent,
        "SendSignal",
        json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}),
    )
    .await;
    assert_eq!(events.finish().await.0["status"], "signal: killed");
}

#[tokio::test]
async fn connect_fans_out_output_from_when_each_client_joined() {
    let agent = Agent::start();
    let script = "read a; echo first $a; read b; echo second $b";
    let request = json!({"process": {"cmd": "/bin/sh", "args": ["-c", script]}, "tag": "job"});
    let mut started = Events::open(&agent, "Start", request, &[]).await;
    let pid = started.start().await;
    let input = |text: &str| json!({"process": {"pid": pid}, "input": {"stdin": b64(text)}});
    unary(&agent, "SendInput", input("1\n")).await;
    started.output_until("stdout", "first 1").await;

    let mut late = Events::open(&agent, "Connect", json!({"process": {"tag": "job"}}), &[]).await;
    assert_eq!(late.start().await, pid);
    let mut by_pid = Events::open(&agent, "Connect", json!({"process": {"pid": pid}}), &[]).await;
    assert_eq!(by_pid.start().await, pid);
    unary(&agent, "SendInput", input("2\n")).await;
    for events in [&mut started, &mut late, &mut by_pid] {
        let (end, rest) = events.finish().await;
        assert_eq!(end["status"], "exit status 0");
        assert_eq!(output(&rest, "stdout"), "second 2\n");
    }

    let mut gone = Events::open(&agent, "Connect", json!({"process": {"pid": pid}}), &[]).await;
    assert_eq!(gone.next().await, None);
    assert_eq!(gone.end.unwrap()["error"]["code"], "not_found");
}

#[tokio::test]
async fn a_vanished_subscriber_does_not_stall_the_others() {
    let agent = Agent::start();
    // More than the socket buffers of the vanished client can hold.
    let script = "read a; head -c 12000000 /dev/zero; echo end";
    let request = json!({"process": {"cmd": "/bin/sh", "args": ["-c", script]}});
    let mut started = Events::open(&agent, "Start", request, &[]).await;
    let pid = started.start().await;
    let mut other = Events::open(&agent, "Connect", json!({"process": {"pid": pid}}), &[]).await;
    other.start().await;
    drop(other);
    unary(
        &agent,
        "SendInput",
        json!({"process": {"pid": pid}, "input": {"stdin": b64("go\n")}}),
    )
    .await;
    let (end, rest) = started.finish().await;
    assert_eq!(end["exitCode"], Value::Null);
    let out = output(&rest, "stdout");
    assert_eq!(out.len(), 12_000_004);
    assert!(out.ends_with("\0end\n"));
}

#[tokio::test]
async fn stream_input_writes_each_event_as_it_arrives() {
    let agent = Agent::start();
    let mut events = Events::open(&agent, "Start", json!({"process": {"cmd": "cat"}}), &[]).await;
    let pid = events.start().await;

    let (tx, body) = streamed_body();
    let call = {
        let addr_agent = &agent;
        let headers = SDK_STREAM_HEADERS;
        async move {
            support::request(
                addr_agent,
                "POST",
                "/process.Process/StreamInput",
                &headers,
                body,
            )
            .await
        }
    };
    let feed = async {
        tx.send(json_envelope(&json!({"start": {"process": {"pid": pid}}})))
            .await
            .unwrap();
        tx.send(json_envelope(
            &json!({"data": {"input": {"stdin": b64("one\n")}}}),
        ))
        .await
        .unwrap();
        // Arrives while the request body is still open.
        events.output_until("stdout", "one\n").await;
        tx.send(json_envelope(&json!({"keepalive": {}})))
            .await
            .unwrap();
        tx.send(json_envelope(
            &json!({"data": {"input": {"stdin": b64("two\n")}}}),
        ))
        .await
        .unwrap();
        events.output_until("stdout", "two\n").await;
        drop(tx);
    };
    let (response, ()) = tokio::join!(call, feed);
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/connect+json"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let mut decoder = EnvelopeDecoder::new(1024);
    decoder.push(&body);
    let message = decoder.next().unwrap().unwrap();
    assert!(!message.is_end_stream());
    assert_eq!(&message.payload[..], b"{}");
    let end = decoder.next().unwrap().unwrap();
    assert!(end.is_end_stream());
    assert_eq!(&end.payload[..], b"{}");

    unary(&agent, "CloseStdin", json!({"process": {"pid": pid}})).await;
    assert_eq!(events.finish().await.0["status"], "exit status 0");
}

#[tokio::test]
async fn stream_input_must_start_with_a_start_event() {
    let agent = Agent::start();
    let body = json_envelope(&json!({"data": {"input": {"stdin": b64("x")}}}));
    let response = support::request(
        &agent,
        "POST",
        "/process.Process/StreamInput",
        &SDK_STREAM_HEADERS,
        Full::new(body).boxed(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let mut decoder = EnvelopeDecoder::new(1024);
    decoder.push(&body);
    let end = decoder.next().unwrap().unwrap();
    assert!(end.is_end_stream());
    let end: Value = serde_json::from_slice(&end.payload).unwrap();
    assert_eq!(end["error"]["code"], "invalid_argument");
}
