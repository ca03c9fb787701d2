//! The `filesystem.Filesystem` Connect service (unary RPCs), and what it
//! shares with `/files`: resolving a request's user and paths, running file
//! operations with that user's permissions, and describing entries.
//!
//! File operations run on a blocking thread whose file-system identity
//! (fsuid, fsgid, supplementary groups) is switched to the user's for the
//! duration of the operation, with raw system calls that affect only that
//! thread. The kernel then checks permissions as it would for the user, and
//! what the operation creates belongs to the user. Open descriptors keep the
//! access they were opened with, so streaming I/O can continue elsewhere.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hearth_proto::connect::{Code, ConnectError};
use hearth_proto::filesystem::{
    EntryInfo, FileType, ListDirRequest, ListDirResponse, MakeDirRequest, MakeDirResponse,
    MoveRequest, MoveResponse, RemoveRequest, RemoveResponse, StatRequest, StatResponse, Timestamp,
};
use nix::unistd::{getegid, geteuid};

use super::{Agent, connect};
use crate::passwd::{self, PasswdError, User};

pub(super) fn routes() -> Router<Arc<Agent>> {
    Router::new()
        .route("/filesystem.Filesystem/Stat", post(stat))
        .route("/filesystem.Filesystem/MakeDir", post(make_dir))
        .route("/filesystem.Filesystem/Move", post(move_entry))
        .route("/filesystem.Filesystem/ListDir", post(list_dir))
        .route("/filesystem.Filesystem/Remove", post(remove))
}

#[derive(Debug, thiserror::Error)]
pub(super) enum FsError {
    #[error(transparent)]
    User(#[from] PasswdError),
    #[error("Cannot act as '{0}': the agent itself does not run as root")]
    NotRoot(String),
    #[error("Cannot expand '{0}': only '~' and '~/...' name a home directory")]
    Tilde(String),
    #[error("{what} '{}'", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("'{}' is not a directory", .0.display())]
    NotDirectory(PathBuf),
    #[error("'{}' is a directory", .0.display())]
    IsDirectory(PathBuf),
    #[error(
        "'{}' is on a network file system, where a watch may miss events; allow network mounts to watch it anyway",
        .0.display()
    )]
    NetworkMount(PathBuf),
    #[error("Directory '{}' already exists", .0.display())]
    DirectoryExists(PathBuf),
    #[error("'{}' already exists and is not a directory", .0.display())]
    ExistsNotDirectory(PathBuf),
    #[error("Cannot switch the file system identity")]
    Identity(#[source] io::Error),
    #[error("The file operation was interrupted")]
    Task(#[source] tokio::task::JoinError),
}

impl FsError {
    pub(super) fn io(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FsError {
        let path = path.to_owned();
        move |source| FsError::Io { what, path, source }
    }

    pub(super) fn code(&self) -> Code {
        match self {
            FsError::User(PasswdError::UnknownUser(_) | PasswdError::UnknownUid(_)) => {
                Code::Unauthenticated
            }
            FsError::NotRoot(_) => Code::PermissionDenied,
            FsError::Tilde(_) | FsError::NotDirectory(_) | FsError::IsDirectory(_) => {
                Code::InvalidArgument
            }
            FsError::ExistsNotDirectory(_) | FsError::NetworkMount(_) => Code::InvalidArgument,
            FsError::DirectoryExists(_) => Code::AlreadyExists,
            FsError::Io { source, .. } => io_code(source),
            FsError::User(PasswdError::Read { .. }) | FsError::Identity(_) | FsError::Task(_) => {
                Code::Internal
            }
        }
    }

    pub(super) fn to_connect(&self) -> ConnectError {
        ConnectError::new(self.code(), crate::error_chain(self))
    }
}

/// The Connect code of a failed system call, as envd reports them.
fn io_code(e: &io::Error) -> Code {
    match e.raw_os_error() {
        Some(libc::ENOENT) => Code::NotFound,
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => Code::PermissionDenied,
        Some(libc::EEXIST | libc::ENOTEMPTY) => Code::AlreadyExists,
        Some(libc::ENOTDIR | libc::EISDIR | libc::EINVAL | libc::ENAMETOOLONG | libc::EXDEV) => {
            Code::InvalidArgument
        }
        Some(libc::ELOOP) => Code::FailedPrecondition,
        Some(libc::ENOSPC | libc::EDQUOT) => Code::ResourceExhausted,
        _ => Code::Internal,
    }
}

/// The file-system identity to assume; `None` in [`Caller`] keeps the agent's.
#[derive(Debug, Clone)]
struct Identity {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
}

/// Who a request acts as, and where its relative paths start.
#[derive(Debug, Clone)]
pub(super) struct Caller {
    pub(super) user: User,
    identity: Option<Identity>,
    default_workdir: Option<PathBuf>,
    etc: PathBuf,
}

impl Caller {
    /// The caller named `user_name`; only a root agent may act as others.
    pub(super) fn new(agent: &Agent, user_name: &str) -> Result<Caller, FsError> {
        let user = passwd::lookup_user(&agent.etc, user_name)?;
        let euid = geteuid().as_raw();
        let identity = if euid == 0 && user.uid != 0 {
            Some(Identity {
                uid: user.uid,
                gid: user.gid,
                groups: user.groups.clone(),
            })
        } else if euid == 0 || user.uid == euid {
            None
        } else {
            return Err(FsError::NotRoot(user.name));
        };
        Ok(Caller {
            user,
            identity,
            default_workdir: agent.settings().default_workdir,
            etc: agent.etc.clone(),
        })
    }

    /// `path` made absolute: `~` is the user's home, relative paths start
    /// there, an empty path is the default workdir (else home).
    pub(super) fn resolve(&self, path: &str) -> Result<PathBuf, FsError> {
        resolve(path, &self.user.home, self.default_workdir.as_deref())
    }

    /// Runs `op` on a blocking thread with the caller's file-system identity.
    pub(super) async fn run<T, F>(&self, op: F) -> Result<T, FsError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, FsError> + Send + 'static,
    {
        let identity = self.identity.clone();
        tokio::task::spawn_blocking(move || match identity {
            None => op(),
            Some(identity) => as_identity(&identity, op).map_err(FsError::Identity)?,
        })
        .await
        .map_err(FsError::Task)?
    }

    /// User and group names for entries, read once per request.
    pub(super) fn names(&self) -> Names {
        Names::read(&self.etc)
    }
}

/// Lexically resolves a request path (see [`Caller::resolve`]).
fn resolve(path: &str, home: &Path, default_workdir: Option<&Path>) -> Result<PathBuf, FsError> {
    let joined = if path.is_empty() {
        default_workdir.unwrap_or(home).to_owned()
    } else if path == "~" {
        home.to_owned()
    } else if let Some(rest) = path.strip_prefix("~/") {
        home.join(rest)
    } else if path.starts_with('~') {
        return Err(FsError::Tilde(path.to_owned()));
    } else {
        home.join(path)
    };
    Ok(clean(&joined))
}

/// `.` and `..` removed without touching the file system, as Go's
/// `filepath.Clean` does.
fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Runs `op` with the thread's fsuid, fsgid and groups set to `identity`,
/// then restores the agent's. Raw system calls: the libc wrappers of
/// `setgroups` apply to every thread of the process.
fn as_identity<T>(identity: &Identity, op: impl FnOnce() -> T) -> io::Result<T> {
    struct Restore(Vec<libc::gid_t>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let restored = set_thread_identity(geteuid().as_raw(), getegid().as_raw(), &self.0);
            if let Err(e) = restored {
                // A pool thread left with a user's identity would run later
                // operations with the wrong permissions.
                eprintln!("hearth-init: cannot restore the file system identity: {e}");
                std::process::abort();
            }
        }
    }
    let restore = Restore(thread_groups()?);
    set_thread_identity(identity.uid, identity.gid, &identity.groups)?;
    let result = op();
    drop(restore);
    Ok(result)
}

fn thread_groups() -> io::Result<Vec<libc::gid_t>> {
    // SAFETY: a zero size asks only for the count; the pointer is not used.
    let count =
        unsafe { libc::syscall(libc::SYS_getgroups, 0, std::ptr::null_mut::<libc::gid_t>()) };
    let count = usize::try_from(count).map_err(|_| io::Error::last_os_error())?;
    let mut groups = vec![0; count];
    // SAFETY: the buffer holds `count` gid_t values.
    let got = unsafe { libc::syscall(libc::SYS_getgroups, count, groups.as_mut_ptr()) };
    groups.truncate(usize::try_from(got).map_err(|_| io::Error::last_os_error())?);
    Ok(groups)
}

fn set_thread_identity(
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: &[libc::gid_t],
) -> io::Result<()> {
    // SAFETY: the pointer and length describe a live slice of gid_t.
    if unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // setfsuid/setfsgid report the previous id and never fail; an invalid id
    // (-1) changes nothing, which is how the result is checked.
    // SAFETY: plain integer arguments.
    unsafe { libc::syscall(libc::SYS_setfsgid, gid) };
    // SAFETY: plain integer arguments.
    unsafe { libc::syscall(libc::SYS_setfsuid, uid) };
    // SAFETY: plain integer arguments.
    let fsgid = unsafe { libc::syscall(libc::SYS_setfsgid, libc::gid_t::MAX) };
    // SAFETY: plain integer arguments.
    let fsuid = unsafe { libc::syscall(libc::SYS_setfsuid, libc::uid_t::MAX) };
    if fsuid != i64::from(uid) || fsgid != i64::from(gid) {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    Ok(())
}

/// User and group names by id, from passwd and group files.
#[derive(Debug, Default)]
pub(super) struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    fn read(etc: &Path) -> Names {
        let (users, groups) = passwd::names_by_id(etc);
        Names { users, groups }
    }

    fn user(&self, uid: u32) -> String {
        self.users
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }

    fn group(&self, gid: u32) -> String {
        self.groups
            .get(&gid)
            .cloned()
            .unwrap_or_else(|| gid.to_string())
    }
}

fn file_type(meta: &fs::Metadata) -> FileType {
    let t = meta.file_type();
    if t.is_file() {
        FileType::File
    } else if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else {
        FileType::Unspecified
    }
}

/// A mode as Go's `FileMode.String()` writes it: type and special-bit
/// letters (or `-`), then `rwxrwxrwx`.
fn mode_string(mode: u32) -> String {
    let mut out = String::new();
    let kind = mode & libc::S_IFMT;
    let letters = [
        (kind == libc::S_IFDIR, 'd'),
        (kind == libc::S_IFLNK, 'L'),
        (kind == libc::S_IFBLK || kind == libc::S_IFCHR, 'D'),
        (kind == libc::S_IFIFO, 'p'),
        (kind == libc::S_IFSOCK, 'S'),
        (mode & libc::S_ISUID != 0, 'u'),
        (mode & libc::S_ISGID != 0, 'g'),
        (kind == libc::S_IFCHR, 'c'),
        (mode & libc::S_ISVTX != 0, 't'),
    ];
    out.extend(letters.iter().filter(|(on, _)| *on).map(|(_, c)| c));
    if out.is_empty() {
        out.push('-');
    }
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        out.push(if mode & (1 << (8 - i)) != 0 { c } else { '-' });
    }
    out
}

/// Describes the entry at `real`, reported as `shown`. A symlink is not
/// followed for size, owner and time, but its type, mode and metadata are
/// the target's, and `symlink_target` is the resolved target.
pub(super) fn entry_info(real: &Path, shown: &Path, names: &Names) -> io::Result<EntryInfo> {
    let meta = fs::symlink_metadata(real)?;
    let (kind, mode, symlink_target) = if meta.file_type().is_symlink() {
        let target = fs::canonicalize(real).unwrap_or_else(|_| real.to_owned());
        let (kind, mode) = fs::metadata(&target).map_or((FileType::Unspecified, 0), |m| {
            (file_type(&m), m.mode() & 0o7777)
        });
        (kind, mode, Some(target.to_string_lossy().into_owned()))
    } else {
        (file_type(&meta), meta.mode() & 0o7777, None)
    };
    let name = shown
        .file_name()
        .map_or_else(|| "/".to_owned(), |n| n.to_string_lossy().into_owned());
    Ok(EntryInfo {
        name,
        r#type: kind as i32,
        path: shown.to_string_lossy().into_owned(),
        size: i64::try_from(meta.size()).unwrap_or(i64::MAX),
        mode,
        permissions: mode_string(meta.mode()),
        owner: names.user(meta.uid()),
        group: names.group(meta.gid()),
        modified_time: Some(Timestamp {
            seconds: meta.mtime(),
            nanos: i32::try_from(meta.mtime_nsec()).unwrap_or(0),
        }),
        symlink_target,
        metadata: super::metadata::read(real),
    })
}

fn describe(path: &Path, names: &Names) -> Result<EntryInfo, FsError> {
    entry_info(path, path, names).map_err(FsError::io("Cannot stat", path))
}

/// Creates `dir` and its missing parents (mode 0755 before the umask).
pub(super) fn make_dirs(dir: &Path) -> Result<(), FsError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(FsError::io("Cannot create directory", dir))
}

/// Parses a unary request, resolves the caller and runs `op` with them.
async fn unary<Req, Resp, F>(agent: &Agent, headers: &HeaderMap, body: &[u8], op: F) -> Response
where
    Req: connect::Wire,
    Resp: connect::Wire + Send + 'static,
    F: FnOnce(&Caller, Req) -> Result<Box<dyn FnOnce() -> Result<Resp, FsError> + Send>, FsError>,
{
    let (codec, request) = match connect::unary_request::<Req>(headers, body) {
        Ok(decoded) => decoded,
        Err(rejection) => return rejection.into_response(),
    };
    let result = async {
        let user_name = super::request_user(headers, &agent.settings())?;
        let caller = Caller::new(agent, &user_name).map_err(|e| e.to_connect())?;
        let work = op(&caller, request).map_err(|e| e.to_connect())?;
        caller.run(work).await.map_err(|e| e.to_connect())
    }
    .await;
    if let Err(e) = &result {
        tracing::info!("filesystem request failed: {e}");
    }
    connect::unary_response(codec, result)
}

async fn stat(State(agent): State<Arc<Agent>>, headers: HeaderMap, body: Bytes) -> Response {
    unary(&agent, &headers, &body, |caller, req: StatRequest| {
        let path = caller.resolve(&req.path)?;
        let names = caller.names();
        Ok(Box::new(move || {
            Ok(StatResponse {
                entry: Some(describe(&path, &names)?),
            })
        }))
    })
    .await
}

async fn make_dir(State(agent): State<Arc<Agent>>, headers: HeaderMap, body: Bytes) -> Response {
    unary(&agent, &headers, &body, |caller, req: MakeDirRequest| {
        let path = caller.resolve(&req.path)?;
        let names = caller.names();
        Ok(Box::new(move || {
            match fs::metadata(&path) {
                Ok(m) if m.is_dir() => return Err(FsError::DirectoryExists(path)),
                Ok(_) => return Err(FsError::ExistsNotDirectory(path)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(FsError::io("Cannot stat", &path)(e)),
            }
            make_dirs(&path)?;
            Ok(MakeDirResponse {
                entry: Some(describe(&path, &names)?),
            })
        }))
    })
    .await
}

async fn move_entry(State(agent): State<Arc<Agent>>, headers: HeaderMap, body: Bytes) -> Response {
    unary(&agent, &headers, &body, |caller, req: MoveRequest| {
        let source = caller.resolve(&req.source)?;
        let destination = caller.resolve(&req.destination)?;
        let names = caller.names();
        Ok(Box::new(move || {
            fs::symlink_metadata(&source).map_err(FsError::io("Cannot move", &source))?;
            if let Some(parent) = destination.parent() {
                make_dirs(parent)?;
            }
            fs::rename(&source, &destination)
                .map_err(FsError::io("Cannot move to", &destination))?;
            Ok(MoveResponse {
                entry: Some(describe(&destination, &names)?),
            })
        }))
    })
    .await
}

async fn list_dir(State(agent): State<Arc<Agent>>, headers: HeaderMap, body: Bytes) -> Response {
    unary(&agent, &headers, &body, |caller, req: ListDirRequest| {
        let path = caller.resolve(&req.path)?;
        let names = caller.names();
        let depth = req.depth.max(1);
        Ok(Box::new(move || {
            let real = fs::canonicalize(&path).map_err(FsError::io("Cannot list", &path))?;
            let meta = fs::metadata(&real).map_err(FsError::io("Cannot list", &path))?;
            if !meta.is_dir() {
                return Err(FsError::NotDirectory(path));
            }
            let mut entries = Vec::new();
            walk(&real, &path, depth, &names, &mut entries)?;
            Ok(ListDirResponse { entries })
        }))
    })
    .await
}

/// Appends the entries under `real` (shown under `shown`) in name order,
/// depth first, descending `depth - 1` more levels; symlinks to directories
/// are listed but not entered.
fn walk(
    real: &Path,
    shown: &Path,
    depth: u32,
    names: &Names,
    out: &mut Vec<EntryInfo>,
) -> Result<(), FsError> {
    let read = FsError::io("Cannot read directory", shown);
    let mut children = fs::read_dir(real)
        .and_then(|entries| entries.collect::<io::Result<Vec<_>>>())
        .map_err(read)?;
    children.sort_by_key(fs::DirEntry::file_name);
    for child in children {
        let name = child.file_name();
        let (child_real, child_shown) = (real.join(&name), shown.join(&name));
        let entry = match entry_info(&child_real, &child_shown, names) {
            Ok(entry) => entry,
            // Removed while listing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(FsError::io("Cannot stat", &child_shown)(e)),
        };
        let is_dir = child.file_type().is_ok_and(|t| t.is_dir());
        out.push(entry);
        if is_dir && depth > 1 {
            walk(&child_real, &child_shown, depth - 1, names, out)?;
        }
    }
    Ok(())
}

async fn remove(State(agent): State<Arc<Agent>>, headers: HeaderMap, body: Bytes) -> Response {
    unary(&agent, &headers, &body, |caller, req: RemoveRequest| {
        let path = caller.resolve(&req.path)?;
        Ok(Box::new(move || {
            // As envd (Go's os.RemoveAll): a missing path is already removed.
            let removed = match fs::symlink_metadata(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
                Ok(m) if m.is_dir() => fs::remove_dir_all(&path),
                Ok(_) => fs::remove_file(&path),
            };
            removed.map_err(FsError::io("Cannot remove", &path))?;
            Ok(RemoveResponse {})
        }))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current_fs_ids() -> (i64, i64) {
        // SAFETY: an invalid id (-1) only reports the current one.
        let uid = unsafe { libc::syscall(libc::SYS_setfsuid, libc::uid_t::MAX) };
        // SAFETY: as above.
        let gid = unsafe { libc::syscall(libc::SYS_setfsgid, libc::gid_t::MAX) };
        (uid, gid)
    }

    /// Needs root, as CI runs the tests.
    #[test]
    fn identity_applies_to_the_operation_only() {
        assert_eq!(geteuid().as_raw(), 0, "run the tests as root");
        let before = (current_fs_ids(), thread_groups().unwrap());
        let nobody = Identity {
            uid: 65534,
            gid: 65534,
            groups: vec![65534],
        };
        // A thread started before the switch looks while it is in effect.
        let (ask, asked) = std::sync::mpsc::channel::<()>();
        let (tell, told) = std::sync::mpsc::channel();
        let other = std::thread::spawn(move || {
            asked.recv().unwrap();
            tell.send(current_fs_ids()).unwrap();
        });
        let (inside, groups, elsewhere) = as_identity(&nobody, || {
            ask.send(()).unwrap();
            let elsewhere = told.recv().unwrap();
            (current_fs_ids(), thread_groups().unwrap(), elsewhere)
        })
        .unwrap();
        other.join().unwrap();
        assert_eq!(inside, (65534, 65534));
        assert_eq!(groups, [65534]);
        assert_eq!(elsewhere, (0, 0));
        assert_eq!((current_fs_ids(), thread_groups().unwrap()), before);
    }

    #[test]
    fn resolves_paths_against_home() {
        let home = Path::new("/home/u");
        let r = |p: &str| resolve(p, home, None).unwrap();
        assert_eq!(r("a/b"), Path::new("/home/u/a/b"));
        assert_eq!(r("/etc/x"), Path::new("/etc/x"));
        assert_eq!(r("~"), home);
        assert_eq!(r("~/d/../e"), Path::new("/home/u/e"));
        assert_eq!(r("../../../x"), Path::new("/x"));
        assert_eq!(r("./a//b/."), Path::new("/home/u/a/b"));
        assert_eq!(r(""), home);
        assert_eq!(
            resolve("", home, Some(Path::new("/work"))).unwrap(),
            Path::new("/work")
        );
        let err = resolve("~root/x", home, None).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    #[test]
    fn modes_read_like_go() {
        assert_eq!(mode_string(libc::S_IFREG | 0o644), "-rw-r--r--");
        assert_eq!(mode_string(libc::S_IFDIR | 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(libc::S_IFLNK | 0o777), "Lrwxrwxrwx");
        assert_eq!(mode_string(libc::S_IFDIR | 0o1777), "dtrwxrwxrwx");
        assert_eq!(mode_string(libc::S_IFREG | 0o4755), "urwxr-xr-x");
        assert_eq!(mode_string(libc::S_IFCHR | 0o666), "Dcrw-rw-rw-");
        assert_eq!(mode_string(libc::S_IFIFO | 0o600), "prw-------");
    }

    #[test]
    fn errno_codes() {
        let code = |errno| io_code(&io::Error::from_raw_os_error(errno));
        assert_eq!(code(libc::ENOENT), Code::NotFound);
        assert_eq!(code(libc::EACCES), Code::PermissionDenied);
        assert_eq!(code(libc::EEXIST), Code::AlreadyExists);
        assert_eq!(code(libc::ENOTDIR), Code::InvalidArgument);
        assert_eq!(code(libc::ENOSPC), Code::ResourceExhausted);
        assert_eq!(code(libc::EIO), Code::Internal);
    }

    #[test]
    fn names_fall_back_to_numbers() {
        let etc = tempfile::tempdir().unwrap();
        fs::write(
            etc.path().join("passwd"),
            "#c\nalice:x:1000:1000::/h:/bin/sh\nbad\n",
        )
        .unwrap();
        fs::write(etc.path().join("group"), "staff:x:50:alice\n").unwrap();
        let names = Names::read(etc.path());
        assert_eq!(names.user(1000), "alice");
        assert_eq!(names.user(7), "7");
        assert_eq!(names.group(50), "staff");
        assert_eq!(names.group(1000), "1000");
    }

    #[test]
    fn entry_info_describes_files_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, "hello").unwrap();
        std::os::unix::fs::symlink("f", dir.path().join("l")).unwrap();
        std::os::unix::fs::symlink("gone", dir.path().join("dangling")).unwrap();
        let names = Names::default();
        let f = entry_info(&file, &file, &names).unwrap();
        assert_eq!(
            (f.name.as_str(), f.size, f.r#type),
            ("f", 5, FileType::File as i32)
        );
        assert!(f.modified_time.unwrap().seconds > 0);
        assert_eq!(f.symlink_target, None);
        let l = entry_info(&dir.path().join("l"), Path::new("/shown/l"), &names).unwrap();
        assert_eq!(l.r#type, FileType::File as i32);
        assert_eq!(l.path, "/shown/l");
        assert!(l.permissions.starts_with('L'));
        let target = fs::canonicalize(&file).unwrap();
        assert_eq!(l.symlink_target.as_deref(), target.to_str());
        let d = entry_info(&dir.path().join("dangling"), Path::new("/d"), &names).unwrap();
        assert_eq!((d.r#type, d.mode), (FileType::Unspecified as i32, 0));
    }
}
