//! Cluster mode on one machine, with real parts: a PostgreSQL cluster of
//! the test's own (Debian's `initdb` and `pg_ctl`), two `hearth node`
//! processes (data directories of their own, slots from the host's one
//! allocator), two `hearth api` processes, and the stock e2b SDK.
//!
//! Sandboxes made through both API servers spread over both nodes and
//! answer through either API server; a template built through one API
//! server on one node starts sandboxes on the other, which fetches it
//! (each node has templates of its own); a drained node takes no new
//! ones; a
//! node killed with `kill -9` is marked unhealthy and its sandboxes are
//! reported lost; restarted, it kills what the catalog says is gone; and
//! nothing is left. Needs root, the kernel, the base template and
//! `HEARTH_E2B_PYTHON`; CI runs it with `--include-ignored`.

mod common;
#[path = "common/server.rs"]
mod sdk_server;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_nothing_left, data_dir, text};
use hearth_server::store::{NODE_LOST, NodeStatus, SandboxState, Store};
use hearth_server::testing::PgCluster;
use sdk_server::{DOMAIN, Server, http, script};

const SECRET: &str = "the-cluster-secret-of-this-test";
/// How many sandboxes the SDK makes through the two API servers.
const SPREAD: usize = 20;

fn node(data: &Path, store: &str, id: &str) -> Server {
    Server::start_role(
        data,
        &[
            "node",
            "--store",
            store,
            "--listen",
            "127.0.0.1:0",
            "--node-id",
            id,
            "--cluster-secret",
            SECRET,
            "--domain",
            DOMAIN,
            "--pool",
            "1",
            "--kill-on-exit",
        ],
        "hearth: listening on ",
    )
}

fn api(data: &Path, store: &str) -> Server {
    Server::start_role(
        data,
        &[
            "api",
            "--store",
            store,
            "--listen",
            "127.0.0.1:0",
            "--cluster-secret",
            SECRET,
            "--domain",
            DOMAIN,
        ],
        "hearth: API server listening on ",
    )
}

/// A node's data directory: the host's kernels and caches, and templates
/// of its own, with base in them (hard links: a copy that costs nothing).
fn node_data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for shared in ["kernels", "cache"] {
        std::os::unix::fs::symlink(data_dir().join(shared), dir.path().join(shared)).unwrap();
    }
    let templates = dir.path().join("templates");
    std::fs::create_dir(&templates).unwrap();
    let copied = Command::new("cp")
        .arg("-al")
        .arg(data_dir().join("templates/base"))
        .arg(&templates)
        .status()
        .unwrap();
    assert!(copied.success(), "cp -al of the base template");
    dir
}

fn addr(server: &Server) -> SocketAddr {
    server.url.strip_prefix("http://").unwrap().parse().unwrap()
}

/// Sets node `node`'s status through API server `api`.
fn set_status(api: &Server, node: &str, status: &str) {
    let body = format!(r#"{{"status":"{status}"}}"#);
    let (code, answer) = admin(api, "POST", &format!("/nodes/{node}"), Some(&body));
    assert_eq!(code, 204, "setting {node} {status}: {answer}");
}

/// `GET path` of a node, as its API servers call it.
fn node_get(node: &Server, key: &str, path: &str) -> (u16, String) {
    http(
        addr(node),
        "GET",
        path,
        &[("X-API-Key", key), ("X-Hearth-Cluster-Secret", SECRET)],
        None,
    )
    .unwrap()
}

/// An admin call to an API server's node routes.
fn admin(api: &Server, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    http(addr(api), method, path, &[("X-Admin-Token", SECRET)], body).unwrap()
}

fn nodes(api: &Server) -> Vec<serde_json::Value> {
    let (status, body) = admin(api, "GET", "/nodes", None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn status_of(api: &Server, id: &str) -> String {
    nodes(api)
        .iter()
        .find(|n| n["id"] == id)
        .map(|n| n["status"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Runs a phase of `cluster_drive.py` with `stdin`; its stdout, asserted
/// to end with `all checks passed`.
fn sdk(key: &str, phase: &str, api1: &str, api2: &str, n: usize, stdin: &str) -> String {
    let python = std::env::var("HEARTH_E2B_PYTHON")
        .expect("HEARTH_E2B_PYTHON names a Python with the e2b SDK; scripts/test sets it");
    let mut child = Command::new(python)
        .arg(script("cluster_drive.py"))
        .args([phase, api1, api2, &n.to_string()])
        .env("E2B_API_KEY", key)
        .env("HEARTH_CLUSTER_SECRET", SECRET)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the SDK script runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = text(&out.stdout);
    for line in stdout.lines().filter(|l| l.starts_with("figure ")) {
        eprintln!("{line}");
    }
    assert!(
        out.status.success() && stdout.ends_with("all checks passed\n"),
        "cluster_drive.py {phase} failed ({}):\n{stdout}\n{}",
        out.status,
        text(&out.stderr)
    );
    stdout
}

fn sandbox_ids(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("sandbox "))
        .map(str::to_owned)
        .collect()
}

fn as_stdin(ids: &[String]) -> String {
    ids.iter().map(|id| format!("sandbox {id}\n")).collect()
}

fn node_of(store: &Store, id: &str) -> String {
    store
        .sandbox_node(id)
        .unwrap()
        .unwrap_or_else(|| panic!("sandbox {id} has a node"))
        .node_id
}

/// Waits up to `limit` for `ready`.
fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn two_nodes_and_two_api_servers_share_one_catalog() {
    assert_nothing_left("before the test");
    let postgres = PgCluster::start();
    let url = postgres.database("hearth");
    let catalog = Store::connect(&url).unwrap();

    let data_a = node_data_dir();
    let data_b = node_data_dir();
    let node_a = node(data_a.path(), &url, "node-a");
    // The first node makes the catalog's first key.
    let key = std::fs::read_to_string(data_a.path().join("api-key"))
        .unwrap()
        .trim()
        .to_owned();
    let mut node_b = node(data_b.path(), &url, "node-b");
    let api_dir = tempfile::tempdir().unwrap();
    let api1 = api(api_dir.path(), &url);
    let api2 = api(api_dir.path(), &url);
    wait_for("both nodes ready", Duration::from_secs(30), || {
        status_of(&api1, "node-a") == "ready" && status_of(&api2, "node-b") == "ready"
    });
    let (status, _) = http(addr(&api1), "GET", "/nodes", &[], None).unwrap();
    assert_eq!(status, 401, "the node routes need the admin token");
    // A node answers only its API servers.
    let (status, body) = http(
        addr(&node_a),
        "GET",
        "/v2/sandboxes",
        &[("X-API-Key", &key)],
        None,
    )
    .unwrap();
    assert_eq!(status, 403, "a node without the cluster secret: {body}");

    // Twenty sandboxes through both API servers, each reached through the
    // other one.
    let spread = sdk(&key, "spread", &api1.url, &api2.url, SPREAD, "");
    let ids = sandbox_ids(&spread);
    assert_eq!(ids.len(), SPREAD);
    let on_a = ids
        .iter()
        .filter(|id| node_of(&catalog, id) == "node-a")
        .count();
    eprintln!(
        "figure sandboxes_on_node_a={on_a} sandboxes_on_node_b={}",
        SPREAD - on_a
    );
    assert!(
        on_a > 0 && on_a < SPREAD,
        "the sandboxes spread over both nodes: {on_a} of {SPREAD} on node-a"
    );
    let listed = nodes(&api2);
    let count = |id: &str| {
        listed.iter().find(|n| n["id"] == id).unwrap()["sandboxCount"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(count("node-a") + count("node-b"), SPREAD as u64);
    sdk(&key, "kill", &api1.url, &api2.url, 0, &as_stdin(&ids));

    // Create latency through the cluster and straight to a node.
    sdk(&key, "latency", &api1.url, &node_a.url, 10, "");

    // A template built through API server 1 starts on the node that did
    // not build it: that node fetches the build from the builder.
    let template = "cluster-app";
    let token = format!("built-in-the-cluster-{}", std::process::id());
    let line = format!("template {template} {token}\n");
    sdk(&key, "build", &api1.url, &api2.url, 0, &line);
    let builder = catalog.template_node(template).unwrap().unwrap().node_id;
    let (other, other_node, other_data, builder_data) = if builder == "node-a" {
        ("node-b", &node_b, data_b.path(), data_a.path())
    } else {
        ("node-a", &node_a, data_a.path(), data_b.path())
    };
    eprintln!("figure template_built_on={builder}");
    let held = |data: &Path| data.join("templates").join(template).exists();
    assert!(
        held(builder_data) && !held(other_data),
        "only {builder} has the template"
    );
    // The list of templates through an API server is the cluster's: it
    // shows the template only the builder holds.
    let listed = |server: &Server| {
        let (status, body) = node_get(server, &key, "/templates");
        assert_eq!(status, 200, "{body}");
        let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        list.iter().any(|t| t["templateID"] == template)
    };
    assert!(!listed(other_node), "{other} does not hold {template} yet");
    assert!(
        listed(&api1) && listed(&api2),
        "both API servers list {template}"
    );
    set_status(&api1, &builder, "draining");
    let fetched = sandbox_ids(&sdk(&key, "started", &api1.url, &api2.url, 0, &line));
    assert_eq!(node_of(&catalog, &fetched[0]), other);
    let files = |data: &Path| {
        let current = data.join("templates").join(template).join("current");
        std::fs::read_to_string(current.join("files.json")).unwrap()
    };
    assert_eq!(
        files(other_data),
        files(builder_data),
        "the fetched build's files are the builder's, by size and SHA-256"
    );
    let (status, metrics) = node_get(other_node, &key, "/metrics");
    assert_eq!(status, 200, "{metrics}");
    assert!(
        metrics.contains("hearth_template_fetches_total{result=\"fetched\"} 1\n"),
        "{other} counts its fetch:\n{metrics}"
    );
    set_status(&api1, &builder, "ready");
    sdk(&key, "kill", &api1.url, &api2.url, 0, &as_stdin(&fetched));
    // Deleted through API server 2: gone from both nodes, the fetched
    // copy too, and from the catalog's list of what the nodes hold.
    let (status, body) = http(
        addr(&api2),
        "DELETE",
        &format!("/templates/{template}"),
        &[("X-API-Key", &key)],
        None,
    )
    .unwrap();
    assert_eq!(status, 204, "{body}");
    let removed = wait_for(
        "both nodes removed the deleted template",
        Duration::from_secs(15),
        || {
            !held(data_a.path())
                && !held(data_b.path())
                && catalog.held_builds(template).unwrap().is_empty()
        },
    );
    eprintln!(
        "figure deleted_template_copies_removed_s={:.1}",
        removed.as_secs_f64()
    );
    let (status, body) = http(
        addr(&api1),
        "POST",
        "/sandboxes",
        &[("X-API-Key", &key)],
        Some(&format!(r#"{{"templateID":"{template}"}}"#)),
    )
    .unwrap();
    assert_eq!(status, 404, "a deleted template starts nothing: {body}");
    // A client cannot reach the nodes' own routes through an API server.
    let (status, _) = http(
        addr(&api1),
        "GET",
        &format!("/cluster/builds/{template}/x/rootfs.ext4"),
        &[("X-API-Key", &key)],
        None,
    )
    .unwrap();
    assert_eq!(status, 404);

    // A volume is kept on the node that made it, and a sandbox that mounts
    // it runs there, whichever API server it came through.
    let rest = |server: &Server, method: &str, path: &str, body: Option<&str>| {
        http(addr(server), method, path, &[("X-API-Key", &key)], body).unwrap()
    };
    let (status, body) = rest(
        &api1,
        "POST",
        "/volumes",
        Some(r#"{"name":"cluster-data","size":"64M"}"#),
    );
    assert_eq!(status, 201, "{body}");
    let keeper = catalog
        .volume_node("cluster-data")
        .unwrap()
        .unwrap()
        .node_id;
    let mounting =
        r#"{"templateID":"base","volumeMounts":[{"name":"cluster-data","path":"/data"}]}"#;
    for server in [&api2, &api1] {
        let (status, body) = rest(server, "POST", "/sandboxes", Some(mounting));
        assert_eq!(status, 201, "{body}");
        let created: serde_json::Value = serde_json::from_str(&body).unwrap();
        let id = created["sandboxID"].as_str().unwrap();
        assert_eq!(node_of(&catalog, id), keeper, "placed with its volume");
        let (status, body) = rest(server, "DELETE", &format!("/sandboxes/{id}"), None);
        assert_eq!(status, 204, "{body}");
    }
    set_status(&api1, &keeper, "draining");
    let (status, body) = rest(&api2, "POST", "/sandboxes", Some(mounting));
    assert_eq!(status, 503, "its volume's node is draining: {body}");
    assert!(body.contains(&keeper), "{body}");
    set_status(&api1, &keeper, "ready");
    let (status, body) = rest(&api2, "DELETE", "/volumes/cluster-data", None);
    assert_eq!(status, 204, "deleted on the node that keeps it: {body}");

    // A drained node takes no new sandboxes and keeps serving its own.
    let kept = sandbox_ids(&sdk(&key, "create", &api1.url, &api2.url, 4, ""));
    set_status(&api2, "node-a", "draining");
    assert_eq!(status_of(&api1, "node-a"), "draining");
    let (status, _) = admin(
        &api2,
        "POST",
        "/nodes/nosuch",
        Some(r#"{"status":"draining"}"#),
    );
    assert_eq!(status, 404);
    let (status, _) = admin(
        &api2,
        "POST",
        "/nodes/node-a",
        Some(r#"{"status":"unhealthy"}"#),
    );
    assert_eq!(status, 400, "only ready and draining are set by hand");
    let drained = sandbox_ids(&sdk(&key, "create", &api1.url, &api2.url, 4, ""));
    for id in &drained {
        assert_eq!(
            node_of(&catalog, id),
            "node-b",
            "new sandboxes avoid the drained node"
        );
    }
    sdk(&key, "reach", &api1.url, &api2.url, 0, &as_stdin(&kept));
    set_status(&api1, "node-a", "ready");

    // kill -9 of node B: marked unhealthy, its running sandboxes lost.
    let on_b: Vec<String> = kept
        .iter()
        .chain(&drained)
        .filter(|id| node_of(&catalog, id) == "node-b")
        .cloned()
        .collect();
    assert!(!on_b.is_empty());
    let b_pid = node_b.pid();
    node_b.kill9();
    let detected = wait_for("node-b marked unhealthy", Duration::from_secs(20), || {
        status_of(&api1, "node-b") == "unhealthy"
    });
    eprintln!("figure dead_node_detected_s={:.1}", detected.as_secs_f64());
    assert!(
        detected <= Duration::from_secs(10),
        "a dead node is detected within 10 s: {detected:?}"
    );
    for id in &on_b {
        let record = catalog.get_sandbox(id).unwrap().unwrap();
        assert_eq!(record.state, SandboxState::Killed, "{id}");
        assert_eq!(record.stop_reason.as_deref(), Some(NODE_LOST), "{id}");
    }
    sdk(&key, "gone", &api1.url, &api2.url, 0, &as_stdin(&on_b));
    // Its VMMs outlived it: the catalog says they are gone, so its
    // successor must kill them.
    let dirs = |data: &Path| -> Vec<String> {
        std::fs::read_dir(data.join("sandboxes"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    for id in &on_b {
        assert!(
            dirs(data_b.path()).contains(id),
            "lost sandbox {id} outlived node-b's kill -9 (pid {b_pid})"
        );
    }

    node_b = node(data_b.path(), &url, "node-b");
    wait_for("node-b ready again", Duration::from_secs(30), || {
        status_of(&api2, "node-b") == "ready"
    });
    for id in &on_b {
        assert!(
            !dirs(data_b.path()).contains(id),
            "the restarted node removed lost sandbox {id}"
        );
    }
    assert_eq!(
        catalog.node("node-b").unwrap().unwrap().node.status,
        NodeStatus::Ready
    );
    // New sandboxes go to it again.
    let again = sandbox_ids(&sdk(&key, "spread", &api1.url, &api2.url, 4, ""));

    // Clean-up: what is running is killed, and nothing is left.
    let running: Vec<String> = kept
        .iter()
        .chain(&again)
        .filter(|id| !on_b.contains(id))
        .cloned()
        .collect();
    sdk(&key, "kill", &api1.url, &api2.url, 0, &as_stdin(&running));
    api1.stop();
    api2.stop();
    node_a.stop();
    node_b.stop();
    assert!(
        dirs(data_a.path()).is_empty(),
        "node-a left {:?}",
        dirs(data_a.path())
    );
    assert!(
        dirs(data_b.path()).is_empty(),
        "node-b left {:?}",
        dirs(data_b.path())
    );
    drop(catalog);
    drop(postgres);
    assert_nothing_left("after the test");
}
