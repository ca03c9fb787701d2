//! The deployment files in `deploy/` (docs/cluster.md), checked offline:
//! the systemd units with `systemd-analyze verify`, the Kubernetes
//! manifests against the Kubernetes schemas and the Nomad jobs as HCL2
//! (`tests/e2b/deploy_check.py`, in the test venv that `scripts/test`
//! makes). No scheduler runs here.

use std::path::{Path, PathBuf};
use std::process::Command;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

#[test]
fn systemd_units_verify() {
    let dir = tempfile::tempdir().unwrap();
    for unit in ["hearth-node.service", "hearth-api.service"] {
        // The unit as installed, with the binary this build made.
        let installed = std::fs::read_to_string(deploy().join("systemd").join(unit)).unwrap();
        assert!(
            installed.contains("ExecStart=/usr/local/bin/hearth "),
            "{unit}"
        );
        let here = installed.replace("/usr/local/bin/hearth", env!("CARGO_BIN_EXE_hearth"));
        let path = dir.path().join(unit);
        std::fs::write(&path, here).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .expect("systemd-analyze runs (Debian's systemd)");
        // It warns, without failing, about settings it cannot parse.
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{unit}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

#[test]
fn kubernetes_and_nomad_files_check() {
    let python = std::env::var("HEARTH_E2B_PYTHON").expect(
        "HEARTH_E2B_PYTHON must name the test venv's Python (with kubernetes-validate and \
         python-hcl2); scripts/test sets it",
    );
    let out = Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2b/deploy_check.py"))
        .arg(deploy())
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(
        out.status.success() && stdout.ends_with("all checks passed\n"),
        "{stdout}{}",
        text(&out.stderr)
    );
}
