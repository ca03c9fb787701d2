//! The QEMU command line, rendered from a [`VmSpec`] as plain data.

use std::path::Path;

use crate::{Accel, Memory, Start, VmSpec};

/// Arguments this driver adds to the guest kernel command line. The guest's
/// `reboot` triple-faults the CPU and `-no-reboot` turns that reset into a
/// QEMU exit; a panic reboots at once. A power-off request cannot end a
/// microvm guest without ACPI, so the guest init reboots instead.
const MACHINE_KERNEL_ARGS: &str = "console=ttyS0 reboot=t panic=-1";

pub(super) struct QemuArgs<'a> {
    spec: &'a VmSpec,
    qmp: &'a Path,
    console: &'a Path,
}

impl<'a> QemuArgs<'a> {
    pub(super) fn new(spec: &'a VmSpec, qmp: &'a Path, console: &'a Path) -> Self {
        Self { spec, qmp, console }
    }

    pub(super) fn render(&self) -> Vec<String> {
        let spec = self.spec;
        let (accel, cpu) = match spec.accel {
            Accel::Kvm => ("kvm", "host"),
            Accel::Tcg => ("tcg", "max"),
        };
        let mut args: Vec<String> = vec![
            // With acpi=off QEMU appends the virtio_mmio.device= arguments to
            // the kernel command line itself; adding them again breaks probing.
            "-M".into(),
            "microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=off,memory-backend=ram0".into(),
            "-accel".into(),
            accel.into(),
            "-cpu".into(),
            cpu.into(),
            "-smp".into(),
            spec.vcpus.to_string(),
            "-m".into(),
            format!("{}M", spec.memory_mib),
            "-object".into(),
            memory_backend(spec),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-nographic".into(),
            "-no-reboot".into(),
            "-kernel".into(),
            spec.kernel.display().to_string(),
            "-append".into(),
            format!("{MACHINE_KERNEL_ARGS} {}", spec.kernel_args.trim()),
            "-drive".into(),
            format!(
                "id=root,file={},format={},if=none,cache=unsafe,discard=unmap",
                escape(&disk_path(spec)),
                spec.root_disk.format.as_str()
            ),
            "-device".into(),
            "virtio-blk-device,drive=root".into(),
            "-device".into(),
            "virtio-rng-device".into(),
            "-chardev".into(),
            format!(
                "file,id=console,path={}",
                escape(&self.console.display().to_string())
            ),
            "-serial".into(),
            "chardev:console".into(),
            "-qmp".into(),
            format!(
                "unix:{},server=on,wait=off",
                escape(&self.qmp.display().to_string())
            ),
        ];
        for slot in 0..crate::VOLUME_SLOTS {
            let (placeholder, fmt) = volume_nodes(slot);
            let file = crate::volume_placeholder(&spec.run_dir, slot);
            args.extend([
                "-blockdev".into(),
                format!(
                    "driver=file,node-name={placeholder},filename={}",
                    escape(&jailed_path(spec, &file))
                ),
                "-blockdev".into(),
                format!("driver=raw,node-name={fmt},file={placeholder}"),
                "-device".into(),
                format!(
                    "virtio-blk-device,drive={fmt},serial={}",
                    crate::volume_serial(slot)
                ),
            ]);
        }
        if let Some(net) = &spec.net {
            args.extend([
                "-netdev".into(),
                format!(
                    "tap,id=net0,ifname={},script=no,downscript=no,vhost=off",
                    escape(&net.tap)
                ),
                "-device".into(),
                format!("virtio-net-device,netdev=net0,mac={}", net.mac),
            ]);
        }
        if spec.start == Start::Incoming {
            args.extend(["-incoming".into(), "defer".into()]);
        }
        // QEMU's seccomp filter: no obsolete system calls, no new
        // processes (saved states travel over descriptors the host
        // passes), no scheduler or resource changes. `elevateprivileges`
        // stays allowed only because QEMU itself calls setuid for `-runas`
        // after the filter is in force; once it has, it holds no
        // capabilities and no saved root uid to go back to.
        args.extend([
            "-sandbox".into(),
            "on,obsolete=deny,spawn=deny,resourcecontrol=deny".into(),
        ]);
        if spec.chroot {
            // QEMU chroots (then drops to its user) once it has opened
            // everything on its command line.
            args.extend(["-chroot".into(), spec.run_dir.display().to_string()]);
        }
        if let Some(user) = &spec.run_as {
            args.extend(["-runas".into(), user.clone()]);
        }
        args
    }
}

/// The root disk as QEMU names it. A confined VMM (`chroot`) runs in
/// `run_dir` and names its disk relative to it, so the same name still
/// reaches the disk from inside the jail (whose root is `run_dir`) when it
/// reopens it.
fn disk_path(spec: &VmSpec) -> String {
    jailed_path(spec, &spec.root_disk.path)
}

/// `path` as the VMM names it: relative to `run_dir` when it is confined
/// there and `path` lies inside.
fn jailed_path(spec: &VmSpec, path: &Path) -> String {
    match path.strip_prefix(&spec.run_dir) {
        Ok(inside) if spec.chroot => inside.display().to_string(),
        _ => path.display().to_string(),
    }
}

/// The block nodes of volume slot `slot`: the placeholder's file node and
/// the raw node the device is attached to.
pub(super) fn volume_nodes(slot: usize) -> (String, String) {
    (format!("vol{slot}-empty"), format!("vol{slot}"))
}

/// The memory backend, always `ram0`: a saved state names its RAM block
/// after the backend, so every VM must use the same id to load another's state.
fn memory_backend(spec: &VmSpec) -> String {
    let size = spec.memory_mib;
    match &spec.memory {
        Memory::Anonymous => format!("memory-backend-ram,id=ram0,size={size}M"),
        Memory::File { path, shared } => format!(
            "memory-backend-file,id=ram0,size={size}M,mem-path={},share={}",
            escape(&path.display().to_string()),
            if *shared { "on" } else { "off" }
        ),
    }
}

/// QEMU option values separate with commas; a literal comma is doubled.
fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Disk, DiskFormat, NetSpec};
    use std::path::PathBuf;

    fn spec(accel: Accel, net: bool) -> VmSpec {
        VmSpec {
            kernel: PathBuf::from("/k/vmlinux"),
            kernel_args: " root=/dev/vda rw init=/usr/sbin/hearth-init ".into(),
            root_disk: Disk {
                path: PathBuf::from("/s/a,b/disk.qcow2"),
                format: DiskFormat::Qcow2,
            },
            vcpus: 2,
            memory_mib: 512,
            memory: Memory::Anonymous,
            start: Start::Boot,
            net: net.then(|| NetSpec {
                tap: "tap0".into(),
                mac: "02:fc:00:00:00:05".into(),
                netns: None,
            }),
            run_dir: PathBuf::from("/s"),
            accel,
            die_with_parent: true,
            run_as: None,
            cgroups: Vec::new(),
            inherit: Vec::new(),
            chroot: false,
        }
    }

    fn value_of<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn tcg_microvm_command_line() {
        let s = spec(Accel::Tcg, true);
        let args =
            QemuArgs::new(&s, Path::new("/s/qmp.sock"), Path::new("/s/console.log")).render();
        assert_eq!(value_of(&args, "-accel"), ["tcg"]);
        assert_eq!(value_of(&args, "-cpu"), ["max"]);
        assert_eq!(
            value_of(&args, "-M"),
            ["microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=off,memory-backend=ram0"]
        );
        assert_eq!(value_of(&args, "-m"), ["512M"]);
        assert_eq!(
            value_of(&args, "-object"),
            ["memory-backend-ram,id=ram0,size=512M"]
        );
        assert!(!args.contains(&"-incoming".to_string()));
        assert_eq!(value_of(&args, "-smp"), ["2"]);
        assert!(args.contains(&"-no-reboot".to_string()));
        assert_eq!(
            value_of(&args, "-append"),
            ["console=ttyS0 reboot=t panic=-1 root=/dev/vda rw init=/usr/sbin/hearth-init"]
        );
        assert!(!value_of(&args, "-append")[0].contains("virtio_mmio"));
        assert_eq!(
            value_of(&args, "-drive"),
            ["id=root,file=/s/a,,b/disk.qcow2,format=qcow2,if=none,cache=unsafe,discard=unmap"]
        );
        assert_eq!(
            value_of(&args, "-netdev"),
            ["tap,id=net0,ifname=tap0,script=no,downscript=no,vhost=off"]
        );
        assert_eq!(
            value_of(&args, "-device"),
            [
                "virtio-blk-device,drive=root",
                "virtio-rng-device",
                "virtio-blk-device,drive=vol0,serial=hearth-vol0",
                "virtio-blk-device,drive=vol1,serial=hearth-vol1",
                "virtio-blk-device,drive=vol2,serial=hearth-vol2",
                "virtio-blk-device,drive=vol3,serial=hearth-vol3",
                "virtio-net-device,netdev=net0,mac=02:fc:00:00:00:05"
            ]
        );
        // Each volume slot: an empty placeholder under a raw node, which
        // `attach_volume` points at an image.
        let blockdevs = value_of(&args, "-blockdev");
        assert_eq!(blockdevs.len(), 2 * crate::VOLUME_SLOTS);
        assert_eq!(
            blockdevs[..2],
            [
                "driver=file,node-name=vol0-empty,filename=/s/vol0.img",
                "driver=raw,node-name=vol0,file=vol0-empty"
            ]
        );
        assert_eq!(
            value_of(&args, "-qmp"),
            ["unix:/s/qmp.sock,server=on,wait=off"]
        );
        assert_eq!(
            value_of(&args, "-sandbox"),
            ["on,obsolete=deny,spawn=deny,resourcecontrol=deny"]
        );
        assert!(value_of(&args, "-runas").is_empty());
    }

    #[test]
    fn an_unprivileged_user_is_passed_on() {
        let mut s = spec(Accel::Tcg, false);
        s.run_as = Some("hearth-vmm".into());
        let args = QemuArgs::new(&s, Path::new("/q"), Path::new("/c")).render();
        assert_eq!(value_of(&args, "-runas"), ["hearth-vmm"]);
    }

    #[test]
    fn file_memory_and_incoming_start() {
        let mut s = spec(Accel::Tcg, false);
        s.memory = Memory::File {
            path: PathBuf::from("/t/a,b/memory"),
            shared: false,
        };
        s.start = Start::Incoming;
        let args = QemuArgs::new(&s, Path::new("/q"), Path::new("/c")).render();
        assert_eq!(
            value_of(&args, "-object"),
            ["memory-backend-file,id=ram0,size=512M,mem-path=/t/a,,b/memory,share=off"]
        );
        assert_eq!(value_of(&args, "-incoming"), ["defer"]);
        s.memory = Memory::File {
            path: PathBuf::from("/t/memory"),
            shared: true,
        };
        let args = QemuArgs::new(&s, Path::new("/q"), Path::new("/c")).render();
        assert!(value_of(&args, "-object")[0].ends_with(",share=on"));
    }

    #[test]
    fn kvm_uses_host_cpu_and_no_net_without_spec() {
        let s = spec(Accel::Kvm, false);
        let args = QemuArgs::new(&s, Path::new("/q"), Path::new("/c")).render();
        assert_eq!(value_of(&args, "-accel"), ["kvm"]);
        assert_eq!(value_of(&args, "-cpu"), ["host"]);
        assert!(value_of(&args, "-netdev").is_empty());
    }

    #[test]
    fn a_confined_vmm_names_its_disk_from_inside_its_directory() {
        let mut s = spec(Accel::Tcg, false);
        s.root_disk.path = PathBuf::from("/s/disk.qcow2");
        s.chroot = true;
        let args =
            QemuArgs::new(&s, Path::new("/s/qmp.sock"), Path::new("/s/console.log")).render();
        assert_eq!(value_of(&args, "-chroot"), ["/s"]);
        assert!(
            value_of(&args, "-drive")[0].starts_with("id=root,file=disk.qcow2,"),
            "{args:?}"
        );
        // So do the volume placeholders.
        assert!(
            value_of(&args, "-blockdev")[0].ends_with(",filename=vol0.img"),
            "{args:?}"
        );
        // Unconfined, the same spec names it in full.
        s.chroot = false;
        let args =
            QemuArgs::new(&s, Path::new("/s/qmp.sock"), Path::new("/s/console.log")).render();
        assert!(value_of(&args, "-chroot").is_empty());
        assert!(value_of(&args, "-drive")[0].starts_with("id=root,file=/s/disk.qcow2,"));
    }
}
