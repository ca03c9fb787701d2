//! One VM in one network slot: what a sandbox runs on, and what a template
//! snapshot is taken from.

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hearth_net::{Egress, Slot};
use hearth_proto::agent::{AGENT_PORT, InitRequest};
use hearth_vmm::{Accel, AnyVm, Disk, Memory, NetSpec, SavedMemory, Start, Vm, VmSpec, Vmm};

use crate::egress_proxy::EgressProxy;
use crate::{AgentClient, Node, NodeError, cgroup};

/// How the VM comes to life.
pub(crate) enum Launch {
    /// Boot the kernel with these guest arguments.
    Boot { kernel_args: String },
    /// Load a saved state and continue it.
    Restore { state: PathBuf, saved: SavedMemory },
}

/// What the VM is made of.
pub(crate) struct Machine {
    pub(crate) kernel: PathBuf,
    pub(crate) disk: Disk,
    pub(crate) vcpus: u32,
    pub(crate) memory_mib: u32,
    pub(crate) memory: Memory,
    /// A sandbox's VM: its directory and disk are given to its VMM's uid.
    pub(crate) sandbox: bool,
    /// Volume images, attached in slot order before the guest runs.
    pub(crate) volumes: Vec<PathBuf>,
}

/// A VM and the network slot it runs in. Dropping it kills the VM and
/// releases the slot.
pub(crate) struct Instance {
    pub(crate) slot: Option<Slot>,
    pub(crate) vm: AnyVm,
    pub(crate) agent: AgentClient,
    /// The VMM's cgroup, removed once the VMM is gone.
    cgroup: Option<cgroup::Owned>,
    /// Whether the VMM outlives this process (it holds its owner's lock
    /// and its slot's; see [`Instance::detach`]).
    pub(crate) outlives: bool,
    /// The proxy of an egress policy with domains.
    proxy: Option<EgressProxy>,
}

/// Memory a VMM may use beyond its guest's: QEMU itself, and under TCG its
/// translation cache (up to 1 GiB by default).
const VMM_OVERHEAD_MIB: [(Accel, u64); 2] = [(Accel::Kvm, 256), (Accel::Tcg, 1024)];

impl Drop for Instance {
    /// Backstop for an instance dropped without [`Instance::release`] (a
    /// cancelled start, a panic): kills the VMM now and removes its cgroup
    /// once it has exited, waiting for that (bounded): a process about to
    /// exit must not leave the cgroup behind.
    fn drop(&mut self) {
        if self.slot.is_none() && self.cgroup.is_none() {
            // Released or detached.
            return;
        }
        self.vm.start_kill();
        // Removing the cgroup waits for the VMM to exit and the slot runs
        // `ip` and `nft`: neither on an async thread.
        let (cgroup, slot) = (self.cgroup.take(), self.slot.take());
        off_runtime(move || {
            drop(cgroup);
            drop(slot);
        });
    }
}

/// Runs blocking clean-up `work` on the runtime's blocking threads when
/// called from a tokio runtime (a drop on an async thread must not block
/// it; the runtime waits for such work before it shuts down), else here.
pub(crate) fn off_runtime(work: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(work)),
        Err(_) => work(),
    }
}

impl Instance {
    /// Takes a network slot, gives it the `egress` policy, and starts the VM
    /// in it, with its files in `run_dir`. On failure the slot is released.
    ///
    /// With `owner`, the lock file of what the VM runs for (a sandbox), and
    /// a node whose VMMs outlive it, the VMM holds that lock and its
    /// slot's for as long as it runs, and does not die with this process;
    /// otherwise it does.
    pub(crate) async fn launch(
        node: &Node,
        run_dir: &Path,
        machine: &Machine,
        launch: &Launch,
        egress: &Egress,
        owner: Option<&File>,
    ) -> Result<Self, NodeError> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        crate::preflight::check_memory(&meminfo)?;
        let slots = Arc::clone(&node.slots);
        let egress = node.as_applied(egress);
        let domains = egress.domains.clone();
        let slot = tokio::task::spawn_blocking(move || {
            let slot = slots.acquire()?;
            if !egress.is_default() {
                // Dropping the slot on failure removes it.
                slot.set_egress(&egress)?;
            }
            Ok::<_, hearth_net::NetError>(slot)
        })
        .await
        .expect("slot acquisition does not panic")?;
        let cgroup = cgroup_plan(node, run_dir, machine);
        if let Some(plan) = &cgroup
            && let Err(e) = plan.apply()
        {
            release_slot(slot).await;
            return Err(e);
        }
        let mut cgroup = cgroup.map(cgroup::Owned::new);
        let procs = cgroup
            .as_ref()
            .map(cgroup::Owned::procs)
            .unwrap_or_default();
        let held = match owner {
            Some(owner) if node.vmms_outlive => vec![owner.as_raw_fd(), slot.lock().as_raw_fd()],
            _ => Vec::new(),
        };
        let outlives = !held.is_empty();
        match Self::start_vm(node, &slot, run_dir, machine, launch, procs, held).await {
            Ok((vm, agent)) => {
                let mut instance = Self {
                    slot: Some(slot),
                    vm,
                    agent,
                    cgroup,
                    outlives,
                    proxy: None,
                };
                // On failure, dropping the instance stops the VM and
                // releases the slot.
                instance.serve_domains(node, &domains).await?;
                Ok(instance)
            }
            Err(e) => {
                release_slot(slot).await;
                if let Some(plan) = cgroup.as_mut().and_then(cgroup::Owned::take) {
                    let _ = tokio::task::spawn_blocking(move || plan.remove()).await;
                }
                Err(e)
            }
        }
    }

    async fn start_vm(
        node: &Node,
        slot: &Slot,
        run_dir: &Path,
        machine: &Machine,
        launch: &Launch,
        cgroups: Vec<PathBuf>,
        held: Vec<RawFd>,
    ) -> Result<(AnyVm, AgentClient), NodeError> {
        let plan = slot.plan();
        let uid = plan.vmm_uid();
        // A restored VM reopens its disk when it continues, and any VM lets
        // go of it when its state is saved (a pause), both as its uid: a
        // sandbox's disk belongs to the uid of the slot it runs in now,
        // which after a resume need not be the one it was made in.
        for slot in 0..hearth_vmm::VOLUME_SLOTS {
            let placeholder = hearth_vmm::volume_placeholder(run_dir, slot);
            std::fs::File::create(&placeholder).map_err(NodeError::io(&placeholder))?;
            std::os::unix::fs::chown(&placeholder, Some(uid), Some(uid))
                .map_err(NodeError::io(&placeholder))?;
        }
        if machine.sandbox || matches!(launch, Launch::Restore { .. }) {
            give_to(uid, run_dir, &machine.disk.path)?;
        }
        let (kernel_args, start) = match launch {
            Launch::Boot { kernel_args } => (kernel_args.clone(), Start::Boot),
            Launch::Restore { .. } => (String::new(), Start::Incoming),
        };
        let spec = VmSpec {
            kernel: machine.kernel.clone(),
            kernel_args,
            root_disk: machine.disk.clone(),
            vcpus: machine.vcpus,
            memory_mib: machine.memory_mib,
            memory: machine.memory.clone(),
            start,
            net: Some(NetSpec {
                tap: hearth_net::TAP_NAME.to_owned(),
                mac: hearth_net::GUEST_MAC.to_owned(),
                netns: Some(plan.netns_path()),
            }),
            run_dir: run_dir.to_owned(),
            accel: node.accel.accel,
            die_with_parent: held.is_empty(),
            run_as: Some(format!("{uid}:{uid}")),
            cgroups,
            inherit: held,
            // A sandbox's VMM (its disk is in its directory) is confined
            // there; template and build VMs, whose disks lie elsewhere, are
            // not.
            chroot: machine.disk.path.parent() == Some(run_dir),
        };
        let mut vm = node.driver_for(&machine.disk)?.boot(&spec).await?;
        let pid_file = run_dir.join("vmm.pid");
        std::fs::write(&pid_file, vm.pid().to_string()).map_err(NodeError::io(&pid_file))?;
        if let Launch::Restore { state, saved } = launch {
            vm.load(state, *saved).await?;
        }
        // Before the guest runs: a restored guest that had its volumes
        // mounted must never see the empty placeholders.
        for (slot, image) in machine.volumes.iter().enumerate() {
            vm.attach_volume(slot, &crate::volumes::open_image(image)?)
                .await?;
        }
        if let Launch::Restore { .. } = launch {
            vm.resume().await?;
        }
        let agent = AgentClient::new(SocketAddr::from((plan.ns_ip, AGENT_PORT)));
        Ok((vm, agent))
    }

    /// Waits until the guest agent answers, then hands it `init` with the
    /// current time and fresh entropy added. Fails if the VM exits or the
    /// timeout passes.
    pub(crate) async fn wait_ready(
        &mut self,
        timeout: Duration,
        mut init: InitRequest,
    ) -> Result<(), NodeError> {
        self.wait_agent(timeout).await?;
        init.timestamp = Some(now_rfc3339());
        init.entropy = Some(hearth_proto::connect::base64_encode(
            &crate::id::random_bytes::<32>().map_err(NodeError::io("/dev/urandom"))?,
        ));
        self.agent.init(&init).await?;
        Ok(())
    }

    /// Does what a claim will do, [`Instance::wait_ready`] (so that under
    /// TCG the guest code of that path is translated by then), then stops
    /// the vCPUs: a parked VM costs memory but no CPU.
    ///
    /// A parked VM does not run [`Instance::warm_up`]: under TCG that took
    /// about 150 ms off a sandbox's first command but added about 400 ms
    /// to every refill, so back-to-back creates emptied the pool.
    pub(crate) async fn park(
        &mut self,
        timeout: Duration,
        init: InitRequest,
    ) -> Result<(), NodeError> {
        self.wait_ready(timeout, init).await?;
        self.vm.pause().await?;
        Ok(())
    }

    /// Runs what the e2b SDKs run for every command, a login shell
    /// (`/bin/bash -l -c true`) as the default user, once, before a
    /// template snapshot: the shell, its libraries and profile files are
    /// then in the guest's page cache, which the snapshot keeps, and a
    /// sandbox's first command does not read them from disk. A template
    /// without bash has nothing to warm, so failures are only logged.
    pub(crate) async fn warm_up(&self) {
        let started = Instant::now();
        match self.agent.run("/bin/bash", &["-l", "-c", "true"]).await {
            Ok(code) => tracing::debug!(
                code,
                ms = started.elapsed().as_millis(),
                "warmed up a login shell"
            ),
            Err(e) => tracing::debug!("no login shell to warm up: {e}"),
        }
    }

    /// Waits until the guest agent answers its health check.
    pub(crate) async fn wait_agent(&mut self, timeout: Duration) -> Result<(), NodeError> {
        let started = Instant::now();
        loop {
            let probe = self.agent.health(Duration::from_millis(250));
            tokio::select! {
                exit = self.vm.wait() => {
                    let exit = exit?;
                    return Err(NodeError::BootExit {
                        exit: exit.to_string(),
                        console: last_console_line(self.vm.console_log()),
                    });
                }
                ready = probe => if ready { break },
            }
            if started.elapsed() > timeout {
                return Err(NodeError::AgentTimeout {
                    timeout,
                    console: last_console_line(self.vm.console_log()),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tracing::debug!(ms = started.elapsed().as_millis(), "agent answers");
        Ok(())
    }

    /// Replaces the egress policy of the VM's slot.
    pub(crate) async fn set_egress(
        &mut self,
        node: &Node,
        egress: &Egress,
    ) -> Result<(), NodeError> {
        let slot = self.slot.take().expect("a launched instance has a slot");
        let egress = node.as_applied(egress);
        let domains = egress.domains.clone();
        let (slot, result) = tokio::task::spawn_blocking(move || {
            let result = slot.set_egress(&egress);
            (slot, result)
        })
        .await
        .expect("setting the egress policy does not panic");
        self.slot = Some(slot);
        result?;
        self.serve_domains(node, &domains).await
    }

    /// Starts the slot's egress proxy for `domains`, in place of the one it
    /// had; none for none.
    async fn serve_domains(
        &mut self,
        node: &Node,
        domains: &[hearth_net::DomainRule],
    ) -> Result<(), NodeError> {
        self.proxy = None;
        if domains.is_empty() {
            return Ok(());
        }
        let resolver = node
            .egress_resolver
            .clone()
            .ok_or(NodeError::NoNameserver)?;
        let slot = self.slot.as_ref().expect("a launched instance has a slot");
        let netns = slot.enter_netns_fd()?;
        let proxy = EgressProxy::start(
            netns,
            domains.to_vec(),
            resolver,
            Arc::clone(&node.egress_counts),
        )
        .await
        .map_err(NodeError::io("the egress proxy's listeners"))?;
        self.proxy = Some(proxy);
        Ok(())
    }

    /// Takes over the VM that an earlier process started in `run_dir` and
    /// left running (`outlives`): `pid` is its VMM, `slot` its slot (taken
    /// over with the lock the VMM holds). The VM runs on as it was; if its
    /// vCPUs were stopped (that process died half way through a pause or a
    /// fork), they continue.
    pub(crate) async fn adopt(
        node: &Node,
        run_dir: &Path,
        machine: &Machine,
        egress: &Egress,
        pid: u32,
        slot: impl FnOnce(&AnyVm) -> Result<Slot, NodeError>,
    ) -> Result<Self, NodeError> {
        let vm = node.driver.adopt(pid, run_dir).await?;
        let slot = slot(&vm)?;
        let agent = AgentClient::new(SocketAddr::from((slot.plan().ns_ip, AGENT_PORT)));
        let mut instance = Self {
            slot: Some(slot),
            vm,
            agent,
            cgroup: cgroup_plan(node, run_dir, machine).map(cgroup::Owned::new),
            outlives: true,
            proxy: None,
        };
        // The proxy died with the process that started the VM.
        instance.serve_domains(node, &egress.domains).await?;
        instance.vm.resume().await?;
        Ok(instance)
    }

    /// Lets go of a VM that outlives this process without stopping it:
    /// its slot, cgroup and files stay, for [`Instance::adopt`] later.
    pub(crate) fn detach(mut self) {
        self.vm.leave_running();
        if let Some(slot) = self.slot.take() {
            slot.detach();
        }
        if let Some(mut cgroup) = self.cgroup.take() {
            cgroup.take();
        }
    }

    /// What the VMM uses now, and its limits.
    pub(crate) fn usage(&self) -> cgroup::VmmUsage {
        let dirs = self.cgroup.as_ref().map_or(&[][..], cgroup::Owned::dirs);
        let mut usage = cgroup::VmmUsage::read(self.vm.pid(), dirs);
        if let Some(slot) = &self.slot {
            (usage.net_sent_bytes, usage.net_received_bytes) = slot.guest_bytes();
        }
        usage
    }

    /// Stops the VM and releases the slot and the cgroup.
    pub(crate) async fn release(mut self) -> Result<(), NodeError> {
        let stopped = self.vm.stop().await;
        if let Some(slot) = self.slot.take() {
            release_slot(slot).await;
        }
        if let Some(plan) = self.cgroup.as_mut().and_then(cgroup::Owned::take) {
            let _ = tokio::task::spawn_blocking(move || plan.remove()).await;
        }
        stopped.map(drop).map_err(NodeError::from)
    }
}

/// The cgroup of the VMM that runs `machine` in `run_dir` (named after the
/// directory), if the host has the controllers.
fn cgroup_plan(node: &Node, run_dir: &Path, machine: &Machine) -> Option<cgroup::Plan> {
    node.cgroups.as_ref().map(|hierarchy| {
        let overhead = VMM_OVERHEAD_MIB
            .iter()
            .find(|(accel, _)| *accel == node.accel.accel)
            .map_or(1024, |(_, mib)| *mib);
        let name = run_dir
            .file_name()
            .map_or_else(|| "vmm".into(), |n| n.to_string_lossy().into_owned());
        hierarchy.plan(
            &name,
            cgroup::Limits {
                cpus: machine.vcpus,
                memory_bytes: (u64::from(machine.memory_mib) + overhead) << 20,
                pids: cgroup::PIDS_MAX,
            },
        )
    })
}

/// Makes `dir` (private: 0700) and `disk` owned by `uid` and the group of
/// that number.
fn give_to(uid: u32, dir: &Path, disk: &Path) -> Result<(), NodeError> {
    use std::os::unix::fs::PermissionsExt;
    for path in [dir, disk] {
        std::os::unix::fs::chown(path, Some(uid), Some(uid)).map_err(NodeError::io(path))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(NodeError::io(dir))
}

async fn release_slot(slot: Slot) {
    let released = tokio::task::spawn_blocking(move || slot.release())
        .await
        .expect("slot release does not panic");
    if let Err(e) = released {
        tracing::warn!("releasing a network slot: {e}");
    }
}

/// The last non-empty line of a guest console log, or `(empty)`.
pub fn last_console_line(path: &Path) -> String {
    hearth_vmm::last_log_line(path).unwrap_or_else(|| "(empty)".to_owned())
}

/// The current time as RFC 3339, in UTC.
fn now_rfc3339() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    hearth_proto::time::format_since_epoch(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_line_is_last_non_empty() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        assert_eq!(last_console_line(&log), "(empty)");
        std::fs::write(&log, "boot\nKernel panic - not syncing\n\n  \n").unwrap();
        assert_eq!(last_console_line(&log), "Kernel panic - not syncing");
    }
}
