//! Published ports end to end: `hearth sandbox create --publish` forwards a
//! host port to a port of a real guest (here its agent's, 49983), for a
//! client on the host (loopback included) and one in another network
//! namespace; a taken, privileged or malformed port is refused before
//! anything is made; the port stops answering while the sandbox is paused
//! and answers again after the resume, and is free again once the sandbox
//! is killed. Real VMs, as root; CI runs it with `--include-ignored`.

mod common;
#[path = "common/server.rs"]
mod sdk_server;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};

use common::{assert_nothing_left, text};
use sdk_server::{Server, free_port, hearth_cli, hearth_ok, http_get, server_data_dir};

/// The guest agent's port: what the tests publish.
const AGENT_PORT: u16 = 49983;

/// The guest port the UDP check publishes, and what answers there: one
/// datagram, sent back in capitals (or nothing after 90 s, so that a
/// failed check does not wait for it forever).
const UDP_GUEST_PORT: u16 = 7777;
const UDP_ECHO: &str = "import socket\n\
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
s.bind(('0.0.0.0', 7777))\n\
s.settimeout(90)\n\
data, peer = s.recvfrom(512)\n\
s.sendto(data.upper(), peer)\n";

/// Sends `payload` to `to` until an answer comes (the guest's program may
/// not listen yet), for up to 60 s; the answer.
fn udp_exchange(to: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 512];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        socket.send_to(payload, to).unwrap();
        match socket.recv_from(&mut buf) {
            Ok((n, _)) => return Some(buf[..n].to_vec()),
            // Timed out, or refused before the program listens.
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
    None
}

/// `hearth sandbox ARGS`.
fn hearth(server: &Server, data: &Path, args: &[&str]) -> Output {
    hearth_cli(server, data, &[&["sandbox"], args].concat())
}

/// `hearth sandbox ARGS` that must succeed; its stdout.
fn ok(server: &Server, data: &Path, args: &[&str]) -> String {
    hearth_ok(server, data, &[&["sandbox"], args].concat())
}

/// The status of `GET /health` at `addr`, or why there was none.
fn health(addr: SocketAddr) -> Result<u16, String> {
    http_get(addr, "/health", None)
        .map(|(status, _)| status)
        .map_err(|e| e.to_string())
}

/// `hearth sandbox create` that must fail; its error.
fn refused(server: &Server, data: &Path, publish: &str) -> String {
    let out = hearth(server, data, &["create", "--publish", publish]);
    assert!(!out.status.success(), "--publish {publish} was accepted");
    text(&out.stderr)
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(out.status.success(), "ip {args:?}: {}", text(&out.stderr));
}

/// A network namespace of the test's own, joined to the host by a veth
/// pair (host 10.251.0.1, namespace 10.251.0.2); removed when dropped.
struct ClientNetns;

const CLIENT_NETNS: &str = "pubtest-client";

impl ClientNetns {
    fn new() -> Self {
        let _ = Command::new("ip")
            .args(["netns", "del", CLIENT_NETNS])
            .output();
        ip(&["netns", "add", CLIENT_NETNS]);
        let made = Self;
        ip(&[
            "link",
            "add",
            "pubtest-h",
            "type",
            "veth",
            "peer",
            "name",
            "pubtest-c",
            "netns",
            CLIENT_NETNS,
        ]);
        ip(&["addr", "add", "10.251.0.1/30", "dev", "pubtest-h"]);
        ip(&["link", "set", "pubtest-h", "up"]);
        for args in [
            &["addr", "add", "10.251.0.2/30", "dev", "pubtest-c"][..],
            &["link", "set", "pubtest-c", "up"],
            &["link", "set", "lo", "up"],
            &["route", "add", "default", "via", "10.251.0.1"],
        ] {
            let mut all = vec!["-n", CLIENT_NETNS];
            all.extend_from_slice(args);
            ip(&all);
        }
        made
    }

    /// The status of `GET /health` at `addr`, asked from inside.
    fn health(&self, addr: SocketAddr) -> Result<u16, String> {
        let script = format!(
            "import urllib.request\n\
             print(urllib.request.urlopen('http://{addr}/health', timeout=10).status)"
        );
        let out = Command::new("ip")
            .args(["netns", "exec", CLIENT_NETNS, "python3", "-c", &script])
            .output()
            .expect("python3 runs");
        if !out.status.success() {
            return Err(text(&out.stderr));
        }
        text(&out.stdout).trim().parse().map_err(|e| format!("{e}"))
    }
}

impl Drop for ClientNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", "pubtest-h"])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", CLIENT_NETNS])
            .output();
    }
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn published_ports_reach_the_guest_and_go_with_it() {
    assert_nothing_left("before the test");
    let client = ClientNetns::new();
    let data = server_data_dir();
    let server = Server::start(data.path());
    let (loopback, any) = (free_port().port(), free_port().port());
    let udp = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    // Refused before anything is made, each naming why.
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let busy = listener.local_addr().unwrap().port();
    for (publish, why) in [
        ("nonsense", "is not [ADDR:]HOSTPORT:GUESTPORT"),
        ("80:80", "--allow-privileged-ports"),
        (&format!("{busy}:80") as &str, "in use on this host"),
        ("203.0.113.9:18080:80", "not an address of this host"),
    ] {
        let err = refused(&server, data.path(), publish);
        assert!(err.contains(why), "--publish {publish}: {err}");
    }
    drop(listener);

    let created: serde_json::Value = serde_json::from_str(&ok(
        &server,
        data.path(),
        &[
            "create",
            "--json",
            "--publish",
            &format!("127.0.0.1:{loopback}:{AGENT_PORT}"),
            "--publish",
            &format!("{any}:{AGENT_PORT}/tcp"),
            "--publish",
            &format!("127.0.0.1:{udp}:{UDP_GUEST_PORT}/udp"),
        ],
    ))
    .unwrap();
    let id = created["sandboxID"].as_str().unwrap().to_owned();
    // UDP: a datagram to the published port reaches a program in the
    // guest, and its answer comes back.
    std::thread::scope(|s| {
        let echo = s.spawn(|| {
            ok(
                &server,
                data.path(),
                &["exec", &id, "--", "python3", "-c", UDP_ECHO],
            )
        });
        assert_eq!(
            udp_exchange(SocketAddr::from(([127, 0, 0, 1], udp)), b"ping"),
            Some(b"PING".to_vec()),
            "an answer through the published UDP port"
        );
        echo.join().unwrap();
    });
    let from_host = SocketAddr::from(([127, 0, 0, 1], loopback));
    let from_netns = SocketAddr::from(([10, 251, 0, 1], any));
    assert_eq!(health(from_host), Ok(204), "from the host on 127.0.0.1");
    assert_eq!(
        health(SocketAddr::from(([10, 251, 0, 1], any))),
        Ok(204),
        "from the host on another of its addresses"
    );
    assert_eq!(client.health(from_netns), Ok(204), "from another netns");
    // Only the address it was published on.
    assert!(
        client
            .health(SocketAddr::from(([10, 251, 0, 1], loopback)))
            .is_err(),
        "a port published on 127.0.0.1 answered on another address"
    );
    // A second sandbox cannot take a published port.
    let err = refused(&server, data.path(), &format!("{any}:80"));
    assert!(err.contains(&format!("published by sandbox {id}")), "{err}");

    // Paused, it answers nothing; resumed (maybe in another slot), it
    // answers on the same ports.
    ok(&server, data.path(), &["pause", &id]);
    assert!(
        health(from_host).is_err(),
        "a paused sandbox's port answered"
    );
    let err = refused(&server, data.path(), &format!("{any}:80"));
    assert!(
        err.contains("published by sandbox"),
        "a pause frees no port: {err}"
    );
    ok(&server, data.path(), &["resume", &id]);
    assert_eq!(health(from_host), Ok(204), "after the resume");
    assert_eq!(client.health(from_netns), Ok(204), "after the resume");

    // Killed, the ports are free again, for another sandbox.
    ok(&server, data.path(), &["kill", &id]);
    assert!(
        health(from_host).is_err(),
        "a killed sandbox's port answered"
    );
    let again: serde_json::Value = serde_json::from_str(&ok(
        &server,
        data.path(),
        &[
            "create",
            "--json",
            "--publish",
            &format!("{any}:{AGENT_PORT}"),
        ],
    ))
    .unwrap();
    assert_eq!(client.health(from_netns), Ok(204), "the next sandbox");
    ok(
        &server,
        data.path(),
        &["kill", again["sandboxID"].as_str().unwrap()],
    );
    server.stop();
    drop(client);
    assert_nothing_left("after the test");
}
