//! The stock `e2b` Python SDK's `Template()` builder against a real
//! `hearth server`: files uploaded to the URL the server hands out, a COPY
//! and a RUN step in build microVMs, a start command serving HTTP that a
//! sandbox answers on its first request through the proxy, a rebuild with
//! nothing changed from the cache, tags, a failing step named in the
//! SDK's `BuildException`, deletion; and a build the server stops during,
//! which leaves nothing behind and reads as interrupted after a restart.
//! The stock JS SDK (npm `e2b`) builds the same way. Needs root, the
//! kernel, the base template, `HEARTH_E2B_PYTHON` and `HEARTH_E2B_JS` (a
//! directory whose `node_modules` holds the JS SDK); CI runs these with
//! `--include-ignored`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_nothing_left, data_dir, text};

const DOMAIN: &str = "hearth.test";
/// The templates the script builds (in the shared templates directory).
const TEMPLATES: [&str; 5] = [
    "sdk-app",
    "sdk-fail",
    "sdk-slow",
    "sdk-js-app",
    "sdk-js-fail",
];

/// The tests of this file each run a server and count the host's VMs.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A data dir of its own (catalog, key, sandboxes) sharing the built kernel,
/// templates and caches.
fn server_data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for shared in ["kernels", "templates", "cache"] {
        std::os::unix::fs::symlink(data_dir().join(shared), dir.path().join(shared)).unwrap();
    }
    dir
}

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(data: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--domain",
                DOMAIN,
                "--pool",
                "1",
            ])
            .env("HEARTH_DATA_DIR", data)
            .env("HEARTH_LOG", "info")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("hearth server starts");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let started = Instant::now();
        let url = loop {
            let line = lines
                .next()
                .expect("the server printed where it listens")
                .unwrap();
            if let Some(url) = line.strip_prefix("hearth: listening on ") {
                break url.to_owned();
            }
            assert!(started.elapsed() < Duration::from_secs(300), "server start");
        };
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                eprintln!("server: {line}");
            }
        });
        Self { child, url }
    }

    /// SIGTERM, then wait: the server kills its sandboxes first.
    fn stop(mut self) {
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
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
        }
    }
}

/// Runs a phase of the SDK script; its stdout.
fn drive(python: &str, server: &Server, key: &str, args: &[&str]) -> String {
    let script: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2b/template_drive.py");
    let out = Command::new(python)
        .arg(&script)
        .args(args)
        .env("E2B_API_URL", &server.url)
        .env("E2B_SANDBOX_URL", &server.url)
        .env("E2B_API_KEY", key)
        .output()
        .expect("python runs");
    let stdout = text(&out.stdout);
    for line in stdout.lines().filter(|l| l.starts_with("figure ")) {
        eprintln!("{line}");
    }
    assert!(
        out.status.success() && stdout.ends_with("all checks passed\n"),
        "SDK script {args:?} failed ({})\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        text(&out.stderr)
    );
    stdout
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn stock_e2b_sdk_builds_templates_on_hearth_server() {
    let python = std::env::var("HEARTH_E2B_PYTHON").expect(
        "HEARTH_E2B_PYTHON must name a Python with the e2b SDK installed; scripts/test sets it",
    );
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert_nothing_left("before the test");
    // A failed earlier run may have left its templates behind.
    for name in TEMPLATES {
        let _ = std::fs::remove_dir_all(data_dir().join("templates").join(name));
    }
    let data = server_data_dir();
    let server = Server::start(data.path());
    let key = std::fs::read_to_string(data.path().join("api-key")).unwrap();
    let context = tempfile::tempdir().unwrap();
    let drive = |server: &Server, args: &[&str]| drive(&python, server, key.trim(), args);
    drive(&server, &["main", &context.path().to_string_lossy()]);
    let out = drive(&server, &["interrupt", &context.path().to_string_lossy()]);
    let build = out
        .lines()
        .find_map(|l| l.strip_prefix("building "))
        .expect("the interrupt phase prints the running build")
        .to_owned();
    server.stop();
    assert_nothing_left("after stopping the server during a build");

    let server = Server::start(data.path());
    drive(&server, &["restarted", &build]);
    server.stop();
    assert_nothing_left("after the second server run");
    for name in TEMPLATES {
        let dir = data_dir().join("templates").join(name);
        assert!(!dir.exists(), "{} is left", dir.display());
    }
    let contexts = data.path().join("build-contexts");
    let left: Vec<_> = std::fs::read_dir(&contexts)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "build contexts left: {left:?}");
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn stock_e2b_js_sdk_builds_templates_on_hearth_server() {
    let sdk = std::env::var("HEARTH_E2B_JS").expect(
        "HEARTH_E2B_JS must name a directory where `npm install e2b` ran; scripts/test sets it",
    );
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert_nothing_left("before the test");
    for name in TEMPLATES {
        let _ = std::fs::remove_dir_all(data_dir().join("templates").join(name));
    }
    let data = server_data_dir();
    let server = Server::start(data.path());
    let key = std::fs::read_to_string(data.path().join("api-key")).unwrap();
    let context = tempfile::tempdir().unwrap();
    let script: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2b/template_drive.cjs");
    let out = Command::new("node")
        .arg(&script)
        .arg(context.path())
        .env("NODE_PATH", Path::new(&sdk).join("node_modules"))
        .env("E2B_API_URL", &server.url)
        .env("E2B_SANDBOX_URL", &server.url)
        .env("E2B_API_KEY", key.trim())
        .output()
        .expect("node runs");
    let stdout = text(&out.stdout);
    for line in stdout.lines().filter(|l| l.starts_with("figure ")) {
        eprintln!("{line}");
    }
    assert!(
        out.status.success() && stdout.ends_with("all checks passed\n"),
        "JS SDK script failed ({})\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        text(&out.stderr)
    );
    server.stop();
    assert_nothing_left("after the server run");
    for name in TEMPLATES {
        let dir = data_dir().join("templates").join(name);
        assert!(!dir.exists(), "{} is left", dir.display());
    }
}
