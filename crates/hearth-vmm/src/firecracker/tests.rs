//! The driver's calls as data: each body checked against the definitions
//! of Firecracker's swagger file, version 1.16.1, and each sequence as
//! Firecracker's documentation orders it.

use std::path::PathBuf;

use serde_json::{Value, json};

use super::*;
use crate::{Disk, NetSpec};

/// A JSON type in the swagger file.
#[derive(Clone, Copy)]
enum Type {
    Str,
    Int,
    Bool,
    Object,
    Array,
    Enum(&'static [&'static str]),
}

/// One definition: its properties, and which are required.
struct Definition {
    name: &'static str,
    required: &'static [&'static str],
    properties: &'static [(&'static str, Type)],
}

use Type::{Array, Bool, Enum, Int, Object, Str};

/// The definitions the driver sends, transcribed from the swagger file of
/// Firecracker 1.16.1: every property, its type, and the required ones.
const DEFINITIONS: &[Definition] = &[
    Definition {
        name: "Logger",
        required: &[],
        properties: &[
            (
                "level",
                Enum(&["Error", "Warning", "Info", "Debug", "Trace", "Off"]),
            ),
            ("log_path", Str),
            ("show_level", Bool),
            ("show_log_origin", Bool),
            ("module", Str),
        ],
    },
    Definition {
        name: "Metrics",
        required: &["metrics_path"],
        properties: &[("metrics_path", Str)],
    },
    Definition {
        name: "MachineConfiguration",
        required: &["mem_size_mib", "vcpu_count"],
        properties: &[
            ("cpu_template", Object),
            ("smt", Bool),
            ("mem_size_mib", Int),
            ("track_dirty_pages", Bool),
            ("vcpu_count", Int),
            ("huge_pages", Enum(&["None", "2M"])),
        ],
    },
    Definition {
        name: "BootSource",
        required: &["kernel_image_path"],
        properties: &[
            ("boot_args", Str),
            ("initrd_path", Str),
            ("kernel_image_path", Str),
        ],
    },
    Definition {
        name: "Drive",
        required: &["drive_id", "is_root_device"],
        properties: &[
            ("drive_id", Str),
            ("partuuid", Str),
            ("is_root_device", Bool),
            ("cache_type", Enum(&["Unsafe", "Writeback"])),
            ("is_read_only", Bool),
            ("path_on_host", Str),
            ("rate_limiter", Object),
            ("io_engine", Enum(&["Sync", "Async"])),
            ("socket", Str),
        ],
    },
    Definition {
        name: "PartialDrive",
        required: &["drive_id"],
        properties: &[
            ("drive_id", Str),
            ("path_on_host", Str),
            ("rate_limiter", Object),
        ],
    },
    Definition {
        name: "NetworkInterface",
        required: &["host_dev_name", "iface_id"],
        properties: &[
            ("guest_mac", Str),
            ("host_dev_name", Str),
            ("iface_id", Str),
            ("mtu", Int),
            ("rx_rate_limiter", Object),
            ("tx_rate_limiter", Object),
        ],
    },
    Definition {
        name: "EntropyDevice",
        required: &[],
        properties: &[("rate_limiter", Object)],
    },
    Definition {
        name: "InstanceActionInfo",
        required: &["action_type"],
        properties: &[(
            "action_type",
            Enum(&["FlushMetrics", "InstanceStart", "SendCtrlAltDel"]),
        )],
    },
    Definition {
        name: "Vm",
        required: &["state"],
        properties: &[("state", Enum(&["Paused", "Resumed"]))],
    },
    Definition {
        name: "SnapshotCreateParams",
        required: &["mem_file_path", "snapshot_path"],
        properties: &[
            ("mem_file_path", Str),
            ("snapshot_path", Str),
            ("snapshot_type", Enum(&["Full", "Diff"])),
        ],
    },
    Definition {
        name: "SnapshotLoadParams",
        required: &["snapshot_path"],
        properties: &[
            ("enable_diff_snapshots", Bool),
            ("track_dirty_pages", Bool),
            ("mem_file_path", Str),
            ("mem_backend", Object),
            ("snapshot_path", Str),
            ("resume_vm", Bool),
            ("network_overrides", Array),
            ("vsock_override", Object),
            ("clock_realtime", Bool),
        ],
    },
    Definition {
        name: "MemoryBackend",
        required: &["backend_type", "backend_path"],
        properties: &[
            ("backend_type", Enum(&["File", "Uffd"])),
            ("backend_path", Str),
        ],
    },
];

/// The definition the swagger file gives each method and path's body.
fn definition_of(call: &Call) -> &'static str {
    match (call.method().as_str(), call.path().as_str()) {
        ("PUT", "/logger") => "Logger",
        ("PUT", "/metrics") => "Metrics",
        ("PUT", "/machine-config") => "MachineConfiguration",
        ("PUT", "/boot-source") => "BootSource",
        ("PUT", p) if p.starts_with("/drives/") => "Drive",
        ("PATCH", p) if p.starts_with("/drives/") => "PartialDrive",
        ("PUT", p) if p.starts_with("/network-interfaces/") => "NetworkInterface",
        ("PUT", "/entropy") => "EntropyDevice",
        ("PUT", "/actions") => "InstanceActionInfo",
        ("PATCH", "/vm") => "Vm",
        ("PUT", "/snapshot/create") => "SnapshotCreateParams",
        ("PUT", "/snapshot/load") => "SnapshotLoadParams",
        (method, path) => panic!("{method} {path} is not an operation of the API"),
    }
}

/// Fails with what `body` breaks of definition `name`: an unknown or
/// mistyped property, a missing required one.
fn check(name: &str, body: &Value) {
    let def = DEFINITIONS
        .iter()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("no definition {name}"));
    let object = body
        .as_object()
        .unwrap_or_else(|| panic!("{name}: not an object"));
    for required in def.required {
        assert!(object.contains_key(*required), "{name}: {required} missing");
    }
    for (key, value) in object {
        let (_, ty) = def
            .properties
            .iter()
            .find(|(p, _)| p == key)
            .unwrap_or_else(|| panic!("{name} has no property {key}"));
        let fits = match ty {
            Str => value.is_string(),
            Int => value.is_u64(),
            Bool => value.is_boolean(),
            Object => value.is_object(),
            Array => value.is_array(),
            Enum(values) => value.as_str().is_some_and(|v| values.contains(&v)),
        };
        assert!(fits, "{name}.{key} = {value} is not of its type");
        if name == "SnapshotLoadParams" && key == "mem_backend" {
            check("MemoryBackend", value);
        }
    }
}

fn spec(start: Start, net: bool) -> VmSpec {
    VmSpec {
        kernel: PathBuf::from("/k/vmlinux"),
        kernel_args: " root=/dev/vda rw init=/usr/sbin/hearth-init ".into(),
        root_disk: Disk {
            path: PathBuf::from("/s/disk.img"),
            format: DiskFormat::Raw,
        },
        vcpus: 2,
        memory_mib: 512,
        memory: Memory::Anonymous,
        start,
        net: net.then(|| NetSpec {
            tap: "tap0".into(),
            mac: "02:fc:00:00:00:05".into(),
            netns: Some(PathBuf::from("/run/netns/hearth-5")),
        }),
        run_dir: PathBuf::from("/s"),
        accel: Accel::Kvm,
        die_with_parent: true,
        run_as: Some("100005:100005".into()),
        cgroups: Vec::new(),
        inherit: Vec::new(),
        chroot: true,
    }
}

fn all_calls() -> Vec<Call> {
    let mut calls = boot_calls(&spec(Start::Boot, true));
    calls.extend(load_calls());
    calls.extend(save_calls());
    calls.extend(attach_calls(3));
    calls.push(Call::PatchVm(VmState { state: "Resumed" }));
    calls
}

#[test]
fn every_body_fits_the_swagger_definitions() {
    for call in all_calls() {
        check(definition_of(&call), &call.body());
    }
}

#[test]
fn the_schema_check_catches_mistakes() {
    let caught = |body: Value| std::panic::catch_unwind(|| check("Drive", &body)).is_err();
    assert!(caught(json!({"drive_id": "a"})), "missing is_root_device");
    assert!(caught(json!({"drive_id": "a", "is_root_device": "yes"})));
    assert!(caught(
        json!({"drive_id": "a", "is_root_device": false, "readonly": true})
    ));
    assert!(caught(
        json!({"drive_id": "a", "is_root_device": false, "cache_type": "None"})
    ));
    assert!(!caught(
        json!({"drive_id": "a", "is_root_device": false, "cache_type": "Writeback"})
    ));
}

#[test]
fn boot_sequence() {
    let calls = boot_calls(&spec(Start::Boot, true));
    let order: Vec<String> = calls.iter().map(Call::describe).collect();
    assert_eq!(
        order,
        [
            "PUT /logger",
            "PUT /metrics",
            "PUT /machine-config",
            "PUT /boot-source",
            "PUT /drives/rootfs",
            "PUT /drives/vol0",
            "PUT /drives/vol1",
            "PUT /drives/vol2",
            "PUT /drives/vol3",
            "PUT /network-interfaces/eth0",
            "PUT /entropy",
            "PUT /actions",
        ]
    );
    let body = |path: &str| {
        calls
            .iter()
            .find(|c| c.path() == path)
            .map(Call::body)
            .unwrap()
    };
    assert_eq!(
        body("/machine-config"),
        json!({"vcpu_count": 2, "mem_size_mib": 512, "smt": false, "track_dirty_pages": false})
    );
    assert_eq!(
        body("/boot-source"),
        json!({
            "kernel_image_path": "/vmlinux",
            "boot_args": "console=ttyS0 reboot=k panic=-1 pci=off root=/dev/vda rw init=/usr/sbin/hearth-init",
        })
    );
    assert_eq!(
        body("/drives/rootfs"),
        json!({"drive_id": "rootfs", "path_on_host": "/rootfs.img", "is_root_device": true,
               "is_read_only": false, "cache_type": "Unsafe"})
    );
    assert_eq!(body("/drives/vol2")["path_on_host"], "/vol2.img");
    assert_eq!(
        body("/network-interfaces/eth0"),
        json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "02:fc:00:00:00:05"})
    );
    assert_eq!(body("/entropy"), json!({}));
    assert_eq!(body("/actions"), json!({"action_type": "InstanceStart"}));
    assert_eq!(
        body("/logger"),
        json!({"log_path": "/firecracker.log", "level": "Info", "show_level": true,
               "show_log_origin": false})
    );
    assert_eq!(body("/metrics"), json!({"metrics_path": "/metrics.json"}));

    let no_net = boot_calls(&spec(Start::Boot, false));
    assert!(!no_net.iter().any(|c| c.path().starts_with("/network")));
}

#[test]
fn a_restore_configures_nothing_before_its_load() {
    let calls = boot_calls(&spec(Start::Incoming, true));
    let order: Vec<String> = calls.iter().map(Call::describe).collect();
    assert_eq!(order, ["PUT /logger", "PUT /metrics"]);
    let load = load_calls();
    assert_eq!(load.len(), 1);
    assert_eq!(
        load[0].body(),
        json!({
            "snapshot_path": "/restore.state",
            "mem_backend": {"backend_type": "File", "backend_path": "/restore.mem"},
            "resume_vm": false,
        })
    );
}

#[test]
fn save_pauses_then_writes_a_full_snapshot() {
    let calls = save_calls();
    assert_eq!(calls[0].describe(), "PATCH /vm");
    assert_eq!(calls[0].body(), json!({"state": "Paused"}));
    assert_eq!(calls[1].describe(), "PUT /snapshot/create");
    assert_eq!(
        calls[1].body(),
        json!({"snapshot_type": "Full", "snapshot_path": "/saved.state",
               "mem_file_path": "/saved.mem"})
    );
    let attach = attach_calls(1);
    assert_eq!(attach[0].describe(), "PATCH /drives/vol1");
    assert_eq!(
        attach[0].body(),
        json!({"drive_id": "vol1", "path_on_host": "/volume1.img"})
    );
}

#[test]
fn volume_serial_is_what_firecracker_derives() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("v.img");
    std::fs::write(&image, b"").unwrap();
    let meta = std::fs::metadata(&image).unwrap();
    let serial = volume_serial(&meta);
    let full = format!("{}0{}", meta.dev(), meta.ino());
    assert_eq!(serial, full[..full.len().min(20)]);
}
