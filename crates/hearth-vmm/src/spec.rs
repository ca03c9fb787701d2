use std::path::{Path, PathBuf};

use crate::Accel;

/// Everything a driver needs to boot one guest.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Uncompressed ELF kernel (`vmlinux`).
    pub kernel: PathBuf,
    /// Guest OS arguments (root device, init, `hearth.*` parameters). The
    /// driver adds the arguments its machine model needs (console, reboot).
    pub kernel_args: String,
    /// The root disk, attached as the first virtio block device (`/dev/vda`).
    pub root_disk: Disk,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// What backs guest memory.
    pub memory: Memory,
    /// Boot the kernel, or wait for [`crate::Vm::load`] to bring in a saved state.
    pub start: Start,
    pub net: Option<NetSpec>,
    /// Directory for the VMM's sockets, pid file and console log. It must
    /// exist; the caller owns its lifetime.
    pub run_dir: PathBuf,
    pub accel: Accel,
    /// Kill the VMM when the process that booted it dies. Right for
    /// short-lived callers (`hearth sandbox run`), wrong for a daemon that
    /// re-adopts its VMs after a restart.
    pub die_with_parent: bool,
    /// The unprivileged host user the VMM drops to once it has opened its
    /// files and devices (it starts as root to open the tap). `None` keeps
    /// the caller's user.
    pub run_as: Option<String>,
    /// `cgroup.procs` files the VMM process joins before it starts (one
    /// per hierarchy); empty leaves it in the caller's cgroups.
    pub cgroups: Vec<PathBuf>,
    /// Confine the VMM to `run_dir` once it has opened its files (its root
    /// becomes that directory, as a jail's would): it then reaches no
    /// other file on the host. What it opens by path later (a restored
    /// VM reopens its disk when it continues) must lie in `run_dir`, so
    /// the root disk must.
    pub chroot: bool,
    /// Descriptors of the caller's the VMM keeps open for as long as it
    /// runs: lock files, whose `flock` locks then outlive the caller.
    /// Each must stay open until [`crate::Vmm::boot`] returns.
    pub inherit: Vec<std::os::fd::RawFd>,
}

#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    pub format: DiskFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
        }
    }
}

/// A tap device for the guest's first network interface.
#[derive(Debug, Clone)]
pub struct NetSpec {
    pub tap: String,
    pub mac: String,
    /// Network namespace (a `/run/netns/<name>` path) the VMM process joins
    /// before it opens the tap.
    pub netns: Option<PathBuf>,
}

/// What backs guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Memory {
    /// Private anonymous memory.
    Anonymous,
    /// A file of `memory_mib` MiB. `shared` writes guest memory through to the
    /// file (a template being snapshotted); otherwise the file is mapped
    /// copy-on-write, so many guests share its unchanged pages (clones).
    File { path: PathBuf, shared: bool },
}

/// How a VM starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Boot the kernel.
    Boot,
    /// Wait, paused, for a saved state ([`crate::Vm::load`]).
    Incoming,
}

/// Where a saved VM state keeps guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SavedMemory {
    /// With the state (pause, fork): in its file, or in a file beside it
    /// ([`state_files`]); moved and removed with it.
    Included,
    /// In the VM's memory file ([`Memory::File`] with `shared`), which
    /// restored VMs then map copy-on-write (template snapshots): QEMU
    /// writes guest memory through to that file as the guest runs,
    /// Firecracker writes it there when the state is saved.
    InFile,
}

/// Every file a state saved at `state` with [`SavedMemory::Included`] may
/// consist of: `state` itself and `<state>.mem` (where Firecracker puts
/// guest memory; QEMU writes it into `state`). Whoever moves or removes a
/// saved state moves or removes both, where they exist.
pub fn state_files(state: &Path) -> [PathBuf; 2] {
    let mut memory = state.as_os_str().to_owned();
    memory.push(".mem");
    [state.to_owned(), PathBuf::from(memory)]
}
