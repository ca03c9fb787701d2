//! The Firecracker driver against a recording fake of Firecracker's API on
//! a Unix socket, started in place of the jailer: every call of a boot, a
//! restore, a save, a pause and resume, a volume attach and a stop, and
//! each way a start fails.
//!
//! The fake "jailer" is a shell script that records its arguments and
//! sleeps; the fake API listens where the jailed Firecracker's socket
//! would be, records each request, and does what Firecracker would do to
//! the jail's files (a snapshot writes its two files).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use hearth_vmm::firecracker::jail::{self, Jail, JailerArgs};
use hearth_vmm::firecracker::{self, Firecracker};
use hearth_vmm::{
    Accel, Disk, DiskFormat, Memory, NetSpec, SavedMemory, Start, Vm, VmSpec, Vmm, VmmError,
};

/// What the fake answers and has seen.
#[derive(Default)]
struct Fake {
    /// `(method, path, body)` of each request, in order.
    calls: Vec<(String, String, Value)>,
    /// `METHOD path` → the fault to answer it with (400).
    faults: HashMap<String, String>,
}

type Shared = Arc<Mutex<Fake>>;

async fn handle(
    State((fake, root)): State<(Shared, PathBuf)>,
    request: Request,
) -> impl IntoResponse {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let bytes = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let fault = {
        let mut fake = fake.lock().unwrap();
        fake.calls
            .push((method.clone(), path.clone(), body.clone()));
        fake.faults.get(&format!("{method} {path}")).cloned()
    };
    if let Some(fault) = fault {
        // Firecracker logs what it refuses.
        let log = root.join(jail::LOG);
        let mut text = std::fs::read_to_string(&log).unwrap_or_default();
        text.push_str(&format!("[fake:fc_api] ERROR {fault}\n"));
        std::fs::write(&log, text).unwrap();
        return (
            StatusCode::BAD_REQUEST,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            json!({ "fault_message": fault }).to_string(),
        )
            .into_response();
    }
    if path == "/snapshot/create" {
        for (key, content) in [("snapshot_path", "state"), ("mem_file_path", "memory")] {
            let inside = body[key].as_str().unwrap().trim_start_matches('/');
            std::fs::write(root.join(inside), content).unwrap();
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

/// A VM's files and the fake that serves its API.
struct Setup {
    _dir: tempfile::TempDir,
    run_dir: PathBuf,
    kernel: PathBuf,
    disk: PathBuf,
    fake: Shared,
    driver: Firecracker,
    firecracker: PathBuf,
}

/// Makes the files and the fake jailer (which runs `jailer_body` after
/// recording its arguments), and serves the API once the jailer started.
fn setup(jailer_body: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("sb-1");
    std::fs::create_dir(&run_dir).unwrap();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, b"kernel").unwrap();
    let disk = run_dir.join("disk.img");
    std::fs::write(&disk, b"disk").unwrap();
    let firecracker = dir.path().join("firecracker");
    std::fs::write(&firecracker, b"").unwrap();
    let jailer = dir.path().join("jailer");
    std::fs::write(
        &jailer,
        format!("#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$PWD/jailer.args\"\n{jailer_body}\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&jailer, std::fs::Permissions::from_mode(0o755)).unwrap();
    let fake: Shared = Arc::default();
    let root = Jail::new(&run_dir, &firecracker).root();
    let (args, served) = (run_dir.join("jailer.args"), Arc::clone(&fake));
    tokio::spawn(async move {
        while !args.exists() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let listener = tokio::net::UnixListener::bind(root.join(jail::API_SOCKET)).unwrap();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state((served, root));
        axum::serve(listener, app).await.unwrap();
    });
    Setup {
        _dir: dir,
        driver: Firecracker::new(firecracker.clone(), jailer),
        firecracker,
        run_dir,
        kernel,
        disk,
        fake,
    }
}

fn ids() -> (u32, u32) {
    (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    )
}

fn spec(s: &Setup, start: Start, memory: Memory) -> VmSpec {
    let (uid, gid) = ids();
    VmSpec {
        kernel: s.kernel.clone(),
        kernel_args: "root=/dev/vda rw".into(),
        root_disk: Disk {
            path: s.disk.clone(),
            format: DiskFormat::Raw,
        },
        vcpus: 2,
        memory_mib: 256,
        memory,
        start,
        net: Some(NetSpec {
            tap: "tap0".into(),
            mac: "02:fc:00:00:00:07".into(),
            netns: Some(PathBuf::from("/run/netns/hearth-7")),
        }),
        run_dir: s.run_dir.clone(),
        accel: Accel::Kvm,
        die_with_parent: true,
        run_as: Some(format!("{uid}:{gid}")),
        cgroups: Vec::new(),
        inherit: Vec::new(),
        chroot: true,
    }
}

/// The calls the fake saw, as `METHOD path` and body.
fn seen(s: &Setup) -> Vec<(String, Value)> {
    s.fake
        .lock()
        .unwrap()
        .calls
        .iter()
        .map(|(m, p, b)| (format!("{m} {p}"), b.clone()))
        .collect()
}

fn expected(calls: &[firecracker::api::Call]) -> Vec<(String, Value)> {
    calls.iter().map(|c| (c.describe(), c.body())).collect()
}

fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // A zombie (state Z) has ended.
    !stat.is_empty()
        && stat
            .rsplit(") ")
            .next()
            .is_some_and(|rest| !rest.starts_with('Z'))
}

#[tokio::test]
async fn boot_pause_save_attach_and_stop() {
    let s = setup("exec sleep 600");
    let spec = spec(&s, Start::Boot, Memory::Anonymous);
    let mut vm = s.driver.boot(&spec).await.unwrap();
    let pid = vm.pid();
    assert!(alive(pid));
    assert_eq!(seen(&s), expected(&firecracker::boot_calls(&spec)));

    // The jailer was told what the data says.
    let (uid, gid) = ids();
    let args = std::fs::read_to_string(s.run_dir.join("jailer.args")).unwrap();
    let jail = Jail::new(&s.run_dir, &s.firecracker);
    let want = JailerArgs {
        jail: jail.clone(),
        firecracker: s.firecracker.clone(),
        uid,
        gid,
        netns: Some(PathBuf::from("/run/netns/hearth-7")),
        cgroup: None,
    }
    .render();
    assert_eq!(args.lines().collect::<Vec<_>>(), want);
    // The jail holds the very disk and kernel (hard links), the volume
    // placeholders, and log files the VMM's uid owns.
    let inode = |p: &Path| std::fs::metadata(p).unwrap().ino();
    assert_eq!(inode(&jail.host_path(jail::ROOT_DISK)), inode(&s.disk));
    assert_eq!(inode(&jail.host_path(jail::KERNEL)), inode(&s.kernel));
    // Each placeholder is there under the name its volume will have too: a
    // restored VM reopens the path its drive had when it was saved.
    for slot in 0..hearth_vmm::VOLUME_SLOTS {
        let placeholder = inode(&hearth_vmm::volume_placeholder(&s.run_dir, slot));
        assert_eq!(
            inode(&jail.host_path(&format!("vol{slot}.img"))),
            placeholder
        );
        assert_eq!(
            inode(&jail.host_path(&format!("volume{slot}.img"))),
            placeholder
        );
    }
    assert_eq!(
        std::fs::metadata(jail.host_path(jail::LOG)).unwrap().uid(),
        uid
    );

    let before = seen(&s).len();
    vm.pause().await.unwrap();
    vm.resume().await.unwrap();
    let state = s.run_dir.join("paused.state");
    vm.save(&state, SavedMemory::Included).await.unwrap();
    let volume = s.run_dir.join("vol.ext4");
    std::fs::write(&volume, b"volume").unwrap();
    let image = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&volume)
        .unwrap();
    vm.attach_volume(2, &image).await.unwrap();
    let later: Vec<String> = seen(&s)[before..].iter().map(|(c, _)| c.clone()).collect();
    assert_eq!(
        later,
        [
            "PATCH /vm",
            "PATCH /vm",
            "PATCH /vm",
            "PUT /snapshot/create",
            "PATCH /drives/vol2"
        ]
    );
    let bodies: Vec<Value> = seen(&s)[before..].iter().map(|(_, b)| b.clone()).collect();
    assert_eq!(bodies[0], json!({"state": "Paused"}));
    assert_eq!(bodies[1], json!({"state": "Resumed"}));
    // The snapshot left the jail for where it was asked to go, memory
    // beside it.
    let [state_file, memory_file] = hearth_vmm::state_files(&state);
    assert_eq!(std::fs::read_to_string(&state_file).unwrap(), "state");
    assert_eq!(std::fs::read_to_string(&memory_file).unwrap(), "memory");
    assert!(!jail.host_path(jail::SAVED_STATE).exists());
    // The volume is in the jail by its own inode.
    assert_eq!(inode(&jail.host_path("volume2.img")), inode(&volume));

    vm.stop().await.unwrap();
    assert!(!alive(pid), "the VMM still runs");
    assert!(!jail.base.exists(), "the jail is left");
}

#[tokio::test]
async fn restore_from_a_template_snapshot() {
    let s = setup("exec sleep 600");
    let memory = s.run_dir.join("template.mem");
    std::fs::write(&memory, b"template memory").unwrap();
    let state = s.run_dir.join("template.state");
    std::fs::write(&state, b"template state").unwrap();
    let spec = spec(
        &s,
        Start::Incoming,
        Memory::File {
            path: memory.clone(),
            shared: false,
        },
    );
    let mut vm = s.driver.boot(&spec).await.unwrap();
    vm.load(&state, SavedMemory::InFile).await.unwrap();
    vm.resume().await.unwrap();
    let mut want = expected(&firecracker::boot_calls(&spec));
    want.extend(expected(&firecracker::load_calls()));
    want.push(("PATCH /vm".to_owned(), json!({"state": "Resumed"})));
    assert_eq!(seen(&s), want);
    // The template's memory is mapped from its own file, linked, not
    // copied: every clone shares its pages.
    let jail = Jail::new(&s.run_dir, &s.firecracker);
    let inode = |p: &Path| std::fs::metadata(p).unwrap().ino();
    assert_eq!(inode(&jail.host_path(jail::RESTORE_MEMORY)), inode(&memory));
    assert_eq!(inode(&jail.host_path(jail::RESTORE_STATE)), inode(&state));

    let missing = vm
        .load(&s.run_dir.join("gone"), SavedMemory::Included)
        .await
        .unwrap_err();
    assert!(matches!(missing, VmmError::StateMissing(_)), "{missing}");
    vm.stop().await.unwrap();
}

#[tokio::test]
async fn a_refused_call_reports_the_fault_and_the_log_and_kills_the_vmm() {
    let s = setup("exec sleep 600");
    s.fake.lock().unwrap().faults.insert(
        "PUT /drives/rootfs".to_owned(),
        "Unable to create the block device: No such file or directory".to_owned(),
    );
    let spec = spec(&s, Start::Boot, Memory::Anonymous);
    let err = s.driver.boot(&spec).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, VmmError::Api { status: 400, .. }), "{text}");
    assert!(
        text.contains("PUT /drives/rootfs")
            && text.contains("Unable to create the block device")
            && text.contains("[fake:fc_api] ERROR"),
        "{text}"
    );
    // Nothing was asked after the refusal, and the VMM is gone.
    let calls = seen(&s);
    assert_eq!(calls.last().unwrap().0, "PUT /drives/rootfs");
    let pid: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.contains(&s.run_dir.join("jail").display().to_string()))
        })
        .filter(|pid| alive(*pid))
        .collect();
    assert!(pid.is_empty(), "VMMs left: {pid:?}");
}

#[tokio::test]
async fn a_jailer_that_exits_is_reported_with_its_output() {
    let s = setup("echo 'Jailer error: Failed to create cgroup' >&2; exit 1");
    let spec = spec(&s, Start::Boot, Memory::Anonymous);
    let err = s.driver.boot(&spec).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, VmmError::EarlyExit { .. }), "{text}");
    assert!(text.contains("Failed to create cgroup"), "{text}");
}

#[tokio::test]
async fn what_firecracker_cannot_take_is_refused_before_it_starts() {
    let s = setup("exec sleep 600");
    let mut qcow = spec(&s, Start::Boot, Memory::Anonymous);
    qcow.root_disk.format = DiskFormat::Qcow2;
    let err = s.driver.boot(&qcow).await.unwrap_err();
    assert!(err.to_string().contains("raw disks only"), "{err}");
    let mut tcg = spec(&s, Start::Boot, Memory::Anonymous);
    tcg.accel = Accel::Tcg;
    let err = s.driver.boot(&tcg).await.unwrap_err();
    assert!(matches!(err, VmmError::FirecrackerUnusable(_)), "{err}");
    assert!(!s.run_dir.join("jailer.args").exists(), "the jailer ran");
}

/// Whether another open file description can take `path`'s lock now.
fn lock_is_free(path: &Path) -> bool {
    std::fs::File::open(path).unwrap().try_lock().is_ok()
}

#[tokio::test]
async fn the_callers_locks_are_held_for_as_long_as_the_vmm_runs() {
    let s = setup("exec sleep 600");
    let lock_path = s.run_dir.join("owner.lock");
    let lock = std::fs::File::create(&lock_path).unwrap();
    lock.try_lock().unwrap();
    let mut spec = spec(&s, Start::Boot, Memory::Anonymous);
    spec.inherit = vec![std::os::fd::AsRawFd::as_raw_fd(&lock)];
    let mut vm = s.driver.boot(&spec).await.unwrap();
    // The caller lets go of its copy: the jailer kept none (the fake one
    // here keeps none either: it runs `exec sleep`, which closes nothing
    // but was given nothing), so only the holder holds the lock now.
    drop(lock);
    assert!(!lock_is_free(&lock_path), "no one holds the lock");
    let held = vm
        .inherited(&lock_path)
        .unwrap()
        .expect("the holder's copy");
    drop(held);
    assert!(vm.inherited(&s.run_dir.join("other")).unwrap().is_none());
    // The holder lets go once the VMM has ended.
    vm.stop().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !lock_is_free(&lock_path) {
        assert!(
            std::time::Instant::now() < deadline,
            "the lock outlived the VMM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
