//! Dockerfiles parsed into a [`Recipe`](crate::Recipe).
//!
//! One stage, built on `linux/amd64`, with Docker's (BuildKit's) syntax:
//! parser directives, line continuations, comments inside them, JSON exec
//! form with the shell-form fallback, `ARG`/`ENV` scoping and variable
//! substitution. What needs a Docker daemon (other stages, `RUN --mount`,
//! heredocs, `ADD` from URLs, `SHELL`, `ONBUILD`, `VOLUME`) is refused with
//! the line and a way round it, never silently dropped.
//!
//! Variables are substituted where Docker substitutes them (`FROM` with the
//! `ARG`s before it; `ENV`, `ARG`, `COPY`/`ADD`, `WORKDIR`, `USER`,
//! `EXPOSE`, `LABEL`, `STOPSIGNAL` after it) and left alone in `RUN`,
//! `CMD`, `ENTRYPOINT` and `HEALTHCHECK`, whose shell expands them at run
//! time: a [`Step::Run`] carries the `ARG`s in scope and the builder applies
//! the `ENV`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::recipe::{
    Base, CommandLine, Recipe, RunConfig, SourcedStep, Step, guest_path as absolute,
};

/// The only platform Hearth builds for.
const PLATFORM: &str = "linux/amd64";

/// BuildKit's automatic platform `ARG`s: usable in `FROM`, and after it
/// once declared with a bare `ARG NAME`.
const PLATFORM_ARGS: [(&str, &str); 8] = [
    ("TARGETPLATFORM", PLATFORM),
    ("TARGETOS", "linux"),
    ("TARGETARCH", "amd64"),
    ("TARGETVARIANT", ""),
    ("BUILDPLATFORM", PLATFORM),
    ("BUILDOS", "linux"),
    ("BUILDARCH", "amd64"),
    ("BUILDVARIANT", ""),
];

/// Build arguments Docker passes to every `RUN` without an `ARG`.
const PROXY_ARGS: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// Archives `ADD` would unpack (Docker detects them by content; we go by
/// name and refuse them rather than copy them unpacked).
const ARCHIVE_SUFFIXES: [&str; 11] = [
    ".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".tbz", ".tar.zst", ".tzst",
    ".tar.lz",
];

/// Why a Dockerfile cannot be built. `at` is `LABEL:LINE`, the line where
/// the instruction starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerfileError {
    #[error("{label}: there is no FROM instruction; start the Dockerfile with FROM IMAGE")]
    NoFrom { label: String },
    #[error("{at}: {instruction} comes before FROM; only ARG may precede FROM, so move it below")]
    BeforeFrom { at: String, instruction: String },
    #[error(
        "{at}: a second FROM starts another stage, and multi-stage builds are not supported; \
         build the earlier stage as a template of its own and start FROM it"
    )]
    MultiStage { at: String },
    #[error(
        "{at}: COPY --from needs another stage or image, which is not supported; build that \
         stage as a template of its own and start FROM it, or fetch the files in a RUN step"
    )]
    CopyFrom { at: String },
    #[error("{at}: scratch images are not supported: start from an image or template")]
    Scratch { at: String },
    #[error(
        "{at}: platform {platform:?} is not supported; Hearth builds {PLATFORM} only, so drop \
         --platform or set it to {PLATFORM}"
    )]
    Platform { at: String, platform: String },
    #[error("{at}: {instruction} is not supported; {hint}")]
    Unsupported {
        at: String,
        instruction: String,
        hint: &'static str,
    },
    #[error(
        "{at}: unknown instruction {instruction:?}; check its spelling against the Dockerfile \
         reference"
    )]
    UnknownInstruction { at: String, instruction: String },
    #[error("{at}: RUN --{option} is not supported; {hint}")]
    RunOption {
        at: String,
        option: String,
        hint: &'static str,
    },
    #[error(
        "{at}: heredocs ({word}) are not supported; put the text in a file in the build context \
         and COPY it, or write the commands on one RUN line joined with &&"
    )]
    Heredoc { at: String, word: String },
    #[error("{at}: ADD from a URL is not supported; download it in a RUN step ({url})")]
    AddUrl { at: String, url: String },
    #[error(
        "{at}: ADD would unpack the archive {archive:?}, which is not supported; COPY it and \
         unpack it in a RUN step (RUN tar -xf ...)"
    )]
    AddArchive { at: String, archive: String },
    #[error("{at}: {instruction} does not take --{flag}; remove it")]
    UnknownFlag {
        at: String,
        instruction: String,
        flag: String,
    },
    /// Anything else malformed; `message` says what and how to fix it.
    #[error("{at}: {message}")]
    Invalid { at: String, message: String },
}

/// Parses a single-stage Dockerfile into a [`Recipe`] whose `COPY` steps
/// read from `context`. `label` names the file in messages (`Dockerfile`
/// gives `Dockerfile:12: ...`); `build_args` are `--build-arg`s, which
/// override `ARG` defaults (ones the file doesn't declare are ignored).
///
/// The base image's config is not known here, so its `ENV` (say `$PATH` in
/// `ENV PATH=/opt/bin:$PATH`) expands to nothing and relative paths resolve
/// against `/`. A builder that has pulled the image parses again with
/// [`parse_dockerfile_for_image`] to get Docker's exact result.
pub fn parse_dockerfile(
    text: &str,
    label: &str,
    context: &Path,
    build_args: &BTreeMap<String, String>,
) -> Result<Recipe, DockerfileError> {
    parse_dockerfile_for_image(text, label, context, build_args, &RunConfig::default())
}

/// [`parse_dockerfile`] on top of the base image's config: its `ENV` is
/// in scope for substitution and its working directory is where relative
/// `WORKDIR`s and `COPY` destinations start, as in Docker. Only `env` and
/// `workdir` of `image` are read.
pub fn parse_dockerfile_for_image(
    text: &str,
    label: &str,
    context: &Path,
    build_args: &BTreeMap<String, String>,
    image: &RunConfig,
) -> Result<Recipe, DockerfileError> {
    let (escape, lines) = logical_lines(text, label)?;
    let mut parser = Parser::new(label, context, build_args, escape, image);
    for line in &lines {
        parser.instruction(line)?;
    }
    if parser.recipe.base.is_none() {
        return Err(DockerfileError::NoFrom {
            label: label.to_owned(),
        });
    }
    Ok(parser.recipe)
}

/// One instruction with its continuation lines joined.
#[derive(Debug, PartialEq, Eq)]
struct Line {
    /// 1-based number of its first line.
    number: usize,
    text: String,
}

/// Reads the parser directives and joins continuation lines, dropping
/// comments and blank lines (also inside continuations, as BuildKit does).
fn logical_lines(text: &str, label: &str) -> Result<(char, Vec<Line>), DockerfileError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let raw: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let invalid = |number: usize, message: String| DockerfileError::Invalid {
        at: format!("{label}:{number}"),
        message,
    };

    let mut escape = '\\';
    let mut seen = Vec::new();
    let mut i = 0;
    while let Some((name, value)) = raw.get(i).and_then(|l| directive(l)) {
        if seen.contains(&name) {
            return Err(invalid(
                i + 1,
                format!("the {name} parser directive is given twice; keep one"),
            ));
        }
        match name.as_str() {
            "escape" => {
                escape = match value.as_str() {
                    "\\" => '\\',
                    "`" => '`',
                    _ => {
                        return Err(invalid(
                            i + 1,
                            format!("escape character {value:?} is not supported; use \\ or `"),
                        ));
                    }
                };
            }
            // The front end is always ours; BuildKit's checks are advisory.
            "syntax" | "check" => {}
            // Docker reads an unknown directive as a comment, which ends
            // the directives.
            _ => break,
        }
        seen.push(name);
        i += 1;
    }

    let mut lines = Vec::new();
    while i < raw.len() {
        let first = raw[i].trim_start();
        i += 1;
        if first.is_empty() || first.starts_with('#') {
            continue;
        }
        let number = i;
        let (part, mut more) = strip_continuation(first, escape);
        let mut joined = part.to_owned();
        while more && i < raw.len() {
            let next = raw[i];
            i += 1;
            let trimmed = next.trim_start();
            if trimmed.starts_with('#') || trimmed.is_empty() {
                continue;
            }
            let (part, again) = strip_continuation(next, escape);
            joined.push_str(part);
            more = again;
        }
        if !joined.trim().is_empty() {
            lines.push(Line {
                number,
                text: joined,
            });
        }
    }
    Ok((escape, lines))
}

/// `# name=value` at the top of the file: the name lower-cased.
fn directive(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix('#')?;
    let (name, value) = rest.split_once('=')?;
    let name = name.trim();
    let value = value.trim();
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric())
        && !value.is_empty();
    valid.then(|| (name.to_ascii_lowercase(), value.to_owned()))
}

/// The line without a trailing escape character (and blanks after it),
/// and whether it had one.
fn strip_continuation(line: &str, escape: char) -> (&str, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    match trimmed.strip_suffix(escape) {
        Some(rest) => (rest, true),
        None => (line, false),
    }
}

/// `["a", "b"]` as a list of strings; anything else is shell form.
fn json_array(args: &str) -> Option<Vec<String>> {
    let args = args.trim();
    if !(args.starts_with('[') && args.ends_with(']')) {
        return None;
    }
    serde_json::from_str(args).ok()
}

/// Leading `--name[=value]` words, and what follows them.
fn take_flags(mut args: &str) -> (Vec<(String, Option<String>)>, &str) {
    let mut flags = Vec::new();
    loop {
        args = args.trim_start();
        let Some(rest) = args.strip_prefix("--") else {
            break;
        };
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let word = &rest[..end];
        args = &rest[end..];
        if word.is_empty() {
            break;
        }
        match word.split_once('=') {
            Some((name, value)) => flags.push((name.to_ascii_lowercase(), Some(value.to_owned()))),
            None => flags.push((word.to_ascii_lowercase(), None)),
        }
    }
    (flags, args.trim_start())
}

/// The first whitespace-separated word and the rest.
fn first_word(args: &str) -> (&str, &str) {
    let args = args.trim_start();
    let end = args.find(char::is_whitespace).unwrap_or(args.len());
    (&args[..end], args[end..].trim_start())
}

/// Splits on blanks outside quotes, keeping quotes and escapes in the
/// words for the [`Lexer`] to interpret.
fn raw_words(args: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut chars = args.chars();
    while let Some(c) = chars.next() {
        match quote {
            None if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                continue;
            }
            None if c == '"' || c == '\'' => quote = Some(c),
            Some(q) if c == q => quote = None,
            _ => {}
        }
        word.push(c);
        if c == escape && quote != Some('\'') {
            word.extend(chars.next());
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// A `<<WORD` heredoc opener among the words of a `RUN`/`COPY`, as BuildKit
/// recognises them (`<<EOF`, `<<-EOF`, `2<<"EOF"`; not `<<<` or `1<<2`).
fn heredoc(args: &str) -> Option<String> {
    args.split_whitespace()
        .find(|word| {
            let rest = word.trim_start_matches(|c: char| c.is_ascii_digit());
            let Some(rest) = rest.strip_prefix("<<") else {
                return false;
            };
            let name = rest.strip_prefix('-').unwrap_or(rest);
            let name = name.trim_matches(['"', '\'']);
            !name.contains('<')
                && name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_alphabetic() || c == '_')
        })
        .map(str::to_owned)
}

/// `8000`, `8000/TCP`, `53/udp`, `7000-7002` as `N/proto` entries.
fn exposed_ports(spec: &str) -> Result<Vec<String>, String> {
    let bad =
        || format!("EXPOSE {spec:?} is not a port; write PORT or PORT/tcp, PORT/udp or PORT/sctp");
    let (ports, proto) = match spec.split_once('/') {
        Some((ports, proto)) => (ports, proto.to_ascii_lowercase()),
        None => (spec, "tcp".to_owned()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(bad());
    }
    let port = |s: &str| s.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(bad);
    let (low, high) = match ports.split_once('-') {
        Some((low, high)) => (port(low)?, port(high)?),
        None => (port(ports)?, port(ports)?),
    };
    if low > high {
        return Err(bad());
    }
    Ok((low..=high).map(|p| format!("{p}/{proto}")).collect())
}

/// A valid `STOPSIGNAL`: a number (kept as is) or a name, with or without
/// `SIG`, in any case, returned as `SIGNAME`.
fn stop_signal(value: &str) -> Option<String> {
    crate::recipe::signal_number(value)?;
    if value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(value.to_owned());
    }
    let upper = value.to_ascii_uppercase();
    Some(match upper.strip_prefix("SIG") {
        Some(_) => upper,
        None => format!("SIG{upper}"),
    })
}

/// Docker's word expansion: quotes, the escape character and `$VAR`,
/// `${VAR}`, `${VAR:-word}`, `${VAR-word}`, `${VAR:+word}`, `${VAR+word}`,
/// `${VAR:?message}`, `${VAR?message}`. Unset variables expand to nothing;
/// expanded values are not split again.
struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Lexer<'a> {
    fn new(text: &str, escape: char, lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self {
            chars: text.chars().collect(),
            pos: 0,
            escape,
            lookup,
        }
    }

    fn next(&mut self) -> Option<char> {
        let c = self.chars.get(self.pos).copied();
        self.pos += usize::from(c.is_some());
        c
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    /// The whole text as one word.
    fn word(mut self) -> Result<String, String> {
        Ok(self.scan(false, None)?.concat())
    }

    /// The text split into words at blanks outside quotes.
    fn words(mut self) -> Result<Vec<String>, String> {
        self.scan(true, None)
    }

    /// Scans to the end, or to an unquoted `stop` (consumed).
    fn scan(&mut self, split: bool, stop: Option<char>) -> Result<Vec<String>, String> {
        let mut words = Vec::new();
        let mut word = String::new();
        let mut in_word = false;
        loop {
            let Some(c) = self.next() else {
                if stop.is_some() {
                    return Err("a ${ has no closing }; close it".to_owned());
                }
                break;
            };
            if Some(c) == stop {
                break;
            }
            if split && c.is_whitespace() {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
                continue;
            }
            in_word = true;
            if c == self.escape {
                word.push(self.next().unwrap_or(c));
            } else if c == '\'' {
                loop {
                    match self.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => {
                            return Err("a single quote (') is not closed; close it or escape it"
                                .to_owned());
                        }
                    }
                }
            } else if c == '"' {
                self.double_quoted(&mut word)?;
            } else if c == '$' {
                let value = self.dollar()?;
                word.push_str(&value);
            } else {
                word.push(c);
            }
        }
        if in_word || !split {
            words.push(word);
        }
        Ok(words)
    }

    fn double_quoted(&mut self, word: &mut String) -> Result<(), String> {
        loop {
            match self.next() {
                None => {
                    return Err("a double quote (\") is not closed; close it or escape it".into());
                }
                Some('"') => return Ok(()),
                Some('$') => {
                    let value = self.dollar()?;
                    word.push_str(&value);
                }
                Some(c) if c == self.escape => match self.peek() {
                    Some(n) if n == '"' || n == '$' || n == self.escape => {
                        word.push(n);
                        self.pos += 1;
                    }
                    _ => word.push(c),
                },
                Some(c) => word.push(c),
            }
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self
            .peek()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        {
            name.push(c);
            self.pos += 1;
        }
        name
    }

    /// After a `$`.
    fn dollar(&mut self) -> Result<String, String> {
        match self.peek() {
            Some('{') => {
                self.pos += 1;
                self.braced()
            }
            Some(c) if c.is_ascii_digit() => {
                self.pos += 1;
                Ok((self.lookup)(&c.to_string()).unwrap_or_default())
            }
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                let name = self.name();
                Ok((self.lookup)(&name).unwrap_or_default())
            }
            _ => Ok("$".to_owned()),
        }
    }

    /// After a `${`.
    fn braced(&mut self) -> Result<String, String> {
        let name = self.name();
        if name.is_empty() {
            return Err("bad substitution: ${ must be followed by a variable name".to_owned());
        }
        let (colon, modifier) = match self.next() {
            Some('}') => return Ok((self.lookup)(&name).unwrap_or_default()),
            Some(':') => match self.next() {
                Some(m @ ('-' | '+' | '?')) => (true, m),
                _ => return Err(unsupported_substitution(&name)),
            },
            Some(m @ ('-' | '+' | '?')) => (false, m),
            Some(_) => return Err(unsupported_substitution(&name)),
            None => return Err("a ${ has no closing }; close it".to_owned()),
        };
        let word = self.scan(false, Some('}'))?.concat();
        let value = (self.lookup)(&name);
        let set = if colon {
            value.as_deref().is_some_and(|v| !v.is_empty())
        } else {
            value.is_some()
        };
        match (modifier, set) {
            ('-', true) | ('?', true) => Ok(value.unwrap_or_default()),
            ('-', false) | ('+', true) => Ok(word),
            ('+', false) => Ok(String::new()),
            _ if word.is_empty() => Err(format!(
                "{name} is not set; pass it with a build argument or give it a default"
            )),
            _ => Err(format!("{name}: {word}")),
        }
    }
}

fn unsupported_substitution(name: &str) -> String {
    format!(
        "this substitution of {name} is not supported; use ${{{name}}}, ${{{name}:-default}} \
         or ${{{name}:+alternative}}"
    )
}

/// Parser state as it walks the instructions.
struct Parser<'a> {
    label: &'a str,
    context: &'a Path,
    build_args: &'a BTreeMap<String, String>,
    escape: char,
    /// `ARG`s before `FROM` (with build arguments applied) and the
    /// automatic platform ones.
    meta_args: BTreeMap<String, Option<String>>,
    /// `ARG`s in scope after `FROM`, in declaration order.
    args: Vec<(String, Option<String>)>,
    /// The image's `ENV` and the Dockerfile's so far.
    env: RunConfig,
    workdir: String,
    /// Line number of the current instruction.
    number: usize,
    recipe: Recipe,
}

impl<'a> Parser<'a> {
    fn new(
        label: &'a str,
        context: &'a Path,
        build_args: &'a BTreeMap<String, String>,
        escape: char,
        image: &RunConfig,
    ) -> Self {
        let meta_args = PLATFORM_ARGS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Some((*v).to_owned())))
            .collect();
        Self {
            label,
            context,
            build_args,
            escape,
            meta_args,
            args: Vec::new(),
            env: RunConfig {
                env: image.env.clone(),
                ..RunConfig::default()
            },
            workdir: absolute("/", image.workdir.as_deref().unwrap_or("/")),
            number: 0,
            recipe: Recipe::default(),
        }
    }

    fn at(&self) -> String {
        format!("{}:{}", self.label, self.number)
    }

    fn invalid(&self, message: impl Into<String>) -> DockerfileError {
        DockerfileError::Invalid {
            at: self.at(),
            message: message.into(),
        }
    }

    fn unknown_flag(&self, instruction: &str, flag: &str) -> DockerfileError {
        DockerfileError::UnknownFlag {
            at: self.at(),
            instruction: instruction.to_owned(),
            flag: flag.to_owned(),
        }
    }

    /// A variable's value for substitution: `ENV` beats `ARG`; before
    /// `FROM` only the global `ARG`s exist.
    fn lookup(&self, name: &str) -> Option<String> {
        if self.recipe.base.is_none() {
            return self.meta_args.get(name).cloned().flatten();
        }
        if let Some((_, value)) = self.env.env.iter().find(|(k, _)| k == name) {
            return Some(value.clone());
        }
        self.args
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.clone())
    }

    fn expand_word(&self, text: &str) -> Result<String, DockerfileError> {
        let lookup = |name: &str| self.lookup(name);
        Lexer::new(text, self.escape, &lookup)
            .word()
            .map_err(|m| self.invalid(m))
    }

    fn expand_words(&self, text: &str) -> Result<Vec<String>, DockerfileError> {
        let lookup = |name: &str| self.lookup(name);
        Lexer::new(text, self.escape, &lookup)
            .words()
            .map_err(|m| self.invalid(m))
    }

    fn push(&mut self, step: Step, line: &Line) {
        self.recipe.steps.push(SourcedStep {
            step,
            origin: self.at(),
            text: line.text.trim().to_owned(),
            force: false,
        });
    }

    fn instruction(&mut self, line: &Line) -> Result<(), DockerfileError> {
        self.number = line.number;
        let (keyword, args) = first_word(&line.text);
        let name = keyword.to_ascii_uppercase();
        let known = matches!(
            name.as_str(),
            "FROM"
                | "ARG"
                | "RUN"
                | "CMD"
                | "ENTRYPOINT"
                | "COPY"
                | "ADD"
                | "ENV"
                | "WORKDIR"
                | "USER"
                | "EXPOSE"
                | "LABEL"
                | "MAINTAINER"
                | "STOPSIGNAL"
                | "HEALTHCHECK"
                | "SHELL"
                | "ONBUILD"
                | "VOLUME"
        );
        if !known {
            return Err(DockerfileError::UnknownInstruction {
                at: self.at(),
                instruction: keyword.to_owned(),
            });
        }
        if self.recipe.base.is_none() && name != "FROM" && name != "ARG" {
            return Err(DockerfileError::BeforeFrom {
                at: self.at(),
                instruction: name,
            });
        }
        match name.as_str() {
            "FROM" => self.from(args),
            "ARG" => self.arg(args),
            "RUN" => self.run(args, line),
            "CMD" => {
                self.recipe.cmd = Some(self.command_line(args, "CMD")?);
                Ok(())
            }
            "ENTRYPOINT" => {
                self.recipe.entrypoint = Some(self.command_line(args, "ENTRYPOINT")?);
                Ok(())
            }
            "COPY" | "ADD" => self.copy(&name, args, line),
            "ENV" => self.env(args, line),
            "WORKDIR" => self.workdir(args, line),
            "USER" => {
                let user = self.expand_word(args.trim())?;
                if user.is_empty() {
                    return Err(self.invalid("USER needs a user: USER NAME[:GROUP] or UID[:GID]"));
                }
                self.push(Step::User(user), line);
                Ok(())
            }
            "EXPOSE" => self.expose(args),
            "LABEL" => self.label_instruction(args),
            "MAINTAINER" => {
                let maintainer = args.trim();
                if maintainer.is_empty() {
                    return Err(self.invalid("MAINTAINER needs a name"));
                }
                self.recipe
                    .labels
                    .insert("maintainer".to_owned(), maintainer.to_owned());
                Ok(())
            }
            "STOPSIGNAL" => {
                let value = self.expand_word(args.trim())?;
                let signal = stop_signal(&value).ok_or_else(|| {
                    self.invalid(format!(
                        "STOPSIGNAL {value:?} is not a signal; use a name such as SIGTERM or \
                         a number from 1 to 64"
                    ))
                })?;
                self.recipe.stop_signal = Some(signal);
                Ok(())
            }
            "HEALTHCHECK" => self.healthcheck(args),
            _ => Err(DockerfileError::Unsupported {
                at: self.at(),
                hint: match name.as_str() {
                    "SHELL" => {
                        "RUN uses /bin/sh -c; call another shell in the command, e.g. \
                         RUN [\"/bin/bash\", \"-c\", \"...\"]"
                    }
                    "ONBUILD" => {
                        "triggers for later builds are not kept; put those steps in the \
                         Dockerfile that builds on this one"
                    }
                    _ => {
                        "remove it; attach a named volume to the sandbox for data that must \
                         outlive it"
                    }
                },
                instruction: name,
            }),
        }
    }

    fn from(&mut self, args: &str) -> Result<(), DockerfileError> {
        if self.recipe.base.is_some() {
            return Err(DockerfileError::MultiStage { at: self.at() });
        }
        let (flags, rest) = take_flags(args);
        for (flag, value) in flags {
            if flag != "platform" {
                return Err(self.unknown_flag("FROM", &flag));
            }
            let platform = self.expand_word(value.as_deref().unwrap_or(""))?;
            if !platform.eq_ignore_ascii_case(PLATFORM) {
                return Err(DockerfileError::Platform {
                    at: self.at(),
                    platform,
                });
            }
        }
        let words = self.expand_words(rest)?;
        let reference = match words.as_slice() {
            [reference] => reference,
            [reference, as_, _name] if as_.eq_ignore_ascii_case("as") => reference,
            _ => return Err(self.invalid("FROM takes an image and an optional AS NAME")),
        };
        if reference.is_empty() {
            return Err(self.invalid(
                "FROM names no image once its variables are substituted; pass the build \
                 argument or write the image name",
            ));
        }
        if reference.eq_ignore_ascii_case("scratch") {
            return Err(DockerfileError::Scratch { at: self.at() });
        }
        self.recipe.base = Some(Base::Image {
            reference: reference.clone(),
        });
        Ok(())
    }

    fn arg(&mut self, args: &str) -> Result<(), DockerfileError> {
        let words = raw_words(args, self.escape);
        if words.is_empty() {
            return Err(self.invalid("ARG needs a name: ARG NAME[=DEFAULT]"));
        }
        for word in words {
            let (name, default) = match word.split_once('=') {
                Some((name, default)) => (name, Some(self.expand_word(default)?)),
                None => (word.as_str(), None),
            };
            if name.is_empty() || name.contains(['$', '"', '\'']) {
                return Err(self.invalid(format!(
                    "ARG {word:?} has no valid name; write ARG NAME[=DEFAULT]"
                )));
            }
            let given = self.build_args.get(name).cloned();
            if self.recipe.base.is_none() {
                self.meta_args.insert(name.to_owned(), given.or(default));
                continue;
            }
            let value = given.or(default).or_else(|| {
                // A bare `ARG NAME` after FROM brings the global one in.
                self.meta_args.get(name).cloned().flatten()
            });
            match self.args.iter_mut().find(|(k, _)| k == name) {
                Some(entry) => entry.1 = value,
                None => self.args.push((name.to_owned(), value)),
            }
        }
        Ok(())
    }

    /// The `ARG`s a `RUN` sees, and the proxy build arguments.
    fn run_args(&self) -> Vec<(String, String)> {
        let mut args: Vec<(String, String)> = self
            .args
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
            .collect();
        for name in PROXY_ARGS {
            if let Some(value) = self.build_args.get(name)
                && !args.iter().any(|(k, _)| k == name)
            {
                args.push((name.to_owned(), value.clone()));
            }
        }
        args
    }

    fn run(&mut self, args: &str, line: &Line) -> Result<(), DockerfileError> {
        let (flags, rest) = take_flags(args);
        if let Some((flag, _)) = flags.first() {
            let hint = match flag.as_str() {
                "mount" => {
                    "build VMs have no cache or secret mounts; COPY what the step needs, and \
                     clean caches in the same RUN"
                }
                "network" => "build VMs always have the network; remove the option",
                "security" => "build steps run with the VM's ordinary privileges; remove it",
                _ => return Err(self.unknown_flag("RUN", flag)),
            };
            return Err(DockerfileError::RunOption {
                at: self.at(),
                option: flag.clone(),
                hint,
            });
        }
        let command = match json_array(rest) {
            Some(argv) if argv.is_empty() => {
                return Err(self.invalid("RUN [] has no command; give one"));
            }
            Some(argv) => CommandLine::Exec(argv),
            None => {
                if let Some(word) = heredoc(rest) {
                    return Err(DockerfileError::Heredoc {
                        at: self.at(),
                        word,
                    });
                }
                if rest.trim().is_empty() {
                    return Err(self.invalid("RUN needs a command"));
                }
                CommandLine::Shell(rest.to_owned())
            }
        };
        let build_args = self.run_args();
        self.push(
            Step::Run {
                command,
                user: None,
                build_args,
            },
            line,
        );
        Ok(())
    }

    /// A `CMD`/`ENTRYPOINT`/`HEALTHCHECK CMD` command, left unexpanded.
    fn command_line(&self, args: &str, instruction: &str) -> Result<CommandLine, DockerfileError> {
        if let Some(argv) = json_array(args) {
            return Ok(CommandLine::Exec(argv));
        }
        if args.trim().is_empty() {
            return Err(self.invalid(format!(
                "{instruction} needs a command: {instruction} [\"PROGRAM\", \"ARG\"...] or \
                 {instruction} COMMAND LINE"
            )));
        }
        Ok(CommandLine::Shell(args.to_owned()))
    }

    fn copy(&mut self, instruction: &str, args: &str, line: &Line) -> Result<(), DockerfileError> {
        let (flags, rest) = take_flags(args);
        if flags.iter().any(|(flag, _)| flag == "from") {
            return Err(DockerfileError::CopyFrom { at: self.at() });
        }
        let words = match json_array(rest) {
            Some(words) => words
                .iter()
                .map(|w| self.expand_word(w))
                .collect::<Result<Vec<_>, _>>()?,
            None => {
                if let Some(word) = heredoc(rest) {
                    return Err(DockerfileError::Heredoc {
                        at: self.at(),
                        word,
                    });
                }
                self.expand_words(rest)?
            }
        };
        let Some((dest, sources)) = words.split_last().filter(|(_, s)| !s.is_empty()) else {
            return Err(self.invalid(format!(
                "{instruction} needs at least one source and a destination: \
                 {instruction} SOURCE... DEST"
            )));
        };
        if instruction == "ADD" {
            self.check_add_sources(sources)?;
        }

        let mut owner = None;
        let mut mode = None;
        for (flag, value) in &flags {
            match (flag.as_str(), value) {
                ("chown", Some(value)) => {
                    let value = self.expand_word(value)?;
                    if value.is_empty() {
                        return Err(self.invalid("--chown needs USER[:GROUP]"));
                    }
                    owner = Some(value);
                }
                ("chmod", Some(value)) => {
                    let value = self.expand_word(value)?;
                    let parsed = u32::from_str_radix(&value, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777 && !value.is_empty());
                    mode = Some(parsed.ok_or_else(|| {
                        self.invalid(format!(
                            "--chmod={value} is not an octal mode; write it like --chmod=0644"
                        ))
                    })?);
                }
                // `--link` only changes how Docker stores layers.
                ("link", None) => {}
                ("link", Some(v)) if matches!(v.as_str(), "true" | "false") => {}
                _ => return Err(self.unknown_flag(instruction, flag)),
            }
        }

        let is_glob = |s: &String| s.contains(['*', '?', '[']);
        let dir = sources.len() > 1 || sources.iter().any(is_glob);
        let dest = self.copy_dest(dest, dir);
        self.push(
            Step::Copy {
                context: self.context.to_path_buf(),
                sources: sources.to_vec(),
                dest,
                owner,
                mode,
            },
            line,
        );
        Ok(())
    }

    /// `ADD` is `COPY` for local files that are not archives.
    fn check_add_sources(&self, sources: &[String]) -> Result<(), DockerfileError> {
        for source in sources {
            let lower = source.to_ascii_lowercase();
            if lower.contains("://") || lower.starts_with("git@") {
                return Err(DockerfileError::AddUrl {
                    at: self.at(),
                    url: source.clone(),
                });
            }
            if ARCHIVE_SUFFIXES.iter().any(|s| lower.ends_with(s)) {
                return Err(DockerfileError::AddArchive {
                    at: self.at(),
                    archive: source.clone(),
                });
            }
        }
        Ok(())
    }

    /// The absolute destination; a trailing `/` marks a directory (one
    /// written so, `.`, `..`, or one that takes several files).
    fn copy_dest(&self, dest: &str, dir: bool) -> String {
        let last = dest.rsplit('/').next().unwrap_or(dest);
        let dir = dir || dest.is_empty() || dest.ends_with('/') || last == "." || last == "..";
        let mut path = absolute(&self.workdir, dest);
        if dir && !path.ends_with('/') {
            path.push('/');
        }
        path
    }

    fn env(&mut self, args: &str, line: &Line) -> Result<(), DockerfileError> {
        let pairs = self.name_values(args, "ENV")?;
        for (key, value) in &pairs {
            self.env.set_env(key, value);
        }
        self.push(Step::Env(pairs), line);
        Ok(())
    }

    /// `NAME=VALUE ...`, or the old `NAME VALUE` form; all values are
    /// expanded with the variables as they were before the instruction.
    fn name_values(
        &self,
        args: &str,
        instruction: &str,
    ) -> Result<Vec<(String, String)>, DockerfileError> {
        let usage = format!("write {instruction} NAME=VALUE [NAME=VALUE...]");
        let words = raw_words(args, self.escape);
        let Some(first) = words.first() else {
            return Err(self.invalid(format!("{instruction} needs a name and a value; {usage}")));
        };
        if !first.contains('=') {
            let (name, value) = first_word(args);
            if value.is_empty() {
                return Err(self.invalid(format!("{instruction} {name} has no value; {usage}")));
            }
            return Ok(vec![(self.expand_word(name)?, self.expand_word(value)?)]);
        }
        words
            .iter()
            .map(|word| {
                let Some((name, value)) = word.split_once('=') else {
                    return Err(self.invalid(format!("{word:?} has no \"=\"; {usage}")));
                };
                let name = self.expand_word(name)?;
                if name.is_empty() {
                    return Err(self.invalid(format!("{word:?} has no name; {usage}")));
                }
                Ok((name, self.expand_word(value)?))
            })
            .collect()
    }

    fn workdir(&mut self, args: &str, line: &Line) -> Result<(), DockerfileError> {
        let dir = self.expand_word(args.trim())?;
        if dir.is_empty() {
            return Err(self.invalid("WORKDIR needs a directory: WORKDIR /PATH"));
        }
        self.workdir = absolute(&self.workdir, &dir);
        self.push(Step::Workdir(self.workdir.clone()), line);
        Ok(())
    }

    fn expose(&mut self, args: &str) -> Result<(), DockerfileError> {
        let specs = self.expand_words(args)?;
        if specs.is_empty() {
            return Err(self.invalid("EXPOSE needs a port: EXPOSE PORT[/PROTOCOL]..."));
        }
        for spec in specs {
            for port in exposed_ports(&spec).map_err(|m| self.invalid(m))? {
                if !self.recipe.exposed_ports.contains(&port) {
                    self.recipe.exposed_ports.push(port);
                }
            }
        }
        Ok(())
    }

    fn label_instruction(&mut self, args: &str) -> Result<(), DockerfileError> {
        for (key, value) in self.name_values(args, "LABEL")? {
            self.recipe.labels.insert(key, value);
        }
        Ok(())
    }

    fn healthcheck(&mut self, args: &str) -> Result<(), DockerfileError> {
        // Docker's --interval, --timeout, --start-period, --start-interval
        // and --retries drive its health monitor of running containers.
        // Hearth polls the ready command until it exits 0 before the
        // snapshot and watches no health afterwards, so they are accepted
        // and ignored.
        let (flags, rest) = take_flags(args);
        for (flag, _) in &flags {
            if !matches!(
                flag.as_str(),
                "interval" | "timeout" | "start-period" | "start-interval" | "retries"
            ) {
                return Err(self.unknown_flag("HEALTHCHECK", flag));
            }
        }
        let (kind, command) = first_word(rest);
        match kind.to_ascii_uppercase().as_str() {
            "NONE" if flags.is_empty() && command.is_empty() => {
                self.recipe.ready_cmd = None;
                Ok(())
            }
            "NONE" => Err(self.invalid("HEALTHCHECK NONE takes no options or arguments")),
            "CMD" => {
                self.recipe.ready_cmd = Some(self.command_line(command, "HEALTHCHECK CMD")?);
                Ok(())
            }
            _ => Err(self.invalid("HEALTHCHECK needs CMD COMMAND, or NONE")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn parse(text: &str) -> Result<Recipe, DockerfileError> {
        parse_dockerfile(text, "Dockerfile", Path::new("/ctx"), &BTreeMap::new())
    }

    fn parse_with(text: &str, args: &[(&str, &str)]) -> Result<Recipe, DockerfileError> {
        let args = args
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        parse_dockerfile(text, "Dockerfile", Path::new("/ctx"), &args)
    }

    fn ok(text: &str) -> Recipe {
        parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn steps(text: &str) -> Vec<Step> {
        ok(text).steps.into_iter().map(|s| s.step).collect()
    }

    fn err(text: &str) -> String {
        parse(text).expect_err("should fail").to_string()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn shell(s: &str) -> CommandLine {
        CommandLine::Shell(s.to_owned())
    }

    fn exec(argv: &[&str]) -> CommandLine {
        CommandLine::Exec(argv.iter().map(|s| (*s).to_owned()).collect())
    }

    fn run(command: CommandLine, build_args: &[(&str, &str)]) -> Step {
        Step::Run {
            command,
            user: None,
            build_args: pairs(build_args),
        }
    }

    fn copy(sources: &[&str], dest: &str) -> Step {
        Step::Copy {
            context: PathBuf::from("/ctx"),
            sources: sources.iter().map(|s| (*s).to_owned()).collect(),
            dest: dest.to_owned(),
            owner: None,
            mode: None,
        }
    }

    fn image(reference: &str) -> Option<Base> {
        Some(Base::Image {
            reference: reference.to_owned(),
        })
    }

    /// Substitutes `text` as one word with `vars` set.
    fn expand(text: &str, vars: &[(&str, &str)]) -> Result<String, String> {
        let lookup = |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        };
        Lexer::new(text, '\\', &lookup).word()
    }

    #[test]
    fn a_simple_dockerfile_becomes_a_recipe() {
        let recipe = ok("FROM python:3.12-slim\n\
             WORKDIR /app\n\
             COPY requirements.txt .\n\
             RUN pip install -r requirements.txt\n\
             COPY . .\n\
             EXPOSE 8000\n\
             CMD [\"python\", \"app.py\"]\n");
        assert_eq!(recipe.base, image("python:3.12-slim"));
        let got: Vec<_> = recipe.steps.iter().map(|s| s.step.clone()).collect();
        assert_eq!(
            got,
            [
                Step::Workdir("/app".into()),
                copy(&["requirements.txt"], "/app/"),
                run(shell("pip install -r requirements.txt"), &[]),
                copy(&["."], "/app/"),
            ]
        );
        let origins: Vec<_> = recipe.steps.iter().map(|s| s.origin.as_str()).collect();
        assert_eq!(
            origins,
            [
                "Dockerfile:2",
                "Dockerfile:3",
                "Dockerfile:4",
                "Dockerfile:5"
            ]
        );
        assert_eq!(recipe.steps[2].text, "RUN pip install -r requirements.txt");
        assert_eq!(recipe.exposed_ports, ["8000/tcp"]);
        assert_eq!(recipe.cmd, Some(exec(&["python", "app.py"])));
        assert_eq!(recipe.entrypoint, None);
        assert_eq!(recipe.start_cmd, None);
    }

    #[test]
    fn instructions_are_case_insensitive_and_comments_and_blanks_are_skipped() {
        let recipe = ok("# a comment\n\n   # indented comment\nfrom alpine\n\nrun echo hi\n");
        assert_eq!(recipe.base, image("alpine"));
        assert_eq!(recipe.steps[0].origin, "Dockerfile:6");
        assert_eq!(recipe.steps[0].step, run(shell("echo hi"), &[]));
    }

    #[test]
    fn continuations_join_lines_and_skip_comments_and_blank_lines_inside() {
        let text = "FROM alpine\r\n\
                    RUN apk add \\\r\n\
                    # the compiler\n\
                    \x20   gcc \\  \n\
                    \n\
                    \x20   make\n\
                    USER nobody\n";
        let recipe = ok(text);
        assert_eq!(
            recipe.steps[0].step,
            run(shell("apk add     gcc     make"), &[])
        );
        assert_eq!(recipe.steps[0].origin, "Dockerfile:2");
        assert_eq!(recipe.steps[1].origin, "Dockerfile:7");
        // A continuation on the last line ends the instruction.
        assert_eq!(steps("FROM a\nRUN true \\"), [run(shell("true "), &[])]);
    }

    #[test]
    fn escape_directive_switches_to_backtick() {
        let text = "# escape=`\n\
                    FROM alpine\n\
                    RUN echo C:\\dir `\n\
                    \x20 done\n\
                    ENV P=a`$b\n";
        assert_eq!(
            steps(text),
            [
                run(shell("echo C:\\dir   done"), &[]),
                Step::Env(pairs(&[("P", "a$b")])),
            ]
        );
        // The default escape after another directive and with spaces.
        assert_eq!(
            steps("# syntax=docker/dockerfile:1\n#  ESCAPE = \\\nFROM a\nENV A=\\$x\n"),
            [Step::Env(pairs(&[("A", "$x")]))]
        );
    }

    #[test]
    fn directives_stop_at_the_first_other_line() {
        // After a plain comment, `# escape=` is just a comment.
        let text = "# hello\n# escape=`\nFROM a\nRUN a \\\n b\n";
        assert_eq!(steps(text), [run(shell("a  b"), &[])]);
        let text = "\n# escape=`\nFROM a\nRUN a \\\n b\n";
        assert_eq!(steps(text), [run(shell("a  b"), &[])]);
    }

    #[test]
    fn bad_directives_are_errors() {
        assert_eq!(
            err("# escape=x\nFROM a\n"),
            "Dockerfile:1: escape character \"x\" is not supported; use \\ or `"
        );
        assert!(err("# escape=`\n# escape=\\\nFROM a\n").starts_with("Dockerfile:2: the escape"));
    }

    #[test]
    fn exec_form_is_json_and_invalid_json_falls_back_to_shell_form() {
        assert_eq!(
            steps("FROM a\nRUN [\"echo\", \"a b\", \"\\u00e9\"]\nRUN [not json]\nRUN ['single']\n"),
            [
                run(exec(&["echo", "a b", "é"]), &[]),
                run(shell("[not json]"), &[]),
                run(shell("['single']"), &[]),
            ]
        );
        assert_eq!(
            steps("FROM a\nRUN [\"a\", 1]\n"),
            [run(shell("[\"a\", 1]"), &[])]
        );
    }

    #[test]
    fn run_leaves_variables_to_the_shell_and_carries_args_in_scope() {
        let recipe = parse_with(
            "ARG GLOBAL=g\nFROM a\nARG V=1\nARG EMPTY\nARG GLOBAL\nENV E=2\nRUN echo $V ${E}\n",
            &[("UNUSED", "x"), ("https_proxy", "http://p:3128")],
        )
        .unwrap();
        assert_eq!(
            recipe.steps[1].step,
            run(
                shell("echo $V ${E}"),
                &[
                    ("V", "1"),
                    ("GLOBAL", "g"),
                    ("https_proxy", "http://p:3128")
                ]
            )
        );
    }

    #[test]
    fn run_options_and_heredocs_are_errors_naming_the_line() {
        assert_eq!(
            err("FROM a\nRUN --mount=type=cache,target=/root/.cache pip install x\n"),
            "Dockerfile:2: RUN --mount is not supported; build VMs have no cache or secret \
             mounts; COPY what the step needs, and clean caches in the same RUN"
        );
        assert!(
            err("FROM a\n\nRUN --network=none true\n").starts_with("Dockerfile:3: RUN --network")
        );
        assert!(err("FROM a\nRUN --security=insecure true\n").contains("RUN --security"));
        assert_eq!(
            err("FROM a\nRUN --frobnicate true\n"),
            "Dockerfile:2: RUN does not take --frobnicate; remove it"
        );
        for heredoc in [
            "RUN <<EOF",
            "RUN cat <<-EOT > x",
            "RUN python3 <<'PY'",
            "COPY <<EOF /x",
        ] {
            let message = err(&format!("FROM a\n{heredoc}\nhi\nEOF\n"));
            assert!(
                message.starts_with("Dockerfile:2: heredocs (<<"),
                "{message}"
            );
        }
        // Not heredocs: a here-string and a shift.
        assert_eq!(
            steps("FROM a\nRUN cat <<<hi && echo $((1<<2))\n"),
            [run(shell("cat <<<hi && echo $((1<<2))"), &[])]
        );
        assert!(err("FROM a\nRUN\n").contains("RUN needs a command"));
        assert!(err("FROM a\nRUN []\n").contains("RUN [] has no command"));
    }

    #[test]
    fn from_takes_args_declared_before_it() {
        let text =
            "ARG REGISTRY=docker.io\nARG TAG\nFROM ${REGISTRY}/library/python:${TAG:-3.12}\n";
        assert_eq!(ok(text).base, image("docker.io/library/python:3.12"));
        assert_eq!(
            parse_with(text, &[("TAG", "3.11"), ("REGISTRY", "ghcr.io")])
                .unwrap()
                .base,
            image("ghcr.io/library/python:3.11")
        );
        // Automatic platform args and --platform.
        assert_eq!(
            ok("FROM --platform=$BUILDPLATFORM busybox:${TARGETARCH}\n").base,
            image("busybox:amd64")
        );
        assert_eq!(ok("FROM alpine AS build\nRUN true\n").base, image("alpine"));
        assert_eq!(ok("FROM a@sha256:abc\n").base, image("a@sha256:abc"));
    }

    #[test]
    fn from_errors_name_the_line() {
        assert_eq!(
            err("FROM a\nRUN x\nFROM b\n"),
            "Dockerfile:3: a second FROM starts another stage, and multi-stage builds are not \
             supported; build the earlier stage as a template of its own and start FROM it"
        );
        assert_eq!(
            err("FROM scratch\n"),
            "Dockerfile:1: scratch images are not supported: start from an image or template"
        );
        assert_eq!(
            err("FROM --platform=linux/arm64 a\n"),
            "Dockerfile:1: platform \"linux/arm64\" is not supported; Hearth builds linux/amd64 \
             only, so drop --platform or set it to linux/amd64"
        );
        assert!(err("FROM $NOPE\n").contains("FROM names no image"));
        assert!(err("FROM a b\n").contains("FROM takes an image"));
        assert!(err("FROM --chown=1 a\n").contains("FROM does not take --chown"));
        assert_eq!(
            err("RUN true\nFROM a\n"),
            "Dockerfile:1: RUN comes before FROM; only ARG may precede FROM, so move it below"
        );
        assert_eq!(
            err("# nothing\nARG A\n"),
            "Dockerfile: there is no FROM instruction; start the Dockerfile with FROM IMAGE"
        );
        assert_eq!(err(""), err("\n\n"));
    }

    #[test]
    fn args_are_scoped_and_overridden_by_build_args() {
        let text = "ARG V=global\nFROM a\nWORKDIR /$V\nARG V\nWORKDIR $V\nARG W=${V}-w\n\
                    ARG V=stage\nWORKDIR /$W/$V\n";
        assert_eq!(
            steps(text),
            [
                Step::Workdir("/".into()),
                Step::Workdir("/global".into()),
                Step::Workdir("/global-w/stage".into()),
            ]
        );
        let recipe = parse_with(text, &[("V", "cli")]).unwrap();
        let got: Vec<_> = recipe.steps.into_iter().map(|s| s.step).collect();
        assert_eq!(
            got,
            [
                Step::Workdir("/".into()),
                Step::Workdir("/cli".into()),
                Step::Workdir("/cli-w/cli".into()),
            ]
        );
        assert_eq!(
            steps("FROM a\nARG A=1 B=\"two words\"\nRUN x\n"),
            [run(shell("x"), &[("A", "1"), ("B", "two words")])]
        );
        assert!(err("FROM a\nARG\n").contains("ARG needs a name"));
        assert!(err("FROM a\nARG =x\n").contains("has no valid name"));
    }

    #[test]
    fn env_takes_both_forms_quotes_and_escapes() {
        assert_eq!(
            steps(
                "FROM a\nENV A B  C\nENV X=1 Y=\"x y\" Z='$X' W=a\\ b\\\"c\nENV Q \"quoted $X\"\n"
            ),
            [
                Step::Env(pairs(&[("A", "B  C")])),
                Step::Env(pairs(&[
                    ("X", "1"),
                    ("Y", "x y"),
                    ("Z", "$X"),
                    ("W", "a b\"c")
                ])),
                Step::Env(pairs(&[("Q", "quoted 1")])),
            ]
        );
        assert!(err("FROM a\nENV A\n").contains("ENV A has no value"));
        assert!(err("FROM a\nENV A=1 B\n").contains("\"B\" has no \"=\""));
        assert!(err("FROM a\nENV\n").contains("ENV needs a name and a value"));
        assert!(err("FROM a\nENV A=\"open\n").contains("double quote"));
    }

    #[test]
    fn env_substitutes_with_the_values_before_the_instruction() {
        assert_eq!(
            steps("FROM a\nENV A=hello\nENV A=bye B=$A\nENV C=$A\n"),
            [
                Step::Env(pairs(&[("A", "hello")])),
                Step::Env(pairs(&[("A", "bye"), ("B", "hello")])),
                Step::Env(pairs(&[("C", "bye")])),
            ]
        );
        // ENV beats ARG of the same name.
        assert_eq!(
            steps("FROM a\nARG V=arg\nENV V=env\nWORKDIR /$V\n")[1],
            Step::Workdir("/env".into())
        );
    }

    #[test]
    fn the_image_config_seeds_env_and_workdir() {
        let config = RunConfig {
            env: pairs(&[("PATH", "/usr/bin:/bin")]),
            workdir: Some("/srv".into()),
            ..RunConfig::default()
        };
        let recipe = parse_dockerfile_for_image(
            "FROM a\nENV PATH=/opt/venv/bin:$PATH\nCOPY x .\nWORKDIR app\n",
            "Dockerfile",
            Path::new("/ctx"),
            &BTreeMap::new(),
            &config,
        )
        .unwrap();
        let got: Vec<_> = recipe.steps.into_iter().map(|s| s.step).collect();
        assert_eq!(
            got,
            [
                Step::Env(pairs(&[("PATH", "/opt/venv/bin:/usr/bin:/bin")])),
                copy(&["x"], "/srv/"),
                Step::Workdir("/srv/app".into()),
            ]
        );
        // Without it, $PATH is empty and paths start at /.
        assert_eq!(
            steps("FROM a\nENV PATH=/opt/venv/bin:$PATH\n"),
            [Step::Env(pairs(&[("PATH", "/opt/venv/bin:")]))]
        );
    }

    #[test]
    fn substitution_forms() {
        let vars = [("V", "val"), ("EMPTY", "")];
        let cases = [
            ("$V", "val"),
            ("${V}", "val"),
            ("a${V}b", "avalb"),
            ("$V_x", ""),
            ("${V}_x", "val_x"),
            ("${UNSET}", ""),
            ("${V:-w}", "val"),
            ("${UNSET:-w}", "w"),
            ("${EMPTY:-w}", "w"),
            ("${EMPTY-w}", ""),
            ("${UNSET-w}", "w"),
            ("${V:+w}", "w"),
            ("${EMPTY:+w}", ""),
            ("${EMPTY+w}", "w"),
            ("${UNSET+w}", ""),
            ("${UNSET:-${V}x}", "valx"),
            ("${UNSET:-a b}", "a b"),
            ("${UNSET:-\"}\"}", "}"),
            ("\\$V", "$V"),
            ("\\${V}", "${V}"),
            ("'$V'", "$V"),
            ("\"$V\"", "val"),
            ("\"\\$V\"", "$V"),
            ("\"a\\b\"", "a\\b"),
            ("$", "$"),
            ("a$ b", "a$ b"),
            ("$-", "$-"),
            ("$1x", "x"),
            ("${V:?missing}", "val"),
        ];
        for (text, want) in cases {
            assert_eq!(expand(text, &vars).as_deref(), Ok(want), "{text}");
        }
        for (text, message) in [
            ("${UNSET:?set it}", "UNSET: set it"),
            ("${EMPTY:?}", "EMPTY is not set"),
            ("${V", "no closing }"),
            ("${V:-x", "no closing }"),
            ("${}", "bad substitution"),
            ("${V#x}", "not supported"),
            ("${V:3}", "not supported"),
            ("'open", "single quote"),
        ] {
            let got = expand(text, &vars).expect_err(text);
            assert!(got.contains(message), "{text}: {got}");
        }
    }

    #[test]
    fn copy_resolves_dest_against_workdir() {
        assert_eq!(
            steps(
                "FROM a\nCOPY a /abs\nCOPY a rel\nWORKDIR /w\nCOPY a rel\nCOPY a sub/\nCOPY a .\n\
                 COPY a ./x/../y\nCOPY a ..\nCOPY a b /many\nCOPY *.py /glob\nCOPY a //x//\n"
            ),
            [
                copy(&["a"], "/abs"),
                copy(&["a"], "/rel"),
                Step::Workdir("/w".into()),
                copy(&["a"], "/w/rel"),
                copy(&["a"], "/w/sub/"),
                copy(&["a"], "/w/"),
                copy(&["a"], "/w/y"),
                copy(&["a"], "/"),
                copy(&["a", "b"], "/many/"),
                copy(&["*.py"], "/glob/"),
                copy(&["a"], "/x/"),
            ]
        );
    }

    #[test]
    fn copy_flags_json_form_and_substitution() {
        let recipe = parse_with(
            "FROM a\nARG U=app\nCOPY --chown=${U}:${U} --chmod=755 --link [\"my file\", \"$U\", \"/opt/$U/\"]\n\
             COPY --chmod=0644 \"a b\" c\\ d /x/\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            recipe.steps[0].step,
            Step::Copy {
                context: PathBuf::from("/ctx"),
                sources: vec!["my file".into(), "app".into()],
                dest: "/opt/app/".into(),
                owner: Some("app:app".into()),
                mode: Some(0o755),
            }
        );
        assert_eq!(
            recipe.steps[1].step,
            Step::Copy {
                context: PathBuf::from("/ctx"),
                sources: vec!["a b".into(), "c d".into()],
                dest: "/x/".into(),
                owner: None,
                mode: Some(0o644),
            }
        );
    }

    #[test]
    fn copy_errors() {
        assert_eq!(
            err("FROM a\nCOPY --from=build /app /app\n"),
            "Dockerfile:2: COPY --from needs another stage or image, which is not supported; \
             build that stage as a template of its own and start FROM it, or fetch the files in \
             a RUN step"
        );
        assert!(err("FROM a\nCOPY onlyone\n").contains("COPY needs at least one source"));
        assert!(err("FROM a\nCOPY\n").contains("COPY needs at least one source"));
        assert!(err("FROM a\nCOPY --chmod=u+x a /b\n").contains("--chmod=u+x is not an octal"));
        assert!(err("FROM a\nCOPY --chmod=17777 a /b\n").contains("not an octal"));
        assert!(err("FROM a\nCOPY --chown= a /b\n").contains("--chown needs"));
        assert!(err("FROM a\nCOPY --parents a /b\n").contains("COPY does not take --parents"));
    }

    #[test]
    fn add_is_copy_for_local_files_and_refuses_urls_and_archives() {
        assert_eq!(
            steps("FROM a\nADD --chown=1:1 a.txt /x/\n"),
            [Step::Copy {
                context: PathBuf::from("/ctx"),
                sources: vec!["a.txt".into()],
                dest: "/x/".into(),
                owner: Some("1:1".into()),
                mode: None,
            }]
        );
        assert_eq!(
            err("FROM a\nADD https://example.com/x.sh /x\n"),
            "Dockerfile:2: ADD from a URL is not supported; download it in a RUN step \
             (https://example.com/x.sh)"
        );
        for url in [
            "git@github.com:a/b.git",
            "https://github.com/a/b.git#main",
            "git://h/r",
        ] {
            assert!(err(&format!("FROM a\nADD {url} /x\n")).contains("ADD from a URL"));
        }
        for archive in [
            "a.tar",
            "b.TAR.GZ",
            "c.tgz",
            "d.tar.xz",
            "e.tar.bz2",
            "f.tar.zst",
            "*.tgz",
        ] {
            let message = err(&format!("FROM a\nADD {archive} /x/\n"));
            assert!(
                message.starts_with(&format!(
                    "Dockerfile:2: ADD would unpack the archive \"{archive}\""
                )),
                "{message}"
            );
            assert!(message.contains("COPY it and unpack it in a RUN step"));
        }
        // COPY never unpacks, so an archive is fine there.
        assert_eq!(steps("FROM a\nCOPY a.tgz /x\n"), [copy(&["a.tgz"], "/x")]);
        assert!(err("FROM a\nADD --checksum=sha256:00 a /x\n").contains("ADD does not take"));
    }

    #[test]
    fn workdir_user_and_labels() {
        let recipe = ok(
            "FROM a\nARG N=web\nWORKDIR app\nWORKDIR ../srv/./$N/\nUSER ${N}:staff\n\
             LABEL a=1 \"b.c\"=\"two words\" d='$N'\nLABEL legacy value here\nMAINTAINER Jo <j@x>\n",
        );
        let got: Vec<_> = recipe.steps.into_iter().map(|s| s.step).collect();
        assert_eq!(
            got,
            [
                Step::Workdir("/app".into()),
                Step::Workdir("/srv/web".into()),
                Step::User("web:staff".into()),
            ]
        );
        let labels: Vec<_> = recipe
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                ("a", "1"),
                ("b.c", "two words"),
                ("d", "$N"),
                ("legacy", "value here"),
                ("maintainer", "Jo <j@x>"),
            ]
        );
        assert!(err("FROM a\nWORKDIR\n").contains("WORKDIR needs a directory"));
        assert!(err("FROM a\nUSER $NOPE\n").contains("USER needs a user"));
        assert!(err("FROM a\nLABEL\n").contains("LABEL needs a name"));
    }

    #[test]
    fn expose_normalises_ports() {
        let recipe = ok("FROM a\nARG P=9000\nEXPOSE 8000 8000/tcp 53/UDP $P/sctp 7000-7002\n");
        assert_eq!(
            recipe.exposed_ports,
            [
                "8000/tcp",
                "53/udp",
                "9000/sctp",
                "7000/tcp",
                "7001/tcp",
                "7002/tcp"
            ]
        );
        for bad in ["http", "0", "70000", "80/icmp", "9-8", "80/"] {
            let message = err(&format!("FROM a\nEXPOSE {bad}\n"));
            assert!(message.contains("is not a port"), "{bad}: {message}");
        }
        assert!(err("FROM a\nEXPOSE\n").contains("EXPOSE needs a port"));
    }

    #[test]
    fn stopsignal_is_validated_and_normalised() {
        for (given, want) in [
            ("SIGTERM", "SIGTERM"),
            ("term", "SIGTERM"),
            ("SIGQUIT", "SIGQUIT"),
            ("9", "9"),
            ("SIGRTMIN+3", "SIGRTMIN+3"),
        ] {
            assert_eq!(
                ok(&format!("FROM a\nSTOPSIGNAL {given}\n"))
                    .stop_signal
                    .as_deref(),
                Some(want)
            );
        }
        assert_eq!(
            ok("FROM a\nARG S=INT\nSTOPSIGNAL SIG$S\n")
                .stop_signal
                .as_deref(),
            Some("SIGINT")
        );
        for bad in ["SIGFOO", "0", "65", "", "RTMIN+31"] {
            let message = err(&format!("FROM a\nSTOPSIGNAL {bad}\n"));
            assert!(message.contains("is not a signal"), "{bad}: {message}");
        }
    }

    #[test]
    fn healthcheck_becomes_the_ready_command() {
        assert_eq!(
            ok("FROM a\nHEALTHCHECK --interval=5s --retries=3 CMD curl -f http://localhost/ || exit 1\n")
                .ready_cmd,
            Some(shell("curl -f http://localhost/ || exit 1"))
        );
        assert_eq!(
            ok("FROM a\nhealthcheck cmd [\"pg_isready\"]\n").ready_cmd,
            Some(exec(&["pg_isready"]))
        );
        assert_eq!(
            ok("FROM a\nHEALTHCHECK CMD x\nHEALTHCHECK NONE\n").ready_cmd,
            None
        );
        assert!(err("FROM a\nHEALTHCHECK --interval=1s NONE\n").contains("takes no options"));
        assert!(err("FROM a\nHEALTHCHECK curl x\n").contains("needs CMD COMMAND, or NONE"));
        assert!(err("FROM a\nHEALTHCHECK CMD\n").contains("HEALTHCHECK CMD needs a command"));
        assert!(err("FROM a\nHEALTHCHECK --bogus=1 CMD x\n").contains("does not take --bogus"));
    }

    #[test]
    fn unsupported_and_unknown_instructions_name_the_line() {
        assert_eq!(
            err("FROM a\nSHELL [\"/bin/bash\", \"-c\"]\n"),
            "Dockerfile:2: SHELL is not supported; RUN uses /bin/sh -c; call another shell in \
             the command, e.g. RUN [\"/bin/bash\", \"-c\", \"...\"]"
        );
        assert!(
            err("FROM a\nONBUILD RUN x\n").starts_with("Dockerfile:2: ONBUILD is not supported")
        );
        assert!(err("FROM a\nvolume /data\n").starts_with("Dockerfile:2: VOLUME is not supported"));
        assert_eq!(
            err("FROM a\nRUNN x\n"),
            "Dockerfile:2: unknown instruction \"RUNN\"; check its spelling against the \
             Dockerfile reference"
        );
        assert!(err("FOO x\n").contains("unknown instruction \"FOO\""));
        let e = parse_dockerfile(
            "FROM a\nCOPY --from=x a b\n",
            "app/Dockerfile.dev",
            Path::new("."),
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("app/Dockerfile.dev:2: "));
    }

    #[test]
    fn cmd_and_entrypoint_are_recorded_last_one_wins() {
        let recipe = ok("FROM a\nCMD echo one\nCMD [\"two\"]\nENTRYPOINT [\"/e\"]\n");
        assert_eq!(recipe.cmd, Some(exec(&["two"])));
        assert_eq!(recipe.entrypoint, Some(exec(&["/e"])));
        let recipe = ok("FROM a\nENTRYPOINT exec nginx $X\nCMD []\n");
        assert_eq!(recipe.entrypoint, Some(shell("exec nginx $X")));
        assert_eq!(recipe.cmd, Some(exec(&[])));
        assert!(err("FROM a\nCMD\n").contains("CMD needs a command"));
        assert!(err("FROM a\nENTRYPOINT  \n").contains("ENTRYPOINT needs a command"));
    }

    /// Docker's table of ENTRYPOINT x CMD, on top of an image's config.
    #[test]
    fn start_command_combines_with_the_image_as_docker_does() {
        let start = |text: &str, image: &RunConfig| ok(text).start_command(image);
        let v = |argv: &[&str]| Some(argv.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        let bare = RunConfig::default();
        let python = RunConfig {
            entrypoint: vec![],
            cmd: vec!["python3".into()],
            ..RunConfig::default()
        };
        let nginx = RunConfig {
            entrypoint: vec!["/docker-entrypoint.sh".into()],
            cmd: vec!["nginx".into(), "-g".into(), "daemon off;".into()],
            ..RunConfig::default()
        };

        // Nothing set: the image's.
        assert_eq!(start("FROM a\n", &bare), None);
        assert_eq!(
            start("FROM a\n", &nginx),
            v(&["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"])
        );
        // CMD alone keeps the image's ENTRYPOINT.
        assert_eq!(start("FROM a\nCMD [\"app\"]\n", &python), v(&["app"]));
        assert_eq!(
            start("FROM a\nCMD [\"x\"]\n", &nginx),
            v(&["/docker-entrypoint.sh", "x"])
        );
        assert_eq!(
            start("FROM a\nCMD run $X\n", &bare),
            v(&["/bin/sh", "-c", "run $X"])
        );
        // ENTRYPOINT drops the image's CMD.
        assert_eq!(start("FROM a\nENTRYPOINT [\"/e\"]\n", &nginx), v(&["/e"]));
        // Exec ENTRYPOINT + CMD concatenate, in either order in the file.
        assert_eq!(
            start("FROM a\nENTRYPOINT [\"/e\", \"-v\"]\nCMD [\"c\"]\n", &nginx),
            v(&["/e", "-v", "c"])
        );
        assert_eq!(
            start("FROM a\nCMD [\"c\"]\nENTRYPOINT [\"/e\"]\n", &nginx),
            v(&["/e", "c"])
        );
        assert_eq!(
            start("FROM a\nENTRYPOINT [\"/e\"]\nCMD c d\n", &bare),
            v(&["/e", "/bin/sh", "-c", "c d"])
        );
        // Shell ENTRYPOINT ignores CMD.
        assert_eq!(
            start(
                "FROM a\nENTRYPOINT serve --port 1\nCMD [\"ignored\"]\n",
                &nginx
            ),
            v(&["/bin/sh", "-c", "serve --port 1"])
        );
        // Empty exec forms clear.
        assert_eq!(start("FROM a\nENTRYPOINT []\n", &nginx), None);
        assert_eq!(start("FROM a\nCMD []\n", &python), None);
        assert_eq!(
            start("FROM a\nENTRYPOINT []\nCMD [\"c\"]\n", &nginx),
            v(&["c"])
        );
        // An explicit start_cmd (E2B's startCmd) wins over everything.
        let mut recipe = ok("FROM a\nENTRYPOINT [\"/e\"]\n");
        recipe.start_cmd = Some(shell("s"));
        assert_eq!(recipe.start_command(&nginx), v(&["/bin/sh", "-c", "s"]));
    }

    #[test]
    fn helpers() {
        assert_eq!(absolute("/", "."), "/");
        assert_eq!(absolute("/a/b", "../../.."), "/");
        assert_eq!(absolute("/a", "b//c/"), "/a/b/c");
        assert_eq!(
            take_flags("--a=1 --B  --c=x=y rest --d"),
            (
                vec![
                    ("a".into(), Some("1".into())),
                    ("b".into(), None),
                    ("c".into(), Some("x=y".into())),
                ],
                "rest --d"
            )
        );
        assert_eq!(
            raw_words(r#"a="x y" b='p q' c=d\ e  "#, '\\'),
            [r#"a="x y""#, "b='p q'", r"c=d\ e"]
        );
        assert_eq!(heredoc("cat <<EOF"), Some("<<EOF".into()));
        assert_eq!(heredoc("a << EOF"), None);
        assert_eq!(
            logical_lines("FROM a\n\\\n", "D").unwrap().1,
            [Line {
                number: 1,
                text: "FROM a".into()
            }]
        );
    }
}
