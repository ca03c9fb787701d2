//! Every sandbox of a `hearth server` has a supervisor that notices its VM
//! ending without being asked: a `kill -9` of the VMM, a guest that asks
//! its init to reboot, a VMM crash. Each is seen at once, the
//! sandbox is stopped with that reason (listed with `--state killed`), and
//! everything it held is freed; the stock SDK's `is_running()` turns False
//! within 1 s of a `kill -9`. Each VMM runs as a uid of its own, without
//! capabilities, under QEMU's seccomp filter, in a cgroup of its own with
//! its limits, and reaches neither another sandbox's files nor the catalog.
//! From inside a guest, neither the host nor another sandbox can be
//! reached, whatever address the guest gives itself. Running sandboxes
//! outlive an upgrade and a `kill -9` of the server. Real VMs, as root, and
//! `HEARTH_E2B_PYTHON`; CI runs it with `--include-ignored`.

mod common;
#[path = "common/server.rs"]
mod sdk_server;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{assert_nothing_left, text};
use sdk_server::{Server, server_data_dir};

/// The tests here each check that no VMM exists before they start: one at
/// a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `hearth sandbox ARGS`.
fn hearth(server: &Server, data: &Path, args: &[&str]) -> Output {
    sdk_server::hearth_cli(server, data, &[&["sandbox"], args].concat())
}

/// `hearth sandbox ARGS` that must succeed; its stdout.
fn ok(server: &Server, data: &Path, args: &[&str]) -> String {
    sdk_server::hearth_ok(server, data, &[&["sandbox"], args].concat())
}

/// `(id, state, reason)` of the sandboxes in `states`, each with the
/// lifecycle state its row holds, which must agree with its state.
fn listed(server: &Server, data: &Path, states: &str) -> Vec<(String, String, String)> {
    let json: serde_json::Value =
        serde_json::from_str(&ok(server, data, &["list", "--json", "--state", states])).unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let field = |k: &str| s[k].as_str().unwrap_or("").to_owned();
            let lifecycle = field("lifecycleState");
            let agrees = match field("state").as_str() {
                "running" => lifecycle == "running",
                "paused" => lifecycle == "paused",
                _ => ["stopping", "stopped"].contains(&lifecycle.as_str()),
            };
            assert!(agrees, "{s}");
            (field("sandboxID"), field("state"), field("stopReason"))
        })
        .collect()
}

/// Waits until `id` is listed as killed; its reason and how long it took.
fn wait_stopped(server: &Server, data: &Path, id: &str, since: Instant) -> (String, Duration) {
    loop {
        if let Some((_, _, reason)) = listed(server, data, "killed")
            .into_iter()
            .find(|(i, _, _)| i == id)
        {
            return (reason, since.elapsed());
        }
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "sandbox {id} is still not stopped"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The VMM of the sandbox in `dir` runs as a uid of its own, without
/// capabilities, under a seccomp filter; that uid.
fn vmm_is_unprivileged(dir: &Path) -> u32 {
    let pid = std::fs::read_to_string(dir.join("vmm.pid")).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{name} in {status}"))
            .to_owned()
    };
    let uids: Vec<u32> = field("Uid:")
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect();
    let uid = uids[0];
    assert_eq!(uids, [uid; 4], "real, effective, saved, fs");
    assert!(uid >= hearth_node::VMM_UID_BASE, "uid {uid}");
    let gids: Vec<u32> = field("Gid:")
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    assert_eq!(gids, [uid; 4]);
    assert_eq!(field("Groups:"), uid.to_string(), "only its own group");
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("CapPrm:"), "0000000000000000");
    assert_eq!(field("Seccomp:"), "2");
    // Confined to its own directory: its root is that directory, where
    // neither the catalog nor another sandbox is.
    let jail = format!("/proc/{}/root", pid.trim());
    assert_eq!(std::fs::read_link(&jail).unwrap(), dir);
    let data = dir.parent().and_then(Path::parent).unwrap();
    let seen: Vec<String> = std::fs::read_dir(&jail)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(seen.iter().all(|name| dir.join(name).exists()), "{seen:?}");
    assert!(seen.contains(&"disk.qcow2".to_owned()), "{seen:?}");
    for outside in [data.join("hearth.db"), data.join("sandboxes")] {
        let from_inside = Path::new(&jail).join(outside.strip_prefix("/").unwrap());
        assert!(
            !from_inside.exists(),
            "{} is visible to the VMM",
            outside.display()
        );
    }
    // Its own cgroup with its vCPUs (2) as the CPU quota.
    let id = dir.file_name().unwrap().to_str().unwrap();
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", pid.trim())).unwrap();
    let own = format!("/hearth/{id}");
    let (quota, pids_max) = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        && cgroups.lines().any(|l| l == format!("0::{own}"))
    {
        let group = Path::new("/sys/fs/cgroup").join(&own[1..]);
        let cpu = std::fs::read_to_string(group.join("cpu.max")).unwrap();
        (
            cpu.trim().to_owned(),
            std::fs::read_to_string(group.join("pids.max")).unwrap(),
        )
    } else {
        for controller in ["cpu", "memory", "pids"] {
            assert!(
                cgroups
                    .lines()
                    .any(|l| l.contains(controller) && l.ends_with(&own)),
                "{controller} cgroup of {id}: {cgroups}"
            );
        }
        let quota =
            std::fs::read_to_string(format!("/sys/fs/cgroup/cpu{own}/cpu.cfs_quota_us")).unwrap();
        let pids = std::fs::read_to_string(format!("/sys/fs/cgroup/pids{own}/pids.max")).unwrap();
        let memory =
            std::fs::read_to_string(format!("/sys/fs/cgroup/memory{own}/memory.limit_in_bytes"))
                .unwrap();
        let memory: u64 = memory.trim().parse().unwrap();
        assert!(
            memory > 512 << 20 && memory <= 2048 << 20,
            "memory limit {memory}"
        );
        (format!("{} 100000", quota.trim()), pids)
    };
    assert_eq!(quota, "200000 100000");
    assert_eq!(pids_max.trim(), "256");
    uid
}

/// Whether `uid` can read the first byte of `path`.
fn can_read(uid: u32, path: &Path) -> bool {
    let out = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .args(["--clear-groups", "head", "-c1"])
        .arg(path)
        .output()
        .unwrap();
    out.status.success()
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn vms_that_end_by_themselves_are_noticed_stopped_and_cleaned() {
    let _serial = serial();
    let python = std::env::var("HEARTH_E2B_PYTHON").expect(
        "HEARTH_E2B_PYTHON must name a Python with the e2b SDK installed; scripts/test sets it",
    );
    assert_nothing_left("before the test");
    let data = server_data_dir();
    let server = Server::start(data.path());
    let ids: Vec<String> = (0..3)
        .map(|_| ok(&server, data.path(), &["create"]).trim().to_owned())
        .collect();
    let running = listed(&server, data.path(), "running");
    assert_eq!(running.len(), 3, "{running:?}");
    let uids: Vec<u32> = ids
        .iter()
        .map(|id| vmm_is_unprivileged(&data.path().join("sandboxes").join(id)))
        .collect();
    assert!(
        uids[0] != uids[1] && uids[1] != uids[2] && uids[0] != uids[2],
        "{uids:?}"
    );
    // A VMM's uid reaches its own disk, but neither another sandbox's nor
    // the catalog.
    let disk = |i: usize| {
        data.path()
            .join("sandboxes")
            .join(&ids[i])
            .join("disk.qcow2")
    };
    assert!(can_read(uids[0], &disk(0)));
    assert!(!can_read(uids[0], &disk(1)));
    assert!(!can_read(uids[0], &data.path().join("hearth.db")));

    // kill -9 of the VMM, watched through the stock SDK.
    let key = std::fs::read_to_string(data.path().join("api-key")).unwrap();
    let pid_file = data.path().join("sandboxes").join(&ids[0]).join("vmm.pid");
    let mut sdk = Command::new(python);
    sdk.arg(sdk_server::script("supervisor_drive.py"))
        .arg(&ids[0])
        .arg(&pid_file);
    let killed = Instant::now();
    sdk_server::drive(sdk, &server, key.trim());
    let (reason, noticed) = wait_stopped(&server, data.path(), &ids[0], killed);
    assert_eq!(reason, "VM exited: VMM killed by signal 9");

    // The guest asks its init to end the VM (what `reboot` does).
    let asked = Instant::now();
    let _ = hearth(
        &server,
        data.path(),
        &["exec", &ids[1], "--", "sudo", "kill", "-TERM", "1"],
    );
    let (reason, _) = wait_stopped(&server, data.path(), &ids[1], asked);
    assert_eq!(reason, "VM exited: VMM exit status 0");

    // A VMM crash.
    let pid_file = data.path().join("sandboxes").join(&ids[2]).join("vmm.pid");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let crashed = Instant::now();
    let status = Command::new("kill")
        .args(["-SEGV", pid.trim()])
        .status()
        .unwrap();
    assert!(status.success());
    let (reason, _) = wait_stopped(&server, data.path(), &ids[2], crashed);
    assert_eq!(reason, "VM exited: VMM killed by signal 11");

    // `noticed` includes the SDK script's start; the script checks the
    // 1 s bound itself, from the kill.
    eprintln!(
        "figure kill9_to_listed_killed_ms={} (including the SDK's start)",
        noticed.as_millis()
    );
    // None is running or reachable; each one's files are gone.
    assert!(listed(&server, data.path(), "running").is_empty());
    for id in &ids {
        let out = hearth(&server, data.path(), &["exec", id, "--", "true"]);
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("doesn't exist"),
            "{}",
            text(&out.stderr)
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while ids
        .iter()
        .any(|id| data.path().join("sandboxes").join(id).exists())
    {
        assert!(Instant::now() < deadline, "a stopped sandbox's files stay");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.stop();
    assert_nothing_left("after the test");
}

/// The bash loop each sandbox of the chaos test runs: a tick (the guest's
/// wall clock) every 200 ms, in a file.
const COUNTER: &str = "nohup bash -c 'while :; do echo $EPOCHREALTIME >> /tmp/ticks; sleep 0.2; done' >/dev/null 2>&1 &";

/// The longest gap between two ticks of the counter in `id`, and how many
/// there are.
fn counter_gaps(server: &Server, data: &Path, id: &str) -> (f64, usize) {
    let ticks = ok(server, data, &["exec", id, "--", "cat", "/tmp/ticks"]);
    let ticks: Vec<f64> = ticks.lines().map(|t| t.trim().parse().unwrap()).collect();
    let gap = ticks.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    (gap, ticks.len())
}

/// Kills every VMM of this test's data directory if a check fails, so a
/// failed run leaves nothing for the next test.
struct KillVmms<'a>(&'a Path);

impl Drop for KillVmms<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("pkill")
                .args(["-9", "-f"])
                .arg(self.0.join("sandboxes"))
                .status();
        }
    }
}

/// Starts a server that leaves its sandboxes running, and waits until it
/// has taken over `count` of them; the milliseconds it logged for that.
fn restart(binary: &Path, data: &Path, count: usize) -> (Server, u64) {
    let server = Server::start_keeping(binary, data);
    let line = server
        .logged("took over the sandboxes of the previous server")
        .unwrap_or_else(|| panic!("the server took over nothing"));
    assert!(line.contains(&format!("adopted={count} lost=0")), "{line}");
    let ms = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ms="))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no ms= in {line}"));
    (server, ms)
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn sandboxes_outlive_a_restart_an_upgrade_and_a_kill_9_of_the_server() {
    let _serial = serial();
    let python = std::env::var("HEARTH_E2B_PYTHON").expect(
        "HEARTH_E2B_PYTHON must name a Python with the e2b SDK installed; scripts/test sets it",
    );
    assert_nothing_left("before the test");
    let data = server_data_dir();
    let _guard = KillVmms(data.path());
    // The server runs from a copy of the binary, which an upgrade replaces.
    let bin = tempfile::tempdir().unwrap();
    let binary = bin.path().join("hearth");
    std::fs::copy(env!("CARGO_BIN_EXE_hearth"), &binary).unwrap();
    let server = Server::start_keeping(&binary, data.path());
    let ids: Vec<String> = (0..10)
        .map(|_| {
            let id = ok(&server, data.path(), &["create", "--timeout", "600"])
                .trim()
                .to_owned();
            ok(
                &server,
                data.path(),
                &["exec", &id, "--", "sh", "-c", COUNTER],
            );
            id
        })
        .collect();
    let pid_of = |id: &str| {
        std::fs::read_to_string(data.path().join("sandboxes").join(id).join("vmm.pid"))
            .unwrap()
            .trim()
            .to_owned()
    };
    let pids: Vec<String> = ids.iter().map(|id| pid_of(id)).collect();

    // Upgrade: a clean stop, a new binary file in place of the old one,
    // a start.
    server.stop();
    std::fs::remove_file(&binary).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_hearth"), &binary).unwrap();
    let (server, upgrade_ms) = restart(&binary, data.path(), 10);
    // A crash.
    server.kill9();
    let (server, crash_ms) = restart(&binary, data.path(), 10);
    eprintln!("figure readopt_10_after_upgrade_ms={upgrade_ms}");
    eprintln!("figure readopt_10_after_kill9_ms={crash_ms}");

    let running = listed(&server, data.path(), "running");
    for id in &ids {
        assert!(
            running.iter().any(|(i, _, _)| i == id),
            "{id} in {running:?}"
        );
    }
    // The same VMMs: nothing was restarted or restored.
    let now: Vec<String> = ids.iter().map(|id| pid_of(id)).collect();
    assert_eq!(now, pids);
    let key = std::fs::read_to_string(data.path().join("api-key")).unwrap();
    let mut sdk = Command::new(&python);
    sdk.arg(sdk_server::script("reconnect_drive.py")).args(&ids);
    sdk_server::drive(sdk, &server, key.trim());
    for id in &ids {
        let (gap, ticks) = counter_gaps(&server, data.path(), id);
        assert!(gap < 2.0, "the counter in {id} stopped for {gap:.2} s");
        assert!(ticks > 10, "{ticks} ticks in {id}");
    }

    // Exits of adopted VMMs are noticed as those of its own: a kill -9 and
    // a guest that ends itself.
    let killed = Instant::now();
    let status = Command::new("kill")
        .args(["-9", &pids[0]])
        .status()
        .unwrap();
    assert!(status.success());
    let (reason, noticed_kill) = wait_stopped(&server, data.path(), &ids[0], killed);
    assert!(reason.starts_with("VM exited: VMM ended"), "{reason}");
    let asked = Instant::now();
    let _ = hearth(
        &server,
        data.path(),
        &["exec", &ids[1], "--", "sudo", "kill", "-TERM", "1"],
    );
    let (reason, noticed_reboot) = wait_stopped(&server, data.path(), &ids[1], asked);
    assert!(reason.starts_with("VM exited: VMM ended"), "{reason}");
    eprintln!(
        "figure adopted_kill9_to_listed_killed_ms={} adopted_guest_exit_to_listed_killed_ms={}",
        noticed_kill.as_millis(),
        noticed_reboot.as_millis()
    );
    assert!(noticed_kill < Duration::from_secs(1), "{noticed_kill:?}");

    for id in &ids[2..] {
        ok(&server, data.path(), &["kill", id]);
    }
    server.stop();
    assert_nothing_left("after the test");
}

/// A server stopped while its pool is starting a sandbox (a pool fills
/// once the server listens) leaves no VMM: a start cut short kills the
/// VMM it spawned, which, as a sandbox's VMM outlives the server, would
/// otherwise run on with no owner. The stops come at several delays to
/// land in different steps of the start.
#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn a_server_stopped_while_its_pool_fills_leaves_nothing() {
    let _serial = serial();
    assert_nothing_left("before the test");
    for delay_ms in [0, 25, 50, 100, 150, 200, 300, 500] {
        let data = server_data_dir();
        let server = Server::start(data.path());
        std::thread::sleep(Duration::from_millis(delay_ms));
        server.stop();
        // A killed VMM takes a moment to end; a leaked one never does.
        let started = Instant::now();
        while !common::qemu_pids().is_empty() && started.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_nothing_left(&format!("after a stop {delay_ms} ms after listening"));
    }
}

/// The IPv4 addresses of the host's interfaces.
fn host_addresses() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .unwrap();
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|a| a.split('/').next())
        .map(str::to_owned)
        .collect()
}

/// The network slot of a running sandbox, from its `vm.json`.
fn slot_of(data: &Path, id: &str) -> hearth_net::SlotPlan {
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(data.join("sandboxes").join(id).join("vm.json")).unwrap(),
    )
    .unwrap();
    let index = u32::try_from(record["slot"].as_u64().unwrap()).unwrap();
    hearth_net::SlotPlan::new(index).unwrap()
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn a_guest_reaches_neither_the_host_nor_another_sandbox() {
    let _serial = serial();
    assert_nothing_left("before the test");
    let data = server_data_dir();
    let server = Server::start(data.path());
    let a = ok(&server, data.path(), &["create"]).trim().to_owned();
    let b = ok(&server, data.path(), &["create"]).trim().to_owned();
    let (slot_a, slot_b) = (slot_of(data.path(), &a), slot_of(data.path(), &b));
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    // A destination the guest may reach: proof that its network works.
    let outside = hearth_net::Outside::create().unwrap();
    let listener = outside.tcp_listener(0).unwrap();
    let reachable = format!("{}:{}", outside.ip(), listener.local_addr().unwrap().port());
    let mut refused: Vec<String> = host_addresses()
        .into_iter()
        .filter(|a| a != "127.0.0.1")
        .map(|a| format!("{a}:{port}"))
        .collect();
    refused.extend([
        format!("{}:{port}", slot_a.host_ip),
        format!("{}:{port}", hearth_net::GATEWAY_IP),
        format!("{}:49983", slot_b.ns_ip),
        format!("{}:22", slot_b.host_ip),
    ]);
    let script = std::fs::read_to_string(sdk_server::script("probe_guest.py")).unwrap();
    let mut args = vec!["exec", &a, "--", "sudo", "python3", "-c", &script];
    args.push(&reachable);
    args.extend(refused.iter().map(String::as_str));
    args.push("127.0.0.1:49999");
    let out = ok(&server, data.path(), &args);
    let seen: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    eprintln!("probes from sandbox {a}: {seen}");
    if refused.iter().any(|t| seen["plain"][t] == "connected") {
        // Once seen and not reproduced: what the host's rules, listeners
        // and connection tracking were when a refused target answered.
        for (what, cmd) in [
            ("rules", "nft list ruleset"),
            ("listeners", "ss -ltnp"),
            ("tracked", "cat /proc/net/nf_conntrack"),
        ] {
            let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
            eprintln!("--- {what} ({cmd}):\n{}", text(&out.stdout));
        }
    }
    assert_eq!(seen["plain"][&reachable], "connected", "{seen}");
    // Refused by the host's rules ("No route to host"), or, once the
    // kernel's rate limit on those ICMP answers bites, unanswered; never
    // connected nor reset by a listener there (which would mean the packet
    // reached it).
    for target in &refused {
        let result = &seen["plain"][target];
        assert!(
            result == "EHOSTUNREACH" || result == "timeout",
            "{target}: {seen}"
        );
    }
    // The host's loopback is not the guest's: nothing there.
    assert_eq!(seen["plain"]["127.0.0.1:49999"], "ECONNREFUSED", "{seen}");
    for phase in ["spoofed_ip", "spoofed_mac"] {
        for (target, result) in seen[phase].as_object().unwrap() {
            assert_ne!(result, "connected", "{phase} reached {target}: {seen}");
        }
    }
    // Still a working sandbox.
    assert_eq!(
        ok(&server, data.path(), &["exec", &a, "--", "echo", "ok"]).trim(),
        "ok"
    );
    for id in [&a, &b] {
        ok(&server, data.path(), &["kill", id]);
    }
    drop(listener);
    drop(outside);
    server.stop();
    assert_nothing_left("after the test");
}

/// A file of the VMM cgroup of sandbox `id`, in the hierarchy that holds
/// the memory controller: `v2` in the unified one, else `v1` in the legacy
/// memory one.
fn memory_file(id: &str, v2: &str, v1: &str) -> Option<u64> {
    let unified = Path::new("/sys/fs/cgroup/hearth").join(id).join(v2);
    let legacy = Path::new("/sys/fs/cgroup/memory/hearth").join(id).join(v1);
    [unified, legacy]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|v| v.trim().parse().unwrap())
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn a_memory_hog_is_stopped_by_its_own_guest_and_nothing_else_notices() {
    let _serial = serial();
    assert_nothing_left("before the test");
    let data = server_data_dir();
    let server = Server::start(data.path());
    let hog = ok(&server, data.path(), &["create"]).trim().to_owned();
    let other = ok(&server, data.path(), &["create"]).trim().to_owned();
    let pid =
        std::fs::read_to_string(data.path().join("sandboxes").join(&hog).join("vmm.pid")).unwrap();
    let limit = memory_file(&hog, "memory.max", "memory.limit_in_bytes").unwrap();
    // Allocates and touches 64 MiB at a time until the guest stops it.
    let out = hearth(
        &server,
        data.path(),
        &[
            "exec",
            &hog,
            "--",
            "python3",
            "-c",
            "l = []\nwhile True: l.append(bytearray(b'x' * (64 << 20)))",
        ],
    );
    assert!(!out.status.success(), "the hog was not stopped");
    let peak = memory_file(&hog, "memory.peak", "memory.max_usage_in_bytes").unwrap();
    eprintln!(
        "figure hog_exit={:?} vmm_memory_peak_mib={} vmm_memory_limit_mib={}",
        out.status.code(),
        peak >> 20,
        limit >> 20
    );
    assert!(peak <= limit, "peak {peak} over the limit {limit}");
    // The sandbox's metrics report the same cgroup.
    let metrics = ok(&server, data.path(), &["metrics", &hog]);
    let line = metrics
        .lines()
        .find(|l| l.starts_with("VMM memory (MiB)"))
        .unwrap_or_else(|| panic!("{metrics}"));
    // `VMM memory (MiB)   NOW (peak PEAK) / LIMIT`
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let [_, reported_peak, reported_limit] = numbers[..] else {
        panic!("{line}");
    };
    assert_eq!(reported_limit, limit >> 20, "{line}");
    assert!(
        reported_peak >= peak >> 20 && reported_peak <= limit >> 20,
        "{line} vs peak {peak}"
    );
    assert!(
        metrics.contains("VMM CPU limit (CPUs)         2.00"),
        "{metrics}"
    );
    // The guest's own kernel stopped it: its VMM, and so the sandbox,
    // lives on, as does the other one.
    let now =
        std::fs::read_to_string(data.path().join("sandboxes").join(&hog).join("vmm.pid")).unwrap();
    assert_eq!(now, pid);
    assert!(Path::new(&format!("/proc/{}", pid.trim())).exists());
    for id in [&hog, &other] {
        assert_eq!(
            ok(&server, data.path(), &["exec", id, "--", "echo", "ok"]).trim(),
            "ok"
        );
    }
    let log = ok(&server, data.path(), &["exec", &hog, "--", "sudo", "dmesg"]);
    eprintln!(
        "guest kernel: {}",
        log.lines()
            .filter(|l| l.contains("Out of memory"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    for id in [&hog, &other] {
        ok(&server, data.path(), &["kill", id]);
    }
    server.stop();
    assert_nothing_left("after the test");
}

/// CPU time of process `pid` so far, in seconds (`/proc/PID/stat`).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // CLK_TCK is 100 on Linux x86-64.
    ticks as f64 / 100.0
}

/// Quota periods in which the CPU limit held the cgroup of `id` back.
fn throttled(id: &str) -> u64 {
    ["/sys/fs/cgroup/hearth", "/sys/fs/cgroup/cpu/hearth"]
        .iter()
        .find_map(|root| std::fs::read_to_string(Path::new(root).join(id).join("cpu.stat")).ok())
        .and_then(|stat| {
            stat.lines()
                .find_map(|l| l.strip_prefix("nr_throttled ")?.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no cpu.stat for {id}"))
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn a_busy_one_vcpu_guest_gets_at_most_one_cpu() {
    let _serial = serial();
    assert_nothing_left("before the test");
    let data = server_data_dir();
    let server = Server::start_with(data.path(), &["--vcpus", "1"]);
    let id = ok(&server, data.path(), &["create"]).trim().to_owned();
    let pid = std::fs::read_to_string(data.path().join("sandboxes").join(&id).join("vmm.pid"))
        .unwrap()
        .trim()
        .to_owned();
    // A busy loop on its one vCPU, and disk writes that keep the VMM's
    // I/O threads busy besides: more than one CPU of work.
    ok(
        &server,
        data.path(),
        &[
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "nohup sh -c 'while :; do :; done' >/dev/null 2>&1 & \
             nohup sh -c 'while :; do dd if=/dev/zero of=/var/tmp/x bs=1M count=64 \
             conv=fsync 2>/dev/null; done' >/dev/null 2>&1 &",
        ],
    );
    std::thread::sleep(Duration::from_secs(1));
    let (cpu0, throttled0, t0) = (cpu_seconds(&pid), throttled(&id), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let (cpu1, throttled1) = (cpu_seconds(&pid), throttled(&id));
    let cores = (cpu1 - cpu0) / t0.elapsed().as_secs_f64();
    eprintln!(
        "figure busy_1vcpu_vmm_cores={cores:.3} throttled_periods={}",
        throttled1 - throttled0
    );
    // Its quota held it back, and it got no more than one CPU (with the
    // 10 ms tick of the accounting as slack).
    assert!(throttled1 > throttled0, "the CPU limit never held it back");
    assert!(cores <= 1.05, "{cores:.3} CPUs");
    // Still answers.
    assert_eq!(
        ok(&server, data.path(), &["exec", &id, "--", "echo", "ok"]).trim(),
        "ok"
    );
    ok(&server, data.path(), &["kill", &id]);
    server.stop();
    assert_nothing_left("after the test");
}
