//! Volume disks: found by serial number, mounted where the host asks.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{MsFlags, mount};

/// How long a disk may take to appear with a size: the host attaches a
/// volume to a running guest just before it asks for the mount, and the
/// guest learns the new size from a configuration interrupt.
const APPEAR: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub(crate) enum VolumeError {
    #[error("volume path {0:?} is not absolute")]
    Relative(String),
    #[error("no disk with serial {serial} appeared within {} s", APPEAR.as_secs())]
    Missing { serial: String },
    #[error("cannot mount volume disk {serial} at {path}")]
    Mount {
        serial: String,
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Mounts the disk with serial number `serial` at `path` (made if
/// missing), once it has a size; nothing if that disk is mounted there.
pub(crate) fn mount_disk(sys_block: &Path, serial: &str, path: &str) -> Result<(), VolumeError> {
    if !path.starts_with('/') {
        return Err(VolumeError::Relative(path.to_owned()));
    }
    let started = Instant::now();
    let dev = loop {
        if let Some(dev) = sized_disk(sys_block, serial) {
            break dev;
        }
        if started.elapsed() > APPEAR {
            return Err(VolumeError::Missing {
                serial: serial.to_owned(),
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let failed = |source| VolumeError::Mount {
        serial: serial.to_owned(),
        path: path.to_owned(),
        source,
    };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(failed)?;
    if mounted_at(&mountinfo, &dev, path) {
        return Ok(());
    }
    let appeared = started.elapsed();
    std::fs::create_dir_all(path).map_err(failed)?;
    mount(
        Some(&dev),
        path,
        Some("ext4"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| failed(e.into()))?;
    tracing::info!(
        serial,
        path,
        appeared_ms = appeared.as_millis(),
        mounted_ms = (started.elapsed() - appeared).as_millis(),
        "mounted a volume"
    );
    Ok(())
}

/// `/dev/<name>` of the block device whose serial is `serial`, once its
/// size is not zero.
fn sized_disk(sys_block: &Path, serial: &str) -> Option<PathBuf> {
    std::fs::read_dir(sys_block)
        .ok()?
        .filter_map(Result::ok)
        .find(|entry| {
            std::fs::read_to_string(entry.path().join("serial")).is_ok_and(|s| s.trim() == serial)
        })
        .filter(|entry| {
            std::fs::read_to_string(entry.path().join("size"))
                .is_ok_and(|s| s.trim().parse::<u64>().is_ok_and(|n| n > 0))
        })
        .map(|entry| Path::new("/dev").join(entry.file_name()))
}

/// Whether `mountinfo` (`/proc/self/mountinfo`) shows `dev` mounted at
/// `path`.
fn mounted_at(mountinfo: &str, dev: &Path, path: &str) -> bool {
    let dev = dev.to_string_lossy();
    mountinfo.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let source = line
            .split(" - ")
            .nth(1)
            .and_then(|rest| rest.split(' ').nth(1));
        fields.get(4) == Some(&path) && source == Some(&dev)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_are_found_by_serial_once_sized() {
        let sys = tempfile::tempdir().unwrap();
        for (name, serial, size) in [
            ("vda", "", "8"),
            ("vdb", "hearth-vol0", "0"),
            ("vdc", "hearth-vol1", "2048"),
        ] {
            let dir = sys.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("serial"), format!("{serial}\n")).unwrap();
            std::fs::write(dir.join("size"), format!("{size}\n")).unwrap();
        }
        assert_eq!(
            sized_disk(sys.path(), "hearth-vol1"),
            Some(PathBuf::from("/dev/vdc"))
        );
        assert_eq!(sized_disk(sys.path(), "hearth-vol0"), None, "no size yet");
        assert_eq!(sized_disk(sys.path(), "hearth-vol3"), None);
        assert!(matches!(
            mount_disk(sys.path(), "hearth-vol1", "data"),
            Err(VolumeError::Relative(_))
        ));
    }

    #[test]
    fn mounts_are_read_from_mountinfo() {
        let info = "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                    40 22 254:32 / /data rw,nosuid,nodev - ext4 /dev/vdc rw\n";
        assert!(mounted_at(info, Path::new("/dev/vdc"), "/data"));
        assert!(!mounted_at(info, Path::new("/dev/vdb"), "/data"));
        assert!(!mounted_at(info, Path::new("/dev/vdc"), "/other"));
    }
}
