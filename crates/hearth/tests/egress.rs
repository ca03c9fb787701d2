//! Egress by domain name, with the stock e2b SDK: a sandbox whose
//! `allow_out` names hosts, everything else denied, reaches those hosts
//! over HTTP (by `Host`) and TLS (by server name) through the slot's egress
//! proxy, which resolves each name itself with the server's nameserver
//! (`--dns`). The hosts, their nameserver and a second, rogue one live in
//! networks outside the host ([`hearth_net::Outside`]); a TLS server on a
//! host address stands ready to answer the guest, should the proxy ever
//! let it through to the host. Needs root, the kernel, the base template
//! and `HEARTH_E2B_PYTHON`; CI runs it with `--include-ignored`.

mod common;
#[path = "common/server.rs"]
mod sdk_server;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::process::Command;
use std::sync::Arc;

use common::assert_nothing_left;
use hearth_net::Outside;
use sdk_server::{Server, script, server_data_dir};

/// Every name the web server's certificate covers.
const NAMES: [&str; 5] = [
    "allowed.test",
    "other.test",
    "a.wild.test",
    "wild.test",
    "host.wild.test",
];

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn domain_rules_let_through_named_hosts_and_nothing_else() {
    let python = std::env::var("HEARTH_E2B_PYTHON").expect(
        "HEARTH_E2B_PYTHON must name a Python with the e2b SDK installed; scripts/test sets it",
    );
    assert_nothing_left("before the test");
    let web = Outside::create().unwrap();
    let dns = Outside::create().unwrap();
    let rogue = Outside::create().unwrap();
    // The host's own address on the web network: what host.wild.test
    // resolves to.
    let host = web.host_ip();
    let tls = tls_config();
    for port in [80, 8080] {
        serve_http(web.tcp_listener(port).unwrap());
    }
    serve_tls(web.tcp_listener(443).unwrap(), Arc::clone(&tls), "tls");
    serve_tls(TcpListener::bind((host, 443)).unwrap(), tls, "tls-host");
    serve_dns(dns.udp_socket(53).unwrap(), web.ip(), host);
    serve_dns(rogue.udp_socket(53).unwrap(), web.ip(), host);

    let data = server_data_dir();
    let server = Server::start_with(data.path(), &["--dns", &dns.ip().to_string()]);
    let key = std::fs::read_to_string(data.path().join("api-key")).unwrap();
    let mut py = Command::new(python);
    py.arg(script("egress_drive.py"))
        .arg(script("egress_guest.py"))
        .env("HEARTH_WEB", web.ip().to_string())
        .env("HEARTH_DNS", dns.ip().to_string())
        .env("HEARTH_ROGUE", rogue.ip().to_string());
    let out = sdk_server::drive(py, &server, key.trim());
    for line in out.lines().filter(|l| l.starts_with("guest saw:")) {
        eprintln!("{line}");
    }
    server.stop();
    sdk_server::assert_no_sandbox_dirs(data.path());
    drop((web, dns, rogue));
    assert_nothing_left("after the test");
}

/// A self-signed certificate for [`NAMES`].
fn tls_config() -> Arc<rustls::ServerConfig> {
    let made = rcgen::generate_simple_self_signed(NAMES.map(str::to_owned).to_vec()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(made.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![made.cert.der().clone()], key)
    .unwrap();
    Arc::new(config)
}

/// Answers each HTTP request with `web <its Host, without the port>`.
fn serve_http(listener: TcpListener) {
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&stream);
                let mut host = String::new();
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("host")
                    {
                        let value = value.trim();
                        host = value.split(':').next().unwrap_or(value).to_owned();
                    }
                    line.clear();
                }
                let body = format!("web {host}");
                let _ = (&stream).write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            });
        }
    });
}

/// Completes each TLS handshake and answers `<tag> <server name>`.
fn serve_tls(listener: TcpListener, config: Arc<rustls::ServerConfig>, tag: &'static str) {
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let config = Arc::clone(&config);
            std::thread::spawn(move || {
                let mut conn = rustls::ServerConnection::new(config).unwrap();
                if conn.complete_io(&mut stream).is_err() {
                    return;
                }
                let name = conn.server_name().unwrap_or("-").to_owned();
                let mut tls = rustls::Stream::new(&mut conn, &mut stream);
                let _ = tls.write_all(format!("{tag} {name}\n").as_bytes());
                let _ = tls.flush();
                let mut rest = [0u8; 1];
                let _ = tls.read(&mut rest);
            });
        }
    });
}

/// Answers A queries: `host.wild.test` is `host`, the other [`NAMES`] are
/// `web`, anything else does not exist.
fn serve_dns(socket: UdpSocket, web: Ipv4Addr, host: Ipv4Addr) {
    std::thread::spawn(move || {
        let mut query = [0u8; 512];
        while let Ok((n, peer)) = socket.recv_from(&mut query) {
            if let Some(reply) = dns_answer(&query[..n], web, host) {
                let _ = socket.send_to(&reply, peer);
            }
        }
    });
}

fn dns_answer(query: &[u8], web: Ipv4Addr, host: Ipv4Addr) -> Option<Vec<u8>> {
    let mut i = 12;
    let mut labels = Vec::new();
    while *query.get(i)? != 0 {
        let len = usize::from(query[i]);
        labels.push(String::from_utf8_lossy(query.get(i + 1..i + 1 + len)?).to_lowercase());
        i += 1 + len;
    }
    let qtype = u16::from_be_bytes([*query.get(i + 1)?, *query.get(i + 2)?]);
    let question = query.get(12..i + 5)?;
    let name = labels.join(".");
    let address = match name.as_str() {
        "host.wild.test" => Some(host),
        known if NAMES.contains(&known) => Some(web),
        _ => None,
    };
    let answer = address.filter(|_| qtype == 1);
    let flags = 0x8000 | 0x0400 | (u16::from_be_bytes([query[2], query[3]]) & 0x0100) | 0x0080;
    let rcode = if address.is_some() { 0 } else { 3 };
    let mut reply = Vec::new();
    reply.extend_from_slice(&query[..2]);
    reply.extend_from_slice(&(flags | rcode).to_be_bytes());
    for count in [1u16, u16::from(answer.is_some()), 0, 0] {
        reply.extend_from_slice(&count.to_be_bytes());
    }
    reply.extend_from_slice(question);
    if let Some(ip) = answer {
        reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        reply.extend_from_slice(&ip.octets());
    }
    Some(reply)
}
