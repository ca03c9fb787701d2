pub(crate) mod bench;
pub(crate) mod events;
pub(crate) mod kernel;
pub(crate) mod remote;
pub(crate) mod sandbox;
pub(crate) mod server;
pub(crate) mod template;

use std::process::ExitCode;

/// An error on its way to the terminal, with the exit code it maps to.
pub(crate) struct Failure {
    pub error: anyhow::Error,
    pub exit_code: ExitCode,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Self {
            error: error.into(),
            exit_code: ExitCode::FAILURE,
        }
    }
}

pub(crate) type CommandResult = Result<ExitCode, Failure>;
