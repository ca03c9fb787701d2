//! Where a jailed Firecracker lives and how its jailer is started, as plain
//! data.
//!
//! The jailer makes `<base>/<exec file name>/<id>/root` the VMM's root
//! (`pivot_root` in a mount namespace of its own), copies the Firecracker
//! binary in, makes `/dev/kvm` and `/dev/net/tun` there, gives the
//! directory to the VMM's uid, joins the network namespace and the cgroup,
//! drops to the uid and execs Firecracker. Every file the VMM uses is linked
//! into that root beforehand; it reaches nothing else on the host.

use std::path::{Path, PathBuf};

use crate::VmmError;

/// The API socket, in the jail's root.
pub const API_SOCKET: &str = "api.sock";
/// The guest kernel.
pub const KERNEL: &str = "vmlinux";
/// The root disk: a hard link to the caller's image, so the guest's writes
/// reach it.
pub const ROOT_DISK: &str = "rootfs.img";
/// Firecracker's log and metrics (plain files, read after a failure).
pub const LOG: &str = "firecracker.log";
pub const METRICS: &str = "metrics.json";
/// A saved state on its way in ([`crate::Vm::load`]) and out
/// ([`crate::Vm::save`]).
pub const RESTORE_STATE: &str = "restore.state";
pub const RESTORE_MEMORY: &str = "restore.mem";
pub const SAVED_STATE: &str = "saved.state";
pub const SAVED_MEMORY: &str = "saved.mem";

/// The jail of the VM whose run directory is `run_dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    /// `--chroot-base-dir`: inside the run directory, so that whatever
    /// removes the VM's directory removes its jail.
    pub base: PathBuf,
    /// `--id`: the run directory's name, in the characters the jailer
    /// takes (letters, digits and hyphens; at most 64).
    pub id: String,
    /// The file name of the Firecracker binary, which the jailer names the
    /// level between `base` and `id` after.
    pub exec_name: String,
}

impl Jail {
    pub fn new(run_dir: &Path, firecracker: &Path) -> Self {
        let name = run_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut id: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(64)
            .collect();
        if id.is_empty() {
            id = "vm".to_owned();
        }
        Self {
            base: run_dir.join("jail"),
            id,
            exec_name: firecracker.file_name().map_or_else(
                || "firecracker".into(),
                |n| n.to_string_lossy().into_owned(),
            ),
        }
    }

    /// The VMM's root directory, as the host sees it.
    pub fn root(&self) -> PathBuf {
        self.base.join(&self.exec_name).join(&self.id).join("root")
    }

    /// `name` in the root, as the host sees it.
    pub fn host_path(&self, name: &str) -> PathBuf {
        self.root().join(name)
    }

    /// `name` as the jailed VMM sees it.
    pub fn inside(name: &str) -> String {
        format!("/{name}")
    }
}

/// Whether process `pid`'s root directory is the root of a jail under
/// `run_dir`. Compared by device and inode: the path /proc shows for the
/// root of a process that pivoted into its jail is its own `/`.
pub fn is_jailed_in(pid: u32, run_dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(root) = std::fs::metadata(format!("/proc/{pid}/root")) else {
        return false;
    };
    let roots = std::fs::read_dir(run_dir.join("jail"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|exec| {
            std::fs::read_dir(exec.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|id| id.path().join("root"));
    roots
        .filter_map(|dir| std::fs::metadata(dir).ok())
        .any(|dir| (dir.dev(), dir.ino()) == (root.dev(), root.ino()))
}

/// Everything the jailer is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailerArgs {
    pub jail: Jail,
    pub firecracker: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// `--netns`: the network namespace the VMM joins before it opens the
    /// tap.
    pub netns: Option<PathBuf>,
    /// `--parent-cgroup`, relative to the cgroup v2 hierarchy: with no
    /// `--cgroup` values the jailer moves the VMM into that existing cgroup,
    /// whose limits its caller set.
    pub cgroup: Option<String>,
}

impl JailerArgs {
    pub fn render(&self) -> Vec<String> {
        let mut args = vec![
            "--id".to_owned(),
            self.jail.id.clone(),
            "--exec-file".to_owned(),
            self.firecracker.display().to_string(),
            "--uid".to_owned(),
            self.uid.to_string(),
            "--gid".to_owned(),
            self.gid.to_string(),
            "--chroot-base-dir".to_owned(),
            self.jail.base.display().to_string(),
            // Version 2 always: without a `--parent-cgroup` that exists and
            // without `--cgroup` values, the jailer then makes no cgroup.
            "--cgroup-version".to_owned(),
            "2".to_owned(),
        ];
        if let Some(cgroup) = &self.cgroup {
            args.extend(["--parent-cgroup".to_owned(), cgroup.clone()]);
        }
        if let Some(netns) = &self.netns {
            args.extend(["--netns".to_owned(), netns.display().to_string()]);
        }
        // No `--daemonize`: the VMM stays this process's child, supervised
        // and reaped here, its standard output (the guest's serial console)
        // and error written to the files the caller opened. No
        // `--no-seccomp`: Firecracker installs its default filters.
        args.extend([
            "--".to_owned(),
            "--api-sock".to_owned(),
            Jail::inside(API_SOCKET),
        ]);
        args
    }
}

/// The `--parent-cgroup` for the `cgroup.procs` files a VMM is to join:
/// none for none, the directory of the one file relative to the cgroup v2
/// hierarchy `v2_root` for one there. Several (cgroup v1, one per
/// controller) the jailer cannot join without making cgroups of its own.
pub fn parent_cgroup(
    procs: &[PathBuf],
    v2_root: Option<&Path>,
) -> Result<Option<String>, VmmError> {
    let unsupported = || {
        VmmError::Unsupported(format!(
            "the Firecracker driver needs the VMM's cgroup in a cgroup v2 hierarchy, not {procs:?}"
        ))
    };
    match procs {
        [] => Ok(None),
        [one] => {
            let dir = one.parent().ok_or_else(unsupported)?;
            let relative = v2_root
                .and_then(|root| dir.strip_prefix(root).ok())
                .ok_or_else(unsupported)?;
            Ok(Some(relative.display().to_string()))
        }
        _ => Err(unsupported()),
    }
}

/// Where the cgroup v2 hierarchy is mounted, from `/proc/mounts`.
pub fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(target))
    })
}

/// The uid and gid a VMM runs as: `run_as` is `UID:GID` (names are not
/// looked up: a static binary has no NSS); `None` keeps the caller's.
pub fn ids(run_as: Option<&str>) -> Result<(u32, u32), VmmError> {
    let Some(run_as) = run_as else {
        return Ok((
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        ));
    };
    run_as
        .split_once(':')
        .and_then(|(uid, gid)| Some((uid.parse().ok()?, gid.parse().ok()?)))
        .ok_or_else(|| {
            VmmError::Unsupported(format!(
                "the Firecracker driver runs VMMs as UID:GID, not '{run_as}'"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jail_layout_follows_the_jailer() {
        let jail = Jail::new(
            Path::new("/var/lib/hearth/sandboxes/ib4x_9.z"),
            Path::new("/usr/local/bin/firecracker"),
        );
        assert_eq!(jail.id, "ib4x-9-z");
        assert_eq!(
            jail.base,
            Path::new("/var/lib/hearth/sandboxes/ib4x_9.z/jail")
        );
        assert_eq!(
            jail.root(),
            Path::new("/var/lib/hearth/sandboxes/ib4x_9.z/jail/firecracker/ib4x-9-z/root")
        );
        assert_eq!(jail.host_path(API_SOCKET), jail.root().join("api.sock"));
        assert_eq!(Jail::inside(ROOT_DISK), "/rootfs.img");
        let long = Jail::new(&Path::new("/s").join("a".repeat(80)), Path::new("fc"));
        assert_eq!(long.id.len(), 64);
        assert_eq!(Jail::new(Path::new("/"), Path::new("fc")).id, "vm");
    }

    #[test]
    fn jailer_arguments() {
        let jail = Jail::new(Path::new("/d/sb1"), Path::new("/opt/fc/firecracker"));
        let args = JailerArgs {
            jail,
            firecracker: PathBuf::from("/opt/fc/firecracker"),
            uid: 100_005,
            gid: 100_005,
            netns: Some(PathBuf::from("/run/netns/hearth-5")),
            cgroup: Some("hearth.slice/vmm-sb1".to_owned()),
        };
        assert_eq!(
            args.render().join(" "),
            "--id sb1 --exec-file /opt/fc/firecracker --uid 100005 --gid 100005 \
             --chroot-base-dir /d/sb1/jail --cgroup-version 2 \
             --parent-cgroup hearth.slice/vmm-sb1 --netns /run/netns/hearth-5 \
             -- --api-sock /api.sock"
        );
        let bare = JailerArgs {
            netns: None,
            cgroup: None,
            ..args
        }
        .render();
        assert!(
            !bare
                .iter()
                .any(|a| a == "--netns" || a == "--parent-cgroup")
        );
        assert!(
            !bare
                .iter()
                .any(|a| a == "--daemonize" || a == "--no-seccomp")
        );
    }

    #[test]
    fn cgroups_must_be_one_v2_directory() {
        let root = Path::new("/sys/fs/cgroup");
        assert_eq!(parent_cgroup(&[], Some(root)).unwrap(), None);
        assert_eq!(
            parent_cgroup(
                &[PathBuf::from("/sys/fs/cgroup/hearth/vmm-a/cgroup.procs")],
                Some(root)
            )
            .unwrap()
            .as_deref(),
            Some("hearth/vmm-a")
        );
        let v1 = [
            PathBuf::from("/sys/fs/cgroup/cpu/hearth/a/cgroup.procs"),
            PathBuf::from("/sys/fs/cgroup/memory/hearth/a/cgroup.procs"),
        ];
        assert!(parent_cgroup(&v1, Some(root)).is_err());
        assert!(parent_cgroup(&v1[..1], None).is_err());
        let mounts = "proc /proc proc rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n";
        assert_eq!(cgroup2_mount(mounts), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn a_process_is_known_by_the_jail_it_is_rooted_in() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path().join("sb");
        let root = Jail::new(&run_dir, Path::new("firecracker")).root();
        std::fs::create_dir_all(&root).unwrap();
        let other = dir.path().join("other");
        std::fs::create_dir_all(other.join("jail/firecracker/other/root")).unwrap();
        let path = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: the child makes only async-signal-safe calls (chroot,
        // pause, _exit) on a path made before the fork.
        let child = unsafe { libc::fork() };
        if child == 0 {
            // SAFETY: as above.
            unsafe {
                if libc::chroot(path.as_ptr()) != 0 {
                    libc::_exit(1);
                }
                libc::pause();
                libc::_exit(0);
            }
        }
        let pid = u32::try_from(child).unwrap();
        // The child is in its jail once /proc shows it there.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !is_jailed_in(pid, &run_dir) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let jailed = is_jailed_in(pid, &run_dir);
        let elsewhere = is_jailed_in(pid, &other);
        // SAFETY: our own child, then reaped.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        assert!(
            jailed,
            "a process rooted in the jail is not known (chroot needs root)"
        );
        assert!(!elsewhere, "a jail of another directory claims it");
        assert!(!is_jailed_in(std::process::id(), &run_dir));
    }

    #[test]
    fn run_as_ids() {
        assert_eq!(ids(Some("100005:100006")).unwrap(), (100_005, 100_006));
        assert!(ids(Some("root")).is_err());
        assert!(ids(Some("1:x")).is_err());
        let (uid, _) = ids(None).unwrap();
        assert_eq!(uid, nix::unistd::geteuid().as_raw());
    }
}
