//! The stock `e2b` Python SDK (PyPI, version pinned in `scripts/test`)
//! drives a real sandbox's agent: commands, stdin, kill, PTY, files, a
//! 100 MiB round trip, and stress (100 MB of stdout with the agent's RSS
//! sampled, invalid UTF-8, 50 processes at once, a 10,000-entry listing,
//! kill of processes that ignore SIGTERM). Then what envd 0.6.2 to 0.6.4
//! added (file metadata, `make_dir` of an existing directory, the events of
//! a written file on a watch with entries) through the async Python client
//! and the stock JS SDK too. Every script is told the envd version the
//! agent claims, as the server reports it. The sandbox is booted through
//! `hearth-node`; the SDKs reach the agent at the slot address, as
//! `E2B_SANDBOX_URL` would point them at the sandbox proxy. Needs root, the
//! kernel, the base template, `HEARTH_E2B_PYTHON` (a Python with the SDK)
//! and `HEARTH_E2B_JS` (a directory where `npm install e2b` ran), which
//! `scripts/test` prepares; CI runs it with `--include-ignored`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{assert_nothing_left, data_dir, text};
use hearth_node::{Layout, Node, NodeOptions, Sandbox, SandboxSpec};
use hearth_proto::agent::{ENVD_VERSION, InitRequest};
use tokio::process::Command;

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn stock_e2b_sdk_drives_the_agent() {
    let python = std::env::var("HEARTH_E2B_PYTHON").expect(
        "HEARTH_E2B_PYTHON must name a Python with the e2b SDK installed; scripts/test sets it",
    );
    let js = std::env::var("HEARTH_E2B_JS").expect(
        "HEARTH_E2B_JS must name a directory where `npm install e2b` ran; scripts/test sets it",
    );
    assert_nothing_left("before the test");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let outputs = runtime.block_on(async {
        let node = Node::open(
            Layout::new(data_dir(), "/run/hearth"),
            &NodeOptions::default(),
        )
        .expect("host is ready for sandboxes");
        let spec = SandboxSpec {
            template: node.template("base").expect("base template is built"),
            kernel: node.kernel().expect("kernel is built"),
            vcpus: 2,
            memory_mib: 512,
            boot_timeout: Duration::from_secs(120),
        };
        let mut sandbox = Sandbox::create(&node, &spec).await.expect("sandbox starts");
        let ready = sandbox
            .wait_ready(Duration::from_secs(60), InitRequest::default())
            .await;
        let outputs = match ready {
            Ok(()) => drive(&python, &js, &sandbox).await,
            Err(e) => Err(format!("sandbox did not become ready: {e}")),
        };
        sandbox.destroy().await.expect("sandbox is removed");
        outputs
    });
    assert_nothing_left("after the test");
    for (script, output) in outputs.unwrap() {
        let stdout = text(&output.stdout);
        for line in stdout.lines().filter(|l| l.starts_with("figure ")) {
            eprintln!("{line}");
        }
        assert!(
            output.status.success() && stdout.ends_with("all checks passed\n"),
            "SDK script {script} failed ({})\nstdout:\n{stdout}\nstderr:\n{}",
            output.status,
            text(&output.stderr)
        );
    }
}

/// Runs the SDK scripts: the whole surface with the Python SDK, what envd
/// 0.6.2 to 0.6.4 added with its async client and with the JS SDK, then
/// secure mode after the host has set an access token through `POST /init`.
async fn drive(
    python: &str,
    js: &str,
    sandbox: &Sandbox,
) -> Result<Vec<(&'static str, Output)>, String> {
    let url = format!("http://{}", sandbox.agent().addr());
    let python_script = |script: &str| {
        let mut cmd = Command::new(python);
        cmd.arg(script_path(script)).arg(&url);
        cmd
    };
    let mut node = Command::new("node");
    node.arg(script_path("agent_drive.cjs"))
        .arg(&url)
        .env("NODE_PATH", Path::new(js).join("node_modules"));
    let mut outputs = vec![
        ("sdk_drive.py", run(python_script("sdk_drive.py")).await?),
        (
            "sdk_drive_async.py",
            run(python_script("sdk_drive_async.py")).await?,
        ),
        ("agent_drive.cjs", run(node).await?),
    ];
    let token = "hearth-test-token-7f3a";
    let init = InitRequest {
        access_token: Some(token.to_owned()),
        ..InitRequest::default()
    };
    sandbox
        .agent()
        .init(&init)
        .await
        .map_err(|e| format!("setting the access token failed: {e}"))?;
    let mut secure = python_script("sdk_drive.py");
    secure.arg(token);
    outputs.push(("sdk_drive.py (secure)", run(secure).await?));
    Ok(outputs)
}

fn script_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/e2b")
        .join(name)
}

/// Runs an SDK script, telling it the envd version the agent claims.
async fn run(mut cmd: Command) -> Result<Output, String> {
    cmd.env("HEARTH_ENVD_VERSION", ENVD_VERSION)
        .output()
        .await
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.as_std().get_program()))
}
