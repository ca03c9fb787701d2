use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::AgentError;

/// Errors of the node core.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Preflight(String),
    #[error("no guest kernel has been built; run: hearth kernel build")]
    NoKernel,
    #[error("template '{0}' does not exist; run: hearth template build {0}")]
    NoTemplate(String),
    #[error(transparent)]
    Kernel(#[from] hearth_image::KernelError),
    #[error(transparent)]
    Template(#[from] hearth_image::TemplateError),
    #[error(transparent)]
    Disk(#[from] hearth_image::DiskError),
    #[error(transparent)]
    Vmm(#[from] hearth_vmm::VmmError),
    #[error(transparent)]
    Net(#[from] hearth_net::NetError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("the guest agent did not answer within {} s; last console line: {console}", timeout.as_secs())]
    AgentTimeout { timeout: Duration, console: String },
    #[error("the VM exited while booting ({exit}); last console line: {console}")]
    BootExit { exit: String, console: String },
    #[error(
        "template '{name}' is in use: sandboxes were restored from its builds {builds}; kill or delete them first"
    )]
    TemplateInUse { name: String, builds: String },
    #[error("sandbox {0} is in use by another process")]
    Busy(String),
    #[error(
        "an egress policy with domains needs a nameserver to resolve them, and this node has \
         none (/etc/resolv.conf names none, and the server was not given --dns)"
    )]
    NoNameserver,
    #[error(
        "sandbox {id} mounts volumes ({volumes}); it cannot be {what}: a volume is mounted by one sandbox at a time"
    )]
    HasVolumes {
        id: String,
        volumes: String,
        what: &'static str,
    },
    #[error("a sandbox mounts at most {max} volumes")]
    TooManyVolumes { max: usize },
    #[error("no paused sandbox {0}")]
    NotPaused(String),
    #[error("sandbox {0} has stopped")]
    Gone(String),
    #[error(
        "not enough host memory for another VM: {available_mib} MiB available, at least \
         {min_free_mib} MiB must stay free; stop some sandboxes"
    )]
    OutOfMemory {
        available_mib: u64,
        min_free_mib: u64,
    },
    #[error(
        "{what} was saved under another {field} ({saved}) than this host's ({host}); rebuild the template or resume it where it was paused"
    )]
    Incompatible {
        what: String,
        field: &'static str,
        saved: String,
        host: String,
    },
    #[error(
        "the template's ready command `{command}` still failed after {} s (last exit status {code}); its last output:{tail}",
        timeout.as_secs()
    )]
    NotReady {
        command: String,
        timeout: Duration,
        code: i32,
        tail: String,
    },
    #[error("{0}")]
    Guest(String),
    #[error("sandbox {id} cannot be taken over: {why}")]
    NotAdoptable { id: String, why: String },
    #[error("{path} is unreadable: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("I/O error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl NodeError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
