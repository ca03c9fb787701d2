//! Published ports: a host port forwarded to a port of the guest, as
//! `docker run -p` and firebuild's `--port` do.
//!
//! Each mapping is a DNAT rule in the slot's host table, on both the
//! prerouting hook (clients on other machines and in other network
//! namespaces) and the output hook (clients on the host itself), to the
//! slot's address, which the netns forwards to the guest. Loopback clients
//! need the host veth to route 127.0.0.0/8 (`route_localnet`) and their
//! source masqueraded. The rules live and die with the slot's table.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// TCP or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Proto {
    #[default]
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// One published port: `[ADDR:]HOSTPORT:GUESTPORT[/tcp|udp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Published {
    /// The host address it listens on; `None` for every local address.
    pub addr: Option<Ipv4Addr>,
    pub host_port: u16,
    pub guest_port: u16,
    pub proto: Proto,
}

impl Published {
    /// Whether `self` and `other` would take the same host port: the same
    /// protocol and port, on the same address or either on every address.
    pub fn clashes_with(&self, other: &Self) -> bool {
        self.proto == other.proto
            && self.host_port == other.host_port
            && (self.addr.is_none() || other.addr.is_none() || self.addr == other.addr)
    }

    /// The nft match of the packets this mapping takes (before the DNAT).
    fn nft_match(&self) -> String {
        let daddr = match self.addr {
            Some(addr) => format!("ip daddr {addr}"),
            None => "fib daddr type local".to_owned(),
        };
        format!("{daddr} {} dport {}", self.proto.as_str(), self.host_port)
    }
}

/// Why a published port does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{given}' is not [ADDR:]HOSTPORT:GUESTPORT[/tcp|udp]: {why}")]
pub struct PublishError {
    given: String,
    why: String,
}

impl FromStr for Published {
    type Err = PublishError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| PublishError {
            given: s.to_owned(),
            why: why.to_owned(),
        };
        let (ports, proto) = match s.rsplit_once('/') {
            Some((ports, "tcp")) => (ports, Proto::Tcp),
            Some((ports, "udp")) => (ports, Proto::Udp),
            Some(_) => return Err(bad("the protocol must be tcp or udp")),
            None => (s, Proto::Tcp),
        };
        let parts: Vec<&str> = ports.split(':').collect();
        let (addr, host, guest) = match parts[..] {
            [host, guest] => (None, host, guest),
            [addr, host, guest] => {
                let addr: Ipv4Addr = addr
                    .parse()
                    .map_err(|_| bad("the address must be an IPv4 address"))?;
                (Some(addr).filter(|a| !a.is_unspecified()), host, guest)
            }
            _ => return Err(bad("give two ports, optionally after an address")),
        };
        let port = |text: &str, which: &str| {
            text.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad(&format!("the {which} port must be 1 to 65535")))
        };
        Ok(Self {
            addr,
            host_port: port(host, "host")?,
            guest_port: port(guest, "guest")?,
            proto,
        })
    }
}

impl fmt::Display for Published {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(addr) = self.addr {
            write!(f, "{addr}:")?;
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port,
            self.guest_port,
            self.proto.as_str()
        )
    }
}

impl Serialize for Published {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Published {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The nft script that replaces the published ports of the slot whose host
/// table is `table`, host veth `host_veth` and address `ns_ip` with
/// `published`, in one transaction. Run on the host.
pub(crate) fn nft_script(
    table: &str,
    host_veth: &str,
    ns_ip: Ipv4Addr,
    published: &[Published],
) -> String {
    let chains = [
        ("publish_pre", "type nat hook prerouting priority dstnat"),
        // nft names dstnat (-100) only for prerouting.
        ("publish_out", "type nat hook output priority -100"),
        ("publish_post", "type nat hook postrouting priority srcnat"),
    ];
    let mut script = String::new();
    for (chain, hook) in chains {
        script.push_str(&format!(
            "add chain ip {table} {chain} {{ {hook}; policy accept; }}\n\
             flush chain ip {table} {chain}\n"
        ));
    }
    for p in published {
        for chain in ["publish_pre", "publish_out"] {
            script.push_str(&format!(
                "add rule ip {table} {chain} {} dnat to {ns_ip}:{}\n",
                p.nft_match(),
                p.guest_port
            ));
        }
    }
    if !published.is_empty() {
        // A host client on 127.0.0.1 keeps that source past the DNAT;
        // it must leave as the host's address on the veth.
        script.push_str(&format!(
            "add rule ip {table} publish_post oifname \"{host_veth}\" ip saddr 127.0.0.0/8 masquerade\n"
        ));
    }
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Published {
        s.parse().unwrap()
    }

    #[test]
    fn mappings_parse_and_print() {
        assert_eq!(
            p("8080:80"),
            Published {
                addr: None,
                host_port: 8080,
                guest_port: 80,
                proto: Proto::Tcp
            }
        );
        assert_eq!(
            p("127.0.0.1:5353:53/udp").to_string(),
            "127.0.0.1:5353:53/udp"
        );
        assert_eq!(p("0.0.0.0:80:8080").to_string(), "80:8080/tcp");
        assert_eq!(p("9000:9000/tcp"), p("9000:9000"));
        let json = serde_json::to_string(&p("1.2.3.4:1:2/udp")).unwrap();
        assert_eq!(json, "\"1.2.3.4:1:2/udp\"");
        assert_eq!(
            serde_json::from_str::<Published>(&json).unwrap(),
            p("1.2.3.4:1:2/udp")
        );
    }

    #[test]
    fn bad_mappings_say_why() {
        for (bad, why) in [
            ("80", "two ports"),
            ("a:80:80", "IPv4"),
            ("0:80", "host port"),
            ("80:70000", "guest port"),
            ("80:80/sctp", "tcp or udp"),
            ("1:2:3:4", "two ports"),
            ("", "two ports"),
        ] {
            let err = bad.parse::<Published>().unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn clashes_need_the_same_port_protocol_and_a_shared_address() {
        assert!(p("80:1").clashes_with(&p("80:2")));
        assert!(p("80:1").clashes_with(&p("10.0.0.1:80:2")));
        assert!(!p("10.0.0.2:80:1").clashes_with(&p("10.0.0.1:80:2")));
        assert!(!p("80:1/udp").clashes_with(&p("80:1/tcp")));
        assert!(!p("81:1").clashes_with(&p("80:1")));
    }

    #[test]
    fn the_script_replaces_every_rule_in_one_go() {
        let ns_ip = Ipv4Addr::new(10, 200, 0, 6);
        let script = nft_script(
            "hearth-1",
            "hearth-v1",
            ns_ip,
            &[p("8080:80"), p("127.0.0.1:5353:53/udp")],
        );
        assert!(script.contains("flush chain ip hearth-1 publish_pre"));
        assert!(script.contains(
            "add rule ip hearth-1 publish_pre fib daddr type local tcp dport 8080 dnat to 10.200.0.6:80"
        ));
        assert!(script.contains(
            "add rule ip hearth-1 publish_out ip daddr 127.0.0.1 udp dport 5353 dnat to 10.200.0.6:53"
        ));
        assert!(script.contains("oifname \"hearth-v1\" ip saddr 127.0.0.0/8 masquerade"));
        let none = nft_script("hearth-1", "hearth-v1", ns_ip, &[]);
        assert!(none.contains("flush chain ip hearth-1 publish_out"));
        assert!(!none.contains("dnat"), "{none}");
    }
}
