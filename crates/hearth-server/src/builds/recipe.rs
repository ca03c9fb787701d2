//! E2B's build request (`TemplateBuildStartV2`) as a [`Recipe`]: plain data
//! in, plain data out, so every rule here is tested without a VM.
//!
//! Steps keep their order and count: step `i` of the request is the
//! recipe's step `i` with origin `step i+1`, the number E2B's SDK uses to
//! find the line of the builder call that failed.

use std::path::PathBuf;

use hearth_image::{Base, CommandLine, Recipe, RegistryAuth, SourcedStep, Step};
use serde::Deserialize;
use serde_json::Value;

/// The template E2B's default base image (`e2bdev/base`) maps to.
pub const BASE_TEMPLATE: &str = "base";
/// E2B's default working directory, where relative paths land when
/// neither a `WORKDIR` step nor the base template names one.
pub const E2B_WORKDIR: &str = "/home/user";
/// E2B runs commands with a login bash; images without bash get the
/// agent's `/bin/sh` stand-in for it.
const SHELL: [&str; 3] = ["/bin/bash", "-l", "-c"];

/// `TemplateBuildStartV2`. Unknown fields are accepted and ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildStart {
    pub from_image: Option<String>,
    pub from_template: Option<String>,
    pub from_image_registry: Option<Value>,
    pub force: Option<bool>,
    pub steps: Option<Vec<StepRequest>>,
    pub start_cmd: Option<String>,
    pub ready_cmd: Option<String>,
}

/// `TemplateStep`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRequest {
    #[serde(rename = "type")]
    pub kind: String,
    pub args: Option<Vec<String>>,
    pub files_hash: Option<String>,
    pub force: Option<bool>,
}

/// A request that cannot be built: the message names the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapError {
    pub message: String,
    /// `base`, or the step's number.
    pub step: Option<String>,
}

impl MapError {
    fn base(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            step: Some("base".to_owned()),
        }
    }

    fn step(index: usize, message: impl std::fmt::Display) -> Self {
        Self {
            message: format!("step {}: {message}", index + 1),
            step: Some((index + 1).to_string()),
        }
    }
}

/// What a build request becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    pub recipe: Recipe,
    /// The request's `force`: every step runs again.
    pub no_cache: bool,
    pub auth: Option<RegistryAuth>,
    /// `(step index, files hash)` of each `COPY`: the upload to unpack into
    /// that step's context directory before the build.
    pub uploads: Vec<(usize, String)>,
}

/// Whether `hash` can name an upload: lowercase hex, as the SDK's SHA-256.
pub fn valid_files_hash(hash: &str) -> bool {
    (1..=128).contains(&hash.len()) && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `image` names E2B's base image, which Hearth's `base` template
/// stands for.
pub fn is_e2b_base(image: &str) -> bool {
    let image = image
        .strip_prefix("docker.io/")
        .or_else(|| image.strip_prefix("index.docker.io/"))
        .unwrap_or(image);
    image == "e2bdev/base" || image.starts_with("e2bdev/base:") || image.starts_with("e2bdev/base@")
}

/// The recipe of `start`. `base_workdir` gives the working directory a
/// base template sets, if any; `context_dir(i)` is where step `i`'s upload
/// will be unpacked.
pub fn map_request(
    start: &BuildStart,
    base_workdir: impl Fn(&Base) -> Option<String>,
    context_dir: impl Fn(usize) -> PathBuf,
) -> Result<Mapped, MapError> {
    let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.trim().is_empty());
    let (base, auth) = match (
        non_empty(&start.from_image),
        non_empty(&start.from_template),
    ) {
        (Some(_), Some(_)) => {
            return Err(MapError::base("give fromImage or fromTemplate, not both"));
        }
        (Some(image), None) => {
            let auth = registry_auth(start.from_image_registry.as_ref())?;
            if is_e2b_base(&image) {
                (
                    Base::Template {
                        name: BASE_TEMPLATE.to_owned(),
                    },
                    None,
                )
            } else {
                (Base::Image { reference: image }, auth)
            }
        }
        (None, Some(name)) => {
            if start
                .from_image_registry
                .as_ref()
                .is_some_and(|r| !r.is_null())
            {
                return Err(MapError::base(
                    "fromImageRegistry goes with fromImage, not fromTemplate",
                ));
            }
            (Base::Template { name }, None)
        }
        (None, None) => (
            Base::Template {
                name: BASE_TEMPLATE.to_owned(),
            },
            None,
        ),
    };
    let mut workdir = base_workdir(&base).unwrap_or_else(|| match base {
        Base::Template { .. } => E2B_WORKDIR.to_owned(),
        Base::Image { .. } => "/".to_owned(),
    });

    let mut steps = Vec::new();
    let mut uploads = Vec::new();
    for (i, request) in start.steps.iter().flatten().enumerate() {
        let args = request.args.clone().unwrap_or_default();
        let arg = |n: usize| args.get(n).map(String::as_str).unwrap_or_default();
        let (step, text) = match request.kind.as_str() {
            "RUN" => {
                let command = arg(0);
                if command.trim().is_empty() {
                    return Err(MapError::step(
                        i,
                        "RUN needs a command as its first argument",
                    ));
                }
                let user = Some(arg(1).to_owned()).filter(|u| !u.is_empty());
                (
                    Step::Run {
                        command: shell(command),
                        user,
                        build_args: Vec::new(),
                    },
                    format!("RUN {command}"),
                )
            }
            "COPY" => {
                let (src, dest, user, mode) = (arg(0), arg(1), arg(2), arg(3));
                if src.is_empty() || dest.is_empty() {
                    return Err(MapError::step(
                        i,
                        "COPY needs a source and a destination as its first two arguments",
                    ));
                }
                let hash = request.files_hash.as_deref().unwrap_or_default();
                if !valid_files_hash(hash) {
                    return Err(MapError::step(
                        i,
                        format_args!(
                            "COPY {src} needs the filesHash of its uploaded files (lowercase \
                             hex), not {hash:?}"
                        ),
                    ));
                }
                let mode = if mode.is_empty() {
                    None
                } else {
                    Some(
                        u32::from_str_radix(mode, 8)
                            .ok()
                            .filter(|m| *m <= 0o7777)
                            .ok_or_else(|| {
                                MapError::step(
                                    i,
                                    format_args!(
                                        "COPY mode {mode:?} is not an octal file mode like 0644"
                                    ),
                                )
                            })?,
                    )
                };
                uploads.push((i, hash.to_owned()));
                let dest = absolute(&workdir, dest);
                let text = format!("COPY {src} {dest}");
                (
                    Step::Copy {
                        context: context_dir(i),
                        sources: vec![src.to_owned()],
                        dest,
                        owner: Some(user.to_owned()).filter(|u| !u.is_empty()),
                        mode,
                    },
                    text,
                )
            }
            "ENV" => {
                if args.is_empty() || args.len() % 2 != 0 {
                    return Err(MapError::step(
                        i,
                        "ENV needs its arguments in pairs: name, value, name, value…",
                    ));
                }
                let pairs: Vec<(String, String)> = args
                    .chunks(2)
                    .map(|pair| (pair[0].clone(), pair[1].clone()))
                    .collect();
                if let Some((bad, _)) = pairs
                    .iter()
                    .find(|(k, _)| k.is_empty() || k.contains(['=', '\0']))
                {
                    return Err(MapError::step(
                        i,
                        format_args!("ENV name {bad:?} is empty or holds '=' or NUL"),
                    ));
                }
                let text = pairs
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                (Step::Env(pairs), format!("ENV {text}"))
            }
            "WORKDIR" => {
                if arg(0).is_empty() {
                    return Err(MapError::step(i, "WORKDIR needs a path"));
                }
                workdir = absolute(&workdir, arg(0));
                let dir = workdir.trim_end_matches('/');
                let dir = if dir.is_empty() { "/" } else { dir };
                (Step::Workdir(dir.to_owned()), format!("WORKDIR {dir}"))
            }
            "USER" => {
                let user = arg(0);
                if user.is_empty() {
                    return Err(MapError::step(i, "USER needs a user name"));
                }
                (Step::User(user.to_owned()), format!("USER {user}"))
            }
            other => {
                return Err(MapError::step(
                    i,
                    format_args!(
                        "unknown step type {other:?}; Hearth builds COPY, ENV, RUN, USER and \
                         WORKDIR steps"
                    ),
                ));
            }
        };
        steps.push(SourcedStep {
            step,
            origin: format!("step {}", i + 1),
            text,
            force: request.force.unwrap_or(false),
        });
    }

    let command = |c: &Option<String>| non_empty(c).map(|c| shell(&c));
    Ok(Mapped {
        recipe: Recipe {
            base: Some(base),
            steps,
            start_cmd: command(&start.start_cmd),
            ready_cmd: command(&start.ready_cmd),
            ..Recipe::default()
        },
        no_cache: start.force.unwrap_or(false),
        auth,
        uploads,
    })
}

fn shell(command: &str) -> CommandLine {
    let mut argv: Vec<String> = SHELL.iter().map(|s| (*s).to_owned()).collect();
    argv.push(command.to_owned());
    CommandLine::Exec(argv)
}

/// `fromImageRegistry`: E2B's general registry credentials; its AWS and
/// GCP kinds are refused by name.
fn registry_auth(registry: Option<&Value>) -> Result<Option<RegistryAuth>, MapError> {
    let Some(registry) = registry.filter(|r| !r.is_null()) else {
        return Ok(None);
    };
    let text = |field: &str| registry[field].as_str().filter(|s| !s.is_empty());
    match registry["type"].as_str() {
        Some("registry") => match (text("username"), text("password")) {
            (Some(username), Some(password)) => Ok(Some(RegistryAuth {
                username: username.to_owned(),
                password: password.to_owned(),
            })),
            _ => Err(MapError::base(
                "fromImageRegistry of type registry needs a username and a password",
            )),
        },
        Some(kind @ ("aws" | "gcp")) => Err(MapError::base(format!(
            "fromImageRegistry type {kind:?} is not supported by Hearth; give the registry's \
             username and password with type \"registry\""
        ))),
        other => Err(MapError::base(format!(
            "fromImageRegistry type {:?} is not one of registry, aws, gcp",
            other.unwrap_or_default()
        ))),
    }
}

/// `path` made absolute against `workdir` and cleaned of `.` and `..`;
/// a trailing `/` (a directory destination) is kept.
pub fn absolute(workdir: &str, path: &str) -> String {
    let mut out = hearth_image::guest_path(workdir, path);
    let dir = path.ends_with('/') || path.ends_with("/.") || path == ".";
    if dir && !out.ends_with('/') {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn start(json: Value) -> BuildStart {
        serde_json::from_value(json).unwrap()
    }

    fn map(json: Value) -> Result<Mapped, MapError> {
        map_request(
            &start(json),
            |_| None,
            |i| PathBuf::from(format!("/ctx/step-{}", i + 1)),
        )
    }

    fn bash(cmd: &str) -> CommandLine {
        CommandLine::Exec(vec![
            "/bin/bash".into(),
            "-l".into(),
            "-c".into(),
            cmd.into(),
        ])
    }

    #[test]
    fn what_the_sdk_sends_for_a_web_app_template() {
        // Template().from_template("base").copy("app.py", "/home/user/app.py")
        //   .run_cmd("echo built > /home/user/marker")
        //   .set_start_cmd("python3 /home/user/app.py", wait_for_port(8000))
        let mapped = map(json!({
            "steps": [
                { "type": "COPY", "args": ["app.py", "/home/user/app.py", "", ""],
                  "force": false, "filesHash": "ab12", "forceUpload": null },
                { "type": "RUN", "args": ["echo built > /home/user/marker"], "force": false },
            ],
            "force": false,
            "fromTemplate": "base",
            "startCmd": "python3 /home/user/app.py",
            "readyCmd": "[ -n \"$(ss -Htuln sport = :8000)\" ]",
            "someFutureField": { "x": 1 },
        }))
        .unwrap();
        assert_eq!(
            mapped.recipe.base,
            Some(Base::Template {
                name: "base".into()
            })
        );
        assert!(!mapped.no_cache);
        assert_eq!(mapped.auth, None);
        assert_eq!(mapped.uploads, [(0, "ab12".to_owned())]);
        let steps = &mapped.recipe.steps;
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].origin, "step 1");
        assert_eq!(steps[0].text, "COPY app.py /home/user/app.py");
        assert_eq!(
            steps[0].step,
            Step::Copy {
                context: "/ctx/step-1".into(),
                sources: vec!["app.py".into()],
                dest: "/home/user/app.py".into(),
                owner: None,
                mode: None,
            }
        );
        assert_eq!(steps[1].origin, "step 2");
        assert_eq!(
            steps[1].step,
            Step::Run {
                command: bash("echo built > /home/user/marker"),
                user: None,
                build_args: vec![],
            }
        );
        assert_eq!(
            mapped.recipe.start_cmd,
            Some(bash("python3 /home/user/app.py"))
        );
        assert_eq!(
            mapped.recipe.ready_cmd,
            Some(bash("[ -n \"$(ss -Htuln sport = :8000)\" ]"))
        );
    }

    #[test]
    fn bases() {
        let base = |json: Value| map(json).unwrap().recipe.base.unwrap();
        let template = |name: &str| Base::Template { name: name.into() };
        for image in [
            "e2bdev/base",
            "e2bdev/base:latest",
            "docker.io/e2bdev/base:1.0",
        ] {
            assert_eq!(
                base(json!({ "fromImage": image })),
                template("base"),
                "{image}"
            );
        }
        assert_eq!(base(json!({})), template("base"));
        assert_eq!(base(json!({ "fromTemplate": "web" })), template("web"));
        assert_eq!(
            base(json!({ "fromImage": "python:3.11" })),
            Base::Image {
                reference: "python:3.11".into()
            }
        );
        assert_eq!(
            base(json!({ "fromImage": "e2bdev/base-extra" })),
            Base::Image {
                reference: "e2bdev/base-extra".into()
            }
        );
        let err = map(json!({ "fromImage": "a", "fromTemplate": "b" })).unwrap_err();
        assert_eq!(err.step.as_deref(), Some("base"));
    }

    #[test]
    fn registry_credentials() {
        let mapped = map(json!({
            "fromImage": "registry.example.com/app:1",
            "fromImageRegistry": { "type": "registry", "username": "u", "password": "p" },
        }))
        .unwrap();
        let auth = mapped.auth.unwrap();
        assert_eq!((auth.username.as_str(), auth.password.as_str()), ("u", "p"));
        for (registry, message) in [
            (
                json!({ "type": "aws", "awsAccessKeyId": "k" }),
                "fromImageRegistry type \"aws\" is not supported by Hearth",
            ),
            (
                json!({ "type": "gcp", "serviceAccountJson": "{}" }),
                "fromImageRegistry type \"gcp\" is not supported by Hearth",
            ),
            (
                json!({ "type": "registry", "username": "u" }),
                "fromImageRegistry of type registry needs",
            ),
            (json!({ "type": 7 }), "fromImageRegistry type \"\""),
        ] {
            let err =
                map(json!({ "fromImage": "x:1", "fromImageRegistry": registry })).unwrap_err();
            assert!(err.message.starts_with(message), "{}", err.message);
            assert_eq!(err.step.as_deref(), Some("base"));
        }
    }

    #[test]
    fn every_step_kind() {
        let mapped = map(json!({
            "fromImage": "alpine:3",
            "force": true,
            "steps": [
                { "type": "WORKDIR", "args": ["/app"] },
                { "type": "COPY", "args": ["src", "./src/", "user:users", "0755"], "filesHash": "ff" },
                { "type": "ENV", "args": ["A", "1", "B", "two words"] },
                { "type": "USER", "args": ["user"] },
                { "type": "RUN", "args": ["make && make install", "root"], "force": true },
                { "type": "WORKDIR", "args": ["sub/../lib"] },
                { "type": "COPY", "args": ["a.txt", "b.txt", "", "644"], "filesHash": "ee" },
            ],
        }))
        .unwrap();
        assert!(mapped.no_cache);
        let steps: Vec<&Step> = mapped.recipe.steps.iter().map(|s| &s.step).collect();
        assert_eq!(steps[0], &Step::Workdir("/app".into()));
        assert_eq!(
            steps[1],
            &Step::Copy {
                context: "/ctx/step-2".into(),
                sources: vec!["src".into()],
                dest: "/app/src/".into(),
                owner: Some("user:users".into()),
                mode: Some(0o755),
            }
        );
        assert_eq!(
            steps[2],
            &Step::Env(vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into())
            ])
        );
        assert_eq!(steps[3], &Step::User("user".into()));
        assert_eq!(
            steps[4],
            &Step::Run {
                command: bash("make && make install"),
                user: Some("root".into()),
                build_args: vec![],
            }
        );
        assert!(mapped.recipe.steps[4].force);
        assert!(!mapped.recipe.steps[3].force);
        assert_eq!(steps[5], &Step::Workdir("/app/lib".into()));
        let Step::Copy { dest, mode, .. } = steps[6] else {
            panic!("{:?}", steps[6]);
        };
        assert_eq!((dest.as_str(), *mode), ("/app/lib/b.txt", Some(0o644)));
        assert_eq!(mapped.uploads, [(1, "ff".to_owned()), (6, "ee".to_owned())]);
        assert_eq!(mapped.recipe.steps[2].text, "ENV A=1 B=two words");
    }

    #[test]
    fn relative_destinations_follow_the_base_workdir() {
        let step = json!({ "steps": [{ "type": "COPY", "args": ["a", "b/"], "filesHash": "aa" }] });
        let dest = |mapped: Mapped| match &mapped.recipe.steps[0].step {
            Step::Copy { dest, .. } => dest.clone(),
            other => panic!("{other:?}"),
        };
        // A template base without a workdir: E2B's.
        assert_eq!(dest(map(step.clone()).unwrap()), "/home/user/b/");
        let with_workdir = map_request(
            &start(step.clone()),
            |_| Some("/srv".into()),
            |_| PathBuf::from("/ctx"),
        )
        .unwrap();
        assert_eq!(dest(with_workdir), "/srv/b/");
        let mut image = step;
        image["fromImage"] = json!("alpine:3");
        assert_eq!(dest(map(image).unwrap()), "/b/");
    }

    #[test]
    fn bad_steps_are_refused_naming_the_step() {
        for (step, message) in [
            (
                json!({ "type": "FROB", "args": [] }),
                "step 2: unknown step type \"FROB\"",
            ),
            (
                json!({ "type": "RUN", "args": [] }),
                "step 2: RUN needs a command",
            ),
            (json!({ "type": "RUN" }), "step 2: RUN needs a command"),
            (
                json!({ "type": "COPY", "args": ["a", "/b"] }),
                "step 2: COPY a needs the filesHash",
            ),
            (
                json!({ "type": "COPY", "args": ["a", "/b"], "filesHash": "../../etc" }),
                "step 2: COPY a needs the filesHash",
            ),
            (
                json!({ "type": "COPY", "args": ["a", "/b", "", "999"], "filesHash": "aa" }),
                "step 2: COPY mode \"999\"",
            ),
            (
                json!({ "type": "COPY", "args": ["a"] }),
                "step 2: COPY needs a source",
            ),
            (
                json!({ "type": "ENV", "args": ["A"] }),
                "step 2: ENV needs its arguments in pairs",
            ),
            (
                json!({ "type": "ENV", "args": ["A=B", "c"] }),
                "step 2: ENV name \"A=B\"",
            ),
            (
                json!({ "type": "WORKDIR", "args": [] }),
                "step 2: WORKDIR needs a path",
            ),
            (
                json!({ "type": "USER", "args": [""] }),
                "step 2: USER needs a user name",
            ),
        ] {
            let err =
                map(json!({ "steps": [{ "type": "USER", "args": ["root"] }, step] })).unwrap_err();
            assert!(err.message.starts_with(message), "{}", err.message);
            assert_eq!(err.step.as_deref(), Some("2"));
        }
    }

    #[test]
    fn paths_are_made_absolute_and_clean() {
        assert_eq!(absolute("/home/user", "app.py"), "/home/user/app.py");
        assert_eq!(absolute("/home/user", "./src/"), "/home/user/src/");
        assert_eq!(absolute("/home/user", "."), "/home/user/");
        assert_eq!(absolute("/home/user", "../../../x"), "/x");
        assert_eq!(absolute("/", "/etc//app/"), "/etc/app/");
        assert_eq!(absolute("/a", "/"), "/");
    }

    #[test]
    fn files_hashes_are_lowercase_hex() {
        assert!(valid_files_hash(&"a".repeat(64)));
        assert!(!valid_files_hash(""));
        assert!(!valid_files_hash("ABC"));
        assert!(!valid_files_hash("../x"));
        assert!(!valid_files_hash(&"a".repeat(129)));
        assert!(is_e2b_base("e2bdev/base"));
        assert!(!is_e2b_base("e2bdev/baseline"));
    }
}
