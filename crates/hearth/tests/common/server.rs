//! A real `hearth server` for the SDK tests: started on a free port over a
//! data dir of its own, driven by SDK scripts, stopped with SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{data_dir, text};

/// The domain of sandbox host names (`<port>-<id>.<domain>`).
pub const DOMAIN: &str = "hearth.test";

/// A data dir of its own (catalog, key, sandboxes) sharing the built kernel,
/// templates and caches.
#[allow(dead_code)] // Not every test binary that includes this file uses it.
pub fn server_data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for shared in ["kernels", "templates", "cache"] {
        std::os::unix::fs::symlink(data_dir().join(shared), dir.path().join(shared)).unwrap();
    }
    dir
}

pub struct Server {
    child: Child,
    pub url: String,
    /// What it printed on stderr so far.
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// A server that kills its sandboxes when it stops.
    #[allow(dead_code)]
    pub fn start(data: &Path) -> Self {
        Self::spawn(
            Path::new(env!("CARGO_BIN_EXE_hearth")),
            data,
            &["--kill-on-exit"],
        )
    }

    /// A server that kills its sandboxes when it stops, with `extra`
    /// options.
    #[allow(dead_code)] // Not every test binary that includes this file uses it.
    pub fn start_with(data: &Path, extra: &[&str]) -> Self {
        let mut args = vec!["--kill-on-exit"];
        args.extend_from_slice(extra);
        Self::spawn(Path::new(env!("CARGO_BIN_EXE_hearth")), data, &args)
    }

    /// [`Server::start_with`] listening on `listen`.
    #[allow(dead_code)] // Not every test binary that includes this file uses it.
    pub fn start_on(data: &Path, listen: &str, extra: &[&str]) -> Self {
        let mut args = vec!["--kill-on-exit", "--listen", listen];
        args.extend_from_slice(extra);
        Self::spawn(Path::new(env!("CARGO_BIN_EXE_hearth")), data, &args)
    }

    /// A server run from `binary` that, as by default, leaves its
    /// sandboxes running when it stops, for the next one to adopt.
    #[allow(dead_code)] // Not every test binary that includes this file uses it.
    pub fn start_keeping(binary: &Path, data: &Path) -> Self {
        Self::spawn(binary, data, &[])
    }

    /// `hearth server` on a free local port unless `extra` names
    /// `--listen`.
    fn spawn(binary: &Path, data: &Path, extra: &[&str]) -> Self {
        let listen = if extra.contains(&"--listen") {
            &[][..]
        } else {
            &["--listen", "127.0.0.1:0"][..]
        };
        let mut args = vec!["server"];
        args.extend_from_slice(listen);
        args.extend_from_slice(&["--domain", DOMAIN, "--pool", "1"]);
        args.extend_from_slice(extra);
        Self::run(binary, data, &args, "hearth: listening on ")
    }

    /// `hearth ARGS` over `data`, once it printed `ready` followed by its
    /// URL (a cluster's `node` or `api`).
    #[allow(dead_code)] // Not every test binary that includes this file uses it.
    pub fn start_role(data: &Path, args: &[&str], ready: &str) -> Self {
        Self::run(Path::new(env!("CARGO_BIN_EXE_hearth")), data, args, ready)
    }

    fn run(binary: &Path, data: &Path, args: &[&str], ready: &str) -> Self {
        let mut child = Command::new(binary)
            .args(args)
            .env("HEARTH_DATA_DIR", data)
            .env("HEARTH_LOG", "info")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("hearth starts");
        let who = format!(
            "{}[{}]",
            args.iter()
                .find(|a| !a.starts_with('-'))
                .unwrap_or(&"hearth"),
            child.id()
        );
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let started = Instant::now();
        let log = Arc::new(Mutex::new(Vec::new()));
        let url = loop {
            let line = lines
                .next()
                .expect("the server printed where it listens")
                .unwrap();
            eprintln!("{who}: {line}");
            if let Some(url) = line.strip_prefix(ready) {
                break url.to_owned();
            }
            log.lock().unwrap().push(line);
            assert!(started.elapsed() < Duration::from_secs(300), "server start");
        };
        // Keep draining stderr so the server never blocks on it.
        let kept = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                eprintln!("{who}: {line}");
                kept.lock().unwrap().push(line);
            }
        });
        Self { child, url, log }
    }

    /// The first line it printed that contains `text`.
    #[allow(dead_code)] // Not every test binary that includes this file uses it.
    pub fn logged(&self, text: &str) -> Option<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(text))
            .cloned()
    }

    /// Its process id.
    #[allow(dead_code)] // Not every test binary that includes this file uses it.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: the server ends at once, with no shutdown of its own.
    #[allow(dead_code)] // Not every test binary that includes this file uses it.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then wait: the server kills its sandboxes first (or, one
    /// from [`Server::start_keeping`], leaves them running).
    pub fn stop(mut self) {
        let status = self.terminate();
        assert!(status.success(), "server exit: {status}");
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    /// A failed check must not leave the server and its VMs running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
        }
    }
}

/// Runs an SDK script (`script`, already given its program and arguments)
/// against `server` with E2B's three variables set, passes its `figure`
/// lines on, and asserts it ends with `all checks passed`; its stdout.
#[allow(dead_code)] // Not every test binary that includes this file uses it.
pub fn drive(mut script: Command, server: &Server, key: &str) -> String {
    let out = script
        .env("E2B_API_URL", &server.url)
        .env("E2B_SANDBOX_URL", &server.url)
        .env("E2B_API_KEY", key)
        .output()
        .expect("the SDK script runs");
    let stdout = text(&out.stdout);
    for line in stdout.lines().filter(|l| l.starts_with("figure ")) {
        eprintln!("{line}");
    }
    if !(out.status.success() && stdout.ends_with("all checks passed\n")) {
        // The whole output first, then a short account last: CI shows the
        // end of a failed test's output, and the server's log comes between.
        eprintln!(
            "SDK script {script:?}\nstdout:\n{stdout}\nstderr:\n{}",
            text(&out.stderr)
        );
        let name = script
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .find(|a| a.ends_with(".py") || a.ends_with(".cjs"))
            .unwrap_or_default();
        panic!(
            "SDK script {name} failed ({}): {}\nits last lines:\n{}\n{}",
            out.status,
            stdout
                .lines()
                .find(|l| l.starts_with("FAILED"))
                .unwrap_or("no check failed"),
            tail(&stdout, 5),
            tail(&text(&out.stderr), 15)
        );
    }
    stdout
}

/// Fails if a server on `data` left a sandbox directory behind.
#[allow(dead_code)] // Not every test binary that includes this file uses it.
pub fn assert_no_sandbox_dirs(data: &Path) {
    let left: Vec<_> = std::fs::read_dir(data.join("sandboxes")).unwrap().collect();
    assert!(left.is_empty(), "sandbox directories left: {left:?}");
}

/// The last `n` lines of `text`.
#[allow(dead_code)] // Only `drive` uses it.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `tests/e2b/NAME`.
#[allow(dead_code)] // Not every test binary that includes this file uses it.
pub fn script(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/e2b")
        .join(name)
}

/// `hearth ARGS` against `server`, with the key `server` wrote to `data`.
#[allow(dead_code)] // Not every test binary that includes this file uses it.
pub fn hearth_cli(server: &Server, data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(args)
        .env("HEARTH_DATA_DIR", data)
        .env("HEARTH_API_URL", &server.url)
        .env_remove("E2B_API_KEY")
        .output()
        .expect("hearth runs")
}

/// [`hearth_cli`] that must succeed; its stdout.
#[allow(dead_code)] // Not every test binary that includes this file uses it.
pub fn hearth_ok(server: &Server, data: &Path, args: &[&str]) -> String {
    let out = hearth_cli(server, data, args);
    assert!(
        out.status.success(),
        "hearth {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A local TCP address nothing listens on now.
#[allow(dead_code)] // Not every test binary that includes this file uses it.
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `GET path` over HTTP/1.0, with `X-API-Key` when given: the status and
/// the body, or why there was no answer.
#[allow(dead_code)] // Not every test binary that includes this file uses it.
pub fn http_get(addr: SocketAddr, path: &str, key: Option<&str>) -> std::io::Result<(u16, String)> {
    let headers: Vec<(&str, &str)> = key.map(|k| ("X-API-Key", k)).into_iter().collect();
    http(addr, "GET", path, &headers, None)
}

/// `METHOD path` over HTTP/1.0 with `headers` and a JSON `body`: the status
/// and the body, or why there was no answer.
#[allow(dead_code)] // Not every test binary that includes this file uses it.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    write!(stream, "{head}\r\n{}", body.unwrap_or(""))?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}
