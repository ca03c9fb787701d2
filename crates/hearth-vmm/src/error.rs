use std::io;
use std::path::PathBuf;

/// Errors of the VMM drivers.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("{binary} not found; run: apt-get install -y {package}")]
    BinaryMissing {
        binary: &'static str,
        package: &'static str,
    },
    #[error("KVM was requested but is unusable: {0}; use --accel tcg or --accel auto")]
    KvmUnusable(String),
    #[error("Firecracker cannot run here: {0}; use --vmm qemu or --vmm auto")]
    FirecrackerUnusable(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("Firecracker refused {call} ({status}): {fault}{log}")]
    Api {
        call: String,
        status: u16,
        /// Firecracker's `fault_message`.
        fault: String,
        /// The last lines of its log, each on a line of its own.
        log: String,
    },
    #[error("Firecracker did not answer {call} within {secs} s")]
    CallTimeout { call: String, secs: u64 },
    #[error("kernel image {0} does not exist; run: hearth kernel build")]
    KernelMissing(PathBuf),
    #[error("disk image {0} does not exist")]
    DiskMissing(PathBuf),
    #[error("saved VM state {0} does not exist")]
    StateMissing(PathBuf),
    #[error("failed to start {binary}")]
    Spawn {
        binary: String,
        #[source]
        source: io::Error,
    },
    #[error("the VMM exited during start-up ({exit}); see {log}")]
    EarlyExit { exit: String, log: PathBuf },
    #[error("the VMM control socket {path} did not come up within {secs} s")]
    ControlTimeout { path: PathBuf, secs: u64 },
    #[error("disk {disk} lies outside {run_dir}, where its VMM is confined")]
    DiskOutsideJail { disk: PathBuf, run_dir: PathBuf },
    #[error("process {pid} is not the VMM of {run_dir}")]
    NotRunning { pid: u32, run_dir: PathBuf },
    #[error("cannot tell the VMM version: {0}")]
    Version(String),
    #[error("QMP: {0}")]
    Qmp(String),
    #[error("I/O error on {what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl VmmError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}
