//! Template snapshots: a template booted once until its agent answers, then
//! stopped and saved. Sandboxes restore from them instead of booting.
//!
//! A snapshot lives in `<template build>/snapshots/<key>/`:
//! - `memory`: guest RAM, written through a shared file mapping while the
//!   template ran; clones map it copy-on-write,
//! - `state`: device state (a QEMU migration stream without RAM),
//! - `disk.qcow2`: the root disk as the guest left it, an overlay of the
//!   template's `rootfs.ext4`, which stays untouched; clones overlay this,
//! - `snapshot.json`: what a restore needs the host to match.
//!
//! The key hashes everything the saved state depends on (kernel, VMM
//! version, accelerator, CPU model, vCPUs, memory size), so one template
//! build can hold snapshots for several machine shapes and hosts.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use hearth_image::Template;
use hearth_net::Egress;
use hearth_proto::agent::InitRequest;
use hearth_proto::process::{ProcessConfig, StartRequest};
use hearth_vmm::{Disk, DiskFormat, Memory, SavedMemory, Vm};

use crate::build::BuildLog;
use crate::instance::{Instance, Launch, Machine};
use crate::node::lock_wait;
use crate::{Node, NodeError, SandboxSpec};

const META: &str = "snapshot.json";
/// Version of how a snapshot is made (the guest kernel arguments, the
/// warm-up, the start command's tag, the VM's devices: 5 added the volume
/// slots); part of the key, so a new recipe takes new snapshots.
const RECIPE: &str = "5";

/// What a saved VM state depends on besides its own files. A state loads only
/// where all of it matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostProfile {
    /// The VMM driver, `qemu` or `firecracker`. Records from before there
    /// was a choice are QEMU's.
    #[serde(default = "qemu")]
    pub driver: String,
    /// The driver's version: `qemu-system-x86_64 --version` or
    /// `firecracker --version`, first line.
    pub vmm: String,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// The host TSC's frequency: a TCG guest's TSC is the host's, and the
    /// guest kernel is told its rate when the template boots.
    pub tsc_khz: u64,
    /// The guest CPU model: `max` under TCG; under KVM the host CPU's model
    /// name, since `-cpu host` exposes its features.
    pub cpu: String,
}

fn qemu() -> String {
    "qemu".to_owned()
}

impl HostProfile {
    /// The format of the root disks of VMs made here: Firecracker takes
    /// raw disks only.
    pub(crate) fn disk_format(&self) -> DiskFormat {
        match self.driver.as_str() {
            "firecracker" => DiskFormat::Raw,
            _ => DiskFormat::Qcow2,
        }
    }

    /// Fails with the first field where `saved` differs from this host.
    pub fn check(&self, saved: &HostProfile, what: &str) -> Result<(), NodeError> {
        let fields = [
            ("VMM driver", &saved.driver, &self.driver),
            ("VMM", &saved.vmm, &self.vmm),
            ("accelerator", &saved.accel, &self.accel),
            ("CPU model", &saved.cpu, &self.cpu),
            (
                "TSC frequency (kHz)",
                &saved.tsc_khz.to_string(),
                &self.tsc_khz.to_string(),
            ),
        ];
        for (field, saved_value, host_value) in fields {
            if saved_value != host_value {
                return Err(NodeError::Incompatible {
                    what: what.to_owned(),
                    field,
                    saved: saved_value.clone(),
                    host: host_value.clone(),
                });
            }
        }
        Ok(())
    }
}

/// The record of one snapshot (`snapshot.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub template: String,
    pub build_id: String,
    /// Key of the kernel the template booted.
    pub kernel: String,
    pub kernel_path: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub host: HostProfile,
    /// Unix seconds.
    pub created_at: u64,
    /// Milliseconds from VM start to the saved state.
    pub boot_ms: u64,
    /// The Linux signal that asks the template's start command to stop,
    /// when it has one (its `STOPSIGNAL`, else SIGTERM).
    #[serde(default)]
    pub stop_signal: Option<i32>,
}

/// A template snapshot on disk.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub dir: PathBuf,
    pub meta: SnapshotMeta,
}

impl Snapshot {
    pub fn memory(&self) -> PathBuf {
        self.dir.join("memory")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn disk(&self) -> Disk {
        crate::disk::in_dir(&self.dir, self.meta.host.disk_format())
    }

    pub(crate) fn load(dir: &Path) -> Result<Option<Self>, NodeError> {
        let path = dir.join(META);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(NodeError::io(&path)(e)),
        };
        let meta = serde_json::from_slice(&text).map_err(|e| NodeError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Some(Self {
            dir: dir.to_owned(),
            meta,
        }))
    }
}

/// The directory name of a snapshot of `template` booted with these inputs.
fn key(
    template: &Template,
    kernel: &str,
    vcpus: u32,
    memory_mib: u32,
    host: &HostProfile,
) -> String {
    let mut hash = Sha256::new();
    for part in [
        RECIPE,
        template.build_id.as_str(),
        kernel,
        &vcpus.to_string(),
        &memory_mib.to_string(),
        &host.driver,
        &host.vmm,
        &host.accel,
        &host.cpu,
        &host.tsc_khz.to_string(),
    ] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How long a template's ready command may keep failing when a snapshot is
/// taken outside a build (a new machine shape).
/// The tag of the template's start command among the guest's processes:
/// how the node finds it again in every sandbox restored from the snapshot.
pub(crate) const START_TAG: &str = "hearth-start";
/// What stops a start command whose template names no `STOPSIGNAL`.
const SIGTERM: i32 = 15;
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Between two tries of the ready command.
const READY_INTERVAL: Duration = Duration::from_millis(500);

impl Node {
    /// The snapshot of `template` for this machine shape and host, taken now
    /// (one boot, tens of seconds under TCG) if it does not exist yet.
    pub async fn snapshot(&self, spec: &SandboxSpec) -> Result<Snapshot, NodeError> {
        self.snapshot_with_ready(spec, READY_TIMEOUT, &crate::build::NoLog)
            .await
    }

    /// [`Node::snapshot`], giving the template's ready command up to
    /// `ready_timeout` and its start command's output to `log`.
    pub async fn snapshot_with_ready(
        &self,
        spec: &SandboxSpec,
        ready_timeout: Duration,
        log: &dyn BuildLog,
    ) -> Result<Snapshot, NodeError> {
        let root = spec.template.dir.join("snapshots");
        let key = key(
            &spec.template,
            &spec.kernel.key,
            spec.vcpus,
            spec.memory_mib,
            &self.host,
        );
        let dir = root.join(&key);
        if let Some(snapshot) = Snapshot::load(&dir)? {
            self.host
                .check(&snapshot.meta.host, "the template snapshot")?;
            return Ok(snapshot);
        }
        std::fs::create_dir_all(&root).map_err(NodeError::io(&root))?;
        // One builder per key; a waiter finds the finished snapshot.
        let lock_path = root.join(format!(".{key}.lock"));
        let _lock = {
            let lock_path = lock_path.clone();
            tokio::task::spawn_blocking(move || lock_wait(&lock_path))
                .await
                .expect("locking does not panic")?
        };
        if let Some(snapshot) = Snapshot::load(&dir)? {
            return Ok(snapshot);
        }
        let work = root.join(format!(".work-{key}"));
        if work.exists() {
            std::fs::remove_dir_all(&work).map_err(NodeError::io(&work))?;
        }
        std::fs::create_dir(&work).map_err(NodeError::io(&work))?;
        let taken = self.take_snapshot(&work, spec, ready_timeout, log).await;
        let meta = match taken {
            Ok(meta) => meta,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&work);
                return Err(e);
            }
        };
        finish(&work, &dir, &meta)?;
        let _ = std::fs::remove_file(&lock_path);
        tracing::info!(
            template = spec.template.name,
            key,
            boot_ms = meta.boot_ms,
            "template snapshot taken"
        );
        Ok(Snapshot { dir, meta })
    }

    async fn take_snapshot(
        &self,
        work: &Path,
        spec: &SandboxSpec,
        ready_timeout: Duration,
        log: &dyn BuildLog,
    ) -> Result<SnapshotMeta, NodeError> {
        let &SandboxSpec {
            ref template,
            ref kernel,
            vcpus,
            memory_mib,
            boot_timeout,
        } = spec;
        let started = Instant::now();
        let disk = self.template_disk(template, work).await?;
        let memory = work.join("memory");
        File::create(&memory)
            .and_then(|f| f.set_len(u64::from(memory_mib) << 20))
            .map_err(NodeError::io(&memory))?;
        let machine = Machine {
            kernel: kernel.vmlinux.clone(),
            disk,
            vcpus,
            memory_mib,
            memory: Memory::File {
                path: memory,
                shared: true,
            },
            sandbox: false,
            volumes: Vec::new(),
        };
        let launch = Launch::Boot {
            kernel_args: self.kernel_args(&template.init_path, &template.name),
        };
        let mut instance =
            Instance::launch(self, work, &machine, &launch, &Egress::open(), None).await?;
        let run = &template.run;
        let init = InitRequest {
            env_vars: (!run.config.env.is_empty())
                .then(|| run.config.env.iter().cloned().collect()),
            default_user: run.config.user.clone(),
            default_workdir: run.config.workdir.clone(),
            ..InitRequest::default()
        };
        let mut service = None;
        let saved = async {
            instance.wait_ready(boot_timeout, init).await?;
            if let Some(argv) = &run.start_cmd {
                service = Some(start_service(&instance, argv, log).await?);
            }
            if let Some(argv) = &run.ready_cmd {
                wait_until_ready(&instance, argv, ready_timeout, service.as_mut(), log).await?;
            }
            if let Some(service) = service.as_mut() {
                service.drain(log);
            }
            instance.warm_up().await;
            instance
                .vm
                .save(&work.join("state"), SavedMemory::InFile)
                .await?;
            Ok::<_, NodeError>(())
        }
        .await;
        let released = instance.release().await;
        if let Some(service) = service {
            service.task.abort();
        }
        saved?;
        released?;
        Ok(SnapshotMeta {
            template: template.name.clone(),
            build_id: template.build_id.clone(),
            kernel: kernel.key.clone(),
            kernel_path: kernel.vmlinux.clone(),
            vcpus,
            memory_mib,
            host: self.host.clone(),
            created_at: unix_now(),
            boot_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            stop_signal: run.start_cmd.as_ref().map(|_| {
                run.config
                    .stop_signal
                    .as_deref()
                    .and_then(hearth_image::signal_number)
                    .unwrap_or(SIGTERM)
            }),
        })
    }
}

/// A running sandbox's machine, as a snapshot of it records.
pub(crate) struct SavedMachine {
    /// Key of the kernel it booted.
    pub(crate) kernel: String,
    pub(crate) kernel_path: PathBuf,
    pub(crate) vcpus: u32,
    pub(crate) memory_mib: u32,
    pub(crate) stop_signal: Option<i32>,
    /// The access token its agent holds, if any: cleared before the state
    /// is saved again, so that the sandboxes restored from it can be given
    /// theirs.
    pub(crate) agent_token: Option<String>,
}

/// How long the agent of a restored sandbox state has to answer.
const RESTORED_AGENT_TIMEOUT: Duration = Duration::from_secs(30);

impl Node {
    /// The snapshot of `template`, a build just made from a sandbox's disk,
    /// out of that sandbox's saved state `included` (a state with its
    /// memory in it, taken when the disk was copied): the state is loaded
    /// into a VM whose memory is a shared file and saved again beside it,
    /// which is how a template snapshot keeps its memory. Sandboxes of the
    /// template then restore it as they restore any template. `included`
    /// is moved into the work directory and removed.
    pub(crate) async fn snapshot_from_state(
        &self,
        template: &Template,
        machine: &SavedMachine,
        included: &Path,
    ) -> Result<Snapshot, NodeError> {
        let started = Instant::now();
        let root = template.dir.join("snapshots");
        let key = key(
            template,
            &machine.kernel,
            machine.vcpus,
            machine.memory_mib,
            &self.host,
        );
        let dir = root.join(&key);
        let work = root.join(format!(".work-{key}"));
        std::fs::create_dir_all(&work).map_err(NodeError::io(&work))?;
        let resaved = self.resave(&work, template, machine, included).await;
        let meta = SnapshotMeta {
            template: template.name.clone(),
            build_id: template.build_id.clone(),
            kernel: machine.kernel.clone(),
            kernel_path: machine.kernel_path.clone(),
            vcpus: machine.vcpus,
            memory_mib: machine.memory_mib,
            host: self.host.clone(),
            created_at: unix_now(),
            boot_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            stop_signal: machine.stop_signal,
        };
        let finished = resaved.and_then(|()| finish(&work, &dir, &meta));
        if let Err(e) = finished {
            let _ = std::fs::remove_dir_all(&work);
            return Err(e);
        }
        Ok(Snapshot { dir, meta })
    }

    /// The root disk of a VM that boots `template` in `work`: its
    /// `rootfs.ext4`, which stays untouched, as this node's VMs take disks.
    async fn template_disk(&self, template: &Template, work: &Path) -> Result<Disk, NodeError> {
        let base = Disk {
            path: template.rootfs.clone(),
            format: DiskFormat::Raw,
        };
        let (format, work) = (self.host.disk_format(), work.to_owned());
        tokio::task::spawn_blocking(move || crate::disk::derive(&base, format, &work))
            .await
            .expect("making a disk does not panic")
    }

    async fn resave(
        &self,
        work: &Path,
        template: &Template,
        saved: &SavedMachine,
        included: &Path,
    ) -> Result<(), NodeError> {
        use std::os::unix::fs::PermissionsExt;
        let state = work.join("included");
        for (from, to) in hearth_vmm::state_files(included)
            .into_iter()
            .zip(hearth_vmm::state_files(&state))
        {
            if from.exists() {
                std::fs::rename(&from, &to).map_err(NodeError::io(&to))?;
            }
        }
        let disk = self.template_disk(template, work).await?;
        let memory = work.join("memory");
        File::create(&memory)
            .and_then(|f| f.set_len(u64::from(saved.memory_mib) << 20))
            .map_err(NodeError::io(&memory))?;
        let machine = Machine {
            kernel: saved.kernel_path.clone(),
            disk: disk.clone(),
            vcpus: saved.vcpus,
            memory_mib: saved.memory_mib,
            memory: Memory::File {
                path: memory,
                shared: true,
            },
            sandbox: false,
            volumes: Vec::new(),
        };
        let launch = Launch::Restore {
            state: state.clone(),
            saved: SavedMemory::Included,
        };
        let mut instance =
            Instance::launch(self, work, &machine, &launch, &Egress::open(), None).await?;
        let resaved = async {
            if let Some(token) = &saved.agent_token {
                instance.wait_agent(RESTORED_AGENT_TIMEOUT).await?;
                let clear = InitRequest {
                    access_token: Some(String::new()),
                    ..InitRequest::default()
                };
                instance.agent.init_as(&clear, Some(token)).await?;
            }
            instance
                .vm
                .save(&work.join("state"), SavedMemory::InFile)
                .await?;
            Ok::<_, NodeError>(())
        }
        .await;
        let released = instance.release().await;
        resaved?;
        released?;
        crate::sandbox::remove_state(&state);
        // The restore gave the directory and the disk to the VMM's uid;
        // every sandbox's VMM reads them, as those of any template snapshot.
        for (path, mode) in [(work, 0o755), (disk.path.as_path(), 0o644)] {
            std::os::unix::fs::chown(path, Some(0), Some(0)).map_err(NodeError::io(path))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(NodeError::io(path))?;
        }
        Ok(())
    }
}

/// Records `meta` in `work`, drops what only the VMM that made it needed
/// and publishes it as `dir`.
fn finish(work: &Path, dir: &Path, meta: &SnapshotMeta) -> Result<(), NodeError> {
    write_json(&work.join(META), meta)?;
    for transient in ["qmp.sock", "vmm.pid"] {
        let _ = std::fs::remove_file(work.join(transient));
    }
    std::fs::rename(work, dir).map_err(NodeError::io(dir))
}

/// The template's start command, running in the guest, and its output.
struct Service {
    task: tokio::task::JoinHandle<()>,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Service {
    /// Passes what the service printed so far to `log`.
    fn drain(&mut self, log: &dyn BuildLog) {
        while let Ok(line) = self.lines.try_recv() {
            log.line(&line);
        }
    }
}

/// Starts the template's start command as a service of the guest, its
/// output (with a `start:` prefix) collected until the VM stops.
async fn start_service(
    instance: &Instance,
    argv: &[String],
    log: &dyn BuildLog,
) -> Result<Service, NodeError> {
    log.line(&format!("start command: {}", argv.join(" ")));
    let request = StartRequest {
        tag: Some(START_TAG.to_owned()),
        ..command_request(argv)
    };
    let mut stream = instance.agent.start(&request).await?;
    // Lines reach the log through a channel: the task outlives `log`'s borrow.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let task = tokio::spawn(async move {
        while let Ok(Some(event)) = stream.next().await {
            use hearth_proto::process::process_event::{Event, data_event::Output};
            match event.event {
                Some(Event::Data(data)) => {
                    if let Some(Output::Stdout(b) | Output::Stderr(b)) = data.output {
                        for line in String::from_utf8_lossy(&b).lines() {
                            let _ = tx.send(format!("start: {line}"));
                        }
                    }
                }
                Some(Event::End(end)) => {
                    let _ = tx.send(format!("start: exited with status {}", end.exit_code));
                    break;
                }
                _ => {}
            }
        }
    });
    Ok(Service { task, lines: rx })
}

/// Tries the ready command until it exits 0 or `timeout` passes.
async fn wait_until_ready(
    instance: &Instance,
    argv: &[String],
    timeout: Duration,
    mut service: Option<&mut Service>,
    log: &dyn BuildLog,
) -> Result<(), NodeError> {
    let started = Instant::now();
    let request = command_request(argv);
    log.line(&format!("ready command: {}", argv.join(" ")));
    loop {
        let mut tail = crate::build::Tail::default();
        let code = crate::build::stream_to_end(&instance.agent, &request, None, &mut |l| {
            tail.push(l);
        })
        .await?;
        if let Some(service) = service.as_deref_mut() {
            service.drain(log);
        }
        if code == 0 {
            log.line(&format!(
                "ready after {:.1} s",
                started.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(NodeError::NotReady {
                command: argv.join(" "),
                timeout,
                code,
                tail: tail.text(),
            });
        }
        tokio::time::sleep(READY_INTERVAL).await;
    }
}

pub(crate) fn command_request(argv: &[String]) -> StartRequest {
    StartRequest {
        process: Some(ProcessConfig {
            cmd: argv.first().cloned().unwrap_or_default(),
            args: argv.iter().skip(1).cloned().collect(),
            ..ProcessConfig::default()
        }),
        stdin: Some(false),
        ..StartRequest::default()
    }
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), NodeError> {
    let text = serde_json::to_vec_pretty(value).expect("plain data serializes");
    std::fs::write(path, text).map_err(NodeError::io(path))
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_image::Kernel;

    fn host() -> HostProfile {
        HostProfile {
            driver: "qemu".into(),
            vmm: "QEMU emulator version 7.2.22".into(),
            accel: "tcg".into(),
            cpu: "max".into(),
            tsc_khz: 2_445_402,
        }
    }

    #[test]
    fn a_different_vmm_or_accelerator_is_refused_by_name() {
        let here = host();
        assert!(here.check(&host(), "s").is_ok());
        let mut other = host();
        other.vmm = "QEMU emulator version 8.2.0".into();
        let err = here.check(&other, "the template snapshot").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("VMM"), "{text}");
        assert!(text.contains("8.2.0") && text.contains("7.2.22"), "{text}");
        // A snapshot made by the other driver names the drivers.
        let mut other = host();
        other.driver = "firecracker".into();
        other.vmm = "Firecracker v1.16.1".into();
        let text = here
            .check(&other, "the template snapshot")
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("VMM driver") && text.contains("firecracker") && text.contains("qemu"),
            "{text}"
        );
        // Records from before the choice are QEMU's.
        let old: HostProfile = serde_json::from_str(
            r#"{"vmm":"QEMU emulator version 7.2.22","accel":"tcg","tsc_khz":2445402,"cpu":"max"}"#,
        )
        .unwrap();
        assert_eq!(old, host());
        assert_eq!(old.disk_format(), DiskFormat::Qcow2);
        assert_eq!(other.disk_format(), DiskFormat::Raw);
        let mut other = host();
        other.accel = "kvm".into();
        assert!(
            here.check(&other, "s")
                .unwrap_err()
                .to_string()
                .contains("accelerator")
        );
    }

    #[test]
    fn the_key_changes_with_every_input() {
        let template = Template {
            name: "base".into(),
            build_id: "b1".into(),
            dir: "/t".into(),
            rootfs: "/t/rootfs.ext4".into(),
            init_path: "/usr/sbin/hearth-init".into(),
            created_at: 0,
            size: 0,
            source: String::new(),
            run: Default::default(),
            build_secs: 0,
        };
        let kernel = Kernel {
            key: "k1".into(),
            vmlinux: "/k/vmlinux".into(),
            source_version: "6.1".into(),
            built_at: 0,
            build_secs: 0,
            size: 0,
        };
        let base = key(&template, &kernel.key, 2, 512, &host());
        assert_eq!(base.len(), 16);
        assert_eq!(base, key(&template, &kernel.key, 2, 512, &host()));
        assert_ne!(base, key(&template, &kernel.key, 1, 512, &host()));
        assert_ne!(base, key(&template, &kernel.key, 2, 256, &host()));
        let mut other = host();
        other.accel = "kvm".into();
        assert_ne!(base, key(&template, &kernel.key, 2, 512, &other));
        let mut k2 = kernel.clone();
        k2.key = "k2".into();
        assert_ne!(base, key(&template, &k2.key, 2, 512, &host()));
    }
}
