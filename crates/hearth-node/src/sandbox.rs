use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use hearth_image::{Kernel, Template, TemplateRun};
use hearth_net::Egress;
use hearth_proto::agent::InitRequest;
use hearth_proto::connect::Code;
use hearth_proto::process::process_event::Event;
use hearth_proto::process::{ProcessEvent, StartRequest};
use hearth_vmm::{Disk, Memory, SavedMemory, Vm, VmExit};

use crate::instance::{Instance, Launch, Machine, last_console_line};
use crate::node::{kill_leftover_vmm, try_lock};
use crate::snapshot::{HostProfile, START_TAG, Snapshot, unix_now, write_json};
use crate::{AgentClient, AgentError, Node, NodeError, VolumeAttachment, id};

mod capture;
pub use capture::Captured;

/// Written into a paused sandbox's directory; its presence is what makes
/// the directory outlive every process.
const PAUSED: &str = "paused.json";
/// How long a template's start command has to end after its stop signal
/// before the VM is stopped under it. Shorter than `docker stop`'s 10 s:
/// a kill through the API waits for it.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// The saved state of a paused sandbox (device state and memory).
const PAUSED_STATE: &str = "state";
/// What the sandbox was made from ([`Origin`]), written when its directory
/// is created: it tells which template build the sandbox's disk needs.
const ORIGIN: &str = "origin.json";
/// Written into a running sandbox's directory when its VMM outlives the
/// process that started it ([`VmRecord`]): what a later process needs to
/// take it over ([`Sandbox::adopt`]).
const VM_RECORD: &str = "vm.json";

/// What to create.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub template: Template,
    pub kernel: Kernel,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// How long the template may take to boot when its snapshot has to be
    /// taken first.
    pub boot_timeout: Duration,
}

/// What a sandbox was made from: enough to restore it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Origin {
    template: String,
    /// The template snapshot directory its disk overlays.
    snapshot: PathBuf,
    kernel_path: PathBuf,
    vcpus: u32,
    memory_mib: u32,
    host: HostProfile,
    /// The signal that stops the template's start command, if it has one.
    #[serde(default)]
    stop_signal: Option<i32>,
}

/// What [`Sandbox::stop_service`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceStop {
    /// The template has no start command.
    NoService,
    /// The start command ended (or had ended before).
    Exited,
    /// It still ran when the grace period was over.
    StillRunning,
}

/// What a pause keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PauseMode {
    /// Memory, devices and disk: a resume continues every process.
    #[default]
    Full,
    /// The disk only (E2B's `mode: "filesystem"`): a resume boots the
    /// guest again from it, so files are kept and processes are not.
    Filesystem,
}

impl PauseMode {
    /// E2B's name of the mode: `full` or `filesystem`.
    pub fn as_str(self) -> &'static str {
        match self {
            PauseMode::Full => "full",
            PauseMode::Filesystem => "filesystem",
        }
    }
}

/// How long a sandbox being destroyed has to write back what it holds for
/// its volumes.
pub const VOLUME_SYNC: Duration = Duration::from_secs(10);

/// The record of a paused sandbox (`paused.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Paused {
    origin: Origin,
    /// Restored with the sandbox. Records written before egress policies
    /// existed have none: open.
    #[serde(default)]
    egress: Egress,
    /// Unix seconds.
    paused_at: u64,
    /// Only the disk was kept ([`PauseMode::Filesystem`]).
    #[serde(default)]
    filesystem_only: bool,
    /// Attached again at the resume, in the same slots.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    volumes: Vec<VolumeAttachment>,
}

/// The VM of a running sandbox whose VMM outlives its starter
/// (`vm.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct VmRecord {
    /// The VMM process.
    pid: u32,
    /// Its network slot's index.
    slot: u32,
    /// The policy in force in that slot.
    egress: Egress,
    /// The volumes its VMM has attached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    volumes: Vec<VolumeAttachment>,
}

/// A running sandbox and everything it owns: its directory (disk overlay,
/// console log), its network slot and its VMM process.
pub struct Sandbox {
    id: String,
    dir: PathBuf,
    lock_path: PathBuf,
    lock: Option<File>,
    instance: Option<Instance>,
    origin: Origin,
    /// The network policy of its slot; pause, resume and fork keep it.
    egress: Egress,
    /// Restored and warmed up, vCPUs stopped: waiting in a [`crate::Pool`].
    parked: bool,
    /// Booted afresh from its disk (a resume after a filesystem-only
    /// pause): how its template runs, which its first `/init` restores.
    booted: Option<TemplateRun>,
    /// Its volumes, in slot order; each mounted by its guest.
    volumes: Vec<VolumeAttachment>,
}

impl Sandbox {
    /// Restores a new sandbox from the template's snapshot, taking the
    /// snapshot first if this template, kernel and machine shape have none.
    /// Call [`Sandbox::wait_ready`] next. On failure everything created so
    /// far is removed.
    pub async fn create(node: &Node, spec: &SandboxSpec) -> Result<Self, NodeError> {
        let snapshot = node.snapshot(spec).await?;
        Self::from_snapshot(node, &snapshot, &Egress::open()).await
    }

    /// Restores a new sandbox from a template snapshot, with `egress` in
    /// force before the guest runs.
    pub async fn from_snapshot(
        node: &Node,
        snapshot: &Snapshot,
        egress: &Egress,
    ) -> Result<Self, NodeError> {
        node.host
            .check(&snapshot.meta.host, "the template snapshot")?;
        let origin = Origin {
            template: snapshot.meta.template.clone(),
            snapshot: snapshot.dir.clone(),
            kernel_path: node.local_kernel(&snapshot.meta.kernel_path),
            vcpus: snapshot.meta.vcpus,
            memory_mib: snapshot.meta.memory_mib,
            host: snapshot.meta.host.clone(),
            stop_signal: snapshot.meta.stop_signal,
        };
        let id = id::new_sandbox_id().map_err(NodeError::io("/dev/urandom"))?;
        let mut sandbox = Self::claim(node, id, origin, egress.clone())?;
        let started = async {
            sandbox.create_dir()?;
            let (base, format, dir) = (
                snapshot.disk(),
                sandbox.origin.host.disk_format(),
                sandbox.dir.clone(),
            );
            tokio::task::spawn_blocking(move || crate::disk::derive(&base, format, &dir))
                .await
                .expect("making a disk does not panic")?;
            let machine = sandbox.machine(Memory::File {
                path: snapshot.memory(),
                shared: false,
            });
            let launch = Launch::Restore {
                state: snapshot.state(),
                saved: SavedMemory::InFile,
            };
            let instance = Instance::launch(
                node,
                &sandbox.dir,
                &machine,
                &launch,
                egress,
                sandbox.lock.as_ref(),
            )
            .await?;
            sandbox.instance = Some(instance);
            sandbox.record_vm()
        }
        .await;
        match started {
            Ok(()) => Ok(sandbox),
            Err(e) => {
                sandbox.discard().await;
                Err(e)
            }
        }
    }

    /// Locks the id; the directory is not created yet.
    fn claim(node: &Node, id: String, origin: Origin, egress: Egress) -> Result<Self, NodeError> {
        let lock_path = node.layout.sandbox_locks().join(format!("{id}.lock"));
        let lock = try_lock(&lock_path)?.ok_or_else(|| NodeError::Busy(id.clone()))?;
        Ok(Self {
            dir: node.layout.sandboxes().join(&id),
            id,
            lock_path,
            lock: Some(lock),
            instance: None,
            origin,
            egress,
            parked: false,
            booted: None,
            volumes: Vec::new(),
        })
    }

    /// Creates the sandbox's directory and records its origin there.
    fn create_dir(&self) -> Result<(), NodeError> {
        std::fs::create_dir(&self.dir).map_err(NodeError::io(&self.dir))?;
        write_json(&self.dir.join(ORIGIN), &self.origin)
    }

    /// Its root disk, in its directory.
    fn disk(&self) -> Disk {
        crate::disk::in_dir(&self.dir, self.origin.host.disk_format())
    }

    fn machine(&self, memory: Memory) -> Machine {
        Machine {
            kernel: self.origin.kernel_path.clone(),
            disk: self.disk(),
            vcpus: self.origin.vcpus,
            memory_mib: self.origin.memory_mib,
            memory,
            sandbox: true,
            volumes: self.volumes.iter().map(|v| v.image.clone()).collect(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Has the host's own requests to the agent carry the sandbox's access
    /// token (set by [`Sandbox::wait_ready`]; a re-adopted sandbox is told
    /// here).
    pub fn use_token(&mut self, token: &str) {
        self.instance_mut().agent.use_token(token);
    }

    /// Whether the guest is booting afresh (a resume after a
    /// filesystem-only pause), which takes longer than a restore.
    pub fn is_booting(&self) -> bool {
        self.booted.is_some()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The template this sandbox was created from.
    pub fn template(&self) -> &str {
        &self.origin.template
    }

    /// The VMM process id.
    pub fn vmm_pid(&self) -> u32 {
        self.instance().vm.pid()
    }

    pub fn agent(&self) -> &AgentClient {
        &self.instance().agent
    }

    fn instance(&self) -> &Instance {
        self.instance.as_ref().expect("a live sandbox has a VM")
    }

    fn instance_mut(&mut self) -> &mut Instance {
        self.instance.as_mut().expect("a live sandbox has a VM")
    }

    /// What its VMM uses (CPU time, memory) and may use, from its cgroup
    /// and its process.
    pub fn vmm_usage(&self) -> crate::VmmUsage {
        use std::os::unix::fs::MetadataExt;
        let mut usage = self.instance().usage();
        usage.disk_bytes = std::fs::metadata(self.disk().path)
            .ok()
            .map(|m| m.blocks() * 512);
        usage
    }

    /// The network policy in force.
    pub fn egress(&self) -> &Egress {
        &self.egress
    }

    /// Replaces the network policy; it applies to the guest's open
    /// connections too. For a pooled sandbox, call it before
    /// [`Sandbox::wait_ready`]: the guest runs only from then.
    pub async fn set_egress(&mut self, node: &Node, egress: &Egress) -> Result<(), NodeError> {
        self.instance_mut().set_egress(node, egress).await?;
        self.egress = egress.clone();
        self.record_vm()
    }

    /// Attaches `volumes` to a new sandbox (restored or from a pool, before
    /// [`Sandbox::wait_ready`], whose `/init` has the guest mount them). Its
    /// guest has not used its volume slots, so it may be running.
    pub async fn attach_volumes(
        &mut self,
        volumes: Vec<VolumeAttachment>,
    ) -> Result<(), NodeError> {
        if volumes.len() > hearth_vmm::VOLUME_SLOTS {
            return Err(NodeError::TooManyVolumes {
                max: hearth_vmm::VOLUME_SLOTS,
            });
        }
        let first = self.volumes.len();
        for (i, volume) in volumes.iter().enumerate() {
            let image = crate::volumes::open_image(&volume.image)?;
            self.instance_mut()
                .vm
                .attach_volume(first + i, &image)
                .await?;
        }
        self.volumes.extend(volumes);
        self.record_vm()
    }

    /// The volumes it mounts.
    pub fn volumes(&self) -> &[VolumeAttachment] {
        &self.volumes
    }

    /// A refusal of `what` for a sandbox with volumes.
    pub(crate) fn refuse_with_volumes(&self, what: &'static str) -> Result<(), NodeError> {
        if self.volumes.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = self.volumes.iter().map(|v| v.name.as_str()).collect();
        Err(NodeError::HasVolumes {
            id: self.id.clone(),
            volumes: names.join(", "),
            what,
        })
    }

    /// Writes `vm.json` if the VMM outlives this process.
    fn record_vm(&self) -> Result<(), NodeError> {
        let instance = self.instance();
        if !instance.outlives {
            return Ok(());
        }
        let record = VmRecord {
            pid: instance.vm.pid(),
            slot: instance
                .slot
                .as_ref()
                .expect("a launched instance has a slot")
                .plan()
                .index,
            egress: self.egress.clone(),
            volumes: self.volumes.clone(),
        };
        let path = self.dir.join(VM_RECORD);
        let partial = self.dir.join(".vm.json.partial");
        write_json(&partial, &record)?;
        std::fs::rename(&partial, &path).map_err(NodeError::io(&path))
    }

    /// Takes over sandbox `id`, left running by an earlier process whose
    /// VMMs outlived it (a server before a restart or an upgrade): its VMM,
    /// slot, cgroup and directory, from `vm.json` and the locks the VMM
    /// holds. The guest runs on undisturbed. Check its agent with
    /// [`Sandbox::wait_agent`] next.
    pub async fn adopt(node: &Node, id: &str) -> Result<Self, NodeError> {
        let not_adoptable = |why: String| NodeError::NotAdoptable {
            id: id.to_owned(),
            why,
        };
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(not_adoptable("not a sandbox id".into()));
        }
        let dir = node.layout.sandboxes().join(id);
        let origin: Origin = read_json(&dir.join(ORIGIN))?
            .ok_or_else(|| not_adoptable("its directory has no origin.json".into()))?;
        let record: VmRecord = read_json(&dir.join(VM_RECORD))?
            .ok_or_else(|| not_adoptable("its directory has no vm.json".into()))?;
        let lock_path = node.layout.sandbox_locks().join(format!("{id}.lock"));
        let mut sandbox = Self {
            dir,
            id: id.to_owned(),
            lock_path,
            lock: None,
            instance: None,
            origin,
            egress: record.egress.clone(),
            parked: false,
            booted: None,
            volumes: record.volumes.clone(),
        };
        let machine = sandbox.machine(Memory::Anonymous);
        let mut lock = None;
        let instance = Instance::adopt(
            node,
            &sandbox.dir,
            &machine,
            &record.egress,
            record.pid,
            |vm| {
                let held = |path: &Path| {
                    vm.inherited(path)?.map(File::from).ok_or_else(|| {
                        not_adoptable(format!("its VMM does not hold {}", path.display()))
                    })
                };
                lock = Some(held(&sandbox.lock_path)?);
                let slot_lock = held(&node.slots.lock_path(record.slot))?;
                Ok(node.slots.adopt(record.slot, slot_lock)?)
            },
        )
        .await?;
        sandbox.lock = lock;
        sandbox.instance = Some(instance);
        Ok(sandbox)
    }

    /// Waits until the guest agent answers its health check (an adopted
    /// sandbox's agent has had its `/init`).
    pub async fn wait_agent(&mut self, timeout: Duration) -> Result<(), NodeError> {
        self.instance_mut().wait_agent(timeout).await
    }

    /// Lets go of the sandbox without stopping it, for a later process to
    /// [`Sandbox::adopt`]: its VM, slot and files stay. A sandbox whose VMM
    /// dies with this process (see [`crate::NodeOptions::vmms_outlive`]) is
    /// destroyed instead.
    pub async fn detach(mut self) -> Result<(), NodeError> {
        let outlives = self.instance.as_ref().is_some_and(|i| i.outlives);
        if !outlives || self.parked {
            return self.destroy().await;
        }
        if let Some(instance) = self.instance.take() {
            instance.detach();
        }
        // The VMM holds the lock from here on.
        self.lock = None;
        tracing::info!(sandbox = %self.id, "left running for the next server");
        Ok(())
    }

    /// Waits until the guest agent answers, then sends `POST /init` with
    /// `init` plus the current time, fresh entropy and the sandbox id as
    /// host name. Fails if the VM exits or the timeout passes.
    pub async fn wait_ready(
        &mut self,
        timeout: Duration,
        mut init: InitRequest,
    ) -> Result<(), NodeError> {
        init.hostname = Some(self.id.clone());
        if !self.volumes.is_empty() {
            init.volume_disks = Some(crate::volumes::disks(&self.instance().vm, &self.volumes)?);
        }
        if let Some(token) = &init.access_token {
            self.use_token(token);
        }
        let mut service = None;
        if let Some(run) = self.booted.take() {
            // A fresh guest knows nothing of its template's defaults, which
            // a snapshot's memory would have held, and runs none of its
            // processes: the start command is started again.
            let mut env: HashMap<String, String> = run.config.env.into_iter().collect();
            env.extend(init.env_vars.take().unwrap_or_default());
            init.env_vars = Some(env);
            init.default_user = init.default_user.or(run.config.user);
            init.default_workdir = init.default_workdir.or(run.config.workdir);
            service = run.start_cmd;
        }
        if self.parked {
            self.instance_mut().vm.resume().await?;
            self.parked = false;
        }
        self.instance_mut().wait_ready(timeout, init).await?;
        if let Some(argv) = service {
            let request = StartRequest {
                tag: Some(START_TAG.to_owned()),
                ..crate::snapshot::command_request(&argv)
            };
            // It runs on without a client, as in the template's snapshot.
            drop(self.agent().start(&request).await?);
            tracing::info!(sandbox = %self.id, "started the template's start command again");
        }
        Ok(())
    }

    /// Waits for the agent, warms it up and stops the vCPUs, for a pool.
    pub(crate) async fn park(&mut self, timeout: Duration) -> Result<(), NodeError> {
        let init = InitRequest {
            hostname: Some(self.id.clone()),
            ..InitRequest::default()
        };
        self.instance_mut().park(timeout, init).await?;
        self.parked = true;
        Ok(())
    }

    /// Resolves when the VM has exited by itself (guest reboot, power-off or
    /// panic). Cancel-safe.
    pub async fn wait_exit(&mut self) -> Result<VmExit, NodeError> {
        Ok(self.instance_mut().vm.wait().await?)
    }

    /// The last non-empty line the guest wrote to its console.
    pub fn last_console_line(&self) -> String {
        last_console_line(&self.dir.join("console.log"))
    }

    /// Sends the template's stop signal to its start command (the guest's
    /// service, tagged when the snapshot was taken) and waits up to `grace`
    /// for it to end, as `docker stop` does before the VM goes.
    pub async fn stop_service(&self, grace: Duration) -> Result<ServiceStop, NodeError> {
        let Some(signal) = self.origin.stop_signal else {
            return Ok(ServiceStop::NoService);
        };
        let agent = self.agent();
        let gone = |e: &AgentError| matches!(e, AgentError::Rpc(e) if e.code == Code::NotFound);
        // Listen before signalling, so the end cannot be missed.
        let mut events = match agent.connect_tagged(START_TAG).await {
            Ok(events) => events,
            Err(e) if gone(&e) => return Ok(ServiceStop::Exited),
            Err(e) => return Err(e.into()),
        };
        match agent.signal_tagged(START_TAG, signal).await {
            Ok(()) => {}
            Err(e) if gone(&e) => return Ok(ServiceStop::Exited),
            Err(e) => return Err(e.into()),
        }
        let ended = async {
            loop {
                match events.next().await {
                    Ok(Some(ProcessEvent {
                        event: Some(Event::End(_)),
                    })) => return Ok(()),
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(()),
                    Err(e) if gone(&e) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        };
        match tokio::time::timeout(grace, ended).await {
            Ok(Ok(())) => Ok(ServiceStop::Exited),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Ok(ServiceStop::StillRunning),
        }
    }

    /// Stops the template's start command ([`Sandbox::stop_service`], up to
    /// [`STOP_GRACE`]), has the guest write what it holds for its volumes
    /// back to them (up to [`VOLUME_SYNC`]), then stops the VM, and removes
    /// everything the sandbox created.
    pub async fn destroy(mut self) -> Result<(), NodeError> {
        if !self.parked && self.instance.is_some() {
            match self.stop_service(STOP_GRACE).await {
                Ok(ServiceStop::StillRunning) => tracing::info!(
                    sandbox = %self.id,
                    "the start command ignored its stop signal for {STOP_GRACE:?}; stopping the VM"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(sandbox = %self.id, "stopping the start command: {e}"),
            }
            if !self.volumes.is_empty() {
                // A volume outlives the sandbox: what its guest wrote but
                // has not flushed yet would be lost with the VM.
                match tokio::time::timeout(VOLUME_SYNC, self.agent().run("sync", &[])).await {
                    Ok(Ok(0)) => {}
                    Ok(Ok(code)) => {
                        tracing::warn!(sandbox = %self.id, code, "`sync` before the stop failed")
                    }
                    Ok(Err(e)) => tracing::warn!(sandbox = %self.id, "syncing the volumes: {e}"),
                    Err(_) => tracing::warn!(
                        sandbox = %self.id,
                        "the guest did not sync its volumes within {VOLUME_SYNC:?}"
                    ),
                }
            }
        }
        let stopped = match self.instance.take() {
            Some(instance) => instance.release().await,
            None => Ok(()),
        };
        let removed = self.remove_dir();
        stopped.and(removed)
    }

    /// Saves the sandbox (memory, devices and disk, or with
    /// [`PauseMode::Filesystem`] its disk only) into its directory, then
    /// stops its VM and frees its slot. The directory stays until the sandbox
    /// is resumed ([`Sandbox::resume`]) or deleted ([`Node::delete_paused`]);
    /// it survives restarts of this process, and this value owns nothing
    /// any more. On failure the guest continues and this value still owns
    /// it.
    pub async fn pause(&mut self, mode: PauseMode) -> Result<(), NodeError> {
        match mode {
            PauseMode::Full => self.save_memory(&self.dir.join(PAUSED_STATE)).await?,
            PauseMode::Filesystem => self.settle_disk().await?,
        }
        let record = Paused {
            origin: self.origin.clone(),
            egress: self.egress.clone(),
            paused_at: unix_now(),
            filesystem_only: mode == PauseMode::Filesystem,
            volumes: self.volumes.clone(),
        };
        write_json(&self.dir.join(PAUSED), &record)?;
        if let Some(instance) = self.instance.take()
            && let Err(e) = instance.release().await
        {
            tracing::warn!(sandbox = %self.id, "stopping the paused VM: {e}");
        }
        let _ = std::fs::remove_file(self.dir.join(VM_RECORD));
        let _ = std::fs::remove_file(&self.lock_path);
        self.lock = None;
        Ok(())
    }

    /// Saves memory and devices into `state`; the guest is stopped. On
    /// failure the guest continues.
    async fn save_memory(&mut self, state: &Path) -> Result<(), NodeError> {
        let saved = self
            .instance_mut()
            .vm
            .save(state, SavedMemory::Included)
            .await;
        if let Err(e) = saved {
            // The guest stays paused but alive; continue it and report.
            if let Err(resume) = self.instance_mut().vm.resume().await {
                tracing::warn!(sandbox = %self.id, "resuming after a failed save: {resume}");
            }
            remove_state(state);
            return Err(e.into());
        }
        Ok(())
    }

    /// Has the guest write what it holds back to the disk, then stops its
    /// vCPUs so that nothing changes the disk after. On failure the guest
    /// continues.
    async fn settle_disk(&mut self) -> Result<(), NodeError> {
        let code = self.agent().run("sync", &[]).await?;
        if code != 0 {
            return Err(NodeError::Guest(format!(
                "`sync` in the guest exited with {code}; the sandbox was not paused"
            )));
        }
        self.instance_mut().vm.pause().await?;
        Ok(())
    }

    /// Restores a paused sandbox into a fresh slot, or after a
    /// filesystem-only pause boots it from its disk. Call
    /// [`Sandbox::wait_ready`] next: its `/init` resets the guest clock
    /// (and after a boot restores the template's defaults). On failure the
    /// sandbox stays paused.
    pub async fn resume(node: &Node, id: &str) -> Result<Self, NodeError> {
        let mut paused = node.paused(id)?;
        node.host.check(&paused.origin.host, "the paused sandbox")?;
        paused.origin.kernel_path = node.local_kernel(&paused.origin.kernel_path);
        let booted = if paused.filesystem_only {
            Some(node.template_of(&paused.origin.snapshot)?)
        } else {
            None
        };
        let mut sandbox = Self::claim(node, id.to_owned(), paused.origin, paused.egress)?;
        sandbox.volumes = paused.volumes;
        let state = sandbox.dir.join(PAUSED_STATE);
        let machine = sandbox.machine(Memory::Anonymous);
        let launch = match &booted {
            Some(template) => Launch::Boot {
                kernel_args: node.kernel_args(&template.init_path, id),
            },
            None => Launch::Restore {
                state: state.clone(),
                saved: SavedMemory::Included,
            },
        };
        sandbox.booted = booted.map(|template| template.run);
        let launched = Instance::launch(
            node,
            &sandbox.dir,
            &machine,
            &launch,
            &sandbox.egress,
            sandbox.lock.as_ref(),
        )
        .await;
        match launched {
            Ok(instance) => sandbox.instance = Some(instance),
            Err(e) => {
                // Keep the directory: the sandbox is still paused.
                let _ = std::fs::remove_file(&sandbox.lock_path);
                sandbox.lock = None;
                return Err(e);
            }
        }
        let [state, memory] = hearth_vmm::state_files(&state);
        for done in [sandbox.dir.join(PAUSED), state, memory] {
            match std::fs::remove_file(&done) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(NodeError::io(&done)(e));
                }
                _ => {}
            }
        }
        sandbox.record_vm()?;
        Ok(sandbox)
    }

    /// `count` new sandboxes, each a copy of this one as it is now: memory,
    /// processes and disk. This sandbox is paused while its state is saved
    /// and its disk copied, then continues. Each copy succeeds or fails on
    /// its own (a slot, memory, its files); a failed one leaves nothing
    /// behind. Fails as a whole only if the state cannot be saved or this
    /// sandbox cannot continue. Call [`Sandbox::wait_ready`] on each copy.
    pub async fn fork(
        &mut self,
        node: &Node,
        count: usize,
    ) -> Result<Vec<Result<Self, NodeError>>, NodeError> {
        self.refuse_with_volumes("forked")?;
        let state = self.dir.join("fork.state");
        let forked = self.fork_from(node, count, &state).await;
        remove_state(&state);
        forked
    }

    async fn fork_from(
        &mut self,
        node: &Node,
        count: usize,
        state: &Path,
    ) -> Result<Vec<Result<Self, NodeError>>, NodeError> {
        self.save_memory(state).await?;
        let mut copies = Vec::with_capacity(count);
        for _ in 0..count {
            copies.push(self.copy_files(node).await);
        }
        // The parent continues whatever happened to its copies.
        if let Err(e) = self.instance_mut().vm.resume().await {
            for mut copy in copies.into_iter().flatten() {
                copy.discard().await;
            }
            return Err(e.into());
        }
        let mut started = Vec::with_capacity(count);
        for copy in copies {
            started.push(match copy {
                Ok(copy) => copy.restore_fork(node, state).await,
                Err(e) => Err(e),
            });
        }
        Ok(started)
    }

    /// A new sandbox with this one's origin, egress policy (not its
    /// published ports: a host port leads to one sandbox) and a copy of
    /// its disk, not started.
    async fn copy_files(&self, node: &Node) -> Result<Self, NodeError> {
        let id = id::new_sandbox_id().map_err(NodeError::io("/dev/urandom"))?;
        let mut copy = Self::claim(node, id, self.origin.clone(), self.egress.without_publish())?;
        let copied = match copy.create_dir() {
            Ok(()) => {
                let (from, to) = (self.disk().path, copy.disk().path);
                tokio::task::spawn_blocking(move || {
                    std::fs::copy(&from, &to)
                        .map(drop)
                        .map_err(NodeError::io(&to))
                })
                .await
                .expect("copying a disk does not panic")
            }
            Err(e) => Err(e),
        };
        match copied {
            Ok(()) => Ok(copy),
            Err(e) => {
                copy.discard().await;
                Err(e)
            }
        }
    }

    /// Starts a copy made by [`Sandbox::copy_files`] from the saved state;
    /// on failure it is removed.
    async fn restore_fork(mut self, node: &Node, state: &Path) -> Result<Self, NodeError> {
        let machine = self.machine(Memory::Anonymous);
        let launch = Launch::Restore {
            state: state.to_owned(),
            saved: SavedMemory::Included,
        };
        let launched = Instance::launch(
            node,
            &self.dir,
            &machine,
            &launch,
            &self.egress,
            self.lock.as_ref(),
        )
        .await;
        let started = launched.and_then(|instance| {
            self.instance = Some(instance);
            self.record_vm()
        });
        match started {
            Ok(()) => Ok(self),
            Err(e) => {
                self.discard().await;
                Err(e)
            }
        }
    }

    /// Stops whatever runs and removes the directory (after a failed start).
    async fn discard(&mut self) {
        if let Some(instance) = self.instance.take()
            && let Err(e) = instance.release().await
        {
            tracing::warn!(sandbox = %self.id, "clean-up after a failed start: {e}");
        }
        if let Err(e) = self.remove_dir() {
            tracing::warn!(sandbox = %self.id, "clean-up after a failed start: {e}");
        }
    }

    fn remove_dir(&mut self) -> Result<(), NodeError> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(NodeError::io(&self.dir)(e)),
        }
        if let Some(lock) = self.lock.take() {
            let _ = std::fs::remove_file(&self.lock_path);
            drop(lock);
        }
        Ok(())
    }
}

impl Drop for Sandbox {
    /// Backstop for a sandbox dropped without [`Sandbox::destroy`] (a panic,
    /// an early return): kill the VMM, release the slot, remove the files.
    fn drop(&mut self) {
        let Some(lock) = self.lock.take() else {
            return;
        };
        let instance = self.instance.take();
        let (id, dir, lock_path) = (self.id.clone(), self.dir.clone(), self.lock_path.clone());
        // It waits for the VMM to end: off the async threads.
        crate::instance::off_runtime(move || {
            if let Some(instance) = instance {
                // Dropping the instance kills the VMM and releases the
                // slot; make sure the VMM is gone before its files are
                // removed.
                drop(instance);
                kill_leftover_vmm(&dir);
            }
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(sandbox = %id, "clean-up on drop: {e}"),
            }
            let _ = std::fs::remove_file(&lock_path);
            drop(lock);
        });
    }
}

impl Node {
    /// Ids of the sandboxes paused on this node.
    pub fn paused_sandboxes(&self) -> Result<Vec<String>, NodeError> {
        let dir = self.layout.sandboxes();
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(NodeError::io(&dir))? {
            let entry = entry.map_err(NodeError::io(&dir))?;
            if entry.path().join(PAUSED).is_file() {
                ids.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// What the pause of sandbox `id` kept.
    pub fn paused_mode(&self, id: &str) -> Result<PauseMode, NodeError> {
        Ok(if self.paused(id)?.filesystem_only {
            PauseMode::Filesystem
        } else {
            PauseMode::Full
        })
    }

    /// Deletes a paused sandbox.
    pub fn delete_paused(&self, id: &str) -> Result<(), NodeError> {
        let paused = self.paused(id)?;
        let mut sandbox = Sandbox::claim(self, id.to_owned(), paused.origin, paused.egress)?;
        sandbox.remove_dir()
    }

    fn paused(&self, id: &str) -> Result<Paused, NodeError> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(NodeError::NotPaused(id.to_owned()));
        }
        let path = self.layout.sandboxes().join(id).join(PAUSED);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(NodeError::NotPaused(id.to_owned()));
            }
            Err(e) => return Err(NodeError::io(&path)(e)),
        };
        serde_json::from_slice(&text).map_err(|e| NodeError::Corrupt {
            path,
            reason: e.to_string(),
        })
    }
}

/// `path` as JSON; `None` if it does not exist.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, NodeError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(NodeError::io(path)(e)),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| NodeError::Corrupt {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

/// Whether a sandbox directory has a `vm.json`: its VMM outlives whoever
/// started it.
pub(crate) fn has_vm_record(dir: &Path) -> bool {
    dir.join(VM_RECORD).is_file()
}

/// Whether a sandbox directory holds a paused sandbox.
pub(crate) fn is_paused(dir: &Path) -> bool {
    dir.join(PAUSED).is_file()
}

/// The template snapshot directories that sandbox directories under
/// `sandboxes` (running, pooled or paused) were restored from.
pub(crate) fn snapshots_in_use(sandboxes: &Path) -> Result<Vec<PathBuf>, NodeError> {
    let mut used = Vec::new();
    let entries = match std::fs::read_dir(sandboxes) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(used),
        Err(e) => return Err(NodeError::io(sandboxes)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(NodeError::io(sandboxes))?;
        let path = entry.path().join(ORIGIN);
        match std::fs::read(&path) {
            Ok(text) => {
                let origin: Origin =
                    serde_json::from_slice(&text).map_err(|e| NodeError::Corrupt {
                        path,
                        reason: e.to_string(),
                    })?;
                used.push(origin.snapshot);
            }
            // A directory still being created may lack it for a moment.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(NodeError::io(&path)(e)),
        }
    }
    Ok(used)
}

/// Removes the files of a saved state at `state` ([`hearth_vmm::state_files`]),
/// those that exist.
pub(crate) fn remove_state(state: &Path) {
    for file in hearth_vmm::state_files(state) {
        let _ = std::fs::remove_file(file);
    }
}
