//! The stock `e2b` Python SDK (PyPI, version pinned in `scripts/test`)
//! drives a real sandbox's agent: commands, stdin, kill, PTY, files, a
//! 100 MiB round trip, and stress (100 MB of stdout with the agent's RSS
//! sampled, invalid UTF-8, 50 processes at once, a 10,000-entry listing,
//! kill of processes that ignore SIGTERM). The sandbox is booted through
//! `hearth-node`; the SDK reaches the agent at the slot address, as
//! `E2B_SANDBOX_URL` would point it at the sandbox proxy once the server
//! exists. Needs root, the kernel, the base template and `HEARTH_E2B_PYTHON`
//! (a Python with the SDK, which `scripts/test` prepares); CI runs it with
//! `--include-ignored`.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{assert_nothing_left, data_dir, text};
use hearth_node::{Layout, Node, NodeOptions, Sandbox, SandboxSpec};
use hearth_proto::agent::InitRequest;

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn stock_e2b_sdk_drives_the_agent() {
    let python = std::env::var("HEARTH_E2B_PYTHON").expect(
        "HEARTH_E2B_PYTHON must name a Python with the e2b SDK installed; scripts/test sets it",
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
            Ok(()) => drive(&python, &sandbox).await,
            Err(e) => Err(format!("sandbox did not become ready: {e}")),
        };
        sandbox.destroy().await.expect("sandbox is removed");
        outputs
    });
    assert_nothing_left("after the test");
    for output in outputs.unwrap() {
        let stdout = text(&output.stdout);
        for line in stdout.lines().filter(|l| l.starts_with("figure ")) {
            eprintln!("{line}");
        }
        assert!(
            output.status.success() && stdout.ends_with("all checks passed\n"),
            "SDK script failed ({})\nstdout:\n{stdout}\nstderr:\n{}",
            output.status,
            text(&output.stderr)
        );
    }
}

/// Runs the SDK script twice: the whole surface, then secure mode after the
/// host has set an access token through `POST /init`.
async fn drive(python: &str, sandbox: &Sandbox) -> Result<Vec<Output>, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2b/sdk_drive.py");
    let url = format!("http://{}", sandbox.agent().addr());
    let run = |extra: Option<&str>| {
        let mut cmd = tokio::process::Command::new(python);
        cmd.arg(&script).arg(&url).args(extra);
        async move {
            cmd.output()
                .await
                .map_err(|e| format!("cannot run {python}: {e}"))
        }
    };
    let open = run(None).await?;
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
    let secure = run(Some(token)).await?;
    Ok(vec![open, secure])
}
