//! Sandboxes restored from template snapshots, through `hearth-node`: env
//! vars, clock and identity after a restore; clones that share nothing they
//! write; pause, a restart of the node and resume with a process still
//! running; fork; and no leaks over many create/kill cycles. Real VMs, as
//! root; CI runs them with `--include-ignored`.

mod common;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{assert_nothing_left, data_dir};
use hearth_node::{Egress, Layout, Node, NodeOptions, Sandbox, SandboxSpec, ServiceStop};
use hearth_proto::agent::InitRequest;
use hearth_proto::process::process_event::{Event, data_event::Output};
use hearth_proto::process::{ProcessConfig, StartRequest};

/// The tests share the host's slots and count its VMM processes.
static SERIAL: Mutex<()> = Mutex::new(());

const READY: Duration = Duration::from_secs(60);

fn node() -> Node {
    Node::open(
        Layout::new(data_dir(), "/run/hearth"),
        &NodeOptions::default(),
    )
    .expect("host is ready for sandboxes")
}

fn spec(node: &Node) -> SandboxSpec {
    SandboxSpec {
        template: node.template("base").expect("base template is built"),
        kernel: node.kernel().expect("kernel is built"),
        vcpus: 2,
        memory_mib: 512,
        boot_timeout: Duration::from_secs(120),
    }
}

async fn ready_sandbox(node: &Node, init: InitRequest) -> Sandbox {
    let mut sandbox = Sandbox::create(node, &spec(node))
        .await
        .expect("sandbox restores");
    sandbox
        .wait_ready(READY, init)
        .await
        .expect("agent answers");
    sandbox
}

/// Runs `sh -c script` in the sandbox; its exit code and stdout.
async fn sh(sandbox: &Sandbox, script: &str) -> (i32, String) {
    let request = StartRequest {
        process: Some(ProcessConfig {
            cmd: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            envs: HashMap::new(),
            cwd: None,
        }),
        stdin: Some(false),
        ..StartRequest::default()
    };
    let mut stream = sandbox.agent().start(&request).await.expect("start");
    let mut stdout = Vec::new();
    let mut exit = None;
    while let Some(event) = stream.next().await.expect("event stream") {
        match event.event {
            Some(Event::Data(data)) => {
                if let Some(Output::Stdout(bytes)) = data.output {
                    stdout.extend_from_slice(&bytes);
                }
            }
            Some(Event::End(end)) => exit = Some(end.exit_code),
            _ => {}
        }
    }
    (
        exit.expect("an end event"),
        String::from_utf8_lossy(&stdout).into_owned(),
    )
}

fn host_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn with_runtime<F: Future<Output = ()>>(test: impl FnOnce() -> F) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert_nothing_left("before the test");
    tokio::runtime::Runtime::new().unwrap().block_on(test());
    assert_nothing_left("after the test");
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn restored_sandbox_has_its_env_clock_and_name() {
    with_runtime(|| async {
        let node = node();
        let init = InitRequest {
            env_vars: Some(HashMap::from([("GREETING".into(), "from init".into())])),
            ..InitRequest::default()
        };
        let sandbox = ready_sandbox(&node, init).await;
        let (code, out) = sh(&sandbox, "echo \"$GREETING\"; hostname; date +%s.%N").await;
        let host = host_now();
        assert_eq!(code, 0);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "from init");
        assert_eq!(lines[1], sandbox.id());
        let guest: f64 = lines[2].parse().expect("date prints seconds");
        assert!(
            (host - guest).abs() < 1.0,
            "guest clock {guest} is more than 1 s from the host's {host}"
        );
        sandbox.destroy().await.unwrap();
    });
}

/// A start command that logs each SIGUSR1 and ends on it unless told to
/// hold on.
const SERVICE: &str = "trap 'echo USR1 >> /tmp/stop.log; [ -e /tmp/hold ] || exit 0' USR1; \
                       while :; do sleep 0.2; done";

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn a_start_command_gets_its_stop_signal_before_the_vm_stops() {
    with_runtime(|| async {
        let node = node();
        // The base's disk with a start command and a STOPSIGNAL; its own
        // directory holds its snapshot.
        let dir = tempfile::tempdir().unwrap();
        let mut template = node.template("base").expect("base template is built");
        template.name = "stopsignal".into();
        template.dir = dir.path().to_owned();
        template.run.start_cmd = Some(vec!["/bin/sh".into(), "-c".into(), SERVICE.into()]);
        template.run.config.stop_signal = Some("SIGUSR1".into());
        let spec = SandboxSpec {
            template,
            ..spec(&node)
        };
        let mut sandbox = Sandbox::create(&node, &spec).await.expect("restores");
        sandbox
            .wait_ready(READY, InitRequest::default())
            .await
            .expect("agent answers");

        // Told to hold on, it gets the signal and keeps running.
        assert_eq!(sh(&sandbox, "touch /tmp/hold").await.0, 0);
        let held = sandbox.stop_service(Duration::from_millis(800)).await;
        assert_eq!(held.unwrap(), ServiceStop::StillRunning);
        assert_eq!(sh(&sandbox, "cat /tmp/stop.log").await.1, "USR1\n");

        assert_eq!(sh(&sandbox, "rm /tmp/hold").await.0, 0);
        let stopped = sandbox.stop_service(Duration::from_secs(20)).await;
        assert_eq!(stopped.unwrap(), ServiceStop::Exited);
        assert_eq!(sh(&sandbox, "cat /tmp/stop.log").await.1, "USR1\nUSR1\n");
        let (_, left) = sh(&sandbox, "pgrep -x sleep || echo none").await;
        assert_eq!(left, "none\n");
        // Nothing left to stop.
        let again = sandbox.stop_service(Duration::from_secs(1)).await;
        assert_eq!(again.unwrap(), ServiceStop::Exited);
        sandbox.destroy().await.unwrap();
    });
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn clones_share_no_writes_and_no_random_state() {
    with_runtime(|| async {
        let node = node();
        let a = ready_sandbox(&node, InitRequest::default()).await;
        let b = ready_sandbox(&node, InitRequest::default()).await;
        assert_ne!(a.id(), b.id());
        // Disk (the root filesystem) and memory (tmpfs under /dev/shm).
        let (code, _) = sh(&a, "echo a > /home/user/mark && echo a > /dev/shm/mark").await;
        assert_eq!(code, 0);
        let (_, seen) = sh(
            &b,
            "cat /home/user/mark /dev/shm/mark 2>/dev/null; echo end",
        )
        .await;
        assert_eq!(seen, "end\n", "clone b sees clone a's writes");
        let random = "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'";
        let (_, ra) = sh(&a, random).await;
        let (_, rb) = sh(&b, random).await;
        assert_eq!(ra.len(), 32);
        assert_ne!(ra, rb, "two clones read the same random bytes");
        a.destroy().await.unwrap();
        b.destroy().await.unwrap();
    });
}

/// A loop that bumps a counter in a file five times a second, replacing
/// the file whole (a reader never sees it empty); prints the first count.
const COUNTER: &str = "nohup sh -c 'i=0; while true; do i=$((i+1)); echo $i > /dev/shm/count.new; \
                       mv /dev/shm/count.new /dev/shm/count; sleep 0.2; done' >/dev/null 2>&1 & \
                       until [ -s /dev/shm/count ]; do sleep 0.1; done; cat /dev/shm/count";

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn paused_sandbox_survives_a_node_restart_and_resumes_running() {
    with_runtime(|| async {
        let node = node();
        let mut sandbox = ready_sandbox(&node, InitRequest::default()).await;
        let (code, before) = sh(&sandbox, &format!("echo kept > /home/user/file; {COUNTER}")).await;
        assert_eq!(code, 0);
        let before: u64 = before.trim().parse().expect("a count");
        sandbox
            .pause(hearth_node::PauseMode::Full)
            .await
            .expect("pause");
        let id = sandbox.id().to_owned();
        drop(sandbox);
        assert!(common::qemu_pids().is_empty(), "the paused VM still runs");
        drop(node);

        // A new node (a restarted daemon) keeps the paused sandbox.
        let node = self::node();
        assert_eq!(node.paused_sandboxes().unwrap(), std::slice::from_ref(&id));
        let mut sandbox = Sandbox::resume(&node, &id).await.expect("resume");
        sandbox
            .wait_ready(READY, InitRequest::default())
            .await
            .expect("agent answers after resume");
        assert_eq!(sandbox.id(), id);
        let (_, out) = sh(
            &sandbox,
            "cat /home/user/file; cat /dev/shm/count; sleep 1; cat /dev/shm/count; date +%s",
        )
        .await;
        let host = host_now();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "kept");
        let (c1, c2): (u64, u64) = (lines[1].parse().unwrap(), lines[2].parse().unwrap());
        assert!(c1 >= before, "the count went back: {before} then {c1}");
        assert!(c2 > c1, "the counter stopped after resume: {c1} then {c2}");
        let guest: f64 = lines[3].parse().unwrap();
        assert!((host - guest).abs() < 2.0, "clock not reset on resume");
        assert!(node.paused_sandboxes().unwrap().is_empty());
        sandbox.destroy().await.unwrap();
    });
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn resuming_an_unknown_sandbox_is_a_clear_error() {
    with_runtime(|| async {
        let node = node();
        let err = Sandbox::resume(&node, "nosuchsandbox").await.err().unwrap();
        assert_eq!(err.to_string(), "no paused sandbox nosuchsandbox");
        let err = Sandbox::resume(&node, "../etc").await.err().unwrap();
        assert_eq!(err.to_string(), "no paused sandbox ../etc");
    });
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn fork_makes_independent_running_copies() {
    with_runtime(|| async {
        let node = node();
        let mut parent = ready_sandbox(&node, InitRequest::default()).await;
        let (code, _) = sh(
            &parent,
            &format!("echo parent > /home/user/origin; {COUNTER}"),
        )
        .await;
        assert_eq!(code, 0);
        let copies = parent.fork(&node, 2).await.expect("fork");
        assert_eq!(copies.len(), 2);
        let mut all = vec![parent];
        for copy in copies {
            let mut copy = copy.expect("each copy starts");
            copy.wait_ready(READY, InitRequest::default())
                .await
                .expect("copy answers");
            all.push(copy);
        }
        for (i, sandbox) in all.iter().enumerate() {
            let (_, out) = sh(
                sandbox,
                &format!("cat /home/user/origin; echo {i} > /home/user/me; c=$(cat /dev/shm/count); sleep 1; echo $c $(cat /dev/shm/count)"),
            )
            .await;
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(lines[0], "parent", "sandbox {i} lost the parent's file");
            let counts: Vec<u64> = lines[1].split(' ').map(|n| n.parse().unwrap()).collect();
            assert!(counts[1] > counts[0], "sandbox {i}: counter not running");
        }
        for (i, sandbox) in all.iter().enumerate() {
            let (_, me) = sh(sandbox, "cat /home/user/me").await;
            assert_eq!(me.trim(), i.to_string(), "sandbox {i} saw another's write");
        }
        let ids: std::collections::HashSet<_> = all.iter().map(|s| s.id().to_owned()).collect();
        assert_eq!(ids.len(), 3);
        for sandbox in all {
            sandbox.destroy().await.unwrap();
        }
    });
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn two_hundred_create_kill_cycles_leak_nothing() {
    with_runtime(|| async {
        let node = node();
        let spec = spec(&node);
        for i in 0..200 {
            let mut sandbox = Sandbox::create(&node, &spec)
                .await
                .unwrap_or_else(|e| panic!("cycle {i}: {e}"));
            sandbox
                .wait_ready(READY, InitRequest::default())
                .await
                .unwrap_or_else(|e| panic!("cycle {i}: {e}"));
            sandbox.destroy().await.unwrap();
        }
    });
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn pooled_sandboxes_are_fresh_and_the_pool_refills_and_cleans_up() {
    with_runtime(|| async {
        let node = std::sync::Arc::new(node());
        let snapshot = node.snapshot(&spec(&node)).await.expect("snapshot");
        let pool = hearth_node::Pool::start(node.clone(), snapshot, 2);
        pool.wait_full().await;
        assert_eq!(pool.len(), 2);
        // Parked VMs run no guest code: their clocks stand still.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut sandbox = pool
            .create(&Egress::open())
            .await
            .expect("a parked sandbox");
        let init = InitRequest {
            env_vars: Some(HashMap::from([("POOLED".into(), "yes".into())])),
            ..InitRequest::default()
        };
        sandbox.wait_ready(READY, init).await.expect("ready");
        let (_, out) = sh(&sandbox, "echo $POOLED; hostname; date +%s.%N").await;
        let host = host_now();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "yes");
        assert_eq!(lines[1], sandbox.id());
        let guest: f64 = lines[2].parse().unwrap();
        assert!((host - guest).abs() < 1.0, "guest {guest} vs host {host}");
        pool.wait_full().await;
        assert_eq!(pool.len(), 2, "the pool refilled");
        sandbox.destroy().await.unwrap();
        pool.close().await;
    });
}
