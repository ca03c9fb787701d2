//! The driver a node runs its VMs with, chosen at run time.
//!
//! [`Driver`] and [`AnyVm`] are enums over the two drivers rather than
//! boxed trait objects: the set of drivers is closed and known when Hearth
//! is built, the [`Vmm`] and [`Vm`] traits return futures (`async fn`),
//! which a `dyn` trait could only offer boxed, one allocation per call, and
//! a `match` makes every caller's handling of a new driver a compile error
//! instead of a run-time surprise.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::firecracker::{Firecracker, FirecrackerVm};
use crate::qemu::{Qemu, QemuVm};
use crate::{Accel, AccelDecision, SavedMemory, Vm, VmExit, VmSpec, Vmm, VmmError};

/// A VMM driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmKind {
    Qemu,
    Firecracker,
}

impl fmt::Display for VmmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Qemu => "qemu",
            Self::Firecracker => "firecracker",
        })
    }
}

/// What the user asked for (`--vmm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VmmChoice {
    #[default]
    Auto,
    Qemu,
    Firecracker,
}

impl FromStr for VmmChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "qemu" => Ok(Self::Qemu),
            "firecracker" => Ok(Self::Firecracker),
            other => Err(format!(
                "unknown VMM '{other}'; use auto, qemu or firecracker"
            )),
        }
    }
}

/// The driver chosen and why, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmDecision {
    pub kind: VmmKind,
    pub reason: String,
}

/// Chooses the driver. `accel` is the accelerator already chosen (KVM only
/// where ordinary guests really run, see [`crate::detect_accel`]);
/// `firecracker_missing` says which of `firecracker` and `jailer` is not
/// on `PATH`, if one is not.
///
/// `auto` takes Firecracker where it can run (both binaries, hardware
/// KVM), else QEMU, which runs everywhere. Asked for by name, Firecracker
/// must be able to run: it has no software emulation.
pub fn decide_vmm(
    choice: VmmChoice,
    accel: &AccelDecision,
    firecracker_missing: Option<&str>,
) -> Result<VmmDecision, VmmError> {
    let usable = match (firecracker_missing, accel.accel) {
        (Some(missing), _) => Err(format!("{missing} is not on PATH")),
        (None, Accel::Tcg) => Err(format!(
            "Firecracker needs KVM and the accelerator is TCG ({})",
            accel.reason
        )),
        (None, Accel::Kvm) => Ok("firecracker and jailer are on PATH and KVM runs guests"),
    };
    match (choice, usable) {
        (VmmChoice::Qemu, _) => Ok(VmmDecision {
            kind: VmmKind::Qemu,
            reason: "--vmm qemu".to_owned(),
        }),
        (VmmChoice::Firecracker | VmmChoice::Auto, Ok(why)) => Ok(VmmDecision {
            kind: VmmKind::Firecracker,
            reason: why.to_owned(),
        }),
        (VmmChoice::Firecracker, Err(why)) => Err(VmmError::FirecrackerUnusable(why)),
        (VmmChoice::Auto, Err(why)) => Ok(VmmDecision {
            kind: VmmKind::Qemu,
            reason: why,
        }),
    }
}

/// Chooses the driver for this host and opens it.
pub fn open_driver(
    choice: VmmChoice,
    accel: &AccelDecision,
) -> Result<(Driver, VmmDecision), VmmError> {
    let firecracker = Firecracker::from_path();
    let missing = match &firecracker {
        Ok(_) => None,
        Err(VmmError::BinaryMissing { binary, .. }) => Some(*binary),
        Err(_) => Some("firecracker"),
    };
    let decision = decide_vmm(choice, accel, missing)?;
    let driver = match decision.kind {
        VmmKind::Qemu => Driver::Qemu(Qemu::from_path()?),
        VmmKind::Firecracker => Driver::Firecracker(firecracker?),
    };
    Ok((driver, decision))
}

/// One of the drivers.
#[derive(Debug, Clone)]
pub enum Driver {
    Qemu(Qemu),
    Firecracker(Firecracker),
}

impl Driver {
    pub fn kind(&self) -> VmmKind {
        match self {
            Self::Qemu(_) => VmmKind::Qemu,
            Self::Firecracker(_) => VmmKind::Firecracker,
        }
    }

    /// The driver's version, as it prints it: `QEMU emulator version
    /// 7.2.22 …` or `Firecracker v1.16.1`. A saved state loads only with
    /// the driver and version that wrote it.
    pub fn version(&self) -> Result<String, VmmError> {
        match self {
            Self::Qemu(qemu) => qemu.version(),
            Self::Firecracker(firecracker) => firecracker.version(),
        }
    }

    /// Whether a VM's disks may be qcow2 images; otherwise they must be
    /// raw.
    pub fn takes_qcow2(&self) -> bool {
        matches!(self, Self::Qemu(_))
    }

    /// Takes over the VM that process `pid` runs for `run_dir`, started by
    /// an earlier process; see [`Qemu::adopt`] and [`Firecracker::adopt`].
    pub async fn adopt(&self, pid: u32, run_dir: &Path) -> Result<AnyVm, VmmError> {
        match self {
            Self::Qemu(qemu) => qemu.adopt(pid, run_dir).await.map(AnyVm::Qemu),
            Self::Firecracker(fc) => fc.adopt(pid, run_dir).await.map(AnyVm::Firecracker),
        }
    }
}

impl Vmm for Driver {
    type Vm = AnyVm;

    async fn boot(&self, spec: &VmSpec) -> Result<AnyVm, VmmError> {
        match self {
            Self::Qemu(qemu) => qemu.boot(spec).await.map(AnyVm::Qemu),
            Self::Firecracker(fc) => fc.boot(spec).await.map(AnyVm::Firecracker),
        }
    }
}

/// A VM of either driver.
#[derive(Debug)]
pub enum AnyVm {
    Qemu(QemuVm),
    Firecracker(FirecrackerVm),
}

impl AnyVm {
    /// Sends the VMM SIGKILL unless it has ended; see [`QemuVm::start_kill`].
    pub fn start_kill(&mut self) {
        match self {
            Self::Qemu(vm) => vm.start_kill(),
            Self::Firecracker(vm) => vm.start_kill(),
        }
    }

    /// Lets the VMM outlive this value; see [`QemuVm::leave_running`].
    pub fn leave_running(&mut self) {
        match self {
            Self::Qemu(vm) => vm.leave_running(),
            Self::Firecracker(vm) => vm.leave_running(),
        }
    }

    /// The serial number the guest reads for the volume disk in slot
    /// `slot`, once `image` is attached there.
    pub fn volume_serial(&self, slot: usize, image: &std::fs::Metadata) -> String {
        match self {
            Self::Qemu(_) => crate::volume_serial(slot),
            Self::Firecracker(_) => crate::firecracker::volume_serial(image),
        }
    }

    /// A copy of the descriptor for `path` the VM holds for as long as it
    /// runs ([`VmSpec::inherit`]); see [`QemuVm::inherited`] and
    /// [`FirecrackerVm::inherited`].
    pub fn inherited(&self, path: &Path) -> Result<Option<std::os::fd::OwnedFd>, VmmError> {
        match self {
            Self::Qemu(vm) => vm.inherited(path),
            Self::Firecracker(vm) => vm.inherited(path),
        }
    }
}

impl Vm for AnyVm {
    fn pid(&self) -> u32 {
        match self {
            Self::Qemu(vm) => vm.pid(),
            Self::Firecracker(vm) => vm.pid(),
        }
    }

    fn console_log(&self) -> &Path {
        match self {
            Self::Qemu(vm) => vm.console_log(),
            Self::Firecracker(vm) => vm.console_log(),
        }
    }

    async fn wait(&mut self) -> Result<VmExit, VmmError> {
        match self {
            Self::Qemu(vm) => vm.wait().await,
            Self::Firecracker(vm) => vm.wait().await,
        }
    }

    async fn stop(&mut self) -> Result<VmExit, VmmError> {
        match self {
            Self::Qemu(vm) => vm.stop().await,
            Self::Firecracker(vm) => vm.stop().await,
        }
    }

    async fn save(&mut self, path: &Path, memory: SavedMemory) -> Result<(), VmmError> {
        match self {
            Self::Qemu(vm) => vm.save(path, memory).await,
            Self::Firecracker(vm) => vm.save(path, memory).await,
        }
    }

    async fn load(&mut self, path: &Path, memory: SavedMemory) -> Result<(), VmmError> {
        match self {
            Self::Qemu(vm) => vm.load(path, memory).await,
            Self::Firecracker(vm) => vm.load(path, memory).await,
        }
    }

    async fn pause(&mut self) -> Result<(), VmmError> {
        match self {
            Self::Qemu(vm) => vm.pause().await,
            Self::Firecracker(vm) => vm.pause().await,
        }
    }

    async fn resume(&mut self) -> Result<(), VmmError> {
        match self {
            Self::Qemu(vm) => vm.resume().await,
            Self::Firecracker(vm) => vm.resume().await,
        }
    }

    async fn attach_volume(&mut self, slot: usize, file: &std::fs::File) -> Result<(), VmmError> {
        match self {
            Self::Qemu(vm) => vm.attach_volume(slot, file).await,
            Self::Firecracker(vm) => vm.attach_volume(slot, file).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accel(accel: Accel) -> AccelDecision {
        AccelDecision {
            accel,
            reason: "probed".to_owned(),
        }
    }

    #[test]
    fn auto_takes_firecracker_only_where_it_runs() {
        let kvm = accel(Accel::Kvm);
        let tcg = accel(Accel::Tcg);
        let pick = |choice, accel: &AccelDecision, missing| {
            decide_vmm(choice, accel, missing).map(|d| (d.kind, d.reason))
        };
        let (kind, _) = pick(VmmChoice::Auto, &kvm, None).unwrap();
        assert_eq!(kind, VmmKind::Firecracker);
        let (kind, why) = pick(VmmChoice::Auto, &kvm, Some("jailer")).unwrap();
        assert_eq!(
            (kind, why.as_str()),
            (VmmKind::Qemu, "jailer is not on PATH")
        );
        let (kind, why) = pick(VmmChoice::Auto, &tcg, None).unwrap();
        assert_eq!(kind, VmmKind::Qemu);
        assert!(why.contains("needs KVM") && why.contains("probed"), "{why}");
    }

    #[test]
    fn named_drivers() {
        let tcg = accel(Accel::Tcg);
        let kvm = accel(Accel::Kvm);
        assert_eq!(
            decide_vmm(VmmChoice::Qemu, &kvm, None).unwrap().kind,
            VmmKind::Qemu
        );
        assert_eq!(
            decide_vmm(VmmChoice::Firecracker, &kvm, None).unwrap().kind,
            VmmKind::Firecracker
        );
        let err = decide_vmm(VmmChoice::Firecracker, &tcg, None).unwrap_err();
        assert!(err.to_string().contains("needs KVM"), "{err}");
        let err = decide_vmm(VmmChoice::Firecracker, &kvm, Some("firecracker")).unwrap_err();
        assert!(
            err.to_string().contains("firecracker is not on PATH"),
            "{err}"
        );
        assert_eq!("firecracker".parse(), Ok(VmmChoice::Firecracker));
        assert_eq!("auto".parse(), Ok(VmmChoice::Auto));
        assert!("xen".parse::<VmmChoice>().is_err());
    }
}
