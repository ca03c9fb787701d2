//! Directory watches (`WatchDir` and the polled watchers), driven over real
//! HTTP against the agent in agent-only mode.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use hearth_proto::connect::{
    CONTENT_TYPE_CONNECT_PROTO, CONTENT_TYPE_PROTO, Code, ConnectError, EnvelopeDecoder, envelope,
    parse_end_stream,
};
use hearth_proto::filesystem::watch_dir_response::Event;
use hearth_proto::filesystem::{
    CreateWatcherRequest, CreateWatcherResponse, EventType, FilesystemEvent,
    GetWatcherEventsRequest, GetWatcherEventsResponse, RemoveWatcherRequest, RemoveWatcherResponse,
    WatchDirRequest, WatchDirResponse,
};
use http_body_util::BodyExt;
use hyper::StatusCode;
use hyper::body::Incoming;
use prost::Message;

mod support;
use support::{Agent, post};

async fn call<Req: Message, Resp: Message + Default>(
    agent: &Agent,
    method: &str,
    req: &Req,
) -> Result<Resp, ConnectError> {
    let path = format!("/filesystem.Filesystem/{method}");
    let response = post(
        agent,
        &path,
        &[("content-type", CONTENT_TYPE_PROTO)],
        req.encode_to_vec(),
    )
    .await;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    if status == StatusCode::OK {
        Ok(Resp::decode(body).unwrap())
    } else {
        Err(ConnectError::from_unary_response(status.as_u16(), &body))
    }
}

/// A `WatchDir` response stream being read.
struct Watch {
    body: Incoming,
    decoder: EnvelopeDecoder,
}

impl Watch {
    async fn open(agent: &Agent, path: &Path, recursive: bool) -> Watch {
        Watch::open_with(agent, path, recursive, false).await
    }

    async fn open_with(agent: &Agent, path: &Path, recursive: bool, network: bool) -> Watch {
        let request = WatchDirRequest {
            path: path.to_str().unwrap().into(),
            recursive,
            include_entry: false,
            allow_network_mounts: network,
        };
        let body = envelope(0, &request.encode_to_vec()).to_vec();
        let response = post(
            agent,
            "/filesystem.Filesystem/WatchDir",
            &[("content-type", CONTENT_TYPE_CONNECT_PROTO)],
            body,
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        Watch {
            body: response.into_body(),
            decoder: EnvelopeDecoder::new(1 << 20),
        }
    }

    /// The next message; `Err` with the stream's error at its end.
    async fn next(&mut self) -> Result<Event, Result<(), ConnectError>> {
        loop {
            if let Some(env) = self.decoder.next().unwrap() {
                if env.is_end_stream() {
                    return Err(parse_end_stream(&env.payload));
                }
                let msg = WatchDirResponse::decode(env.payload).unwrap();
                return Ok(msg.event.unwrap());
            }
            let frame = tokio::time::timeout(Duration::from_secs(5), self.body.frame())
                .await
                .expect("no event within 5 s")
                .expect("stream ended without end-stream");
            if let Ok(data) = frame.unwrap().into_data() {
                self.decoder.push(&data);
            }
        }
    }

    async fn started(agent: &Agent, path: &Path, recursive: bool) -> Watch {
        let mut watch = Watch::open(agent, path, recursive).await;
        assert!(matches!(watch.next().await, Ok(Event::Start(_))));
        watch
    }

    /// Filesystem events until one equals `last`, with repeats in a row
    /// folded into one.
    async fn until(&mut self, last: (&str, EventType)) -> Vec<(String, EventType)> {
        let mut seen: Vec<(String, EventType)> = Vec::new();
        loop {
            let Ok(Event::Filesystem(e)) = self.next().await else {
                continue;
            };
            let event = pair(&e);
            if seen.last() != Some(&event) {
                seen.push(event.clone());
            }
            if (event.0.as_str(), event.1) == last {
                return seen;
            }
        }
    }
}

fn pair(e: &FilesystemEvent) -> (String, EventType) {
    (e.name.clone(), EventType::try_from(e.r#type).unwrap())
}

fn owned(events: &[(&str, EventType)]) -> Vec<(String, EventType)> {
    events.iter().map(|(n, t)| ((*n).to_owned(), *t)).collect()
}

#[tokio::test]
async fn watch_dir_reports_each_kind_of_change() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let mut watch = Watch::started(&agent, dir.path(), false).await;
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    fs::write(&a, "").unwrap();
    fs::write(&a, "hello").unwrap();
    fs::rename(&a, &b).unwrap();
    fs::set_permissions(&b, fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(&b).unwrap();
    let events = watch.until(("b", EventType::Remove)).await;
    use EventType::*;
    assert_eq!(
        events,
        owned(&[
            ("a", Create),
            ("a", Write),
            ("a", Rename),
            ("b", Create),
            ("b", Chmod),
            ("b", Remove),
        ])
    );
}

#[tokio::test]
async fn recursive_watch_follows_new_subdirectories() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("old")).unwrap();
    let mut watch = Watch::started(&agent, dir.path(), true).await;
    fs::write(dir.path().join("old/f"), "x").unwrap();
    let events = watch.until(("old/f", EventType::Write)).await;
    assert_eq!(events[0], ("old/f".to_owned(), EventType::Create));
    fs::create_dir(dir.path().join("new")).unwrap();
    watch.until(("new", EventType::Create)).await;
    fs::create_dir(dir.path().join("new/deeper")).unwrap();
    fs::write(dir.path().join("new/deeper/g"), "x").unwrap();
    let events = watch.until(("new/deeper/g", EventType::Write)).await;
    assert!(events.contains(&("new/deeper".to_owned(), EventType::Create)));
    assert!(events.contains(&("new/deeper/g".to_owned(), EventType::Create)));

    // Without `recursive`, a subdirectory's changes are not reported.
    let mut flat = Watch::started(&agent, dir.path(), false).await;
    fs::write(dir.path().join("old/h"), "x").unwrap();
    fs::write(dir.path().join("top"), "").unwrap();
    let events = flat.until(("top", EventType::Create)).await;
    assert_eq!(events, owned(&[("top", EventType::Create)]));
}

#[tokio::test]
async fn watch_errors() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    fs::write(&file, "").unwrap();
    let mut watch = Watch::open(&agent, &dir.path().join("missing"), false).await;
    assert_eq!(
        watch.next().await.unwrap_err().unwrap_err().code,
        Code::NotFound
    );
    let mut watch = Watch::open(&agent, &file, false).await;
    assert_eq!(
        watch.next().await.unwrap_err().unwrap_err().code,
        Code::InvalidArgument
    );
    for (path, code) in [
        (dir.path().join("missing"), Code::NotFound),
        (file, Code::InvalidArgument),
    ] {
        let req = CreateWatcherRequest {
            path: path.to_str().unwrap().into(),
            ..Default::default()
        };
        let err = call::<_, CreateWatcherResponse>(&agent, "CreateWatcher", &req)
            .await
            .unwrap_err();
        assert_eq!(err.code, code);
    }
}

async fn poll(agent: &Agent, id: &str) -> Result<Vec<(String, EventType)>, ConnectError> {
    let req = GetWatcherEventsRequest {
        watcher_id: id.into(),
    };
    let resp: GetWatcherEventsResponse = call(agent, "GetWatcherEvents", &req).await?;
    Ok(resp.events.iter().map(pair).collect())
}

#[tokio::test]
async fn polled_watcher_returns_events_once() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let req = CreateWatcherRequest {
        path: dir.path().to_str().unwrap().into(),
        ..Default::default()
    };
    let created: CreateWatcherResponse = call(&agent, "CreateWatcher", &req).await.unwrap();
    let id = created.watcher_id;
    assert!(!id.is_empty());
    fs::write(dir.path().join("f"), "").unwrap();
    let mut events = Vec::new();
    for _ in 0..50 {
        events.extend(poll(&agent, &id).await.unwrap());
        if !events.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(events, owned(&[("f", EventType::Create)]));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(poll(&agent, &id).await.unwrap(), []);

    let remove = RemoveWatcherRequest {
        watcher_id: id.clone(),
    };
    let _: RemoveWatcherResponse = call(&agent, "RemoveWatcher", &remove).await.unwrap();
    assert_eq!(poll(&agent, &id).await.unwrap_err().code, Code::NotFound);
    let err = call::<_, RemoveWatcherResponse>(&agent, "RemoveWatcher", &remove)
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::NotFound);
}

/// Uploads `body` to `path` through `/files`, with `headers` added.
async fn upload(agent: &Agent, path: &Path, headers: &[(&str, &str)], body: &[u8]) {
    let url = format!("/files?path={}", path.to_str().unwrap());
    let mut all = vec![("content-type", "application/octet-stream")];
    all.extend_from_slice(headers);
    let (status, _, _) = support::send(agent, "POST", &url, &all, body.to_vec()).await;
    assert_eq!(status, StatusCode::OK);
}

/// What the SDK's `files.write` shows a watch, as under envd: the file is
/// created, given to the user (chmod), written, and its metadata set
/// (chmod again); an overwrite gives it to the user before truncating it.
#[tokio::test]
async fn an_upload_shows_as_under_envd() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let mut watch = Watch::started(&agent, dir.path(), false).await;
    let f = dir.path().join("f");
    let end = dir.path().join("end");
    upload(&agent, &f, &[], b"x").await;
    upload(&agent, &f, &[], b"overwritten").await;
    upload(
        &agent,
        &dir.path().join("g"),
        &[("x-metadata-k", "v")],
        b"y",
    )
    .await;
    fs::write(&end, "").unwrap();
    let events = watch.until(("end", EventType::Create)).await;
    use EventType::*;
    assert_eq!(
        events,
        owned(&[
            ("f", Create),
            ("f", Chmod),
            ("f", Write),
            ("f", Chmod),
            ("f", Write),
            ("g", Create),
            ("g", Chmod),
            ("g", Write),
            ("g", Chmod),
            ("end", Create),
        ])
    );
}

#[tokio::test]
async fn events_carry_the_entry_when_asked() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let request = CreateWatcherRequest {
        path: dir.path().to_str().unwrap().into(),
        include_entry: true,
        ..Default::default()
    };
    let created: CreateWatcherResponse = call(&agent, "CreateWatcher", &request).await.unwrap();
    let f = dir.path().join("f");
    upload(&agent, &f, &[("x-metadata-k", "v")], b"hello").await;
    fs::remove_file(&f).unwrap();
    let mut events = Vec::new();
    for _ in 0..50 {
        let req = GetWatcherEventsRequest {
            watcher_id: created.watcher_id.clone(),
        };
        let resp: GetWatcherEventsResponse = call(&agent, "GetWatcherEvents", &req).await.unwrap();
        events.extend(resp.events);
        if events.iter().any(|e| e.r#type() == EventType::Remove) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Stat-ed when read, so after the remove each may find nothing; a
    // remove never carries one.
    for e in &events {
        if let Some(entry) = &e.entry {
            assert_ne!(e.r#type(), EventType::Remove);
            assert_eq!(
                (entry.name.as_str(), entry.path.as_str()),
                ("f", f.to_str().unwrap())
            );
        }
    }
    assert_eq!(events.last().map(|e| e.r#type()), Some(EventType::Remove));
}

#[tokio::test]
async fn a_local_directory_is_watched_whether_network_mounts_are_allowed_or_not() {
    // (Which file systems count as network ones is a unit test of watch.rs.)
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    for allow_network_mounts in [false, true] {
        let req = CreateWatcherRequest {
            path: dir.path().to_str().unwrap().into(),
            allow_network_mounts,
            ..Default::default()
        };
        let made: CreateWatcherResponse = call(&agent, "CreateWatcher", &req).await.unwrap();
        assert!(made.watcher_id.starts_with('w'), "{}", made.watcher_id);
        let mut watch = Watch::open_with(&agent, dir.path(), false, allow_network_mounts).await;
        assert!(matches!(watch.next().await, Ok(Event::Start(_))));
    }
}
