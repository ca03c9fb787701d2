//! Firecracker driver: each VM is a Firecracker process started through
//! its jailer (a chroot, a uid and a mount namespace of its own, the
//! slot's network namespace, the caller's cgroup, Firecracker's default
//! seccomp filters) and configured over its API socket. KVM only.
//!
//! What the driver asks of Firecracker, call by call, is plain data
//! ([`boot_calls`], [`load_calls`], [`save_calls`]); [`api`] sends it.
//!
//! Snapshots: saving pauses the guest and writes a full snapshot (device
//! state and a memory file); loading maps the memory file privately, so
//! the VMs restored from one template snapshot share its unchanged pages
//! copy-on-write. Disks must be raw: Firecracker has no qcow2.

pub mod api;
pub mod jail;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;

use crate::process::{Process, VmmProcess};
use crate::{Accel, DiskFormat, Memory, SavedMemory, Start, Vm, VmExit, VmSpec, Vmm, VmmError};
use api::{
    Api, BootSource, Call, Drive, EntropyDevice, InstanceActionInfo, Logger, MachineConfiguration,
    MemoryBackend, Metrics, NetworkInterface, PartialDrive, SnapshotCreateParams,
    SnapshotLoadParams, VmState,
};
use jail::{Jail, JailerArgs};

const FIRECRACKER: &str = "firecracker";
const JAILER: &str = "jailer";
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// Arguments this driver adds to the guest kernel command line: the
/// serial console, a reboot through the keyboard controller (which ends
/// Firecracker: the guest's `reboot` and power-off end the VM), a panic
/// that reboots at once, and no PCI bus to probe.
pub const MACHINE_KERNEL_ARGS: &str = "console=ttyS0 reboot=k panic=-1 pci=off";
/// The guest's network interface.
const IFACE: &str = "eth0";
/// The root drive.
const ROOT_DRIVE: &str = "rootfs";

/// The Firecracker driver: the `firecracker` binary and its `jailer`.
#[derive(Debug, Clone)]
pub struct Firecracker {
    firecracker: PathBuf,
    jailer: PathBuf,
}

impl Firecracker {
    /// Finds `firecracker` and `jailer` on `PATH`.
    pub fn from_path() -> Result<Self, VmmError> {
        let find = |binary| {
            crate::process::find_on_path(
                binary,
                "firecracker (from its GitHub releases; not packaged by Debian)",
            )
        };
        Ok(Self::new(find(FIRECRACKER)?, find(JAILER)?))
    }

    pub fn new(firecracker: PathBuf, jailer: PathBuf) -> Self {
        Self {
            firecracker,
            jailer,
        }
    }

    /// The first line of `firecracker --version`, e.g. `Firecracker
    /// v1.16.1`.
    pub fn version(&self) -> Result<String, VmmError> {
        crate::process::version_line(&self.firecracker)
    }
}

/// The serial number a guest reads for a virtio-block disk Firecracker
/// serves from a file with this metadata: Firecracker makes it of the
/// file's device, raw device and inode numbers, cut to the 20 bytes
/// virtio allows.
pub fn volume_serial(image: &std::fs::Metadata) -> String {
    let mut serial = format!("{}{}{}", image.dev(), image.rdev(), image.ino());
    serial.truncate(20);
    serial
}

/// The calls that set a new Firecracker up from `spec`: its log and
/// metrics files and, to boot, the machine, kernel, drives, network and
/// entropy device, then `InstanceStart`. A VM that waits for a saved
/// state ([`Start::Incoming`]) gets the log and metrics only: a snapshot
/// load must come before any other configuration.
pub fn boot_calls(spec: &VmSpec) -> Vec<Call> {
    let mut calls = vec![
        Call::PutLogger(Logger {
            log_path: Jail::inside(jail::LOG),
            level: "Info",
            show_level: true,
            show_log_origin: false,
        }),
        Call::PutMetrics(Metrics {
            metrics_path: Jail::inside(jail::METRICS),
        }),
    ];
    if spec.start == Start::Incoming {
        return calls;
    }
    calls.extend([
        Call::PutMachineConfig(MachineConfiguration {
            vcpu_count: spec.vcpus,
            mem_size_mib: spec.memory_mib,
            smt: false,
            track_dirty_pages: false,
        }),
        Call::PutBootSource(BootSource {
            kernel_image_path: Jail::inside(jail::KERNEL),
            boot_args: format!("{MACHINE_KERNEL_ARGS} {}", spec.kernel_args.trim()),
        }),
        Call::PutDrive(Drive {
            drive_id: ROOT_DRIVE.to_owned(),
            path_on_host: Jail::inside(jail::ROOT_DISK),
            is_root_device: true,
            is_read_only: false,
            cache_type: "Unsafe",
        }),
    ]);
    for slot in 0..crate::VOLUME_SLOTS {
        calls.push(Call::PutDrive(Drive {
            drive_id: volume_drive(slot),
            path_on_host: Jail::inside(&placeholder_name(slot)),
            is_root_device: false,
            is_read_only: false,
            cache_type: "Unsafe",
        }));
    }
    if let Some(net) = &spec.net {
        calls.push(Call::PutNetworkInterface(NetworkInterface {
            iface_id: IFACE.to_owned(),
            host_dev_name: net.tap.clone(),
            guest_mac: net.mac.clone(),
        }));
    }
    calls.extend([
        Call::PutEntropy(EntropyDevice {}),
        Call::PutAction(InstanceActionInfo {
            action_type: "InstanceStart",
        }),
    ]);
    calls
}

/// The call that loads the state linked into the jail, leaving the guest
/// paused.
pub fn load_calls() -> Vec<Call> {
    vec![Call::LoadSnapshot(SnapshotLoadParams {
        snapshot_path: Jail::inside(jail::RESTORE_STATE),
        mem_backend: MemoryBackend {
            backend_type: "File",
            backend_path: Jail::inside(jail::RESTORE_MEMORY),
        },
        resume_vm: false,
    })]
}

/// The calls that pause the guest and write a full snapshot into the jail.
pub fn save_calls() -> Vec<Call> {
    vec![
        Call::PatchVm(VmState { state: "Paused" }),
        Call::CreateSnapshot(SnapshotCreateParams {
            snapshot_type: "Full",
            snapshot_path: Jail::inside(jail::SAVED_STATE),
            mem_file_path: Jail::inside(jail::SAVED_MEMORY),
        }),
    ]
}

/// The call that puts volume slot `slot` on the image linked into the jail.
pub fn attach_calls(slot: usize) -> Vec<Call> {
    vec![Call::PatchDrive(PartialDrive {
        drive_id: volume_drive(slot),
        path_on_host: Jail::inside(&volume_name(slot)),
    })]
}

fn volume_drive(slot: usize) -> String {
    format!("vol{slot}")
}

/// The empty placeholder of volume slot `slot`, in the jail.
fn placeholder_name(slot: usize) -> String {
    format!("vol{slot}.img")
}

/// The volume attached to slot `slot`, in the jail.
fn volume_name(slot: usize) -> String {
    format!("volume{slot}.img")
}

impl Vmm for Firecracker {
    type Vm = FirecrackerVm;

    async fn boot(&self, spec: &VmSpec) -> Result<FirecrackerVm, VmmError> {
        if spec.accel != Accel::Kvm {
            return Err(VmmError::FirecrackerUnusable(
                "it runs guests with KVM only, and this VM is to run under TCG".to_owned(),
            ));
        }
        if !spec.kernel.is_file() {
            return Err(VmmError::KernelMissing(spec.kernel.clone()));
        }
        if !spec.root_disk.path.is_file() {
            return Err(VmmError::DiskMissing(spec.root_disk.path.clone()));
        }
        if spec.root_disk.format != DiskFormat::Raw {
            return Err(VmmError::Unsupported(format!(
                "Firecracker takes raw disks only, not the {} image {}",
                spec.root_disk.format.as_str(),
                spec.root_disk.path.display()
            )));
        }
        let (uid, gid) = jail::ids(spec.run_as.as_deref())?;
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let cgroup = jail::parent_cgroup(&spec.cgroups, jail::cgroup2_mount(&mounts).as_deref())?;
        let jail = Jail::new(&spec.run_dir, &self.firecracker);
        let files = RunFiles::new(&spec.run_dir);
        prepare_jail(spec, &jail, uid, gid)?;

        let args = JailerArgs {
            jail: jail.clone(),
            firecracker: self.firecracker.clone(),
            uid,
            gid,
            netns: spec.net.as_ref().and_then(|n| n.netns.clone()),
            cgroup,
        }
        .render();
        let console = std::fs::File::create(&files.console)
            .map_err(VmmError::io(files.console.display().to_string()))?;
        let vmm_log = std::fs::File::create(&files.vmm_log)
            .map_err(VmmError::io(files.vmm_log.display().to_string()))?;
        let mut cmd = Command::new(&self.jailer);
        cmd.args(&args)
            .current_dir(&spec.run_dir)
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(vmm_log)
            .kill_on_drop(spec.die_with_parent);
        // SAFETY: the closure runs in the forked child before exec and only
        // calls setsid, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                // Own session: a Ctrl-C on the caller's terminal reaches the
                // caller, which stops the VM and cleans up in order. (No
                // parent-death signal: the jailer's change of uid clears it.)
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| VmmError::Spawn {
            binary: self.jailer.display().to_string(),
            source,
        })?;
        let pid = child.id().unwrap_or_default();
        tracing::debug!(pid, "jailer started: {}", args.join(" "));
        let process = VmmProcess::new(Process::Child(child), pid);
        // The jailer closes every descriptor but the standard three before
        // Firecracker starts: a holder keeps the caller's (its locks) for
        // as long as the VMM runs. On failure the VMM is killed here, and
        // the holder, which watches it, ends too.
        if !spec.inherit.is_empty() {
            let holder = crate::process::hold_while_running(pid, &spec.inherit)
                .map_err(VmmError::io("the VMM's lock holder"))?;
            std::fs::write(&files.holder, holder.to_string())
                .map_err(VmmError::io(files.holder.display().to_string()))?;
        }
        let mut vm = FirecrackerVm {
            process,
            api: Api::new(jail.host_path(jail::API_SOCKET), jail.host_path(jail::LOG)),
            jail,
            uid,
            gid,
            memory_file: match &spec.memory {
                Memory::File { path, .. } => Some(path.clone()),
                Memory::Anonymous => None,
            },
            console: files.console,
            vmm_log: files.vmm_log,
            holder: files.holder,
        };
        let configured = async {
            vm.wait_for_api().await?;
            vm.run(boot_calls(spec)).await
        }
        .await;
        if let Err(e) = configured {
            let e = vm.exit_reason().await.unwrap_or(e);
            vm.start_kill();
            let _ = vm.process.reap().await;
            return Err(e);
        }
        Ok(vm)
    }
}

impl Firecracker {
    /// Takes over the VM that process `pid` runs for `run_dir`, started by
    /// an earlier process (a server before its restart): checks that the
    /// pid is a Firecracker jailed in that directory's jail and that its
    /// API answers. The VM runs on as it was; its end is seen by
    /// [`Vm::wait`], without an exit status.
    pub async fn adopt(&self, pid: u32, run_dir: &Path) -> Result<FirecrackerVm, VmmError> {
        let jail = Jail::new(run_dir, &self.firecracker);
        let gone = || VmmError::NotRunning {
            pid,
            run_dir: run_dir.to_owned(),
        };
        let pidfd = crate::process::PidFd::open(pid)
            .map_err(VmmError::io(format!("process {pid}")))?
            .ok_or_else(gone)?;
        // Pids are reused: the process must be rooted in this directory's
        // jail, and still run after that was read.
        if !jail::is_jailed_in(pid, run_dir) || pidfd.has_exited() {
            return Err(gone());
        }
        let owner = std::fs::metadata(jail.root())
            .map_err(VmmError::io(jail.root().display().to_string()))?;
        let files = RunFiles::new(run_dir);
        let mut vm = FirecrackerVm {
            process: VmmProcess::new(Process::Adopted(pidfd), pid),
            api: Api::new(jail.host_path(jail::API_SOCKET), jail.host_path(jail::LOG)),
            jail,
            uid: owner.uid(),
            gid: owner.gid(),
            // Template snapshots are taken by VMs that are never adopted.
            memory_file: None,
            console: files.console,
            vmm_log: files.vmm_log,
            holder: files.holder,
        };
        vm.wait_for_api().await?;
        Ok(vm)
    }
}

/// Makes the jail's root (in place of one an earlier VM of this directory
/// left) and links into it what the VM uses: kernel, root disk, volume
/// placeholders, and its log and metrics files, given to the VMM's uid.
fn prepare_jail(spec: &VmSpec, jail: &Jail, uid: u32, gid: u32) -> Result<(), VmmError> {
    if jail.base.exists() {
        std::fs::remove_dir_all(&jail.base)
            .map_err(VmmError::io(jail.base.display().to_string()))?;
    }
    let root = jail.root();
    std::fs::create_dir_all(&root).map_err(VmmError::io(root.display().to_string()))?;
    // Firecracker opens its files as the VMM's uid (the jailer has
    // dropped to it by then): what it writes is given to that uid.
    let give = |path: &Path| {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(VmmError::io(path.display().to_string()))
    };
    link(&spec.kernel, &jail.host_path(jail::KERNEL))?;
    give(&spec.root_disk.path)?;
    link(&spec.root_disk.path, &jail.host_path(jail::ROOT_DISK))?;
    for slot in 0..crate::VOLUME_SLOTS {
        let placeholder = crate::volume_placeholder(&spec.run_dir, slot);
        if !placeholder.exists() {
            std::fs::File::create(&placeholder)
                .map_err(VmmError::io(placeholder.display().to_string()))?;
        }
        give(&placeholder)?;
        link(&placeholder, &jail.host_path(&placeholder_name(slot)))?;
        // A restored VM reopens its drives by the paths they had when its
        // state was saved: a volume's, if one was attached then. Until
        // [`Vm::attach_volume`] puts the volume there again, that path
        // holds the empty placeholder too.
        link(&placeholder, &jail.host_path(&volume_name(slot)))?;
    }
    for name in [jail::LOG, jail::METRICS] {
        let path = jail.host_path(name);
        std::fs::File::create(&path).map_err(VmmError::io(path.display().to_string()))?;
        give(&path)?;
    }
    Ok(())
}

/// Hard-links `from` to `to` (replacing it): the jailed VMM uses the very
/// file, so a disk's writes reach it and a memory file's pages are shared.
fn link(from: &Path, to: &Path) -> Result<(), VmmError> {
    let _ = std::fs::remove_file(to);
    std::fs::hard_link(from, to).map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::EXDEV) {
            " (the VM's files must be on the file system of its directory)"
        } else {
            ""
        };
        VmmError::io(format!(
            "linking {} into the jail as {}{hint}",
            from.display(),
            to.display()
        ))(e)
    })
}

/// Moves `from` (a file Firecracker wrote in its jail, as its uid) to
/// `to`, and makes it the caller's, readable (0644), as a file the caller
/// wrote itself would be: a template's snapshot is read by the VMMs of
/// every sandbox restored from it, whatever their uid.
fn move_out(from: &Path, to: &Path) -> Result<(), VmmError> {
    use std::os::unix::fs::PermissionsExt;
    let what = || format!("moving {} to {}", from.display(), to.display());
    std::fs::rename(from, to).map_err(VmmError::io(what()))?;
    std::os::unix::fs::chown(
        to,
        Some(nix::unistd::geteuid().as_raw()),
        Some(nix::unistd::getegid().as_raw()),
    )
    .map_err(VmmError::io(what()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o644))
        .map_err(VmmError::io(what()))
}

/// The files a Firecracker VM keeps in its run directory, outside its jail.
struct RunFiles {
    console: PathBuf,
    vmm_log: PathBuf,
    /// The pid of the process that holds the caller's descriptors.
    holder: PathBuf,
}

impl RunFiles {
    fn new(dir: &Path) -> Self {
        Self {
            console: dir.join("console.log"),
            vmm_log: dir.join("vmm.log"),
            holder: dir.join("holder.pid"),
        }
    }
}

/// A running Firecracker VM.
#[derive(Debug)]
pub struct FirecrackerVm {
    process: VmmProcess,
    api: Api,
    jail: Jail,
    uid: u32,
    gid: u32,
    /// The memory file of [`Memory::File`]: where [`SavedMemory::InFile`]
    /// saves guest memory to and loads it from.
    memory_file: Option<PathBuf>,
    console: PathBuf,
    vmm_log: PathBuf,
    /// Where the pid of its lock holder is, if it has one.
    holder: PathBuf,
}

impl FirecrackerVm {
    /// Sends the VMM SIGKILL unless it has ended.
    pub fn start_kill(&mut self) {
        self.process.start_kill();
    }

    /// Lets the VMM outlive this value.
    pub fn leave_running(&mut self) {
        self.process.leave_running();
    }

    /// The jail this VM runs in.
    pub fn jail(&self) -> &Jail {
        &self.jail
    }

    /// A copy of the descriptor for `path` that the VM's lock holder keeps
    /// ([`VmSpec::inherit`]): the same open file, so the same locks.
    /// `None` when it has no holder, or the holder has no such descriptor.
    pub fn inherited(&self, path: &Path) -> Result<Option<std::os::fd::OwnedFd>, VmmError> {
        let Ok(pid) = std::fs::read_to_string(&self.holder) else {
            return Ok(None);
        };
        let Ok(pid) = pid.trim().parse() else {
            return Ok(None);
        };
        crate::process::held_by(pid, path)
            .map_err(VmmError::io(format!("the descriptors of process {pid}")))
    }

    async fn run(&self, calls: Vec<Call>) -> Result<(), VmmError> {
        for call in &calls {
            self.api.call(call).await?;
        }
        Ok(())
    }

    /// Waits for the API socket to accept connections, failing early if the
    /// jailer or Firecracker exits.
    async fn wait_for_api(&mut self) -> Result<(), VmmError> {
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .process
                .try_wait()
                .map_err(VmmError::io("the VMM process"))?
            {
                return Err(self.early_exit(&status));
            }
            if tokio::net::UnixStream::connect(self.api.socket())
                .await
                .is_ok()
            {
                return Ok(());
            }
            if started.elapsed() > CONTROL_TIMEOUT {
                return Err(VmmError::ControlTimeout {
                    path: self.api.socket().to_owned(),
                    secs: CONTROL_TIMEOUT.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The error of a VMM that ended on its own: how, with the last lines
    /// of the jailer's output and of Firecracker's log.
    fn early_exit(&self, status: &str) -> VmmError {
        let jailer = crate::last_log_line(&self.vmm_log).unwrap_or_default();
        let log = api::log_tail(&self.jail.host_path(jail::LOG), 5);
        VmmError::EarlyExit {
            exit: format!("{status}: {jailer}{log}"),
            log: self.vmm_log.clone(),
        }
    }

    /// Why the VMM ended, if it has (within a short grace period).
    async fn exit_reason(&mut self) -> Option<VmmError> {
        if self.process.exit().is_some() {
            return None;
        }
        let exit = self
            .process
            .reap_within(Duration::from_millis(200))
            .await?
            .ok()?;
        Some(self.early_exit(&exit.to_string()))
    }

    /// Where [`SavedMemory`] puts guest memory for a state at `state`.
    fn memory_path(&self, state: &Path, memory: SavedMemory) -> Result<PathBuf, VmmError> {
        match memory {
            SavedMemory::Included => Ok(crate::state_files(state)[1].clone()),
            SavedMemory::InFile => self.memory_file.clone().ok_or_else(|| {
                VmmError::Unsupported(
                    "a state with its memory in the VM's memory file needs a VM with one"
                        .to_owned(),
                )
            }),
        }
    }

    /// A call failed: with the VMM gone, its end is the better error.
    async fn failed(&mut self, e: VmmError) -> VmmError {
        self.exit_reason().await.unwrap_or(e)
    }
}

impl Vm for FirecrackerVm {
    fn pid(&self) -> u32 {
        self.process.pid()
    }

    fn console_log(&self) -> &Path {
        &self.console
    }

    async fn wait(&mut self) -> Result<VmExit, VmmError> {
        self.process.reap().await
    }

    /// Firecracker has no request to quit: the VMM is killed (as QEMU's
    /// `quit` does, with no flush by the guest), reaped, and its jail
    /// removed.
    async fn stop(&mut self) -> Result<VmExit, VmmError> {
        self.start_kill();
        let exit = self.process.reap().await?;
        let base = self.jail.base.clone();
        let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&base))
            .await
            .expect("removing a directory does not panic");
        if let Err(e) = removed
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("removing the jail {}: {e}", self.jail.base.display());
        }
        Ok(exit)
    }

    async fn save(&mut self, path: &Path, memory: SavedMemory) -> Result<(), VmmError> {
        let memory_to = self.memory_path(path, memory)?;
        if let Err(e) = self.run(save_calls()).await {
            return Err(self.failed(e).await);
        }
        move_out(&self.jail.host_path(jail::SAVED_STATE), path)?;
        move_out(&self.jail.host_path(jail::SAVED_MEMORY), &memory_to)
    }

    async fn load(&mut self, path: &Path, memory: SavedMemory) -> Result<(), VmmError> {
        if !path.is_file() {
            return Err(VmmError::StateMissing(path.to_owned()));
        }
        let memory_from = self.memory_path(path, memory)?;
        let (state, mem) = (
            self.jail.host_path(jail::RESTORE_STATE),
            self.jail.host_path(jail::RESTORE_MEMORY),
        );
        link(path, &state)?;
        link(&memory_from, &mem)?;
        if memory == SavedMemory::Included {
            // One sandbox's state: its VMM's uid now, whichever it was
            // saved by. (A template's, shared by many, stays root's and
            // readable.)
            for file in [&state, &mem] {
                std::os::unix::fs::chown(file, Some(self.uid), Some(self.gid))
                    .map_err(VmmError::io(file.display().to_string()))?;
            }
        }
        if let Err(e) = self.run(load_calls()).await {
            return Err(self.failed(e).await);
        }
        Ok(())
    }

    async fn pause(&mut self) -> Result<(), VmmError> {
        self.api
            .call(&Call::PatchVm(VmState { state: "Paused" }))
            .await
    }

    async fn resume(&mut self) -> Result<(), VmmError> {
        self.api
            .call(&Call::PatchVm(VmState { state: "Resumed" }))
            .await
    }

    async fn attach_volume(&mut self, slot: usize, file: &std::fs::File) -> Result<(), VmmError> {
        use std::os::fd::AsRawFd;
        if slot >= crate::VOLUME_SLOTS {
            return Err(VmmError::Unsupported(format!("no volume slot {slot}")));
        }
        // Firecracker opens drives by path, as the VMM's uid: the caller's
        // open image is given to that uid (a volume is attached to one VM
        // at a time) and linked into the jail through its descriptor.
        std::os::unix::fs::fchown(file, Some(self.uid), Some(self.gid))
            .map_err(VmmError::io("a volume's image"))?;
        let to = self.jail.host_path(&volume_name(slot));
        let _ = std::fs::remove_file(&to);
        let from = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .expect("no NUL in a path made of digits");
        let to_c = std::ffi::CString::new(to.as_os_str().as_encoded_bytes())
            .map_err(|_| VmmError::Unsupported(format!("a NUL in {}", to.display())))?;
        // SAFETY: two NUL-terminated paths that outlive the call.
        let linked = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to_c.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if linked != 0 {
            return Err(VmmError::io(format!(
                "linking a volume into {}",
                to.display()
            ))(std::io::Error::last_os_error()));
        }
        self.run(attach_calls(slot)).await
    }
}

#[cfg(test)]
mod tests;
