//! The current stock e2b SDKs (Python sync and async clients, JS) against a
//! real `hearth server`, for what they do beyond the core calls: timeout
//! policies with and without memory, auto-resume by traffic,
//! filesystem-only pauses that boot again, signed file URLs, a sandbox
//! killed under a streaming command, forks of up to 100 copies with
//! per-copy results, and the log, API-key and team-metric routes; and the
//! Prometheus metrics move with all that. Needs
//! root, the kernel, the base template, `HEARTH_E2B_PYTHON` and
//! `HEARTH_E2B_JS`; CI runs it with `--include-ignored`.

mod common;
#[path = "common/server.rs"]
mod sdk_server;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::assert_nothing_left;
use sdk_server::{Server, free_port, http_get, script, server_data_dir};

/// `GET path`: the status and the body.
fn get(addr: SocketAddr, path: &str, key: Option<&str>) -> (u16, String) {
    http_get(addr, path, key).expect("the server answers")
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn current_e2b_sdks_against_hearth_server() {
    let python = std::env::var("HEARTH_E2B_PYTHON").expect(
        "HEARTH_E2B_PYTHON must name a Python with the e2b SDK installed; scripts/test sets it",
    );
    let js = std::env::var("HEARTH_E2B_JS").expect(
        "HEARTH_E2B_JS must name a directory where `npm install e2b` ran; scripts/test sets it",
    );
    assert_nothing_left("before the test");
    let data = server_data_dir();
    let metrics_addr = free_port();
    // Room for a parent and its 100 copies, not for many more: the script
    // forks past it to see copies fail one by one.
    let server = Server::start_with(
        data.path(),
        &[
            "--max-sandboxes",
            "110",
            "--metrics-listen",
            &metrics_addr.to_string(),
        ],
    );
    let key = std::fs::read_to_string(data.path().join("api-key")).unwrap();
    let key = key.trim();
    let api: SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();
    let (status, _) = get(api, "/metrics", None);
    assert_eq!(status, 401, "/metrics on the API port needs the key");
    let (status, _) = get(api, "/metrics", Some(key));
    assert_eq!(status, 200);
    let before = scrape(metrics_addr);

    let mut py = Command::new(&python);
    py.arg(script("current_drive.py"));
    sdk_server::drive(py, &server, key);
    let after = scrape(metrics_addr);
    check_metrics(&before, &after);
    let mut node = Command::new("node");
    node.arg(script("current_drive.cjs"))
        .env("NODE_PATH", Path::new(&js).join("node_modules"));
    sdk_server::drive(node, &server, key);

    server.stop();
    assert_nothing_left("after the test");
    sdk_server::assert_no_sandbox_dirs(data.path());
}

/// The samples of a scrape of the key-less metrics listener: the series
/// (name and labels) to its value.
fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let (status, body) = get(addr, "/metrics", None);
    assert_eq!(status, 200, "{body}");
    assert!(body.ends_with("# EOF\n"), "an OpenMetrics exposition");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn sum(samples: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| {
            (series.as_str() == name || series.starts_with(&format!("{name}{{")))
                && labels.iter().all(|l| series.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

/// What the Python script did shows in the metrics: its nine creates,
/// kills, pauses of both kinds, resumes by API and by traffic, 100+
/// fork copies and the ones that failed, API requests by route pattern,
/// proxied bytes; and no series is labelled with a sandbox id.
fn check_metrics(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) {
    let grew = |name: &str, labels: &[&str]| sum(after, name, labels) - sum(before, name, labels);
    for (name, labels, least) in [
        (
            "hearth_sandbox_creates_total",
            &[r#"source="pool""#, r#"template="base""#][..],
            9.0,
        ),
        (
            "hearth_sandbox_stops_total",
            &[r#"reason="killed""#][..],
            100.0,
        ),
        (
            "hearth_sandbox_pauses_total",
            &[r#"mode="filesystem""#][..],
            2.0,
        ),
        ("hearth_sandbox_pauses_total", &[r#"mode="full""#][..], 2.0),
        (
            "hearth_sandbox_resumes_total",
            &[r#"trigger="traffic""#][..],
            2.0,
        ),
        (
            "hearth_sandbox_resumes_total",
            &[r#"trigger="api""#][..],
            2.0,
        ),
        ("hearth_sandbox_fork_copies_total", &[][..], 100.0),
        ("hearth_sandbox_fork_copy_failures_total", &[][..], 1.0),
        (
            "hearth_http_requests_total",
            &[
                r#"route="/sandboxes/{id}""#,
                r#"method="GET""#,
                r#"status="200""#,
            ][..],
            10.0,
        ),
        (
            "hearth_http_requests_total",
            &[r#"route="proxy""#][..],
            20.0,
        ),
        ("hearth_proxy_bytes_total", &[][..], 1000.0),
        (
            "hearth_sandbox_create_seconds_count",
            &[r#"source="pool""#][..],
            9.0,
        ),
        // Each create from the pool is followed by a refill.
        (
            "hearth_pool_refill_seconds_count",
            &[r#"template="base""#][..],
            9.0,
        ),
    ] {
        let grown = grew(name, labels);
        assert!(
            grown >= least,
            "{name}{labels:?} grew by {grown}, expected at least {least}"
        );
    }
    assert_eq!(sum(after, "hearth_slots_capacity", &[]), 110.0);
    // One series names the driver, its version and the accelerator.
    let info: Vec<_> = after
        .iter()
        .filter(|(series, _)| series.starts_with("hearth_node_info{"))
        .collect();
    assert_eq!(info.len(), 1, "{info:?}");
    let (series, value) = info[0];
    let named = [
        r#"vmm="qemu",vmm_version="QEMU emulator version"#,
        r#"vmm="firecracker",vmm_version="Firecracker v"#,
    ];
    assert!(
        *value == 1.0 && named.iter().any(|n| series.contains(n)) && series.contains("accel=\""),
        "{series} {value}"
    );
    let pooled = sum(after, "hearth_pool_sandboxes", &[r#"template="base""#]);
    assert!(pooled >= 1.0, "the base pool shows: {pooled}");
    // Bounded cardinality: no label value is a sandbox id (20 lowercase
    // letters and digits).
    let id_like = after.keys().find(|series| {
        series.split('"').skip(1).step_by(2).any(|v| {
            v.len() == 20
                && v.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
    });
    assert!(
        id_like.is_none(),
        "a series labelled by sandbox: {id_like:?}"
    );
}
