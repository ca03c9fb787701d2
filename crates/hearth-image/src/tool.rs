//! Running the external tools this crate drives, and small shared helpers.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};

use sha2::{Digest, Sha256};

/// How many lines of a failed tool's output an error quotes.
const TAIL_LINES: usize = 20;

/// An external tool could not be run or failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The program is not on `PATH`.
    #[error("{program} is not installed; run: apt-get install -y {package}")]
    NotInstalled {
        program: String,
        package: &'static str,
    },
    /// The program exists but could not be started.
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    /// Its output could not be read or logged.
    #[error("cannot record the output of {program} in {}", log.display())]
    Log {
        program: String,
        log: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The program ran and failed.
    #[error("{program} failed ({status}){detail}")]
    Failed {
        program: String,
        status: ExitStatus,
        detail: String,
    },
}

fn program_name(cmd: &Command) -> String {
    cmd.get_program().to_string_lossy().into_owned()
}

fn spawn_error(cmd: &Command, package: &'static str, source: io::Error) -> ToolError {
    let program = program_name(cmd);
    if source.kind() == io::ErrorKind::NotFound {
        ToolError::NotInstalled { program, package }
    } else {
        ToolError::Spawn { program, source }
    }
}

fn tail(lines: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    let mut out = String::new();
    for line in lines {
        out.push_str("\n  ");
        out.push_str(line.as_ref());
    }
    out
}

/// Runs `cmd` to completion with its output captured; a non-zero exit is an
/// error quoting the last lines of stderr. `package` is what provides it.
pub(crate) fn run(cmd: &mut Command, package: &'static str) -> Result<Output, ToolError> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(cmd, package, e))?;
    if output.status.success() {
        return Ok(output);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let start = lines.len().saturating_sub(TAIL_LINES);
    let detail = if lines.is_empty() {
        String::new()
    } else {
        format!(":{}", tail(&lines[start..]))
    };
    Err(ToolError::Failed {
        program: program_name(cmd),
        status: output.status,
        detail,
    })
}

/// Runs `cmd` with stdout and stderr merged, appending every line to `log`
/// and handing it to `on_line` as it arrives. A non-zero exit is an error
/// naming the log and quoting its last lines.
pub(crate) fn run_logged(
    cmd: &mut Command,
    package: &'static str,
    log: &Path,
    mut on_line: impl FnMut(&str),
) -> Result<(), ToolError> {
    let program = program_name(cmd);
    let log_err = |source| ToolError::Log {
        program: program.clone(),
        log: log.to_owned(),
        source,
    };
    let mut log_file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(log_err)?;
    let (reader, writer) = io::pipe().map_err(log_err)?;
    let writer_err = writer.try_clone().map_err(log_err)?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer_err)
        .spawn()
        .map_err(|e| spawn_error(cmd, package, e))?;
    // The command still holds the write ends; drop them so the read end sees
    // end-of-file when the child exits.
    cmd.stdout(Stdio::null()).stderr(Stdio::null());

    let mut last: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES);
    let mut read_result = Ok(());
    for line in BufReader::new(reader).split(b'\n') {
        let line = match line {
            Ok(line) => String::from_utf8_lossy(&line).into_owned(),
            Err(e) => {
                read_result = Err(e);
                break;
            }
        };
        if let Err(e) = writeln!(log_file, "{line}") {
            read_result = Err(e);
            break;
        }
        on_line(&line);
        if last.len() == TAIL_LINES {
            last.pop_front();
        }
        last.push_back(line);
    }
    if read_result.is_err() {
        // Don't leave the child blocked on a full pipe.
        let _ = child.kill();
    }
    let status = child.wait().map_err(log_err)?;
    read_result.map_err(log_err)?;
    if status.success() {
        return Ok(());
    }
    let detail = format!("; see {}, which ends:{}", log.display(), tail(&last));
    Err(ToolError::Failed {
        program,
        status,
        detail,
    })
}

/// Whether `program` is an executable on `PATH`.
pub(crate) fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        dir.join(program)
            .metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Lower-case hex of the SHA-256 of `parts`, each followed by a newline so
/// that moving bytes between parts changes the digest.
pub(crate) fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
        hasher.update(b"\n");
    }
    hex(&hasher.finalize())
}

/// The SHA-256 of a file's contents, as lower-case hex.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut hasher = Sha256::new();
    io::copy(&mut File::open(path)?, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_hex_separates_parts() {
        assert_eq!(sha256_hex(&[b"ab", b"c"]).len(), 64);
        assert_ne!(sha256_hex(&[b"ab", b"c"]), sha256_hex(&[b"a", b"bc"]));
    }

    #[test]
    fn run_logged_records_merged_output_and_tail_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let mut seen = Vec::new();
        let err = run_logged(
            Command::new("sh").args(["-c", "echo one; echo two >&2; exit 3"]),
            "dash",
            &log,
            |l| seen.push(l.to_owned()),
        )
        .unwrap_err();
        assert_eq!(seen, ["one", "two"]);
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "one\ntwo\n");
        let msg = err.to_string();
        assert!(
            msg.contains("out.log") && msg.ends_with("\n  one\n  two"),
            "{msg}"
        );
    }

    #[test]
    fn missing_program_says_what_to_install() {
        let err = run(&mut Command::new("hearth-no-such-tool"), "hearth-pkg").unwrap_err();
        assert_eq!(
            err.to_string(),
            "hearth-no-such-tool is not installed; run: apt-get install -y hearth-pkg"
        );
    }
}
