//! hearth-init: PID 1 of every Hearth guest and its envd-compatible agent.

mod agent;
mod cli;
mod clock;
mod cmdline;
mod entropy;
mod identity;
mod mounts;
mod net;
mod passwd;
mod pid1;
mod reaper;
mod standalone;
mod unpack;
mod volumes;

use std::error::Error;
use std::process::ExitCode;

use cli::Invocation;
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let invocation = match cli::parse(&args, std::process::id() == 1) {
        Ok(invocation) => invocation,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Invocation::RequestShutdown(signal) = invocation {
        return match kill(Pid::from_raw(1), signal) {
            Ok(()) => ExitCode::SUCCESS,
            Err(Errno::EPERM) => {
                let name = args
                    .first()
                    .map_or("reboot", |a| a.rsplit('/').next().unwrap_or(a));
                eprintln!("{name}: must be superuser (try: sudo {name})");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("Cannot signal init: {e}");
                ExitCode::FAILURE
            }
        };
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match invocation {
        Invocation::Init => pid1::run(),
        Invocation::Agent { listen } => match standalone::run(listen) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hearth-init: {}", error_chain(&e));
                ExitCode::FAILURE
            }
        },
        Invocation::Unpack(args) => match unpack::run(&args, std::path::Path::new("/etc")) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hearth-init unpack: {}", error_chain(&e));
                ExitCode::FAILURE
            }
        },
        Invocation::RequestShutdown(_) => unreachable!("handled above"),
    }
}

/// An error and its sources, joined with ": ".
pub(crate) fn error_chain(error: &dyn Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        message.push_str(": ");
        message.push_str(&e.to_string());
        source = e.source();
    }
    message
}
