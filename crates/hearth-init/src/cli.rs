//! What the binary was asked to do, from argv.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use hearth_proto::agent::AGENT_PORT;
use nix::sys::signal::Signal;

use crate::unpack::UnpackArgs;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Invocation {
    /// PID 1 of a guest.
    Init,
    /// Only the agent, as an ordinary process (tests, development).
    Agent { listen: SocketAddr },
    /// Invoked as `reboot`, `poweroff` or `halt`: ask PID 1 with this signal.
    RequestShutdown(Signal),
    /// `unpack --dest DIR [--owner USER[:GROUP]] [--file TAR]`: a template
    /// build's `COPY`, inside the build VM.
    Unpack(UnpackArgs),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UsageError {
    #[error(
        "Usage: hearth-init runs as PID 1 of a guest; `hearth-init agent [--listen ADDR:PORT]` \
         runs only the agent; `hearth-init unpack --dest DIR [--owner USER[:GROUP]] [--file TAR]` \
         unpacks a build's files"
    )]
    Usage,
    #[error("Invalid --listen address '{0}': expected ADDR:PORT, like 127.0.0.1:49983")]
    Listen(String),
}

/// Decides from argv (argv[0] included) and whether we are PID 1. As PID 1
/// the arguments are the kernel's leftovers and are ignored.
pub(crate) fn parse(args: &[String], is_pid1: bool) -> Result<Invocation, UsageError> {
    if is_pid1 {
        return Ok(Invocation::Init);
    }
    let name = args
        .first()
        .map(Path::new)
        .and_then(Path::file_name)
        .and_then(|n| n.to_str());
    // busybox init's convention: USR1 halts, USR2 powers off, TERM reboots.
    match name {
        Some("reboot") => return Ok(Invocation::RequestShutdown(Signal::SIGTERM)),
        Some("poweroff") => return Ok(Invocation::RequestShutdown(Signal::SIGUSR2)),
        Some("halt") => return Ok(Invocation::RequestShutdown(Signal::SIGUSR1)),
        _ => {}
    }
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    if let ["unpack", flags @ ..] = rest.as_slice() {
        return parse_unpack(flags).map(Invocation::Unpack);
    }
    let listen = match rest.as_slice() {
        ["agent"] => {
            return Ok(Invocation::Agent {
                listen: (Ipv4Addr::UNSPECIFIED, AGENT_PORT).into(),
            });
        }
        ["agent", "--listen", addr] => *addr,
        ["agent", flag] => flag.strip_prefix("--listen=").ok_or(UsageError::Usage)?,
        _ => return Err(UsageError::Usage),
    };
    let listen = listen
        .parse()
        .map_err(|_| UsageError::Listen(listen.to_owned()))?;
    Ok(Invocation::Agent { listen })
}

fn parse_unpack(flags: &[&str]) -> Result<UnpackArgs, UsageError> {
    let (mut dest, mut owner, mut file) = (None, None, None);
    let mut flags = flags.iter();
    while let Some(flag) = flags.next() {
        let value = flags.next().ok_or(UsageError::Usage)?;
        match *flag {
            "--dest" => dest = Some(value.into()),
            "--owner" => owner = Some((*value).to_owned()),
            "--file" => file = Some(value.into()),
            _ => return Err(UsageError::Usage),
        }
    }
    Ok(UnpackArgs {
        dest: dest.ok_or(UsageError::Usage)?,
        owner,
        file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn pid1_ignores_arguments() {
        assert_eq!(
            parse(&args(&["/sbin/init", "single"]), true),
            Ok(Invocation::Init)
        );
    }

    #[test]
    fn shutdown_commands_by_name() {
        let by = |name| parse(&args(&[name, "-f"]), false);
        assert_eq!(
            by("/usr/local/sbin/reboot"),
            Ok(Invocation::RequestShutdown(Signal::SIGTERM))
        );
        assert_eq!(
            by("poweroff"),
            Ok(Invocation::RequestShutdown(Signal::SIGUSR2))
        );
        assert_eq!(by("halt"), Ok(Invocation::RequestShutdown(Signal::SIGUSR1)));
    }

    #[test]
    fn agent_mode() {
        let default = parse(&args(&["hearth-init", "agent"]), false).unwrap();
        assert_eq!(
            default,
            Invocation::Agent {
                listen: "0.0.0.0:49983".parse().unwrap()
            }
        );
        let local = Invocation::Agent {
            listen: "127.0.0.1:0".parse().unwrap(),
        };
        assert_eq!(
            parse(&args(&["x", "agent", "--listen", "127.0.0.1:0"]), false),
            Ok(local.clone())
        );
        assert_eq!(
            parse(&args(&["x", "agent", "--listen=127.0.0.1:0"]), false),
            Ok(local)
        );
        assert_eq!(
            parse(&args(&["x", "agent", "--listen", "nope"]), false),
            Err(UsageError::Listen("nope".into()))
        );
        assert_eq!(parse(&args(&["x"]), false), Err(UsageError::Usage));
        assert_eq!(
            parse(
                &args(&["x", "unpack", "--dest", "/app", "--file", "/tmp/f.tar"]),
                false
            ),
            Ok(Invocation::Unpack(UnpackArgs {
                dest: "/app".into(),
                owner: None,
                file: Some("/tmp/f.tar".into()),
            }))
        );
        assert_eq!(
            parse(
                &args(&["x", "unpack", "--owner", "a:b", "--dest", "/"]),
                false
            ),
            Ok(Invocation::Unpack(UnpackArgs {
                dest: "/".into(),
                owner: Some("a:b".into()),
                file: None,
            }))
        );
        assert_eq!(
            parse(&args(&["x", "unpack", "--file", "f"]), false),
            Err(UsageError::Usage)
        );
        assert_eq!(
            parse(&args(&["x", "agent", "--verbose"]), false),
            Err(UsageError::Usage)
        );
    }
}
