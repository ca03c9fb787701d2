//! The pure part of a build: what state each step sees and the cache key of
//! its result. A key hashes the previous key, the step as written (less
//! where its files live) and the hash of the files it reads, so changing
//! step k changes the keys of k and everything after it, and nothing before.

use hearth_image::{RunConfig, SourcedStep, Step};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Bump when what a step's cached result holds changes for the same key.
pub(crate) const LAYER_RECIPE: &str = "hearth-layer-1";

/// One step, placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Planned {
    /// Cache key of the root filesystem after this step.
    pub(crate) key: String,
    /// Environment, user and working directory the step runs with.
    pub(crate) state: RunConfig,
}

/// The keys and states of `steps` over a base whose key is `base_key` and
/// whose config is `base`. `files_hash(i)` is the hash of what step `i`
/// reads (its `COPY` sources; empty for other steps). Returns the plans and
/// the config at the end.
pub(crate) fn plan(
    base_key: &str,
    base: &RunConfig,
    steps: &[SourcedStep],
    files_hash: impl Fn(usize) -> String,
) -> (Vec<Planned>, RunConfig) {
    let mut state = base.clone();
    let mut key = base_key.to_owned();
    let mut planned = Vec::with_capacity(steps.len());
    for (i, sourced) in steps.iter().enumerate() {
        key = chain(&key, &sourced.step, &files_hash(i));
        planned.push(Planned {
            key: key.clone(),
            state: state.clone(),
        });
        apply(&mut state, &sourced.step);
    }
    (planned, state)
}

/// What a step changes in the config later steps and sandboxes see.
fn apply(state: &mut RunConfig, step: &Step) {
    match step {
        Step::Env(vars) => {
            for (k, v) in vars {
                state.set_env(k, v);
            }
        }
        Step::User(user) => state.user = Some(user.clone()),
        Step::Workdir(dir) => state.workdir = Some(dir.clone()),
        Step::Run { .. } | Step::Copy { .. } => {}
    }
}

/// The step as hashed: where a `COPY` reads from is left out (the files'
/// hash stands for it), so the same files in another directory hit the cache.
#[derive(Serialize)]
struct Hashed<'a> {
    recipe: &'static str,
    step: std::borrow::Cow<'a, Step>,
    files: &'a str,
}

fn chain(previous: &str, step: &Step, files_hash: &str) -> String {
    let step = match step {
        Step::Copy {
            sources,
            dest,
            owner,
            mode,
            ..
        } => std::borrow::Cow::Owned(Step::Copy {
            context: Default::default(),
            sources: sources.clone(),
            dest: dest.clone(),
            owner: owner.clone(),
            mode: *mode,
        }),
        other => std::borrow::Cow::Borrowed(other),
    };
    let hashed = Hashed {
        recipe: LAYER_RECIPE,
        step,
        files: files_hash,
    };
    let mut hash = Sha256::new();
    hash.update(previous.as_bytes());
    hash.update([0]);
    hash.update(serde_json::to_vec(&hashed).expect("plain data serialises"));
    hex(&hash.finalize()[..16])
}

/// A key from parts, for bases and template builds.
pub(crate) fn key_of(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hex(&hash.finalize()[..16])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_image::CommandLine;

    fn step(step: Step) -> SourcedStep {
        SourcedStep {
            step,
            origin: "Dockerfile:1".into(),
            text: String::new(),
            force: false,
        }
    }

    fn run(cmd: &str) -> SourcedStep {
        step(Step::Run {
            command: CommandLine::Shell(cmd.into()),
            user: None,
            build_args: vec![],
        })
    }

    fn copy(context: &str) -> SourcedStep {
        step(Step::Copy {
            context: context.into(),
            sources: vec!["app.py".into()],
            dest: "/app/".into(),
            owner: None,
            mode: None,
        })
    }

    fn keys(steps: &[SourcedStep], files: &str) -> Vec<String> {
        plan("base", &RunConfig::default(), steps, |_| files.to_owned())
            .0
            .into_iter()
            .map(|p| p.key)
            .collect()
    }

    #[test]
    fn changing_a_step_changes_its_key_and_later_ones_only() {
        let a = keys(&[run("a"), run("b"), run("c")], "");
        let b = keys(&[run("a"), run("B"), run("c")], "");
        assert_eq!(a[0], b[0]);
        assert_ne!(a[1], b[1]);
        assert_ne!(a[2], b[2]);
        assert_eq!(a, keys(&[run("a"), run("b"), run("c")], ""));
        let other_base = plan("other", &RunConfig::default(), &[run("a")], |_| {
            String::new()
        })
        .0;
        assert_ne!(other_base[0].key, a[0]);
    }

    #[test]
    fn copy_keys_follow_the_files_not_where_they_are() {
        assert_eq!(keys(&[copy("/ctx1")], "h1"), keys(&[copy("/ctx2")], "h1"));
        assert_ne!(keys(&[copy("/ctx1")], "h1"), keys(&[copy("/ctx1")], "h2"));
    }

    #[test]
    fn env_user_and_workdir_reach_later_steps_and_the_end() {
        let base = RunConfig {
            env: vec![("PATH".into(), "/bin".into())],
            ..RunConfig::default()
        };
        let steps = [
            step(Step::Env(vec![("A".into(), "1".into())])),
            step(Step::User("app".into())),
            step(Step::Workdir("/srv".into())),
            run("x"),
        ];
        let (planned, end) = plan("k", &base, &steps, |_| String::new());
        assert_eq!(planned[0].state, base);
        let last = &planned[3].state;
        assert_eq!(last.user.as_deref(), Some("app"));
        assert_eq!(last.workdir.as_deref(), Some("/srv"));
        assert_eq!(last.env[1], ("A".into(), "1".into()));
        assert_eq!(&end, last);
    }
}
