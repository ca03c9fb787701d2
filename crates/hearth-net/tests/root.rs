//! Slots on the real host: needs root, `ip`, `nft` and /dev/net/tun.
//!
//! Each test uses indexes of its own, far from 0, with the host's shared lock
//! directory, so the tests can run beside each other and beside real slots.
//! Slots are released on drop, so a failing assertion leaves nothing behind.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Child, Command, Stdio};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use hearth_net::{
    Cidr, DEFAULT_LOCK_DIR, Egress, GATEWAY_MAC, GUEST_IP, GUEST_MAC, Outside, Slot, SlotPlan,
    Slots, leftovers,
};
use nix::sched::{CloneFlags, setns};

const HOLD_ENV: &str = "HEARTH_NET_TEST_HOLD";
const HELD_PREFIX: &str = "HEARTH_NET_HELD=";

fn slots(indexes: Range<u32>) -> Slots {
    Slots::with_range(DEFAULT_LOCK_DIR.into(), indexes)
}

fn left_of(index: u32) -> bool {
    leftovers().unwrap().indexes().contains(&index)
}

/// Runs a command, asserts success, returns stdout.
fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
#[ignore = "needs root: run with --include-ignored"]
fn concurrent_acquires_get_different_working_slots() {
    let barrier = Barrier::new(2);
    let [a, b] = thread::scope(|scope| {
        // Two allocators, as two processes would have.
        let acquire = || {
            let slots = slots(16_300..16_310);
            barrier.wait();
            slots.acquire().unwrap()
        };
        let (a, b) = (scope.spawn(acquire), scope.spawn(acquire));
        [a.join().unwrap(), b.join().unwrap()]
    });
    assert_ne!(a.plan().index, b.plan().index);

    for slot in [&a, &b] {
        let SlotPlan {
            netns,
            host_veth,
            host_ip,
            ns_ip,
            host_table,
            ..
        } = slot.plan();
        assert!(slot.plan().netns_path().exists());
        let tap = sh("ip", &["-n", netns, "-br", "addr", "show", "dev", "tap0"]);
        assert!(tap.contains("169.254.0.22/30"), "{tap}");
        // The tap belongs to the uid its VMM will run as.
        let owner = sh("ip", &["-n", netns, "-d", "link", "show", "dev", "tap0"]);
        let uid = slot.plan().vmm_uid();
        assert!(
            owner.contains(&format!("user {uid} group {uid}")),
            "{owner}"
        );
        let veth = sh("ip", &["-n", netns, "-br", "addr", "show", "dev", "veth0"]);
        assert!(veth.contains(&format!("{ns_ip}/30")), "{veth}");
        let host = sh("ip", &["-br", "addr", "show", "dev", host_veth]);
        assert!(host.contains(&format!("{host_ip}/30")), "{host}");
        let route = sh("ip", &["-n", netns, "route", "show", "default"]);
        assert!(
            route.contains(&format!("via {host_ip} dev veth0")),
            "{route}"
        );
        let forward = sh(
            "ip",
            &[
                "netns",
                "exec",
                netns,
                "cat",
                "/proc/sys/net/ipv4/ip_forward",
            ],
        );
        assert_eq!(forward.trim(), "1");

        let ns_rules = sh(
            "ip",
            &[
                "netns", "exec", netns, "nft", "list", "table", "ip", "hearth",
            ],
        );
        assert!(
            ns_rules.contains(&format!("ip daddr {ns_ip} dnat to 169.254.0.21")),
            "{ns_rules}"
        );
        let snat = format!("ip saddr 169.254.0.21 oifname \"veth0\" snat to {ns_ip}");
        assert!(ns_rules.contains(&snat), "{ns_rules}");
        let host_rules = sh("nft", &["list", "table", "ip", host_table]);
        let masquerade = format!("ip saddr {ns_ip} oifname != \"{host_veth}\" masquerade");
        assert!(host_rules.contains(&masquerade), "{host_rules}");
        assert!(
            host_rules.contains(&format!("iifname \"{host_veth}\" accept")),
            "{host_rules}"
        );
    }
    assert_eq!(sh("cat", &["/proc/sys/net/ipv4/ip_forward"]).trim(), "1");

    let indexes = [a.plan().index, b.plan().index];
    a.release().unwrap();
    b.release().unwrap();
    for index in indexes {
        assert!(!left_of(index), "slot {index} left resources behind");
    }
}

/// There is no guest here, so the test plays one: it attaches to `tap0`
/// inside the slot's netns (through `enter_netns_fd`) and reads and writes
/// raw Ethernet frames as the guest's NIC would. This proves the DNAT from
/// `ns_ip` to the guest address, the way back, that traffic the guest
/// starts reaches a network outside the host (masqueraded), and that it
/// reaches neither the host itself nor another slot, nor anything with a
/// source address the guest made up.
#[test]
#[ignore = "needs root: run with --include-ignored"]
fn host_reaches_the_guest_and_the_guest_reaches_out_but_not_the_host() {
    let slot = slots(16_320..16_330).acquire().unwrap();
    let plan = slot.plan().clone();
    let mut tap = open_tap(&slot);
    let guest_mac = parse_mac(GUEST_MAC);
    let ns = plan.netns.as_str();
    let guest_ip = GUEST_IP.to_string();
    // What the guest's kernel would answer to ARP.
    let neigh = [
        "-n", ns, "neigh", "replace", &guest_ip, "lladdr", GUEST_MAC, "dev", "tap0",
    ];
    sh("ip", &[&neigh[..], &["nud", "permanent"]].concat());
    let tap_link = sh("ip", &["-n", ns, "-br", "link", "show", "dev", "tap0"]);
    let tap_mac = parse_mac(tap_link.split_whitespace().nth(2).unwrap());

    // Host → ns_ip:7777 arrives at the guest as 169.254.0.21:7777.
    let host = UdpSocket::bind((plan.host_ip, 0)).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let host_addr = SocketAddrV4::new(plan.host_ip, host.local_addr().unwrap().port());
    let guest_addr = SocketAddrV4::new(GUEST_IP, 7777);
    let seen = receive_on_tap(&tap, || {
        host.send_to(b"to-guest", (plan.ns_ip, 7777)).unwrap();
    })
    .into_iter()
    .find(|udp| udp.dst == guest_addr && udp.payload == b"to-guest")
    .expect("the datagram to ns_ip never reached tap0 as one to the guest address");
    assert_eq!(seen.src, host_addr);

    // The guest's answer reaches the host as coming from ns_ip:7777.
    tap.write_all(&udp_frame(
        tap_mac,
        guest_mac,
        guest_addr,
        host_addr,
        b"from-guest",
    ))
    .unwrap();
    let mut buf = [0; 64];
    let (len, from) = host.recv_from(&mut buf).unwrap();
    assert_eq!(
        (&buf[..len], from),
        (&b"from-guest"[..], (plan.ns_ip, 7777).into())
    );

    // A flow the guest starts goes out, masqueraded by the host.
    let outside = Outside::create().unwrap();
    let listener = outside.udp_socket(0).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let listener_addr = SocketAddrV4::new(outside.ip(), listener.local_addr().unwrap().port());
    let guest_src = SocketAddrV4::new(GUEST_IP, 40_000);
    tap.write_all(&udp_frame(
        tap_mac,
        guest_mac,
        guest_src,
        listener_addr,
        b"guest-first",
    ))
    .unwrap();
    let (len, from) = listener.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..len], b"guest-first");
    assert_eq!(from.ip(), std::net::IpAddr::V4(outside.host_ip()));

    // What the guest starts towards the host, another slot or its own
    // gateway is refused at once (ICMP admin-prohibited on tap0), and a
    // made-up source address gets nowhere.
    let other = slots(16_330..16_340).acquire().unwrap();
    let quiet = |socket: &UdpSocket| {
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0; 64];
        socket.recv_from(&mut buf).is_err()
    };
    let host_listener = UdpSocket::bind((plan.host_ip, 0)).unwrap();
    let host_port = host_listener.local_addr().unwrap().port();
    let targets = [
        SocketAddrV4::new(plan.host_ip, host_port),
        SocketAddrV4::new(other.plan().ns_ip, 7777),
        SocketAddrV4::new(hearth_net::GATEWAY_IP, 7777),
    ];
    for dst in targets {
        let refused = refusals_on_tap(&tap, || {
            (&tap)
                .write_all(&udp_frame(tap_mac, guest_mac, guest_src, dst, b"in"))
                .unwrap();
        });
        assert!(
            refused.contains(dst.ip()),
            "no admin-prohibited answer to the guest's datagram to {dst}: {refused:?}"
        );
    }
    assert!(quiet(&host_listener), "the guest reached the host");
    let spoofed = SocketAddrV4::new(Ipv4Addr::new(169, 254, 0, 99), 40_001);
    tap.write_all(&udp_frame(
        tap_mac,
        guest_mac,
        spoofed,
        listener_addr,
        b"spoofed",
    ))
    .unwrap();
    assert!(quiet(&listener), "a made-up source address got out");
    drop(other);

    drop(tap);
    let index = plan.index;
    slot.release().unwrap();
    assert!(!left_of(index));
}

/// The fake guest of the test above, under an egress policy: what the
/// guest starts is refused unless allowed, while the host's own flows to
/// the guest and their answers pass whatever the policy.
#[test]
#[ignore = "needs root: run with --include-ignored"]
fn egress_policy_refuses_what_the_guest_starts_and_nothing_else() {
    let slot = slots(16_360..16_370).acquire().unwrap();
    let plan = slot.plan().clone();
    let mut tap = open_tap(&slot);
    let (tap_mac, guest_mac) = (parse_mac(GATEWAY_MAC), parse_mac(GUEST_MAC));
    let mut guest_sends = |src_port: u16, dst: SocketAddrV4, payload: &[u8]| {
        let src = SocketAddrV4::new(GUEST_IP, src_port);
        tap.write_all(&udp_frame(tap_mac, guest_mac, src, dst, payload))
            .unwrap();
    };
    let outside = Outside::create().unwrap();
    let listener = outside.udp_socket(0).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let listener_addr = SocketAddrV4::new(outside.ip(), listener.local_addr().unwrap().port());
    let mut buf = [0; 64];
    let mut received = |what: &[u8]| match listener.recv_from(&mut buf) {
        Ok((len, _)) => {
            assert_eq!(&buf[..len], what);
            true
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            false
        }
        Err(e) => panic!("{e}"),
    };

    slot.set_egress(&Egress::closed()).unwrap();
    let rules = sh(
        "ip",
        &[
            "netns",
            "exec",
            &plan.netns,
            "nft",
            "list",
            "chain",
            "ip",
            "hearth",
            "egress",
        ],
    );
    assert!(
        rules.contains("reject with icmp admin-prohibited"),
        "{rules}"
    );
    guest_sends(40_001, listener_addr, b"closed");
    assert!(
        !received(b"closed"),
        "a closed slot let the guest's datagram out"
    );

    // The host's flow in, and the guest's answer, still pass.
    let host = UdpSocket::bind((plan.host_ip, 0)).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let host_addr = SocketAddrV4::new(plan.host_ip, host.local_addr().unwrap().port());
    let guest_addr = SocketAddrV4::new(GUEST_IP, 7777);
    receive_on_tap(&tap, || {
        host.send_to(b"to-guest", (plan.ns_ip, 7777)).unwrap();
    })
    .into_iter()
    .find(|udp| udp.dst == guest_addr && udp.payload == b"to-guest")
    .expect("a closed slot stopped the host's datagram to the guest");
    tap.write_all(&udp_frame(
        tap_mac, guest_mac, guest_addr, host_addr, b"answer",
    ))
    .unwrap();
    let mut answer = [0; 16];
    let (len, _) = host.recv_from(&mut answer).unwrap();
    assert_eq!(&answer[..len], b"answer");

    // An allowed address wins over a denied block; then the policy opens.
    let mut guest_sends = |src_port: u16, payload: &[u8]| {
        let src = SocketAddrV4::new(GUEST_IP, src_port);
        tap.write_all(&udp_frame(tap_mac, guest_mac, src, listener_addr, payload))
            .unwrap();
    };
    let only_outside = Egress {
        allow: vec![format!("{}", outside.ip()).parse().unwrap()],
        deny: vec![Cidr::ANY],
        ..Egress::default()
    };
    slot.set_egress(&only_outside).unwrap();
    guest_sends(40_002, b"allowed");
    assert!(received(b"allowed"), "an allowed address was refused");
    let elsewhere = Egress {
        allow: vec!["192.0.2.1".parse().unwrap()],
        deny: vec!["198.51.100.0/24".parse().unwrap()],
        ..Egress::default()
    };
    slot.set_egress(&elsewhere).unwrap();
    guest_sends(40_003, b"denied");
    assert!(
        !received(b"denied"),
        "a denied block let the guest's datagram out"
    );
    slot.set_egress(&Egress::open()).unwrap();
    guest_sends(40_004, b"open");
    assert!(
        received(b"open"),
        "an open slot refused the guest's datagram"
    );

    drop(tap);
    let index = plan.index;
    slot.release().unwrap();
    assert!(!left_of(index));
}

#[test]
#[ignore = "needs root: run with --include-ignored"]
fn a_dead_holders_slot_is_cleaned_up() {
    const RANGE: Range<u32> = 16_340..16_350;
    let mut holder = Holder::spawn();
    let held = holder.index();
    assert!(RANGE.contains(&held));
    assert!(left_of(held));

    // While the holder lives, its slot is taken and is no leftover.
    let mine = slots(RANGE).acquire().unwrap();
    assert_ne!(mine.plan().index, held);
    assert!(!slots(RANGE).cleanup_leftovers().unwrap().contains(&held));
    assert!(left_of(held));

    holder.kill();
    assert!(
        left_of(held),
        "the killed holder's resources should still be there"
    );
    let cleaned = slots(RANGE).cleanup_leftovers().unwrap();
    assert!(
        cleaned.contains(&held),
        "cleaned {cleaned:?}, expected {held}"
    );
    assert!(!cleaned.contains(&mine.plan().index));
    assert!(!left_of(held));
    assert!(left_of(mine.plan().index));
    mine.release().unwrap();
}

/// Not a test by itself: the child process of `a_dead_holders_slot_is_cleaned_up`.
#[test]
#[ignore = "needs root: run with --include-ignored"]
fn helper_holds_a_slot_until_killed() {
    if std::env::var_os(HOLD_ENV).is_none() {
        return;
    }
    let slot = slots(16_340..16_350).acquire().unwrap();
    // Straight to stdout: the test harness captures `println!`.
    let mut stdout = io::stdout();
    writeln!(stdout, "{HELD_PREFIX}{}", slot.plan().index).unwrap();
    stdout.flush().unwrap();
    // Killed long before; the sleep only bounds a forgotten child.
    thread::sleep(Duration::from_secs(120));
}

/// A child process holding a slot; killed on drop.
struct Holder {
    child: Child,
    index: Option<u32>,
}

impl Holder {
    fn spawn() -> Self {
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "helper_holds_a_slot_until_killed",
                "--include-ignored",
            ])
            .arg("--test-threads=1")
            .env(HOLD_ENV, "1")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        Self { child, index: None }
    }

    fn index(&mut self) -> u32 {
        let stdout = self.child.stdout.take().unwrap();
        let index = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| Some(line.split_once(HELD_PREFIX)?.1.trim().parse().unwrap()))
            .expect("the holder process did not acquire a slot");
        self.index = Some(index);
        index
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill();
        }
        // A failed test must not leave the holder's slot behind.
        if let Some(index) = self.index
            && left_of(index)
        {
            drop(slots(index..index + 1).cleanup_leftovers());
        }
    }
}

/// `ioctl(TUNSETIFF)`: `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;

/// `struct ifreq` as far as TUNSETIFF reads it (40 bytes).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

/// Attaches to the slot's `tap0`, as a VMM would, from a thread in the netns.
fn open_tap(slot: &Slot) -> File {
    let netns = slot.enter_netns_fd().unwrap();
    thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(&netns, CloneFlags::CLONE_NEWNET).unwrap();
                let tap = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open("/dev/net/tun")
                    .unwrap();
                let mut req = IfReq {
                    name: [0; 16],
                    flags: IFF_TAP | IFF_NO_PI,
                    _pad: [0; 22],
                };
                req.name[..4].copy_from_slice(b"tap0");
                // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` has
                // its layout and size and lives across the call.
                let rc = unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETIFF, &mut req) };
                assert_eq!(rc, 0, "TUNSETIFF: {}", io::Error::last_os_error());
                tap
            })
            .join()
            .unwrap()
    })
}

#[derive(Debug)]
struct Udp {
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: Vec<u8>,
}

/// Calls `send` every 100 ms and collects the UDP frames read from the tap,
/// until one arrives or 5 s pass.
fn receive_on_tap(tap: &File, send: impl Fn()) -> Vec<Udp> {
    collect_on_tap(tap, send, parse_udp)
}

/// Sends with `send` (again every 100 ms, for up to 5 s) until `tap0`
/// carries an ICMP "administratively prohibited" answer; the destinations
/// of the datagrams those answers refuse.
fn refusals_on_tap(tap: &File, send: impl Fn()) -> Vec<Ipv4Addr> {
    collect_on_tap(tap, send, parse_prohibited)
}

/// Calls `send` every 100 ms and keeps what `parse` finds in the frames
/// read from the tap, until it finds something or 5 s pass.
fn collect_on_tap<T>(tap: &File, send: impl Fn(), parse: fn(&[u8]) -> Option<T>) -> Vec<T> {
    let mut tap = tap;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut found = Vec::new();
    let mut buf = [0; 2048];
    while found.is_empty() && Instant::now() < deadline {
        send();
        let round = Instant::now() + Duration::from_millis(100);
        while Instant::now() < round {
            match tap.read(&mut buf) {
                Ok(len) => found.extend(parse(&buf[..len])),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(5));
                }
                Err(err) => panic!("reading tap0: {err}"),
            }
        }
    }
    found
}

/// The original destination of an ICMP destination-unreachable,
/// administratively prohibited (type 3, code 13) frame.
fn parse_prohibited(frame: &[u8]) -> Option<Ipv4Addr> {
    if frame.get(12..14) != Some(&[8, 0][..]) {
        return None;
    }
    let ip = frame.get(14..)?;
    let header = usize::from(ip.first()? & 0x0f) * 4;
    if *ip.get(9)? != 1 {
        return None;
    }
    let icmp = ip.get(header..)?;
    if icmp.get(..2)? != [3, 13] {
        return None;
    }
    // 8 bytes of ICMP header, then the refused datagram's IP header.
    let inner = icmp.get(8..)?;
    let dst: [u8; 4] = inner.get(16..20)?.try_into().ok()?;
    Some(Ipv4Addr::from(dst))
}

fn parse_udp(frame: &[u8]) -> Option<Udp> {
    if frame.get(12..14) != Some(&[8, 0][..]) {
        return None;
    }
    let ip = frame.get(14..)?;
    let header_len = usize::from(ip.first()? & 0x0f) * 4;
    if ip.get(9) != Some(&17) {
        return None;
    }
    let addr = |at: usize| -> Option<Ipv4Addr> {
        Some(Ipv4Addr::from(
            <[u8; 4]>::try_from(ip.get(at..at + 4)?).ok()?,
        ))
    };
    let udp = ip.get(header_len..)?;
    let port = |at: usize| Some(u16::from_be_bytes([*udp.get(at)?, *udp.get(at + 1)?]));
    let udp_len = usize::from(port(4)?);
    Some(Udp {
        src: SocketAddrV4::new(addr(12)?, port(0)?),
        dst: SocketAddrV4::new(addr(16)?, port(2)?),
        payload: udp.get(8..udp_len)?.to_vec(),
    })
}

/// An Ethernet frame carrying an IPv4 UDP datagram (UDP checksum 0: none).
fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = u16::try_from(8 + payload.len()).unwrap();
    let total_len = 20 + udp_len;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total_len.to_be_bytes());
    ip.extend(src.ip().octets());
    ip.extend(dst.ip().octets());
    let mut sum: u32 = ip
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let checksum = !u16::try_from(sum).unwrap();
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());

    let mut frame = Vec::new();
    frame.extend(dst_mac);
    frame.extend(src_mac);
    frame.extend([8, 0]);
    frame.extend(ip);
    frame.extend(src.port().to_be_bytes());
    frame.extend(dst.port().to_be_bytes());
    frame.extend(udp_len.to_be_bytes());
    frame.extend([0, 0]);
    frame.extend(payload);
    frame
}

fn parse_mac(text: &str) -> [u8; 6] {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}
