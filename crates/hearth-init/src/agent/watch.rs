//! Directory watches of the `filesystem.Filesystem` service: `WatchDir`
//! streams events as they happen; `CreateWatcher`, `GetWatcherEvents` and
//! `RemoveWatcher` buffer them for a client that polls.
//!
//! One inotify instance per watch, non-blocking and driven by tokio. The
//! watched directory is checked and watched with the caller's permissions;
//! with `recursive`, subdirectories are watched too, including those created
//! or moved in later. A directory on a network file system is refused unless
//! the request allows network mounts, as envd refuses it. Events are
//! reported as envd reports fsnotify's: the name relative to the watched
//! directory, one event per kind, a rename as `RENAME` of the old name then
//! `CREATE` of the new one. (A file the SDK writes thus shows as `CREATE`,
//! `CHMOD`, `WRITE`: see `files.rs`.)

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hearth_proto::connect::{Code, ConnectError};
use hearth_proto::filesystem::watch_dir_response::{Event, KeepAlive, StartEvent};
use hearth_proto::filesystem::{
    CreateWatcherRequest, CreateWatcherResponse, EventType, FilesystemEvent,
    GetWatcherEventsRequest, GetWatcherEventsResponse, RemoveWatcherRequest, RemoveWatcherResponse,
    WatchDirRequest, WatchDirResponse,
};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use nix::sys::statfs::statfs;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::Agent;
use super::connect::{self, Codec};
use super::filesystem::{Caller, FsError, Names, entry_info};

/// Events buffered per `WatchDir` stream before reading waits for the client.
const FRAME_BUFFER: usize = 64;
/// Events a polled watcher keeps between two `GetWatcherEvents`; later
/// ones are dropped until the client collects.
const MAX_BUFFERED: usize = 100_000;

/// What every watched directory reports.
const MASK: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MODIFY)
    .union(AddWatchFlags::IN_ATTRIB)
    .union(AddWatchFlags::IN_ONLYDIR);

/// `statfs` types of the network file systems a watch refuses unless asked
/// to, as envd: NFS, CIFS, SMB, SMB2, FUSE.
const NETWORK_FS: [i128; 5] = [0x6969, 0xFF53_4D42, 0x517B, 0xFE53_4D42, 0x6573_5546];

/// Whether `statfs` type `kind` is a network file system's.
fn is_network_fs(kind: i128) -> bool {
    NETWORK_FS.contains(&kind)
}

/// inotify bits and the event each becomes, in the order envd checks them.
const KINDS: [(AddWatchFlags, EventType); 5] = [
    (
        AddWatchFlags::IN_CREATE.union(AddWatchFlags::IN_MOVED_TO),
        EventType::Create,
    ),
    (AddWatchFlags::IN_MOVED_FROM, EventType::Rename),
    (AddWatchFlags::IN_ATTRIB, EventType::Chmod),
    (AddWatchFlags::IN_MODIFY, EventType::Write),
    (AddWatchFlags::IN_DELETE, EventType::Remove),
];

pub(super) fn routes() -> Router<Arc<Agent>> {
    Router::new()
        .route("/filesystem.Filesystem/WatchDir", post(watch_dir))
        .route("/filesystem.Filesystem/CreateWatcher", post(create_watcher))
        .route(
            "/filesystem.Filesystem/GetWatcherEvents",
            post(get_watcher_events),
        )
        .route("/filesystem.Filesystem/RemoveWatcher", post(remove_watcher))
}

/// The polled watchers, by id.
#[derive(Debug, Default)]
pub(super) struct Watchers {
    next_id: AtomicU64,
    table: Mutex<HashMap<String, Polled>>,
}

#[derive(Debug)]
struct Polled {
    events: Arc<Mutex<Vec<FilesystemEvent>>>,
    task: AbortHandle,
}

impl Watchers {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Polled>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn unknown_watcher(id: &str) -> ConnectError {
    ConnectError::new(
        Code::NotFound,
        format!("Watcher '{id}' does not exist; create one with CreateWatcher"),
    )
}

/// The inotify descriptor, as tokio wants it.
struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// A watched directory tree and the inotify instance reporting on it.
struct Tree {
    inotify: AsyncFd<Fd>,
    root: PathBuf,
    recursive: bool,
    include_entry: bool,
    names: Names,
    /// Each watched directory, relative to `root` (empty for the root).
    dirs: HashMap<WatchDescriptor, PathBuf>,
}

/// Checks that `root` is a directory (on a local file system unless
/// `network` allows otherwise) and watches it (and with `recursive` its
/// subdirectories).
fn open(
    root: &Path,
    recursive: bool,
    network: bool,
) -> Result<(Inotify, HashMap<WatchDescriptor, PathBuf>), FsError> {
    let meta = fs::metadata(root).map_err(FsError::io("Cannot watch", root))?;
    if !meta.is_dir() {
        return Err(FsError::NotDirectory(root.to_owned()));
    }
    if !network {
        let fs = statfs(root)
            .map_err(|e| FsError::io("Cannot find the file system of", root)(e.into()))?;
        if is_network_fs(i128::from(fs.filesystem_type().0)) {
            return Err(FsError::NetworkMount(root.to_owned()));
        }
    }
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        .map_err(|e| FsError::io("Cannot watch", root)(e.into()))?;
    let mut dirs = HashMap::new();
    let wd = inotify
        .add_watch(root, MASK)
        .map_err(|e| FsError::io("Cannot watch", root)(e.into()))?;
    dirs.insert(wd, PathBuf::new());
    if recursive {
        add_children(&inotify, root, Path::new(""), &mut dirs);
    }
    Ok((inotify, dirs))
}

/// Watches the subdirectories of `root/rel`, depth first. A directory that
/// vanishes or cannot be read meanwhile is skipped.
fn add_children(
    inotify: &Inotify,
    root: &Path,
    rel: &Path,
    dirs: &mut HashMap<WatchDescriptor, PathBuf>,
) {
    let Ok(entries) = fs::read_dir(root.join(rel)) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let child = rel.join(entry.file_name());
        add_dir(inotify, root, &child, dirs);
    }
}

fn add_dir(
    inotify: &Inotify,
    root: &Path,
    rel: &Path,
    dirs: &mut HashMap<WatchDescriptor, PathBuf>,
) {
    match inotify.add_watch(&root.join(rel), MASK) {
        Ok(wd) => {
            dirs.insert(wd, rel.to_owned());
            add_children(inotify, root, rel, dirs);
        }
        Err(e) => tracing::debug!("cannot watch '{}': {e}", rel.display()),
    }
}

/// Everything under `root/rel` as the events its making would have given:
/// a create for each entry, and a write for each file with contents.
fn already_there(root: &Path, rel: &Path) -> Vec<(PathBuf, EventType)> {
    let mut events = Vec::new();
    let mut dirs = vec![rel.to_owned()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(root.join(&dir)) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(fs::DirEntry::file_name);
        for entry in entries {
            let path = dir.join(entry.file_name());
            events.push((path.clone(), EventType::Create));
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => dirs.push(path),
                Ok(meta) if meta.is_file() && meta.len() > 0 => {
                    events.push((path, EventType::Write));
                }
                _ => {}
            }
        }
    }
    events
}

impl Tree {
    /// The next events; an empty batch when what was read is not reported.
    async fn next(&mut self) -> io::Result<Vec<FilesystemEvent>> {
        let read = loop {
            let mut guard = self.inotify.readable().await?;
            match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(io::Error::from)) {
                Ok(read) => break read?,
                Err(_would_block) => {}
            }
        };
        Ok(read.into_iter().flat_map(|e| self.translate(e)).collect())
    }

    fn translate(&mut self, event: InotifyEvent) -> Vec<FilesystemEvent> {
        let mask = event.mask;
        if mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            tracing::warn!(
                "inotify queue of '{}' overflowed; events were lost",
                self.root.display()
            );
            return Vec::new();
        }
        if mask.contains(AddWatchFlags::IN_IGNORED) {
            self.dirs.remove(&event.wd);
            return Vec::new();
        }
        // Events about a watched directory itself are reported by its parent.
        let (Some(dir), Some(name)) = (self.dirs.get(&event.wd), event.name) else {
            return Vec::new();
        };
        let rel = dir.join(name);
        let mut found = Vec::new();
        if mask.contains(AddWatchFlags::IN_ISDIR) {
            if mask.contains(AddWatchFlags::IN_MOVED_FROM) {
                self.forget(&rel);
            }
            if self.recursive
                && mask.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
            {
                add_dir(&self.inotify.get_ref().0, &self.root, &rel, &mut self.dirs);
                // What appeared in the new directory before its watch did
                // made no event: report it now.
                found = already_there(&self.root, &rel);
            }
        }
        let mut events: Vec<FilesystemEvent> = KINDS
            .iter()
            .filter(|(bits, _)| mask.intersects(*bits))
            .map(|&(_, kind)| self.event(&rel, kind))
            .collect();
        events.extend(found.iter().map(|(path, kind)| self.event(path, *kind)));
        events
    }

    fn event(&self, rel: &Path, kind: EventType) -> FilesystemEvent {
        let full = self.root.join(rel);
        FilesystemEvent {
            name: rel.to_string_lossy().into_owned(),
            r#type: kind as i32,
            entry: (self.include_entry && !matches!(kind, EventType::Remove | EventType::Rename))
                .then(|| entry_info(&full, &full, &self.names).ok())
                .flatten(),
        }
    }

    /// Stops watching `rel` and what is under it (moved away).
    fn forget(&mut self, rel: &Path) {
        let inotify = &self.inotify.get_ref().0;
        self.dirs.retain(|wd, dir| {
            let under = dir.starts_with(rel);
            if under {
                let _ = inotify.rm_watch(*wd);
            }
            !under
        });
    }
}

/// What a watch request asks for.
struct WatchSpec<'a> {
    path: &'a str,
    recursive: bool,
    include_entry: bool,
    allow_network_mounts: bool,
}

impl<'a> From<&'a WatchDirRequest> for WatchSpec<'a> {
    fn from(r: &'a WatchDirRequest) -> Self {
        WatchSpec {
            path: &r.path,
            recursive: r.recursive,
            include_entry: r.include_entry,
            allow_network_mounts: r.allow_network_mounts,
        }
    }
}

impl<'a> From<&'a CreateWatcherRequest> for WatchSpec<'a> {
    fn from(r: &'a CreateWatcherRequest) -> Self {
        WatchSpec {
            path: &r.path,
            recursive: r.recursive,
            include_entry: r.include_entry,
            allow_network_mounts: r.allow_network_mounts,
        }
    }
}

/// Resolves the caller and watches what `request` names for them.
async fn open_tree(
    agent: &Agent,
    headers: &HeaderMap,
    request: WatchSpec<'_>,
) -> Result<Tree, ConnectError> {
    let WatchSpec {
        path,
        recursive,
        include_entry,
        allow_network_mounts,
    } = request;
    let user = super::request_user(headers, &agent.settings())?;
    let caller = Caller::new(agent, &user).map_err(|e| e.to_connect())?;
    let root = caller.resolve(path).map_err(|e| e.to_connect())?;
    let target = root.clone();
    let (inotify, dirs) = caller
        .run(move || open(&target, recursive, allow_network_mounts))
        .await
        .map_err(|e| e.to_connect())?;
    // SAFETY: `Fd` owns the inotify descriptor, which stays open until the
    // `AsyncFd` drops it, and always reports that same descriptor.
    let inotify = unsafe { AsyncFd::register_with_interest(Fd(inotify), Interest::READABLE) };
    let inotify = inotify.map_err(|e| {
        ConnectError::new(
            Code::Internal,
            format!("Cannot poll the inotify descriptor: {e}"),
        )
    })?;
    Ok(Tree {
        inotify,
        root,
        recursive,
        include_entry,
        names: caller.names(),
        dirs,
    })
}

async fn watch_dir(State(agent): State<Arc<Agent>>, headers: HeaderMap, body: Bytes) -> Response {
    let connect::StreamCall {
        codec,
        request,
        deadline,
    } = match connect::stream_call::<WatchDirRequest>(&headers, &body) {
        Ok(call) => call,
        Err(response) => return *response,
    };
    let opened = open_tree(&agent, &headers, WatchSpec::from(&request)).await;
    let tree = match opened {
        Ok(tree) => tree,
        Err(e) => {
            tracing::info!("watch failed: {e}");
            return connect::stream_error(codec, &e);
        }
    };
    let (tx, rx) = mpsc::channel(FRAME_BUFFER);
    tokio::spawn(forward(tree, tx));
    let pacing = connect::Pacing {
        keepalive: Event::Keepalive(KeepAlive {}),
        interval: connect::keepalive_interval(&headers),
        deadline,
    };
    connect::stream_response(codec, rx, wrap, pacing)
}

fn wrap(event: Event) -> WatchDirResponse {
    WatchDirResponse { event: Some(event) }
}

/// Sends the start event, then the tree's events until the client is gone.
async fn forward(mut tree: Tree, tx: mpsc::Sender<Event>) {
    if tx.send(Event::Start(StartEvent {})).await.is_err() {
        return;
    }
    loop {
        let batch = tokio::select! {
            () = tx.closed() => return,
            batch = tree.next() => batch,
        };
        match batch {
            Ok(events) => {
                for event in events {
                    if tx.send(Event::Filesystem(event)).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::warn!("reading the watch of '{}' failed: {e}", tree.root.display());
                return;
            }
        }
    }
}

/// Decodes a unary request and answers what `op` returns.
async fn unary<Req: connect::Wire, Resp: connect::Wire>(
    headers: &HeaderMap,
    body: &[u8],
    op: impl AsyncFnOnce(Req) -> Result<Resp, ConnectError>,
) -> Response {
    let (codec, request): (Codec, Req) = match connect::unary_request(headers, body) {
        Ok(decoded) => decoded,
        Err(rejection) => return rejection.into_response(),
    };
    let result = op(request).await;
    if let Err(e) = &result {
        tracing::info!("watcher request failed: {e}");
    }
    connect::unary_response(codec, result)
}

async fn create_watcher(
    State(agent): State<Arc<Agent>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    unary(&headers, &body, async |req: CreateWatcherRequest| {
        let mut tree = open_tree(&agent, &headers, WatchSpec::from(&req)).await?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let buffer = events.clone();
        let task = tokio::spawn(async move {
            loop {
                let batch = match tree.next().await {
                    Ok(batch) => batch,
                    Err(e) => {
                        tracing::warn!(
                            "reading the watch of '{}' failed: {e}",
                            tree.root.display()
                        );
                        return;
                    }
                };
                let mut buffer = buffer.lock().unwrap_or_else(PoisonError::into_inner);
                let room = MAX_BUFFERED.saturating_sub(buffer.len());
                if batch.len() > room {
                    tracing::warn!(
                        "watcher buffer is full; dropping events until they are collected"
                    );
                }
                buffer.extend(batch.into_iter().take(room));
            }
        });
        let id = format!(
            "w{}",
            agent.watchers.next_id.fetch_add(1, Ordering::Relaxed) + 1
        );
        let polled = Polled {
            events,
            task: task.abort_handle(),
        };
        agent.watchers.table().insert(id.clone(), polled);
        Ok(CreateWatcherResponse { watcher_id: id })
    })
    .await
}

async fn get_watcher_events(
    State(agent): State<Arc<Agent>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    unary(&headers, &body, async |req: GetWatcherEventsRequest| {
        let table = agent.watchers.table();
        let polled = table
            .get(&req.watcher_id)
            .ok_or_else(|| unknown_watcher(&req.watcher_id))?;
        let events =
            std::mem::take(&mut *polled.events.lock().unwrap_or_else(PoisonError::into_inner));
        Ok(GetWatcherEventsResponse { events })
    })
    .await
}

async fn remove_watcher(
    State(agent): State<Arc<Agent>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    unary(&headers, &body, async |req: RemoveWatcherRequest| {
        let polled = agent
            .watchers
            .table()
            .remove(&req.watcher_id)
            .ok_or_else(|| unknown_watcher(&req.watcher_id))?;
        polled.task.abort();
        Ok(RemoveWatcherResponse {})
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn what_a_new_directory_holds_before_its_watch_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (inotify, dirs) = open(dir.path(), true, false).unwrap();
        // SAFETY: `Fd` owns the inotify descriptor, which stays open until
        // the `AsyncFd` drops it, and always reports that same descriptor.
        let inotify =
            unsafe { AsyncFd::register_with_interest(Fd(inotify), Interest::READABLE) }.unwrap();
        let mut tree = Tree {
            inotify,
            root: dir.path().to_owned(),
            recursive: true,
            include_entry: false,
            names: Names::default(),
            dirs,
        };
        // All of it made before the tree reads the event of `new`, so
        // before `new` and `new/deeper` are watched.
        fs::create_dir_all(dir.path().join("new/deeper")).unwrap();
        fs::write(dir.path().join("new/deeper/g"), "x").unwrap();
        fs::write(dir.path().join("new/empty"), "").unwrap();
        let events: Vec<(String, i32)> = tree
            .next()
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.r#type))
            .collect();
        let create = EventType::Create as i32;
        assert_eq!(
            events,
            [
                ("new".to_owned(), create),
                ("new/deeper".to_owned(), create),
                ("new/empty".to_owned(), create),
                ("new/deeper/g".to_owned(), create),
                ("new/deeper/g".to_owned(), EventType::Write as i32),
            ]
        );
        // And both are watched from now on.
        fs::write(dir.path().join("new/deeper/h"), "").unwrap();
        let events = tree.next().await.unwrap();
        assert_eq!(events[0].name, "new/deeper/h");
    }

    #[test]
    fn network_file_systems_are_told_by_their_statfs_type() {
        // NFS, CIFS, SMB, SMB2, FUSE, as in linux/magic.h.
        for kind in [0x6969, 0xFF53_4D42, 0x517B, 0xFE53_4D42, 0x6573_5546] {
            assert!(is_network_fs(kind), "{kind:#x}");
        }
        // ext4, tmpfs, overlayfs, btrfs, xfs.
        for kind in [0xEF53, 0x0102_1994, 0x794C_7630, 0x9123_683E, 0x5846_5342] {
            assert!(!is_network_fs(kind), "{kind:#x}");
        }
        let dir = tempfile::tempdir().unwrap();
        let kind = statfs(dir.path()).unwrap().filesystem_type().0;
        assert!(!is_network_fs(i128::from(kind)));
    }

    #[test]
    fn watches_existing_subdirectories_when_recursive() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join("f"), "").unwrap();
        let (_, dirs) = open(dir.path(), true, false).unwrap();
        let mut watched: Vec<_> = dirs.into_values().collect();
        watched.sort();
        assert_eq!(
            watched,
            [PathBuf::new(), PathBuf::from("a"), PathBuf::from("a/b")]
        );
        let (_, dirs) = open(dir.path(), false, false).unwrap();
        assert_eq!(dirs.len(), 1);
        let err = open(&dir.path().join("f"), false, false).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let err = open(&dir.path().join("missing"), false, false).unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
}
