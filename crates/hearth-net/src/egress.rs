//! Egress policy: which connections a guest may open to the outside.
//!
//! The policy is a chain in the slot's netns table, on the forward hook.
//! It matches only packets that come from `tap0` in conntrack's *original*
//! direction, that is connections the guest started. Answers to connections
//! the host opened (the proxy, the agent) travel in the reply direction and
//! always pass, so a closed sandbox stays fully usable from the host.
//! Refused packets are rejected with ICMP "administratively prohibited", so
//! programs in the guest fail at once instead of waiting for a timeout.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::domain::DomainRule;
use crate::plan::{NS_TABLE, TAP_NAME};
use crate::publish::Published;

/// Where, inside a slot's netns, the egress proxy takes the guest's HTTP
/// connections (to port 80) that a policy with domains redirects.
pub const PROXY_HTTP_PORT: u16 = 10080;
/// The same for TLS connections (to port 443).
pub const PROXY_TLS_PORT: u16 = 10443;

/// An IPv4 network: an address and a prefix length, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Cidr {
    /// Every IPv4 address.
    pub const ANY: Cidr = Cidr {
        addr: Ipv4Addr::UNSPECIFIED,
        prefix: 0,
    };

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }
}

/// Why a string is not a [`Cidr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IPv4 address or CIDR block (like 8.8.8.8 or 10.0.0.0/8)")]
    Malformed(String),
    #[error("{0:?} is an IPv6 address; sandboxes have IPv4 networking only")]
    Ipv6(String),
    #[error("{given:?} has host bits set; the block is {network}")]
    HostBits { given: String, network: Cidr },
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `a.b.c.d` (a /32) or `a.b.c.d/n`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || CidrError::Malformed(s.to_owned());
        if s.contains(':') {
            return Err(CidrError::Ipv6(s.to_owned()));
        }
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => {
                let prefix: u8 = prefix
                    .parse()
                    .ok()
                    .filter(|p| *p <= 32 && !prefix.starts_with('+'))
                    .ok_or_else(malformed)?;
                (addr, prefix)
            }
            None => (s, 32),
        };
        let addr: Ipv4Addr = addr.parse().map_err(|_| malformed())?;
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        let network = Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        };
        if network.addr != addr {
            return Err(CidrError::HostBits {
                given: s.to_owned(),
                network,
            });
        }
        Ok(network)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix == 32 {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A slot's network policy. Which destinations the guest may connect to:
/// everything is allowed unless denied, and `allow` wins over `deny`:
/// `deny = [0.0.0.0/0]` with `allow = [10.1.2.3]` lets the guest reach that
/// one address only. And which host ports lead to the guest (`publish`),
/// kept with the rest because it follows the sandbox from slot to slot
/// the same way.
///
/// `domains` allow names as well: the guest's new connections to port 80
/// and 443 of any address that `allow` does not hold go to a proxy in the
/// slot, which lets through those whose `Host` header or TLS server name
/// a rule matches, to the address it resolves that name to itself. Port 53
/// of `nameservers` (the guest's resolvers) is allowed with them. Meant for
/// a policy that denies everything else (`deny = [0.0.0.0/0]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Egress {
    #[serde(default)]
    pub allow: Vec<Cidr>,
    #[serde(default)]
    pub deny: Vec<Cidr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<DomainRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<Published>,
}

impl Egress {
    /// Every destination allowed: what a slot has when it is built.
    pub fn open() -> Self {
        Self::default()
    }

    /// No connection out at all.
    pub fn closed() -> Self {
        Self {
            deny: vec![Cidr::ANY],
            ..Self::default()
        }
    }

    /// Whether this policy refuses nothing.
    pub fn is_open(&self) -> bool {
        self.deny.is_empty()
    }

    /// Whether a new slot has this policy already: open, nothing
    /// published.
    pub fn is_default(&self) -> bool {
        self.is_open() && self.publish.is_empty() && self.domains.is_empty()
    }

    /// The same policy without published ports (a fork's copies: a host
    /// port leads to one sandbox).
    pub fn without_publish(&self) -> Self {
        Self {
            publish: Vec::new(),
            ..self.clone()
        }
    }

    /// The nft script that replaces the slot's policy with this one, in one
    /// transaction. Run inside the slot's netns.
    pub(crate) fn nft_script(&self) -> String {
        let chain = format!("ip {NS_TABLE} egress");
        let redirect = format!("ip {NS_TABLE} egress_redirect");
        let mut script = format!(
            "add chain {chain} {{ type filter hook forward priority filter; policy accept; }}\n\
             flush chain {chain}\n\
             add chain {redirect} {{ type nat hook prerouting priority dstnat; policy accept; }}\n\
             flush chain {redirect}\n"
        );
        if !self.domains.is_empty() {
            let not_allowed = if self.allow.is_empty() {
                String::new()
            } else {
                format!(" ip daddr != {}", nft_set(&self.allow))
            };
            for (port, to) in [(80, PROXY_HTTP_PORT), (443, PROXY_TLS_PORT)] {
                script.push_str(&format!(
                    "add rule {redirect} iifname \"{TAP_NAME}\"{not_allowed} tcp dport {port} \
                     redirect to :{to}\n"
                ));
            }
        }
        if self.is_open() {
            return script;
        }
        let guest_started = format!("iifname \"{TAP_NAME}\" ct direction original");
        if !self.allow.is_empty() {
            script.push_str(&format!(
                "add rule {chain} {guest_started} ip daddr {} accept\n",
                nft_set(&self.allow)
            ));
        }
        if !self.domains.is_empty() && !self.nameservers.is_empty() {
            let resolvers: Vec<String> = self.nameservers.iter().map(ToString::to_string).collect();
            script.push_str(&format!(
                "add rule {chain} {guest_started} ip daddr {{ {} }} meta l4proto {{ tcp, udp }} \
                 th dport 53 accept\n",
                resolvers.join(", ")
            ));
        }
        let denied = if self.deny.contains(&Cidr::ANY) {
            String::new()
        } else {
            format!(" ip daddr {}", nft_set(&self.deny))
        };
        script.push_str(&format!(
            "add rule {chain} {guest_started}{denied} reject with icmp type admin-prohibited\n"
        ));
        script
    }
}

/// An anonymous nft set; nft merges overlapping blocks itself.
fn nft_set(blocks: &[Cidr]) -> String {
    let items: Vec<String> = blocks.iter().map(Cidr::to_string).collect();
    format!("{{ {} }}", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_print() {
        for (given, shown) in [
            ("8.8.8.8", "8.8.8.8"),
            ("8.8.8.8/32", "8.8.8.8"),
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("0.0.0.0/0", "0.0.0.0/0"),
        ] {
            let cidr: Cidr = given.parse().unwrap();
            assert_eq!(cidr.to_string(), shown);
        }
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap(), Cidr::ANY);
    }

    #[test]
    fn bad_cidrs_say_why() {
        for bad in [
            "",
            "example.com",
            "1.2.3",
            "1.2.3.4/33",
            "1.2.3.4/",
            "1.2.3.4/+8",
        ] {
            assert_eq!(
                bad.parse::<Cidr>(),
                Err(CidrError::Malformed(bad.to_owned())),
                "{bad}"
            );
        }
        assert_eq!(
            "::1".parse::<Cidr>(),
            Err(CidrError::Ipv6("::1".to_owned()))
        );
        let err = "10.1.2.3/8".parse::<Cidr>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"10.1.2.3/8\" has host bits set; the block is 10.0.0.0/8"
        );
    }

    #[test]
    fn policies_round_trip_as_json() {
        let egress = Egress {
            allow: vec!["1.1.1.1".parse().unwrap()],
            deny: vec![Cidr::ANY],
            ..Egress::default()
        };
        let json = serde_json::to_string(&egress).unwrap();
        assert_eq!(json, r#"{"allow":["1.1.1.1"],"deny":["0.0.0.0/0"]}"#);
        assert_eq!(serde_json::from_str::<Egress>(&json).unwrap(), egress);
        // Published ports are kept when there are some.
        let published = Egress {
            publish: vec!["8080:80".parse().unwrap()],
            ..egress.clone()
        };
        let json = serde_json::to_string(&published).unwrap();
        assert!(json.ends_with(r#""publish":["8080:80/tcp"]}"#), "{json}");
        assert_eq!(serde_json::from_str::<Egress>(&json).unwrap(), published);
        assert!(!published.is_default() && !egress.is_default() && Egress::open().is_default());
        assert_eq!(published.without_publish(), egress);
        assert_eq!(
            serde_json::from_str::<Egress>("{}").unwrap(),
            Egress::open()
        );
        assert!(serde_json::from_str::<Egress>(r#"{"deny":["10.0.0.1/8"]}"#).is_err());
    }

    #[test]
    fn an_open_policy_only_empties_the_chain() {
        assert_eq!(
            Egress::open().nft_script(),
            "add chain ip hearth egress { type filter hook forward priority filter; policy accept; }\n\
             flush chain ip hearth egress\n\
             add chain ip hearth egress_redirect { type nat hook prerouting priority dstnat; policy accept; }\n\
             flush chain ip hearth egress_redirect\n"
        );
    }

    #[test]
    fn closed_and_partial_policies() {
        let closed = Egress::closed().nft_script();
        assert!(closed.ends_with(
            "flush chain ip hearth egress_redirect\n\
             add rule ip hearth egress iifname \"tap0\" ct direction original \
             reject with icmp type admin-prohibited\n"
        ));
        let partial = Egress {
            allow: vec!["10.1.2.3".parse().unwrap()],
            deny: vec![
                "10.0.0.0/8".parse().unwrap(),
                "192.168.0.0/16".parse().unwrap(),
            ],
            ..Egress::default()
        }
        .nft_script();
        let rules: Vec<&str> = partial.lines().skip(4).collect();
        assert_eq!(
            rules,
            [
                "add rule ip hearth egress iifname \"tap0\" ct direction original \
                 ip daddr { 10.1.2.3 } accept",
                "add rule ip hearth egress iifname \"tap0\" ct direction original \
                 ip daddr { 10.0.0.0/8, 192.168.0.0/16 } reject with icmp type admin-prohibited",
            ]
        );
    }

    #[test]
    fn domains_redirect_web_ports_to_the_proxy_and_allow_dns() {
        let egress = Egress {
            allow: vec!["10.1.2.3".parse().unwrap()],
            deny: vec![Cidr::ANY],
            domains: vec!["example.com".parse().unwrap()],
            nameservers: vec!["192.0.2.53".parse().unwrap()],
            ..Egress::default()
        };
        assert!(!egress.is_default());
        let script = egress.nft_script();
        let rules: Vec<&str> = script.lines().skip(4).collect();
        assert_eq!(
            rules,
            [
                "add rule ip hearth egress_redirect iifname \"tap0\" ip daddr != { 10.1.2.3 } \
                 tcp dport 80 redirect to :10080",
                "add rule ip hearth egress_redirect iifname \"tap0\" ip daddr != { 10.1.2.3 } \
                 tcp dport 443 redirect to :10443",
                "add rule ip hearth egress iifname \"tap0\" ct direction original \
                 ip daddr { 10.1.2.3 } accept",
                "add rule ip hearth egress iifname \"tap0\" ct direction original \
                 ip daddr { 192.0.2.53 } meta l4proto { tcp, udp } th dport 53 accept",
                "add rule ip hearth egress iifname \"tap0\" ct direction original \
                 reject with icmp type admin-prohibited",
            ]
        );
        let json = serde_json::to_string(&egress).unwrap();
        assert!(
            json.contains(r#""domains":["example.com"],"nameservers":["192.0.2.53"]"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Egress>(&json).unwrap(), egress);
    }
}
