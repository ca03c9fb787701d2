//! QEMU `-M microvm` driver: KVM where the host has hardware virtualisation,
//! TCG everywhere else. Control goes through QMP on a Unix socket in the VM's
//! run directory; the serial console is written to `console.log` there.

mod args;
mod qmp;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;

use serde_json::{Value, json};

use crate::process::{PidFd, Process, VmmProcess};
use crate::{SavedMemory, Vm, VmExit, VmSpec, Vmm, VmmError};
use args::QemuArgs;
use qmp::Qmp;

const BINARY: &str = "qemu-system-x86_64";
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(2);
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(1);
/// The name a saved state's descriptor has in QEMU (`getfd`, `fd:NAME`).
const MIGRATION_FD: &str = "migration";

/// The QEMU microvm driver.
#[derive(Debug, Clone)]
pub struct Qemu {
    binary: PathBuf,
}

impl Qemu {
    /// Finds `qemu-system-x86_64` on `PATH`.
    pub fn from_path() -> Result<Self, VmmError> {
        Ok(Self {
            binary: crate::process::find_on_path(BINARY, "qemu-system-x86")?,
        })
    }

    /// The first line of `qemu-system-x86_64 --version`, e.g. `QEMU
    /// emulator version 7.2.22 (Debian …)`.
    pub fn version(&self) -> Result<String, VmmError> {
        crate::process::version_line(&self.binary)
    }
}

impl Vmm for Qemu {
    type Vm = QemuVm;

    async fn boot(&self, spec: &VmSpec) -> Result<QemuVm, VmmError> {
        if !spec.kernel.is_file() {
            return Err(VmmError::KernelMissing(spec.kernel.clone()));
        }
        if !spec.root_disk.path.is_file() {
            return Err(VmmError::DiskMissing(spec.root_disk.path.clone()));
        }
        for slot in 0..crate::VOLUME_SLOTS {
            let placeholder = crate::volume_placeholder(&spec.run_dir, slot);
            if !placeholder.exists() {
                std::fs::File::create(&placeholder)
                    .map_err(VmmError::io(placeholder.display().to_string()))?;
            }
        }
        let files = RunFiles::new(&spec.run_dir);
        let args = QemuArgs::new(spec, &files.qmp, &files.console).render();
        let vmm_log = std::fs::File::create(&files.vmm_log)
            .map_err(VmmError::io(files.vmm_log.display().to_string()))?;
        let netns = match spec.net.as_ref().and_then(|n| n.netns.as_ref()) {
            Some(path) => Some(OwnedFd::from(
                std::fs::File::open(path).map_err(VmmError::io(path.display().to_string()))?,
            )),
            None => None,
        };
        // Opened here (close-on-exec) so the child only writes to them.
        let cgroups = spec
            .cgroups
            .iter()
            .map(|procs| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(procs)
                    .map(OwnedFd::from)
                    .map_err(VmmError::io(procs.display().to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;

        if spec.chroot && spec.root_disk.path.parent() != Some(spec.run_dir.as_path()) {
            return Err(VmmError::DiskOutsideJail {
                disk: spec.root_disk.path.clone(),
                run_dir: spec.run_dir.clone(),
            });
        }
        let mut cmd = Command::new(&self.binary);
        cmd.args(&args)
            .current_dir(&spec.run_dir)
            .stdin(Stdio::null())
            .stdout(vmm_log.try_clone().map_err(VmmError::io("the VMM log"))?)
            .stderr(vmm_log)
            .kill_on_drop(spec.die_with_parent);
        let die_with_parent = spec.die_with_parent;
        let netns_fd = netns.as_ref().map(AsRawFd::as_raw_fd);
        let cgroup_fds: Vec<i32> = cgroups.iter().map(AsRawFd::as_raw_fd).collect();
        let inherit = spec.inherit.clone();
        // SAFETY: the closure runs in the forked child before exec and only
        // makes async-signal-safe system calls (setsid, prctl, setns, write,
        // fcntl) on values captured before the fork; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                // Own session: a Ctrl-C on the caller's terminal reaches the
                // caller, which stops the VM and cleans up in order.
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if die_with_parent && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(fd) = netns_fd
                    && libc::setns(fd, libc::CLONE_NEWNET) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" moves the writer: the VMM is in its cgroups from its
                // first instruction.
                for &fd in &cgroup_fds {
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // Kept open across exec: the VMM holds them (and their
                // locks) for as long as it runs.
                for &fd in &inherit {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| VmmError::Spawn {
            binary: self.binary.display().to_string(),
            source,
        })?;
        drop(netns);
        drop(cgroups);
        let pid = child.id().unwrap_or_default();
        tracing::debug!(pid, accel = %spec.accel, "qemu started: {}", args.join(" "));

        // Owned from here: a start abandoned half-way (its future dropped)
        // kills the VMM, which would otherwise outlive it.
        let mut vm = QemuVm {
            process: VmmProcess::new(Process::Child(child), pid),
            qmp: None,
            console: files.console.clone(),
            vmm_log: files.vmm_log.clone(),
        };
        match connect_control(&mut vm.process, &files).await {
            Ok(qmp) => vm.qmp = Some(qmp),
            Err(e) => {
                vm.process.start_kill();
                let _ = vm.reap().await;
                return Err(e);
            }
        }
        Ok(vm)
    }
}

impl Qemu {
    /// Takes over the VM that process `pid` runs for `run_dir`, started by
    /// an earlier process (a server before its restart): checks that the
    /// pid is that VM's QEMU and connects to its control socket. The VM
    /// keeps running as it was; its end is seen by [`Vm::wait`], without
    /// an exit status ([`VmExit::Unknown`]): that goes to its new parent.
    pub async fn adopt(&self, pid: u32, run_dir: &Path) -> Result<QemuVm, VmmError> {
        let files = RunFiles::new(run_dir);
        let gone = || VmmError::NotRunning {
            pid,
            run_dir: run_dir.to_owned(),
        };
        let pidfd = PidFd::open(pid)
            .map_err(VmmError::io(format!("process {pid}")))?
            .ok_or_else(gone)?;
        // Pids are reused: the process must be a QEMU with this run
        // directory's control socket, and still be running after that was
        // read (the pidfd holds on to the process it was opened for).
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let marker = files.qmp.display().to_string();
        let ours = cmdline
            .split(|b| *b == 0)
            .any(|arg| String::from_utf8_lossy(arg).contains(&marker));
        if !ours || pidfd.has_exited() {
            return Err(gone());
        }
        let qmp = tokio::time::timeout(CONTROL_TIMEOUT, Qmp::connect(&files.qmp))
            .await
            .map_err(|_| VmmError::ControlTimeout {
                path: files.qmp.clone(),
                secs: CONTROL_TIMEOUT.as_secs(),
            })??;
        Ok(QemuVm {
            process: VmmProcess::new(Process::Adopted(pidfd), pid),
            qmp: Some(qmp),
            console: files.console,
            vmm_log: files.vmm_log,
        })
    }
}

/// The files a QEMU VM keeps in its run directory.
struct RunFiles {
    qmp: PathBuf,
    console: PathBuf,
    vmm_log: PathBuf,
}

impl RunFiles {
    fn new(dir: &Path) -> Self {
        Self {
            qmp: dir.join("qmp.sock"),
            console: dir.join("console.log"),
            vmm_log: dir.join("vmm.log"),
        }
    }
}

/// Waits for QMP to accept connections, failing early if QEMU exits.
async fn connect_control(process: &mut VmmProcess, files: &RunFiles) -> Result<Qmp, VmmError> {
    let started = Instant::now();
    loop {
        if let Some(status) = process
            .try_wait()
            .map_err(VmmError::io("the VMM process"))?
        {
            return Err(VmmError::EarlyExit {
                exit: format!(
                    "{status}: {}",
                    crate::last_log_line(&files.vmm_log).unwrap_or_default()
                ),
                log: files.vmm_log.clone(),
            });
        }
        if files.qmp.exists()
            && let Ok(qmp) = Qmp::connect(&files.qmp).await
        {
            return Ok(qmp);
        }
        if started.elapsed() > CONTROL_TIMEOUT {
            return Err(VmmError::ControlTimeout {
                path: files.qmp.clone(),
                secs: CONTROL_TIMEOUT.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A running QEMU VM.
#[derive(Debug)]
pub struct QemuVm {
    process: VmmProcess,
    qmp: Option<Qmp>,
    console: PathBuf,
    vmm_log: PathBuf,
}

impl QemuVm {
    /// Sends the VMM SIGKILL unless it has ended; see
    /// [`VmmProcess::start_kill`].
    pub fn start_kill(&mut self) {
        self.process.start_kill();
    }

    /// Lets the VMM outlive this value: dropping it no longer kills it
    /// (a server handing its sandboxes to the next one).
    pub fn leave_running(&mut self) {
        self.process.leave_running();
    }

    /// Waits for the VMM process to end and records how it ended.
    async fn reap(&mut self) -> Result<VmExit, VmmError> {
        let exit = self.process.reap().await?;
        self.qmp = None;
        Ok(exit)
    }

    /// A copy of the VMM's descriptor for `path` (one it inherited, see
    /// [`VmSpec::inherit`]): the same open file, so the same locks. `None`
    /// when it has no such descriptor.
    pub fn inherited(&self, path: &Path) -> Result<Option<OwnedFd>, VmmError> {
        let pid = self.process.pid();
        crate::process::held_by(pid, path)
            .map_err(VmmError::io(format!("the descriptors of process {pid}")))
    }
}

impl Vm for QemuVm {
    fn pid(&self) -> u32 {
        self.process.pid()
    }

    fn console_log(&self) -> &Path {
        &self.console
    }

    async fn wait(&mut self) -> Result<VmExit, VmmError> {
        self.reap().await
    }

    async fn stop(&mut self) -> Result<VmExit, VmmError> {
        if let Some(exit) = self.process.exit() {
            return Ok(exit);
        }
        let pid = self.process.pid();
        if let Some(qmp) = self.qmp.as_mut() {
            // A failed quit (QEMU already gone, socket closed) falls through
            // to the kill below.
            if let Err(e) = qmp.execute("quit", None).await {
                tracing::debug!(pid, "qmp quit failed: {e}");
            }
        }
        if let Some(exit) = self.process.reap_within(STOP_GRACE).await {
            self.qmp = None;
            return exit;
        }
        tracing::warn!(pid, "qemu ignored quit; killing it");
        self.process.start_kill();
        self.reap().await
    }

    async fn save(&mut self, path: &Path, memory: SavedMemory) -> Result<(), VmmError> {
        // The host opens the file and passes it: the VMM may neither start
        // a process nor, as another user, write where the state goes.
        let file = std::fs::File::create(path).map_err(VmmError::io(path.display().to_string()))?;
        let qmp = self.control()?;
        qmp.execute("stop", None).await?;
        set_ignore_shared(qmp, memory).await?;
        migrate_over(qmp, "migrate", file).await?;
        let started = Instant::now();
        loop {
            let status = qmp.execute("query-migrate", None).await?;
            match status.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(()),
                Some("failed" | "cancelled") => {
                    let why = status
                        .get("error-desc")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given");
                    return Err(VmmError::Qmp(format!("saving the VM state failed: {why}")));
                }
                _ => {}
            }
            if started.elapsed() > MIGRATION_TIMEOUT {
                return Err(VmmError::Qmp(format!(
                    "saving the VM state took over {} s",
                    MIGRATION_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn load(&mut self, path: &Path, memory: SavedMemory) -> Result<(), VmmError> {
        if !path.is_file() {
            return Err(VmmError::StateMissing(path.to_owned()));
        }
        let file = std::fs::File::open(path).map_err(VmmError::io(path.display().to_string()))?;
        let qmp = self.control()?;
        set_ignore_shared(qmp, memory).await?;
        migrate_over(qmp, "migrate-incoming", file).await?;
        let started = Instant::now();
        loop {
            // A state QEMU cannot load ends the process, which closes QMP.
            let status = match self.control()?.execute("query-status", None).await {
                Ok(status) => status,
                Err(e) => return Err(self.exit_reason().await.unwrap_or(e)),
            };
            if status.get("status").and_then(Value::as_str) == Some("paused") {
                return Ok(());
            }
            if started.elapsed() > MIGRATION_TIMEOUT {
                return Err(VmmError::Qmp(format!(
                    "loading the VM state took over {} s",
                    MIGRATION_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn pause(&mut self) -> Result<(), VmmError> {
        self.control()?.execute("stop", None).await.map(drop)
    }

    async fn resume(&mut self) -> Result<(), VmmError> {
        self.control()?.execute("cont", None).await.map(drop)
    }

    async fn attach_volume(&mut self, slot: usize, file: &std::fs::File) -> Result<(), VmmError> {
        if slot >= crate::VOLUME_SLOTS {
            return Err(VmmError::Qmp(format!("no volume slot {slot}")));
        }
        let size = file
            .metadata()
            .map_err(VmmError::io("a volume's image"))?
            .len();
        let qmp = self.control()?;
        // The VMM, confined and unprivileged, opens nothing by path: the
        // image comes as a descriptor in a set of its own, which QEMU's
        // `file` driver opens as /dev/fdset/N (fd sets 0 and up are ours;
        // one per slot).
        let fdset = u64::try_from(slot).expect("a small slot number") + 1;
        qmp.execute_with_fd("add-fd", json!({ "fdset-id": fdset }), file.as_fd())
            .await?;
        let (placeholder, fmt) = args::volume_nodes(slot);
        let attached = format!("{fmt}-image");
        qmp.execute(
            "blockdev-add",
            Some(json!({
                "driver": "file", "node-name": attached,
                "filename": format!("/dev/fdset/{fdset}"),
            })),
        )
        .await?;
        qmp.execute(
            "blockdev-reopen",
            Some(json!({ "options": [{ "driver": "raw", "node-name": fmt, "file": attached }] })),
        )
        .await?;
        qmp.execute("blockdev-del", Some(json!({ "node-name": placeholder })))
            .await?;
        // Resizing to the image's own size changes no byte; it makes the
        // device tell the guest its capacity.
        qmp.execute(
            "block_resize",
            Some(json!({ "node-name": fmt, "size": size })),
        )
        .await
        .map(drop)
    }
}

impl QemuVm {
    /// Why the VMM process ended, when it has (from the tail of its log).
    async fn exit_reason(&mut self) -> Option<VmmError> {
        let exit = self.process.reap_within(STOP_GRACE).await?.ok()?;
        self.qmp = None;
        Some(VmmError::EarlyExit {
            exit: format!(
                "{exit}: {}",
                crate::last_log_line(&self.vmm_log).unwrap_or_default()
            ),
            log: self.vmm_log.clone(),
        })
    }

    fn control(&mut self) -> Result<&mut Qmp, VmmError> {
        self.qmp
            .as_mut()
            .ok_or_else(|| VmmError::Qmp("the VMM has exited".to_owned()))
    }
}

/// Starts migration `command` (`migrate` or `migrate-incoming`) over
/// `file`, which QEMU gets as a descriptor (`getfd`, then `fd:NAME`).
async fn migrate_over(qmp: &mut Qmp, command: &str, file: std::fs::File) -> Result<(), VmmError> {
    qmp.send_fd(MIGRATION_FD, file.as_fd()).await?;
    drop(file);
    let uri = format!("fd:{MIGRATION_FD}");
    qmp.execute(command, Some(json!({ "uri": uri })))
        .await
        .map(drop)
}

/// With `x-ignore-shared`, memory in a shared backend file is left out of
/// the migration stream: the file already holds it.
async fn set_ignore_shared(qmp: &mut Qmp, memory: SavedMemory) -> Result<(), VmmError> {
    let capabilities = json!({ "capabilities": [{
        "capability": "x-ignore-shared",
        "state": memory == SavedMemory::InFile,
    }]});
    qmp.execute("migrate-set-capabilities", Some(capabilities))
        .await
        .map(drop)
}
