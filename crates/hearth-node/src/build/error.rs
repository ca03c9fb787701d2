use std::path::PathBuf;

use crate::NodeError;

/// Why a template build failed. Whatever it had made is removed, except
/// the cached results of the steps that succeeded.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("'{0}' is the built-in Debian template; run: hearth template build base")]
    Reserved(String),
    #[error("a build of template '{0}' is already running; wait for it or pick another name")]
    Busy(String),
    #[error(transparent)]
    Image(#[from] hearth_image::OciError),
    #[error("{origin}: COPY failed: {message}")]
    Copy { origin: String, message: String },
    #[error("{origin}: `{command}` exited with status {code}; its last output:{tail}")]
    StepFailed {
        origin: String,
        command: String,
        code: i32,
        tail: String,
    },
    #[error("{origin}: the build VM failed")]
    Vm {
        origin: String,
        #[source]
        source: NodeError,
    },
    #[error("cannot read the guest init {}; build it with: cargo build --release -p hearth-init", .0.display())]
    Init(PathBuf, #[source] std::io::Error),
    #[error("I/O error on {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Template(#[from] hearth_image::TemplateError),
    #[error(transparent)]
    Node(#[from] NodeError),
}
