//! Helpers shared by the VM test binaries.

use std::path::PathBuf;
use std::process::Command;

pub fn data_dir() -> PathBuf {
    std::env::var_os("HEARTH_DATA_DIR").map_or_else(|| "/var/lib/hearth".into(), PathBuf::from)
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts that nothing a sandbox creates is left on the host.
pub fn assert_nothing_left(when: &str) {
    let leftovers = hearth_net::leftovers().expect("list network resources");
    assert!(
        leftovers.is_empty(),
        "{when}: network leftovers {leftovers:?}"
    );
    let qemus = qemu_pids();
    assert!(qemus.is_empty(), "{when}: VMM processes left: {qemus}");
    let cgroups: Vec<_> = ["", "cpu/", "memory/", "pids/"]
        .iter()
        .filter_map(|c| std::fs::read_dir(format!("/sys/fs/cgroup/{c}hearth")).ok())
        .flat_map(|d| d.filter_map(Result::ok))
        .filter(|e| e.path().is_dir())
        .map(|e| e.path())
        .collect();
    assert!(cgroups.is_empty(), "{when}: VMM cgroups left: {cgroups:?}");
    let sandboxes: Vec<_> = std::fs::read_dir(data_dir().join("sandboxes"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        sandboxes.is_empty(),
        "{when}: sandbox directories left: {sandboxes:?}"
    );
}

/// Pids of running QEMU processes, one per line.
pub fn qemu_pids() -> String {
    let out = Command::new("pgrep")
        .args(["-f", "qemu-system-x86_64"])
        .output()
        .expect("pgrep runs");
    text(&out.stdout)
}
