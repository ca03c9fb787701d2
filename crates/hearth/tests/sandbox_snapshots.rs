//! Sandbox snapshots end to end, against a real `hearth server`: the stock
//! e2b SDK saves a running sandbox with its memory and starts five
//! sandboxes from it whose saved process still runs, saves one
//! filesystem-only, lists, refuses and deletes them; `hearth sandbox
//! snapshot` saves one that `hearth template list` shows. Nothing is left:
//! no VMM, no sandbox directory, no snapshot template. Needs root, the
//! kernel, the base template and `HEARTH_E2B_PYTHON`; CI runs it with
//! `--include-ignored`.

mod common;
#[path = "common/server.rs"]
mod sdk_server;

use std::process::Command;

use common::{assert_nothing_left, data_dir};
use sdk_server::{Server, hearth_ok, script, server_data_dir};

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn snapshots_of_running_sandboxes_start_new_ones() {
    let python = std::env::var("HEARTH_E2B_PYTHON").expect(
        "HEARTH_E2B_PYTHON must name a Python with the e2b SDK installed; scripts/test sets it",
    );
    assert_nothing_left("before the test");
    let data = server_data_dir();
    let server = Server::start(data.path());
    let key = std::fs::read_to_string(data.path().join("api-key")).unwrap();
    let key = key.trim();
    let templates = data_dir().join("templates");

    // The CLI: a sandbox saved under a name, listed with where it came from.
    let cli = |args: &[&str]| hearth_ok(&server, data.path(), args);
    let id = cli(&["sandbox", "create"]).trim().to_owned();
    let name = cli(&[
        "sandbox",
        "snapshot",
        &id,
        "--name",
        "cli-snap",
        "--filesystem-only",
    ]);
    assert_eq!(
        name.trim(),
        "cli-snap",
        "`hearth sandbox snapshot` prints the snapshot's id"
    );
    let listed = cli(&["template", "list"]);
    let row = listed
        .lines()
        .find(|l| l.starts_with("cli-snap "))
        .unwrap_or_else(|| panic!("`hearth template list` lists the snapshot:\n{listed}"));
    assert!(
        row.contains(&format!("snapshot of sandbox {id}")),
        "its source names the sandbox: {row}"
    );
    cli(&["sandbox", "kill", &id]);

    let mut py = Command::new(&python);
    py.arg(script("snapshot_drive.py"))
        .env("HEARTH_CLI_SNAPSHOT", "cli-snap");
    let out = sdk_server::drive(py, &server, key);
    server.stop();
    assert_nothing_left("after the test");
    sdk_server::assert_no_sandbox_dirs(data.path());
    let made: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("template "))
        .chain(["cli-snap"])
        .collect();
    assert_eq!(
        made.len(),
        3,
        "the script names the snapshots it made:\n{out}"
    );
    for name in made {
        assert!(
            !templates.join(name).exists(),
            "snapshot template {name} is left in {}",
            templates.display()
        );
    }
}
