//! gzip and signed URLs on `/files`, `POST /init`'s version header,
//! `GET /envs` and `GET /metrics`, over real HTTP against the agent in
//! agent-only mode.

use std::fs;
use std::io::{Read, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use hearth_proto::agent::ENVD_VERSION;
use hearth_proto::connect::base64_encode;
use hyper::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};

mod support;
use support::{Agent, send};

fn noise(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Half the bytes repeat, so the data compresses somewhat.
            (state % 16).to_le_bytes()[0]
        })
        .collect()
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test]
async fn gzip_uploads_and_downloads() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/data.bin");
    let query = format!("/files?path={}", path.to_str().unwrap());
    let data = noise(3 << 20);

    let (status, _, body) = send(
        &agent,
        "POST",
        &query,
        &[
            ("content-type", "application/octet-stream"),
            ("content-encoding", "gzip"),
        ],
        gz(&data),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert!(fs::read(&path).unwrap() == data);

    // A multipart form may be compressed as a whole too.
    let form = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.txt\"\r\n\r\nmultipart body\r\n--XyZ--\r\n";
    let target = dir.path().join("m.txt");
    let form_query = format!("/files?path={}", target.to_str().unwrap());
    let (status, _, body) = send(
        &agent,
        "POST",
        &form_query,
        &[
            ("content-type", "multipart/form-data; boundary=XyZ"),
            ("content-encoding", "GZIP"),
        ],
        gz(form),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(fs::read(&target).unwrap(), b"multipart body");

    let (status, headers, body) = send(
        &agent,
        "GET",
        &query,
        &[("accept-encoding", "br, gzip;q=0.8")],
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-encoding"], "gzip");
    assert!(body.len() < data.len());
    let mut plain = Vec::new();
    GzDecoder::new(&body[..]).read_to_end(&mut plain).unwrap();
    assert!(plain == data);

    // Refused gzip, or none asked for: the bytes as they are.
    for accept in ["gzip;q=0", "identity"] {
        let (status, headers, body) = send(
            &agent,
            "GET",
            &query,
            &[("accept-encoding", accept)],
            vec![],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers.get("content-encoding").is_none());
        assert!(body == data);
    }

    // Incompressible bytes are sent as they are even when gzip is accepted.
    let random = dir.path().join("random.bin");
    let mut bytes = vec![0u8; 1 << 20];
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    fs::write(&random, &bytes).unwrap();
    let random_query = format!("/files?path={}", random.to_str().unwrap());
    let (status, headers, body) = send(
        &agent,
        "GET",
        &random_query,
        &[("accept-encoding", "gzip, deflate")],
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get("content-encoding").is_none());
    assert!(body == bytes);

    // A corrupt or unknown encoding is the client's error.
    let mut truncated = gz(b"some text that will not arrive whole");
    truncated.truncate(truncated.len() - 4);
    for (encoding, body) in [("gzip", truncated), ("br", b"x".to_vec())] {
        let (status, _, _) = send(
            &agent,
            "POST",
            &query,
            &[
                ("content-type", "application/octet-stream"),
                ("content-encoding", encoding),
            ],
            body,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{encoding}");
    }
}

#[tokio::test]
async fn envs_are_the_init_defaults() {
    let agent = Agent::start();
    let (status, _, body) = send(&agent, "GET", "/envs", &[], vec![]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({})
    );
    let init = serde_json::json!({ "envVars": { "A": "1", "B": "two words" } });
    let (status, headers, _) = send(
        &agent,
        "POST",
        "/init",
        &[("content-type", "application/json")],
        init.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(headers["x-envd-version"], ENVD_VERSION);
    let (status, headers, body) = send(&agent, "GET", "/envs", &[], vec![]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({ "A": "1", "B": "two words" })
    );
}

#[tokio::test]
async fn init_names_the_envd_version_even_for_a_bad_body() {
    let agent = Agent::start();
    let json = [("content-type", "application/json")];
    let (status, headers, _) = send(&agent, "POST", "/init", &json, b"{".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(headers["x-envd-version"], "0.6.4");
    assert_eq!(ENVD_VERSION, "0.6.4");
}

#[tokio::test]
async fn metrics_are_sane() {
    let agent = Agent::start();
    for _ in 0..2 {
        let (status, _, body) = send(&agent, "GET", "/metrics", &[], vec![]).await;
        assert_eq!(status, StatusCode::OK);
        let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let int = |name: &str| m[name].as_u64().unwrap_or_else(|| panic!("{name} in {m}"));
        assert!(int("ts") > 1_600_000_000);
        assert!(int("cpu_count") >= 1);
        let pct = m["cpu_used_pct"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&pct), "{pct}");
        assert!(
            int("mem_total") > int("mem_used") && int("mem_used") > 0,
            "{m}"
        );
        assert!(int("mem_cache") < int("mem_total"), "{m}");
        assert!(
            int("disk_total") > int("disk_used") && int("disk_used") > 0,
            "{m}"
        );
    }
}

/// What the e2b SDK's `get_signature` computes for a `/files` URL.
fn sign(path: &str, operation: &str, user: &str, expiration: Option<u64>) -> String {
    let mut signed = format!("{path}:{operation}:{user}:{TOKEN}");
    if let Some(expiration) = expiration {
        signed.push_str(&format!(":{expiration}"));
    }
    let digest = Sha256::digest(signed.as_bytes());
    format!("v1_{}", base64_encode(&digest).trim_end_matches('='))
}

/// `text` escaped as Python's `urllib.parse.quote` does (`/` kept).
fn quote(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A `/files` URL as the SDK's `download_url`/`upload_url` write it.
fn signed_url(path: &str, user: Option<&str>, signature: &str, expiration: Option<u64>) -> String {
    let mut url = format!("/files?path={}", quote(path));
    if let Some(user) = user {
        url.push_str(&format!("&username={}", quote(user)));
    }
    url.push_str(&format!("&signature={}", quote(signature)));
    if let Some(expiration) = expiration {
        url.push_str(&format!("&signature_expiration={expiration}"));
    }
    url
}

const TOKEN: &str = "s3cret";

/// The status and, for a refusal, the message of a `/files` request.
async fn transfer(
    agent: &Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut all = vec![("content-type", "application/octet-stream")];
    all.extend_from_slice(headers);
    let (status, _, body) = send(agent, method, url, &all, b"uploaded".to_vec()).await;
    if status == StatusCode::OK {
        return (status, String::new());
    }
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["code"], status.as_u16());
    (status, error["message"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn signed_urls_stand_in_for_the_access_token_on_files() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a file+1.txt");
    let path = file.to_str().unwrap();
    fs::write(&file, "before").unwrap();
    let plain = format!("/files?path={}", quote(path));

    // Without a token nothing is needed.
    assert_eq!(transfer(&agent, "GET", &plain, &[]).await.0, StatusCode::OK);
    let init = format!(r#"{{"accessToken":"{TOKEN}"}}"#).into_bytes();
    let json = [("content-type", "application/json")];
    let (status, _, _) = send(&agent, "POST", "/init", &json, init).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let (status, message) = transfer(&agent, "GET", &plain, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        message.contains("Missing access token or signature"),
        "{message}"
    );
    let wrong_token = [("x-access-token", "guess")];
    assert_eq!(
        transfer(&agent, "GET", &plain, &wrong_token).await.0,
        StatusCode::UNAUTHORIZED
    );
    let token = [("x-access-token", TOKEN)];
    assert_eq!(
        transfer(&agent, "GET", &plain, &token).await.0,
        StatusCode::OK
    );

    // A signed download, then a signed upload, without the header.
    let read = signed_url(path, None, &sign(path, "read", "", None), None);
    let (status, _, body) = send(&agent, "GET", &read, &[], vec![]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"before");
    let write = signed_url(path, None, &sign(path, "write", "", None), None);
    assert_eq!(
        transfer(&agent, "POST", &write, &[]).await.0,
        StatusCode::OK
    );
    assert_eq!(fs::read(&file).unwrap(), b"uploaded");

    // A wrong header is refused even beside a good signature.
    let (status, message) = transfer(&agent, "GET", &read, &[("x-access-token", "guess")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(message.starts_with("Invalid access token"), "{message}");

    // A signature covers one operation, path and user.
    let other = dir.path().join("other.txt");
    let other = other.to_str().unwrap();
    for (method, url) in [
        (
            "POST",
            signed_url(path, None, &sign(path, "read", "", None), None),
        ),
        (
            "GET",
            signed_url(path, None, &sign(path, "write", "", None), None),
        ),
        (
            "GET",
            signed_url(other, None, &sign(path, "read", "", None), None),
        ),
        (
            "GET",
            signed_url(path, Some("nobody"), &sign(path, "read", "", None), None),
        ),
        (
            "GET",
            signed_url(path, None, &sign(path, "read", "nobody", None), None),
        ),
    ] {
        let (status, message) = transfer(&agent, method, &url, &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {url}");
        assert!(message.starts_with("Invalid signature"), "{message}");
    }
    assert!(fs::metadata(other).is_err());

    // An expiration is signed too, and honoured.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let future = now + 300;
    let live = signed_url(
        path,
        None,
        &sign(path, "read", "", Some(future)),
        Some(future),
    );
    assert_eq!(transfer(&agent, "GET", &live, &[]).await.0, StatusCode::OK);
    let stretched = signed_url(
        path,
        None,
        &sign(path, "read", "", Some(future)),
        Some(future + 1),
    );
    let (status, message) = transfer(&agent, "GET", &stretched, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(message.starts_with("Invalid signature"), "{message}");
    let past = now - 10;
    let expired = signed_url(path, None, &sign(path, "write", "", Some(past)), Some(past));
    let (status, message) = transfer(&agent, "POST", &expired, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(message.contains("expired"), "{message}");
    assert_eq!(fs::read(&file).unwrap(), b"uploaded");

    // Other routes still want the header.
    let (status, _, _) = send(
        &agent,
        "GET",
        &format!("/envs?signature={}", quote(&sign("", "read", "", None))),
        &[],
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
