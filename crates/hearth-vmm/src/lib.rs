//! VMM drivers behind one narrow lifecycle trait.
//!
//! A driver turns a [`VmSpec`] (kernel, disk, network, sizes) into a running
//! guest and controls its lifecycle. Everything a sandbox means beyond a VM
//! (agent, network slot, files) belongs to `hearth-node`.
//!
//! Drivers: [`qemu`] (QEMU `-M microvm`, KVM or TCG) and [`firecracker`]
//! (Firecracker behind its jailer, KVM only); [`Driver`] is the one a node
//! chose at run time.

mod accel;
mod driver;
mod error;
pub mod firecracker;
mod process;
pub mod qemu;
mod spec;

pub use accel::{Accel, AccelChoice, AccelDecision, detect_accel};
pub use driver::{AnyVm, Driver, VmmChoice, VmmDecision, VmmKind, decide_vmm, open_driver};
pub use error::VmmError;
pub use spec::{Disk, DiskFormat, Memory, NetSpec, SavedMemory, Start, VmSpec, state_files};

use std::future::Future;
use std::path::Path;

/// How a VM process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    /// The VMM exited by itself with this status: the guest rebooted, powered
    /// off or panicked (all three end the VM), or the VMM failed.
    Exited(i32),
    /// The VMM was killed by this signal.
    Signaled(i32),
    /// The VMM ended, and how is not known here: it was adopted from an
    /// earlier process, and its exit status went to its new parent.
    Unknown,
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited(code) => write!(f, "VMM exit status {code}"),
            Self::Signaled(sig) => write!(f, "VMM killed by signal {sig}"),
            Self::Unknown => f.write_str("VMM ended (its exit status went to its parent)"),
        }
    }
}

/// A VMM driver: boots guests described by a [`VmSpec`].
pub trait Vmm: Send + Sync {
    type Vm: Vm;

    /// Starts the VMM process and, with [`Start::Boot`], the guest. Returns
    /// once the VMM accepts control commands; the guest is booting then, not
    /// yet ready. With [`Start::Incoming`] the VM waits for [`Vm::load`].
    fn boot(&self, spec: &VmSpec) -> impl Future<Output = Result<Self::Vm, VmmError>> + Send;
}

/// A running VM.
pub trait Vm: Send {
    /// The VMM process id.
    fn pid(&self) -> u32;

    /// Where the guest's serial console is written.
    fn console_log(&self) -> &Path;

    /// Resolves when the VMM process has exited by itself or was stopped.
    /// Cancel-safe: it can be raced against other futures and called again.
    fn wait(&mut self) -> impl Future<Output = Result<VmExit, VmmError>> + Send;

    /// Ends the VM now: asks the VMM to quit, kills it if it does not within a
    /// short grace period, and reaps it.
    fn stop(&mut self) -> impl Future<Output = Result<VmExit, VmmError>> + Send;

    /// Pauses the guest and writes its state to `path` (and, for
    /// [`SavedMemory::Included`], maybe beside it: [`state_files`]). The
    /// guest stays paused; [`Vm::resume`] continues it.
    fn save(
        &mut self,
        path: &Path,
        memory: SavedMemory,
    ) -> impl Future<Output = Result<(), VmmError>> + Send;

    /// Loads a state written by [`Vm::save`] into a VM started with
    /// [`Start::Incoming`]. The guest is paused afterwards.
    fn load(
        &mut self,
        path: &Path,
        memory: SavedMemory,
    ) -> impl Future<Output = Result<(), VmmError>> + Send;

    /// Stops the guest's vCPUs; [`Vm::resume`] continues them. Guest time
    /// stands still meanwhile.
    fn pause(&mut self) -> impl Future<Output = Result<(), VmmError>> + Send;

    /// Runs a paused guest.
    fn resume(&mut self) -> impl Future<Output = Result<(), VmmError>> + Send;

    /// Puts `file` (a raw disk image, opened read-write by the caller) behind
    /// volume slot `slot` (below [`VOLUME_SLOTS`]), in place of the empty
    /// placeholder every VM boots with, and tells the guest its new size: a
    /// running, paused or just-restored guest sees the disk grow from
    /// nothing, a restored one that had it sees it unchanged. The guest finds
    /// the disk by its serial, [`AnyVm::volume_serial`].
    fn attach_volume(
        &mut self,
        slot: usize,
        file: &std::fs::File,
    ) -> impl Future<Output = Result<(), VmmError>> + Send;
}

/// How many volume disks a VM can take. Every VM has them from its start,
/// each an empty placeholder until [`Vm::attach_volume`]: a restored guest
/// must find the devices it was saved with, and a VM cannot gain a
/// virtio-mmio device once it runs.
pub const VOLUME_SLOTS: usize = 4;

/// The empty file that stands in for volume slot `slot`'s disk until a
/// volume is attached: `vol<slot>.img` in the VM's run directory. The
/// driver makes those missing when it starts a VM; a caller that confines
/// the VMM to another user makes them first, owned by that user.
pub fn volume_placeholder(run_dir: &Path, slot: usize) -> std::path::PathBuf {
    run_dir.join(format!("vol{slot}.img"))
}

/// The serial number QEMU gives volume slot `slot`'s disk, as the guest
/// reads it (`/sys/block/vd*/serial`).
pub(crate) fn volume_serial(slot: usize) -> String {
    format!("hearth-vol{slot}")
}

/// Whether process `pid` is a VMM that a driver started for `run_dir`:
/// QEMU names the directory's files on its command line; a jailed
/// Firecracker names only jail paths, but is rooted in a jail inside it.
/// How a leftover VMM of a directory is told from a process that reuses
/// its pid.
pub fn is_vmm_of(pid: u32, run_dir: &Path) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmdline).contains(run_dir.to_string_lossy().as_ref())
        || firecracker::jail::is_jailed_in(pid, run_dir)
}

/// The last non-empty line of a log file (a VMM's log, a guest's console),
/// trimmed; `None` when the file is missing, empty or blank. What a VM's
/// unexpected end is reported with.
pub fn last_log_line(path: &Path) -> Option<String> {
    let text = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&text)
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_log_line_skips_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("vmm.log");
        assert_eq!(last_log_line(&log), None);
        std::fs::write(&log, b"start\nqemu: \xff bad device\n \n\n").unwrap();
        assert_eq!(
            last_log_line(&log).as_deref(),
            Some("qemu: \u{fffd} bad device")
        );
    }
}
