use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use hearth_node::{
    AgentError, Layout, Node, NodeError, NodeOptions, ProcessStream, Sandbox, SandboxSpec,
};
use hearth_proto::agent::InitRequest;
use hearth_proto::connect::Code;
use hearth_proto::process::process_event::{Event, data_event::Output};
use hearth_proto::process::{ProcessConfig, StartRequest};
use hearth_vmm::{AccelChoice, VmmChoice};
use tokio::signal::unix::{SignalKind, signal};

use super::{CommandResult, Failure};

/// Exit codes of `sandbox run` when the command itself did not produce one,
/// following `docker run`: 125 the sandbox failed, 126 the command could not
/// be started, 127 the command was not found.
const EXIT_SANDBOX_FAILED: u8 = 125;
const EXIT_CANNOT_START: u8 = 126;
const EXIT_NOT_FOUND: u8 = 127;

#[derive(Subcommand)]
pub(crate) enum SandboxCommand {
    /// Boot a sandbox, run one command in it, stream its output, remove the sandbox.
    Run(RunArgs),
    /// Create a sandbox through a running `hearth server`; prints its id.
    Create(super::remote::CreateArgs),
    /// List the server's sandboxes.
    List(super::remote::ListArgs),
    /// Kill a sandbox.
    Kill(super::remote::IdArgs),
    /// Pause a sandbox (memory, processes and files are kept; with
    /// --filesystem only its files).
    Pause(super::remote::PauseArgs),
    /// Resume a paused sandbox.
    Resume(super::remote::ResumeArgs),
    /// Save a running sandbox as a template (memory, processes and files;
    /// with --filesystem-only its files); it goes on. Prints the
    /// template's id, which `create --template` takes.
    Snapshot(super::remote::SnapshotArgs),
    /// Print a sandbox's guest console log.
    Logs(super::remote::IdArgs),
    /// Print what a sandbox uses: in the guest, and its VMM on the host.
    Metrics(super::remote::IdArgs),
    /// Run a command in a server's sandbox, stream its output, exit with its code.
    Exec(super::remote::ExecArgs),
}

#[derive(Args)]
pub(crate) struct RunArgs {
    /// Template to boot.
    #[arg(long, default_value = "base")]
    template: String,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 2)]
    vcpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    memory: u32,
    /// Environment variable for the command (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_env)]
    envs: Vec<(String, String)>,
    /// Accelerator: auto (KVM when the CPU has vmx/svm, else TCG), kvm or tcg.
    #[arg(long, default_value = "auto")]
    accel: AccelChoice,
    /// VMM driver: auto (Firecracker where firecracker and jailer are on
    /// PATH and KVM runs guests, else QEMU), qemu or firecracker.
    #[arg(long, default_value = "auto", env = "HEARTH_VMM")]
    vmm: VmmChoice,
    /// Seconds to wait for the guest agent after the VM starts.
    #[arg(long, default_value_t = 60)]
    boot_timeout: u64,
    /// Working directory in the guest (default: the user's home).
    #[arg(long)]
    cwd: Option<String>,
    /// Mount a named volume (made by `hearth volume create`) at an absolute
    /// path of the guest (repeatable). A volume a server's sandbox mounts
    /// now is refused (its VMM holds the image's lock).
    #[arg(long = "volume", short = 'v', value_name = "NAME:/PATH", value_parser = super::remote::parse_volume)]
    volumes: Vec<(String, String)>,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    command: Vec<String>,
}

pub(crate) fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

pub(crate) fn run(cmd: SandboxCommand, layout: &Layout) -> CommandResult {
    match cmd {
        SandboxCommand::Run(args) => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(run_command(args, layout))
        }
        SandboxCommand::Create(args) => super::remote::create(args, layout),
        SandboxCommand::List(args) => super::remote::list(args, layout),
        SandboxCommand::Kill(args) => super::remote::kill(args, layout),
        SandboxCommand::Pause(args) => super::remote::pause(args, layout),
        SandboxCommand::Resume(args) => super::remote::resume(args, layout),
        SandboxCommand::Snapshot(args) => super::remote::snapshot(args, layout),
        SandboxCommand::Logs(args) => super::remote::logs(args, layout),
        SandboxCommand::Metrics(args) => super::remote::metrics(args, layout),
        SandboxCommand::Exec(args) => super::remote::exec(args, layout),
    }
}

/// How a `sandbox run` ended.
pub(crate) enum Outcome {
    Exited(u8),
    Interrupted(i32),
}

async fn run_command(args: RunArgs, layout: &Layout) -> CommandResult {
    let failed = |error: anyhow::Error| Failure {
        error,
        exit_code: ExitCode::from(EXIT_SANDBOX_FAILED),
    };
    // Signals are caught from the start so that none is lost while the
    // sandbox is being created; they are acted on once it can be cleaned up.
    let mut signals = Signals::new().map_err(|e| failed(e.into()))?;
    let node = Node::open(
        layout.clone(),
        &NodeOptions {
            accel: args.accel,
            vmm: args.vmm,
            ..NodeOptions::default()
        },
    )
    .map_err(|e| failed(e.into()))?;
    let kernel = node.kernel().map_err(|e| failed(e.into()))?;
    let template = match node.template(&args.template) {
        Ok(t) => t,
        Err(NodeError::NoTemplate(name)) if name == "base" => {
            eprintln!("hearth: template 'base' is missing; building it (first use only)");
            super::template::build(layout, &name, None).map_err(failed)?
        }
        Err(e) => return Err(failed(e.into())),
    };
    let spec = SandboxSpec {
        template,
        kernel,
        vcpus: args.vcpus,
        memory_mib: args.memory,
        boot_timeout: Duration::from_secs(args.boot_timeout),
    };
    // The first sandbox of a template (and machine shape) boots it once to
    // take its snapshot; every later one restores that snapshot.
    let mut sandbox = tokio::select! {
        created = Sandbox::create(&node, &spec) => created.map_err(|e| failed(e.into()))?,
        sig = signals.recv() => {
            eprintln!("hearth: interrupted; nothing was left behind");
            return Ok(ExitCode::from(u8::try_from(128 + sig).unwrap_or(EXIT_SANDBOX_FAILED)));
        }
    };
    tracing::info!(sandbox = sandbox.id(), "sandbox created");
    if let Err(e) = attach_volumes(&mut sandbox, &args.volumes, layout).await {
        let _ = sandbox.destroy().await;
        return Err(failed(e));
    }
    let outcome = drive(&mut sandbox, &args, &mut signals).await;
    let destroyed = sandbox.destroy().await;
    let outcome = outcome?;
    destroyed.map_err(|e| failed(e.into()))?;
    Ok(outcome.exit_code("the sandbox was removed"))
}

/// Attaches the named volumes `wanted` (`(name, path)`) to a new sandbox,
/// for its `/init` to mount.
async fn attach_volumes(
    sandbox: &mut Sandbox,
    wanted: &[(String, String)],
    layout: &Layout,
) -> anyhow::Result<()> {
    if wanted.is_empty() {
        return Ok(());
    }
    let mounts: Vec<hearth_server::store::VolumeMount> = wanted
        .iter()
        .map(|(name, path)| hearth_server::store::VolumeMount {
            name: name.clone(),
            path: path.clone(),
        })
        .collect();
    hearth_server::volumes::check_mounts(&mounts).map_err(|e| anyhow!(e.message))?;
    let mut attachments = Vec::new();
    for mount in mounts {
        let image = layout.volumes().join(&mount.name).join("volume.ext4");
        if !image.is_file() {
            anyhow::bail!(
                "--volume: no volume named {:?}; make it with `hearth volume create` (through a server)",
                mount.name
            );
        }
        attachments.push(hearth_node::VolumeAttachment {
            name: mount.name,
            image,
            path: mount.path,
        });
    }
    sandbox
        .attach_volumes(attachments)
        .await
        .map_err(|e| anyhow!("attaching the volumes: {e}"))
}

impl Outcome {
    /// The exit code for `hearth`: the command's, or 128 + the signal that
    /// interrupted `hearth` (saying what became of the sandbox).
    pub(crate) fn exit_code(self, after_interrupt: &str) -> ExitCode {
        match self {
            Outcome::Exited(code) => ExitCode::from(code),
            Outcome::Interrupted(signal) => {
                eprintln!("hearth: interrupted; {after_interrupt}");
                ExitCode::from(u8::try_from(128 + signal).unwrap_or(EXIT_SANDBOX_FAILED))
            }
        }
    }
}

/// The `StartRequest` of a command line, stdin closed.
pub(crate) fn start_request(
    command: &[String],
    envs: &[(String, String)],
    cwd: Option<String>,
) -> StartRequest {
    StartRequest {
        process: Some(ProcessConfig {
            cmd: command[0].clone(),
            args: command[1..].to_vec(),
            envs: envs.iter().cloned().collect::<HashMap<_, _>>(),
            cwd,
        }),
        stdin: Some(false),
        ..StartRequest::default()
    }
}

async fn drive(
    sandbox: &mut Sandbox,
    args: &RunArgs,
    signals: &mut Signals,
) -> Result<Outcome, Failure> {
    let failed = |error: anyhow::Error| Failure {
        error,
        exit_code: ExitCode::from(EXIT_SANDBOX_FAILED),
    };
    tokio::select! {
        ready = sandbox.wait_ready(Duration::from_secs(args.boot_timeout), InitRequest::default()) => {
            ready.map_err(|e| failed(e.into()))?;
        }
        sig = signals.recv() => return Ok(Outcome::Interrupted(sig)),
    }
    let request = start_request(&args.command, &args.envs, args.cwd.clone());
    let agent = sandbox.agent().clone();
    let console = sandbox.dir().join("console.log");
    let vm_exit = async {
        match sandbox.wait_exit().await {
            Ok(_) => vm_ended(&console),
            Err(e) => failed(e.into()),
        }
    };
    run_process(agent.start(&request), signals, vm_exit, || {
        vm_ended(&console)
    })
    .await
}

/// Awaits `start` (a started process's events) and copies the process's
/// output to this process's stdout and stderr until it ends, `vm_exit`
/// resolves (the VM went away) or a signal arrives. `truncated` describes a
/// stream cut off.
pub(crate) async fn run_process(
    start: impl Future<Output = Result<ProcessStream, AgentError>>,
    signals: &mut Signals,
    vm_exit: impl Future<Output = Failure>,
    truncated: impl Fn() -> Failure,
) -> Result<Outcome, Failure> {
    let failed = |error: anyhow::Error| Failure {
        error,
        exit_code: ExitCode::from(EXIT_SANDBOX_FAILED),
    };
    let mut stream = tokio::select! {
        stream = start => stream.map_err(start_failure)?,
        sig = signals.recv() => return Ok(Outcome::Interrupted(sig)),
    };
    let mut vm_exit = std::pin::pin!(vm_exit);
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr();
    let mut exit_code = None;
    loop {
        tokio::select! {
            event = stream.next() => match event {
                Ok(Some(event)) => match event.event {
                    Some(Event::Data(data)) => match data.output {
                        Some(Output::Stdout(bytes) | Output::Pty(bytes)) => {
                            stdout.write_all(&bytes).and_then(|()| stdout.flush())?;
                        }
                        Some(Output::Stderr(bytes)) => {
                            stderr.write_all(&bytes).and_then(|()| stderr.flush())?;
                        }
                        None => {}
                    },
                    Some(Event::End(end)) => {
                        if let Some(error) = &end.error {
                            return Err(failed(anyhow!("{error}; the command ended with {}", end.status)));
                        }
                        exit_code = Some(exit_code_of(&end));
                    }
                    Some(Event::Start(_) | Event::Keepalive(_)) | None => {}
                },
                Ok(None) => break,
                Err(AgentError::Truncated) => return Err(truncated()),
                Err(e) => return Err(start_failure(e)),
            },
            failure = &mut vm_exit => return Err(failure),
            sig = signals.recv() => return Ok(Outcome::Interrupted(sig)),
        }
    }
    match exit_code {
        Some(code) => Ok(Outcome::Exited(code)),
        None => Err(failed(anyhow!(
            "the guest agent ended the process stream without an exit status"
        ))),
    }
}

fn vm_ended(console: &std::path::Path) -> Failure {
    Failure {
        error: anyhow!(
            "the sandbox VM shut down before the command finished (guest reboot, power-off or \
             panic); last console line: {}",
            hearth_node::last_console_line(console)
        ),
        exit_code: ExitCode::from(EXIT_SANDBOX_FAILED),
    }
}

fn start_failure(error: AgentError) -> Failure {
    let exit_code = match &error {
        AgentError::Rpc(e) if e.code == Code::NotFound => EXIT_NOT_FOUND,
        AgentError::Rpc(e) if matches!(e.code, Code::InvalidArgument | Code::PermissionDenied) => {
            EXIT_CANNOT_START
        }
        _ => EXIT_SANDBOX_FAILED,
    };
    Failure {
        error: error.into(),
        exit_code: ExitCode::from(exit_code),
    }
}

/// The exit code a shell would report: the status for a normal exit, 128 +
/// the signal number for a process killed by a signal.
fn exit_code_of(end: &hearth_proto::process::process_event::EndEvent) -> u8 {
    if end.exited {
        return u8::try_from(end.exit_code.rem_euclid(256)).unwrap_or(EXIT_SANDBOX_FAILED);
    }
    let signal = match end.status.strip_prefix("signal: ") {
        Some("hangup") => 1,
        Some("interrupt") => 2,
        Some("quit") => 3,
        Some("aborted") => 6,
        Some("killed") => 9,
        Some("segmentation fault") => 11,
        Some("broken pipe") => 13,
        Some("terminated") => 15,
        _ => return EXIT_SANDBOX_FAILED,
    };
    128 + signal
}

/// SIGINT and SIGTERM, as one stream of signal numbers.
pub(crate) struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => libc::SIGINT,
            _ = self.term.recv() => libc::SIGTERM,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_proto::process::process_event::EndEvent;

    fn end(exit_code: i32, exited: bool, status: &str) -> EndEvent {
        EndEvent {
            exit_code,
            exited,
            status: status.to_owned(),
            error: None,
        }
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code_of(&end(0, true, "exit status 0")), 0);
        assert_eq!(exit_code_of(&end(7, true, "exit status 7")), 7);
        assert_eq!(exit_code_of(&end(-1, false, "signal: killed")), 137);
        assert_eq!(exit_code_of(&end(-1, false, "signal: terminated")), 143);
        assert_eq!(
            exit_code_of(&end(-1, false, "signal: unknown")),
            EXIT_SANDBOX_FAILED
        );
    }

    #[test]
    fn env_arguments() {
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(parse_env("A="), Ok(("A".into(), String::new())));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("novalue").is_err());
    }
}
