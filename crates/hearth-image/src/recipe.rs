//! What a template is built from: a base (an image or another template)
//! and a list of steps. A Dockerfile and E2B's build API both become a
//! [`Recipe`]; the builder runs it the same way whichever door it came in by.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where a template's root filesystem starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Base {
    /// An OCI or Docker image: `REGISTRY/NAME[:TAG|@DIGEST]`,
    /// `oci:DIR[:TAG]` or `docker-archive:FILE`.
    Image { reference: String },
    /// The current build of another Hearth template (`base` is Debian).
    Template { name: String },
}

/// A command as a Dockerfile writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandLine {
    /// Shell form: run with `/bin/sh -c`.
    Shell(String),
    /// Exec form: the argument vector itself.
    Exec(Vec<String>),
}

impl CommandLine {
    /// The argument vector to execute.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Self::Shell(script) => vec!["/bin/sh".into(), "-c".into(), script.clone()],
            Self::Exec(argv) => argv.clone(),
        }
    }
}

impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Shell(script) => f.write_str(script),
            Self::Exec(argv) => write!(f, "{}", serde_json::Value::from(argv.clone())),
        }
    }
}

/// One build step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Runs a command inside the build VM as `user` (else the current
    /// `USER`), with the current `ENV` and `WORKDIR`.
    Run {
        command: CommandLine,
        user: Option<String>,
        /// `ARG`s in scope: in the command's environment, not the image's.
        #[serde(default)]
        build_args: Vec<(String, String)>,
    },
    /// Copies files from `context` into the image, with Docker's `COPY`
    /// rules: `sources` are paths or globs relative to `context`; `dest`
    /// is absolute (a Dockerfile's relative one is resolved against its
    /// `WORKDIR` when parsed) and names a directory when it ends in `/` or
    /// there are several sources; a directory source copies its contents.
    Copy {
        /// A directory on the host: the Dockerfile's build context, or an
        /// uploaded file archive unpacked.
        context: PathBuf,
        sources: Vec<String>,
        dest: String,
        /// `--chown=USER[:GROUP]`; files belong to root when absent.
        owner: Option<String>,
        /// `--chmod=MODE`.
        mode: Option<u32>,
    },
    /// Adds environment variables (later steps and the sandbox see them).
    Env(Vec<(String, String)>),
    /// Sets (and creates) the working directory.
    Workdir(String),
    /// Sets the user later steps and the sandbox run as.
    User(String),
}

impl Step {
    /// Whether the step changes the root filesystem (needs a build VM).
    pub fn writes_disk(&self) -> bool {
        matches!(self, Self::Run { .. } | Self::Copy { .. })
    }
}

/// A step and where it came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcedStep {
    pub step: Step,
    /// `Dockerfile:12`, or `step 3` for the E2B API.
    pub origin: String,
    /// The instruction as written, shown in logs.
    pub text: String,
    /// Rebuild this step (and all after it) even if cached.
    #[serde(default)]
    pub force: bool,
}

/// Everything a template build needs besides its name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipe {
    pub base: Option<Base>,
    pub steps: Vec<SourcedStep>,
    /// E2B's `startCmd`: run as a supervised service before the snapshot.
    /// Overrides the image's and the Dockerfile's; a Dockerfile sets
    /// [`entrypoint`](Self::entrypoint) and [`cmd`](Self::cmd) instead. Use
    /// [`Recipe::start_command`] for what actually runs.
    pub start_cmd: Option<CommandLine>,
    /// The Dockerfile's last `ENTRYPOINT`, if it has one.
    #[serde(default)]
    pub entrypoint: Option<CommandLine>,
    /// The Dockerfile's last `CMD`, if it has one.
    #[serde(default)]
    pub cmd: Option<CommandLine>,
    /// `HEALTHCHECK CMD`, or E2B's `readyCmd`: the snapshot is taken once it
    /// exits 0.
    pub ready_cmd: Option<CommandLine>,
    /// `STOPSIGNAL`: overrides the image's.
    pub stop_signal: Option<String>,
    /// `EXPOSE`: added to the image's.
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

impl Recipe {
    /// The start command of the finished template, combining the recipe's
    /// with the base image's config as Docker does: `start_cmd` wins
    /// outright; an `ENTRYPOINT` replaces the image's and drops the
    /// image's `CMD` (a shell-form one ignores any `CMD`); a `CMD` alone
    /// replaces the image's `CMD` and keeps its `ENTRYPOINT`. `None` when
    /// nothing is left to run.
    pub fn start_command(&self, image: &RunConfig) -> Option<Vec<String>> {
        if let Some(start) = &self.start_cmd {
            return Some(start.argv());
        }
        let argv: Vec<String> = match (&self.entrypoint, &self.cmd) {
            (Some(entrypoint @ CommandLine::Shell(_)), _) => entrypoint.argv(),
            (Some(entrypoint), cmd) => {
                let mut argv = entrypoint.argv();
                argv.extend(cmd.iter().flat_map(CommandLine::argv));
                argv
            }
            (None, Some(cmd)) => image.entrypoint.iter().cloned().chain(cmd.argv()).collect(),
            (None, None) => image.start_argv(),
        };
        (!argv.is_empty()).then_some(argv)
    }
}

/// Linux's signal names (without `SIG`) and numbers on x86-64.
const SIGNALS: [(&str, i32); 33] = [
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("IOT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("POLL", 29),
    ("PWR", 30),
    ("SYS", 31),
];
/// The first and last real-time signals as the C library numbers them
/// (it keeps 32 and 33 for itself), which is what Docker uses too.
const SIGRTMIN: i32 = 34;
const SIGRTMAX: i32 = 64;

/// The Linux number of a stop signal as `STOPSIGNAL` or an image config
/// gives it: a number (1–64) or a name with or without `SIG`, in any case,
/// including `RTMIN+n` and `RTMAX-n`. `None` if it is not a signal.
pub fn signal_number(signal: &str) -> Option<i32> {
    if !signal.is_empty() && signal.bytes().all(|b| b.is_ascii_digit()) {
        let n: i32 = signal.parse().ok()?;
        return (1..=SIGRTMAX).contains(&n).then_some(n);
    }
    let upper = signal.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let offset = |prefix: &str| {
        name.strip_prefix(prefix)
            .and_then(|n| n.parse::<i32>().ok())
            .filter(|n| (0..=SIGRTMAX - SIGRTMIN).contains(n))
    };
    match name {
        "RTMIN" => Some(SIGRTMIN),
        "RTMAX" => Some(SIGRTMAX),
        _ => SIGNALS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, number)| *number)
            .or_else(|| offset("RTMIN+").map(|n| SIGRTMIN + n))
            .or_else(|| offset("RTMAX-").map(|n| SIGRTMAX - n)),
    }
}

/// What an image's config (or a template) says about how to run it: the
/// state at the end of a build, and what sandboxes inherit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    /// `KEY=VALUE` pairs in order.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    /// As given (`SIGINT`, `2`); [`signal_number`] reads it.
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// `8000/tcp` and the like.
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl RunConfig {
    /// Sets `key`, replacing an earlier value in place.
    pub fn set_env(&mut self, key: &str, value: &str) {
        match self.env.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.to_owned(),
            None => self.env.push((key.to_owned(), value.to_owned())),
        }
    }

    /// The image's start command: `Entrypoint` + `Cmd`, as Docker joins them.
    pub fn start_argv(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }
}

/// Lexically normalised absolute path: `base` joined with `path` unless it
/// is absolute, `.` and `..` resolved, no trailing `/` (but `/` itself).
pub fn guest_path(base: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{base}/{path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            _ => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals_are_read_as_linux_numbers() {
        for (given, want) in [
            ("SIGTERM", Some(15)),
            ("int", Some(2)),
            ("SIGUSR1", Some(10)),
            ("SIGIOT", Some(6)),
            ("SIGPWR", Some(30)),
            ("9", Some(9)),
            ("64", Some(64)),
            ("SIGRTMIN", Some(34)),
            ("SIGRTMIN+3", Some(37)),
            ("RTMAX-2", Some(62)),
            ("SIGRTMIN+31", None),
            ("0", None),
            ("65", None),
            ("SIGFOO", None),
            ("", None),
            ("-1", None),
        ] {
            assert_eq!(signal_number(given), want, "{given}");
        }
    }

    #[test]
    fn shell_form_runs_through_sh_and_exec_form_as_is() {
        assert_eq!(
            CommandLine::Shell("echo $A".into()).argv(),
            ["/bin/sh", "-c", "echo $A"]
        );
        assert_eq!(CommandLine::Exec(vec!["ls".into()]).argv(), ["ls"]);
        assert_eq!(
            CommandLine::Exec(vec!["a b".into(), "c".into()]).to_string(),
            r#"["a b","c"]"#
        );
    }

    #[test]
    fn env_keeps_order_and_replaces_in_place() {
        let mut c = RunConfig::default();
        c.set_env("A", "1");
        c.set_env("B", "2");
        c.set_env("A", "3");
        assert_eq!(c.env, [("A".into(), "3".into()), ("B".into(), "2".into())]);
    }

    #[test]
    fn start_argv_is_entrypoint_then_cmd() {
        let c = RunConfig {
            entrypoint: vec!["python3".into()],
            cmd: vec!["app.py".into()],
            ..Default::default()
        };
        assert_eq!(c.start_argv(), ["python3", "app.py"]);
    }
}
