//! `hearth server --domain D` over HTTPS: with `--tls-self-signed` it makes
//! a local CA and a certificate for `D`, `*.D` and the host at first start;
//! the stock e2b SDK, configured by domain alone (no E2B_API_URL or
//! E2B_SANDBOX_URL), reaches the API at `https://api.D` and each sandbox at
//! `https://<port>-<id>.D` on port 443, its resolver overridden with a
//! DNS server of the test's, trusting that CA;
//! the CLI trusts it by itself. An operator's own certificate and key are
//! served as given, and a broken pair stops the server before it listens.
//! Needs root, the kernel, the base template and `HEARTH_E2B_PYTHON`; CI
//! runs it with `--include-ignored`.

mod common;
#[path = "common/server.rs"]
mod sdk_server;

use std::process::Command;

use common::{assert_nothing_left, text};
use sdk_server::{DOMAIN, Server, hearth_ok, script, server_data_dir};

/// Where the script serves DNS: a loopback address nothing else uses.
const DNS: &str = "127.0.0.77";

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn the_sdk_reaches_api_and_sandboxes_over_https_by_domain() {
    let python = std::env::var("HEARTH_E2B_PYTHON").expect(
        "HEARTH_E2B_PYTHON must name a Python with the e2b SDK installed; scripts/test sets it",
    );
    assert_nothing_left("before the test");
    let data = server_data_dir();
    let tls = data.path().join("tls");
    // Port 443: the SDK, given a domain, names no port.
    let server = Server::start_on(data.path(), "127.0.0.1:443", &["--tls-self-signed"]);
    assert_eq!(server.url, "https://127.0.0.1:443");
    let ca = tls.join("ca.pem");
    let told = server
        .logged("clients must trust the CA in")
        .expect("the server names the CA to trust");
    assert!(told.contains(&ca.display().to_string()), "{told}");
    let key = std::fs::read_to_string(data.path().join("api-key")).unwrap();

    // The script's resolver: its own DNS server, named by a resolv.conf
    // bind-mounted in a mount namespace of its own.
    let resolv = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        resolv.path(),
        format!("nameserver {DNS}\noptions timeout:2\n"),
    )
    .unwrap();
    let mut py = Command::new("unshare");
    py.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"")
        .arg(resolv.path())
        .arg(&python)
        .arg(script("tls_drive.py"))
        .env("HEARTH_DOMAIN", DOMAIN)
        .env("HEARTH_CA", &ca)
        .env("HEARTH_DNS", DNS);
    sdk_server::drive(py, &server, key.trim());
    // The CLI trusts the data directory's CA by itself.
    let listed = hearth_ok(&server, data.path(), &["sandbox", "list", "--json"]);
    assert!(listed.trim_start().starts_with('['), "{listed}");
    server.stop();
    let cert_before = std::fs::read_to_string(tls.join("cert.pem")).unwrap();

    // The operator's own files, served as given.
    let own = tempfile::tempdir().unwrap();
    for name in ["cert.pem", "key.pem"] {
        std::fs::copy(tls.join(name), own.path().join(name)).unwrap();
    }
    let (cert, key_file) = (own.path().join("cert.pem"), own.path().join("key.pem"));
    let server = Server::start_with(
        data.path(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key_file.to_str().unwrap(),
        ],
    );
    assert!(server.url.starts_with("https://"), "{}", server.url);
    assert!(server.logged("clients must trust the CA").is_none());
    let listed = hearth_cli_with_ca(&server, data.path(), &ca);
    assert!(listed.trim_start().starts_with('['), "{listed}");
    server.stop();
    assert_eq!(
        std::fs::read_to_string(tls.join("cert.pem")).unwrap(),
        cert_before,
        "a restart keeps the certificate it made"
    );

    // A certificate with another's key (the CA's): the server says which
    // and stops before it listens.
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["server", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(tls.join("ca-key.pem"))
        .env("HEARTH_DATA_DIR", data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!text(&out.stderr).contains("listening on"));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("does not go with the key") && stderr.contains("ca-key.pem"),
        "{stderr}"
    );
    assert_nothing_left("after the test");
}

/// `hearth sandbox list --json` trusting `ca` given by `--ca-cert`.
fn hearth_cli_with_ca(server: &Server, data: &std::path::Path, ca: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["sandbox", "list", "--json", "--ca-cert"])
        .arg(ca)
        .env("HEARTH_DATA_DIR", data)
        .env("HEARTH_API_URL", &server.url)
        .output()
        .expect("hearth runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}
