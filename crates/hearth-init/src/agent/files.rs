//! envd's HTTP file transfer: `GET /files` downloads one file, `POST /files`
//! uploads a raw body or the `file` parts of a multipart form. Bodies are
//! streamed in both directions; files are opened with the user's
//! permissions (see `filesystem.rs`), so uploads and the directories made
//! for them belong to the user. An upload may be sent with
//! `Content-Encoding: gzip`, and a download is gzip-compressed when the
//! client accepts it; both are (de)compressed as the bytes flow. Once an
//! access token is set, a signed URL may stand in for it (see `auth.rs`).
//!
//! An upload goes as envd's: the file is given to the user (`chown`) before
//! an existing one is truncated, or right after a new one is created, then
//! written, then its metadata set (see `metadata.rs`). A directory watch
//! thus sees a new file's create, chmod and write, as it would under envd.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, fchown};
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::BytesMut;
use flate2::Compression;
use flate2::write::{GzDecoder, GzEncoder};
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use hearth_proto::connect::{CONTENT_TYPE_JSON, Code};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Agent;
use super::auth::{self, Operation, SignedUrl};
use super::filesystem::{Caller, FsError, make_dirs};
use super::metadata::{self, Metadata};

/// Bytes read from a file per body chunk.
const CHUNK: usize = 64 * 1024;

pub(super) fn routes() -> Router<Arc<Agent>> {
    Router::new().route("/files", get(download).post(upload))
}

#[derive(Debug, Default, Deserialize)]
struct Params {
    path: Option<String>,
    username: Option<String>,
    signature: Option<String>,
    signature_expiration: Option<i64>,
}

/// An error answered as envd's `{"code": status, "message": ...}`.
#[derive(Debug)]
struct HttpError {
    status: StatusCode,
    message: String,
}

impl HttpError {
    fn new(status: StatusCode, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            message: message.into(),
        }
    }
}

impl From<FsError> for HttpError {
    fn from(e: FsError) -> HttpError {
        let status = match e.code() {
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::InvalidArgument | Code::AlreadyExists | Code::FailedPrecondition => {
                StatusCode::BAD_REQUEST
            }
            Code::ResourceExhausted => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        HttpError::new(status, crate::error_chain(&e))
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        tracing::info!("/files failed: {}", self.message);
        let body = serde_json::json!({ "code": self.status.as_u16(), "message": self.message });
        (
            self.status,
            [(header::CONTENT_TYPE, CONTENT_TYPE_JSON)],
            body.to_string(),
        )
            .into_response()
    }
}

/// Once `/init` has set an access token, a transfer needs it in
/// X-Access-Token or a signed URL (the SDK's `download_url`/`upload_url`).
fn authorize(
    agent: &Agent,
    headers: &HeaderMap,
    params: &Params,
    operation: Operation,
) -> Result<(), HttpError> {
    let Some(token) = agent.settings().access_token else {
        return Ok(());
    };
    let url = SignedUrl {
        path: params.path.as_deref().unwrap_or(""),
        user: params.username.as_deref().unwrap_or(""),
        signature: params.signature.as_deref(),
        expiration: params.signature_expiration,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    auth::check_file_access(headers, &token, &url, operation, now)
        .map_err(|e| HttpError::new(StatusCode::UNAUTHORIZED, e.to_string()))
}

/// The user from `username`, else the Basic header, else the default user.
fn caller(agent: &Agent, headers: &HeaderMap, params: &Params) -> Result<Caller, HttpError> {
    let name = match params.username.as_deref().filter(|u| !u.is_empty()) {
        Some(name) => name.to_owned(),
        None => auth::basic_user(headers)
            .map_err(|e| HttpError::new(StatusCode::UNAUTHORIZED, e.message))?
            .unwrap_or_else(|| agent.settings().default_user),
    };
    Ok(Caller::new(agent, &name)?)
}

/// Whether `Accept-Encoding` lists gzip (with a weight above zero).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let zero = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            coding.eq_ignore_ascii_case("gzip") && !zero
        })
}

/// Takes the bytes a (de)compressor has written so far.
fn drain(buffer: &mut Vec<u8>) -> Option<Bytes> {
    (!buffer.is_empty()).then(|| Bytes::from(std::mem::take(buffer)))
}

async fn download(
    State(agent): State<Arc<Agent>>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Result<Response, HttpError> {
    authorize(&agent, &headers, &params, Operation::Read)?;
    let caller = caller(&agent, &headers, &params)?;
    let path = caller.resolve(params.path.as_deref().unwrap_or(""))?;
    let path_for_errors = path.clone();
    let (file, len) = caller
        .run(move || {
            let file = File::open(&path).map_err(FsError::io("Cannot open", &path))?;
            let meta = file.metadata().map_err(FsError::io("Cannot stat", &path))?;
            if meta.is_dir() {
                return Err(FsError::IsDirectory(path));
            }
            Ok((file, meta.len()))
        })
        .await?;
    let mut file = tokio::fs::File::from_std(file);
    let mut first = BytesMut::with_capacity(CHUNK);
    file.read_buf(&mut first)
        .await
        .map_err(|e| HttpError::from(FsError::io("Cannot read", &path_for_errors)(e)))?;
    let first = first.freeze();
    let compress = accepts_gzip(&headers) && compresses_well(&first);
    let rest = futures_util::stream::unfold(Some(file), |file| async {
        let mut file = file?;
        let mut buf = BytesMut::with_capacity(CHUNK);
        match file.read_buf(&mut buf).await {
            Ok(0) => None,
            Ok(_) => Some((Ok(buf.freeze()), Some(file))),
            Err(e) => Some((Err(e), None)),
        }
    });
    let chunks = futures_util::stream::once(async move { Ok(first) }).chain(rest);
    let octets = (header::CONTENT_TYPE, "application/octet-stream".to_owned());
    if compress {
        return Ok((
            [
                octets,
                (header::CONTENT_ENCODING, "gzip".to_owned()),
                (header::VARY, "accept-encoding".to_owned()),
            ],
            Body::from_stream(gzip(chunks)),
        )
            .into_response());
    }
    Ok((
        [octets, (header::CONTENT_LENGTH, len.to_string())],
        Body::from_stream(chunks),
    )
        .into_response())
}

/// Whether gzip pays for a download: its first chunk must shrink by at
/// least a tenth at the fastest level. The SDK accepts gzip on every
/// download, and compressing random or already compressed data costs far
/// more CPU (a whole core under software emulation) than it saves.
fn compresses_well(sample: &[u8]) -> bool {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder
        .write_all(sample)
        .and_then(|()| encoder.finish())
        .is_ok_and(|out| out.len() * 10 <= sample.len() * 9)
}

/// `chunks` gzip-compressed as they come.
fn gzip(
    chunks: impl Stream<Item = io::Result<Bytes>> + Send + 'static,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let encoder = GzEncoder::new(Vec::new(), Compression::fast());
    let state = Some((Box::pin(chunks), encoder));
    futures_util::stream::unfold(state, |state| async move {
        let (mut chunks, mut encoder) = state?;
        loop {
            match chunks.next().await {
                Some(Ok(chunk)) => {
                    if let Err(e) = encoder.write_all(&chunk) {
                        return Some((Err(e), None));
                    }
                    if let Some(out) = drain(encoder.get_mut()) {
                        return Some((Ok(out), Some((chunks, encoder))));
                    }
                }
                Some(Err(e)) => return Some((Err(e), None)),
                None => {
                    return match encoder.finish() {
                        Ok(mut rest) => drain(&mut rest).map(|out| (Ok(out), None)),
                        Err(e) => Some((Err(e), None)),
                    };
                }
            }
        }
    })
}

/// `chunks` of a gzip stream, decompressed as they come; a truncated or
/// corrupt stream ends with an error.
fn gunzip<S, E>(chunks: S) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let decoder = GzDecoder::new(Vec::new());
    let state = Some((Box::pin(chunks), decoder));
    futures_util::stream::unfold(state, |state| async move {
        let (mut chunks, mut decoder) = state?;
        loop {
            match chunks.next().await {
                Some(Ok(chunk)) => {
                    if let Err(e) = decoder.write_all(&chunk) {
                        return Some((Err(e), None));
                    }
                    if let Some(out) = drain(decoder.get_mut()) {
                        return Some((Ok(out), Some((chunks, decoder))));
                    }
                }
                Some(Err(e)) => return Some((Err(io::Error::other(e)), None)),
                None => {
                    return match decoder.finish() {
                        Ok(mut rest) => drain(&mut rest).map(|out| (Ok(out), None)),
                        Err(e) => Some((Err(e), None)),
                    };
                }
            }
        }
    })
}

/// envd's `EntryInfo` of an uploaded file.
#[derive(Debug, serde::Serialize)]
struct Uploaded {
    path: String,
    name: String,
    r#type: &'static str,
    /// What the file kept of the upload's metadata, read back from it.
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    metadata: HashMap<String, String>,
}

impl Uploaded {
    fn new(path: &Path, metadata: HashMap<String, String>) -> Uploaded {
        Uploaded {
            path: path.to_string_lossy().into_owned(),
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            r#type: "file",
            metadata,
        }
    }
}

async fn upload(
    State(agent): State<Arc<Agent>>,
    Query(params): Query<Params>,
    request: Request,
) -> Result<Response, HttpError> {
    let (parts, body) = request.into_parts();
    authorize(&agent, &parts.headers, &params, Operation::Write)?;
    let caller = caller(&agent, &parts.headers, &params)?;
    let metadata = metadata::from_headers(&parts.headers)
        .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let body: BoxStream<'static, io::Result<Bytes>> = match parts
        .headers
        .get(header::CONTENT_ENCODING)
    {
        None => body
            .into_data_stream()
            .map(|r| r.map_err(io::Error::other))
            .boxed(),
        Some(e) if e.as_bytes().eq_ignore_ascii_case(b"identity") => body
            .into_data_stream()
            .map(|r| r.map_err(io::Error::other))
            .boxed(),
        Some(e) if e.as_bytes().eq_ignore_ascii_case(b"gzip") => {
            gunzip(body.into_data_stream()).boxed()
        }
        Some(encoding) => {
            return Err(HttpError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "Content-Encoding '{}' is not supported; send the body as gzip or uncompressed",
                    String::from_utf8_lossy(encoding.as_bytes())
                ),
            ));
        }
    };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let mut uploaded = Vec::new();
    if media == "application/octet-stream" {
        let path = params.path.as_deref().ok_or_else(|| {
            HttpError::new(
                StatusCode::BAD_REQUEST,
                "A raw body upload needs the `path` query parameter",
            )
        })?;
        let path = caller.resolve(path)?;
        let kept = write_file(&caller, &path, body, &metadata).await?;
        uploaded.push(Uploaded::new(&path, kept));
    } else if media.starts_with("multipart/") {
        let bad = |e: multer::Error| {
            HttpError::new(
                StatusCode::BAD_REQUEST,
                format!("Malformed multipart body: {e}"),
            )
        };
        let boundary = multer::parse_boundary(&content_type).map_err(bad)?;
        let mut form = multer::Multipart::new(body, boundary);
        let mut seen = HashSet::new();
        while let Some(field) = form.next_field().await.map_err(bad)? {
            if field.name() != Some("file") {
                continue;
            }
            let path = match (&params.path, field.file_name()) {
                (Some(path), _) => path.clone(),
                (None, Some(name)) if !name.is_empty() => name.to_owned(),
                _ => {
                    return Err(HttpError::new(
                        StatusCode::BAD_REQUEST,
                        "A `file` part has no file name; name it or pass the `path` query parameter",
                    ));
                }
            };
            let path = caller.resolve(&path)?;
            if !seen.insert(path.clone()) {
                return Err(HttpError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "Several parts name '{}'; upload each path once per request",
                        path.display()
                    ),
                ));
            }
            // Every file of a form gets the same metadata, as under envd.
            let kept = write_file(&caller, &path, field, &metadata).await?;
            uploaded.push(Uploaded::new(&path, kept));
        }
    } else {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "Content type '{content_type}' is not supported; send multipart/form-data or application/octet-stream"
            ),
        ));
    }
    let body = serde_json::to_string(&uploaded).unwrap_or_else(|_| "[]".to_owned());
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE_JSON)], body).into_response())
}

/// Opens `path` for writing as the caller (creating missing parent
/// directories), copies `chunks` into it as they arrive, then makes
/// `metadata` its whole metadata. Answers the metadata the file kept: none
/// where its file system has no extended attributes.
async fn write_file<S, E>(
    caller: &Caller,
    path: &Path,
    chunks: S,
    metadata: &Metadata,
) -> Result<HashMap<String, String>, HttpError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let target = path.to_owned();
    let owner = (caller.user.uid, caller.user.gid);
    let file = caller.run(move || open_for_write(&target, owner)).await?;
    let mut file = tokio::fs::File::from_std(file);
    let mut chunks = std::pin::pin!(chunks);
    let write_error = |e: io::Error| HttpError::from(FsError::io("Cannot write", path)(e));
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| {
            HttpError::new(
                StatusCode::BAD_REQUEST,
                format!("Cannot read the upload of '{}': {e}", path.display()),
            )
        })?;
        file.write_all(&chunk).await.map_err(write_error)?;
    }
    file.flush().await.map_err(write_error)?;
    let file = file.into_std().await;
    let (target, metadata) = (path.to_owned(), metadata.clone());
    let kept = caller
        .run(move || {
            set_metadata(&file, &target, &metadata)?;
            Ok(metadata::read_open(&file))
        })
        .await?;
    Ok(kept)
}

/// Opens `path` for writing, truncated, and gives it to `owner` as envd
/// does: a new file right after it is created, an existing one before it
/// is truncated. The caller may only take what they own already, so
/// another's file they may write keeps its owner.
fn open_for_write(path: &Path, (uid, gid): (u32, u32)) -> Result<File, FsError> {
    if let Some(parent) = path.parent() {
        make_dirs(parent)?;
    }
    if fs::metadata(path).is_ok_and(|m| m.is_dir()) {
        return Err(FsError::IsDirectory(path.to_owned()));
    }
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o666)
        .open(path);
    match created {
        Ok(file) => {
            fchown(&file, Some(uid), Some(gid)).map_err(FsError::io("Cannot chown", path))?;
            return Ok(file);
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(FsError::io("Cannot create", path)(e)),
    }
    match std::os::unix::fs::chown(path, Some(uid), Some(gid)) {
        Err(e) if !matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOENT)) => {
            return Err(FsError::io("Cannot chown", path)(e));
        }
        _ => {}
    }
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o666)
        .open(path)
        .map_err(FsError::io("Cannot create", path))
}

/// Makes `metadata` the whole metadata of the uploaded `file`. On a file
/// system without extended attributes (e.g. `/proc`) the contents stay
/// written and the metadata is dropped, as envd drops it; the answer, read
/// back from the file, then shows none.
fn set_metadata(file: &File, path: &Path, metadata: &Metadata) -> Result<(), FsError> {
    match metadata::replace(file, metadata) {
        Err(e) if metadata::unsupported(&e) => {
            tracing::warn!(
                "'{}' keeps no extended attributes; its metadata is dropped",
                path.display()
            );
            Ok(())
        }
        result => result.map_err(FsError::io("Cannot set the metadata of", path)),
    }
}
