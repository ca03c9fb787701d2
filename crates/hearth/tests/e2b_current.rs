//! The current stock e2b SDKs (Python sync and async clients, JS) against a
//! real `hearth server`, for what they do beyond the core calls: timeout
//! policies with and without memory, auto-resume by traffic,
//! filesystem-only pauses that boot again, signed file URLs, a sandbox
//! killed under a streaming command, forks of up to 100 copies with
//! per-copy results, and the log, API-key and team-metric routes. Needs
//! root, the kernel, the base template, `HEARTH_E2B_PYTHON` and
//! `HEARTH_E2B_JS`; CI runs it with `--include-ignored`.

mod common;
#[path = "common/server.rs"]
mod sdk_server;

use std::path::Path;
use std::process::Command;

use common::assert_nothing_left;
use sdk_server::{Server, script, server_data_dir};

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn current_e2b_sdks_against_hearth_server() {
    let python = std::env::var("HEARTH_E2B_PYTHON").expect(
        "HEARTH_E2B_PYTHON must name a Python with the e2b SDK installed; scripts/test sets it",
    );
    let js = std::env::var("HEARTH_E2B_JS").expect(
        "HEARTH_E2B_JS must name a directory where `npm install e2b` ran; scripts/test sets it",
    );
    assert_nothing_left("before the test");
    let data = server_data_dir();
    // Room for a parent and its 100 copies, not for many more: the script
    // forks past it to see copies fail one by one.
    let server = Server::start_with(data.path(), &["--max-sandboxes", "110"]);
    let key = std::fs::read_to_string(data.path().join("api-key")).unwrap();
    let key = key.trim();

    let mut py = Command::new(&python);
    py.arg(script("current_drive.py"));
    sdk_server::drive(py, &server, key);
    let mut node = Command::new("node");
    node.arg(script("current_drive.cjs"))
        .env("NODE_PATH", Path::new(&js).join("node_modules"));
    sdk_server::drive(node, &server, key);

    server.stop();
    assert_nothing_left("after the test");
    let left: Vec<_> = std::fs::read_dir(data.path().join("sandboxes"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "sandbox directories left: {left:?}");
}
