//! Template root filesystems: the Debian base built with `mmdebstrap`
//! (stage A, cached as a tarball) turned into an ext4 image with our init
//! (stage B, cheap), published under `<templates_dir>/<name>/<build_id>`.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::progress::Progress;
use crate::recipe::RunConfig;
use crate::tool::{self, ToolError};

const BASE_NAME: &str = "base";
const SUITE: &str = "bookworm";
const PACKAGES: [&str; 11] = [
    "bash",
    "coreutils",
    "procps",
    "iproute2",
    "ca-certificates",
    "curl",
    "python3",
    "sudo",
    "iputils-ping",
    "less",
    "tzdata",
];
/// Keep documentation out of the image (licences stay).
const DPKG_OPTIONS: [&str; 4] = [
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
];
/// Run by `mmdebstrap` with the new root as `$1`.
const CUSTOMIZE_HOOKS: [&str; 4] = [
    r#"chroot "$1" groupadd --gid 1000 user"#,
    r#"chroot "$1" useradd --uid 1000 --gid 1000 --groups sudo --create-home --home-dir /home/user --shell /bin/bash user"#,
    r#"printf '%s\n' 'user ALL=(ALL:ALL) NOPASSWD: ALL' > "$1/etc/sudoers.d/user" && chmod 0440 "$1/etc/sudoers.d/user""#,
    r#"rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/cache/debconf/*-old"#,
];
/// Bump when the recipe changes the image in a way its inputs don't show.
const RECIPE_VERSION: &str = "hearth-base-recipe-1";
/// Where the guest init lives; the kernel command line's `init=`.
const INIT_PATH: &str = "/usr/sbin/hearth-init";
/// Names our init answers to, so `reboot` in the guest ends the sandbox.
const INIT_ALIASES: [&str; 3] = ["reboot", "poweroff", "halt"];
const HOSTNAME: &str = "hearth\n";
/// A regular file the init may rewrite at boot; public resolver by default.
const RESOLV_CONF: &str = "nameserver 8.8.8.8\n";
/// Free space left in the image for the sandbox's writes.
const FREE_SPACE: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const CURRENT: &str = "current";

/// Where templates are published and what goes into them.
#[derive(Debug, Clone)]
pub struct TemplateOptions {
    /// Published templates: `<templates_dir>/<name>/<build_id>/`.
    pub templates_dir: PathBuf,
    /// The bootstrapped base tarballs: `<cache_dir>/rootfs/<hash>.tar`.
    pub cache_dir: PathBuf,
    /// The static `hearth-init` binary to install as the guest's PID 1.
    pub init_binary: PathBuf,
}

/// A published template build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub name: String,
    /// First 16 hex digits of the hash of everything that went into it.
    pub build_id: String,
    /// `<templates_dir>/<name>/<build_id>`.
    pub dir: PathBuf,
    /// The ext4 root filesystem image (raw, sparse).
    pub rootfs: PathBuf,
    /// The guest's init, for the kernel command line (`init=`).
    pub init_path: String,
    /// When it was built (Unix seconds).
    pub created_at: u64,
    /// Size of the root filesystem image in bytes.
    pub size: u64,
    /// What it was built from, for people: `debian:bookworm (mmdebstrap)`,
    /// an image reference, `Dockerfile`, `e2b build`.
    pub source: String,
    /// How its sandboxes run: environment, user, start and ready commands.
    pub run: TemplateRun,
    /// Seconds the build took (0 when unknown).
    pub build_secs: u64,
}

/// How a template's sandboxes start: the state at the end of its build.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRun {
    /// Environment, working directory, user, stop signal, ports, labels.
    #[serde(default)]
    pub config: RunConfig,
    /// Started as a service before the snapshot is taken.
    #[serde(default)]
    pub start_cmd: Option<Vec<String>>,
    /// Retried until it exits 0; then the snapshot is taken.
    #[serde(default)]
    pub ready_cmd: Option<Vec<String>>,
}

/// A template's `meta.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    name: String,
    build_id: String,
    created_at: u64,
    size: u64,
    init_path: String,
    /// What identifies the inputs: the base hash, or a build's last step key.
    base_hash: String,
    init_sha256: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    run: TemplateRun,
    #[serde(default)]
    build_secs: u64,
}

/// A template build ready to publish: a directory holding `rootfs.ext4`.
#[derive(Debug, Clone)]
pub struct NewBuild {
    pub name: String,
    pub build_id: String,
    /// Identifies the inputs (recorded only).
    pub inputs_hash: String,
    pub source: String,
    pub run: TemplateRun,
    pub build_secs: u64,
}

/// Why a template could not be built or found.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("building a template needs root; run it as root or with sudo")]
    NotRoot,
    #[error("mmdebstrap is not installed; run: apt-get install -y mmdebstrap")]
    MmdebstrapMissing,
    #[error(
        "the guest init binary {} does not exist; build it with: \
         cargo build --release -p hearth-init",
        path.display()
    )]
    InitMissing { path: PathBuf },
    #[error(
        "the image's {path} is a symbolic link; Hearth writes its init and the account \
         'user' there and does not follow links out of an image: make it a directory"
    )]
    SymlinkedDir { path: String },
    #[error("template name {name:?} is invalid; use a plain name such as \"base\"")]
    InvalidName { name: String },
    #[error("bootstrapping the Debian base failed")]
    Bootstrap(#[source] ToolError),
    #[error("unpacking the Debian base failed")]
    Unpack(#[source] ToolError),
    #[error("mkfs.ext4 could not build the root filesystem image")]
    Mkfs(#[source] ToolError),
    #[error("the new root filesystem image fails e2fsck; delete {} and rebuild", cache.display())]
    Fsck {
        cache: PathBuf,
        #[source]
        source: ToolError,
    },
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("template metadata {} is unreadable; delete its directory and rebuild", path.display())]
    Meta {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TemplateError {
    let path = path.to_owned();
    move |source| TemplateError::Io {
        action,
        path,
        source,
    }
}

/// Builds the `base` template (Debian bookworm, our init) and points
/// `<templates_dir>/base/current` at it; returns at once if this exact build
/// exists. Needs root.
pub fn build_base_template(
    opts: &TemplateOptions,
    progress: &dyn Progress,
) -> Result<Template, TemplateError> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(io_err("read", Path::new("/proc/self/status")))?;
    if effective_uid(&status) != Some(0) {
        return Err(TemplateError::NotRoot);
    }
    let init_sha256 = match tool::sha256_file(&opts.init_binary) {
        Ok(sha) => sha,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(TemplateError::InitMissing {
                path: opts.init_binary.clone(),
            });
        }
        Err(e) => return Err(io_err("read", &opts.init_binary)(e)),
    };
    let base_hash = base_hash();
    let build_id = build_id(&base_hash, &init_sha256);
    let name_dir = opts.templates_dir.join(BASE_NAME);
    let out_dir = name_dir.join(&build_id);
    if let Some(template) = load_template(&out_dir)? {
        set_current(&name_dir, &build_id)?;
        return Ok(template);
    }

    let tarball = bootstrap(&opts.cache_dir, &base_hash, progress)?;

    let started = Instant::now();
    let work = name_dir.join(format!(".build-{build_id}-{}", std::process::id()));
    if work.exists() {
        fs::remove_dir_all(&work).map_err(io_err("remove", &work))?;
    }
    let root = work.join("root");
    let staged = work.join("out");
    fs::create_dir_all(&root).map_err(io_err("create", &root))?;
    fs::create_dir_all(&staged).map_err(io_err("create", &staged))?;

    progress.stage("unpacking");
    tool::run(
        Command::new("tar")
            .args(["-xpf"])
            .arg(&tarball)
            .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-C"])
            .arg(&root),
        "tar",
    )
    .map_err(TemplateError::Unpack)?;
    customize(&root, &opts.init_binary)?;

    let rootfs = staged.join("rootfs.ext4");
    let size = make_ext4(&root, &rootfs, progress).map_err(|e| match e {
        TemplateError::Fsck { source, .. } => TemplateError::Fsck {
            cache: tarball.clone(),
            source,
        },
        e => e,
    })?;

    let meta = Meta {
        name: BASE_NAME.to_owned(),
        build_id: build_id.clone(),
        created_at: tool::unix_now(),
        size,
        init_path: INIT_PATH.to_owned(),
        base_hash,
        init_sha256,
        source: format!("debian:{SUITE} (mmdebstrap)"),
        run: TemplateRun::default(),
        build_secs: started.elapsed().as_secs(),
    };
    publish_meta(&staged, &out_dir, &meta)?;
    fs::remove_dir_all(&work).map_err(io_err("remove", &work))?;
    set_current(&name_dir, &build_id)?;
    tracing::info!(
        build_id,
        secs = started.elapsed().as_secs_f32(),
        "base template built"
    );
    load_template(&out_dir)?.ok_or_else(|| {
        io_err("read", &out_dir)(io::Error::new(io::ErrorKind::NotFound, "template vanished"))
    })
}

/// Turns the directory tree `root` into the ext4 image `rootfs` (sized for
/// the tree plus the sandbox's free space) and checks it; returns its size.
pub fn make_ext4(
    root: &Path,
    rootfs: &Path,
    progress: &dyn Progress,
) -> Result<u64, TemplateError> {
    progress.stage("formatting");
    let used = tree_bytes(root).map_err(io_err("measure", root))?;
    let size = image_size(used);
    File::create(rootfs)
        .and_then(|f| f.set_len(size))
        .map_err(io_err("create", rootfs))?;
    tool::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "rootfs", "-d"])
            .arg(root)
            .arg(rootfs)
            .arg(format!("{}M", size / MIB)),
        "e2fsprogs",
    )
    .map_err(TemplateError::Mkfs)?;
    progress.stage("checking");
    tool::run(Command::new("e2fsck").arg("-fn").arg(rootfs), "e2fsprogs").map_err(|source| {
        TemplateError::Fsck {
            cache: rootfs.to_owned(),
            source,
        }
    })?;
    Ok(size)
}

/// Publishes `staged` (a directory holding `rootfs.ext4`) as build
/// `build.build_id` of template `build.name`, without making it current:
/// see [`set_current_build`]. Returns the existing build if one with this
/// id is there already (and removes `staged`).
pub fn publish_build(
    templates_dir: &Path,
    staged: &Path,
    build: NewBuild,
) -> Result<Template, TemplateError> {
    if !is_plain_name(&build.name) || !is_plain_name(&build.build_id) {
        return Err(TemplateError::InvalidName { name: build.name });
    }
    let rootfs = staged.join("rootfs.ext4");
    let size = rootfs.metadata().map_err(io_err("read", &rootfs))?.len();
    let out_dir = templates_dir.join(&build.name).join(&build.build_id);
    let meta = Meta {
        name: build.name,
        build_id: build.build_id,
        created_at: tool::unix_now(),
        size,
        init_path: INIT_PATH.to_owned(),
        base_hash: build.inputs_hash,
        init_sha256: String::new(),
        source: build.source,
        run: build.run,
        build_secs: build.build_secs,
    };
    fs::create_dir_all(templates_dir.join(&meta.name))
        .map_err(io_err("create", &templates_dir.join(&meta.name)))?;
    publish_meta(staged, &out_dir, &meta)?;
    if staged.exists() {
        fs::remove_dir_all(staged).map_err(io_err("remove", staged))?;
    }
    load_template(&out_dir)?.ok_or_else(|| {
        io_err("read", &out_dir)(io::Error::new(io::ErrorKind::NotFound, "template vanished"))
    })
}

/// Publishes `staged`, a whole build made elsewhere (its `meta.json`,
/// `rootfs.ext4` and anything else) as build `build_id` of template
/// `name`, without making it current. Its metadata must name that build.
/// A build of that id published first wins, and `staged` is removed.
pub fn adopt_build(
    templates_dir: &Path,
    staged: &Path,
    name: &str,
    build_id: &str,
) -> Result<Template, TemplateError> {
    let invalid = || TemplateError::InvalidName {
        name: format!("{name}/{build_id}"),
    };
    if !is_plain_name(name) || !is_plain_name(build_id) || build_id == CURRENT {
        return Err(invalid());
    }
    let found = load_template(staged)?.ok_or_else(|| {
        io_err("read", &staged.join("meta.json"))(io::Error::new(
            io::ErrorKind::NotFound,
            "the build has no meta.json or rootfs.ext4",
        ))
    })?;
    if found.name != name || found.build_id != build_id {
        return Err(invalid());
    }
    let name_dir = templates_dir.join(name);
    fs::create_dir_all(&name_dir).map_err(io_err("create", &name_dir))?;
    let out_dir = name_dir.join(build_id);
    if let Err(e) = fs::rename(staged, &out_dir)
        && load_template(&out_dir)?.is_none()
    {
        return Err(io_err("publish", &out_dir)(e));
    }
    if staged.exists() {
        fs::remove_dir_all(staged).map_err(io_err("remove", staged))?;
    }
    load_template(&out_dir)?.ok_or_else(|| {
        io_err("read", &out_dir)(io::Error::new(io::ErrorKind::NotFound, "template vanished"))
    })
}

/// Makes `build_id` the build of template `name` that new sandboxes get.
pub fn set_current_build(
    templates_dir: &Path,
    name: &str,
    build_id: &str,
) -> Result<(), TemplateError> {
    if !is_plain_name(name) || !is_plain_name(build_id) {
        return Err(TemplateError::InvalidName {
            name: name.to_owned(),
        });
    }
    set_current(&templates_dir.join(name), build_id)
}

/// Writes `meta.json` into `staged` and renames it to `out_dir`; a build
/// of the same inputs published first by someone else wins.
fn publish_meta(staged: &Path, out_dir: &Path, meta: &Meta) -> Result<(), TemplateError> {
    write_meta(&staged.join("meta.json"), meta)?;
    if let Err(e) = fs::rename(staged, out_dir)
        && load_template(out_dir)?.is_none()
    {
        return Err(io_err("publish", out_dir)(e));
    }
    Ok(())
}

/// What every template's tree gets, whatever its source: our init and its
/// `reboot`/`poweroff`/`halt` names, the mount points it needs, regular
/// `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf` (the init rewrites
/// them), and the account `user` the SDKs run commands as: uid 1000 (or
/// the first free uid above it), home `/home/user`, passwordless sudo when
/// the image has sudo. Needs root for the ownership of the home directory.
pub fn prepare_tree(root: &Path, init_binary: &Path) -> Result<(), TemplateError> {
    // An image's symlink is the guest's business; writing through one here
    // could land on the host.
    for dir in [
        "etc",
        "etc/sudoers.d",
        "usr",
        "usr/sbin",
        "usr/local",
        "usr/local/sbin",
        "home",
        "home/user",
    ] {
        let path = root.join(dir);
        if path
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
        {
            return Err(TemplateError::SymlinkedDir {
                path: format!("/{dir}"),
            });
        }
    }
    for (dir, mode) in [
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("run", 0o755),
        ("tmp", 0o1777),
        ("etc", 0o755),
        ("usr/sbin", 0o755),
        ("home", 0o755),
    ] {
        let path = root.join(dir);
        if path.symlink_metadata().is_err() {
            fs::create_dir_all(&path).map_err(io_err("create", &path))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .map_err(io_err("set the mode of", &path))?;
        }
    }
    customize(root, init_binary)?;
    replace_with(&root.join("etc/hosts"), |p| {
        fs::write(
            p,
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        )
    })?;
    crate::account::ensure_user(root).map_err(|source| TemplateError::Io {
        action: "add the account 'user' to",
        path: root.join("etc/passwd"),
        source,
    })
}

/// The build `<templates_dir>/<name>/current` points at, if any.
pub fn find_template(templates_dir: &Path, name: &str) -> Result<Option<Template>, TemplateError> {
    if !is_plain_name(name) {
        return Err(TemplateError::InvalidName {
            name: name.to_owned(),
        });
    }
    let name_dir = templates_dir.join(name);
    let link = name_dir.join(CURRENT);
    let target = match fs::read_link(&link) {
        Ok(target) => target,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", &link)(e)),
    };
    match target.to_str() {
        Some(build_id) if is_plain_name(build_id) => load_template(&name_dir.join(build_id)),
        _ => Ok(None),
    }
}

/// Build `build_id` of template `name`, current or not, if it exists.
pub fn find_build(
    templates_dir: &Path,
    name: &str,
    build_id: &str,
) -> Result<Option<Template>, TemplateError> {
    if !is_plain_name(name) || !is_plain_name(build_id) || build_id == CURRENT {
        return Err(TemplateError::InvalidName {
            name: format!("{name}/{build_id}"),
        });
    }
    load_template(&templates_dir.join(name).join(build_id))
}

/// Every published build of every template, by name, newest first.
pub fn list_templates(templates_dir: &Path) -> Result<Vec<Template>, TemplateError> {
    let mut templates = Vec::new();
    for name_dir in plain_subdirs(templates_dir)? {
        for build_dir in plain_subdirs(&name_dir)? {
            if let Some(template) = load_template(&build_dir)? {
                templates.push(template);
            }
        }
    }
    templates.sort_by(|a, b| a.name.cmp(&b.name).then(b.created_at.cmp(&a.created_at)));
    Ok(templates)
}

/// Directories under `dir`, skipping hidden work dirs and `current`.
fn plain_subdirs(dir: &Path) -> Result<Vec<PathBuf>, TemplateError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("read", dir)(e)),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("read", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && name != CURRENT && is_plain_name(&name) {
            dirs.push(entry.path());
        }
    }
    Ok(dirs)
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains('/')
}

/// The effective uid from the text of `/proc/self/status`.
fn effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Hash of everything that goes into the bootstrapped tarball.
fn base_hash() -> String {
    let mut parts: Vec<&[u8]> = vec![RECIPE_VERSION.as_bytes(), SUITE.as_bytes()];
    parts.extend(PACKAGES.iter().map(|p| p.as_bytes()));
    parts.extend(DPKG_OPTIONS.iter().map(|o| o.as_bytes()));
    parts.extend(CUSTOMIZE_HOOKS.iter().map(|h| h.as_bytes()));
    tool::sha256_hex(&parts)
}

fn build_id(base_hash: &str, init_sha256: &str) -> String {
    let mut id = tool::sha256_hex(&[
        base_hash.as_bytes(),
        init_sha256.as_bytes(),
        RECIPE_VERSION.as_bytes(),
    ]);
    id.truncate(16);
    id
}

/// Stage A: the cached `mmdebstrap` tarball, built if missing.
fn bootstrap(
    cache_dir: &Path,
    base_hash: &str,
    progress: &dyn Progress,
) -> Result<PathBuf, TemplateError> {
    let dir = cache_dir.join("rootfs");
    let tarball = dir.join(format!("{base_hash}.tar"));
    if tarball.is_file() {
        return Ok(tarball);
    }
    if !tool::on_path("mmdebstrap") {
        return Err(TemplateError::MmdebstrapMissing);
    }
    fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    let partial = dir.join(format!("{base_hash}.partial.tar"));
    let log = dir.join(format!("{base_hash}.log"));
    for stale in [&partial, &log] {
        match fs::remove_file(stale) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("remove", stale)(e));
            }
            _ => {}
        }
    }
    progress.stage("bootstrapping");
    let started = Instant::now();
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg("--variant=minbase")
        .arg(format!("--include={}", PACKAGES.join(",")));
    cmd.args(DPKG_OPTIONS.iter().map(|o| format!("--dpkgopt={o}")));
    cmd.args(
        CUSTOMIZE_HOOKS
            .iter()
            .map(|h| format!("--customize-hook={h}")),
    );
    // No mirror: mmdebstrap uses deb.debian.org plus -updates and -security.
    cmd.arg(SUITE).arg(&partial);
    tool::run_logged(&mut cmd, "mmdebstrap", &log, |line| progress.message(line))
        .map_err(TemplateError::Bootstrap)?;
    fs::rename(&partial, &tarball).map_err(io_err("publish", &tarball))?;
    tracing::info!(
        secs = started.elapsed().as_secs_f32(),
        "Debian base bootstrapped"
    );
    Ok(tarball)
}

/// Stage B's changes to the unpacked tree.
fn customize(root: &Path, init_binary: &Path) -> Result<(), TemplateError> {
    let init = root.join(INIT_PATH.trim_start_matches('/'));
    fs::copy(init_binary, &init).map_err(io_err("install the init as", &init))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))
        .map_err(io_err("set the mode of", &init))?;

    let sbin = root.join("usr/local/sbin");
    fs::create_dir_all(&sbin).map_err(io_err("create", &sbin))?;
    for alias in INIT_ALIASES {
        let link = sbin.join(alias);
        replace_with(&link, |p| symlink(INIT_PATH, p))?;
    }
    replace_with(&root.join("etc/hostname"), |p| fs::write(p, HOSTNAME))?;
    replace_with(&root.join("etc/resolv.conf"), |p| fs::write(p, RESOLV_CONF))
}

/// Removes whatever is at `path` (file or symlink) and creates it anew.
fn replace_with(
    path: &Path,
    create: impl FnOnce(&Path) -> io::Result<()>,
) -> Result<(), TemplateError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err("replace", path)(e)),
        _ => {}
    }
    create(path).map_err(io_err("write", path))
}

/// Bytes the tree occupies on disk, counting hard links once.
fn tree_bytes(root: &Path) -> io::Result<u64> {
    let mut seen = HashSet::new();
    let mut total = root.symlink_metadata()?.blocks() * 512;
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.path().symlink_metadata()?;
            if meta.is_dir() {
                dirs.push(entry.path());
            } else if meta.nlink() > 1 && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            total += meta.blocks() * 512;
        }
    }
    Ok(total)
}

/// Used bytes plus the sandbox's free space, rounded up to MiB.
fn image_size(used: u64) -> u64 {
    (used + FREE_SPACE).div_ceil(MIB) * MIB
}

/// Atomically points `<name_dir>/current` at `build_id`.
fn set_current(name_dir: &Path, build_id: &str) -> Result<(), TemplateError> {
    let tmp = name_dir.join(format!(".{CURRENT}-{}", std::process::id()));
    replace_with(&tmp, |p| symlink(build_id, p))?;
    let link = name_dir.join(CURRENT);
    fs::rename(&tmp, &link).map_err(io_err("update", &link))
}

fn write_meta(path: &Path, meta: &Meta) -> Result<(), TemplateError> {
    let json = serde_json::to_vec_pretty(meta).map_err(|source| TemplateError::Meta {
        path: path.to_owned(),
        source,
    })?;
    fs::write(path, json).map_err(io_err("write", path))
}

/// Reads `<dir>/meta.json`; `None` when the directory holds no template.
fn load_template(dir: &Path) -> Result<Option<Template>, TemplateError> {
    let path = dir.join("meta.json");
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    let meta: Meta =
        serde_json::from_str(&text).map_err(|source| TemplateError::Meta { path, source })?;
    let rootfs = dir.join("rootfs.ext4");
    Ok(rootfs.is_file().then(|| Template {
        name: meta.name,
        build_id: meta.build_id,
        dir: dir.to_owned(),
        rootfs,
        init_path: meta.init_path,
        created_at: meta.created_at,
        size: meta.size,
        source: meta.source,
        run: meta.run,
        build_secs: meta.build_secs,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_id_is_16_hex_and_depends_on_both_inputs() {
        let base = base_hash();
        let id = build_id(&base, "aa");
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(id, build_id(&base, "aa"));
        assert_ne!(id, build_id(&base, "bb"));
        assert_ne!(id, build_id("other", "aa"));
    }

    #[test]
    fn effective_uid_is_the_second_uid_field() {
        let status = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        assert_eq!(effective_uid(status), Some(0));
        assert_eq!(effective_uid("Name:\tx\n"), None);
    }

    #[test]
    fn image_size_adds_free_space_and_rounds_to_mib() {
        assert_eq!(image_size(0), FREE_SPACE);
        assert_eq!(image_size(1), FREE_SPACE + MIB);
        assert_eq!(image_size(300 * MIB), FREE_SPACE + 300 * MIB);
    }

    fn publish_fake(name_dir: &Path, build_id: &str, created_at: u64) -> Template {
        let dir = name_dir.join(build_id);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("rootfs.ext4"), b"").unwrap();
        let meta = Meta {
            name: "base".into(),
            build_id: build_id.into(),
            created_at,
            size: 4096,
            init_path: INIT_PATH.into(),
            base_hash: "b".repeat(64),
            init_sha256: "c".repeat(64),
            source: "test".into(),
            run: TemplateRun::default(),
            build_secs: 1,
        };
        write_meta(&dir.join("meta.json"), &meta).unwrap();
        let json = fs::read_to_string(dir.join("meta.json")).unwrap();
        assert_eq!(serde_json::from_str::<Meta>(&json).unwrap(), meta);
        load_template(&dir).unwrap().unwrap()
    }

    #[test]
    fn find_template_follows_current_and_list_shows_all_builds() {
        let dir = tempfile::tempdir().unwrap();
        let name_dir = dir.path().join("base");
        assert_eq!(find_template(dir.path(), "base").unwrap(), None);
        let old = publish_fake(&name_dir, "00000000000000aa", 1);
        let new = publish_fake(&name_dir, "00000000000000bb", 2);
        fs::create_dir(name_dir.join(".build-x-1")).unwrap();
        set_current(&name_dir, "00000000000000aa").unwrap();
        assert_eq!(
            find_template(dir.path(), "base").unwrap().as_ref(),
            Some(&old)
        );
        set_current(&name_dir, "00000000000000bb").unwrap();
        let found = find_template(dir.path(), "base").unwrap().unwrap();
        assert_eq!(found, new);
        assert_eq!(found.rootfs, name_dir.join("00000000000000bb/rootfs.ext4"));
        assert_eq!(found.init_path, "/usr/sbin/hearth-init");
        assert_eq!(list_templates(dir.path()).unwrap(), [new, old]);
        assert!(matches!(
            find_template(dir.path(), "../etc"),
            Err(TemplateError::InvalidName { .. })
        ));
    }

    #[test]
    fn an_adopted_build_is_published_only_under_the_name_its_metadata_gives() {
        let dir = tempfile::tempdir().unwrap();
        let templates = dir.path().join("templates");
        let staging = dir.path().join("staging");
        let staged = publish_fake(&staging, "00000000000000aa", 1).dir;
        fs::write(staged.join("files.json"), b"[]").unwrap();
        // Metadata naming another build is refused, and left in place.
        assert!(matches!(
            adopt_build(&templates, &staged, "base", "00000000000000bb"),
            Err(TemplateError::InvalidName { .. })
        ));
        assert!(matches!(
            adopt_build(&templates, &staged, "base", CURRENT),
            Err(TemplateError::InvalidName { .. })
        ));
        let adopted = adopt_build(&templates, &staged, "base", "00000000000000aa").unwrap();
        assert_eq!(adopted.dir, templates.join("base/00000000000000aa"));
        assert!(
            adopted.dir.join("files.json").is_file(),
            "the whole directory moves"
        );
        assert!(!staged.exists());
        // Not current until someone says so.
        assert_eq!(find_template(&templates, "base").unwrap(), None);
        // The same build again: the first stays, the second copy goes.
        let again = publish_fake(&staging, "00000000000000aa", 2).dir;
        let kept = adopt_build(&templates, &again, "base", "00000000000000aa").unwrap();
        assert_eq!(kept.created_at, 1);
        assert!(!again.exists());
    }

    #[test]
    fn customize_installs_init_aliases_and_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("usr/sbin")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        symlink(
            "/run/systemd/resolve/stub-resolv.conf",
            root.join("etc/resolv.conf"),
        )
        .unwrap();
        let init = dir.path().join("init");
        fs::write(&init, b"#!init").unwrap();
        customize(&root, &init).unwrap();
        let installed = root.join("usr/sbin/hearth-init").metadata().unwrap();
        assert_eq!(installed.permissions().mode() & 0o7777, 0o755);
        for alias in INIT_ALIASES {
            let target = fs::read_link(root.join("usr/local/sbin").join(alias)).unwrap();
            assert_eq!(target, Path::new(INIT_PATH));
        }
        let resolv = root.join("etc/resolv.conf").symlink_metadata().unwrap();
        assert!(resolv.file_type().is_file());
        assert_eq!(
            fs::read_to_string(root.join("etc/hostname")).unwrap(),
            HOSTNAME
        );
    }

    #[test]
    fn a_missing_init_binary_says_how_to_build_it() {
        let dir = tempfile::tempdir().unwrap();
        let opts = TemplateOptions {
            templates_dir: dir.path().join("t"),
            cache_dir: dir.path().join("c"),
            init_binary: dir.path().join("hearth-init"),
        };
        match build_base_template(&opts, &crate::NoProgress) {
            Err(e @ TemplateError::InitMissing { .. }) => {
                assert!(
                    e.to_string()
                        .contains("cargo build --release -p hearth-init")
                );
            }
            Err(TemplateError::NotRoot) => {}
            other => panic!("{other:?}"),
        }
    }
}
