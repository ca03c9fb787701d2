//! A VM's root disk, derived from the image it starts as: a qcow2 overlay
//! where the driver takes qcow2 (QEMU), else a raw copy (Firecracker: a
//! reflink where the file system has them, else a sparse copy).

use std::path::Path;

use hearth_image::ImageFormat;
use hearth_vmm::{Disk, DiskFormat};

use crate::NodeError;

/// The root disk of `format` in a VM's directory `dir`.
pub(crate) fn in_dir(dir: &Path, format: DiskFormat) -> Disk {
    let name = match format {
        DiskFormat::Qcow2 => "disk.qcow2",
        DiskFormat::Raw => "disk.img",
    };
    Disk {
        path: dir.join(name),
        format,
    }
}

/// Makes the root disk of `format` in `dir`, starting as `base`, which it
/// leaves untouched. Blocking: a raw copy takes time where there are no
/// reflinks.
pub(crate) fn derive(base: &Disk, format: DiskFormat, dir: &Path) -> Result<Disk, NodeError> {
    let disk = in_dir(dir, format);
    match (format, base.format) {
        (DiskFormat::Qcow2, base_format) => {
            hearth_image::create_overlay(&base.path, image_format(base_format), &disk.path)?;
        }
        (DiskFormat::Raw, DiskFormat::Raw) => {
            let started = std::time::Instant::now();
            let kind = hearth_image::copy_raw(&base.path, &disk.path)?;
            tracing::debug!(
                ?kind,
                ms = started.elapsed().as_millis(),
                "copied {} to {}",
                base.path.display(),
                disk.path.display()
            );
        }
        (DiskFormat::Raw, DiskFormat::Qcow2) => hearth_image::flatten(&base.path, &disk.path)?,
    }
    Ok(disk)
}

fn image_format(format: DiskFormat) -> ImageFormat {
    match format {
        DiskFormat::Raw => ImageFormat::Raw,
        DiskFormat::Qcow2 => ImageFormat::Qcow2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_disks_are_copies_and_qcow2_disks_overlays() {
        let dir = tempfile::tempdir().unwrap();
        let base = Disk {
            path: dir.path().join("rootfs.ext4"),
            format: DiskFormat::Raw,
        };
        std::fs::write(&base.path, b"ext4").unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&base.path)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        let raw_dir = dir.path().join("fc");
        std::fs::create_dir(&raw_dir).unwrap();
        let raw = derive(&base, DiskFormat::Raw, &raw_dir).unwrap();
        assert_eq!(raw.path, raw_dir.join("disk.img"));
        let copied = std::fs::read(&raw.path).unwrap();
        assert!(
            copied.len() == 8 << 20 && copied.starts_with(b"ext4"),
            "not a copy of the base"
        );
        let qcow_dir = dir.path().join("qemu");
        std::fs::create_dir(&qcow_dir).unwrap();
        let qcow = derive(&base, DiskFormat::Qcow2, &qcow_dir).unwrap();
        assert_eq!(qcow.path, qcow_dir.join("disk.qcow2"));
        let head = std::fs::read(&qcow.path).unwrap();
        assert!(head.starts_with(b"QFI\xfb"), "not a qcow2 image");
        // A raw disk from a qcow2 one holds what the overlay reads.
        let flat_dir = dir.path().join("flat");
        std::fs::create_dir(&flat_dir).unwrap();
        let flat = derive(&qcow, DiskFormat::Raw, &flat_dir).unwrap();
        assert!(std::fs::read(&flat.path).unwrap().starts_with(b"ext4"));
    }
}
