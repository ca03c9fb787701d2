//! Slot plans: every name, address, command and rule of a network slot,
//! derived from its index alone. Pure data; [`crate::apply`] carries it out.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::egress::{Egress, PROXY_HTTP_PORT, PROXY_TLS_PORT};
use crate::leftovers::Leftovers;
use crate::publish::Published;

/// The guest's address, the same in every sandbox.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 21);
/// The guest's default gateway: `tap0` inside the slot's netns.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 22);
/// Prefix length of the guest link (`169.254.0.20/30`).
pub const GUEST_PREFIX_LEN: u8 = 30;
/// The guest's MAC address, the same in every sandbox (locally administered).
pub const GUEST_MAC: &str = "02:fc:00:00:00:05";
/// The MAC of `tap0`, the guest's gateway, also the same in every slot: a
/// guest restored from a snapshot keeps its ARP cache.
pub const GATEWAY_MAC: &str = "02:fc:00:00:00:06";
/// The tap device the VMM opens, inside the slot's netns.
pub const TAP_NAME: &str = "tap0";
/// How many slots the address plan holds (`10.200.0.0/16`, one /30 each).
pub const MAX_SLOTS: u32 = 16384;
/// The first of the host uids (and gids) VMMs run as: the VMM in slot `i`
/// drops to `VMM_UID_BASE + i` once it has opened its files and devices, so
/// no two running VMMs share a uid (as Firecracker's jailer gives each
/// microVM its own), and the slot's tap belongs to that uid. Far above the
/// ranges of people, system users and the usual subordinate ids.
pub const VMM_UID_BASE: u32 = 2_000_000_000;

/// Common prefix of every host-visible name (netns, host veth, host table).
const NAME_PREFIX: &str = "hearth-";
/// Host-side veth names are `hearth-v<index>`.
const HOST_VETH_PREFIX: &str = "hearth-v";
const NS_VETH: &str = "veth0";
/// The nft table inside the netns; it vanishes with the netns.
pub(crate) const NS_TABLE: &str = "hearth";
const SLOT_BASE: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 0);
const SLOT_PREFIX_LEN: u8 = 30;
const NETNS_DIR: &str = "/run/netns";

/// Errors of slot planning.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("slot index {index} is out of range; slots are numbered 0 to {}", MAX_SLOTS - 1)]
    IndexOutOfRange { index: u32 },
}

/// Everything that identifies one network slot on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPlan {
    pub index: u32,
    /// Network namespace name (`hearth-<index>`), under `/run/netns`.
    pub netns: String,
    /// Host end of the veth pair (`hearth-v<index>`).
    pub host_veth: String,
    /// Netns end of the veth pair (`veth0`).
    pub ns_veth: String,
    /// Address of the host end (`10.200.0.0 + 4 * index + 1`).
    pub host_ip: Ipv4Addr,
    /// Address of the netns end (`10.200.0.0 + 4 * index + 2`): the host
    /// reaches the guest at `ns_ip:<port>`.
    pub ns_ip: Ipv4Addr,
    /// The host nft table (family `ip`) holding this slot's host rules.
    pub host_table: String,
}

impl SlotPlan {
    pub fn new(index: u32) -> Result<Self, PlanError> {
        if index >= MAX_SLOTS {
            return Err(PlanError::IndexOutOfRange { index });
        }
        let base = u32::from(SLOT_BASE) + 4 * index;
        Ok(Self {
            index,
            netns: format!("{NAME_PREFIX}{index}"),
            host_veth: format!("{HOST_VETH_PREFIX}{index}"),
            ns_veth: NS_VETH.to_owned(),
            host_ip: Ipv4Addr::from(base + 1),
            ns_ip: Ipv4Addr::from(base + 2),
            host_table: format!("{NAME_PREFIX}{index}"),
        })
    }

    /// The host uid and gid of the VMM in this slot, who owns its tap.
    pub fn vmm_uid(&self) -> u32 {
        VMM_UID_BASE + self.index
    }

    /// The netns file (`/run/netns/<netns>`).
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.netns)
    }

    /// The `ip` invocations that build the links and addresses.
    pub(crate) fn ip_commands(&self) -> Vec<Cmd> {
        let Self {
            netns,
            host_veth,
            ns_veth,
            host_ip,
            ns_ip,
            ..
        } = self;
        let uid = self.vmm_uid();
        let host_batch = format!(
            "addr add {host_ip}/{SLOT_PREFIX_LEN} dev {host_veth}\n\
             link set dev {host_veth} up\n"
        );
        // The guest's address and MAC never change, so a permanent neighbour
        // entry replaces ARP: the host's first probe of a booting guest would
        // otherwise fail and wait for the 1 s ARP retransmit.
        let ns_batch = format!(
            "link set dev lo up\n\
             addr add {ns_ip}/{SLOT_PREFIX_LEN} dev {ns_veth}\n\
             link set dev {ns_veth} up\n\
             tuntap add dev {TAP_NAME} mode tap user {uid} group {uid}\n\
             link set dev {TAP_NAME} address {GATEWAY_MAC}\n\
             addr add {GATEWAY_IP}/{GUEST_PREFIX_LEN} dev {TAP_NAME}\n\
             link set dev {TAP_NAME} up\n\
             neigh add {GUEST_IP} lladdr {GUEST_MAC} dev {TAP_NAME} nud permanent\n\
             route add default via {host_ip} dev {ns_veth}\n"
        );
        vec![
            Cmd::new("ip", ["netns", "add", netns]),
            Cmd::new(
                "ip",
                [
                    "link", "add", host_veth, "type", "veth", "peer", "name", ns_veth, "netns",
                    netns,
                ],
            ),
            Cmd::new("ip", ["-batch", "-"]).stdin(host_batch),
            Cmd::new("ip", ["-n", netns, "-batch", "-"]).stdin(ns_batch),
        ]
    }

    /// Inside the netns: NAT of the slot's address to the guest and back,
    /// and a guard. The guest reaches nothing in the netns itself (its
    /// gateway answers no connection, except those an egress policy with
    /// domains redirects to the proxy there), and a packet whose source is not
    /// the guest's address (a guest that changed it) goes nowhere: only
    /// [`GUEST_IP`] is translated to the slot's address, and nothing else
    /// may leave unaltered.
    pub(crate) fn netns_nft_script(&self) -> String {
        let Self { ns_veth, ns_ip, .. } = self;
        format!(
            "table ip {NS_TABLE} {{\n\
             \tchain prerouting {{\n\
             \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\tip daddr {ns_ip} dnat to {GUEST_IP}\n\
             \t}}\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr {GUEST_IP} oifname \"{ns_veth}\" snat to {ns_ip}\n\
             \t}}\n\
             \tchain guard_input {{\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\tiifname \"{TAP_NAME}\" ct status dnat tcp dport {{ {PROXY_HTTP_PORT}, {PROXY_TLS_PORT} }} accept\n\
             \t\tiifname \"{TAP_NAME}\" reject with icmp type admin-prohibited\n\
             \t}}\n\
             \tchain guard_forward {{\n\
             \t\ttype filter hook forward priority filter - 1; policy accept;\n\
             \t\tiifname \"{TAP_NAME}\" ip saddr != {GUEST_IP} drop\n\
             \t}}\n\
             }}\n"
        )
    }

    /// Host rules: masquerade the slot's egress and accept its forwarded
    /// traffic, except what would reach the host itself or another slot.
    /// The guest may answer the host (the proxy, the agent's clients) but
    /// not start a connection to any of its addresses (its services, the
    /// server's port), nor to another sandbox.
    pub(crate) fn host_nft_script(&self) -> String {
        let Self {
            host_veth,
            ns_ip,
            host_table,
            ..
        } = self;
        format!(
            "table ip {host_table} {{\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr {ns_ip} oifname != \"{host_veth}\" masquerade\n\
             \t}}\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\tiifname \"{host_veth}\" ct state established,related accept\n\
             \t\tiifname \"{host_veth}\" reject with icmp type admin-prohibited\n\
             \t}}\n\
             \tchain forward {{\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tiifname \"{host_veth}\" oifname \"{HOST_VETH_PREFIX}*\" reject with icmp type admin-prohibited\n\
             \t\tiifname \"{host_veth}\" accept\n\
             \t\toifname \"{host_veth}\" accept\n\
             \t}}\n\
             }}\n"
        )
    }

    /// What replaces the slot's egress policy with `egress`.
    pub(crate) fn egress_step(&self, egress: &Egress) -> Step {
        Step::Run(
            Cmd::new("ip", ["netns", "exec", &self.netns, "nft", "-f", "-"])
                .stdin(egress.nft_script()),
        )
    }

    /// What replaces the slot's published ports with `published`: host
    /// rules, and loopback routing on the host veth for clients on
    /// 127.0.0.1.
    pub(crate) fn publish_steps(&self, published: &[Published]) -> Vec<Step> {
        let mut steps = Vec::new();
        if !published.is_empty() {
            steps.push(Step::Sysctl {
                netns: None,
                key: format!("net/ipv4/conf/{}/route_localnet", self.host_veth),
                value: "1",
            });
        }
        steps.push(Step::Run(Cmd::new("nft", ["-f", "-"]).stdin(
            crate::publish::nft_script(&self.host_table, &self.host_veth, self.ns_ip, published),
        )));
        steps
    }

    /// Everything `apply` does, in order.
    pub(crate) fn apply_steps(&self) -> Vec<Step> {
        let mut steps: Vec<Step> = self.ip_commands().into_iter().map(Step::Run).collect();
        steps.push(Step::Sysctl {
            netns: Some(self.netns_path()),
            key: IP_FORWARD.to_owned(),
            value: "1",
        });
        steps.push(Step::Run(
            Cmd::new("ip", ["netns", "exec", &self.netns, "nft", "-f", "-"])
                .stdin(self.netns_nft_script()),
        ));
        steps.push(Step::Sysctl {
            netns: None,
            key: IP_FORWARD.to_owned(),
            value: "1",
        });
        steps.push(Step::Run(
            Cmd::new("nft", ["-f", "-"]).stdin(self.host_nft_script()),
        ));
        steps
    }

    /// What removes this slot's resources among those `present`. Deleting the
    /// host veth first removes both ends at once (a netns is destroyed
    /// asynchronously, so its veth could otherwise linger); deleting the netns
    /// takes `tap0` and the in-netns table with it.
    pub(crate) fn teardown_steps(&self, present: &Leftovers) -> Vec<Step> {
        let mut steps = Vec::new();
        if present.links.contains(&self.host_veth) {
            steps.push(Step::Run(Cmd::new(
                "ip",
                ["link", "del", "dev", &self.host_veth],
            )));
        }
        if present.netns.contains(&self.netns) {
            steps.push(Step::Run(Cmd::new("ip", ["netns", "del", &self.netns])));
        }
        if present.tables.contains(&self.host_table) {
            steps.push(Step::Run(Cmd::new(
                "nft",
                ["delete", "table", "ip", &self.host_table],
            )));
        }
        steps
    }
}

const IP_FORWARD: &str = "net/ipv4/ip_forward";

/// The index a project netns or host table name stands for.
pub(crate) fn index_of_netns_or_table(name: &str) -> Option<u32> {
    index_after(name, NAME_PREFIX)
}

/// The index a project host veth name stands for.
pub(crate) fn index_of_host_veth(name: &str) -> Option<u32> {
    index_after(name, HOST_VETH_PREFIX)
}

/// Only canonical names count (`hearth-7`, not `hearth-07`), so a name and
/// its index map one to one.
fn index_after(name: &str, prefix: &str) -> Option<u32> {
    let digits = name.strip_prefix(prefix)?;
    let index: u32 = digits.parse().ok()?;
    (index < MAX_SLOTS && index.to_string() == digits).then_some(index)
}

/// One OS operation of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    Run(Cmd),
    /// Sets `/proc/sys/<key>` to `value` unless it already has it, in the
    /// given netns (a `/run/netns` path) or on the host.
    Sysctl {
        netns: Option<PathBuf>,
        key: String,
        value: &'static str,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Run(cmd) => cmd.fmt(f),
            Self::Sysctl {
                netns: None,
                key,
                value,
            } => write!(f, "sysctl {key}={value}"),
            Self::Sysctl {
                netns: Some(netns),
                key,
                value,
            } => {
                write!(f, "sysctl {key}={value} in {}", netns.display())
            }
        }
    }
}

/// A program invocation, with what it reads on stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cmd {
    pub(crate) program: &'static str,
    pub(crate) args: Vec<String>,
    pub(crate) stdin: Option<String>,
}

impl Cmd {
    pub(crate) fn new<'a>(program: &'static str, args: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            program,
            args: args.into_iter().map(str::to_owned).collect(),
            stdin: None,
        }
    }

    fn stdin(mut self, input: String) -> Self {
        self.stdin = Some(input);
        self
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.program)?;
        for arg in &self.args {
            write!(f, " {arg}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn index_zero() {
        let plan = SlotPlan::new(0).unwrap();
        assert_eq!(plan.netns, "hearth-0");
        assert_eq!(plan.host_veth, "hearth-v0");
        assert_eq!(plan.ns_veth, "veth0");
        assert_eq!(plan.host_table, "hearth-0");
        assert_eq!(plan.host_ip, Ipv4Addr::new(10, 200, 0, 1));
        assert_eq!(plan.ns_ip, Ipv4Addr::new(10, 200, 0, 2));
        assert_eq!(plan.netns_path(), PathBuf::from("/run/netns/hearth-0"));
    }

    #[test]
    fn index_one() {
        let plan = SlotPlan::new(1).unwrap();
        assert_eq!(plan.netns, "hearth-1");
        assert_eq!(plan.host_veth, "hearth-v1");
        assert_eq!(plan.host_ip, Ipv4Addr::new(10, 200, 0, 5));
        assert_eq!(plan.ns_ip, Ipv4Addr::new(10, 200, 0, 6));
    }

    #[test]
    fn last_index() {
        let plan = SlotPlan::new(MAX_SLOTS - 1).unwrap();
        assert_eq!(plan.netns, "hearth-16383");
        assert_eq!(plan.host_veth, "hearth-v16383");
        assert_eq!(plan.host_ip, Ipv4Addr::new(10, 200, 255, 253));
        assert_eq!(plan.ns_ip, Ipv4Addr::new(10, 200, 255, 254));
    }

    #[test]
    fn out_of_range_index_is_an_error() {
        let err = SlotPlan::new(MAX_SLOTS).unwrap_err();
        assert!(matches!(err, PlanError::IndexOutOfRange { index: 16384 }));
        assert_eq!(
            err.to_string(),
            "slot index 16384 is out of range; slots are numbered 0 to 16383"
        );
    }

    #[test]
    fn no_two_slots_share_a_name_or_address() {
        let mut seen = HashSet::new();
        for index in 0..MAX_SLOTS {
            let plan = SlotPlan::new(index).unwrap();
            for name in [&plan.netns, &plan.host_veth] {
                assert!(name.len() <= 15, "{name} is too long for an interface name");
                assert!(seen.insert(format!("name {name}")), "{name} repeats");
            }
            for ip in [plan.host_ip, plan.ns_ip] {
                assert!(seen.insert(format!("ip {ip}")), "{ip} repeats");
                assert_eq!(ip.octets()[..2], [10, 200]);
            }
            assert_eq!(index_of_netns_or_table(&plan.netns), Some(index));
            assert_eq!(index_of_netns_or_table(&plan.host_table), Some(index));
            assert_eq!(index_of_host_veth(&plan.host_veth), Some(index));
        }
    }

    #[test]
    fn only_canonical_names_are_ours() {
        for name in [
            "hearth-07",
            "hearth-16384",
            "hearth-",
            "hearth-x",
            "hearth-v3",
            "hearth",
        ] {
            assert_eq!(index_of_netns_or_table(name), None, "{name}");
        }
        for name in ["hearth-v07", "hearth-3", "hearth-v", "hearth-v16384"] {
            assert_eq!(index_of_host_veth(name), None, "{name}");
        }
    }

    #[test]
    fn ip_commands_for_index_5() {
        let plan = SlotPlan::new(5).unwrap();
        let cmds = plan.ip_commands();
        let lines: Vec<String> = cmds.iter().map(Cmd::to_string).collect();
        assert_eq!(
            lines,
            [
                "ip netns add hearth-5",
                "ip link add hearth-v5 type veth peer name veth0 netns hearth-5",
                "ip -batch -",
                "ip -n hearth-5 -batch -",
            ]
        );
        assert_eq!(
            cmds[2].stdin.as_deref(),
            Some("addr add 10.200.0.21/30 dev hearth-v5\nlink set dev hearth-v5 up\n")
        );
        let ns_batch = cmds[3].stdin.as_deref().unwrap();
        for line in [
            "link set dev lo up",
            "addr add 10.200.0.22/30 dev veth0",
            "link set dev veth0 up",
            "tuntap add dev tap0 mode tap user 2000000005 group 2000000005",
            "link set dev tap0 address 02:fc:00:00:00:06",
            "addr add 169.254.0.22/30 dev tap0",
            "link set dev tap0 up",
            "neigh add 169.254.0.21 lladdr 02:fc:00:00:00:05 dev tap0 nud permanent",
            "route add default via 10.200.0.21 dev veth0",
        ] {
            assert!(
                ns_batch.lines().any(|l| l == line),
                "missing {line:?} in\n{ns_batch}"
            );
        }
    }

    #[test]
    fn nft_scripts_for_index_5() {
        let plan = SlotPlan::new(5).unwrap();
        let ns = plan.netns_nft_script();
        for line in [
            "table ip hearth {",
            "\t\ttype nat hook prerouting priority dstnat; policy accept;",
            "\t\tip daddr 10.200.0.22 dnat to 169.254.0.21",
            "\t\ttype nat hook postrouting priority srcnat; policy accept;",
            "\t\tip saddr 169.254.0.21 oifname \"veth0\" snat to 10.200.0.22",
            "\t\tiifname \"tap0\" ct status dnat tcp dport { 10080, 10443 } accept",
            "\t\tiifname \"tap0\" reject with icmp type admin-prohibited",
            "\t\ttype filter hook forward priority filter - 1; policy accept;",
            "\t\tiifname \"tap0\" ip saddr != 169.254.0.21 drop",
        ] {
            assert!(ns.lines().any(|l| l == line), "missing {line:?} in\n{ns}");
        }
        let host = plan.host_nft_script();
        for line in [
            "table ip hearth-5 {",
            "\t\tip saddr 10.200.0.22 oifname != \"hearth-v5\" masquerade",
            "\t\ttype filter hook forward priority filter; policy accept;",
            "\t\tiifname \"hearth-v5\" ct state established,related accept",
            "\t\tiifname \"hearth-v5\" reject with icmp type admin-prohibited",
            "\t\tiifname \"hearth-v5\" oifname \"hearth-v*\" reject with icmp type admin-prohibited",
            "\t\tiifname \"hearth-v5\" accept",
            "\t\toifname \"hearth-v5\" accept",
        ] {
            assert!(
                host.lines().any(|l| l == line),
                "missing {line:?} in\n{host}"
            );
        }
    }

    #[test]
    fn apply_steps_in_order() {
        let plan = SlotPlan::new(5).unwrap();
        let steps: Vec<String> = plan.apply_steps().iter().map(Step::to_string).collect();
        assert_eq!(
            steps,
            [
                "ip netns add hearth-5",
                "ip link add hearth-v5 type veth peer name veth0 netns hearth-5",
                "ip -batch -",
                "ip -n hearth-5 -batch -",
                "sysctl net/ipv4/ip_forward=1 in /run/netns/hearth-5",
                "ip netns exec hearth-5 nft -f -",
                "sysctl net/ipv4/ip_forward=1",
                "nft -f -",
            ]
        );
    }

    #[test]
    fn teardown_removes_only_what_is_present() {
        let plan = SlotPlan::new(5).unwrap();
        let all = Leftovers {
            netns: vec!["hearth-5".into()],
            links: vec!["hearth-v5".into()],
            tables: vec!["hearth-5".into()],
        };
        let steps: Vec<String> = plan
            .teardown_steps(&all)
            .iter()
            .map(Step::to_string)
            .collect();
        assert_eq!(
            steps,
            [
                "ip link del dev hearth-v5",
                "ip netns del hearth-5",
                "nft delete table ip hearth-5"
            ]
        );
        let other = Leftovers {
            netns: vec!["hearth-6".into()],
            ..Leftovers::default()
        };
        assert!(plan.teardown_steps(&other).is_empty());
    }

    #[test]
    fn published_ports_route_loopback_on_the_host_veth() {
        let plan = SlotPlan::new(3).unwrap();
        let steps = plan.publish_steps(&["127.0.0.1:8080:80".parse().unwrap()]);
        assert_eq!(
            steps[0],
            Step::Sysctl {
                netns: None,
                key: "net/ipv4/conf/hearth-v3/route_localnet".to_owned(),
                value: "1",
            }
        );
        let Step::Run(nft) = &steps[1] else {
            panic!("{steps:?}")
        };
        assert_eq!(nft.program, "nft");
        let script = nft.stdin.as_deref().unwrap();
        assert!(
            script.contains(&format!("dnat to {}:80", plan.ns_ip)),
            "{script}"
        );
        // None published: the chains are emptied, nothing else.
        let none = plan.publish_steps(&[]);
        assert_eq!(none.len(), 1);
    }
}
