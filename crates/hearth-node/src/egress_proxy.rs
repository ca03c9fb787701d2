//! The egress proxy of a sandbox whose policy names domains.
//!
//! The slot's rules redirect the guest's new connections to ports 80 and
//! 443 (of any address its CIDR allow list does not hold) to two listeners
//! inside the slot's netns. For each connection the proxy reads the
//! request's `Host` header (HTTP) or the ClientHello's server name (TLS),
//! and if a domain rule matches it resolves that name itself and connects
//! there, whatever address the guest asked for: a guest cannot reach an
//! address of its choosing by naming an allowed host (domain fronting),
//! nor an allowed host's address under another name. Its upstream sockets
//! are made in the slot's netns too, so they leave as the guest's traffic
//! does and meet the same host rules: nothing on the host, nor another
//! sandbox, is reachable through the proxy.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hearth_net::{DomainRule, PROXY_HTTP_PORT, PROXY_TLS_PORT};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;

/// The most a request head or a ClientHello may take before the proxy
/// has the name it needs.
const MAX_HEAD: usize = 16 * 1024;
/// How long a guest has to send that.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long resolving and connecting upstream may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// Which of the two listeners a connection came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebPort {
    Http,
    Tls,
}

impl WebPort {
    pub fn as_str(self) -> &'static str {
        match self {
            WebPort::Http => "http",
            WebPort::Tls => "tls",
        }
    }

    fn upstream_port(self) -> u16 {
        match self {
            WebPort::Http => 80,
            WebPort::Tls => 443,
        }
    }
}

/// What became of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its name matched a rule and the proxy reached that host.
    Allowed,
    /// No rule matched its name, or it named none.
    Refused,
    /// Its name matched, but resolving or connecting failed.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

/// Connections every proxy of a node handled since it opened, by port and
/// outcome.
#[derive(Debug, Default)]
pub struct EgressCounts([[AtomicU64; 3]; 2]);

impl EgressCounts {
    fn add(&self, port: WebPort, outcome: Outcome) {
        self.0[port as usize][outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Every `(port, outcome, connections)`.
    pub fn read(&self) -> Vec<(WebPort, Outcome, u64)> {
        let mut all = Vec::new();
        for port in [WebPort::Http, WebPort::Tls] {
            for outcome in [Outcome::Allowed, Outcome::Refused, Outcome::Failed] {
                let n = self.0[port as usize][outcome as usize].load(Ordering::Relaxed);
                all.push((port, outcome, n));
            }
        }
        all
    }
}

/// Resolves allowed names for the proxies of a node: the nameservers its
/// guests are given, asked directly (not the host's hosts file).
pub(crate) fn resolver(nameservers: &[Ipv4Addr]) -> Option<TokioResolver> {
    if nameservers.is_empty() {
        return None;
    }
    let servers = nameservers
        .iter()
        .map(|ip| NameServerConfig::udp_and_tcp(IpAddr::V4(*ip)))
        .collect();
    let mut builder = TokioResolver::builder_with_config(
        ResolverConfig::from_name_servers(servers),
        TokioRuntimeProvider::default(),
    );
    let options = builder.options_mut();
    options.ip_strategy = LookupIpStrategy::Ipv4Only;
    options.use_hosts_file = ResolveHosts::Never;
    options.timeout = Duration::from_secs(3);
    match builder.build() {
        Ok(resolver) => Some(resolver),
        Err(e) => {
            tracing::warn!("no resolver for the egress proxy: {e}");
            None
        }
    }
}

/// What every connection of one proxy shares.
struct Shared {
    netns: OwnedFd,
    domains: Vec<DomainRule>,
    resolver: TokioResolver,
    counts: Arc<EgressCounts>,
}

/// A running proxy; dropping it closes its listeners and connections.
pub(crate) struct EgressProxy {
    _tasks: JoinSet<()>,
}

impl EgressProxy {
    /// Listens in the netns `netns` for the connections a policy with
    /// `domains` redirects, and serves them.
    pub(crate) async fn start(
        netns: OwnedFd,
        domains: Vec<DomainRule>,
        resolver: TokioResolver,
        counts: Arc<EgressCounts>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            netns,
            domains,
            resolver,
            counts,
        });
        let mut tasks = JoinSet::new();
        for (port, listen) in [
            (WebPort::Http, PROXY_HTTP_PORT),
            (WebPort::Tls, PROXY_TLS_PORT),
        ] {
            let listener = in_netns(&shared.netns, move || {
                let listener = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, listen))?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            })
            .await?;
            let listener = TcpListener::from_std(listener)?;
            tasks.spawn(accept_loop(listener, port, Arc::clone(&shared)));
        }
        Ok(Self { _tasks: tasks })
    }
}

async fn accept_loop(listener: TcpListener, port: WebPort, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve(stream, port, Arc::clone(&shared)));
                }
                Err(e) => {
                    tracing::warn!(port = port.as_str(), "egress proxy accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Reap finished connections as they end.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve(mut guest: TcpStream, port: WebPort, shared: Arc<Shared>) {
    let outcome = proxy(&mut guest, port, &shared).await;
    shared.counts.add(port, outcome);
}

async fn proxy(guest: &mut TcpStream, port: WebPort, shared: &Shared) -> Outcome {
    let head = tokio::time::timeout(HEAD_TIMEOUT, read_name(guest, port)).await;
    let (name, head) = match head {
        Ok(Ok(found)) => found,
        failed => {
            // A TLS client is only closed on: it has no way to read a reason.
            if port == WebPort::Http {
                let why = match failed {
                    Ok(Err(why)) => why,
                    _ => "no request in time",
                };
                refuse_http(guest, &format!("egress proxy: {why}\n")).await;
            }
            return Outcome::Refused;
        }
    };
    if !shared.domains.iter().any(|rule| rule.matches(&name)) {
        tracing::debug!(
            name,
            port = port.as_str(),
            "egress refused: no rule names it"
        );
        if port == WebPort::Http {
            refuse_http(
                guest,
                &format!("egress proxy: {name} is not allowed for this sandbox\n"),
            )
            .await;
        }
        return Outcome::Refused;
    }
    let upstream = tokio::time::timeout(UPSTREAM_TIMEOUT, connect(shared, &name, port)).await;
    let mut upstream = match upstream {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(name, "egress proxy: {e}");
            return Outcome::Failed;
        }
        Err(_) => return Outcome::Failed,
    };
    if upstream.write_all(&head).await.is_err() {
        return Outcome::Failed;
    }
    let _ = tokio::io::copy_bidirectional(guest, &mut upstream).await;
    Outcome::Allowed
}

/// Reads until the name the connection is for is known: the host name
/// and every byte read so far, to send on unchanged.
async fn read_name(
    guest: &mut TcpStream,
    port: WebPort,
) -> Result<(String, Vec<u8>), &'static str> {
    let mut head = Vec::new();
    let mut tls = rustls::server::Acceptor::default();
    let mut chunk = [0u8; 4096];
    loop {
        let n = guest
            .read(&mut chunk)
            .await
            .map_err(|_| "the connection failed")?;
        if n == 0 {
            return Err("the connection ended before it named a host");
        }
        head.extend_from_slice(&chunk[..n]);
        let found = match port {
            WebPort::Http => http_host(&head)?,
            WebPort::Tls => {
                let mut fresh = &chunk[..n];
                while !fresh.is_empty() {
                    tls.read_tls(&mut fresh)
                        .map_err(|_| "not a TLS ClientHello")?;
                }
                match tls.accept() {
                    Ok(None) => None,
                    Ok(Some(accepted)) => Some(
                        accepted
                            .client_hello()
                            .server_name()
                            .ok_or("a ClientHello without a server name")?
                            .to_owned(),
                    ),
                    Err(_) => return Err("not a TLS ClientHello"),
                }
            }
        };
        if let Some(name) = found {
            return Ok((name, head));
        }
        if head.len() > MAX_HEAD {
            return Err("no host name in the first 16 KiB");
        }
    }
}

/// The `Host` of an HTTP request head, without its port; `None` while the
/// head is incomplete.
fn http_host(head: &[u8]) -> Result<Option<String>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(_)) => {}
        Err(_) => return Err("not an HTTP request"),
    }
    let host = request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .ok_or("a request without a Host header")?;
    let host = std::str::from_utf8(host.value).map_err(|_| "a Host header that is not text")?;
    let host = host.trim();
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    Ok(Some(name.to_owned()))
}

async fn refuse_http(guest: &mut TcpStream, body: &str) {
    let response = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = guest.write_all(response.as_bytes()).await;
    let _ = guest.shutdown().await;
}

/// Resolves `name` and connects to the first address that answers, from
/// the slot's netns.
async fn connect(shared: &Shared, name: &str, port: WebPort) -> std::io::Result<TcpStream> {
    let fqdn = format!("{}.", name.trim_end_matches('.'));
    let found = shared
        .resolver
        .lookup_ip(fqdn.as_str())
        .await
        .map_err(|e| std::io::Error::other(format!("resolving {name}: {e}")))?;
    let mut last = std::io::Error::other(format!("{name} has no usable IPv4 address"));
    for ip in found.iter() {
        let IpAddr::V4(ip) = ip else { continue };
        if !routable(ip) {
            last = std::io::Error::other(format!("{name} resolves to {ip}, which is refused"));
            continue;
        }
        let socket = in_netns(&shared.netns, || {
            let fd = nix::sys::socket::socket(
                nix::sys::socket::AddressFamily::Inet,
                nix::sys::socket::SockType::Stream,
                nix::sys::socket::SockFlag::SOCK_NONBLOCK
                    | nix::sys::socket::SockFlag::SOCK_CLOEXEC,
                None,
            )?;
            Ok(std::net::TcpStream::from(fd))
        })
        .await?;
        match TcpSocket::from_std_stream(socket)
            .connect(SocketAddr::from((ip, port.upstream_port())))
            .await
        {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Whether an address may be an upstream: not one of the netns itself
/// (its loopback holds the proxy's own listeners; the guest and its gateway
/// are link-local) nor one no host has.
fn routable(ip: Ipv4Addr) -> bool {
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast())
}

/// Runs `make` on a thread of its own that has joined the netns `netns`:
/// a socket made there stays in it. (`setns` moves only the calling
/// thread, so no thread of the runtime ever changes its netns.)
async fn in_netns<T: Send + 'static>(
    netns: &OwnedFd,
    make: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let netns = netns.try_clone()?;
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let made = nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)
            .and_then(|()| make());
        let _ = done.send(made);
    });
    result
        .await
        .map_err(|_| std::io::Error::other("the netns thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_hosts_come_without_their_port() {
        let host = |head: &str| http_host(head.as_bytes());
        assert_eq!(
            host("GET / HTTP/1.1\r\nHost: example.com:8080\r\n\r\n"),
            Ok(Some("example.com".to_owned()))
        );
        assert_eq!(
            host("GET / HTTP/1.1\r\nhOsT:  a.example.com \r\nAccept: */*\r\n\r\n"),
            Ok(Some("a.example.com".to_owned()))
        );
        assert_eq!(host("GET / HTTP/1.1\r\nHost: exa"), Ok(None));
        assert!(host("GET / HTTP/1.1\r\nAccept: */*\r\n\r\n").is_err());
        assert!(host("\x16\x03\x01\x02\x00").is_err());
    }

    #[test]
    fn upstreams_are_never_the_netns_itself() {
        for refused in [
            "127.0.0.1",
            "0.0.0.0",
            "169.254.0.21",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!routable(refused.parse().unwrap()), "{refused}");
        }
        assert!(routable("198.51.100.2".parse().unwrap()));
    }

    #[test]
    fn counts_add_up_by_port_and_outcome() {
        let counts = EgressCounts::default();
        counts.add(WebPort::Tls, Outcome::Refused);
        counts.add(WebPort::Tls, Outcome::Refused);
        counts.add(WebPort::Http, Outcome::Allowed);
        let read = counts.read();
        assert!(read.contains(&(WebPort::Tls, Outcome::Refused, 2)));
        assert!(read.contains(&(WebPort::Http, Outcome::Allowed, 1)));
        assert!(read.contains(&(WebPort::Http, Outcome::Failed, 0)));
        assert_eq!(read.len(), 6);
    }
}
