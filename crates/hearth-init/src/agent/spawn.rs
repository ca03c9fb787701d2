//! Turning a `ProcessConfig` into a running child: environment, executable
//! lookup, working directory, user switch, pipes.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::fcntl::{OFlag, open};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::stat::Mode;
use tokio::io::unix::AsyncFd;

use crate::passwd::{PasswdError, User};

pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub(crate) enum SpawnError {
    #[error("Executable '{0}' not found in PATH")]
    NotFound(String),
    #[error("Working directory '{}' is not a directory", .0.display())]
    Cwd(PathBuf),
    #[error(transparent)]
    User(#[from] PasswdError),
    #[error("Cannot run as '{0}': the agent itself does not run as root")]
    NotRoot(String),
    #[error("Working directory contains a NUL byte")]
    Nul,
    #[error("Cannot allocate a pseudo-terminal")]
    Pty(#[source] io::Error),
    #[error("Cannot start '{cmd}'")]
    Spawn { cmd: String, source: io::Error },
}

/// The environment of a new process: login basics, then the defaults from
/// `POST /init`, then the request's own variables (later wins).
pub(crate) fn build_env(
    user: &User,
    defaults: &HashMap<String, String>,
    request: &HashMap<String, String>,
) -> BTreeMap<String, String> {
    let shell = if user.shell.is_empty() {
        "/bin/sh"
    } else {
        &user.shell
    };
    let mut env = BTreeMap::from([
        ("PATH".to_owned(), DEFAULT_PATH.to_owned()),
        ("HOME".to_owned(), user.home.to_string_lossy().into_owned()),
        ("USER".to_owned(), user.name.clone()),
        ("LOGNAME".to_owned(), user.name.clone()),
        ("SHELL".to_owned(), shell.to_owned()),
    ]);
    env.extend(defaults.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(request.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// Finds `cmd` like `execvp` would: names with a slash are taken as paths
/// (relative ones from `cwd`), other names are searched in `path`.
pub(crate) fn resolve_executable(cmd: &str, path: &str, cwd: &Path) -> Option<PathBuf> {
    if cmd.is_empty() {
        return None;
    }
    if cmd.contains('/') {
        let candidate = cwd.join(cmd);
        return is_executable(&candidate).then_some(candidate);
    }
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(cmd))
        .find(|candidate| is_executable(candidate))
}

/// The SDKs run every command with `/bin/bash -l -c`. In an image without
/// bash (busybox, alpine) `/bin/sh` stands in: it takes the same `-l -c`.
pub(crate) fn shell_stand_in(cmd: &str) -> Option<PathBuf> {
    let sh = Path::new("/bin/sh");
    (cmd == "/bin/bash" && is_executable(sh)).then(|| sh.to_owned())
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The working directory: the request's (relative to home), else the
/// `/init` default, else home, else `/` (e.g. for `nobody`).
pub(crate) fn resolve_cwd(
    requested: Option<&str>,
    default_workdir: Option<&Path>,
    home: &Path,
) -> Result<PathBuf, SpawnError> {
    if let Some(dir) = requested.filter(|d| !d.is_empty()) {
        let dir = home.join(dir);
        return if dir.is_dir() {
            Ok(dir)
        } else {
            Err(SpawnError::Cwd(dir))
        };
    }
    Ok([default_workdir, Some(home)]
        .into_iter()
        .flatten()
        .find(|d| d.is_dir())
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf))
}

/// Everything the child does between fork and exec, prepared beforehand so
/// that nothing is allocated after the fork.
#[derive(Debug)]
struct ChildSetup {
    /// (uid, gid, groups) to switch to; `None` keeps the agent's user.
    identity: Option<(libc::uid_t, libc::gid_t, Vec<libc::gid_t>)>,
    cwd: CString,
    /// Make stdin (a terminal) the controlling terminal of the new session.
    controlling_tty: bool,
}

/// A fully resolved process to start.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) cmd: String,
    pub(crate) exe: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) cwd: PathBuf,
    pub(crate) stdin: bool,
}

/// Builds the command for `plan`, run as `user`. `agent_uid` is the agent's
/// effective uid: only root may switch users. With `terminal` (a pty
/// slave), the child's stdin, stdout and stderr are that terminal, and it
/// becomes the controlling terminal of the child's session.
pub(crate) fn command(
    plan: &Plan,
    user: &User,
    agent_uid: u32,
    terminal: Option<&OwnedFd>,
) -> Result<Command, SpawnError> {
    let identity = if agent_uid == 0 {
        Some((user.uid, user.gid, user.groups.clone()))
    } else if user.uid == agent_uid {
        None
    } else {
        return Err(SpawnError::NotRoot(user.name.clone()));
    };
    let setup = ChildSetup {
        identity,
        cwd: CString::new(plan.cwd.as_os_str().as_bytes()).map_err(|_| SpawnError::Nul)?,
        controlling_tty: terminal.is_some(),
    };
    let mut command = Command::new(&plan.exe);
    command
        .arg0(&plan.cmd)
        .args(&plan.args)
        .env_clear()
        .envs(&plan.env);
    if let Some(slave) = terminal {
        let dup = || slave.try_clone().map(Stdio::from).map_err(SpawnError::Pty);
        command.stdin(dup()?).stdout(dup()?).stderr(dup()?);
    } else {
        command
            .stdin(if plan.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    }
    // SAFETY: `enter_child` only makes async-signal-safe system calls on data
    // owned by the closure, so it is sound between fork and exec.
    unsafe {
        command.pre_exec(move || enter_child(&setup));
    }
    Ok(command)
}

/// In the forked child: new session, the user's groups and ids, then the
/// working directory (after the switch, so the user's permissions apply).
fn enter_child(setup: &ChildSetup) -> io::Result<()> {
    // SAFETY: setsid takes no arguments and only changes this process.
    if unsafe { libc::setsid() } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd 0 is the pty slave (std has set up stdio before this
    // hook); TIOCSCTTY takes an int argument.
    if setup.controlling_tty && unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if let Some((uid, gid, groups)) = &setup.identity {
        // SAFETY: the pointer and length describe a live slice of gid_t.
        if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: plain integer arguments.
        if unsafe { libc::setgid(*gid) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: plain integer arguments.
        if unsafe { libc::setuid(*uid) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: `cwd` is a valid NUL-terminated string owned by `setup`.
    if unsafe { libc::chdir(setup.cwd.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens a pseudo-terminal pair of `cols` x `rows`: (master, slave).
/// Both ends are close-on-exec from the start, so no process spawned
/// meanwhile by another request inherits them (which would keep the
/// terminal open after its own process ends); the master is non-blocking.
pub(crate) fn open_pty(cols: u16, rows: u16) -> Result<(PtyMaster, OwnedFd), SpawnError> {
    let open = || -> io::Result<(PtyMaster, OwnedFd)> {
        let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        let master = posix_openpt(flags)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let slave_path = ptsname_r(&master)?;
        let slave = open(
            slave_path.as_str(),
            OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        // SAFETY: the OwnedFd moves into the AsyncFd, which keeps it open
        // and unchanged until the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register(OwnedFd::from(master)) }
            .map_err(|e| io::Error::other(e.to_string()))?;
        let master = PtyMaster { fd };
        master.resize(cols, rows)?;
        Ok((master, slave))
    };
    open().map_err(SpawnError::Pty)
}

/// The agent's end of a pseudo-terminal, read and written asynchronously.
#[derive(Debug)]
pub(crate) struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

impl PtyMaster {
    /// Reads output; 0 once no process holds the terminal open any more
    /// (Linux reports that as EIO).
    pub(crate) async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(io::Error::from)) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` as terminal input.
    pub(crate) async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Sets the terminal size; the foreground process group gets SIGWINCH.
    pub(crate) fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: the fd is an open pty master and `size` a live winsize,
        // which is what TIOCSWINSZ reads.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn user(home: &Path) -> User {
        User {
            name: "alice".into(),
            uid: 1000,
            gid: 1000,
            home: home.to_owned(),
            shell: String::new(),
            groups: vec![1000],
        }
    }

    #[test]
    fn sh_stands_in_for_bash_only() {
        let sh = Path::new("/bin/sh");
        let expected = is_executable(sh).then(|| sh.to_owned());
        assert_eq!(shell_stand_in("/bin/bash"), expected);
        assert_eq!(shell_stand_in("/bin/zsh"), None);
        assert_eq!(shell_stand_in("bash"), None);
    }

    #[test]
    fn env_layers_override_in_order() {
        let defaults = HashMap::from([("A".into(), "init".into()), ("B".into(), "init".into())]);
        let request = HashMap::from([("B".into(), "req".into()), ("PATH".into(), "/x".into())]);
        let env = build_env(&user(Path::new("/home/alice")), &defaults, &request);
        assert_eq!(env["HOME"], "/home/alice");
        assert_eq!(env["USER"], "alice");
        assert_eq!(env["LOGNAME"], "alice");
        assert_eq!(env["SHELL"], "/bin/sh");
        assert_eq!(env["A"], "init");
        assert_eq!(env["B"], "req");
        assert_eq!(env["PATH"], "/x");
        let plain = build_env(&user(Path::new("/h")), &HashMap::new(), &HashMap::new());
        assert_eq!(plain["PATH"], DEFAULT_PATH);
        assert_eq!(plain.len(), 5);
    }

    #[test]
    fn resolves_executables_on_path() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        fs::write(a.join("tool"), "").unwrap(); // not executable
        fs::write(b.join("tool"), "").unwrap();
        fs::set_permissions(b.join("tool"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir(a.join("dir")).unwrap();
        let path = format!("{}::{}", a.display(), b.display());
        assert_eq!(
            resolve_executable("tool", &path, Path::new("/")),
            Some(b.join("tool"))
        );
        assert_eq!(resolve_executable("dir", &path, Path::new("/")), None);
        assert_eq!(resolve_executable("missing", &path, Path::new("/")), None);
        assert_eq!(resolve_executable("", &path, Path::new("/")), None);
        assert_eq!(
            resolve_executable("b/tool", "", dir.path()),
            Some(dir.path().join("b/tool"))
        );
        assert_eq!(resolve_executable("a/tool", "", dir.path()), None);
        let abs = b.join("tool");
        assert_eq!(
            resolve_executable(abs.to_str().unwrap(), "", Path::new("/")),
            Some(abs.clone())
        );
    }

    #[test]
    fn cwd_falls_back_from_request_to_home_to_root() {
        let home = tempfile::tempdir().unwrap();
        fs::create_dir(home.path().join("work")).unwrap();
        let h = home.path();
        assert_eq!(resolve_cwd(Some("work"), None, h).unwrap(), h.join("work"));
        assert_eq!(
            resolve_cwd(Some("/tmp"), None, h).unwrap(),
            Path::new("/tmp")
        );
        assert!(
            matches!(resolve_cwd(Some("nope"), None, h), Err(SpawnError::Cwd(p)) if p == h.join("nope"))
        );
        assert_eq!(
            resolve_cwd(None, Some(Path::new("/tmp")), h).unwrap(),
            Path::new("/tmp")
        );
        assert_eq!(resolve_cwd(None, Some(&h.join("gone")), h).unwrap(), h);
        assert_eq!(
            resolve_cwd(Some(""), None, Path::new("/nonexistent")).unwrap(),
            Path::new("/")
        );
    }

    #[test]
    fn only_root_switches_users() {
        let plan = Plan {
            cmd: "true".into(),
            exe: "/bin/true".into(),
            args: vec![],
            env: BTreeMap::new(),
            cwd: "/".into(),
            stdin: false,
        };
        let alice = user(Path::new("/"));
        assert!(command(&plan, &alice, 0, None).is_ok());
        assert!(command(&plan, &alice, 1000, None).is_ok());
        assert!(
            matches!(command(&plan, &alice, 1001, None), Err(SpawnError::NotRoot(n)) if n == "alice")
        );
    }

    fn winsize(fd: &OwnedFd) -> (u16, u16) {
        let mut size = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: a terminal fd and a live winsize for TIOCGWINSZ to fill.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
        assert_eq!(rc, 0);
        (size.ws_col, size.ws_row)
    }

    #[tokio::test]
    async fn pty_pair_is_close_on_exec_sized_and_connected() {
        use nix::fcntl::{FcntlArg, FdFlag, fcntl};
        let (master, slave) = open_pty(100, 40).unwrap();
        for fd in [master.fd.get_ref(), &slave] {
            let flags = FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD).unwrap());
            assert!(flags.contains(FdFlag::FD_CLOEXEC));
        }
        assert_eq!(winsize(&slave), (100, 40));
        master.resize(20, 10).unwrap();
        assert_eq!(winsize(&slave), (20, 10));
        nix::unistd::write(&slave, b"hi\n").unwrap();
        let mut buf = [0u8; 16];
        let n = master.read(&mut buf).await.unwrap();
        // The terminal's default output processing turns \n into \r\n.
        assert_eq!(&buf[..n], b"hi\r\n");
        drop(slave);
        assert_eq!(master.read(&mut buf).await.unwrap(), 0);
    }
}
