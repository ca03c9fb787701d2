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
