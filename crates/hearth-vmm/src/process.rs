//! The VMM process: a child this process started, or one an earlier
//! process started and this one adopted, watched through a pidfd.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::process::Child;

use crate::{VmExit, VmmError};

#[derive(Debug)]
pub(crate) enum Process {
    /// Started here: reaped here, with its exit status.
    Child(Child),
    /// Started by an earlier process: its exit status goes to whichever
    /// process inherited it, so only its end is seen.
    Adopted(PidFd),
}

impl Process {
    /// Waits for the process to end. Cancel-safe.
    pub(crate) async fn wait(&mut self) -> io::Result<VmExit> {
        match self {
            Self::Child(child) => Ok(exit_of(child.wait().await?)),
            Self::Adopted(pidfd) => {
                pidfd.exited().await?;
                Ok(VmExit::Unknown)
            }
        }
    }

    /// How it ended, if it has: the exit status of a child, `"ended"` for
    /// an adopted process (its status went to its parent).
    pub(crate) fn try_wait(&mut self) -> io::Result<Option<String>> {
        match self {
            Self::Child(child) => Ok(child.try_wait()?.map(|status| status.to_string())),
            Self::Adopted(pidfd) => Ok(pidfd.has_exited().then(|| "ended".to_owned())),
        }
    }

    /// Sends SIGKILL; the process is reaped by [`Process::wait`].
    pub(crate) fn kill(&mut self) -> io::Result<()> {
        match self {
            Self::Child(child) => child.start_kill(),
            Self::Adopted(pidfd) => pidfd.signal(libc::SIGKILL),
        }
    }
}

/// The first `binary` on `PATH`; missing, an error that names the
/// `package` to install.
pub(crate) fn find_on_path(
    binary: &'static str,
    package: &'static str,
) -> Result<std::path::PathBuf, VmmError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|p| p.is_file())
        .ok_or(VmmError::BinaryMissing { binary, package })
}

/// The first line `binary --version` prints: the version a saved state
/// records, since states load only into the version that wrote them.
pub(crate) fn version_line(binary: &std::path::Path) -> Result<String, VmmError> {
    let out = std::process::Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| VmmError::Spawn {
            binary: binary.display().to_string(),
            source,
        })?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(|l| l.trim().to_owned())
        .filter(|l| out.status.success() && !l.is_empty())
        .ok_or_else(|| VmmError::Version(format!("{} --version printed nothing", binary.display())))
}

/// A VMM process as a driver's VM value owns it: how it ended, once it
/// has, and whether dropping the value kills it.
#[derive(Debug)]
pub(crate) struct VmmProcess {
    process: Process,
    pid: u32,
    exit: Option<VmExit>,
    /// Dropping it leaves the VMM running ([`VmmProcess::leave_running`]).
    left_running: bool,
}

impl Drop for VmmProcess {
    /// A VM dropped while its VMM may still run (a start or a restore whose
    /// future was dropped, an error between two steps) is killed: a VMM
    /// that outlives this process would otherwise be left with no owner.
    fn drop(&mut self) {
        if !self.left_running {
            self.start_kill();
        }
    }
}

impl VmmProcess {
    pub(crate) fn new(process: Process, pid: u32) -> Self {
        Self {
            process,
            pid,
            exit: None,
            left_running: false,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// How it ended, once that was seen.
    pub(crate) fn exit(&self) -> Option<VmExit> {
        self.exit
    }

    /// Sends the VMM SIGKILL, through its own handle (never a pid that may
    /// have been reused), unless it has ended; reaped by a later wait or
    /// by the runtime.
    pub(crate) fn start_kill(&mut self) {
        if self.exit.is_none() {
            let _ = self.process.kill();
        }
    }

    /// Lets the VMM outlive this value: dropping it no longer kills it
    /// (a server handing its sandboxes to the next one).
    pub(crate) fn leave_running(&mut self) {
        self.left_running = true;
    }

    /// See [`Process::try_wait`].
    pub(crate) fn try_wait(&mut self) -> io::Result<Option<String>> {
        self.process.try_wait()
    }

    /// Waits for the VMM to end and records how it ended. Cancel-safe.
    pub(crate) async fn reap(&mut self) -> Result<VmExit, VmmError> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        let exit = self
            .process
            .wait()
            .await
            .map_err(VmmError::io("the VMM process"))?;
        self.exit = Some(exit);
        Ok(exit)
    }

    /// [`VmmProcess::reap`] if the VMM ends within `grace`; `None` if it
    /// still runs then.
    pub(crate) async fn reap_within(
        &mut self,
        grace: std::time::Duration,
    ) -> Option<Result<VmExit, VmmError>> {
        tokio::time::timeout(grace, self.reap()).await.ok()
    }
}

pub(crate) fn exit_of(status: std::process::ExitStatus) -> VmExit {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => VmExit::Exited(code),
        (None, Some(sig)) => VmExit::Signaled(sig),
        (None, None) => VmExit::Exited(-1),
    }
}

/// A process file descriptor (`pidfd_open(2)`): it names one process for
/// as long as it is open, whatever happens to its pid, and polls readable
/// once that process has ended.
#[derive(Debug)]
pub(crate) struct PidFd {
    fd: AsyncFd<OwnedFd>,
}

impl PidFd {
    /// `None` when no process has that pid.
    pub(crate) fn open(pid: u32) -> io::Result<Option<Self>> {
        let pid = libc::pid_t::try_from(pid).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new
        // descriptor or -1; no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ESRCH) => Ok(None),
                _ => Err(e),
            };
        }
        let fd = RawFd::try_from(fd).map_err(|_| io::ErrorKind::InvalidData)?;
        // SAFETY: the kernel just returned this descriptor, owned by no one
        // else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an `OwnedFd` stays open, on the same file, until the
        // `AsyncFd` drops it.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)? };
        Ok(Some(Self { fd }))
    }

    /// Whether the process has ended.
    pub(crate) fn has_exited(&self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, a zero timeout.
        let ready = unsafe { libc::poll(&raw mut poll, 1, 0) };
        ready > 0 && poll.revents & libc::POLLIN != 0
    }

    /// Resolves once the process has ended.
    async fn exited(&self) -> io::Result<()> {
        // Readiness is left set: a pidfd stays readable from then on.
        let _ready = self.fd.readable().await?;
        Ok(())
    }

    fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
        let sent = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        match sent {
            0 => Ok(()),
            _ => match io::Error::last_os_error() {
                // Already ended.
                e if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
                e => Err(e),
            },
        }
    }

    /// A copy of descriptor `target` of the process (`pidfd_getfd(2)`):
    /// the same open file, so the same `flock` locks.
    pub(crate) fn get_fd(&self, target: RawFd) -> io::Result<OwnedFd> {
        // SAFETY: a valid pidfd, a descriptor number, no flags; returns a
        // new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, self.fd.as_raw_fd(), target, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = RawFd::try_from(fd).map_err(|_| io::ErrorKind::InvalidData)?;
        // SAFETY: as in `open`.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// Starts a process that holds descriptors `fds` (its copies of them, under
/// the same numbers) for as long as process `pid` runs, then exits: the
/// locks of a VMM that cannot keep descriptors of its own (the jailer
/// closes them before it starts Firecracker). It is in a session of its
/// own and not this process's child (init reaps it), so it outlives this
/// process; [`held_by`] finds its copies again. Returns its pid.
pub(crate) fn hold_while_running(pid: u32, fds: &[RawFd]) -> io::Result<u32> {
    let target = libc::pid_t::try_from(pid).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: pidfd_open takes a pid and flags; it returns a descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, target, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    let pidfd = RawFd::try_from(pidfd).map_err(|_| io::ErrorKind::InvalidData)?;
    // SAFETY: the kernel just made it; owned here, closed on every path.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let mut keep: Vec<RawFd> = fds.iter().copied().chain([pidfd.as_raw_fd()]).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut pipe = [0 as libc::c_int; 2];
    // SAFETY: a two-element array for the two ends.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just made, owned here.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    let (watched, report) = (pidfd.as_raw_fd(), write_end.as_raw_fd());
    // SAFETY: between fork and _exit the child (and its own child) make only
    // async-signal-safe system calls on values prepared before the fork;
    // they allocate nothing and take no lock.
    let child = unsafe { libc::fork() };
    match child {
        -1 => return Err(io::Error::last_os_error()),
        // SAFETY: see above.
        0 => unsafe { holder_child(&keep, watched, report) },
        _ => {}
    }
    drop(write_end);
    let mut status = 0;
    // SAFETY: reaps the intermediate child, which exits at once.
    unsafe { libc::waitpid(child, &raw mut status, 0) };
    let mut buf = [0u8; 4];
    let mut read = 0;
    while read < buf.len() {
        // SAFETY: reads into the rest of a local buffer.
        let n = unsafe {
            libc::read(
                read_end.as_raw_fd(),
                buf[read..].as_mut_ptr().cast(),
                buf.len() - read,
            )
        };
        match n {
            n if n > 0 => read += usize::try_from(n).unwrap_or_default(),
            0 => return Err(io::Error::other("the lock holder did not start")),
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            _ => return Err(io::Error::last_os_error()),
        }
    }
    Ok(u32::from_ne_bytes(buf))
}

/// The forked child of [`hold_while_running`]: forks the holder, reports
/// its pid and exits, so that the holder is reparented (to init) and never
/// left a zombie of the caller. The holder keeps only `keep`, waits until
/// the pidfd `watched` polls readable (its VMM has ended), and exits.
///
/// # Safety
///
/// To be called only in a child just forked from a multithreaded process:
/// it makes async-signal-safe system calls only.
unsafe fn holder_child(keep: &[RawFd], watched: RawFd, report: RawFd) -> ! {
    // SAFETY: async-signal-safe calls on plain values (see the caller).
    unsafe {
        let holder = libc::fork();
        if holder != 0 {
            if holder > 0 {
                let pid = u32::try_from(holder).unwrap_or_default().to_ne_bytes();
                libc::write(report, pid.as_ptr().cast(), pid.len());
            }
            libc::_exit(0);
        }
        libc::setsid();
        // Everything else the caller had open (its listeners, its other
        // VMs' files) is closed: only the locks and the pidfd stay.
        let mut next: libc::c_uint = 0;
        for &fd in keep {
            let fd = libc::c_uint::try_from(fd).unwrap_or(0);
            if fd > next {
                libc::syscall(libc::SYS_close_range, next, fd - 1, 0);
            }
            next = fd + 1;
        }
        libc::syscall(libc::SYS_close_range, next, libc::c_uint::MAX, 0);
        let mut poll = libc::pollfd {
            fd: watched,
            events: libc::POLLIN,
            revents: 0,
        };
        while libc::poll(&raw mut poll, 1, -1) < 0 && *libc::__errno_location() == libc::EINTR {}
        libc::_exit(0)
    }
}

/// A copy of the descriptor for `path` that process `holder` has open
/// (see [`hold_while_running`]): the same open file, so the same locks.
/// `None` when it has none, or is gone.
pub(crate) fn held_by(holder: u32, path: &std::path::Path) -> io::Result<Option<OwnedFd>> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{holder}/fd")) else {
        return Ok(None);
    };
    for entry in entries.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        if target == path {
            let Some(pidfd) = PidFd::open(holder)? else {
                return Ok(None);
            };
            return pidfd.get_fd(fd).map(Some);
        }
    }
    Ok(None)
}
