//! Checks that turn a missing prerequisite into one line saying what to do.

use std::path::Path;

use crate::NodeError;

/// Host prerequisites for running sandboxes.
pub(crate) fn check_host() -> Result<(), NodeError> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err(NodeError::Preflight(
            "hearth must run as root to create network namespaces and taps; \
             run it again with sudo"
                .to_owned(),
        ));
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err(NodeError::Preflight(
            "/dev/net/tun is missing; run: modprobe tun (or, in a container, \
             pass the device in with --device /dev/net/tun)"
                .to_owned(),
        ));
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("qemu-img", "qemu-utils"),
    ] {
        if !on_path(tool) {
            return Err(NodeError::Preflight(format!(
                "{tool} not found; run: apt-get install -y {package}"
            )));
        }
    }
    Ok(())
}

/// Host memory a new VM must leave free: below it a start is refused
/// rather than pushing the host into its OOM killer. Guests take memory as
/// they touch it (a restored idle sandbox holds tens of MiB), so the check
/// is on what the host has left, not on the guest's size.
pub(crate) const MIN_FREE_MIB: u64 = 512;

/// `MemAvailable` of `/proc/meminfo` text, in MiB.
fn available_mib(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let kib: u64 = line
            .strip_prefix("MemAvailable:")?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()?;
        Some(kib / 1024)
    })
}

/// Refuses a new VM when the host has less than [`MIN_FREE_MIB`] available.
pub(crate) fn check_memory(meminfo: &str) -> Result<(), NodeError> {
    match available_mib(meminfo) {
        Some(available) if available < MIN_FREE_MIB => Err(NodeError::OutOfMemory {
            available_mib: available,
            min_free_mib: MIN_FREE_MIB,
        }),
        _ => Ok(()),
    }
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(tool).is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_needs_free_host_memory() {
        let meminfo = |kib: u64| format!("MemTotal: 24000000 kB\nMemAvailable: {kib} kB\n");
        assert!(check_memory(&meminfo(4 << 20)).is_ok());
        let err = check_memory(&meminfo(300 << 10)).unwrap_err();
        assert!(
            matches!(
                err,
                NodeError::OutOfMemory {
                    available_mib: 300,
                    min_free_mib: 512
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("300 MiB"), "{err}");
        // Unreadable: let the start try.
        assert!(check_memory("garbage").is_ok());
    }
}
