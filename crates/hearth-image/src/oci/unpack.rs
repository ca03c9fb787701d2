//! Applying layers to a root directory, as overlayfs would stack them.
//!
//! The layer is untrusted input. Every entry's path is cleaned lexically
//! (`..` may not climb above the root) and its parent directories are then
//! resolved one component at a time inside the root: a symbolic link met on
//! the way, absolute or relative, is followed as the guest would see it,
//! relative to the root, never to the host. The last component is never
//! followed: whatever is there (a link included) is replaced, and files are
//! created with `O_CREAT | O_EXCL | O_NOFOLLOW`.
//!
//! OCI whiteouts: `.wh.NAME` removes NAME of lower layers; `.wh..wh..opq`
//! removes the lower-layer content of its directory. Both spare what the
//! same layer wrote, whatever order the entries come in.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek};
use std::ops::Bound;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use super::PulledImage;
use super::blobs::{Compression, Digest, digest_of};
use super::error::{OciError, io_err};
use super::manifest::layer_compression;

/// Symbolic links followed while resolving one path, as Linux allows.
const MAX_SYMLINKS: usize = 40;
const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
const XATTR_PREFIX: &str = "SCHILY.xattr.";

/// Why one entry of a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("its path climbs out of the image root with `..`")]
    Escapes,
    #[error("it is a hard link to {target:?}, which is outside the image root")]
    HardLinkOutside { target: String },
    #[error("it is a hard link to {target:?}, which no earlier entry created")]
    HardLinkMissing { target: String },
    #[error("it is a hard link to the directory {target:?}")]
    HardLinkToDirectory { target: String },
    #[error("its parent {} is not a directory", parent.display())]
    ParentNotDirectory { parent: PathBuf },
    #[error("it is a symbolic link with an empty target")]
    EmptySymlink,
    #[error("resolving its parent directories follows more than {MAX_SYMLINKS} symbolic links")]
    SymlinkLoop,
    #[error("it is a whiteout of {name:?}, which is no name")]
    BadWhiteout { name: String },
    #[error("its {what} {value} is out of range")]
    OutOfRange { what: &'static str, value: String },
    #[error("its tar header is malformed")]
    Header(#[source] io::Error),
    #[error("cannot set the extended attribute {name}")]
    Xattr {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn uerr(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> UnpackError {
    let path = path.to_owned();
    move |source| UnpackError::Io {
        action,
        path,
        source,
    }
}

fn nix_err(action: &'static str, path: &Path) -> impl FnOnce(nix::Error) -> UnpackError {
    let path = path.to_owned();
    move |errno| UnpackError::Io {
        action,
        path,
        source: io::Error::from(errno),
    }
}

/// Applies `image`'s layers, bottom first, to `root` (created if missing;
/// it may hold an earlier tree). Every layer is verified against its digest
/// before `root` is touched. Ownership is kept and devices are created
/// only when running as root; otherwise files belong to the caller and
/// devices are skipped with a warning. Blocking.
pub fn unpack(image: &PulledImage, root: &Path) -> Result<(), OciError> {
    let privileged = nix::unistd::geteuid().is_root();
    unpack_layers(image, root, privileged)
}

/// [`unpack`], with the privilege decision passed in.
pub(crate) fn unpack_layers(
    image: &PulledImage,
    root: &Path,
    privileged: bool,
) -> Result<(), OciError> {
    // Verify everything first, through the handles we then unpack from.
    let mut layers = Vec::with_capacity(image.layers.len());
    for layer in &image.layers {
        let compression =
            layer_compression(&layer.media_type).ok_or_else(|| OciError::UnsupportedLayer {
                image: image.source.clone(),
                digest: layer.digest.clone(),
                media_type: layer.media_type.clone(),
            })?;
        let digest = Digest::parse(&layer.digest)?;
        let mut file = File::open(&layer.path).map_err(io_err("open", &layer.path))?;
        let actual = digest_of(&mut file).map_err(io_err("read", &layer.path))?;
        if actual != digest {
            return Err(OciError::DigestMismatch {
                digest: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        file.rewind().map_err(io_err("read", &layer.path))?;
        layers.push((layer.digest.as_str(), compression, file));
    }

    fs::create_dir_all(root).map_err(io_err("create", root))?;
    let mut unpacker = Unpacker {
        root: root.to_owned(),
        privileged,
        dirs: BTreeMap::new(),
    };
    for (digest, compression, file) in layers {
        tracing::debug!(layer = digest, "applying layer");
        unpacker.apply_layer(digest, compression, file)?;
    }
    unpacker.finish_dirs()
}

/// The metadata of one entry.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// Directory modes and mtimes, applied once every layer is in: a
/// read-only directory can still be filled, and filling a directory
/// changes its mtime.
struct DirMeta {
    mode: u32,
    mtime: TimeSpec,
}

/// What the current layer did, for its whiteouts.
#[derive(Default)]
struct LayerState {
    /// Paths (resolved, relative to the root) this layer wrote.
    written: BTreeSet<PathBuf>,
}

impl LayerState {
    fn wrote_below(&self, dir: &Path) -> bool {
        self.written
            .range::<Path, _>((Bound::Excluded(dir), Bound::Unbounded))
            .next()
            .is_some_and(|p| p.starts_with(dir))
    }
}

struct Unpacker {
    root: PathBuf,
    privileged: bool,
    dirs: BTreeMap<PathBuf, DirMeta>,
}

/// An entry's path cleaned to plain names; `..` that would leave the root
/// is an error.
fn clean(raw: &[u8]) -> Result<Vec<OsString>, UnpackError> {
    let mut out: Vec<OsString> = Vec::new();
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::Normal(name) => out.push(name.to_owned()),
            Component::ParentDir => {
                out.pop().ok_or(UnpackError::Escapes)?;
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

fn lossy(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

impl Unpacker {
    fn apply_layer(
        &mut self,
        digest: &str,
        compression: Compression,
        file: File,
    ) -> Result<(), OciError> {
        let unreadable = |source| OciError::LayerUnreadable {
            layer: digest.to_owned(),
            source,
        };
        let reader = compression
            .decoder(BufReader::new(file))
            .map_err(unreadable)?;
        let mut archive = tar::Archive::new(reader);
        let mut state = LayerState::default();
        for entry in archive.entries().map_err(unreadable)? {
            let mut entry = entry.map_err(unreadable)?;
            let raw = entry.path_bytes().into_owned();
            self.apply_entry(&mut entry, &raw, &mut state)
                .map_err(|source| OciError::Unpack {
                    layer: digest.to_owned(),
                    entry: lossy(&raw),
                    source,
                })?;
        }
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
        state: &mut LayerState,
    ) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        let meta = read_meta(entry)?;
        let components = clean(raw)?;
        let Some((name, parents)) = components.split_last() else {
            // The root itself: only its metadata.
            if kind.is_dir() {
                self.own(&self.root.clone(), &meta)?;
                self.dirs.insert(
                    PathBuf::new(),
                    DirMeta {
                        mode: meta.mode,
                        mtime: meta.mtime,
                    },
                );
            }
            return Ok(());
        };

        if let Some(target) = name.as_bytes().strip_prefix(WHITEOUT) {
            let Some(parent) = self.resolve_dir(parents, false)? else {
                return Ok(()); // nothing below to hide
            };
            if name.as_bytes() == OPAQUE {
                return self.opaque(&parent, state);
            }
            if target.starts_with(WHITEOUT) {
                tracing::debug!(entry = lossy(raw), "ignoring aufs metadata");
                return Ok(());
            }
            if target.is_empty() || target == b"." || target == b".." {
                return Err(UnpackError::BadWhiteout {
                    name: lossy(target),
                });
            }
            return self.prune(&parent.join(OsStr::from_bytes(target)), state);
        }

        let parent = self
            .resolve_dir(parents, true)?
            .expect("resolving with create always yields a directory");
        let rel = parent.join(name);
        let abs = self.root.join(&rel);
        match kind {
            tar::EntryType::Directory => {
                if !self.clear(&rel, true)? {
                    DirBuilder::new()
                        .mode(0o755)
                        .create(&abs)
                        .map_err(uerr("create the directory", &abs))?;
                }
                self.own(&abs, &meta)?;
                self.set_xattrs(Target::Path(&abs), &meta.xattrs)?;
                self.dirs.insert(
                    rel.clone(),
                    DirMeta {
                        mode: meta.mode,
                        mtime: meta.mtime,
                    },
                );
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.clear(&rel, false)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&abs)
                    .map_err(uerr("create", &abs))?;
                io::copy(entry, &mut file).map_err(uerr("write", &abs))?;
                if self.privileged {
                    std::os::unix::fs::fchown(&file, Some(meta.uid), Some(meta.gid))
                        .map_err(uerr("change the owner of", &abs))?;
                }
                // After chown, which clears set-id bits.
                file.set_permissions(fs::Permissions::from_mode(meta.mode))
                    .map_err(uerr("change the mode of", &abs))?;
                self.set_xattrs(Target::File(&file), &meta.xattrs)?;
                nix::sys::stat::futimens(&file, &meta.mtime, &meta.mtime)
                    .map_err(nix_err("set the times of", &abs))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if target.is_empty() {
                    return Err(UnpackError::EmptySymlink);
                }
                self.clear(&rel, false)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &abs)
                    .map_err(uerr("create the symbolic link", &abs))?;
                self.own(&abs, &meta)?;
                self.set_xattrs(Target::Path(&abs), &meta.xattrs)?;
                self.set_times(&abs, &meta)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let target_rel = self.resolve_link_target(&target)?;
                if target_rel == rel {
                    return Ok(());
                }
                self.clear(&rel, false)?;
                fs::hard_link(self.root.join(&target_rel), &abs)
                    .map_err(uerr("create the hard link", &abs))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let flag = match kind {
                    tar::EntryType::Char => SFlag::S_IFCHR,
                    tar::EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let header = entry.header();
                let dev = if flag == SFlag::S_IFIFO {
                    0
                } else {
                    let (raw_major, raw_minor) = header
                        .as_gnu()
                        .map_or(([0; 8], [0; 8]), |g| (g.dev_major, g.dev_minor));
                    let major = numeric(header.device_major(), &raw_major)?.unwrap_or(0);
                    let minor = numeric(header.device_minor(), &raw_minor)?.unwrap_or(0);
                    nix::sys::stat::makedev(major.into(), minor.into())
                };
                if flag != SFlag::S_IFIFO && !self.privileged {
                    tracing::warn!(
                        entry = lossy(raw),
                        "skipping a device node: creating one needs root"
                    );
                    return Ok(());
                }
                self.clear(&rel, false)?;
                nix::sys::stat::mknod(&abs, flag, Mode::from_bits_truncate(0o600), dev)
                    .map_err(nix_err("create the device node", &abs))?;
                self.own(&abs, &meta)?;
                fs::set_permissions(&abs, fs::Permissions::from_mode(meta.mode))
                    .map_err(uerr("change the mode of", &abs))?;
                self.set_xattrs(Target::Path(&abs), &meta.xattrs)?;
                self.set_times(&abs, &meta)?;
            }
            other => {
                tracing::debug!(entry = lossy(raw), kind = ?other, "skipping a tar entry of this kind");
                return Ok(());
            }
        }
        state.written.insert(rel);
        Ok(())
    }

    /// Resolves directory components inside the root, following symbolic
    /// links relative to the root. Missing directories are created when
    /// `create`, else the answer is `None`. The result is a path of real
    /// directories, relative to the root.
    fn resolve_dir(
        &self,
        components: &[OsString],
        create: bool,
    ) -> Result<Option<PathBuf>, UnpackError> {
        let mut pending: VecDeque<OsString> = components.iter().cloned().collect();
        let mut current = PathBuf::new();
        let mut links = 0;
        while let Some(c) = pending.pop_front() {
            if c == ".." {
                // At the root, `..` is the root, as in a chroot.
                current.pop();
                continue;
            }
            if c == "." || c.is_empty() {
                continue;
            }
            let next = current.join(&c);
            let abs = self.root.join(&next);
            match fs::symlink_metadata(&abs) {
                Ok(m) if m.is_dir() => current = next,
                Ok(m) if m.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(UnpackError::SymlinkLoop);
                    }
                    let target =
                        fs::read_link(&abs).map_err(uerr("read the symbolic link", &abs))?;
                    let mut parts = Vec::new();
                    for tc in target.components() {
                        match tc {
                            Component::RootDir => current = PathBuf::new(),
                            Component::Normal(n) => parts.push(n.to_owned()),
                            Component::ParentDir => parts.push("..".into()),
                            Component::CurDir | Component::Prefix(_) => {}
                        }
                    }
                    for part in parts.into_iter().rev() {
                        pending.push_front(part);
                    }
                }
                Ok(_) => return Err(UnpackError::ParentNotDirectory { parent: next }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    DirBuilder::new()
                        .mode(0o755)
                        .create(&abs)
                        .map_err(uerr("create the directory", &abs))?;
                    current = next;
                }
                Err(e) => return Err(uerr("inspect", &abs)(e)),
            }
        }
        Ok(Some(current))
    }

    /// Where a hard link's target is, relative to the root; it must exist
    /// and not be a directory.
    fn resolve_link_target(&self, raw: &[u8]) -> Result<PathBuf, UnpackError> {
        let target = lossy(raw);
        let components = clean(raw).map_err(|_| UnpackError::HardLinkOutside {
            target: target.clone(),
        })?;
        let Some((name, parents)) = components.split_last() else {
            return Err(UnpackError::HardLinkToDirectory { target });
        };
        let missing = || UnpackError::HardLinkMissing {
            target: target.clone(),
        };
        let parent = self.resolve_dir(parents, false)?.ok_or_else(missing)?;
        let rel = parent.join(name);
        match fs::symlink_metadata(self.root.join(&rel)) {
            Ok(m) if m.is_dir() => Err(UnpackError::HardLinkToDirectory { target }),
            Ok(_) => Ok(rel),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(missing()),
            Err(e) => Err(uerr("inspect", &self.root.join(&rel))(e)),
        }
    }

    /// Makes room at `rel`: removes whatever is there (a directory with
    /// all it holds), except a directory when `keep_dir`. Returns whether
    /// a directory was kept.
    fn clear(&mut self, rel: &Path, keep_dir: bool) -> Result<bool, UnpackError> {
        let abs = self.root.join(rel);
        match fs::symlink_metadata(&abs) {
            Ok(m) if m.is_dir() && keep_dir => Ok(true),
            Ok(_) => self.remove(rel).map(|()| false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(uerr("inspect", &abs)(e)),
        }
    }

    /// Removes `rel` (a directory recursively; a link itself, never its
    /// target).
    fn remove(&mut self, rel: &Path) -> Result<(), UnpackError> {
        let abs = self.root.join(rel);
        let meta = match fs::symlink_metadata(&abs) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(uerr("inspect", &abs)(e)),
        };
        if meta.is_dir() {
            // std's remove_dir_all does not follow symbolic links.
            fs::remove_dir_all(&abs).map_err(uerr("remove", &abs))?;
            let below: Vec<PathBuf> = self
                .dirs
                .range::<Path, _>((Bound::Included(rel), Bound::Unbounded))
                .map(|(p, _)| p)
                .take_while(|p| p.starts_with(rel))
                .cloned()
                .collect();
            for p in below {
                self.dirs.remove(&p);
            }
        } else {
            fs::remove_file(&abs).map_err(uerr("remove", &abs))?;
        }
        Ok(())
    }

    /// Removes what lower layers put at or below `rel`, keeping what this
    /// layer wrote (and the directories that hold it).
    fn prune(&mut self, rel: &Path, state: &LayerState) -> Result<(), UnpackError> {
        let abs = self.root.join(rel);
        let meta = match fs::symlink_metadata(&abs) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(uerr("inspect", &abs)(e)),
        };
        let written = state.written.contains(rel);
        if meta.is_dir() && (written || state.wrote_below(rel)) {
            self.opaque(rel, state)
        } else if written {
            Ok(())
        } else {
            self.remove(rel)
        }
    }

    /// Empties the directory `rel` of lower-layer content.
    fn opaque(&mut self, rel: &Path, state: &LayerState) -> Result<(), UnpackError> {
        let abs = self.root.join(rel);
        let mut names = Vec::new();
        for child in fs::read_dir(&abs).map_err(uerr("list", &abs))? {
            names.push(child.map_err(uerr("list", &abs))?.file_name());
        }
        for name in names {
            self.prune(&rel.join(name), state)?;
        }
        Ok(())
    }

    /// Sets owner (as root only) without following a link.
    fn own(&self, abs: &Path, meta: &Meta) -> Result<(), UnpackError> {
        if self.privileged {
            std::os::unix::fs::lchown(abs, Some(meta.uid), Some(meta.gid))
                .map_err(uerr("change the owner of", abs))?;
        }
        Ok(())
    }

    fn set_times(&self, abs: &Path, meta: &Meta) -> Result<(), UnpackError> {
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            abs,
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(nix_err("set the times of", abs))
    }

    fn set_xattrs(
        &self,
        target: Target<'_>,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<(), UnpackError> {
        for (name, value) in xattrs {
            let Ok(c_name) = CString::new(name.as_str()) else {
                tracing::warn!(
                    name,
                    "skipping an extended attribute whose name holds a NUL byte"
                );
                continue;
            };
            let rc = match target {
                // SAFETY: the descriptor is open for the borrow of `file`;
                // `c_name` is NUL-terminated and `value` is a live slice of
                // the length passed.
                Target::File(file) => unsafe {
                    libc::fsetxattr(
                        file.as_raw_fd(),
                        c_name.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        0,
                    )
                },
                Target::Path(path) => {
                    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
                        continue;
                    };
                    // SAFETY: both strings are NUL-terminated and outlive
                    // the call; `value` is a live slice of the length passed.
                    unsafe {
                        libc::lsetxattr(
                            c_path.as_ptr(),
                            c_name.as_ptr(),
                            value.as_ptr().cast(),
                            value.len(),
                            0,
                        )
                    }
                }
            };
            if rc == 0 {
                continue;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EOPNOTSUPP) => {
                    tracing::debug!(
                        name,
                        "the file system does not store this extended attribute"
                    );
                }
                // Unprivileged, or `user.*` on a symbolic link.
                Some(libc::EPERM)
                    if !self.privileged || matches!(target, Target::Path(p) if p.is_symlink()) =>
                {
                    tracing::debug!(
                        name,
                        "not permitted to set this extended attribute; skipped"
                    );
                }
                _ => {
                    return Err(UnpackError::Xattr {
                        name: name.clone(),
                        source: err,
                    });
                }
            }
        }
        Ok(())
    }

    /// Directory modes and mtimes, deepest first.
    fn finish_dirs(self) -> Result<(), OciError> {
        for (rel, meta) in self.dirs.iter().rev() {
            let abs = self.root.join(rel);
            match fs::symlink_metadata(&abs) {
                Ok(m) if m.is_dir() => {}
                _ => continue,
            }
            fs::set_permissions(&abs, fs::Permissions::from_mode(meta.mode))
                .map_err(io_err("change the mode of", &abs))?;
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &abs,
                &meta.mtime,
                &meta.mtime,
                UtimensatFlags::NoFollowSymlink,
            )
            .map_err(|e| io_err("set the times of", &abs)(io::Error::from(e)))?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Target<'a> {
    File(&'a File),
    Path(&'a Path),
}

/// The entry's mode, owner, mtime and extended attributes, PAX records
/// taking precedence over the header.
fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Meta, UnpackError> {
    let header = entry.header();
    let old = header.as_old();
    let mode = numeric(header.mode(), &old.mode)? & 0o7777;
    let mut uid = numeric(header.uid(), &old.uid)?;
    let mut gid = numeric(header.gid(), &old.gid)?;
    let mut mtime = TimeSpec::new(
        i64::try_from(numeric(header.mtime(), &old.mtime)?).unwrap_or(i64::MAX),
        0,
    );
    let mut xattrs = Vec::new();
    if let Some(extensions) = entry.pax_extensions().map_err(UnpackError::Header)? {
        for ext in extensions {
            let ext = ext.map_err(UnpackError::Header)?;
            let Ok(key) = ext.key() else { continue };
            let value = ext.value_bytes();
            if let Some(name) = key.strip_prefix(XATTR_PREFIX) {
                xattrs.push((name.to_owned(), value.to_vec()));
                continue;
            }
            let text = String::from_utf8_lossy(value);
            let number = |what: &'static str| {
                text.trim()
                    .parse::<u64>()
                    .map_err(|_| UnpackError::OutOfRange {
                        what,
                        value: text.to_string(),
                    })
            };
            match key {
                "uid" => uid = number("PAX uid")?,
                "gid" => gid = number("PAX gid")?,
                "mtime" => {
                    mtime = parse_pax_time(&text).ok_or_else(|| UnpackError::OutOfRange {
                        what: "PAX mtime",
                        value: text.to_string(),
                    })?
                }
                _ => {}
            }
        }
    }
    let id = |what: &'static str, v: u64| {
        u32::try_from(v).map_err(|_| UnpackError::OutOfRange {
            what,
            value: v.to_string(),
        })
    };
    Ok(Meta {
        mode,
        uid: id("uid", uid)?,
        gid: id("gid", gid)?,
        mtime,
        xattrs,
    })
}

/// A numeric header field; an empty one (all NULs or spaces, as some
/// writers leave them) reads as zero, as Go's archive/tar reads it.
fn numeric<T: Default>(value: io::Result<T>, raw: &[u8]) -> Result<T, UnpackError> {
    match value {
        Ok(v) => Ok(v),
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(T::default()),
        Err(e) => Err(UnpackError::Header(e)),
    }
}

/// `SECONDS[.FRACTION]`, as PAX writes times.
fn parse_pax_time(text: &str) -> Option<TimeSpec> {
    let text = text.trim();
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nanos: i64 = digits.parse().ok()?;
    // Before 1970 the fraction is dropped: nobody dates files to it.
    Some(TimeSpec::new(secs, if secs < 0 { 0 } else { nanos }))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    use tar::{EntryType, Header};

    use super::*;
    use crate::oci::LayerBlob;

    const MTIME: u64 = 1_700_000_000;

    /// A layer built in memory. Names are written into the header raw, so
    /// tests can build the hostile entries `tar::Builder` refuses.
    struct Layer(tar::Builder<Vec<u8>>);

    impl Layer {
        fn new() -> Self {
            Self(tar::Builder::new(Vec::new()))
        }

        fn header(kind: EntryType, name: &str, link: &str, size: usize, mode: u32) -> Header {
            let mut h = Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(size as u64);
            h.set_mode(mode);
            h.set_mtime(MTIME);
            h.set_uid(0);
            h.set_gid(0);
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_cksum();
            h
        }

        fn entry(
            mut self,
            kind: EntryType,
            name: &str,
            link: &str,
            data: &[u8],
            mode: u32,
        ) -> Self {
            let h = Self::header(kind, name, link, data.len(), mode);
            self.0.append(&h, data).unwrap();
            self
        }

        fn file(self, name: &str, data: &str) -> Self {
            self.entry(EntryType::Regular, name, "", data.as_bytes(), 0o644)
        }

        fn dir(self, name: &str) -> Self {
            self.entry(EntryType::Directory, name, "", b"", 0o755)
        }

        fn symlink(self, name: &str, target: &str) -> Self {
            self.entry(EntryType::Symlink, name, target, b"", 0o777)
        }

        fn hardlink(self, name: &str, target: &str) -> Self {
            self.entry(EntryType::Link, name, target, b"", 0o644)
        }

        /// An entry with PAX records (owner, extended attributes).
        fn with_pax(
            mut self,
            records: &[(&str, &[u8])],
            kind: EntryType,
            name: &str,
            link: &str,
            mode: u32,
        ) -> Self {
            self.0
                .append_pax_extensions(records.iter().copied())
                .unwrap();
            let data: &[u8] = if kind == EntryType::Regular {
                b"data"
            } else {
                b""
            };
            self.entry(kind, name, link, data, mode)
        }

        fn device(self, kind: EntryType, name: &str, major: u32, minor: u32) -> Self {
            let mut s = self;
            let mut h = Self::header(kind, name, "", 0, 0o666);
            h.set_device_major(major).unwrap();
            h.set_device_minor(minor).unwrap();
            h.set_cksum();
            s.0.append(&h, &b""[..]).unwrap();
            s
        }

        fn tar(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    fn compress(tar: &[u8], compression: Compression) -> Vec<u8> {
        match compression {
            Compression::None => tar.to_vec(),
            Compression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(tar).unwrap();
                enc.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(tar, 3).unwrap(),
        }
    }

    struct Fixture {
        dir: tempfile::TempDir,
        layers: Vec<LayerBlob>,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
                layers: Vec::new(),
            }
        }

        fn layer(mut self, layer: Layer) -> Self {
            self.add(layer, Compression::None);
            self
        }

        fn add(&mut self, layer: Layer, compression: Compression) {
            let blob = compress(&layer.tar(), compression);
            let digest = Digest::of(&blob);
            let path = self.dir.path().join(digest.hex());
            fs::write(&path, &blob).unwrap();
            self.layers.push(LayerBlob {
                digest: digest.to_string(),
                media_type: compression.oci_media_type().to_owned(),
                path,
            });
        }

        fn root(&self) -> PathBuf {
            self.dir.path().join("root")
        }

        fn image(&self) -> PulledImage {
            PulledImage {
                source: "test".into(),
                manifest_digest: String::new(),
                config: crate::RunConfig::default(),
                layers: self.layers.clone(),
                size: 0,
            }
        }

        fn unpack(&self, privileged: bool) -> Result<PathBuf, OciError> {
            unpack_layers(&self.image(), &self.root(), privileged).map(|()| self.root())
        }
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap()
    }

    fn exists(path: &Path) -> bool {
        fs::symlink_metadata(path).is_ok()
    }

    fn unpack_error(fx: &Fixture) -> UnpackError {
        match fx.unpack(false).unwrap_err() {
            OciError::Unpack { source, .. } => source,
            other => panic!("expected an unpack error, got {other}"),
        }
    }

    #[test]
    fn files_directories_links_and_modes() {
        let fx = Fixture::new().layer(
            Layer::new()
                .dir("etc/")
                .file("etc/hostname", "box\n")
                .entry(EntryType::Regular, "usr/bin/su", "", b"#!", 0o4755)
                .entry(EntryType::Directory, "locked/", "", b"", 0o555)
                .file("locked/inside", "x")
                .symlink("bin", "usr/bin")
                .hardlink("usr/bin/su2", "usr/bin/su")
                .entry(EntryType::Fifo, "run/fifo", "", b"", 0o600),
        );
        let root = fx.unpack(false).unwrap();
        assert_eq!(read(&root.join("etc/hostname")), "box\n");
        let su = fs::metadata(root.join("usr/bin/su")).unwrap();
        assert_eq!(su.mode() & 0o7777, 0o4755);
        assert_eq!(su.mtime(), MTIME as i64);
        assert_eq!(su.nlink(), 2);
        assert_eq!(
            fs::metadata(root.join("usr/bin/su2")).unwrap().ino(),
            su.ino()
        );
        assert_eq!(
            fs::read_link(root.join("bin")).unwrap(),
            Path::new("usr/bin")
        );
        assert_eq!(read(&root.join("locked/inside")), "x");
        let locked = fs::metadata(root.join("locked")).unwrap();
        assert_eq!(locked.mode() & 0o7777, 0o555);
        assert_eq!(locked.mtime(), MTIME as i64);
        assert!(
            fs::symlink_metadata(root.join("run/fifo"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
    }

    #[test]
    fn gzip_zstd_and_plain_layers_stack() {
        let mut fx = Fixture::new();
        fx.add(
            Layer::new().file("a", "plain").file("b", "plain"),
            Compression::None,
        );
        fx.add(
            Layer::new().file("b", "gzip").file("c", "gzip"),
            Compression::Gzip,
        );
        fx.add(Layer::new().file("c", "zstd"), Compression::Zstd);
        let root = fx.unpack(false).unwrap();
        assert_eq!(read(&root.join("a")), "plain");
        assert_eq!(read(&root.join("b")), "gzip");
        assert_eq!(read(&root.join("c")), "zstd");
    }

    #[test]
    fn whiteouts_remove_lower_entries() {
        let fx = Fixture::new()
            .layer(
                Layer::new()
                    .file("a/x", "1")
                    .file("a/y", "2")
                    .file("d/deep/z", "3")
                    .symlink("l", "/a"),
            )
            .layer(
                Layer::new()
                    .file("a/.wh.x", "")
                    .file(".wh.d", "")
                    .file(".wh.l", "")
                    .file("a/.wh..wh.plnk", ""),
            );
        let root = fx.unpack(false).unwrap();
        assert!(!exists(&root.join("a/x")));
        assert_eq!(read(&root.join("a/y")), "2");
        assert!(!exists(&root.join("d")));
        assert!(!exists(&root.join("l")));
        assert!(!exists(&root.join("a/.wh.x")));
        assert!(!exists(&root.join("a/.wh..wh.plnk")));
    }

    #[test]
    fn a_whiteout_spares_what_its_own_layer_wrote() {
        let fx = Fixture::new()
            .layer(Layer::new().file("d/old", "lower"))
            .layer(Layer::new().file("d/new", "upper").file(".wh.d", ""));
        let root = fx.unpack(false).unwrap();
        assert!(!exists(&root.join("d/old")));
        assert_eq!(read(&root.join("d/new")), "upper");
    }

    #[test]
    fn an_opaque_directory_hides_lower_content_but_keeps_its_layer() {
        let fx = Fixture::new()
            .layer(
                Layer::new()
                    .file("d/old", "1")
                    .file("d/sub/deep", "2")
                    .file("d/keep/low", "3")
                    .file("other", "4"),
            )
            .layer(
                Layer::new()
                    .file("d/before", "5")
                    .dir("d/keep/")
                    .file("d/keep/up", "6")
                    .file("d/.wh..wh..opq", "")
                    .file("d/after", "7"),
            );
        let root = fx.unpack(false).unwrap();
        let mut names: Vec<String> = fs::read_dir(root.join("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["after", "before", "keep"]);
        assert!(!exists(&root.join("d/keep/low")));
        assert_eq!(read(&root.join("d/keep/up")), "6");
        assert_eq!(read(&root.join("other")), "4");
    }

    #[test]
    fn a_file_replaces_a_directory_and_a_directory_a_file() {
        let fx = Fixture::new()
            .layer(Layer::new().file("d/x", "1").file("f", "2"))
            .layer(
                Layer::new()
                    .file("d", "now a file")
                    .dir("f/")
                    .file("f/y", "3"),
            );
        let root = fx.unpack(false).unwrap();
        assert_eq!(read(&root.join("d")), "now a file");
        assert_eq!(read(&root.join("f/y")), "3");
    }

    /// A directory outside the root that hostile layers aim at.
    fn host_target() -> (tempfile::TempDir, String) {
        let host = tempfile::tempdir().unwrap();
        fs::write(host.path().join("victim"), "host data").unwrap();
        let path = host.path().to_str().unwrap().to_owned();
        (host, path)
    }

    fn assert_host_untouched(host: &tempfile::TempDir) {
        let names: Vec<_> = fs::read_dir(host.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["victim"]);
        assert_eq!(read(&host.path().join("victim")), "host data");
    }

    #[test]
    fn an_absolute_symlink_is_followed_inside_the_root() {
        let (host, host_path) = host_target();
        let fx = Fixture::new()
            .layer(Layer::new().symlink("evil", &host_path))
            .layer(
                Layer::new()
                    .file("evil/pwned", "x")
                    .file("evil/victim", "overwritten"),
            );
        let root = fx.unpack(false).unwrap();
        assert_host_untouched(&host);
        let inside = root.join(host_path.trim_start_matches('/'));
        assert_eq!(read(&inside.join("pwned")), "x");
        assert_eq!(read(&inside.join("victim")), "overwritten");
    }

    #[test]
    fn a_relative_symlink_cannot_climb_out_of_the_root() {
        let (host, host_path) = host_target();
        let up = format!("{}{}", "../".repeat(20), host_path.trim_start_matches('/'));
        let fx = Fixture::new()
            .layer(Layer::new().dir("a/").symlink("a/up", &up))
            .layer(Layer::new().file("a/up/pwned", "x"));
        let root = fx.unpack(false).unwrap();
        assert_host_untouched(&host);
        assert_eq!(
            read(&root.join(host_path.trim_start_matches('/')).join("pwned")),
            "x"
        );
    }

    #[test]
    fn an_existing_symlink_is_replaced_never_written_through() {
        let (host, host_path) = host_target();
        let victim = format!("{host_path}/victim");
        let fx = Fixture::new()
            .layer(
                Layer::new()
                    .symlink("f", &victim)
                    .symlink("d", &host_path)
                    .symlink("h", &victim),
            )
            .layer(
                Layer::new()
                    .file("f", "mine")
                    .dir("d/")
                    .file("d/x", "y")
                    .hardlink("h2", "h"),
            );
        let root = fx.unpack(false).unwrap();
        assert_host_untouched(&host);
        assert_eq!(read(&root.join("f")), "mine");
        assert!(fs::symlink_metadata(root.join("d")).unwrap().is_dir());
        // A hard link to a symbolic link links the link itself.
        assert!(
            fs::symlink_metadata(root.join("h2"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn dot_dot_out_of_the_root_is_refused() {
        for name in ["../escape", "a/../../escape", "/../escape"] {
            let fx = Fixture::new().layer(Layer::new().file(name, "x"));
            let err = unpack_error(&fx);
            assert!(matches!(err, UnpackError::Escapes), "{name}: {err}");
            assert!(!exists(&fx.dir.path().join("escape")), "{name}");
        }
        // `..` that stays inside is fine.
        let fx = Fixture::new().layer(Layer::new().file("a/../b", "x").file("/abs", "y"));
        let root = fx.unpack(false).unwrap();
        assert_eq!(read(&root.join("b")), "x");
        assert_eq!(read(&root.join("abs")), "y");
    }

    #[test]
    fn hard_links_must_stay_inside_and_point_at_files() {
        let (host, host_path) = host_target();
        let outside = Fixture::new().layer(Layer::new().hardlink("h", "../../etc/passwd"));
        assert!(matches!(
            unpack_error(&outside),
            UnpackError::HardLinkOutside { .. }
        ));

        // Through a symlink to the host: resolved inside the root, where
        // there is nothing to link to.
        let through = Fixture::new().layer(
            Layer::new()
                .symlink("hostdir", &host_path)
                .hardlink("h", "hostdir/victim"),
        );
        assert!(matches!(
            unpack_error(&through),
            UnpackError::HardLinkMissing { .. }
        ));
        assert_eq!(fs::metadata(host.path().join("victim")).unwrap().nlink(), 1);

        let missing = Fixture::new().layer(Layer::new().hardlink("h", "nowhere"));
        assert!(matches!(
            unpack_error(&missing),
            UnpackError::HardLinkMissing { .. }
        ));

        let to_dir = Fixture::new().layer(Layer::new().dir("d/").hardlink("h", "d"));
        assert!(matches!(
            unpack_error(&to_dir),
            UnpackError::HardLinkToDirectory { .. }
        ));

        // Across layers, to a file of a lower layer.
        let across = Fixture::new()
            .layer(Layer::new().file("lib/a", "1"))
            .layer(Layer::new().hardlink("lib/b", "lib/a"));
        let root = across.unpack(false).unwrap();
        assert_eq!(fs::metadata(root.join("lib/b")).unwrap().nlink(), 2);
    }

    #[test]
    fn a_parent_that_is_a_file_is_an_error() {
        let fx = Fixture::new().layer(Layer::new().file("f", "x").file("f/y", "z"));
        assert!(matches!(
            unpack_error(&fx),
            UnpackError::ParentNotDirectory { .. }
        ));
    }

    #[test]
    fn a_symlink_loop_is_an_error() {
        let fx = Fixture::new().layer(
            Layer::new()
                .symlink("a", "b")
                .symlink("b", "a")
                .file("a/x", "1"),
        );
        assert!(matches!(unpack_error(&fx), UnpackError::SymlinkLoop));
    }

    #[test]
    fn a_tampered_layer_stops_everything_before_the_root_is_touched() {
        let fx = Fixture::new()
            .layer(Layer::new().file("first", "1"))
            .layer(Layer::new().file("second", "2"));
        let bad = &fx.layers[1];
        let mut bytes = fs::read(&bad.path).unwrap();
        bytes[600] ^= 1;
        fs::write(&bad.path, bytes).unwrap();
        let err = fx.unpack(false).unwrap_err();
        match &err {
            OciError::DigestMismatch { digest, .. } => assert_eq!(digest, &bad.digest),
            other => panic!("expected a digest mismatch, got {other}"),
        }
        assert!(err.to_string().contains(&bad.digest));
        assert!(!exists(&fx.root()), "the root was created");
    }

    #[test]
    fn unprivileged_unpacking_skips_devices_and_ownership() {
        let fx = Fixture::new().layer(
            Layer::new()
                .device(EntryType::Char, "dev/null", 1, 3)
                .with_pax(
                    &[("uid", b"4321"), ("gid", b"8765")],
                    EntryType::Regular,
                    "owned",
                    "",
                    0o640,
                ),
        );
        let root = fx.unpack(false).unwrap();
        assert!(!exists(&root.join("dev/null")));
        let owned = fs::metadata(root.join("owned")).unwrap();
        assert_eq!(owned.uid(), nix::unistd::geteuid().as_raw());
        assert_eq!(owned.mode() & 0o7777, 0o640);
    }

    #[test]
    #[ignore = "needs root"]
    fn as_root_ownership_devices_and_capabilities_are_kept() {
        assert!(nix::unistd::geteuid().is_root(), "run this test as root");
        // cap_net_raw+ep, as `setcap` writes it (VFS_CAP_REVISION_2).
        let cap: &[u8] = &[
            0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let fx = Fixture::new().layer(
            Layer::new()
                .device(EntryType::Char, "dev/null", 1, 3)
                .device(EntryType::Block, "dev/loop9", 7, 9)
                .with_pax(
                    &[
                        ("uid", b"4321"),
                        ("gid", b"8765"),
                        ("SCHILY.xattr.security.capability", cap),
                        ("SCHILY.xattr.user.note", b"hi"),
                    ],
                    EntryType::Regular,
                    "bin/ping",
                    "",
                    0o4755,
                )
                .with_pax(
                    &[("uid", b"7"), ("gid", b"8")],
                    EntryType::Directory,
                    "home/u/",
                    "",
                    0o700,
                )
                .with_pax(
                    &[("uid", b"9"), ("gid", b"10")],
                    EntryType::Symlink,
                    "link",
                    "bin/ping",
                    0o777,
                ),
        );
        let root = fx.unpack(true).unwrap();
        let null = fs::metadata(root.join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
        assert!(
            fs::metadata(root.join("dev/loop9"))
                .unwrap()
                .file_type()
                .is_block_device()
        );
        let ping = fs::metadata(root.join("bin/ping")).unwrap();
        assert_eq!((ping.uid(), ping.gid()), (4321, 8765));
        assert_eq!(ping.mode() & 0o7777, 0o4755, "chown must not clear setuid");
        assert_eq!(
            get_xattr(&root.join("bin/ping"), "security.capability"),
            cap
        );
        assert_eq!(get_xattr(&root.join("bin/ping"), "user.note"), b"hi");
        let home = fs::metadata(root.join("home/u")).unwrap();
        assert_eq!(
            (home.uid(), home.gid(), home.mode() & 0o7777),
            (7, 8, 0o700)
        );
        let link = fs::symlink_metadata(root.join("link")).unwrap();
        assert_eq!((link.uid(), link.gid()), (9, 10));
    }

    fn get_xattr(path: &Path, name: &str) -> Vec<u8> {
        let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
        let c_name = CString::new(name).unwrap();
        let mut buf = vec![0u8; 256];
        // SAFETY: both strings are NUL-terminated; `buf` is a live buffer
        // of the length passed.
        let n = unsafe {
            libc::lgetxattr(
                c_path.as_ptr(),
                c_name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert!(n >= 0, "{name}: {}", io::Error::last_os_error());
        buf.truncate(usize::try_from(n).unwrap());
        buf
    }

    #[test]
    fn pax_times_keep_their_fraction() {
        let t = parse_pax_time("1700000000.25").unwrap();
        assert_eq!((t.tv_sec(), t.tv_nsec()), (1_700_000_000, 250_000_000));
        assert_eq!(parse_pax_time("12").unwrap().tv_sec(), 12);
        assert!(parse_pax_time("x").is_none());
        assert!(parse_pax_time("1.5e3").is_none());
    }
}
