//! The Firecracker driver with the real `firecracker` and `jailer` from
//! `PATH` (as root): the whole configuration, up to `InstanceStart`, must
//! be accepted; the VM must be adopted by pid after its starter let go of
//! it, its lock held meanwhile; a pause, a full snapshot, its load into a
//! second Firecracker, a volume attached there and a resume must be
//! accepted; and the VM's end must be reported and cleaned up.
//!
//! The guest has a kernel and an empty root disk, so it cannot get far: on
//! a host with hardware KVM its kernel panics for want of a root file
//! system (and `panic=-1` ends the VM), and on a host whose KVM runs no
//! ordinary guest it dies at once. Either way the VM must end by itself,
//! with the reason in the console or Firecracker's log.
//!
//! Not part of CI: neither binary can be installed on its machines (see
//! `docs/vmm.md` for running it, and the rest of the suite, on a KVM host).

use std::path::PathBuf;
use std::time::Duration;

use hearth_vmm::firecracker::Firecracker;
use hearth_vmm::firecracker::jail::{self, Jail};
use hearth_vmm::{Accel, Disk, DiskFormat, Memory, NetSpec, SavedMemory, Start, Vm, VmSpec, Vmm};

/// A guest kernel: `HEARTH_KERNEL`, else the first build under the data
/// directory's `kernels/` (`hearth kernel build`).
fn kernel() -> PathBuf {
    if let Some(path) = std::env::var_os("HEARTH_KERNEL") {
        return PathBuf::from(path);
    }
    let data = std::env::var_os("HEARTH_DATA_DIR").unwrap_or_else(|| "/var/lib/hearth".into());
    let kernels = PathBuf::from(data).join("kernels");
    std::fs::read_dir(&kernels)
        .unwrap_or_else(|e| panic!("{}: {e}; run hearth kernel build", kernels.display()))
        .filter_map(|e| Some(e.ok()?.path().join("vmlinux")))
        .find(|p| p.is_file())
        .expect("no guest kernel; run hearth kernel build")
}

/// An empty volume image of `bytes` at `path`, open read-write as a node
/// hands one to its VMM.
fn volume_image(path: &std::path::Path, bytes: u64) -> std::fs::File {
    let image = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .unwrap();
    image.set_len(bytes).unwrap();
    image
}

/// A network namespace with a tap device, removed when dropped.
struct Netns(String);

impl Netns {
    fn new(tap: &str) -> Self {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("hearth-fc-test-{}-{n}", std::process::id());
        let ip = |args: &[&str]| {
            let status = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap();
            assert!(status.success(), "ip {args:?}");
        };
        ip(&["netns", "add", &name]);
        let netns = Self(name);
        ip(&["-n", &netns.0, "tuntap", "add", tap, "mode", "tap"]);
        netns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

#[tokio::test]
#[ignore = "needs firecracker and jailer on PATH (not installable on the CI machines), and root"]
async fn real_firecracker_accepts_the_whole_configuration() {
    let driver = Firecracker::from_path().expect("firecracker and jailer on PATH");
    let version = driver.version().unwrap();
    eprintln!("driver: {version}");
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("fc-real");
    std::fs::create_dir(&run_dir).unwrap();
    let vmlinux = run_dir.join("vmlinux");
    std::fs::copy(kernel(), &vmlinux).unwrap();
    let disk = run_dir.join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    // A tap in a network namespace of its own, as a node's slot has.
    let netns = Netns::new("tap0");
    let spec = VmSpec {
        kernel: vmlinux,
        kernel_args: "root=/dev/vda rw init=/sbin/init".into(),
        root_disk: Disk {
            path: disk,
            format: DiskFormat::Raw,
        },
        vcpus: 1,
        memory_mib: 128,
        memory: Memory::Anonymous,
        start: Start::Boot,
        net: Some(NetSpec {
            tap: "tap0".into(),
            mac: "02:fc:00:00:00:09".into(),
            netns: Some(netns.path()),
        }),
        run_dir: run_dir.clone(),
        accel: Accel::Kvm,
        die_with_parent: true,
        run_as: Some("65534:65534".into()),
        cgroups: Vec::new(),
        inherit: Vec::new(),
        chroot: true,
    };
    let jail = Jail::new(&run_dir, &PathBuf::from("firecracker"));
    // A lock the VMM is to hold for as long as it runs, as a sandbox's.
    let lock_path = run_dir.join("owner.lock");
    let lock = std::fs::File::create(&lock_path).unwrap();
    lock.try_lock().unwrap();
    // As a node whose VMMs outlive it starts them: not killed when the
    // value that started them is dropped.
    let spec = VmSpec {
        die_with_parent: false,
        inherit: vec![std::os::fd::AsRawFd::as_raw_fd(&lock)],
        ..spec
    };
    let mut vm = match driver.boot(&spec).await {
        Ok(vm) => vm,
        Err(e) => panic!(
            "the configuration was refused: {e}\nfirecracker log:\n{}",
            std::fs::read_to_string(jail.host_path(jail::LOG)).unwrap_or_default()
        ),
    };
    let pid = vm.pid();
    eprintln!("InstanceStart accepted; firecracker pid {pid}");

    // Let go of it, as a server that stops leaves its VMs, and take it
    // over again: its lock is held meanwhile by its holder.
    vm.leave_running();
    drop(vm);
    drop(lock);
    assert!(
        std::fs::File::open(&lock_path).unwrap().try_lock().is_err(),
        "no one holds the VMM's lock"
    );
    let mut vm = driver.adopt(pid, &run_dir).await.unwrap();
    vm.pause().await.unwrap();
    vm.resume().await.unwrap();
    assert!(vm.inherited(&lock_path).unwrap().is_some());
    eprintln!("adopted; PATCH /vm Paused and Resumed accepted; its lock is held");

    // At once, before the guest can end: pause, a full snapshot, and a
    // restore of it into a second Firecracker, with a volume attached
    // before it resumes. The first VM has a volume attached too, so that
    // the restore must reopen its drive's path in a jail where no volume
    // is yet.
    let image = volume_image(&run_dir.join("first-volume.img"), 8 << 20);
    vm.attach_volume(0, &image).await.unwrap();
    let state = dir.path().join("paused.state");
    vm.save(&state, SavedMemory::Included).await.unwrap();
    let [_, memory] = hearth_vmm::state_files(&state);
    assert_eq!(std::fs::metadata(&memory).unwrap().len(), 128 << 20);
    eprintln!("PATCH /drives/vol0, PATCH /vm Paused and PUT /snapshot/create accepted");
    let restored_dir = dir.path().join("fc-restored");
    std::fs::create_dir(&restored_dir).unwrap();
    let restored_disk = restored_dir.join("disk.img");
    std::fs::copy(&spec.root_disk.path, &restored_disk).unwrap();
    // Its own tap, in a namespace of its own: the first VM holds its tap.
    let restored_netns = Netns::new("tap0");
    let restored_spec = VmSpec {
        root_disk: Disk {
            path: restored_disk,
            format: DiskFormat::Raw,
        },
        start: Start::Incoming,
        net: Some(NetSpec {
            tap: "tap0".into(),
            mac: "02:fc:00:00:00:09".into(),
            netns: Some(restored_netns.path()),
        }),
        run_dir: restored_dir.clone(),
        inherit: Vec::new(),
        ..spec.clone()
    };
    let mut restored = driver.boot(&restored_spec).await.unwrap();
    restored.load(&state, SavedMemory::Included).await.unwrap();
    let image = volume_image(&restored_dir.join("volume.img"), 16 << 20);
    restored.attach_volume(0, &image).await.unwrap();
    restored.resume().await.unwrap();
    eprintln!("PUT /snapshot/load, PATCH /drives/vol0 and PATCH /vm Resumed accepted");
    restored.stop().await.unwrap();
    vm.resume().await.unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(120), vm.wait())
        .await
        .expect("the guest cannot run for long: it has no root file system")
        .unwrap();
    let log = std::fs::read_to_string(jail.host_path(jail::LOG)).unwrap_or_default();
    let console = std::fs::read_to_string(vm.console_log()).unwrap_or_default();
    eprintln!("VM ended: {exit}\n-- firecracker log (tail):");
    for line in log
        .lines()
        .rev()
        .take(8)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        eprintln!("  {line}");
    }
    eprintln!("-- console (tail):");
    for line in console
        .lines()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        eprintln!("  {line}");
    }
    let explained = [
        "Kernel panic",
        "VFS: Unable to mount root",
        "emulation failure",
        "KVM",
        "exit_code",
    ];
    assert!(
        explained
            .iter()
            .any(|why| log.contains(why) || console.contains(why)),
        "the VM ended without a reason in its log or console"
    );
    vm.stop().await.unwrap();
    assert!(!jail.base.exists(), "the jail is left");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z"),
        "firecracker still runs"
    );
}
