//! A network outside every slot and outside the host, for tests: a network
//! namespace of its own, joined to the host by a veth pair and reached
//! through the host's routing table, as the internet is. Guests cannot
//! reach the host's own addresses, so a test that needs a destination a
//! guest may connect to listens here.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The block the outside networks take their /30s from (TEST-NET-2).
const BLOCK: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 0);

/// One outside network; removed when dropped.
#[derive(Debug)]
pub struct Outside {
    netns: String,
    host_veth: String,
    host_ip: Ipv4Addr,
    ip: Ipv4Addr,
}

impl Outside {
    /// Builds a new one (as root). Names and addresses are unique within
    /// this process, so tests running side by side each have their own.
    pub fn create() -> std::io::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % 64;
        let tag = format!("{}-{n}", std::process::id() % 100_000);
        let base = u32::from(BLOCK) + 4 * n;
        let outside = Self {
            netns: format!("hxo-{tag}"),
            host_veth: format!("hxv-{tag}"),
            host_ip: Ipv4Addr::from(base + 1),
            ip: Ipv4Addr::from(base + 2),
        };
        outside.remove();
        let Self {
            netns,
            host_veth,
            host_ip,
            ip,
        } = &outside;
        let steps: [&[&str]; 7] = [
            &["netns", "add", netns],
            &[
                "link", "add", host_veth, "type", "veth", "peer", "name", "eth0", "netns", netns,
            ],
            &["addr", "add", &format!("{host_ip}/30"), "dev", host_veth],
            &["link", "set", host_veth, "up"],
            &[
                "-n",
                netns,
                "addr",
                "add",
                &format!("{ip}/30"),
                "dev",
                "eth0",
            ],
            &["-n", netns, "link", "set", "eth0", "up"],
            &[
                "-n",
                netns,
                "route",
                "add",
                "default",
                "via",
                &host_ip.to_string(),
            ],
        ];
        for args in steps {
            let out = Command::new("ip").args(args).output()?;
            if !out.status.success() {
                return Err(std::io::Error::other(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        Ok(outside)
    }

    /// Its address: what a guest connects to.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The host's address on its link: what a guest's connections come
    /// from once the host has masqueraded them.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host_ip
    }

    /// Its netns file (`/run/netns/<name>`), for a process that must
    /// listen there.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns)
    }

    /// A TCP listener on [`Outside::ip`], `port` 0 for any.
    pub fn tcp_listener(&self, port: u16) -> std::io::Result<TcpListener> {
        let ip = self.ip;
        self.inside(move || TcpListener::bind((ip, port)))
    }

    /// A UDP socket on [`Outside::ip`], `port` 0 for any.
    pub fn udp_socket(&self, port: u16) -> std::io::Result<UdpSocket> {
        let ip = self.ip;
        self.inside(move || UdpSocket::bind((ip, port)))
    }

    /// Runs `make` on a thread that has joined the netns: a socket made
    /// there stays in it.
    fn inside<T: Send + 'static>(
        &self,
        make: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let netns = std::fs::File::open(self.netns_path())?;
        std::thread::spawn(move || {
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            make()
        })
        .join()
        .map_err(|_| std::io::Error::other("the netns thread panicked"))?
    }

    fn remove(&self) {
        // Deleting one end of a veth deletes both.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_veth])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        self.remove();
    }
}
