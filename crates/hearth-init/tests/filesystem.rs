//! The `filesystem.Filesystem` service and `/files`, driven over real HTTP
//! against the agent in agent-only mode. The tests run as root (as CI
//! does) so that acting as `nobody` can be checked.

mod support;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use bytes::Bytes;
use hearth_proto::connect::{
    CONTENT_TYPE_JSON, CONTENT_TYPE_PROTO, Code, ConnectError, JsonMessage,
};
use hearth_proto::filesystem::{
    EntryInfo, FileType, ListDirRequest, ListDirResponse, MakeDirRequest, MakeDirResponse,
    MoveRequest, MoveResponse, RemoveRequest, RemoveResponse, StatRequest, StatResponse,
};
use hyper::StatusCode;
use prost::Message;
use sha2::{Digest, Sha256};
use support::Agent;

/// Peak resident memory of the agent, in KiB.
fn peak_rss_kib(agent: &Agent) -> u64 {
    let status = fs::read_to_string(format!("/proc/{}/status", agent.child.id())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

struct Reply {
    status: StatusCode,
    content_type: String,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        assert_eq!(self.content_type, CONTENT_TYPE_JSON);
        serde_json::from_slice(&self.body).unwrap()
    }
}

async fn send(
    agent: &Agent,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    let (status, headers, body) = support::send(agent, method, path, headers, body).await;
    let content_type = headers
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    Reply {
        status,
        content_type,
        body,
    }
}

/// A unary `filesystem.Filesystem` call in binary protobuf, as `user`.
async fn call<Req: Message, Resp: Message + Default>(
    agent: &Agent,
    method: &str,
    req: &Req,
    user: Option<&str>,
) -> Result<Resp, ConnectError> {
    let auth;
    let mut headers = vec![("content-type", CONTENT_TYPE_PROTO)];
    if let Some(user) = user {
        auth = format!(
            "Basic {}",
            hearth_proto::connect::base64_encode(format!("{user}:").as_bytes())
        );
        headers.push(("authorization", &auth));
    }
    let path = format!("/filesystem.Filesystem/{method}");
    let reply = send(agent, "POST", &path, &headers, req.encode_to_vec()).await;
    if reply.status == StatusCode::OK {
        assert_eq!(reply.content_type, CONTENT_TYPE_PROTO);
        Ok(Resp::decode(reply.body).unwrap())
    } else {
        Err(ConnectError::from_unary_response(
            reply.status.as_u16(),
            &reply.body,
        ))
    }
}

fn p(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

async fn stat(agent: &Agent, path: &str, user: Option<&str>) -> Result<EntryInfo, ConnectError> {
    let req = StatRequest { path: path.into() };
    let resp: StatResponse = call(agent, "Stat", &req, user).await?;
    Ok(resp.entry.unwrap())
}

async fn list(agent: &Agent, path: &str, depth: u32) -> Result<Vec<EntryInfo>, ConnectError> {
    let req = ListDirRequest {
        path: path.into(),
        depth,
    };
    let resp: ListDirResponse = call(agent, "ListDir", &req, None).await?;
    Ok(resp.entries)
}

async fn make_dir(
    agent: &Agent,
    path: &str,
    user: Option<&str>,
) -> Result<EntryInfo, ConnectError> {
    let req = MakeDirRequest { path: path.into() };
    let resp: MakeDirResponse = call(agent, "MakeDir", &req, user).await?;
    Ok(resp.entry.unwrap())
}

async fn move_entry(agent: &Agent, from: &str, to: &str) -> Result<EntryInfo, ConnectError> {
    let req = MoveRequest {
        source: from.into(),
        destination: to.into(),
    };
    let resp: MoveResponse = call(agent, "Move", &req, None).await?;
    Ok(resp.entry.unwrap())
}

async fn remove(agent: &Agent, path: &str) -> Result<(), ConnectError> {
    let req = RemoveRequest { path: path.into() };
    call::<_, RemoveResponse>(agent, "Remove", &req, None).await?;
    Ok(())
}

/// A temporary directory that `nobody` may enter.
fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[tokio::test]
async fn stat_describes_files_dirs_and_symlinks() {
    let agent = Agent::start();
    let dir = open_tempdir();
    let file = dir.path().join("hello.txt");
    fs::write(&file, "hello").unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
    symlink(&file, dir.path().join("link")).unwrap();

    let entry = stat(&agent, &p(&file), None).await.unwrap();
    assert_eq!(entry.name, "hello.txt");
    assert_eq!(entry.path, p(&file));
    assert_eq!(entry.r#type(), FileType::File);
    assert_eq!(entry.size, 5);
    assert_eq!(entry.mode, 0o640);
    assert_eq!(entry.permissions, "-rw-r-----");
    assert_eq!(
        (entry.owner.as_str(), entry.group.as_str()),
        ("root", "root")
    );
    let mtime = fs::metadata(&file).unwrap().mtime();
    assert_eq!(entry.modified_time.unwrap().seconds, mtime);
    assert_eq!(entry.symlink_target, None);

    let link = stat(&agent, &p(&dir.path().join("link")), None)
        .await
        .unwrap();
    assert_eq!(link.r#type(), FileType::File);
    assert_eq!(link.permissions, "Lrwxrwxrwx");
    assert_eq!(link.symlink_target, Some(p(&file)));

    let d = stat(&agent, &p(dir.path()), None).await.unwrap();
    assert_eq!(d.r#type(), FileType::Directory);
    assert_eq!(d.permissions, "drwxr-xr-x");

    // Relative paths and `~` start at the user's home (root's: /root).
    let home = stat(&agent, "~", None).await.unwrap();
    assert_eq!(home.path, "/root");
    let rel = stat(&agent, "../etc/passwd", None).await.unwrap();
    assert_eq!(rel.path, "/etc/passwd");

    let missing = stat(&agent, &p(&dir.path().join("nope")), None).await;
    assert_eq!(missing.unwrap_err().code, Code::NotFound);
    let bad = stat(&agent, "~root/x", None).await;
    assert_eq!(bad.unwrap_err().code, Code::InvalidArgument);
}

#[tokio::test]
async fn make_dir_move_and_remove() {
    let agent = Agent::start();
    let dir = open_tempdir();
    let nested = dir.path().join("a/b/c");

    let made = make_dir(&agent, &p(&nested), None).await.unwrap();
    assert_eq!(
        (made.name.as_str(), made.r#type()),
        ("c", FileType::Directory)
    );
    assert!(nested.is_dir());
    let again = make_dir(&agent, &p(&nested), None).await;
    assert_eq!(again.unwrap_err().code, Code::AlreadyExists);
    let file = dir.path().join("f");
    fs::write(&file, "x").unwrap();
    let over_file = make_dir(&agent, &p(&file), None).await;
    assert_eq!(over_file.unwrap_err().code, Code::InvalidArgument);

    // Move creates the destination's parents.
    let dest = dir.path().join("new/parent/g");
    let moved = move_entry(&agent, &p(&file), &p(&dest)).await.unwrap();
    assert_eq!((moved.path, moved.size), (p(&dest), 1));
    assert!(!file.exists());
    assert_eq!(fs::read_to_string(&dest).unwrap(), "x");
    let gone = move_entry(&agent, &p(&file), &p(&dest)).await;
    assert_eq!(gone.unwrap_err().code, Code::NotFound);
    let renamed = move_entry(&agent, &p(&dir.path().join("a")), &p(&dir.path().join("z")))
        .await
        .unwrap();
    assert_eq!(renamed.r#type(), FileType::Directory);
    assert!(dir.path().join("z/b/c").is_dir());

    remove(&agent, &p(&dest)).await.unwrap();
    assert!(!dest.exists());
    remove(&agent, &p(&dir.path().join("z"))).await.unwrap();
    assert!(!dir.path().join("z").exists());
    // As envd: removing what is not there succeeds.
    remove(&agent, &p(&dir.path().join("z"))).await.unwrap();
}

#[tokio::test]
async fn list_dir_by_depth_in_name_order() {
    let agent = Agent::start();
    let dir = open_tempdir();
    fs::create_dir_all(dir.path().join("b/inner/deep")).unwrap();
    fs::write(dir.path().join("a.txt"), "a").unwrap();
    fs::write(dir.path().join("b/inner/x"), "x").unwrap();
    symlink(dir.path().join("b"), dir.path().join("c-link")).unwrap();
    let root = p(dir.path());

    let names = |entries: &[EntryInfo]| {
        entries
            .iter()
            .map(|e| e.path.strip_prefix(&root).unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let one = list(&agent, &root, 0).await.unwrap();
    assert_eq!(names(&one), ["/a.txt", "/b", "/c-link"]);
    assert_eq!(one[2].r#type(), FileType::Directory);
    assert_eq!(one[2].symlink_target, Some(p(&dir.path().join("b"))));
    let three = list(&agent, &root, 3).await.unwrap();
    assert_eq!(
        names(&three),
        [
            "/a.txt",
            "/b",
            "/b/inner",
            "/b/inner/deep",
            "/b/inner/x",
            "/c-link"
        ]
    );
    // Through a symlink, entries keep the path that was asked for.
    let via_link = list(&agent, &format!("{root}/c-link"), 1).await.unwrap();
    assert_eq!(names(&via_link), ["/c-link/inner"]);

    let on_file = list(&agent, &format!("{root}/a.txt"), 1).await;
    assert_eq!(on_file.unwrap_err().code, Code::InvalidArgument);
    let missing = list(&agent, &format!("{root}/nope"), 1).await;
    assert_eq!(missing.unwrap_err().code, Code::NotFound);
}

#[tokio::test]
async fn lists_ten_thousand_entries() {
    let agent = Agent::start();
    let dir = open_tempdir();
    for i in 0..10_000 {
        fs::write(dir.path().join(format!("f{i:05}")), "").unwrap();
    }
    let entries = list(&agent, &p(dir.path()), 1).await.unwrap();
    assert_eq!(entries.len(), 10_000);
    assert_eq!(entries[0].name, "f00000");
    assert_eq!(entries[9_999].name, "f09999");
    assert!(entries.iter().all(|e| e.r#type() == FileType::File));
}

#[tokio::test]
async fn operations_run_with_the_users_permissions() {
    let agent = Agent::start();
    let dir = open_tempdir();
    let nobody = Some("nobody");

    let denied = make_dir(&agent, &p(&dir.path().join("x")), nobody).await;
    assert_eq!(denied.unwrap_err().code, Code::PermissionDenied);
    let private = dir.path().join("private");
    fs::create_dir(&private).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(private.join("secret"), "s").unwrap();
    let hidden = stat(&agent, &p(&private.join("secret")), nobody).await;
    assert_eq!(hidden.unwrap_err().code, Code::PermissionDenied);
    // Root itself may.
    stat(&agent, &p(&private.join("secret")), None)
        .await
        .unwrap();

    let shared = dir.path().join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    let made = make_dir(&agent, &p(&shared.join("n/m")), nobody)
        .await
        .unwrap();
    assert_eq!(made.owner, "nobody");
    assert_eq!(fs::metadata(shared.join("n")).unwrap().uid(), 65534);
    assert_eq!(fs::metadata(shared.join("n/m")).unwrap().uid(), 65534);

    let ghost = stat(&agent, "/", Some("ghost-user")).await;
    assert_eq!(ghost.unwrap_err().code, Code::Unauthenticated);
}

#[tokio::test]
async fn json_codec_works_too() {
    let agent = Agent::start();
    let dir = open_tempdir();
    fs::write(dir.path().join("j"), "json").unwrap();
    let body = StatRequest {
        path: p(&dir.path().join("j")),
    }
    .encode_json();
    let headers = [("content-type", CONTENT_TYPE_JSON)];
    let reply = send(
        &agent,
        "POST",
        "/filesystem.Filesystem/Stat",
        &headers,
        body,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let json = reply.json();
    assert_eq!(json["entry"]["type"], "FILE_TYPE_FILE");
    assert_eq!(json["entry"]["size"], "4");
    let entry = StatResponse::decode_json(&reply.body)
        .unwrap()
        .entry
        .unwrap();
    assert_eq!(entry.name, "j");
}

/// `len` bytes of a deterministic pseudo-random sequence.
fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15_u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn query(path: &Path) -> String {
    // Temp paths hold only characters that need no escaping.
    format!("/files?path={}", p(path))
}

#[tokio::test]
async fn fifty_mebibytes_round_trip_streamed() {
    let agent = Agent::start();
    let dir = open_tempdir();
    let data = noise(50 << 20);
    let digest = Sha256::digest(&data);
    let target = dir.path().join("deep/er/big.bin");
    let octets = [("content-type", "application/octet-stream")];

    let up = send(&agent, "POST", &query(&target), &octets, data).await;
    assert_eq!(up.status, StatusCode::OK, "{:?}", up.body);
    let uploaded = up.json();
    assert_eq!(uploaded[0]["path"], p(&target));
    assert_eq!(uploaded[0]["name"], "big.bin");
    assert_eq!(uploaded[0]["type"], "file");
    assert_eq!(Sha256::digest(fs::read(&target).unwrap()), digest);

    let down = send(&agent, "GET", &query(&target), &[], vec![]).await;
    assert_eq!(down.status, StatusCode::OK);
    assert_eq!(down.content_type, "application/octet-stream");
    assert_eq!(down.body.len(), 50 << 20);
    assert_eq!(Sha256::digest(&down.body), digest);

    // Neither direction held the file: the agent's peak stays far below it.
    let peak = peak_rss_kib(&agent);
    assert!(peak < 40 * 1024, "agent peaked at {peak} KiB");
}

#[tokio::test]
async fn multipart_uploads_each_file_part() {
    let agent = Agent::start();
    let dir = open_tempdir();
    let (one, two) = (dir.path().join("one.txt"), dir.path().join("sub/two.bin"));
    let boundary = "hearth-test-boundary";
    let mut body = Vec::new();
    for (name, path, content) in [
        ("file", p(&one), &b"first file"[..]),
        ("note", "ignored".to_owned(), &b"not a file"[..]),
        ("file", p(&two), &[0u8, 1, 2, 255][..]),
    ] {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{path}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let headers = [("content-type", content_type.as_str())];

    let reply = send(&agent, "POST", "/files", &headers, body.clone()).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let paths: Vec<_> = reply
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].clone())
        .collect();
    assert_eq!(paths, [p(&one), p(&two)]);
    assert_eq!(fs::read(&one).unwrap(), b"first file");
    assert_eq!(fs::read(&two).unwrap(), [0, 1, 2, 255]);

    // With `path` given, both parts would land on one file: refused.
    let url = query(&dir.path().join("same"));
    let reply = send(&agent, "POST", &url, &headers, body).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["code"], 400);
}

#[tokio::test]
async fn uploads_belong_to_the_user() {
    let agent = Agent::start();
    let dir = open_tempdir();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let target = dir.path().join("made/by/nobody.txt");
    let url = format!("{}&username=nobody", query(&target));
    let octets = [("content-type", "application/octet-stream")];
    let reply = send(&agent, "POST", &url, &octets, b"mine".to_vec()).await;
    assert_eq!(reply.status, StatusCode::OK);
    for path in [
        dir.path().join("made"),
        dir.path().join("made/by"),
        target.clone(),
    ] {
        assert_eq!(
            fs::metadata(&path).unwrap().uid(),
            65534,
            "{}",
            path.display()
        );
    }

    // nobody cannot write where only root may.
    let root_only = open_tempdir();
    let url = format!("{}&username=nobody", query(&root_only.path().join("f")));
    let reply = send(&agent, "POST", &url, &octets, b"x".to_vec()).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.json()["code"], 403);
}

#[tokio::test]
async fn download_and_upload_errors() {
    let agent = Agent::start();
    let dir = open_tempdir();
    let missing = send(&agent, "GET", &query(&dir.path().join("nope")), &[], vec![]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["code"], 404);
    assert!(missing.json()["message"].as_str().unwrap().contains("nope"));

    let is_dir = send(&agent, "GET", &query(dir.path()), &[], vec![]).await;
    assert_eq!(is_dir.status, StatusCode::BAD_REQUEST);

    let secret = dir.path().join("secret");
    fs::write(&secret, "s").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let url = format!("{}&username=nobody", query(&secret));
    let denied = send(&agent, "GET", &url, &[], vec![]).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);

    let url = format!("{}&username=ghost-user", query(&secret));
    let unknown = send(&agent, "GET", &url, &[], vec![]).await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);

    let octets = [("content-type", "application/octet-stream")];
    let no_path = send(&agent, "POST", "/files", &octets, b"x".to_vec()).await;
    assert_eq!(no_path.status, StatusCode::BAD_REQUEST);
    let onto_dir = send(&agent, "POST", &query(dir.path()), &octets, b"x".to_vec()).await;
    assert_eq!(onto_dir.status, StatusCode::BAD_REQUEST);
    let text = [("content-type", "text/plain")];
    let wrong_type = send(&agent, "POST", &query(&secret), &text, b"x".to_vec()).await;
    assert_eq!(wrong_type.status, StatusCode::BAD_REQUEST);
    assert_eq!(fs::read_to_string(&secret).unwrap(), "s");
}

/// The `metadata` of an upload's answer.
fn uploaded_metadata(reply: &Reply) -> serde_json::Value {
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply.json()[0]
        .get("metadata")
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn upload_metadata_is_kept_as_envd_keeps_it() {
    let agent = Agent::start();
    let dir = open_tempdir();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let file = dir.path().join("meta.txt");
    let octets = ("content-type", "application/octet-stream");
    let tagged = [
        octets,
        ("x-metadata-Author", "Ann"),
        ("X-Metadata-purpose", "a test"),
    ];
    let up = send(&agent, "POST", &query(&file), &tagged, b"one".to_vec()).await;
    let both = map(&[("author", "Ann"), ("purpose", "a test")]);
    assert_eq!(
        uploaded_metadata(&up),
        serde_json::json!({ "author": "Ann", "purpose": "a test" })
    );
    // envd's names: `user.e2b.` and the lowercase key.
    assert_eq!(
        xattr::get(&file, "user.e2b.author").unwrap().as_deref(),
        Some(&b"Ann"[..])
    );
    assert_eq!(stat(&agent, &p(&file), None).await.unwrap().metadata, both);
    let listed = list(&agent, &p(dir.path()), 1).await.unwrap();
    assert_eq!(listed[0].metadata, both);

    // A rename keeps it; JSON shows it too.
    let moved = dir.path().join("moved.txt");
    let entry = move_entry(&agent, &p(&file), &p(&moved)).await.unwrap();
    assert_eq!(entry.metadata, both);
    let body = format!(r#"{{"path":"{}"}}"#, p(&moved)).into_bytes();
    let json = [("content-type", CONTENT_TYPE_JSON)];
    let reply = send(&agent, "POST", "/filesystem.Filesystem/Stat", &json, body).await;
    assert_eq!(
        reply.json()["entry"]["metadata"],
        serde_json::json!({ "author": "Ann", "purpose": "a test" })
    );

    // An upload replaces the whole set; one without metadata clears it.
    let other = [octets, ("x-metadata-author", "Bob")];
    let up = send(&agent, "POST", &query(&moved), &other, b"two".to_vec()).await;
    assert_eq!(
        uploaded_metadata(&up),
        serde_json::json!({ "author": "Bob" })
    );
    let entry = stat(&agent, &p(&moved), None).await.unwrap();
    assert_eq!(entry.metadata, map(&[("author", "Bob")]));
    let up = send(&agent, "POST", &query(&moved), &[octets], b"three".to_vec()).await;
    assert_eq!(uploaded_metadata(&up), serde_json::Value::Null);
    assert!(
        stat(&agent, &p(&moved), None)
            .await
            .unwrap()
            .metadata
            .is_empty()
    );
    assert_eq!(fs::read_to_string(&moved).unwrap(), "three");

    // As another user, on a file they create.
    let theirs = dir.path().join("theirs.txt");
    let url = format!("{}&username=nobody", query(&theirs));
    let up = send(&agent, "POST", &url, &tagged, b"x".to_vec()).await;
    assert_eq!(
        uploaded_metadata(&up),
        serde_json::json!({ "author": "Ann", "purpose": "a test" })
    );
    assert_eq!(fs::metadata(&theirs).unwrap().uid(), 65534);

    // Refused before anything is written: not printable ASCII, too much.
    let fresh = dir.path().join("fresh.txt");
    let accented = [octets, ("x-metadata-k", "café")];
    let reply = send(&agent, "POST", &query(&fresh), &accented, b"x".to_vec()).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("printable US-ASCII"),
        "{:?}",
        reply.body
    );
    let big = "v".repeat(4096);
    let large = [octets, ("x-metadata-k", big.as_str())];
    let reply = send(&agent, "POST", &query(&fresh), &large, b"x".to_vec()).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(!fresh.exists());
}

#[tokio::test]
async fn multipart_upload_gives_each_file_the_metadata() {
    let agent = Agent::start();
    let dir = open_tempdir();
    let boundary = "meta-boundary";
    let mut body = Vec::new();
    for name in ["a.txt", "b.txt"] {
        let path = p(&dir.path().join(name));
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path}\"\r\n\r\n{name}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let headers = [
        ("content-type", content_type.as_str()),
        ("x-metadata-batch", "7"),
    ];
    let reply = send(&agent, "POST", "/files", &headers, body).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    for entry in reply.json().as_array().unwrap() {
        assert_eq!(entry["metadata"], serde_json::json!({ "batch": "7" }));
    }
    for name in ["a.txt", "b.txt"] {
        let entry = stat(&agent, &p(&dir.path().join(name)), None)
            .await
            .unwrap();
        assert_eq!(entry.metadata, map(&[("batch", "7")]));
    }
}
