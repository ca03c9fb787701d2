//! HTTP/2 with prior knowledge (h2c), the way Connect clients that speak
//! HTTP/2 reach envd: unary, server- and client-streaming calls and `/files`
//! multiplexed on one connection, beside HTTP/1.1 on the same port.

use std::fs;

use bytes::Bytes;
use hearth_proto::connect::{EnvelopeDecoder, base64_encode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::StatusCode;
use serde_json::{Value, json};

mod support;
use support::{Agent, Events, H2, SDK_STREAM_HEADERS, json_envelope, output, streamed_body};

/// A unary `process.Process` call with the JSON codec: (status, body).
async fn unary(conn: &H2, method: &str, body: &Value) -> (StatusCode, Value) {
    let headers = [
        ("content-type", "application/json"),
        ("connect-protocol-version", "1"),
    ];
    let path = format!("/process.Process/{method}");
    let body = Full::new(Bytes::from(body.to_string())).boxed();
    let response = conn.request("POST", &path, &headers, body).await;
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

/// Opens a `process.Process/Start` stream on `conn`.
async fn start(conn: &H2, process: Value) -> Events {
    let body = Full::new(json_envelope(&json!({ "process": process }))).boxed();
    let path = "/process.Process/Start";
    Events::new(conn.request("POST", path, &SDK_STREAM_HEADERS, body).await)
}

#[tokio::test]
async fn unary_and_server_streaming_calls_over_h2c() {
    let agent = Agent::start();
    let conn = H2::connect(&agent).await;
    let health = conn
        .request("GET", "/health", &[], Empty::new().boxed())
        .await;
    assert_eq!(health.status(), StatusCode::NO_CONTENT);

    let mut echo = start(&conn, json!({"cmd": "echo", "args": ["hi"]})).await;
    assert!(echo.start().await > 0);
    let (end, rest) = echo.finish().await;
    assert_eq!(end, json!({"exited": true, "status": "exit status 0"}));
    assert_eq!(output(&rest, "stdout"), "hi\n");

    // A second stream stays open while unary calls come and go beside it.
    let mut sleeper = start(&conn, json!({"cmd": "sleep", "args": ["30"]})).await;
    let pid = sleeper.start().await;
    let (status, list) = unary(&conn, "List", &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        list["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pid"] == json!(pid)),
        "{list}"
    );
    let kill = json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"});
    assert_eq!(
        unary(&conn, "SendSignal", &kill).await,
        (StatusCode::OK, json!({}))
    );
    assert_eq!(sleeper.finish().await.0["status"], "signal: killed");

    let missing = json!({"process": {"pid": 999_999}, "signal": "SIGNAL_SIGKILL"});
    let (status, body) = unary(&conn, "SendSignal", &missing).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "not_found");
}

#[tokio::test]
async fn client_streaming_input_over_h2c() {
    let agent = Agent::start();
    let conn = H2::connect(&agent).await;
    let mut cat = start(&conn, json!({"cmd": "cat"})).await;
    let pid = cat.start().await;

    let (tx, body) = streamed_body();
    let call = conn.request(
        "POST",
        "/process.Process/StreamInput",
        &SDK_STREAM_HEADERS,
        body,
    );
    let feed = async {
        tx.send(json_envelope(&json!({"start": {"process": {"pid": pid}}})))
            .await
            .unwrap();
        for line in ["one\n", "two\n"] {
            let stdin = base64_encode(line.as_bytes());
            tx.send(json_envelope(&json!({"data": {"input": {"stdin": stdin}}})))
                .await
                .unwrap();
            // Each line arrives while the request stream is still open.
            cat.output_until("stdout", line).await;
        }
        drop(tx);
    };
    let (response, ()) = tokio::join!(call, feed);
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let mut decoder = EnvelopeDecoder::new(1024);
    decoder.push(&body);
    assert_eq!(&decoder.next().unwrap().unwrap().payload[..], b"{}");
    assert!(decoder.next().unwrap().unwrap().is_end_stream());

    let close = json!({"process": {"pid": pid}});
    assert_eq!(
        unary(&conn, "CloseStdin", &close).await,
        (StatusCode::OK, json!({}))
    );
    assert_eq!(cat.finish().await.0["status"], "exit status 0");
}

#[tokio::test]
async fn files_upload_and_download_over_h2c_and_http1_on_one_port() {
    let agent = Agent::start();
    let conn = H2::connect(&agent).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/data.bin");
    let query = format!("/files?path={}", path.to_str().unwrap());
    // Larger than HTTP/2's initial flow-control windows, so both sides must
    // grant more while the bytes flow.
    let data: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i % 251).to_le_bytes()[0])
        .collect();

    let octets = [("content-type", "application/octet-stream")];
    let body = Full::new(Bytes::from(data.clone())).boxed();
    let response = conn.request("POST", &query, &octets, body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let uploaded = response.into_body().collect().await.unwrap().to_bytes();
    let uploaded: Value = serde_json::from_slice(&uploaded).unwrap();
    assert_eq!(uploaded[0]["path"], path.to_str().unwrap());
    assert!(fs::read(&path).unwrap() == data);

    let response = conn.request("GET", &query, &[], Empty::new().boxed()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let downloaded = response.into_body().collect().await.unwrap().to_bytes();
    assert!(downloaded == data);

    let (status, _, downloaded) = support::send(&agent, "GET", &query, &[], vec![]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(downloaded == data);
}
