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
#[path = "common/server.rs"]
mod sdk_server;

use std::path::Path;
use std::process::Command;

use common::{assert_nothing_left, data_dir};
use sdk_server::{Server, script, server_data_dir};

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

/// Runs a phase of the SDK script; its stdout.
fn drive(python: &str, server: &Server, key: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(python);
    cmd.arg(script("template_drive.py")).args(args);
    sdk_server::drive(cmd, server, key)
}

/// What each test starts from: the host to itself, no template of an
/// earlier failed run, a server on a data dir of its own.
struct Run {
    _serial: std::sync::MutexGuard<'static, ()>,
    data: tempfile::TempDir,
    server: Server,
    key: String,
    context: tempfile::TempDir,
}

impl Run {
    fn start() -> Self {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        assert_nothing_left("before the test");
        // A failed earlier run may have left its templates behind.
        for name in TEMPLATES {
            let _ = std::fs::remove_dir_all(data_dir().join("templates").join(name));
        }
        let data = server_data_dir();
        let server = Server::start(data.path());
        let key = std::fs::read_to_string(data.path().join("api-key")).unwrap();
        Run {
            _serial: serial,
            data,
            server,
            key,
            context: tempfile::tempdir().unwrap(),
        }
    }
}

fn assert_templates_gone() {
    for name in TEMPLATES {
        let dir = data_dir().join("templates").join(name);
        assert!(!dir.exists(), "{} is left", dir.display());
    }
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn stock_e2b_sdk_builds_templates_on_hearth_server() {
    let python = std::env::var("HEARTH_E2B_PYTHON").expect(
        "HEARTH_E2B_PYTHON must name a Python with the e2b SDK installed; scripts/test sets it",
    );
    let Run {
        _serial,
        data,
        server,
        key,
        context,
    } = Run::start();
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
    assert_templates_gone();
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
    let Run {
        _serial,
        data: _data,
        server,
        key,
        context,
    } = Run::start();
    let mut cmd = Command::new("node");
    cmd.arg(script("template_drive.cjs"))
        .arg(context.path())
        .env("NODE_PATH", Path::new(&sdk).join("node_modules"));
    sdk_server::drive(cmd, &server, key.trim());
    server.stop();
    assert_nothing_left("after the server run");
    assert_templates_gone();
}
