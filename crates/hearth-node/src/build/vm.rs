//! One build step in a build VM: boot the disk so far under a new
//! copy-on-write layer, run the step through the guest agent, power the
//! guest off cleanly so the layer holds a consistent file system.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use hearth_image::{ImageFormat, Kernel, RunConfig, SourcedStep, Step};
use hearth_net::Egress;
use hearth_proto::agent::InitRequest;
use hearth_proto::process::process_event::Event;
use hearth_proto::process::{ProcessConfig, StartRequest};
use hearth_vmm::{Disk, DiskFormat, Memory, Vm};

use super::{BuildError, BuildLog};
use crate::instance::{Instance, Launch, Machine};
use crate::{Node, NodeError};

/// Where the guest init lives in every template.
const INIT: &str = "/usr/sbin/hearth-init";
/// How long a powered-off guest may take to end its VM.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of a failed step's output its error quotes.
const TAIL_LINES: usize = 15;
/// Where a `COPY` step's archive waits in the guest (a tmpfs).
const COPY_ARCHIVE: &str = "/tmp/.hearth-copy.tar";

/// The VM's shape and how long it may take to boot.
pub(crate) struct BuildMachine {
    pub(crate) kernel: Kernel,
    pub(crate) vcpus: u32,
    pub(crate) memory_mib: u32,
    pub(crate) boot_timeout: Duration,
}

/// The disk a layer goes over.
#[derive(Debug, Clone)]
pub(crate) struct Parent {
    pub(crate) path: PathBuf,
    pub(crate) format: ImageFormat,
}

/// Runs `sourced` with `state` over `parent`, leaving the result in
/// `work/disk.qcow2`.
pub(crate) async fn run_step(
    node: &Node,
    work: &Path,
    machine: &BuildMachine,
    parent: &Parent,
    sourced: &SourcedStep,
    state: &RunConfig,
    log: &dyn BuildLog,
) -> Result<(), BuildError> {
    let (step, origin) = (&sourced.step, sourced.origin.as_str());
    let disk = work.join("disk.qcow2");
    {
        let (backing, format, disk) = (parent.path.clone(), parent.format, disk.clone());
        tokio::task::spawn_blocking(move || hearth_image::create_overlay(&backing, format, &disk))
            .await
            .expect("creating an overlay does not panic")
            .map_err(NodeError::from)?;
    }
    let vm_machine = Machine {
        kernel: machine.kernel.vmlinux.clone(),
        disk: Disk {
            path: disk,
            format: DiskFormat::Qcow2,
        },
        vcpus: machine.vcpus,
        memory_mib: machine.memory_mib,
        memory: Memory::Anonymous,
        sandbox: false,
        volumes: Vec::new(),
    };
    let launch = Launch::Boot {
        kernel_args: node.kernel_args(INIT, "build"),
    };
    let vm_error = |e: NodeError| BuildError::Vm {
        origin: origin.to_owned(),
        source: e,
    };
    let mut instance = Instance::launch(node, work, &vm_machine, &launch, &Egress::open(), None)
        .await
        .map_err(vm_error)?;
    let ran = async {
        instance
            .wait_ready(machine.boot_timeout, InitRequest::default())
            .await
            .map_err(vm_error)?;
        execute(&instance, step, state, origin, log).await
    }
    .await;
    let ended = power_off(&mut instance).await;
    let released = instance.release().await;
    ran?;
    ended.map_err(vm_error)?;
    released.map_err(vm_error)
}

/// The step itself, through the agent.
async fn execute(
    instance: &Instance,
    step: &Step,
    state: &RunConfig,
    origin: &str,
    log: &dyn BuildLog,
) -> Result<(), BuildError> {
    let workdir = state.workdir.clone().unwrap_or_else(|| "/".to_owned());
    match step {
        Step::Run {
            command,
            user,
            build_args,
        } => {
            // Docker makes the WORKDIR when it is set; here, before use.
            if workdir != "/" {
                run_checked(
                    instance,
                    &unpack_argv(&workdir, None, None),
                    "root",
                    origin,
                    log,
                )
                .await?;
            }
            let argv = command.argv();
            let mut envs: HashMap<String, String> = build_args.iter().cloned().collect();
            envs.extend(state.env.iter().cloned());
            let request = start_request(&argv, envs, Some(&workdir));
            let user = user.as_deref().or(state.user.as_deref()).unwrap_or("root");
            run_process(instance, &request, user, origin, log, &command.to_string()).await
        }
        Step::Copy {
            context,
            sources,
            dest,
            owner,
            mode,
        } => {
            let archive = {
                let (context, sources, dest, mode) =
                    (context.clone(), sources.clone(), dest.clone(), *mode);
                tokio::task::spawn_blocking(move || copy_archive(&context, &sources, &dest, mode))
                    .await
                    .expect("packing files does not panic")
                    .map_err(|e| BuildError::Copy {
                        origin: origin.to_owned(),
                        message: e,
                    })?
            };
            log.line(&format!("sending {} bytes", archive.len()));
            instance
                .agent
                .upload(COPY_ARCHIVE, "root", archive)
                .await
                .map_err(|e| BuildError::Vm {
                    origin: origin.to_owned(),
                    source: e.into(),
                })?;
            let argv = unpack_argv("/", owner.as_deref(), Some(COPY_ARCHIVE));
            run_checked(instance, &argv, "root", origin, log).await
        }
        Step::Env(_) | Step::User(_) | Step::Workdir(_) => Ok(()),
    }
}

/// The tar of what a `COPY` reads, named by guest path.
fn copy_archive(
    context: &Path,
    sources: &[String],
    dest: &str,
    mode: Option<u32>,
) -> Result<Bytes, String> {
    let ignore = hearth_image::Ignore::load(context).map_err(|e| e.to_string())?;
    let entries =
        hearth_image::select(context, sources, dest, &ignore).map_err(|e| e.to_string())?;
    let mut tar = Vec::new();
    hearth_image::write_tar(&entries, mode, &mut tar).map_err(|e| e.to_string())?;
    Ok(Bytes::from(tar))
}

fn unpack_argv(dest: &str, owner: Option<&str>, file: Option<&str>) -> Vec<String> {
    let mut argv = vec![
        INIT.to_owned(),
        "unpack".into(),
        "--dest".into(),
        dest.to_owned(),
    ];
    if let Some(owner) = owner {
        argv.extend(["--owner".to_owned(), owner.to_owned()]);
    }
    if let Some(file) = file {
        argv.extend(["--file".to_owned(), file.to_owned()]);
    }
    argv
}

fn start_request(
    argv: &[String],
    envs: HashMap<String, String>,
    cwd: Option<&str>,
) -> StartRequest {
    StartRequest {
        process: Some(ProcessConfig {
            cmd: argv.first().cloned().unwrap_or_default(),
            args: argv.iter().skip(1).cloned().collect(),
            envs,
            cwd: cwd.map(str::to_owned),
        }),
        stdin: Some(false),
        ..StartRequest::default()
    }
}

async fn run_checked(
    instance: &Instance,
    argv: &[String],
    user: &str,
    origin: &str,
    log: &dyn BuildLog,
) -> Result<(), BuildError> {
    let request = start_request(argv, HashMap::new(), None);
    run_process(instance, &request, user, origin, log, &argv.join(" ")).await
}

/// Runs a process to its end, its output to `log`; a non-zero exit is
/// [`BuildError::StepFailed`] with the last lines.
pub(crate) async fn run_process(
    instance: &Instance,
    request: &StartRequest,
    user: &str,
    origin: &str,
    log: &dyn BuildLog,
    shown: &str,
) -> Result<(), BuildError> {
    let mut tail = Tail::default();
    let code = stream_to_end(&instance.agent, request, Some(user), &mut |line| {
        log.line(line);
        tail.push(line);
    })
    .await
    .map_err(|e| BuildError::Vm {
        origin: origin.to_owned(),
        source: e,
    })?;
    if code == 0 {
        return Ok(());
    }
    Err(BuildError::StepFailed {
        origin: origin.to_owned(),
        command: shown.to_owned(),
        code,
        tail: tail.text(),
    })
}

/// Starts a process and passes each output line to `line` until it ends;
/// its exit code.
pub(crate) async fn stream_to_end(
    agent: &crate::AgentClient,
    request: &StartRequest,
    user: Option<&str>,
    line: &mut (dyn FnMut(&str) + Send),
) -> Result<i32, NodeError> {
    let mut stream = agent.start_as(request, user).await?;
    let mut partial = [Vec::new(), Vec::new()];
    while let Some(event) = stream.next().await? {
        match event.event {
            Some(Event::Data(data)) => {
                use hearth_proto::process::process_event::data_event::Output;
                let (i, bytes) = match data.output {
                    Some(Output::Stdout(b)) => (0, b),
                    Some(Output::Stderr(b)) => (1, b),
                    _ => continue,
                };
                partial[i].extend_from_slice(&bytes);
                while let Some(n) = partial[i].iter().position(|&b| b == b'\n') {
                    let rest = partial[i].split_off(n + 1);
                    let text = String::from_utf8_lossy(&partial[i][..n]).into_owned();
                    partial[i] = rest;
                    line(text.trim_end_matches('\r'));
                }
            }
            Some(Event::End(end)) => {
                for rest in &partial {
                    if !rest.is_empty() {
                        line(&String::from_utf8_lossy(rest));
                    }
                }
                return Ok(end.exit_code);
            }
            _ => {}
        }
    }
    Err(crate::AgentError::Truncated.into())
}

/// The last lines seen.
#[derive(Default)]
pub(crate) struct Tail(VecDeque<String>);

impl Tail {
    pub(crate) fn push(&mut self, line: &str) {
        if self.0.len() == TAIL_LINES {
            self.0.pop_front();
        }
        self.0.push_back(line.to_owned());
    }

    pub(crate) fn text(&self) -> String {
        self.0.iter().map(|l| format!("\n  {l}")).collect()
    }
}

/// Asks the guest's init to power off (it stops every process, syncs and
/// remounts `/` read-only first) and waits for the VM to end.
async fn power_off(instance: &mut Instance) -> Result<(), NodeError> {
    // The agent dies with the guest, so this request may fail; the VM's
    // exit is what counts.
    let request = start_request(
        &["/usr/local/sbin/poweroff".to_owned()],
        HashMap::new(),
        None,
    );
    let _ = stream_to_end(&instance.agent, &request, Some("root"), &mut |_| {}).await;
    match tokio::time::timeout(POWEROFF_TIMEOUT, instance.vm.wait()).await {
        Ok(exit) => exit.map(drop).map_err(NodeError::from),
        Err(_) => Err(NodeError::AgentTimeout {
            timeout: POWEROFF_TIMEOUT,
            console: crate::last_console_line(instance.vm.console_log()),
        }),
    }
}
