//! The operator dashboard of a real `hearth server` in a real headless
//! Chromium: the login page and the 401 of a data route without a key,
//! then, driven by Playwright with the system's browser, log-in, a sandbox
//! the stock e2b SDK creates in the live table, a command in its terminal
//! (a PTY through the in-VM agent, its shell killed when the terminal
//! closes), a failed template build with its log, and a kill from the
//! page. Screenshots land in `<target>/<host triple>/test-artifacts/dashboard/`
//! (the path is printed). Needs root, the kernel,
//! the base template, `HEARTH_E2B_PYTHON` (with `playwright`) and
//! `chromium`; CI runs it with `--include-ignored`.

mod common;
#[path = "common/server.rs"]
mod sdk_server;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::assert_nothing_left;
use sdk_server::{Server, http_get, script, server_data_dir};

/// `GET path`: the status and the body.
fn get(addr: SocketAddr, path: &str, key: Option<&str>) -> (u16, String) {
    http_get(addr, path, key).expect("the server answers")
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn dashboard_in_a_headless_browser() {
    let python = std::env::var("HEARTH_E2B_PYTHON").expect(
        "HEARTH_E2B_PYTHON must name a Python with the e2b SDK and playwright installed; scripts/test sets it",
    );
    let chromium = std::env::var("HEARTH_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: install Debian's chromium (scripts/deps), or set HEARTH_CHROMIUM"
    );
    assert_nothing_left("before the test");
    let artifacts = artifact_dir();
    eprintln!("dashboard screenshots: {}", artifacts.display());

    let data = server_data_dir();
    let server = Server::start(data.path());
    let key = std::fs::read_to_string(data.path().join("api-key")).unwrap();
    let key = key.trim();
    let api: SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();

    let (status, page) = get(api, "/dashboard", None);
    assert_eq!(status, 200, "the page needs no key");
    assert!(page.contains("id=\"login-form\""), "the login page: {page}");
    assert!(
        !page.contains("sandboxID") && !page.contains(key),
        "the page embeds no data"
    );
    for path in ["/dashboard/api/node", "/v2/sandboxes", "/templates"] {
        let (status, _) = get(api, path, None);
        assert_eq!(status, 401, "{path} without a key");
    }
    let (status, node) = get(api, "/dashboard/api/node", Some(key));
    assert_eq!(status, 200, "{node}");
    assert!(node.contains("\"slotsCapacity\""), "{node}");
    let (status, _) = get(api, "/dashboard/terminal/nope", None);
    assert_eq!(status, 401, "the terminal without a key");

    let started = Instant::now();
    let mut py = Command::new(&python);
    py.arg(script("dashboard_drive.py"))
        .arg(&chromium)
        .arg(&artifacts);
    sdk_server::drive(py, &server, key);
    eprintln!(
        "figure dashboard_drive_s={:.1}",
        started.elapsed().as_secs_f64()
    );
    for shot in ["login.png", "table.png", "terminal.png"] {
        let path = artifacts.join(shot);
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        assert!(size > 1000, "{} was saved", path.display());
        eprintln!("screenshot: {}", path.display());
    }

    server.stop();
    assert_nothing_left("after the test");
}

/// `test-artifacts/dashboard` next to the target's `tmp` dir, emptied.
fn artifact_dir() -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target tmp dir is in the target dir");
    let dir = target.join("test-artifacts").join("dashboard");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
