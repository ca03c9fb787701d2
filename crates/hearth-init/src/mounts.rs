//! The API file systems PID 1 mounts, planned from what is already mounted.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, symlink};
use std::path::Path;

use nix::mount::{MsFlags, mount};

/// One mount to perform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    pub(crate) source: &'static str,
    pub(crate) target: &'static str,
    pub(crate) fstype: &'static str,
    pub(crate) flags: MsFlags,
    pub(crate) data: Option<&'static str>,
}

const fn m(
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
) -> Mount {
    Mount {
        source,
        target,
        fstype,
        flags,
        data,
    }
}

/// Every mount in order (parents before children).
fn all() -> [Mount; 7] {
    let nosuid_nodev = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
    let nsne = nosuid_nodev.union(MsFlags::MS_NOEXEC);
    [
        m("proc", "/proc", "proc", nsne, None),
        m("sysfs", "/sys", "sysfs", nsne, None),
        m(
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        m(
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
            Some("newinstance,ptmxmode=0666,gid=5,mode=620"),
        ),
        m(
            "tmpfs",
            "/dev/shm",
            "tmpfs",
            nosuid_nodev,
            Some("mode=1777"),
        ),
        m("tmpfs", "/run", "tmpfs", nosuid_nodev, Some("mode=0755")),
        m("cgroup2", "/sys/fs/cgroup", "cgroup2", nsne, None),
    ]
}

/// The mounts still to do, given the mount points already in use.
pub(crate) fn plan(mounted: &HashSet<String>) -> Vec<Mount> {
    all()
        .into_iter()
        .filter(|m| !mounted.contains(m.target))
        .collect()
}

/// Mount points listed in /proc/self/mountinfo text (field 5).
pub(crate) fn mount_points(mountinfo: &str) -> HashSet<String> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .collect()
}

/// Links created in /dev when missing: (link, target).
pub(crate) const DEV_LINKS: [(&str, &str); 5] = [
    ("/dev/ptmx", "pts/ptmx"),
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
];

#[derive(Debug, thiserror::Error)]
pub(crate) enum MountError {
    #[error("Cannot create mount point {0}")]
    Mkdir(&'static str, #[source] io::Error),
    #[error("Cannot mount {fstype} on {target}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        source: nix::Error,
    },
    #[error("Cannot link {0}")]
    Link(&'static str, #[source] io::Error),
}

/// Mounts whatever is not mounted yet, then adds the /dev links.
pub(crate) fn mount_all() -> Result<(), MountError> {
    // /proc first: it tells us what else is there.
    let mut mounted = HashSet::new();
    if !Path::new("/proc/self").exists() {
        apply(&all()[0])?;
    }
    if let Ok(info) = fs::read_to_string("/proc/self/mountinfo") {
        mounted = mount_points(&info);
    }
    for mount in plan(&mounted) {
        apply(&mount)?;
    }
    for (link, target) in DEV_LINKS {
        if Path::new(link).symlink_metadata().is_err() {
            symlink(target, link).map_err(|e| MountError::Link(link, e))?;
        }
    }
    Ok(())
}

fn apply(mount_spec: &Mount) -> Result<(), MountError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(mount_spec.target)
        .map_err(|e| MountError::Mkdir(mount_spec.target, e))?;
    match mount(
        Some(mount_spec.source),
        mount_spec.target,
        Some(mount_spec.fstype),
        mount_spec.flags,
        mount_spec.data,
    ) {
        Ok(()) | Err(nix::Error::EBUSY) => Ok(()),
        Err(source) => Err(MountError::Mount {
            fstype: mount_spec.fstype,
            target: mount_spec.target,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
23 22 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw,size=1k,mode=755
24 22 0:20 / /proc rw,nosuid,nodev,noexec - proc proc rw
25 22 0:21 / /my\\040dir rw - tmpfs tmpfs rw
";

    #[test]
    fn reads_mount_points() {
        let points = mount_points(MOUNTINFO);
        assert!(points.contains("/") && points.contains("/dev") && points.contains("/proc"));
        assert!(points.contains("/my dir"));
    }

    #[test]
    fn plans_only_what_is_missing_in_order() {
        let targets: Vec<_> = plan(&mount_points(MOUNTINFO))
            .iter()
            .map(|m| m.target)
            .collect();
        assert_eq!(
            targets,
            ["/sys", "/dev/pts", "/dev/shm", "/run", "/sys/fs/cgroup"]
        );
        let everything: Vec<_> = plan(&HashSet::new()).iter().map(|m| m.target).collect();
        assert_eq!(everything.len(), 7);
        assert_eq!(everything[0], "/proc");
        let pts = plan(&HashSet::new())
            .into_iter()
            .find(|m| m.target == "/dev/pts")
            .unwrap();
        assert_eq!(pts.data, Some("newinstance,ptmxmode=0666,gid=5,mode=620"));
    }
}
