//! Named volumes against real VMs: the stock Python SDK makes, mounts,
//! lists and removes them (`e2b/volume_drive.py`: data across a kill -9 of
//! the VMM, pause and resume, the next sandbox; one mount at a time; bad
//! input), and the CLI does the same from the shell. Needs root, the
//! kernel, the base template and `HEARTH_E2B_PYTHON`; CI runs it with
//! `--include-ignored`.

mod common;
#[path = "common/server.rs"]
mod sdk_server;

use std::process::Command;

use common::{assert_nothing_left, text};
use sdk_server::{Server, hearth_cli, hearth_ok, script, server_data_dir};

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn volumes_keep_data_across_sandboxes_and_are_mounted_once() {
    let python = std::env::var("HEARTH_E2B_PYTHON").expect(
        "HEARTH_E2B_PYTHON must name a Python with the e2b SDK installed; scripts/test sets it",
    );
    assert_nothing_left("before the test");
    let data = server_data_dir();
    let server = Server::start(data.path());
    let key = std::fs::read_to_string(data.path().join("api-key")).unwrap();
    let mut py = Command::new(python);
    py.arg(script("volume_drive.py"))
        .env("HEARTH_DATA_DIR", data.path());
    sdk_server::drive(py, &server, key.trim());

    // The CLI: create, list, mount, refuse to remove while mounted.
    let d = data.path();
    assert_eq!(
        hearth_ok(
            &server,
            d,
            &["volume", "create", "cli-vol", "--size", "64M"]
        )
        .trim(),
        "cli-vol"
    );
    let listed: serde_json::Value =
        serde_json::from_str(&hearth_ok(&server, d, &["volume", "list", "--json"])).unwrap();
    let volume = &listed.as_array().unwrap()[0];
    assert_eq!(volume["name"], "cli-vol", "{listed}");
    assert_eq!(volume["sizeBytes"], 64 << 20, "{listed}");
    let table = hearth_ok(&server, d, &["volume", "list"]);
    assert!(
        table.contains("cli-vol") && table.contains("64 MiB"),
        "{table}"
    );
    let id = hearth_ok(
        &server,
        d,
        &["sandbox", "create", "--volume", "cli-vol:/mnt/cli"],
    )
    .trim()
    .to_owned();
    let out = hearth_ok(
        &server,
        d,
        &[
            "sandbox",
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "echo from-cli > /mnt/cli/f && cat /mnt/cli/f",
        ],
    );
    assert_eq!(out.trim(), "from-cli");
    let table = hearth_ok(&server, d, &["volume", "list"]);
    assert!(table.contains(&id), "the list names the sandbox: {table}");
    let refused = hearth_cli(&server, d, &["volume", "rm", "cli-vol"]);
    assert!(!refused.status.success());
    let said = text(&refused.stderr);
    assert!(
        said.contains("mounted by sandbox") && said.contains(&id),
        "{said}"
    );
    let bad = hearth_cli(&server, d, &["sandbox", "create", "--volume", "cli-vol"]);
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("NAME:/PATH"),
        "{}",
        text(&bad.stderr)
    );
    hearth_ok(&server, d, &["sandbox", "kill", &id]);
    hearth_ok(&server, d, &["volume", "rm", "cli-vol"]);
    assert_eq!(
        hearth_ok(&server, d, &["volume", "list", "--json"]).trim(),
        "[]"
    );

    // `hearth sandbox run` (no server) mounts a volume as well; one that a
    // server's sandbox holds is refused by the image's lock.
    hearth_ok(
        &server,
        d,
        &["volume", "create", "run-vol", "--size", "32M"],
    );
    let local = hearth_ok(
        &server,
        d,
        &[
            "sandbox",
            "run",
            "--volume",
            "run-vol:/data",
            "--",
            "sh",
            "-c",
            "echo local > /data/f && cat /data/f",
        ],
    );
    assert_eq!(local.trim(), "local");
    let id = hearth_ok(&server, d, &["sandbox", "create", "--volume", "run-vol:/v"])
        .trim()
        .to_owned();
    let seen = hearth_ok(&server, d, &["sandbox", "exec", &id, "--", "cat", "/v/f"]);
    assert_eq!(
        seen.trim(),
        "local",
        "a server's sandbox sees what a local run wrote"
    );
    let busy = hearth_cli(
        &server,
        d,
        &["sandbox", "run", "--volume", "run-vol:/data", "--", "true"],
    );
    assert!(!busy.status.success());
    let said = text(&busy.stderr);
    assert!(said.contains("lock"), "{said}");
    hearth_ok(&server, d, &["sandbox", "kill", &id]);
    hearth_ok(&server, d, &["volume", "rm", "run-vol"]);

    server.stop();
    sdk_server::assert_no_sandbox_dirs(d);
    let left: Vec<_> = std::fs::read_dir(d.join("volumes"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "volume files left: {left:?}");
    assert_nothing_left("after the test");
}
