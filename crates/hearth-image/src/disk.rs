//! Copy-on-write disks of sandboxes.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::tool::{self, ToolError};

/// Why a sandbox disk could not be created.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("backing image {} is not readable; rebuild the template", path.display())]
    Backing {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the overlay disk {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: ToolError,
    },
    #[error("cannot copy the disk {} to {}", from.display(), to.display())]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How [`copy_raw`] made its copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyKind {
    /// The copy shares the original's blocks until either is written
    /// (`FICLONE`: XFS, btrfs, bcachefs): constant time, no space.
    Reflink,
    /// The data was copied, holes left holes: time and space grow with
    /// the data the image holds, not its size.
    Sparse,
}

/// Copies the raw image `from` to `to` (made, or replaced) for a VMM
/// without copy-on-write disks (Firecracker): a reflink where the file
/// system has them, else a copy of the data regions only.
pub fn copy_raw(from: &Path, to: &Path) -> Result<CopyKind, DiskError> {
    let fail = |source| DiskError::Copy {
        from: from.to_owned(),
        to: to.to_owned(),
        source,
    };
    let src = std::fs::File::open(from).map_err(fail)?;
    let dst = std::fs::File::create(to).map_err(fail)?;
    // FICLONE = _IOW(0x94, 9, int).
    const FICLONE: libc::c_ulong = 0x4004_9409;
    use std::os::fd::AsRawFd;
    // SAFETY: two open descriptors; FICLONE reads the source's number.
    if unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE, src.as_raw_fd()) } == 0 {
        return Ok(CopyKind::Reflink);
    }
    copy_data(&src, &dst).map_err(fail)?;
    Ok(CopyKind::Sparse)
}

/// Copies the data regions of `src` into `dst` (`copy_file_range`) and
/// gives `dst` its size.
fn copy_data(src: &std::fs::File, dst: &std::fs::File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = src.metadata()?.len();
    dst.set_len(0)?;
    let offset = |n: u64| i64::try_from(n).map_err(|_| io::Error::from(io::ErrorKind::InvalidData));
    for (start, end) in crate::sparse::data_regions(src)? {
        let (mut off_in, mut off_out, end) = (offset(start)?, offset(start)?, offset(end)?);
        while off_in < end {
            let want = usize::try_from(end - off_in)
                .unwrap_or(usize::MAX)
                .min(1 << 30);
            // SAFETY: open descriptors and offsets this function owns.
            let copied = unsafe {
                libc::copy_file_range(
                    src.as_raw_fd(),
                    &raw mut off_in,
                    dst.as_raw_fd(),
                    &raw mut off_out,
                    want,
                    0,
                )
            };
            if copied < 0 {
                return Err(io::Error::last_os_error());
            }
            if copied == 0 {
                break;
            }
        }
    }
    dst.set_len(len)
}

/// Format of a disk image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

impl ImageFormat {
    fn as_str(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
        }
    }
}

/// Creates `overlay`, a qcow2 disk whose unwritten blocks read from the
/// image `backing` (recorded by absolute path).
pub fn create_overlay(
    backing: &Path,
    backing_format: ImageFormat,
    overlay: &Path,
) -> Result<(), DiskError> {
    let backing_path = backing;
    let backing = backing_path
        .canonicalize()
        .map_err(|source| DiskError::Backing {
            path: backing_path.to_owned(),
            source,
        })?;
    tool::run(
        Command::new("qemu-img")
            .args([
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                backing_format.as_str(),
                "-b",
            ])
            .arg(&backing)
            .arg(overlay),
        "qemu-utils",
    )
    .map_err(|source| DiskError::Create {
        path: overlay.to_owned(),
        source,
    })?;
    Ok(())
}

/// Writes the whole chain of `overlay` (its blocks over its backing files)
/// as one sparse raw image `out`: a template's root filesystem after a
/// build's last layer.
pub fn flatten(overlay: &Path, out: &Path) -> Result<(), DiskError> {
    tool::run(
        Command::new("qemu-img")
            .args(["convert", "-q", "-f", "qcow2", "-O", "raw"])
            .arg(overlay)
            .arg(out),
        "qemu-utils",
    )
    .map_err(|source| DiskError::Create {
        path: out.to_owned(),
        source,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raw_copy_has_the_same_bytes_and_keeps_holes() {
        use std::io::{Read, Seek, SeekFrom, Write};
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("rootfs.ext4");
        let mut f = std::fs::File::create(&from).unwrap();
        f.set_len(64 << 20).unwrap();
        for (at, text) in [
            (0u64, &b"superblock"[..]),
            (40 << 20, b"data"),
            ((64 << 20) - 3, b"end"),
        ] {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(text).unwrap();
        }
        drop(f);
        let to = dir.path().join("disk.img");
        std::fs::write(&to, b"an older disk, longer than nothing").unwrap();
        let kind = copy_raw(&from, &to).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        std::fs::File::open(&from)
            .unwrap()
            .read_to_end(&mut a)
            .unwrap();
        std::fs::File::open(&to)
            .unwrap()
            .read_to_end(&mut b)
            .unwrap();
        assert!(a == b, "the copy differs");
        // Three written blocks, not 64 MiB (a reflink allocates nothing).
        let blocks = std::fs::metadata(&to).unwrap().blocks();
        assert!(
            blocks * 512 < 1 << 20,
            "{kind:?} copy allocated {blocks} blocks"
        );
        let missing = copy_raw(&dir.path().join("gone"), &to).unwrap_err();
        assert!(missing.to_string().contains("gone"), "{missing}");
    }

    #[test]
    fn overlay_records_the_absolute_raw_backing_file() {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("rootfs.ext4");
        std::fs::File::create(&backing)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let overlay = dir.path().join("disk.qcow2");
        // A relative path must still record the absolute backing file.
        let relative = dir.path().join("sub/../rootfs.ext4");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        create_overlay(&relative, ImageFormat::Raw, &overlay).unwrap();
        let out = tool::run(
            Command::new("qemu-img")
                .args(["info", "--output=json"])
                .arg(&overlay),
            "qemu-utils",
        )
        .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(info["format"], "qcow2");
        assert_eq!(
            info["backing-filename"],
            backing.canonicalize().unwrap().to_str().unwrap()
        );
        assert_eq!(info["backing-filename-format"], "raw");
        assert_eq!(info["virtual-size"], 64 << 20);
    }

    #[test]
    fn a_missing_backing_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let err = create_overlay(
            &dir.path().join("nope"),
            ImageFormat::Raw,
            &dir.path().join("o.qcow2"),
        )
        .unwrap_err();
        assert!(matches!(err, DiskError::Backing { .. }), "{err}");
    }
}
