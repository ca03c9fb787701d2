//! `hearth sandbox run` against real microVMs (QEMU; TCG on hosts without
//! vmx/svm). Needs root, a built kernel and the `base` template (README
//! command 1 or `.ci/run` prepares them); CI runs these with
//! `--include-ignored`. Each test checks afterwards that nothing the
//! sandbox created is left on the host.

mod common;

use common::{assert_nothing_left, data_dir, qemu_pids, text};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The leak checks are host-wide, so VM tests run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn hearth() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hearth"));
    cmd.env("HEARTH_DATA_DIR", data_dir())
        .env("HEARTH_LOG", "warn")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    cmd
}

fn run(args: &[&str]) -> Output {
    hearth().args(args).output().expect("hearth runs")
}

/// Holds the serial lock; on drop, asserts the host is clean.
struct Clean(#[allow(dead_code)] MutexGuard<'static, ()>);

fn serial() -> Clean {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert_nothing_left("before the test");
    Clean(guard)
}

impl Drop for Clean {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert_nothing_left("after the test");
        }
    }
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn python_prints_42() {
    let _clean = serial();
    let out = run(&["sandbox", "run", "--", "python3", "-c", "print(6*7)"]);
    assert_eq!(text(&out.stdout), "42\n", "stderr: {}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(0));
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn env_is_passed_and_exit_code_returned() {
    let _clean = serial();
    let out = run(&[
        "sandbox",
        "run",
        "--env",
        "FOO=bar",
        "--",
        "sh",
        "-c",
        "echo $FOO; exit 7",
    ]);
    assert_eq!(text(&out.stdout), "bar\n", "stderr: {}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(7));
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn stdout_and_stderr_stay_separate() {
    let _clean = serial();
    let out = run(&[
        "sandbox",
        "run",
        "--",
        "sh",
        "-c",
        "echo to-out; echo to-err >&2; echo more-out",
    ]);
    assert_eq!(text(&out.stdout), "to-out\nmore-out\n");
    assert_eq!(text(&out.stderr), "to-err\n");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn ten_mib_of_stdout_arrive_intact() {
    let _clean = serial();
    let script = "import sys\nfor i in range(40960): sys.stdout.buffer.write(bytes([(i + j) % 256 for j in range(256)]))";
    let out = run(&["sandbox", "run", "--", "python3", "-c", script]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let expected: Vec<u8> = (0..40960usize)
        .flat_map(|i| (0..256usize).map(move |j| u8::try_from((i + j) % 256).unwrap()))
        .collect();
    assert_eq!(out.stdout.len(), 10 * 1024 * 1024);
    assert!(
        out.stdout == expected,
        "10 MiB stream differs from what the guest wrote"
    );
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn missing_command_is_a_one_line_error() {
    let _clean = serial();
    let out = run(&["sandbox", "run", "--", "no-such-command-xyz"]);
    assert_eq!(out.status.code(), Some(127));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no-such-command-xyz"), "{stderr}");
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn guest_reboot_ends_the_sandbox() {
    let _clean = serial();
    let started = Instant::now();
    let script = "echo going-down; sudo reboot; sleep 600";
    let out = run(&["sandbox", "run", "--", "sh", "-c", script]);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(120), "took {took:?}");
    assert_eq!(text(&out.stdout), "going-down\n");
    assert_eq!(out.status.code(), Some(125));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("shutting down"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn reboot_needs_root_in_the_guest() {
    let _clean = serial();
    let out = run(&[
        "sandbox",
        "run",
        "--",
        "sh",
        "-c",
        "reboot; echo still-here",
    ]);
    assert_eq!(text(&out.stdout), "still-here\n");
    assert_eq!(
        text(&out.stderr),
        "reboot: must be superuser (try: sudo reboot)\n"
    );
    assert_eq!(out.status.code(), Some(0));
}

/// Starts `hearth sandbox run` in the background, waits for `ready`, then
/// sends it a signal; it must remove the sandbox and exit 128 + signal.
fn signal_after(ready: impl Fn(&mut std::process::Child) -> bool, signal: i32) {
    let mut child = hearth()
        .args([
            "sandbox",
            "run",
            "--",
            "sh",
            "-c",
            "echo started; sleep 600",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hearth starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready(&mut child) {
        assert!(Instant::now() < deadline, "never became ready");
        assert!(child.try_wait().unwrap().is_none(), "exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) has no memory effects; the pid is our unreaped child.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    let started = Instant::now();
    let status = child.wait().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "clean-up took {:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Some(128 + signal));
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn sigterm_during_boot_cleans_up() {
    let _clean = serial();
    // Ready as soon as the VMM process exists: the guest is still booting.
    signal_after(|_| !qemu_pids().is_empty(), 15);
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn sigint_while_the_command_runs_cleans_up() {
    let _clean = serial();
    let stdout = Mutex::new(None::<BufReader<std::process::ChildStdout>>);
    signal_after(
        |child| {
            let mut guard = stdout.lock().unwrap();
            let reader = guard.get_or_insert_with(|| BufReader::new(child.stdout.take().unwrap()));
            let mut line = String::new();
            reader.read_line(&mut line).unwrap() > 0 && line == "started\n"
        },
        2,
    );
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn two_sandboxes_run_at_once_on_separate_networks() {
    let _clean = serial();
    // Both guests call a server outside the host at once; each request
    // names its guest, and arrives masqueraded by the host.
    let outside = hearth_net::Outside::create().unwrap();
    let listener = outside.tcp_listener(0).unwrap();
    let url = format!(
        "http://{}:{}/",
        outside.ip(),
        listener.local_addr().unwrap().port()
    );
    let server = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for stream in listener.incoming().take(2) {
            let mut stream = stream.unwrap();
            let mut buf = [0u8; 1024];
            let len = stream.read(&mut buf).unwrap();
            let request = String::from_utf8_lossy(&buf[..len]).into_owned();
            let path = request.split_whitespace().nth(1).unwrap_or("").to_owned();
            seen.push((stream.peer_addr().unwrap().ip(), path));
            stream
                .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                .unwrap();
        }
        seen
    });
    let script = format!(
        "import urllib.request, socket, time; \
         name = socket.gethostname(); \
         body = urllib.request.urlopen('{url}' + name, timeout=30).read().decode(); \
         print(name, body); time.sleep(3)"
    );
    let children: Vec<_> = (0..2)
        .map(|_| {
            hearth()
                .args(["sandbox", "run", "--", "python3", "-c", &script])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut hostnames = Vec::new();
    for out in &outputs {
        assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
        let line = text(&out.stdout);
        let (hostname, body) = line.trim().split_once(' ').expect("hostname and body");
        assert_eq!(body, "hello");
        hostnames.push(hostname.to_owned());
    }
    assert_ne!(hostnames[0], hostnames[1]);
    let mut seen = server.join().unwrap();
    seen.sort_by(|a, b| a.1.cmp(&b.1));
    hostnames.sort();
    for ((peer, path), hostname) in seen.iter().zip(&hostnames) {
        assert_eq!(path, &format!("/{hostname}"));
        assert_eq!(*peer, std::net::IpAddr::V4(outside.host_ip()));
    }
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn missing_template_and_kernel_are_one_line_errors() {
    let _clean = serial();
    let empty = tempfile::tempdir().unwrap();
    let out = hearth()
        .env("HEARTH_DATA_DIR", empty.path())
        .args(["sandbox", "run", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("hearth kernel build"), "{stderr}");
    let out = run(&["sandbox", "run", "--template", "nope", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("template 'nope' does not exist"),
        "{}",
        text(&out.stderr)
    );
}

/// Runs `hearth sandbox run OPTIONS -- true` with `setup` applied; it must
/// fail with exit 125 and one line on stderr containing `expected`.
fn one_line_failure(options: &[&str], setup: impl FnOnce(&mut Command), expected: &str) {
    let mut cmd = hearth();
    cmd.args(["sandbox", "run"])
        .args(options)
        .args(["--", "true"]);
    setup(&mut cmd);
    let out = cmd.output().expect("hearth runs");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(expected),
        "expected '{expected}' in: {stderr}"
    );
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn not_root_is_a_one_line_error() {
    use std::os::unix::process::CommandExt;
    let _clean = serial();
    one_line_failure(
        &[],
        |cmd| {
            cmd.uid(65534).gid(65534);
        },
        "must run as root",
    );
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn missing_qemu_is_a_one_line_error() {
    let _clean = serial();
    // A PATH with every tool hearth needs except QEMU.
    let bin = tempfile::tempdir().unwrap();
    for tool in ["ip", "nft", "qemu-img", "sysctl"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .unwrap();
        let path = text(&found.stdout).trim().to_owned();
        if !path.is_empty() {
            std::os::unix::fs::symlink(path, bin.path().join(tool)).unwrap();
        }
    }
    one_line_failure(
        &[],
        |cmd| {
            cmd.env("PATH", bin.path());
        },
        "qemu-system-x86_64 not found; run: apt-get install -y qemu-system-x86",
    );
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn guest_that_never_answers_times_out_cleanly() {
    let _clean = serial();
    // A data dir holding the kernel and the template but no snapshot: the
    // template must boot, and with no time to, the first failed health
    // probe ends the wait.
    let data = tempfile::tempdir().unwrap();
    let template = std::fs::read_link(data_dir().join("templates/base/current")).unwrap();
    let build = data.path().join("templates/base").join(&template);
    std::fs::create_dir_all(&build).unwrap();
    let source = data_dir().join("templates/base").join(&template);
    for file in ["rootfs.ext4", "meta.json"] {
        std::os::unix::fs::symlink(source.join(file), build.join(file)).unwrap();
    }
    std::os::unix::fs::symlink(&template, data.path().join("templates/base/current")).unwrap();
    std::os::unix::fs::symlink(data_dir().join("kernels"), data.path().join("kernels")).unwrap();
    one_line_failure(
        &["--boot-timeout", "0"],
        |cmd| {
            cmd.env("HEARTH_DATA_DIR", data.path());
        },
        "did not answer within 0 s",
    );
    let snapshots: Vec<_> = std::fs::read_dir(build.join("snapshots"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        snapshots
            .iter()
            .all(|n| n.to_string_lossy().ends_with(".lock")),
        "a failed snapshot left {snapshots:?}"
    );
}
