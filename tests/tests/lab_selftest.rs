//! Proves the DHCP lab works: each real server leases to busybox udhcpc on a macvlan, its lease
//! database and a capture show what was sent, two servers run side by side, a second server
//! takes over a lease the first one granted, and `down` leaves nothing behind.
//! Needs root and the Debian packages from scripts/install-deps.sh.

use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dhcpmanager_tests::bootp::MessageType;
use dhcpmanager_tests::lab::{
    DNSMASQ_MIN_LEASE_SECS, Lab, SERVER_ADDR_1, SERVER_ADDR_2, Server, ServerOpts,
};
use dhcpmanager_tests::probe;
use dhcpmanager_tests::udhcpc::Udhcpc;

const MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x01];
const MAC_TEXT: &str = "02:77:00:00:00:01";
/// What busybox udhcpc sends as option 61 by default: type 1 (Ethernet) + MAC.
const CLIENT_ID_HEX: &str = "01027700000001";
/// Safety net for one exchange with a server that should answer at once.
const REPLY_WAIT: Duration = Duration::from_secs(10);

fn in_lab_subnet(ip: Ipv4Addr) -> bool {
    ip.octets()[..3] == [10, 77, 0]
}

/// The named network namespaces, as `ip netns list` finds them (read directly: `ip netns list`
/// fails while other tests delete their namespaces).
fn namespaces() -> String {
    let entries = std::fs::read_dir("/run/netns").expect("/run/netns");
    entries
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned() + "\n")
        .collect()
}

fn process_exists(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the pid exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn server_leases_to_udhcpc(server: Server) {
    let lab = Lab::up().expect("lab up");
    lab.add_macvlan("mv0", MAC_TEXT).expect("macvlan");
    let lease = if server == Server::Dnsmasq {
        DNSMASQ_MIN_LEASE_SECS
    } else {
        60
    };
    lab.start(
        server,
        ServerOpts {
            lease,
            ..Default::default()
        },
    )
    .expect("server starts");

    let capture = lab.capture(lab.parent()).expect("capture starts");
    let hostname = format!("selftest-{}", server.name());
    let got = Udhcpc::new("mv0")
        .hostname(&hostname)
        .run(&lab)
        .expect("udhcpc gets a lease");
    let frames = capture.stop().expect("capture readable");

    assert!(in_lab_subnet(got.ip), "{got:?}");
    assert_eq!(got.lease_secs, Some(lease), "{got:?}");
    assert_eq!(got.server, Some(SERVER_ADDR_1), "{got:?}");

    let ours: Vec<MessageType> = frames
        .iter()
        .filter(|f| f.dhcp.chaddr == MAC)
        .filter_map(|f| f.message_type())
        .collect();
    // in this order, with room for retransmissions when the machine is busy
    let dora = [
        MessageType::Discover,
        MessageType::Offer,
        MessageType::Request,
        MessageType::Ack,
    ];
    let mut on_wire = ours.iter();
    assert!(
        dora.iter().all(|t| on_wire.any(|seen| seen == t)),
        "DORA on the wire: {ours:?}"
    );
    let ack = frames
        .iter()
        .find(|f| f.message_type() == Some(MessageType::Ack))
        .unwrap();
    assert_eq!(ack.dhcp.yiaddr, got.ip);

    let leases = lab.leases(server).expect("lease database");
    let entry = leases
        .iter()
        .find(|l| l.ip == got.ip)
        .unwrap_or_else(|| panic!("{:?} not in {leases:?}", got.ip));
    assert_eq!(entry.mac.as_deref(), Some(MAC_TEXT));
    assert_eq!(entry.hostname.as_deref(), Some(hostname.as_str()));
    assert_eq!(entry.client_id.as_deref(), Some(CLIENT_ID_HEX));
    assert_eq!(entry.state, "active");
    assert!(entry.expires > unix_now(), "{entry:?}");

    let name = lab.name().to_string();
    let pids = lab.pids();
    assert!(!pids.is_empty(), "the server has a pid file");
    assert!(namespaces().contains(&format!("{name}-ag")));
    lab.down().expect("lab down");
    let left = namespaces();
    assert!(
        !left.contains(&format!("{name}-")),
        "namespaces left: {left}"
    );
    for pid in pids {
        assert!(!process_exists(pid), "pid {pid} still runs after down");
    }
}

#[test]
fn dnsmasq_leases_to_udhcpc() {
    server_leases_to_udhcpc(Server::Dnsmasq);
}

#[test]
fn kea_leases_to_udhcpc() {
    server_leases_to_udhcpc(Server::Kea);
}

#[test]
fn dhcpd_leases_to_udhcpc() {
    server_leases_to_udhcpc(Server::Dhcpd);
}

#[test]
fn a_panicking_test_still_takes_its_lab_down() {
    let mut seen = None;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::up().expect("lab up");
        lab.start(Server::Kea, ServerOpts::default()).expect("kea");
        let _capture = lab.capture(lab.parent()).expect("capture");
        seen = Some((lab.name().to_string(), lab.pids()));
        panic!("test failure inside the lab");
    }));
    assert!(outcome.is_err());
    let (name, pids) = seen.expect("lab was up");
    assert_eq!(pids.len(), 2, "kea and tcpdump");
    assert!(!namespaces().contains(&format!("{name}-")));
    for pid in pids {
        assert!(!process_exists(pid), "pid {pid} still runs");
    }
}

#[test]
fn two_servers_on_two_addresses_both_offer() {
    let lab = Lab::up().expect("lab up");
    lab.add_macvlan("mv0", MAC_TEXT).expect("macvlan");
    lab.start(Server::Kea, ServerOpts::default())
        .expect("kea on .1");
    lab.start(
        Server::Dhcpd,
        ServerOpts {
            addr: SERVER_ADDR_2,
            ..Default::default()
        },
    )
    .expect("dhcpd on .2");

    let has_both = |offers: &[dhcpmanager_tests::bootp::DhcpMessage]| {
        [SERVER_ADDR_1, SERVER_ADDR_2]
            .iter()
            .all(|a| offers.iter().any(|o| o.server_id == Some(*a)))
    };
    let offers = probe::collect_replies(
        &lab.agent_ns(),
        "mv0",
        &dhcpmanager_tests::bootp::discover(MAC, 0x5e1f_7e57),
        REPLY_WAIT,
        has_both,
    )
    .expect("probe");
    assert!(has_both(&offers), "offers: {offers:?}");
    assert!(
        offers
            .iter()
            .all(|o| o.message_type == Some(MessageType::Offer) && in_lab_subnet(o.yiaddr))
    );
}

/// How a second server answers a client whose lease came from another server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Ack,
    Nak,
    /// Nothing within [`SILENCE_WAIT`].
    Silent,
}

/// How long a server that ignores a request is given to prove it (a measurement, not a race:
/// the servers answer within milliseconds when they answer at all).
const SILENCE_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// REQUEST, broadcast flag, ciaddr 0, option 50, no server id.
    InitReboot,
    /// REQUEST, ciaddr = the IP (configured on the macvlan), no option 50, no server id.
    Rebinding,
}

/// The failover case: Kea on .1 grants a lease and goes away; a second server on .2 that serves
/// the same range never saw that lease. What does it answer when the client asks to keep it?
fn second_server_answer(second: Server, authoritative: bool, form: Form) -> Answer {
    let lab = Lab::up().expect("lab up");
    lab.add_macvlan("mv0", MAC_TEXT).expect("macvlan");
    lab.start(
        Server::Kea,
        ServerOpts {
            authoritative: true,
            ..Default::default()
        },
    )
    .expect("kea on .1");
    let first = Udhcpc::new("mv0").run(&lab).expect("lease from kea");
    lab.stop(Server::Kea).expect("kea stops");

    let lease = if second == Server::Dnsmasq {
        DNSMASQ_MIN_LEASE_SECS
    } else {
        60
    };
    let opts = ServerOpts {
        addr: SERVER_ADDR_2,
        authoritative,
        lease,
        ..Default::default()
    };
    lab.start(second, opts).expect("second server on .2");
    let request = match form {
        Form::InitReboot => probe::init_reboot_request(MAC, first.ip, 0x1b0_07ed),
        Form::Rebinding => {
            let status = lab
                .run_in_agent("ip")
                .args(["addr", "add", &format!("{}/24", first.ip), "dev", "mv0"])
                .status()
                .expect("ip addr add");
            assert!(status.success());
            probe::rebind_request(MAC, first.ip, 0x4eb1_4d00)
        }
    };
    let wait = if authoritative {
        REPLY_WAIT
    } else {
        SILENCE_WAIT
    };
    let Some(reply) = probe::exchange(&lab.agent_ns(), "mv0", &request, wait).expect("probe")
    else {
        return Answer::Silent;
    };
    assert_eq!(reply.server_id, Some(SERVER_ADDR_2), "{reply:?}");
    match reply.message_type {
        Some(MessageType::Ack) => {
            assert_eq!(reply.yiaddr, first.ip);
            let leases = lab.leases_at(second, SERVER_ADDR_2).expect("leases");
            assert!(
                leases
                    .iter()
                    .any(|l| l.ip == first.ip && l.mac.as_deref() == Some(MAC_TEXT)),
                "{leases:?}"
            );
            Answer::Ack
        }
        Some(MessageType::Nak) => Answer::Nak,
        other => panic!("unexpected reply {other:?}"),
    }
}

// Measured behaviour, kept true by these tests and tabled in tests/lab/README.md:
// (authoritative, form, answer) for each second server.

fn assert_second_server_answers(second: Server, expected: [(bool, Form, Answer); 4]) {
    let measured: Vec<_> = expected
        .iter()
        .map(|&(authoritative, form, _)| {
            (
                authoritative,
                form,
                second_server_answer(second, authoritative, form),
            )
        })
        .collect();
    assert_eq!(measured, expected, "{}", second.name());
}

#[test]
fn second_dnsmasq_answers_only_when_authoritative() {
    assert_second_server_answers(
        Server::Dnsmasq,
        [
            (false, Form::InitReboot, Answer::Silent),
            (false, Form::Rebinding, Answer::Silent),
            (true, Form::InitReboot, Answer::Ack),
            (true, Form::Rebinding, Answer::Ack),
        ],
    );
}

#[test]
fn second_kea_naks_init_reboot_but_acks_rebinding() {
    assert_second_server_answers(
        Server::Kea,
        [
            (false, Form::InitReboot, Answer::Silent),
            (false, Form::Rebinding, Answer::Ack),
            (true, Form::InitReboot, Answer::Nak),
            (true, Form::Rebinding, Answer::Ack),
        ],
    );
}

#[test]
fn second_dhcpd_acks_a_free_address_even_when_not_authoritative() {
    assert_second_server_answers(
        Server::Dhcpd,
        [
            (false, Form::InitReboot, Answer::Ack),
            (false, Form::Rebinding, Answer::Ack),
            (true, Form::InitReboot, Answer::Ack),
            (true, Form::Rebinding, Answer::Ack),
        ],
    );
}
