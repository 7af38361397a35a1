//! The engine on a segment with a hostile host: a forged DHCP server at 10.77.0.2
//! (`dhcpmanager_tests::forger`) answers our client's broadcasts with crafted replies while the
//! real server (Kea at 10.77.0.1) is paused with SIGSTOP. Paused, not stopped: the requests wait
//! in Kea's socket and are answered when it continues, so the test decides which reply arrives
//! first without depending on timing.
//!
//! Kea grants 1200 s leases with T1 = 100 s and T2 = 200 s; `--time-scale 20` makes the client
//! reach RENEWING after 5 s and REBINDING after 10 s.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcpmanager_engine::dhcp::MacAddr;
use dhcpmanager_tests::binaries;
use dhcpmanager_tests::forger::{FORGER_ADDR, ForgedServer, kind_of, reply_to};
use dhcpmanager_tests::lab::{Lab, SERVER_ADDR_1, Server, ServerOpts, active_lease};
use dhcpmanager_tests::process::JsonLinesProcess;
use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use serde_json::Value;

/// Generous safety net for one protocol step (never a performance assertion).
const STEP: Duration = Duration::from_secs(40);
/// An address of the lab's pool other than the one held.
const OTHER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 99);

fn kea_lab() -> Lab {
    let lab = Lab::up().expect("lab up");
    let opts = ServerOpts {
        lease: 1200,
        t1: Some(100),
        t2: Some(200),
        ..ServerOpts::default()
    };
    lab.start(Server::Kea, opts).expect("kea start");
    lab
}

fn hold(lab: &Lab, mac: &str, state: &str, scale: &str) -> JsonLinesProcess {
    let mut cmd = lab.run_in_agent(binaries::operator());
    cmd.args(["lease", "--parent", lab.parent(), "--hold"])
        .args(["--mac", mac, "--state", state, "--time-scale", scale]);
    JsonLinesProcess::spawn(cmd).expect("spawn lease --hold")
}

fn is_event(value: &Value, name: &str) -> bool {
    value["event"] == name
}

fn bound(value: &Value, renewal: bool) -> bool {
    is_event(value, "bound") && value["renewal"] == renewal
}

fn entered(value: &Value, state: &str) -> bool {
    is_event(value, "stateChanged") && value["to"] == state
}

/// A refusal of a well-formed reply (another server, another or an unusable address).
fn refused(value: &Value) -> bool {
    is_event(value, "rejected")
        && matches!(
            value["reason"]["reason"].as_str(),
            Some("wrongServer" | "wrongAddress" | "unusableAddress")
        )
}

fn ip_of(value: &Value) -> Ipv4Addr {
    value["record"]["ip"]
        .as_str()
        .and_then(|ip| ip.parse().ok())
        .expect("record.ip")
}

fn octets(mac: &str) -> [u8; 6] {
    mac.parse::<MacAddr>().expect("a MAC").octets()
}

/// Kea at 10.77.0.1 stopped with SIGSTOP until [`Paused::resume`] (or drop).
struct Paused {
    pid: libc::pid_t,
    stopped: bool,
}

impl Paused {
    fn kea(lab: &Lab) -> Paused {
        let file = lab.dir().join("kea-1/pid");
        let pid = std::fs::read_to_string(&file)
            .expect("kea's pid file")
            .trim()
            .parse()
            .expect("a pid");
        // SAFETY: kill() on the pid of a server this test's lab started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        Paused { pid, stopped: true }
    }

    fn resume(&mut self) {
        if std::mem::replace(&mut self.stopped, false) {
            // SAFETY: as above.
            unsafe { libc::kill(self.pid, libc::SIGCONT) };
        }
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        self.resume();
    }
}

/// The attack, twice per REQUEST: an ACK moving the address onto the forger's own IP
/// (naming itself), and an ACK for another pool address pretending to be the real server.
fn forge_acks(request: &Message) -> Vec<Message> {
    if kind_of(request) != Some(MessageType::Request) {
        return Vec::new();
    }
    let moved = reply_to(request, MessageType::Ack, FORGER_ADDR, FORGER_ADDR);
    let mut spoofed = reply_to(request, MessageType::Ack, SERVER_ADDR_1, OTHER_IP);
    spoofed
        .opts_mut()
        .insert(DhcpOption::Router(vec![SERVER_ADDR_1]));
    vec![moved, spoofed]
}

fn forge_nak(request: &Message) -> Vec<Message> {
    match kind_of(request) {
        Some(MessageType::Request) => vec![reply_to(
            request,
            MessageType::Nak,
            FORGER_ADDR,
            Ipv4Addr::UNSPECIFIED,
        )],
        _ => Vec::new(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Renewing,
    Rebinding,
    InitReboot,
}

/// Binds from Kea, pauses Kea, starts the forger and brings the client into `phase`; returns the
/// running holder, the held IP, Kea's expiry of it and the pause guard.
fn held_address_under_attack(
    lab: &Lab,
    mac: &str,
    phase: Phase,
    script: fn(&Message) -> Vec<Message>,
) -> (JsonLinesProcess, Ipv4Addr, u64, Paused, ForgedServer) {
    let state = lab.dir().join("lease.json");
    let state = state.to_str().unwrap();
    let mut held = hold(lab, mac, state, "20");
    let first = held.wait_for("first bound", STEP, |v| bound(v, false));
    let bound_at = Instant::now();
    let ip = ip_of(&first);
    assert_eq!(first["record"]["serverId"], SERVER_ADDR_1.to_string());
    let leases = lab.wait_for_leases(Server::Kea, "Kea records the lease", STEP, |l| {
        active_lease(l, ip).is_some()
    });
    let before = active_lease(&leases, ip).expect("active").expires;
    let kea = Paused::kea(lab);
    let forger = ForgedServer::start(lab, octets(mac), Box::new(script)).expect("forger");
    match phase {
        Phase::Renewing => {
            held.wait_for("RENEWING", STEP, |v| entered(v, "RENEWING"));
        }
        Phase::Rebinding => {
            held.wait_for("REBINDING", STEP, |v| entered(v, "REBINDING"));
        }
        Phase::InitReboot => {
            assert!(held.signal_and_wait(libc::SIGTERM).success());
            // Real time: INIT-REBOOT retransmits after 4 s, long after Kea continues.
            held = hold(lab, mac, state, "1");
            held.wait_for("INIT-REBOOT", STEP, |v| entered(v, "REBOOTING"));
        }
    }
    // Kea's lease file counts in whole seconds: the renewal must come in a later second than
    // the first lease to show as an extension. Not a timing assumption of the code under test.
    std::thread::sleep(Duration::from_millis(1100).saturating_sub(bound_at.elapsed()));
    (held, ip, before, kea, forger)
}

/// After the forgeries were refused: Kea continues and renews the same address, and nothing
/// ever moved it.
fn real_server_renews_the_same_address(
    lab: &Lab,
    held: &mut JsonLinesProcess,
    ip: Ipv4Addr,
    before: u64,
    kea: &mut Paused,
) {
    kea.resume();
    let renewed = held.wait_for("the real renewal", STEP, |v| bound(v, true));
    assert_eq!(ip_of(&renewed), ip);
    assert_eq!(renewed["record"]["serverId"], SERVER_ADDR_1.to_string());
    let moved: Vec<_> = held
        .seen
        .iter()
        .filter(|v| {
            is_event(v, "ipChanged")
                || is_event(v, "nak")
                || (is_event(v, "bound") && ip_of(v) != ip)
        })
        .collect();
    assert!(moved.is_empty(), "the address moved: {moved:#?}");
    lab.wait_for_leases(
        Server::Kea,
        &format!("Kea extends {ip} beyond {before}"),
        STEP,
        |l| active_lease(l, ip).is_some_and(|l| l.expires > before),
    );
    assert!(held.signal_and_wait(libc::SIGTERM).success());
}

fn forged_acks_are_ignored(phase: Phase, mac: &str) {
    let lab = kea_lab();
    let (mut held, ip, before, mut kea, _forger) =
        held_address_under_attack(&lab, mac, phase, forge_acks);
    let first = held.wait_for("the first forgery refused", STEP, refused);
    let second = held.wait_for("the second forgery refused", STEP, refused);
    let reasons = [&first, &second].map(|v| v["reason"]["reason"].as_str().unwrap().to_string());
    // RENEWING talks to the lease's server only: the forger naming itself is the wrong server.
    // REBINDING and INIT-REBOOT take any server, but only for the address held.
    let expected = match phase {
        Phase::Renewing => ["wrongServer", "wrongAddress"],
        Phase::Rebinding | Phase::InitReboot => ["wrongAddress", "wrongAddress"],
    };
    assert_eq!(reasons, expected, "{phase:?}: {:#?}", held.seen);
    real_server_renews_the_same_address(&lab, &mut held, ip, before, &mut kea);
}

#[test]
fn kea_forged_acks_while_renewing_are_ignored() {
    forged_acks_are_ignored(Phase::Renewing, "02:aa:00:00:0c:01")
}

#[test]
fn kea_forged_acks_while_rebinding_are_ignored() {
    forged_acks_are_ignored(Phase::Rebinding, "02:aa:00:00:0c:02")
}

#[test]
fn kea_forged_acks_at_init_reboot_are_ignored() {
    forged_acks_are_ignored(Phase::InitReboot, "02:aa:00:00:0c:03")
}

fn foreign_nak_is_ignored(phase: Phase, mac: &str) {
    let lab = kea_lab();
    let (mut held, ip, before, mut kea, _forger) =
        held_address_under_attack(&lab, mac, phase, forge_nak);
    let refusal = held.wait_for("the foreign NAK refused", STEP, refused);
    assert_eq!(refusal["reason"]["reason"], "wrongServer", "{phase:?}");
    assert_eq!(refusal["reason"]["got"], FORGER_ADDR.to_string());
    real_server_renews_the_same_address(&lab, &mut held, ip, before, &mut kea);
}

#[test]
fn kea_foreign_nak_while_renewing_is_ignored() {
    foreign_nak_is_ignored(Phase::Renewing, "02:aa:00:00:0c:04")
}

#[test]
fn kea_foreign_nak_at_init_reboot_is_ignored() {
    foreign_nak_is_ignored(Phase::InitReboot, "02:aa:00:00:0c:05")
}

// --- offers of addresses no host may use ----------------------------------------------------

/// Each kind of unusable address as an OFFER from the forger, with the reason label it must be
/// counted under.
fn bad_offers(request: &Message) -> Vec<(Message, &'static str)> {
    let offer =
        |ip: [u8; 4]| reply_to(request, MessageType::Offer, FORGER_ADDR, Ipv4Addr::from(ip));
    let with = |mut msg: Message, option: DhcpOption| {
        msg.opts_mut().insert(option);
        msg
    };
    let without_router = |mut msg: Message| {
        msg.opts_mut().remove(OptionCode::Router);
        msg
    };
    vec![
        (offer([10, 77, 0, 0]), "network_address"),
        (offer([10, 77, 0, 255]), "broadcast_address"),
        (offer([10, 77, 0, 2]), "server_address"),
        (
            with(
                offer([10, 77, 0, 1]),
                DhcpOption::Router(vec![SERVER_ADDR_1]),
            ),
            "router_address",
        ),
        (offer([0, 0, 0, 7]), "this_network"),
        (offer([127, 0, 0, 5]), "loopback"),
        (offer([224, 0, 0, 5]), "multicast_or_reserved"),
        (offer([240, 0, 0, 5]), "multicast_or_reserved"),
        (offer([255, 255, 255, 255]), "multicast_or_reserved"),
        (
            with(
                offer([10, 77, 0, 50]),
                DhcpOption::SubnetMask(Ipv4Addr::UNSPECIFIED),
            ),
            "prefix_zero",
        ),
        (
            without_router(with(
                offer([10, 77, 0, 50]),
                DhcpOption::SubnetMask(Ipv4Addr::BROADCAST),
            )),
            "host_route_without_router",
        ),
    ]
}

const GOOD_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 60);

#[test]
fn unusable_offers_are_not_bound_and_counted_by_reason() {
    use dhcpmanager_engine::dhcp::ClientConfig;
    use dhcpmanager_engine::manager::{AddressSpec, LeaseManager, ManagerConfig, wait_bound};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    let lab = Lab::up().expect("lab up");
    let mac = MacAddr([0x02, 0xaa, 0, 0, 0x0c, 0x10]);
    let expected: BTreeMap<&str, u64> =
        bad_offers(&Message::default())
            .iter()
            .fold(BTreeMap::new(), |mut counts, (_, label)| {
                *counts.entry(*label).or_default() += 1;
                counts
            });
    // The first DISCOVER gets every bad offer; the third and later a good offer, so the test also
    // shows the client carries on normally once someone offers a usable address. (Not the
    // second: a loaded machine may still be delivering the bad ones when it goes out, and an
    // offer arriving after the client took the good one is refused for another reason.)
    let mut discovers = 0;
    let script = move |request: &Message| match kind_of(request) {
        Some(MessageType::Discover) => {
            discovers += 1;
            match discovers {
                1 => bad_offers(request)
                    .into_iter()
                    .map(|(msg, _)| msg)
                    .collect(),
                2 => Vec::new(),
                _ => vec![reply_to(request, MessageType::Offer, FORGER_ADDR, GOOD_IP)],
            }
        }
        Some(MessageType::Request) => {
            vec![reply_to(request, MessageType::Ack, FORGER_ADDR, GOOD_IP)]
        }
        _ => Vec::new(),
    };
    let forger = ForgedServer::start(&lab, mac.octets(), Box::new(script)).expect("forger");
    let parent = lab.parent().to_string();
    let (record, rejections, bound_ips) =
        dhcpmanager_tests::netns::in_netns(&lab.agent_ns(), move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let manager = LeaseManager::new(
                    dhcpmanager_engine::instance::InstanceId::derived("test", "hostile"),
                    ManagerConfig::default(),
                    Arc::new(|_: &str, _: Option<&_>| {}),
                )
                .unwrap();
                let mut events = manager.subscribe();
                let mut client = ClientConfig::new(mac);
                client.timing.scale = 20.0;
                let spec = AddressSpec {
                    key: "default/hostile".into(),
                    parent,
                    client,
                };
                let mut status = manager.start(spec, None).await.unwrap();
                let record = wait_bound(&mut status, STEP).await.unwrap();
                let rejections = manager.live_counters().rejections();
                manager.stop_all().await.unwrap();
                let mut bound_ips = Vec::new();
                while let Ok(keyed) = events.try_recv() {
                    if let dhcpmanager_engine::dhcp::ClientEvent::Bound { record, .. } =
                        &keyed.event
                    {
                        bound_ips.push(record.ip);
                    }
                }
                (record, rejections, bound_ips)
            })
        })
        .unwrap();
    drop(forger);
    assert_eq!(record.ip, GOOD_IP);
    assert_eq!(
        bound_ips,
        vec![GOOD_IP],
        "no unusable address was ever bound"
    );
    for (label, count) in &expected {
        assert_eq!(
            rejections.get(label),
            Some(count),
            "{label} counted: {rejections:?}"
        );
    }
}
