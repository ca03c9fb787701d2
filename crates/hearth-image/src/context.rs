//! A build context: the files a `COPY` step reads, selected with Docker's
//! rules and `.dockerignore`, hashed for the step cache and packed as a tar
//! stream for the build VM.
//!
//! The same code serves a Dockerfile's context directory and E2B's build
//! API, where each `COPY` step's uploaded archive is unpacked with
//! [`unpack_upload`] into a directory that becomes that step's context.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

const IGNORE_FILE: &str = ".dockerignore";

/// Modification time of every tar member: 2000-01-01T00:00:00Z, so the
/// same files give the same bytes. Not 0: zip (Python wheels among others)
/// refuses timestamps before 1980.
const TAR_MTIME: u64 = 946_684_800;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Why files could not be selected, packed or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("COPY source {name:?} is outside the build context; copy only files inside it")]
    Outside { name: String },
    #[error(
        "COPY source {name:?} was not found in the build context (or .dockerignore excludes \
         it); check the path"
    )]
    NotFound { name: String },
    #[error("COPY source {name:?} is not a file, directory or symlink; remove it from the sources")]
    Special { name: String },
    #[error("COPY source {name:?} is not a valid pattern: {reason}; fix it or escape it with \\")]
    BadPattern { name: String, reason: String },
    #[error("{}:{line}: pattern {pattern:?} is not valid: {reason}; fix it", path.display())]
    BadIgnore {
        path: PathBuf,
        line: usize,
        pattern: String,
        reason: String,
    },
    #[error(
        "the file name {} is not UTF-8; rename it or exclude it in .dockerignore",
        path.display()
    )]
    NotUtf8 { path: PathBuf },
    #[error(
        "the uploaded archive's entry {name:?} {reason}; pack the files with paths relative to \
         one directory"
    )]
    UnsafeUpload { name: String, reason: &'static str },
    #[error("cannot unpack into {}: it is not empty; unpack into a fresh directory", path.display())]
    UploadTarget { path: PathBuf },
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ContextError {
    let path = path.to_owned();
    move |source| ContextError::Io {
        action,
        path,
        source,
    }
}

/// One piece of a glob pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Char(char),
    /// `?`: one character but `/`.
    One,
    /// `*`: any run of characters but `/`.
    Star,
    /// `**` (and `**/`) inside a `.dockerignore` pattern: nothing, or
    /// anything ending in `/`.
    Dirs,
    /// `**` at the end of a `.dockerignore` pattern: anything.
    Rest,
    /// `[...]`, `[^...]`, `[!...]`: one character but `/`.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// A compiled glob with Go's `filepath.Match` syntax, plus Docker's `**`
/// when `double_star` is set (`.dockerignore`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Glob(Vec<Token>);

impl Glob {
    fn new(pattern: &str, double_star: bool) -> Result<Self, String> {
        let mut tokens = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' if double_star && chars.peek() == Some(&'*') => {
                    chars.next();
                    if chars.peek() == Some(&'/') {
                        chars.next();
                    }
                    tokens.push(if chars.peek().is_none() {
                        Token::Rest
                    } else {
                        Token::Dirs
                    });
                }
                '*' => tokens.push(Token::Star),
                '?' => tokens.push(Token::One),
                '\\' => match chars.next() {
                    Some(c) => tokens.push(Token::Char(c)),
                    None => return Err("it ends with an escaping \\".to_owned()),
                },
                '[' => {
                    let negated = chars.next_if(|c| *c == '^' || *c == '!').is_some();
                    let mut ranges = Vec::new();
                    loop {
                        let low = match chars.next() {
                            None => return Err("a [ has no closing ]".to_owned()),
                            Some(']') if !ranges.is_empty() => break,
                            Some('\\') => chars
                                .next()
                                .ok_or_else(|| "a [ has no closing ]".to_owned())?,
                            Some(c) => c,
                        };
                        let high = if chars.next_if_eq(&'-').is_some() {
                            match chars.next() {
                                None => return Err("a [ has no closing ]".to_owned()),
                                Some('\\') => chars
                                    .next()
                                    .ok_or_else(|| "a [ has no closing ]".to_owned())?,
                                Some(c) => c,
                            }
                        } else {
                            low
                        };
                        if high < low {
                            return Err(format!("the range {low}-{high} is backwards"));
                        }
                        ranges.push((low, high));
                    }
                    tokens.push(Token::Class { negated, ranges });
                }
                c => tokens.push(Token::Char(c)),
            }
        }
        Ok(Self(tokens))
    }

    fn matches(&self, text: &str) -> bool {
        let chars: Vec<char> = text.chars().collect();
        // memo[t * (n + 1) + s]: tokens[t..] against chars[s..], once known.
        let mut memo = vec![None; (self.0.len() + 1) * (chars.len() + 1)];
        self.match_from(0, 0, &chars, &mut memo)
    }

    fn match_from(&self, t: usize, s: usize, chars: &[char], memo: &mut [Option<bool>]) -> bool {
        let key = t * (chars.len() + 1) + s;
        if let Some(known) = memo[key] {
            return known;
        }
        let result = match self.0.get(t) {
            None => s == chars.len(),
            Some(Token::Rest) => true,
            Some(Token::Star) => {
                let mut end = s;
                loop {
                    if self.match_from(t + 1, end, chars, memo) {
                        break true;
                    }
                    if end == chars.len() || chars[end] == '/' {
                        break false;
                    }
                    end += 1;
                }
            }
            Some(Token::Dirs) => {
                self.match_from(t + 1, s, chars, memo)
                    || (s..chars.len())
                        .filter(|&i| chars[i] == '/')
                        .any(|i| self.match_from(t + 1, i + 1, chars, memo))
            }
            Some(token) => {
                chars.get(s).is_some_and(|&c| match token {
                    Token::Char(want) => c == *want,
                    Token::One => c != '/',
                    Token::Class { negated, ranges } => {
                        c != '/' && ranges.iter().any(|(l, h)| (*l..=*h).contains(&c)) != *negated
                    }
                    _ => false,
                }) && self.match_from(t + 1, s + 1, chars, memo)
            }
        };
        memo[key] = Some(result);
        result
    }
}

/// Whether a source is a pattern rather than a path: an unescaped `*`,
/// `?` or `[`.
fn has_wildcards(source: &str) -> bool {
    let mut escaped = false;
    for c in source.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

/// Go's `filepath.Clean` on a slash-separated path.
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            ".." if rooted => {}
            part => parts.push(part),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct IgnorePattern {
    /// A `!` line: brings back what earlier lines excluded.
    exception: bool,
    glob: Glob,
}

/// The patterns of a `.dockerignore`, with Docker's semantics: Go globs
/// plus `**`, matched against paths relative to the context; a matching
/// directory excludes everything under it; later `!` lines re-include; the
/// last matching line wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ignore {
    patterns: Vec<IgnorePattern>,
}

impl Ignore {
    /// Excludes nothing.
    pub fn none() -> Self {
        Self::default()
    }

    /// Reads `<context>/.dockerignore`; none there excludes nothing.
    pub fn load(context: &Path) -> Result<Self, ContextError> {
        let path = context.join(IGNORE_FILE);
        let text = match fs::read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Self::none()),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        Self::parse(&text).map_err(|(line, pattern, reason)| ContextError::BadIgnore {
            path,
            line,
            pattern,
            reason,
        })
    }

    /// Parses `.dockerignore` text; an error gives the line, the pattern
    /// and what is wrong with it.
    fn parse(text: &str) -> Result<Self, (usize, String, String)> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for (index, line) in text.lines().enumerate() {
            // As Docker: a comment only when `#` is the very first byte.
            if line.starts_with('#') {
                continue;
            }
            let mut pattern = line.trim();
            let exception = pattern.starts_with('!');
            if exception {
                pattern = pattern[1..].trim();
            }
            if pattern.is_empty() {
                continue;
            }
            let mut cleaned = clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            let glob =
                Glob::new(&cleaned, true).map_err(|reason| (index + 1, line.to_owned(), reason))?;
            patterns.push(IgnorePattern { exception, glob });
        }
        Ok(Self { patterns })
    }

    /// Whether `path` (relative to the context, `/`-separated) is
    /// excluded, directly or through a parent directory.
    pub fn is_ignored(&self, path: &str) -> bool {
        let parents: Vec<&str> = path.match_indices('/').map(|(i, _)| &path[..i]).collect();
        let mut ignored = false;
        for pattern in &self.patterns {
            // Only a line that could change the answer is tried.
            if pattern.exception != ignored {
                continue;
            }
            if pattern.glob.matches(path) || parents.iter().any(|p| pattern.glob.matches(p)) {
                ignored = !pattern.exception;
            }
        }
        ignored
    }

    /// Whether an excluded directory may still hold included files.
    fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exception)
    }
}

/// What an [`Entry`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    /// Copied as a link, not followed.
    Symlink {
        target: PathBuf,
    },
}

/// One file, directory or symlink a `COPY` puts into the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Where it is read from.
    pub host: PathBuf,
    /// Where it goes: absolute and normalised.
    pub guest: String,
    pub kind: EntryKind,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Bytes, for files; 0 otherwise.
    pub size: u64,
}

/// What `COPY sources... dest` copies from `context`, with Docker's rules:
/// `sources` are paths or Go globs relative to the context (an absolute
/// one too); one naming a directory copies what the directory holds,
/// recursively, into `dest`; a file goes to `dest` itself, or into it when
/// `dest` ends with `/`, there are several sources or a glob. A symlink
/// named as a source is followed (within the context); symlinks met
/// inside directories are copied as links. Files the `ignore` excludes are
/// left out. Entries come sorted by guest path, the last source winning
/// where two give the same path; `dest` itself and its parents are left
/// for the extractor to create.
pub fn select(
    context: &Path,
    sources: &[String],
    dest: &str,
    ignore: &Ignore,
) -> Result<Vec<Entry>, ContextError> {
    let root = fs::canonicalize(context).map_err(io_err("open the build context", context))?;
    let guest_dest = clean(&format!("/{dest}"));
    let into_dir = dest.ends_with('/')
        || guest_dest == "/"
        || sources.len() > 1
        || sources.iter().any(|s| has_wildcards(s));
    let mut selection = Selection {
        root: &root,
        ignore,
        entries: BTreeMap::new(),
    };
    for source in sources {
        let rel = relative_source(source)?;
        if has_wildcards(source) {
            let glob = |part: &str| {
                Glob::new(part, false).map_err(|reason| ContextError::BadPattern {
                    name: source.clone(),
                    reason,
                })
            };
            let mut found = false;
            for path in glob_paths(&root, &rel, glob)? {
                found |= selection.add(&path, source, &guest_dest, into_dir, false)?;
            }
            if !found {
                return Err(ContextError::NotFound {
                    name: source.clone(),
                });
            }
        } else {
            let rel = rel
                .iter()
                .map(|p| unescape(p))
                .collect::<Vec<_>>()
                .join("/");
            selection.add(&rel, source, &guest_dest, into_dir, true)?;
        }
    }
    Ok(selection.entries.into_values().collect())
}

/// The source's components inside the context; `..` may not climb out.
fn relative_source(source: &str) -> Result<Vec<&str>, ContextError> {
    let mut parts = Vec::new();
    for part in source.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(ContextError::Outside {
                        name: source.to_owned(),
                    });
                }
            }
            part => parts.push(part),
        }
    }
    Ok(parts)
}

/// A path component with glob escapes removed.
fn unescape(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    let mut chars = part.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' {
            chars.next().unwrap_or(c)
        } else {
            c
        });
    }
    out
}

/// Paths (relative to `root`) matching a glob, component by component as
/// Go's `filepath.Glob` does, sorted.
fn glob_paths(
    root: &Path,
    parts: &[&str],
    glob: impl Fn(&str) -> Result<Glob, ContextError>,
) -> Result<Vec<String>, ContextError> {
    let mut current = vec![String::new()];
    for part in parts {
        let mut next = Vec::new();
        if has_wildcards(part) {
            let glob = glob(part)?;
            for dir in &current {
                let host = root.join(dir);
                if !host.is_dir() {
                    continue;
                }
                for name in sorted_names(&host)? {
                    if let Some(name) = name.to_str().filter(|n| glob.matches(n)) {
                        next.push(join_rel(dir, name));
                    }
                }
            }
        } else {
            let part = unescape(part);
            for dir in &current {
                let rel = join_rel(dir, &part);
                if fs::symlink_metadata(root.join(&rel)).is_ok() {
                    next.push(rel);
                }
            }
        }
        current = next;
    }
    current.sort();
    Ok(current)
}

fn join_rel(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

fn join_guest(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn sorted_names(dir: &Path) -> Result<Vec<std::ffi::OsString>, ContextError> {
    let mut names = fs::read_dir(dir)
        .and_then(|entries| {
            entries
                .map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<Vec<_>>>()
        })
        .map_err(io_err("list", dir))?;
    names.sort();
    Ok(names)
}

/// The entries found so far, by guest path (component order).
struct Selection<'a> {
    root: &'a Path,
    ignore: &'a Ignore,
    entries: BTreeMap<PathBuf, Entry>,
}

impl Selection<'_> {
    fn insert(&mut self, entry: Entry) {
        self.entries.insert(PathBuf::from(&entry.guest), entry);
    }

    /// Adds one source path (relative to the root); `required` when it was
    /// named rather than matched, so that its absence is an error. Returns
    /// whether it contributed.
    fn add(
        &mut self,
        rel: &str,
        name: &str,
        dest: &str,
        into_dir: bool,
        required: bool,
    ) -> Result<bool, ContextError> {
        let not_found = || ContextError::NotFound {
            name: name.to_owned(),
        };
        let named = self.root.join(rel);
        let real = match fs::canonicalize(&named) {
            Ok(real) => real,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found()),
            Err(e) => return Err(io_err("resolve", &named)(e)),
        };
        let Ok(inside) = real.strip_prefix(self.root) else {
            return Err(ContextError::Outside {
                name: name.to_owned(),
            });
        };
        let inside = utf8(inside)?.to_owned();
        let meta = fs::metadata(&real).map_err(io_err("read", &real))?;
        let ignored = !inside.is_empty() && self.ignore.is_ignored(&inside);

        if meta.is_dir() {
            if ignored && !self.ignore.has_exceptions() {
                return if required {
                    Err(not_found())
                } else {
                    Ok(false)
                };
            }
            let before = self.entries.len();
            self.walk(&real, &inside, dest)?;
            // Something was added, or the directory is simply empty.
            let added = !ignored || self.entries.len() > before;
            if !added && required {
                return Err(not_found());
            }
            return Ok(added);
        }
        if ignored {
            return if required {
                Err(not_found())
            } else {
                Ok(false)
            };
        }
        if !meta.is_file() {
            return Err(ContextError::Special {
                name: name.to_owned(),
            });
        }
        let guest = if into_dir {
            let base = rel.rsplit('/').next().unwrap_or(rel);
            join_guest(dest, base)
        } else {
            dest.to_owned()
        };
        self.insert(Entry {
            host: real,
            guest,
            kind: EntryKind::File,
            mode: meta.permissions().mode() & 0o7777,
            size: meta.len(),
        });
        Ok(true)
    }

    /// Adds what directory `dir` (at `rel` in the context) holds under
    /// `guest`; sockets, FIFOs and devices are skipped.
    fn walk(&mut self, dir: &Path, rel: &str, guest: &str) -> Result<(), ContextError> {
        for name in sorted_names(dir)? {
            let host = dir.join(&name);
            let name = utf8(Path::new(&name))?;
            let child_rel = join_rel(rel, name);
            let child_guest = join_guest(guest, name);
            let meta = fs::symlink_metadata(&host).map_err(io_err("read", &host))?;
            let ignored = self.ignore.is_ignored(&child_rel);
            let kind = meta.file_type();
            let mode = meta.permissions().mode() & 0o7777;
            if kind.is_dir() {
                if ignored && !self.ignore.has_exceptions() {
                    continue;
                }
                if !ignored {
                    self.insert(Entry {
                        host: host.clone(),
                        guest: child_guest.clone(),
                        kind: EntryKind::Dir,
                        mode,
                        size: 0,
                    });
                }
                self.walk(&host, &child_rel, &child_guest)?;
            } else if ignored {
                continue;
            } else if kind.is_file() {
                self.insert(Entry {
                    host,
                    guest: child_guest,
                    kind: EntryKind::File,
                    mode,
                    size: meta.len(),
                });
            } else if kind.is_symlink() {
                let target = fs::read_link(&host).map_err(io_err("read the link", &host))?;
                self.insert(Entry {
                    host,
                    guest: child_guest,
                    kind: EntryKind::Symlink { target },
                    mode: 0o777,
                    size: 0,
                });
            } else {
                tracing::debug!(path = %host.display(), "skipping a special file in the context");
            }
        }
        Ok(())
    }
}

fn utf8(path: &Path) -> Result<&str, ContextError> {
    path.to_str().ok_or_else(|| ContextError::NotUtf8 {
        path: path.to_owned(),
    })
}

/// SHA-256 (lower-case hex) of what the entries put into the image: each
/// one's guest path, kind, mode, link target and file contents; not where
/// they are read from. The step cache keys on it.
pub fn files_hash(entries: &[Entry]) -> io::Result<String> {
    fn field(hasher: &mut Sha256, bytes: &[u8]) {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    let mut hasher = Sha256::new();
    for entry in entries {
        field(&mut hasher, entry.guest.as_bytes());
        field(&mut hasher, format!("{:o}", entry.mode).as_bytes());
        match &entry.kind {
            EntryKind::Dir => field(&mut hasher, b"dir"),
            EntryKind::Symlink { target } => {
                field(&mut hasher, b"symlink");
                field(&mut hasher, target.as_os_str().as_bytes());
            }
            EntryKind::File => {
                field(&mut hasher, b"file");
                let file = File::open(&entry.host)?;
                let len = file.metadata()?.len();
                hasher.update(len.to_le_bytes());
                io::copy(&mut Exact::new(file, len), &mut hasher)?;
            }
        }
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]])
        .map(char::from)
        .collect()
}

/// Reads exactly `len` bytes, failing if the file got shorter since its
/// size was taken (a tar header already promised that size).
struct Exact<R> {
    inner: io::Take<R>,
}

impl<R: Read> Exact<R> {
    fn new(inner: R, len: u64) -> Self {
        Self {
            inner: inner.take(len),
        }
    }
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() && self.inner.limit() > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a file got shorter while it was being read",
            ));
        }
        Ok(n)
    }
}

/// Writes the entries as an uncompressed tar: members named by their
/// guest path without the leading `/`, owned by 0:0, with a fixed mtime so
/// that the stream depends only on the files. `mode_override` (`--chmod`)
/// replaces the mode of files and directories alike, as Docker's does;
/// symlinks are 0777. Ownership from `--chown` is for the extractor.
pub fn write_tar(entries: &[Entry], mode_override: Option<u32>, out: impl Write) -> io::Result<()> {
    let mut builder = tar::Builder::new(out);
    for entry in entries {
        let name = entry.guest.trim_start_matches('/');
        if name.is_empty() {
            continue;
        }
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(TAR_MTIME);
        header.set_mode(mode_override.unwrap_or(entry.mode));
        match &entry.kind {
            EntryKind::File => {
                let file = File::open(&entry.host)?;
                let len = file.metadata()?.len();
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(len);
                builder.append_data(&mut header, name, Exact::new(file, len))?;
            }
            EntryKind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                builder.append_data(&mut header, name, io::empty())?;
            }
            EntryKind::Symlink { target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                header.set_mode(0o777);
                builder.append_link(&mut header, name, target)?;
            }
        }
    }
    builder.into_inner()?.flush()
}

/// Unpacks an uploaded files archive (tar, gzipped or not: told by its
/// first bytes) into `dir`, created if needed and required to be empty,
/// to serve as a `COPY` context. Entries may not leave `dir`: absolute
/// paths and `..` are refused, nothing is written through a symlink, and
/// devices and FIFOs are refused. Modes are kept; owners are not.
pub fn unpack_upload(archive: &Path, dir: &Path) -> Result<(), ContextError> {
    let mut file = File::open(archive).map_err(io_err("open", archive))?;
    let mut magic = [0u8; 2];
    let gzipped = file.read_exact(&mut magic).is_ok() && magic == GZIP_MAGIC;
    file.rewind().map_err(io_err("read", archive))?;
    let reader: Box<dyn Read> = if gzipped {
        Box::new(flate2::read::GzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };

    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    if fs::read_dir(dir)
        .map_err(io_err("list", dir))?
        .next()
        .is_some()
    {
        return Err(ContextError::UploadTarget {
            path: dir.to_owned(),
        });
    }

    let mut tar = tar::Archive::new(reader);
    // Directory modes are set last, so read-only ones can still be filled.
    let mut dirs = Vec::new();
    for entry in tar.entries().map_err(io_err("read", archive))? {
        let mut entry = entry.map_err(io_err("read", archive))?;
        let raw = entry.path().map_err(io_err("read", archive))?.into_owned();
        let name = raw.to_string_lossy().into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            continue;
        }
        let rel = upload_path(&raw, &name)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let target = dir.join(&rel);
        make_parents(dir, &rel, &name)?;
        let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                clear_for(&target, &name)?;
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&target)
                    .map_err(io_err("create", &target))?;
                io::copy(&mut entry, &mut out).map_err(io_err("unpack", &target))?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(io_err("set the mode of", &target))?;
            }
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(meta) if meta.is_dir() => {}
                    Ok(_) => {
                        return Err(ContextError::UnsafeUpload {
                            name,
                            reason: "replaces a file or symlink with a directory",
                        });
                    }
                    Err(_) => fs::create_dir(&target).map_err(io_err("create", &target))?,
                }
                dirs.push((target, mode));
            }
            tar::EntryType::Symlink => {
                let link = entry.link_name().map_err(io_err("read", archive))?.ok_or(
                    ContextError::UnsafeUpload {
                        name: name.clone(),
                        reason: "is a symlink without a target",
                    },
                )?;
                clear_for(&target, &name)?;
                symlink(&link, &target).map_err(io_err("create the symlink", &target))?;
            }
            tar::EntryType::Link => {
                let link = entry.link_name().map_err(io_err("read", archive))?.ok_or(
                    ContextError::UnsafeUpload {
                        name: name.clone(),
                        reason: "is a hard link without a target",
                    },
                )?;
                let link = upload_path(&link, &name)?;
                let source = dir.join(&link);
                let regular = no_symlink_below(dir, &link)
                    && fs::symlink_metadata(&source).is_ok_and(|m| m.is_file());
                if !regular {
                    return Err(ContextError::UnsafeUpload {
                        name,
                        reason: "is a hard link to something other than an earlier file",
                    });
                }
                clear_for(&target, &name)?;
                fs::hard_link(&source, &target).map_err(io_err("link", &target))?;
            }
            _ => {
                return Err(ContextError::UnsafeUpload {
                    name,
                    reason: "is a device, FIFO or other special file",
                });
            }
        }
    }
    for (path, mode) in dirs.iter().rev() {
        fs::set_permissions(path, fs::Permissions::from_mode(*mode))
            .map_err(io_err("set the mode of", path))?;
    }
    Ok(())
}

/// An archive path as a relative path of plain components (empty for the
/// top directory itself).
fn upload_path(path: &Path, name: &str) -> Result<PathBuf, ContextError> {
    let mut rel = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(ContextError::UnsafeUpload {
                    name: name.to_owned(),
                    reason: "climbs out of the archive with ..",
                });
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ContextError::UnsafeUpload {
                    name: name.to_owned(),
                    reason: "is an absolute path",
                });
            }
        }
    }
    Ok(rel)
}

/// Whether every directory from `dir` down to `rel`'s parent is a real
/// directory (not a symlink), where it exists.
fn no_symlink_below(dir: &Path, rel: &Path) -> bool {
    let mut current = dir.to_owned();
    let parents = rel.parent().map(|p| p.components().collect::<Vec<_>>());
    parents.unwrap_or_default().into_iter().all(|part| {
        current.push(part);
        fs::symlink_metadata(&current).is_ok_and(|m| m.is_dir())
    })
}

/// Creates the missing parents of `rel` under `dir`, refusing to go
/// through a symlink or a file.
fn make_parents(dir: &Path, rel: &Path, name: &str) -> Result<(), ContextError> {
    let mut current = dir.to_owned();
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    for part in parent.components() {
        current.push(part);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(ContextError::UnsafeUpload {
                    name: name.to_owned(),
                    reason: "lies under a symlink or a file",
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&current).map_err(io_err("create", &current))?;
            }
            Err(e) => return Err(io_err("read", &current)(e)),
        }
    }
    Ok(())
}

/// Removes an earlier file or symlink at `target` (a later entry wins);
/// a directory there is an error.
fn clear_for(target: &Path, name: &str) -> Result<(), ContextError> {
    match fs::symlink_metadata(target) {
        Ok(meta) if meta.is_dir() => Err(ContextError::UnsafeUpload {
            name: name.to_owned(),
            reason: "replaces a directory",
        }),
        Ok(_) => fs::remove_file(target).map_err(io_err("replace", target)),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// A context directory with files at `paths` (a trailing `/` makes a
    /// directory), each file holding its own path.
    fn context(paths: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for path in paths {
            let full = dir.path().join(path);
            if path.ends_with('/') {
                fs::create_dir_all(&full).unwrap();
            } else {
                fs::create_dir_all(full.parent().unwrap()).unwrap();
                fs::write(&full, path).unwrap();
                fs::set_permissions(&full, fs::Permissions::from_mode(0o644)).unwrap();
            }
        }
        dir
    }

    fn sel(dir: &Path, sources: &[&str], dest: &str) -> Result<Vec<Entry>, ContextError> {
        let ignore = Ignore::load(dir)?;
        let sources: Vec<String> = sources.iter().map(|s| (*s).to_owned()).collect();
        select(dir, &sources, dest, &ignore)
    }

    fn guests(dir: &Path, sources: &[&str], dest: &str) -> Vec<String> {
        sel(dir, sources, dest)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|e| e.guest)
            .collect()
    }

    fn ignore(text: &str) -> Ignore {
        Ignore::parse(text).unwrap()
    }

    fn glob(pattern: &str, double_star: bool) -> Glob {
        Glob::new(pattern, double_star).unwrap()
    }

    #[test]
    fn globs_follow_go_match() {
        assert!(glob("*.py", false).matches("app.py"));
        assert!(glob("*.py", false).matches(".py"));
        assert!(!glob("*.py", false).matches("src/app.py"));
        assert!(glob("a?c", false).matches("abc"));
        assert!(!glob("a?c", false).matches("a/c"));
        assert!(glob("[a-c]x", false).matches("bx"));
        assert!(!glob("[^a-c]x", false).matches("bx"));
        assert!(glob("[!a-c]x", false).matches("dx"));
        assert!(glob("[]]", false).matches("]"));
        assert!(glob(r"\*", false).matches("*"));
        assert!(!glob(r"\*", false).matches("a"));
        assert!(glob("*", false).matches(""));
        assert!(Glob::new("[a", false).is_err());
        assert!(Glob::new("a\\", false).is_err());
        assert!(Glob::new("[z-a]", false).is_err());
        // `**` is special in .dockerignore only.
        assert!(!glob("**.py", false).matches("a/b.py"));
        assert!(glob("**/*.py", true).matches("b.py"));
        assert!(glob("**/*.py", true).matches("a/b/c.py"));
        assert!(glob("a/**/b", true).matches("a/b"));
        assert!(glob("a/**/b", true).matches("a/x/y/b"));
        assert!(!glob("a/**/b", true).matches("a/xb"));
        assert!(glob("a/**", true).matches("a/x/y"));
        assert!(!glob("a/**", true).matches("a"));
        assert!(glob("**", true).matches("anything/at/all"));
        // Many stars stay fast (memoised).
        assert!(!glob("*a*a*a*a*a*a*a*a*b", false).matches(&"a".repeat(200)));
    }

    #[test]
    fn clean_is_go_filepath_clean() {
        for (given, want) in [
            ("./a", "a"),
            ("a/", "a"),
            ("a//b/./c/..", "a/b"),
            ("/../x", "/x"),
            ("../x", "../x"),
            ("", "."),
            ("/", "/"),
        ] {
            assert_eq!(clean(given), want, "{given}");
        }
    }

    #[test]
    fn dockerignore_patterns_with_exceptions() {
        let rules = ignore(
            "# comment\n\
             *.log\n\
             !keep.log\n\
             /build/\n\
             ./tmp\n\
             **/node_modules\n\
             docs/**\n\
             **/*.bak\n\
             \x20 *.tmp  \n\
             \x20#not-a-comment\n\
             \n",
        );
        let ignored = [
            "a.log",
            "build",
            "build/x/y.o",
            "tmp/z",
            "node_modules",
            "node_modules/x/y.js",
            "web/app/node_modules/left-pad/index.js",
            "docs/a.md",
            "x.bak",
            "x/y.bak",
            "a.tmp",
            "#not-a-comment",
        ];
        let kept = [
            "keep.log",
            "sub/a.log",
            "src/main.rs",
            "docs",
            "buildx",
            "a.tmpx",
            "# comment",
        ];
        for path in ignored {
            assert!(rules.is_ignored(path), "{path} should be ignored");
        }
        for path in kept {
            assert!(!rules.is_ignored(path), "{path} should be kept");
        }

        let only_src = ignore("*\n!src\n!README.md\n");
        assert!(only_src.is_ignored("Dockerfile"));
        assert!(only_src.is_ignored("target/debug/x"));
        assert!(!only_src.is_ignored("src/a/b.rs"));
        assert!(!only_src.is_ignored("README.md"));

        let reinclude = ignore("build\n!build/keep\n");
        assert!(reinclude.is_ignored("build/x"));
        assert!(!reinclude.is_ignored("build/keep"));
        assert!(!reinclude.is_ignored("build/keep/deeper"));
        // The last matching line wins.
        let last = ignore("!a.txt\n*.txt\n");
        assert!(last.is_ignored("a.txt"));

        assert!(!Ignore::none().is_ignored("anything"));
    }

    #[test]
    fn a_bad_dockerignore_names_the_line() {
        let dir = context(&[]);
        fs::write(dir.path().join(".dockerignore"), "ok\n\n[oops\n").unwrap();
        let message = Ignore::load(dir.path()).unwrap_err().to_string();
        assert!(
            message.ends_with(
                ".dockerignore:3: pattern \"[oops\" is not valid: a [ has no closing ]; fix it"
            ),
            "{message}"
        );
        assert_eq!(Ignore::load(context(&[]).path()).unwrap(), Ignore::none());
    }

    #[test]
    fn a_file_goes_to_dest_or_into_it() {
        let dir = context(&["a.txt", "sub/b.txt"]);
        let d = dir.path();
        assert_eq!(guests(d, &["a.txt"], "/x"), ["/x"]);
        assert_eq!(guests(d, &["a.txt"], "/x/"), ["/x/a.txt"]);
        assert_eq!(guests(d, &["a.txt"], "/"), ["/a.txt"]);
        assert_eq!(guests(d, &["./sub/../a.txt"], "/x//y/./"), ["/x/y/a.txt"]);
        // Absolute sources are relative to the context, as in Docker.
        assert_eq!(guests(d, &["/sub/b.txt"], "/y"), ["/y"]);
        // Several sources: dest is a directory.
        assert_eq!(
            guests(d, &["a.txt", "sub/b.txt"], "/m"),
            ["/m/a.txt", "/m/b.txt"]
        );
        let entry = &sel(d, &["a.txt"], "/x").unwrap()[0];
        assert_eq!(entry.host, fs::canonicalize(d.join("a.txt")).unwrap());
        assert_eq!(entry.kind, EntryKind::File);
        assert_eq!(entry.mode, 0o644);
        assert_eq!(entry.size, 5);
    }

    #[test]
    fn a_directory_copies_its_contents_recursively() {
        let dir = context(&["app/main.py", "app/lib/util.py", "app/empty/", "top.txt"]);
        let d = dir.path();
        fs::set_permissions(d.join("app/lib"), fs::Permissions::from_mode(0o750)).unwrap();
        symlink("main.py", d.join("app/link")).unwrap();
        symlink("/usr/bin/python3", d.join("app/python")).unwrap();
        let entries = sel(d, &["app"], "/srv").unwrap();
        let got: Vec<_> = entries
            .iter()
            .map(|e| (e.guest.as_str(), e.kind.clone(), e.mode))
            .collect();
        let link = |t: &str| EntryKind::Symlink { target: t.into() };
        assert_eq!(
            got,
            [
                ("/srv/empty", EntryKind::Dir, 0o755),
                ("/srv/lib", EntryKind::Dir, 0o750),
                ("/srv/lib/util.py", EntryKind::File, 0o644),
                ("/srv/link", link("main.py"), 0o777),
                ("/srv/main.py", EntryKind::File, 0o644),
                ("/srv/python", link("/usr/bin/python3"), 0o777),
            ]
        );
        // The whole context, with and without a trailing slash.
        assert_eq!(guests(d, &["."], "/"), guests(d, &["./"], "/"));
        assert_eq!(
            guests(d, &["."], "/"),
            [
                "/app",
                "/app/empty",
                "/app/lib",
                "/app/lib/util.py",
                "/app/link",
                "/app/main.py",
                "/app/python",
                "/top.txt"
            ]
        );
        // An empty directory copies nothing, and that is no error.
        assert!(sel(d, &["app/empty"], "/e").unwrap().is_empty());
    }

    #[test]
    fn globs_match_within_one_level_and_copy_into_dest() {
        let dir = context(&[
            "a.py",
            "b.py",
            "c.txt",
            "pkg/d.py",
            "pkg/sub/e.py",
            "dir1/f.txt",
            "[x].txt",
        ]);
        let d = dir.path();
        assert_eq!(guests(d, &["*.py"], "/g"), ["/g/a.py", "/g/b.py"]);
        assert_eq!(guests(d, &["pkg/*.py"], "/g"), ["/g/d.py"]);
        assert_eq!(guests(d, &["*/*.py"], "/g"), ["/g/d.py"]);
        assert_eq!(guests(d, &["?.txt"], "/g"), ["/g/c.txt"]);
        // A matched directory copies its contents, like a named one.
        assert_eq!(guests(d, &["dir?"], "/g"), ["/g/f.txt"]);
        assert_eq!(guests(d, &[r"\[x\].txt"], "/l"), ["/l"]);
        assert!(matches!(
            sel(d, &["*.rs"], "/g"),
            Err(ContextError::NotFound { name }) if name == "*.rs"
        ));
        assert!(matches!(
            sel(d, &["[a"], "/g"),
            Err(ContextError::BadPattern { name, .. }) if name == "[a"
        ));
    }

    #[test]
    fn the_last_source_wins_a_shared_path() {
        let dir = context(&["one/x", "two/x"]);
        let entries = sel(dir.path(), &["one/x", "two/x"], "/d/").unwrap();
        assert_eq!(entries.len(), 1);
        assert!(entries[0].host.ends_with("two/x"));
    }

    #[test]
    fn escapes_and_missing_sources_are_errors_naming_them() {
        let dir = context(&["inside/a.txt"]);
        let outside = context(&["secret"]);
        let d = dir.path().join("inside");
        symlink(outside.path().join("secret"), d.join("abs-link")).unwrap();
        symlink("../../", d.join("up-link")).unwrap();
        symlink("a.txt", d.join("ok-link")).unwrap();
        for source in ["../x", "a/../../x", "abs-link", "up-link", "up-link/"] {
            let message = sel(&d, &[source], "/x").unwrap_err().to_string();
            assert_eq!(
                message,
                format!(
                    "COPY source {source:?} is outside the build context; copy only files \
                     inside it"
                )
            );
        }
        assert_eq!(
            sel(&d, &["nope.txt"], "/x").unwrap_err().to_string(),
            "COPY source \"nope.txt\" was not found in the build context (or .dockerignore \
             excludes it); check the path"
        );
        // A symlink named as a source is followed; its own name is kept.
        let entries = sel(&d, &["ok-link"], "/l/").unwrap();
        assert_eq!(entries[0].guest, "/l/ok-link");
        assert_eq!(entries[0].kind, EntryKind::File);
        assert_eq!(fs::read(&entries[0].host).unwrap(), b"inside/a.txt");
        // Symlinks inside a copied directory are not followed, even out.
        let all = guests(&d, &["."], "/");
        assert!(all.contains(&"/abs-link".to_owned()));
    }

    #[test]
    fn ignored_files_are_skipped_and_exceptions_kept() {
        let dir = context(&[
            ".dockerignore",
            "Dockerfile",
            "app.py",
            "debug.log",
            "keep.log",
            "secret/key",
            "cache/junk",
            "cache/keep/me",
            "src/node_modules/x.js",
            "src/main.js",
        ]);
        let d = dir.path();
        fs::write(
            d.join(".dockerignore"),
            "*.log\n!keep.log\nsecret\ncache\n!cache/keep\n**/node_modules\nDockerfile\n",
        )
        .unwrap();
        assert_eq!(
            guests(d, &["."], "/app/"),
            [
                "/app/.dockerignore",
                "/app/app.py",
                "/app/cache/keep",
                "/app/cache/keep/me",
                "/app/keep.log",
                "/app/src",
                "/app/src/main.js",
            ]
        );
        assert_eq!(guests(d, &["*.log"], "/l/"), ["/l/keep.log"]);
        for source in ["debug.log", "secret", "secret/key", "Dockerfile"] {
            assert!(
                matches!(sel(d, &[source], "/x"), Err(ContextError::NotFound { .. })),
                "{source}"
            );
        }
        // An ignored directory named outright gives what its exceptions keep.
        assert_eq!(guests(d, &["cache"], "/c"), ["/c/keep", "/c/keep/me"]);
        // Ignore::none copies everything.
        let sources = vec!["secret".to_owned()];
        assert_eq!(select(d, &sources, "/s", &Ignore::none()).unwrap().len(), 1);
    }

    fn hash(dir: &Path, sources: &[&str], dest: &str) -> String {
        files_hash(&sel(dir, sources, dest).unwrap()).unwrap()
    }

    #[test]
    fn files_hash_is_stable_and_sensitive() {
        let dir = context(&["a/x", "a/y", "b"]);
        let d = dir.path();
        symlink("x", d.join("a/l")).unwrap();
        let first = hash(d, &["a"], "/app");
        assert_eq!(first.len(), 64);
        assert!(
            first
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(hash(d, &["a"], "/app"), first);

        // The same files elsewhere hash the same: the host path is no input.
        let copy = context(&["a/x", "a/y", "b"]);
        symlink("x", copy.path().join("a/l")).unwrap();
        assert_eq!(hash(copy.path(), &["a"], "/app"), first);

        // Path.
        assert_ne!(hash(d, &["a"], "/srv"), first);
        // Content, even at the same size.
        fs::write(d.join("a/y"), "a/Y").unwrap();
        let content = hash(d, &["a"], "/app");
        assert_ne!(content, first);
        // Mode.
        fs::set_permissions(d.join("a/y"), fs::Permissions::from_mode(0o755)).unwrap();
        let mode = hash(d, &["a"], "/app");
        assert_ne!(mode, content);
        // Link target.
        fs::remove_file(d.join("a/l")).unwrap();
        symlink("y", d.join("a/l")).unwrap();
        assert_ne!(hash(d, &["a"], "/app"), mode);
        // Moving bytes between files changes it.
        let split = context(&["p", "q"]);
        fs::write(split.path().join("p"), "ab").unwrap();
        fs::write(split.path().join("q"), "c").unwrap();
        let before = hash(split.path(), &["."], "/");
        fs::write(split.path().join("p"), "a").unwrap();
        fs::write(split.path().join("q"), "bc").unwrap();
        assert_ne!(hash(split.path(), &["."], "/"), before);
        assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
    }

    /// (name, type, mode, uid, gid, mtime, contents or link target)
    type Member = (String, tar::EntryType, u32, u64, u64, u64, Vec<u8>);

    fn members(tar_bytes: &[u8]) -> Vec<Member> {
        let mut archive = tar::Archive::new(tar_bytes);
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                let header = entry.header().clone();
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                if let Some(target) = entry.link_name().unwrap() {
                    data = target.as_os_str().as_bytes().to_vec();
                }
                (
                    entry.path().unwrap().to_string_lossy().into_owned(),
                    header.entry_type(),
                    header.mode().unwrap(),
                    header.uid().unwrap(),
                    header.gid().unwrap(),
                    header.mtime().unwrap(),
                    data,
                )
            })
            .collect()
    }

    #[test]
    fn write_tar_round_trips_with_fixed_metadata() {
        let long = format!("{}/file.txt", "d".repeat(120));
        let dir = context(&["src/a.txt", "src/sub/", &format!("src/{long}")]);
        let d = dir.path();
        fs::set_permissions(d.join("src/a.txt"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("a.txt", d.join("src/ln")).unwrap();
        let entries = sel(d, &["src"], "/opt/app").unwrap();

        let mut bytes = Vec::new();
        write_tar(&entries, None, &mut bytes).unwrap();
        let got = members(&bytes);
        let long_dir = "d".repeat(120);
        let file = |name: &str, mode: u32, data: &str| {
            (
                name.to_owned(),
                tar::EntryType::Regular,
                mode,
                0,
                0,
                TAR_MTIME,
                data.as_bytes().to_vec(),
            )
        };
        let dir_member = |name: &str, mode: u32| {
            (
                name.to_owned(),
                tar::EntryType::Directory,
                mode,
                0,
                0,
                TAR_MTIME,
                Vec::new(),
            )
        };
        assert_eq!(
            got,
            [
                file("opt/app/a.txt", 0o755, "src/a.txt"),
                dir_member(&format!("opt/app/{long_dir}"), 0o755),
                file(&format!("opt/app/{long}"), 0o644, &format!("src/{long}")),
                (
                    "opt/app/ln".to_owned(),
                    tar::EntryType::Symlink,
                    0o777,
                    0,
                    0,
                    TAR_MTIME,
                    b"a.txt".to_vec()
                ),
                dir_member("opt/app/sub", 0o755),
            ]
        );

        // --chmod applies to files and directories, not symlinks.
        let mut chmod = Vec::new();
        write_tar(&entries, Some(0o600), &mut chmod).unwrap();
        let modes: Vec<_> = members(&chmod).into_iter().map(|m| (m.1, m.2)).collect();
        assert_eq!(
            modes,
            [
                (tar::EntryType::Regular, 0o600),
                (tar::EntryType::Directory, 0o600),
                (tar::EntryType::Regular, 0o600),
                (tar::EntryType::Symlink, 0o777),
                (tar::EntryType::Directory, 0o600),
            ]
        );

        // The same files give the same bytes, whatever their times.
        let other = context(&["src/a.txt", "src/sub/", &format!("src/{long}")]);
        fs::set_permissions(
            other.path().join("src/a.txt"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        symlink("a.txt", other.path().join("src/ln")).unwrap();
        let mut again = Vec::new();
        write_tar(
            &sel(other.path(), &["src"], "/opt/app").unwrap(),
            None,
            &mut again,
        )
        .unwrap();
        assert_eq!(again, bytes);
    }

    /// `(name, type, data or link target)`.
    type RawMember<'a> = (&'a str, tar::EntryType, &'a str);

    /// A tar holding `members`, names written raw so that hostile ones can
    /// be made.
    fn raw_tar(members: &[RawMember]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, kind, data) in members {
            let mut header = tar::Header::new_old();
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_entry_type(*kind);
            header.set_mode(if *kind == tar::EntryType::Directory {
                0o755
            } else {
                0o640
            });
            let body = if kind.is_symlink() || kind.is_hard_link() {
                header.as_old_mut().linkname[..data.len()].copy_from_slice(data.as_bytes());
                ""
            } else {
                data
            };
            header.set_size(body.len() as u64);
            header.set_cksum();
            builder.append(&header, body.as_bytes()).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn unpack(bytes: &[u8]) -> (tempfile::TempDir, PathBuf, Result<(), ContextError>) {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("upload");
        fs::write(&archive, bytes).unwrap();
        let dir = tmp.path().join("ctx");
        let result = unpack_upload(&archive, &dir);
        (tmp, dir, result)
    }

    #[test]
    fn unpack_upload_takes_gzip_or_plain_tar() {
        use tar::EntryType::{Directory, Link, Regular, Symlink};
        let tar = raw_tar(&[
            ("./", Directory, ""),
            ("app/", Directory, ""),
            ("app/main.py", Regular, "print(1)"),
            ("app/deep/er/x", Regular, "x"),
            ("app/link", Symlink, "main.py"),
            ("app/hard", Link, "app/main.py"),
            ("top", Regular, "first"),
            ("top", Regular, "second"),
        ]);
        for bytes in [tar.clone(), gzip(&tar)] {
            let (_tmp, dir, result) = unpack(&bytes);
            result.unwrap();
            assert_eq!(
                fs::read_to_string(dir.join("app/main.py")).unwrap(),
                "print(1)"
            );
            assert_eq!(fs::read_to_string(dir.join("app/deep/er/x")).unwrap(), "x");
            assert_eq!(
                fs::read_link(dir.join("app/link")).unwrap(),
                Path::new("main.py")
            );
            assert_eq!(
                fs::read_to_string(dir.join("app/hard")).unwrap(),
                "print(1)"
            );
            assert_eq!(fs::metadata(dir.join("app/hard")).unwrap().nlink(), 2);
            assert_eq!(fs::read_to_string(dir.join("top")).unwrap(), "second");
            let mode = fs::metadata(dir.join("app/main.py"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, 0o640);
            // It is a context COPY can read.
            let entries = select(&dir, &["app".to_owned()], "/srv/", &Ignore::none()).unwrap();
            assert_eq!(entries.len(), 6);
        }
    }

    #[test]
    fn unpack_upload_refuses_escapes() {
        use tar::EntryType::{Directory, Fifo, Link, Regular, Symlink};
        let cases: [(&[RawMember], &str); 7] = [
            (
                &[("../evil", Regular, "x")],
                "climbs out of the archive with ..",
            ),
            (
                &[("a/../../evil", Regular, "x")],
                "climbs out of the archive with ..",
            ),
            (&[("/evil", Regular, "x")], "is an absolute path"),
            (
                &[("l", Symlink, "PLACEHOLDER"), ("l/evil", Regular, "x")],
                "lies under a symlink or a file",
            ),
            (&[("h", Link, "/etc/passwd")], "is an absolute path"),
            (
                &[("h", Link, "missing")],
                "is a hard link to something other than an earlier file",
            ),
            (
                &[("p", Fifo, "")],
                "is a device, FIFO or other special file",
            ),
        ];
        let outside = tempfile::tempdir().unwrap();
        for (members, reason) in cases {
            let target = outside.path().to_str().unwrap().to_owned();
            let members: Vec<_> = members
                .iter()
                .map(|(n, k, d)| {
                    (
                        *n,
                        *k,
                        if *d == "PLACEHOLDER" {
                            target.as_str()
                        } else {
                            d
                        },
                    )
                })
                .collect();
            let (tmp, _dir, result) = unpack(&raw_tar(&members));
            let message = result.unwrap_err().to_string();
            assert!(message.contains(reason), "{message}");
            assert!(!tmp.path().join("evil").exists());
            assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
        }

        // A file replacing a symlink replaces the link, not its target.
        let victim = outside.path().join("victim");
        fs::write(&victim, "safe").unwrap();
        let (_tmp, dir, result) = unpack(&raw_tar(&[
            ("v", Symlink, victim.to_str().unwrap()),
            ("v", Regular, "overwritten?"),
        ]));
        result.unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "safe");
        assert_eq!(fs::read_to_string(dir.join("v")).unwrap(), "overwritten?");
        // A directory entry over a symlink is refused.
        let (_tmp, _dir, result) = unpack(&raw_tar(&[
            ("d", Symlink, outside.path().to_str().unwrap()),
            ("d/", Directory, ""),
        ]));
        assert!(
            result
                .unwrap_err()
                .to_string()
                .contains("replaces a file or symlink")
        );
    }

    #[test]
    fn unpack_upload_wants_a_fresh_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("upload.tar");
        fs::write(&archive, raw_tar(&[("a", tar::EntryType::Regular, "a")])).unwrap();
        let message = unpack_upload(&archive, tmp.path()).unwrap_err().to_string();
        assert!(
            message.contains("it is not empty; unpack into a fresh directory"),
            "{message}"
        );
        let missing = unpack_upload(&tmp.path().join("nope"), &tmp.path().join("x"));
        assert!(missing.unwrap_err().to_string().starts_with("cannot open "));
    }
}
