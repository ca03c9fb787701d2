//! Volumes a sandbox mounts: disk images on the host, each behind one of
//! its VM's volume slots ([`hearth_vmm::VOLUME_SLOTS`]), in order.

use std::path::{Path, PathBuf};

use hearth_proto::agent::VolumeDisk;
use serde::{Deserialize, Serialize};

use crate::NodeError;

/// One volume of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeAttachment {
    /// The volume's name.
    pub name: String,
    /// Its ext4 image on the host.
    pub image: PathBuf,
    /// Where the guest mounts it.
    pub path: String,
}

/// The image at `path` opened read-write, to hand to the VMM.
pub(crate) fn open_image(path: &Path) -> Result<std::fs::File, NodeError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(NodeError::io(path))
}

/// What the guest agent mounts for `volumes`, attached to `vm`: each disk
/// by the serial number its driver gives it.
pub(crate) fn disks(
    vm: &hearth_vmm::AnyVm,
    volumes: &[VolumeAttachment],
) -> Result<Vec<VolumeDisk>, NodeError> {
    volumes
        .iter()
        .enumerate()
        .map(|(slot, v)| {
            let meta = std::fs::metadata(&v.image).map_err(NodeError::io(&v.image))?;
            Ok(VolumeDisk {
                serial: vm.volume_serial(slot, &meta),
                path: v.path.clone(),
            })
        })
        .collect()
}
