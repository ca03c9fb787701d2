use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hearth_image::{Kernel, Template};
use hearth_net::{Egress, Slots};
use hearth_vmm::qemu::Qemu;
use hearth_vmm::{
    Accel, AccelChoice, AccelDecision, Disk, DiskFormat, Driver, VmmChoice, VmmDecision,
};

use crate::cgroup::{self, Hierarchy};
use crate::egress_proxy::EgressCounts;
use crate::snapshot::Snapshot;
use crate::{HostProfile, Layout, NodeError, preflight};

/// Node-wide settings.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub accel: AccelChoice,
    /// The VMM driver sandboxes run on.
    pub vmm: VmmChoice,
    /// How many network slots (so sandboxes) may exist at once.
    pub slot_capacity: u32,
    /// Whether the VMMs of sandboxes outlive this process, for a later one
    /// to take over ([`crate::Sandbox::adopt`]): right for a server, which
    /// may be restarted or upgraded under running sandboxes; wrong for a
    /// short-lived caller (`hearth sandbox run`), whose VMs die with it.
    pub vmms_outlive: bool,
    /// The nameservers guests booted here are given and egress policies'
    /// names are resolved with; `None` for those of the host's
    /// `/etc/resolv.conf`.
    pub dns: Option<Vec<Ipv4Addr>>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            accel: AccelChoice::Auto,
            vmm: VmmChoice::Auto,
            slot_capacity: 1024,
            vmms_outlive: false,
            dns: None,
        }
    }
}

/// One machine's ability to run sandboxes: checked prerequisites, the VMM
/// driver, the chosen accelerator and the network slot allocator.
pub struct Node {
    pub(crate) layout: Layout,
    pub(crate) slots: Arc<Slots>,
    /// What sandboxes and template snapshots run on.
    pub(crate) driver: Driver,
    pub(crate) vmm: VmmDecision,
    /// What runs VMs on qcow2 disks (template build steps, whose layers
    /// are qcow2 overlays) when `driver` takes raw disks only: QEMU, if it
    /// is installed.
    builder: Option<Driver>,
    pub(crate) accel: AccelDecision,
    pub(crate) dns: Vec<Ipv4Addr>,
    /// Resolves the names egress policies allow, with `dns`; `None`
    /// without nameservers.
    pub(crate) egress_resolver: Option<hickory_resolver::TokioResolver>,
    /// What the egress proxies of this node's sandboxes did.
    pub(crate) egress_counts: Arc<EgressCounts>,
    /// What saved states made here depend on.
    pub(crate) host: HostProfile,
    /// Where each VMM's cgroup goes; `None` on a host without cpu, memory
    /// and pids controllers (VMMs then run unlimited, with a warning).
    pub(crate) cgroups: Option<Hierarchy>,
    /// See [`NodeOptions::vmms_outlive`].
    pub(crate) vmms_outlive: bool,
}

impl Node {
    /// Checks the host, chooses the accelerator and removes what crashed
    /// runs left behind (VMM processes, sandbox directories, network slots).
    pub fn open(layout: Layout, options: &NodeOptions) -> Result<Self, NodeError> {
        preflight::check_host()?;
        let accel = hearth_vmm::detect_accel(options.accel)?;
        tracing::info!(accel = %accel.accel, "accelerator: {} ({})", accel.accel, accel.reason);
        let (driver, vmm) = hearth_vmm::open_driver(options.vmm, &accel)?;
        tracing::info!(vmm = %vmm.kind, "VMM: {} ({})", vmm.kind, vmm.reason);
        let builder = match driver.takes_qcow2() {
            true => None,
            false => Qemu::from_path().ok().map(Driver::Qemu),
        };
        for dir in [
            layout.sandboxes(),
            layout.sandbox_locks(),
            layout.builds(),
            layout.build_locks(),
        ] {
            std::fs::create_dir_all(&dir).map_err(NodeError::io(&dir))?;
        }
        let slots = Slots::new(layout.slot_locks(), options.slot_capacity);
        let cgroups = Hierarchy::detect(Path::new("/sys/fs/cgroup"));
        if cgroups.is_none() {
            tracing::warn!(
                "no cgroup hierarchy with the cpu, memory and pids controllers: VMMs run \
                 without CPU, memory and process limits"
            );
        }
        // VMMs that outlived their server hold their locks: they and what
        // they use stay, for that server's successor to adopt or remove.
        remove_leftovers(&layout, &slots, cgroups.as_ref())?;
        // A build step's VM dies with its build.
        remove_leftover_dirs(&layout.builds(), &layout.build_locks(), "build VM")?;
        remove_abandoned_work(&layout);
        restrict_data_dir(&layout)?;
        let host = HostProfile {
            driver: vmm.kind.to_string(),
            vmm: driver.version()?,
            tsc_khz: tsc_khz(&layout)?,
            accel: accel.accel.to_string(),
            cpu: match accel.accel {
                Accel::Tcg => "max".to_owned(),
                Accel::Kvm => host_cpu_model(),
            },
        };
        let dns = match &options.dns {
            Some(dns) => dns.clone(),
            None => host_nameservers(Path::new("/etc/resolv.conf")),
        };
        Ok(Self {
            layout,
            slots: Arc::new(slots),
            driver,
            vmm,
            builder,
            accel,
            egress_resolver: crate::egress_proxy::resolver(&dns),
            egress_counts: Arc::default(),
            dns,
            host,
            cgroups,
            vmms_outlive: options.vmms_outlive,
        })
    }

    /// What saved states made on this node depend on.
    pub fn host(&self) -> &HostProfile {
        &self.host
    }

    /// The nameservers guests booted here are given, which also resolve
    /// the names of egress policies.
    pub fn nameservers(&self) -> &[Ipv4Addr] {
        &self.dns
    }

    /// What the egress proxies of this node's sandboxes did so far.
    pub fn egress_counts(&self) -> &EgressCounts {
        &self.egress_counts
    }

    /// `egress` as a slot applies it: with domains, the guest may reach
    /// its nameservers too.
    pub(crate) fn as_applied(&self, egress: &Egress) -> Egress {
        let mut applied = egress.clone();
        if !applied.domains.is_empty() {
            applied.nameservers = self.dns.clone();
        }
        applied
    }

    /// Guest kernel arguments for a cold boot of `template`.
    ///
    /// `tsc=reliable tsc_early_khz=`: under TCG the kernel's TSC
    /// calibration against the PIT fails as often as not and it finds the
    /// vCPUs' TSCs out of step (they are not: QEMU derives them from one
    /// monotonic count), so it falls back to jiffies, which need the
    /// periodic tick. Told the frequency (the host's: TCG guests read the
    /// host TSC) and to trust it, the guest uses the TSC, and an idle guest
    /// stops ticking: idle CPU per sandbox falls about threefold. A change here must bump
    /// `snapshot::RECIPE`: snapshots keep the arguments they booted with.
    pub(crate) fn kernel_args(&self, init_path: &str, hostname: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut args = format!(
            "root=/dev/vda rw rootfstype=ext4 init={} quiet tsc=reliable tsc_early_khz={} \
             hearth.hostname={hostname} hearth.ip={}/{} hearth.gw={} hearth.time={}.{:06}",
            init_path,
            self.host.tsc_khz,
            hearth_net::GUEST_IP,
            hearth_net::GUEST_PREFIX_LEN,
            hearth_net::GATEWAY_IP,
            now.as_secs(),
            now.subsec_micros()
        );
        if !self.dns.is_empty() {
            let dns: Vec<String> = self.dns.iter().map(ToString::to_string).collect();
            args.push_str(&format!(" hearth.dns={}", dns.join(",")));
        }
        args
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Stops the VMMs that an earlier process left running (see
    /// [`NodeOptions::vmms_outlive`]) for sandboxes not in `adopted`, and
    /// removes what they used: their directories, slots and cgroups.
    /// Paused sandboxes stay. For the one process that owns this node's
    /// sandboxes (the server), once it has adopted the ones it keeps.
    pub fn remove_unadopted(&self, adopted: &[String]) -> Result<(), NodeError> {
        let dir = self.layout.sandboxes();
        for entry in std::fs::read_dir(&dir).map_err(NodeError::io(&dir))? {
            let entry = entry.map_err(NodeError::io(&dir))?;
            let id = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if adopted.contains(&id)
                || crate::sandbox::is_paused(&path)
                || !crate::sandbox::has_vm_record(&path)
            {
                continue;
            }
            tracing::info!(sandbox = id, "stopping a VMM no one adopted");
            kill_leftover_vmm(&path);
        }
        remove_leftovers(&self.layout, &self.slots, self.cgroups.as_ref())
    }

    pub fn accel(&self) -> &AccelDecision {
        &self.accel
    }

    /// The VMM driver sandboxes run on, and why.
    pub fn vmm(&self) -> &VmmDecision {
        &self.vmm
    }

    /// The driver for a VM on `disk`: this node's, or QEMU for a qcow2
    /// disk (a template build step) where this node's takes raw disks only.
    pub(crate) fn driver_for(&self, disk: &Disk) -> Result<&Driver, NodeError> {
        if disk.format == DiskFormat::Raw || self.driver.takes_qcow2() {
            return Ok(&self.driver);
        }
        self.builder.as_ref().ok_or_else(|| {
            NodeError::Vmm(hearth_vmm::VmmError::Unsupported(format!(
                "template build steps run in QEMU build VMs (their layers are qcow2 images, \
                 which {} cannot use); install qemu-system-x86",
                self.vmm.kind
            )))
        })
    }

    /// Where this node keeps the kernel a snapshot recorded as `recorded`:
    /// the same build (`kernels/<id>/<file>`) under this node's data
    /// directory. A snapshot records the path it was taken with, which
    /// another process may reach the data by another way (a symlinked
    /// data directory that is gone since).
    pub(crate) fn local_kernel(&self, recorded: &Path) -> std::path::PathBuf {
        kernel_under(&self.layout.kernels(), recorded)
    }

    /// The guest kernel sandboxes boot.
    pub fn kernel(&self) -> Result<Kernel, NodeError> {
        hearth_image::current_kernel(&self.layout.kernels())?.ok_or(NodeError::NoKernel)
    }

    /// The current build of every template, by name.
    pub fn templates(&self) -> Result<Vec<Template>, NodeError> {
        let mut current = Vec::new();
        for build in hearth_image::list_templates(&self.layout.templates())? {
            if !current.iter().any(|t: &Template| t.name == build.name)
                && let Some(t) = hearth_image::find_template(&self.layout.templates(), &build.name)?
            {
                current.push(t);
            }
        }
        Ok(current)
    }

    /// How many network slots (so sandboxes, pooled ones included) are
    /// held now.
    pub fn slots_in_use(&self) -> u32 {
        self.slots.in_use()
    }

    /// How many network slots may be held at once.
    pub fn slot_capacity(&self) -> u32 {
        self.slots.capacity()
    }

    /// The current build of a template.
    pub fn template(&self, name: &str) -> Result<Template, NodeError> {
        hearth_image::find_template(&self.layout.templates(), name)?
            .ok_or_else(|| NodeError::NoTemplate(name.to_owned()))
    }

    /// Build `build_id` of template `name`, current or not.
    pub fn template_build(&self, name: &str, build_id: &str) -> Result<Template, NodeError> {
        hearth_image::find_build(&self.layout.templates(), name, build_id)?
            .ok_or_else(|| NodeError::NoTemplate(format!("{name} (build {build_id})")))
    }

    /// The template build whose snapshot is in `snapshot_dir`: what a guest
    /// booted from a disk of that snapshot needs (its init, its defaults).
    pub(crate) fn template_of(&self, snapshot_dir: &Path) -> Result<Template, NodeError> {
        let snapshot = Snapshot::load(snapshot_dir)?.ok_or_else(|| NodeError::Corrupt {
            path: snapshot_dir.to_owned(),
            reason: "the template snapshot is gone".to_owned(),
        })?;
        self.template_build(&snapshot.meta.template, &snapshot.meta.build_id)
    }
}

/// VMMs open their files as root and then drop to their own uid, which may
/// reach only what they need again (a restored VM reopens its disks): its
/// own sandbox directory and the templates, by path. The data directory and
/// the sandboxes directory can be crossed but not listed; the build caches
/// (images may be private) are root's alone; the catalog is made 0600 by
/// the server's store.
fn restrict_data_dir(layout: &Layout) -> Result<(), NodeError> {
    let cache = layout.data_dir().join("cache");
    std::fs::create_dir_all(&cache).map_err(NodeError::io(&cache))?;
    for (dir, mode) in [
        (layout.data_dir().to_owned(), 0o711),
        (layout.sandboxes(), 0o711),
        (cache, 0o700),
    ] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
            .map_err(NodeError::io(&dir))?;
    }
    Ok(())
}

/// `recorded` (`…/<build>/<file>`) as the same build under `kernels`, if
/// that exists there; else `recorded`.
fn kernel_under(kernels: &Path, recorded: &Path) -> std::path::PathBuf {
    let build = recorded.parent().and_then(Path::file_name);
    match (build, recorded.file_name()) {
        (Some(build), Some(file)) if kernels.join(build).join(file).is_file() => {
            kernels.join(build).join(file)
        }
        _ => recorded.to_owned(),
    }
}

/// Removes the sandbox directories, network slots and VMM cgroups that no
/// live process holds.
fn remove_leftovers(
    layout: &Layout,
    slots: &Slots,
    cgroups: Option<&Hierarchy>,
) -> Result<(), NodeError> {
    remove_leftover_dirs(&layout.sandboxes(), &layout.sandbox_locks(), "sandbox")?;
    let cleaned = slots.cleanup_leftovers()?;
    if !cleaned.is_empty() {
        tracing::info!("removed leftover network slots {cleaned:?}");
    }
    if let Some(hierarchy) = cgroups {
        cgroup::remove_leftovers(hierarchy);
    }
    Ok(())
}

/// Removes the directories under `dir` whose owner is gone, killing their
/// VMM first; paused sandboxes stay.
///
/// An owner holds `<locks>/<id>.lock` from before it creates the directory
/// until after it has removed it, so a directory whose lock can be taken is
/// a leftover. (A VMM that outlives its starter holds that lock too.)
fn remove_leftover_dirs(dir: &Path, locks: &Path, what: &str) -> Result<(), NodeError> {
    let entries = std::fs::read_dir(dir).map_err(NodeError::io(dir))?;
    for entry in entries {
        let entry = entry.map_err(NodeError::io(dir))?;
        let id = entry.file_name().to_string_lossy().into_owned();
        let lock_path = locks.join(format!("{id}.lock"));
        let path = entry.path();
        if crate::sandbox::is_paused(&path) {
            continue;
        }
        let Some(lock) = try_lock(&lock_path)? else {
            continue;
        };
        tracing::info!("removing leftover {what} {id}");
        kill_leftover_vmm(&path);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {}
            // Its owner's clean-up finished first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(NodeError::io(&path)(e)),
        }
        let _ = std::fs::remove_file(&lock_path);
        drop(lock);
    }
    Ok(())
}

/// Takes an exclusive lock on `path` without waiting: `None` when another
/// process holds it.
pub(crate) fn try_lock(path: &Path) -> Result<Option<File>, NodeError> {
    let file = open_lock_file(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(NodeError::Io {
            path: path.to_owned(),
            source: e,
        }),
    }
}

/// Takes an exclusive lock on `path`, waiting for its holder. Blocks.
pub(crate) fn lock_wait(path: &Path) -> Result<File, NodeError> {
    let file = open_lock_file(path)?;
    file.lock().map_err(NodeError::io(path))?;
    Ok(file)
}

/// Opens (creating) a lock file without touching its contents.
fn open_lock_file(path: &Path) -> Result<File, NodeError> {
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(NodeError::io(path))
}

/// The host's TSC frequency in kHz, measured once per boot of the host
/// (kept in the run directory).
fn tsc_khz(layout: &Layout) -> Result<u64, NodeError> {
    let cache = layout.run_dir().join("tsc_khz");
    if let Some(khz) = std::fs::read_to_string(&cache)
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return Ok(khz);
    }
    let khz = measure_tsc_khz();
    std::fs::create_dir_all(layout.run_dir()).map_err(NodeError::io(layout.run_dir()))?;
    std::fs::write(&cache, format!("{khz}\n")).map_err(NodeError::io(&cache))?;
    Ok(khz)
}

/// TSC ticks per millisecond of the monotonic clock over 200 ms. A
/// preemption between a clock read and its TSC read only lowers the rate,
/// so the highest of three runs is kept.
fn measure_tsc_khz() -> u64 {
    let once = || {
        let started = Instant::now();
        // SAFETY: rdtsc has no preconditions on x86-64.
        let before = unsafe { std::arch::x86_64::_rdtsc() };
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: as above.
        let after = unsafe { std::arch::x86_64::_rdtsc() };
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        after.wrapping_sub(before).saturating_mul(1000) / micros.max(1)
    };
    (0..3).map(|_| once()).max().unwrap_or(0)
}

/// The host CPU's model name (`-cpu host` under KVM passes its features on).
fn host_cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or_else(|| "unknown".to_owned(), |(_, name)| name.trim().to_owned())
}

/// Removes the half-made directories of template builds whose process is
/// gone: `templates/<name>/.build-<id>-<pid>` and
/// `cache/images/.work-<key>-<pid>`. Nothing in them was ever visible.
fn remove_abandoned_work(layout: &Layout) {
    let mut parents = vec![layout.cache().join("images")];
    if let Ok(names) = std::fs::read_dir(layout.templates()) {
        parents.extend(names.flatten().map(|e| e.path()));
    }
    for parent in parents {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = abandoned_by(&name) else {
                continue;
            };
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            tracing::info!(
                "removing {} left by a build that stopped",
                entry.path().display()
            );
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!("cannot remove {}: {e}", entry.path().display());
            }
        }
    }
}

/// The pid in the name of a build's work directory, `.build-…-<pid>` or
/// `.work-…-<pid>`.
fn abandoned_by(name: &str) -> Option<u32> {
    if !(name.starts_with(".build-") || name.starts_with(".work-")) {
        return None;
    }
    name.rsplit_once('-')?.1.parse().ok()
}

/// Kills the VMM recorded in a sandbox directory if that pid still runs a
/// process started for this directory (pids are reused).
pub(crate) fn kill_leftover_vmm(sandbox_dir: &Path) {
    let Ok(pid) = std::fs::read_to_string(sandbox_dir.join("vmm.pid")) else {
        return;
    };
    let Ok(pid) = pid.trim().parse::<i32>() else {
        return;
    };
    if !u32::try_from(pid).is_ok_and(|pid| hearth_vmm::is_vmm_of(pid, sandbox_dir)) {
        return;
    }
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(2);
    while runs(pid.as_raw()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether process `pid` exists and has not ended: an ended process whose
/// parent has not reaped it yet (a VMM that outlived its starter is
/// reaped by whoever inherited it) has closed its files already, once all
/// its threads have exited.
fn runs(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S ...`: the state follows the last `)`.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    if !matches!(state, Some('Z' | 'X') | None) {
        return true;
    }
    // A multi-threaded process's leader turns zombie before its other
    // threads have exited, and its descriptors (the locks it holds) are
    // closed only when the last one has: it runs until they are gone.
    std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| {
        tasks
            .filter_map(Result::ok)
            .any(|task| task.file_name().to_str() != Some(&pid.to_string()))
    })
}

/// The host's IPv4 name servers, minus loopback ones (a guest cannot reach
/// the host's local resolver), for the guest's resolv.conf.
fn host_nameservers(resolv_conf: &Path) -> Vec<Ipv4Addr> {
    let text = std::fs::read_to_string(resolv_conf).unwrap_or_default();
    parse_nameservers(&text)
}

fn parse_nameservers(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|v| v.trim().parse::<Ipv4Addr>().ok())
        .filter(|ip| !ip.is_loopback())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_runs_until_its_last_thread_ends() {
        // The main thread ends (SYS_exit, not exit_group) while another
        // sleeps: the leader is a zombie, the process still holds its
        // files.
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import ctypes, threading, time\n\
                 threading.Thread(target=time.sleep, args=(30,)).start()\n\
                 ctypes.CDLL(None).syscall(60, 0)",
            ])
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let leader_ended = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
        };
        while !leader_ended() {
            assert!(Instant::now() < deadline, "the leader thread did not end");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(runs(pid), "a zombie leader with a live thread still runs");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!runs(pid));
        assert!(runs(i32::try_from(std::process::id()).unwrap()));
    }

    #[test]
    fn work_directories_name_their_builder() {
        assert_eq!(abandoned_by(".build-5b0ad6922a434fca-4242"), Some(4242));
        assert_eq!(abandoned_by(".work-0123abcd-7"), Some(7));
        assert_eq!(abandoned_by("5b0ad6922a434fca"), None);
        assert_eq!(abandoned_by(".build.lock"), None);
        assert_eq!(abandoned_by(".build-x-notapid"), None);
        assert_eq!(abandoned_by("current"), None);
    }

    #[test]
    fn nameservers_skip_loopback_and_ipv6() {
        let text = "# comment\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver ::1\nsearch x\nnameserver 9.9.9.9\n";
        assert_eq!(
            parse_nameservers(text),
            [Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(9, 9, 9, 9)]
        );
    }

    #[test]
    fn a_recorded_kernel_is_found_under_this_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let kernels = dir.path().join("kernels");
        std::fs::create_dir_all(kernels.join("c09e")).unwrap();
        std::fs::write(kernels.join("c09e/vmlinux"), b"elf").unwrap();
        let gone = Path::new("/tmp/.gone/kernels/c09e/vmlinux");
        assert_eq!(kernel_under(&kernels, gone), kernels.join("c09e/vmlinux"));
        // Another build, or no such file here: the recorded path stands.
        let other = Path::new("/tmp/.gone/kernels/ffff/vmlinux");
        assert_eq!(kernel_under(&kernels, other), other);
        assert_eq!(
            kernel_under(&kernels, Path::new("vmlinux")),
            Path::new("vmlinux")
        );
    }

    #[test]
    fn lock_is_exclusive_between_open_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let held = try_lock(&path).unwrap().expect("first lock");
        assert!(try_lock(&path).unwrap().is_none());
        drop(held);
        assert!(try_lock(&path).unwrap().is_some());
    }
}
