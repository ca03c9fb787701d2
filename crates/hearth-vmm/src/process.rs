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
