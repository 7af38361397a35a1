//! The lease engine against real dnsmasq, Kea and ISC dhcpd in lab namespaces, driven through
//! `dhcpmanager-operator lease` (the diagnostic command runs exactly the agent's engine) and, for
//! many addresses at once, through the lease manager in-process.
//!
//! Protocol waits are shortened with `--time-scale` (every wait the client makes, including its
//! view of T1/T2/expiry, divided by the factor); the servers run real 60-120 s leases.

use std::net::Ipv4Addr;
use std::process::Output;
use std::time::Duration;

use dhcpmanager_engine::net::links::{DEFAULT_LINK_GROUP, DEFAULT_RETIRED_LINK_GROUP, link_name};
use dhcpmanager_tests::binaries;
use dhcpmanager_tests::bootp::MessageType;
use dhcpmanager_tests::lab::{Lab, SERVER_ADDR_1, SERVER_ADDR_2, Server, ServerOpts, active_lease};
use dhcpmanager_tests::process::JsonLinesProcess;
use serde_json::Value;

/// Generous safety net for one protocol step (never a performance assertion).
const STEP: Duration = Duration::from_secs(40);

fn lab_with(server: Server, opts: ServerOpts) -> Lab {
    let lab = Lab::up().expect("lab up");
    lab.start(server, opts).expect("server start");
    lab
}

fn lease_cmd(lab: &Lab, args: &[&str]) -> std::process::Command {
    let mut cmd = lab.run_in_agent(binaries::operator());
    cmd.arg("lease").args(["--parent", lab.parent()]).args(args);
    cmd
}

fn run(lab: &Lab, args: &[&str]) -> Output {
    lease_cmd(lab, args)
        .output()
        .expect("run dhcpmanager-operator lease")
}

fn hold(lab: &Lab, args: &[&str]) -> JsonLinesProcess {
    let mut cmd = lease_cmd(lab, args);
    cmd.arg("--hold");
    JsonLinesProcess::spawn(cmd).expect("spawn lease --hold")
}

fn event_is(value: &Value, name: &str) -> bool {
    value["event"] == name
}

fn bound(value: &Value, renewal: bool) -> bool {
    event_is(value, "bound") && value["renewal"] == renewal
}

fn ip_of(value: &Value) -> Ipv4Addr {
    value["record"]["ip"]
        .as_str()
        .expect("record.ip")
        .parse()
        .expect("an IPv4")
}

/// Our links left in the agent namespace: those in our link group and retired ones not yet
/// deleted.
fn our_links(lab: &Lab) -> String {
    [DEFAULT_LINK_GROUP, DEFAULT_RETIRED_LINK_GROUP]
        .iter()
        .map(|group| {
            let out = std::process::Command::new("ip")
                .args([
                    "-n",
                    &lab.agent_ns(),
                    "-o",
                    "link",
                    "show",
                    "group",
                    &group.to_string(),
                ])
                .output()
                .expect("ip link");
            assert!(out.status.success(), "{out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect()
}

fn stable_client_id(mac: &str) -> String {
    let hex = mac.replace(':', "");
    format!("ff{}00030001{hex}", &hex[4..])
}

fn in_lab_subnet(ip: Ipv4Addr) -> bool {
    ip.octets()[..3] == [10, 77, 0]
}

// --- acquire, record, release -------------------------------------------------------------

fn acquire_hold_release(server: Server) {
    let lab = lab_with(server, ServerOpts::default());
    let mac = "02:aa:00:00:00:01";
    let state = lab.dir().join("lease.json");
    let state = state.to_str().unwrap();
    let mut held = hold(
        &lab,
        &["--mac", mac, "--service", "shop/web", "--state", state],
    );
    let first = held.wait_for("first bound", STEP, |v| bound(v, false));
    let ip = ip_of(&first);
    assert!(in_lab_subnet(ip), "{ip}");
    assert_eq!(first["record"]["serverId"], SERVER_ADDR_1.to_string());

    let leases = lab.wait_for_leases(server, "the server records the lease", STEP, |l| {
        active_lease(l, ip).is_some()
    });
    let recorded = active_lease(&leases, ip).expect("the server holds the lease");
    assert_eq!(recorded.mac.as_deref(), Some(mac));
    if server == Server::Dnsmasq {
        // dnsmasq keeps only the first label in its lease file (the rest is its own domain's
        // business); its log shows the whole option 12 it received.
        assert_eq!(recorded.hostname.as_deref(), Some("web"));
        let log = std::fs::read_to_string(lab.dir().join("dnsmasq-1/log")).unwrap_or_default();
        assert!(log.contains("client provides name: web.shop"), "{log}");
    } else {
        assert_eq!(
            recorded.hostname.as_deref(),
            Some("web.shop"),
            "hostname rule ns/name -> name.ns"
        );
    }
    assert_eq!(
        recorded.client_id.as_deref(),
        Some(stable_client_id(mac).as_str()),
        "RFC 4361 client id"
    );

    // SIGTERM keeps the lease (no RELEASE) ...
    assert!(held.signal_and_wait(libc::SIGTERM).success());
    assert!(
        active_lease(&lab.leases(server).unwrap(), ip).is_some(),
        "SIGTERM must not release"
    );
    assert_eq!(our_links(&lab), "", "the link goes with the process");
    // ... and --release gives it back.
    let out = run(&lab, &["--release", "--state", state]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.wait_for_leases(server, &format!("{ip} free"), STEP, |l| {
        active_lease(l, ip).is_none()
    });
    assert!(
        !std::path::Path::new(state).exists(),
        "the state file is removed"
    );
    assert_eq!(our_links(&lab), "");
}

#[test]
fn dnsmasq_acquire_hold_release() {
    acquire_hold_release(Server::Dnsmasq)
}
#[test]
fn kea_acquire_hold_release() {
    acquire_hold_release(Server::Kea)
}
#[test]
fn dhcpd_acquire_hold_release() {
    acquire_hold_release(Server::Dhcpd)
}

fn one_shot_with_mac_client_id(server: Server) {
    let lab = lab_with(server, ServerOpts::default());
    let mac = "02:aa:00:00:00:02";
    let out = run(
        &lab,
        &[
            "--mac",
            mac,
            "--hostname",
            "probe-host",
            "--client-id",
            "mac",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lease: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let ip: Ipv4Addr = lease["ip"].as_str().unwrap().parse().unwrap();
    assert!(in_lab_subnet(ip));
    assert_eq!(lease["mac"], mac);
    assert_eq!(lease["server"], SERVER_ADDR_1.to_string());
    assert!(
        lease["expires"]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .is_ok()
    );
    assert_eq!(lease["clientId"], format!("01{}", mac.replace(':', "")));
    // The default mode releases before it exits.
    lab.wait_for_leases(server, "released after printing", STEP, |l| {
        active_lease(l, ip).is_none()
    });
    let all = lab.leases(server).unwrap();
    if let Some(entry) = all.iter().find(|l| l.ip == ip) {
        assert_eq!(
            entry.client_id.as_deref(),
            Some(format!("01{}", mac.replace(':', "")).as_str())
        );
        assert_eq!(
            entry.hostname.as_deref().unwrap_or("probe-host"),
            "probe-host"
        );
    }
    assert_eq!(our_links(&lab), "");
}

#[test]
fn dnsmasq_one_shot_mac_client_id() {
    one_shot_with_mac_client_id(Server::Dnsmasq)
}
#[test]
fn kea_one_shot_mac_client_id() {
    one_shot_with_mac_client_id(Server::Kea)
}
#[test]
fn dhcpd_one_shot_mac_client_id() {
    one_shot_with_mac_client_id(Server::Dhcpd)
}

// --- renewals, both assign modes ----------------------------------------------------------

fn renews(server: Server, assign: bool) {
    let lab = lab_with(server, ServerOpts::default());
    let mac = if assign {
        "02:aa:00:00:01:01"
    } else {
        "02:aa:00:00:01:02"
    };
    let mut args = vec!["--mac", mac, "--time-scale", "10"];
    if assign {
        args.push("--assign");
    }
    let mut held = hold(&lab, &args);
    let first = held.wait_for("first bound", STEP, |v| bound(v, false));
    let ip = ip_of(&first);
    let leases = lab.wait_for_leases(server, "the server records the lease", STEP, |l| {
        active_lease(l, ip).is_some()
    });
    let before = active_lease(&leases, ip).expect("active").expires;
    if assign {
        let iface = link_name(&format!("lease/{mac}"));
        let addrs = std::process::Command::new("ip")
            .args([
                "-n",
                &lab.agent_ns(),
                "-4",
                "-o",
                "addr",
                "show",
                "dev",
                &iface,
            ])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&addrs.stdout).contains(&format!("{ip}/24")),
            "--assign puts {ip}/24 on {iface}"
        );
    }
    // Two renewals: the second proves T1/T2 were recomputed from the first renewal's ACK.
    for n in 0..2 {
        let renewed = held.wait_for("a renewal", STEP, |v| bound(v, true));
        assert_eq!(ip_of(&renewed), ip, "renewal {n} keeps the address");
    }
    lab.wait_for_leases(
        server,
        &format!("the lease extended beyond {before}"),
        STEP,
        |l| active_lease(l, ip).is_some_and(|l| l.expires > before),
    );
    assert!(
        !held
            .seen
            .iter()
            .any(|v| event_is(v, "nak") || event_is(v, "expired")),
        "{:#?}",
        held.seen
    );
    held.signal_and_wait(libc::SIGTERM);
}

#[test]
fn dnsmasq_renews_unassigned() {
    renews(Server::Dnsmasq, false)
}
#[test]
fn dnsmasq_renews_assigned() {
    renews(Server::Dnsmasq, true)
}
#[test]
fn kea_renews_unassigned() {
    renews(Server::Kea, false)
}
#[test]
fn kea_renews_assigned() {
    renews(Server::Kea, true)
}
#[test]
fn dhcpd_renews_unassigned() {
    renews(Server::Dhcpd, false)
}
#[test]
fn dhcpd_renews_assigned() {
    renews(Server::Dhcpd, true)
}

// --- rebinding to a second server -----------------------------------------------------------

fn rebinds_to_second_server(server: Server) {
    let opts = ServerOpts {
        authoritative: true,
        ..ServerOpts::default()
    };
    let lab = lab_with(server, opts.clone());
    let mut held = hold(&lab, &["--mac", "02:aa:00:00:02:01", "--time-scale", "5"]);
    let first = held.wait_for("first bound", STEP, |v| bound(v, false));
    let ip = ip_of(&first);
    assert_eq!(first["record"]["serverId"], SERVER_ADDR_1.to_string());
    lab.stop_at(server, SERVER_ADDR_1).unwrap();
    lab.start(
        server,
        ServerOpts {
            addr: SERVER_ADDR_2,
            ..opts
        },
    )
    .unwrap();
    let rebound = held.wait_for("a lease from the second server", STEP, |v| {
        bound(v, true) && v["record"]["serverId"] == SERVER_ADDR_2.to_string()
    });
    assert_eq!(
        ip_of(&rebound),
        ip,
        "the second server confirms the same address"
    );
    assert!(
        held.seen
            .iter()
            .any(|v| event_is(v, "stateChanged") && v["to"] == "REBINDING")
            || held
                .seen
                .iter()
                .any(|v| event_is(v, "stateChanged") && v["to"] == "RENEWING"),
        "{:#?}",
        held.seen
    );
    assert!(!held.seen.iter().any(|v| event_is(v, "ipChanged")));
    held.signal_and_wait(libc::SIGTERM);
}

#[test]
fn dnsmasq_rebinds_to_second_server() {
    rebinds_to_second_server(Server::Dnsmasq)
}
#[test]
fn kea_rebinds_to_second_server() {
    rebinds_to_second_server(Server::Kea)
}
#[test]
fn dhcpd_rebinds_to_second_server() {
    rebinds_to_second_server(Server::Dhcpd)
}

// --- the server forgot the lease: NAK (or silence, then expiry) and a new address, reported ---------------------------------------------------

fn nak_then_new_lease(server: Server) {
    let opts = ServerOpts {
        authoritative: true,
        ..ServerOpts::default()
    };
    let lab = lab_with(server, opts.clone());
    let mut held = hold(&lab, &["--mac", "02:aa:00:00:03:01", "--time-scale", "5"]);
    let old = ip_of(&held.wait_for("first bound", STEP, |v| bound(v, false)));
    // The server comes back with an empty database and a pool that no longer has the address.
    lab.stop(server).unwrap();
    lab.start(
        server,
        ServerOpts {
            range: (Ipv4Addr::new(10, 77, 0, 100), Ipv4Addr::new(10, 77, 0, 200)),
            ..opts
        },
    )
    .unwrap();
    let changed = held.wait_for("the IP change report", STEP, |v| event_is(v, "ipChanged"));
    if server == Server::Dhcpd {
        // dhcpd has no record of the client any more and, as RFC 2131 4.3.2 asks, stays silent
        // to the INIT-REBOOT-form renewal: the lease runs out and a new one is found.
        assert!(
            held.seen.iter().any(|v| event_is(v, "expired")),
            "{:#?}",
            held.seen
        );
    } else {
        assert!(
            held.seen.iter().any(|v| event_is(v, "nak")),
            "{:#?}",
            held.seen
        );
    }
    assert_eq!(changed["old"], old.to_string());
    let new: Ipv4Addr = changed["new"].as_str().unwrap().parse().unwrap();
    assert!((100..=200).contains(&new.octets()[3]), "{new}");
    let rebound = held.wait_for("bound again", STEP, |v| event_is(v, "bound"));
    assert_eq!(ip_of(&rebound), new);
    held.signal_and_wait(libc::SIGTERM);
}

#[test]
fn dnsmasq_nak_then_new_lease() {
    nak_then_new_lease(Server::Dnsmasq)
}
#[test]
fn kea_nak_then_new_lease() {
    nak_then_new_lease(Server::Kea)
}
#[test]
fn dhcpd_nak_then_new_lease() {
    nak_then_new_lease(Server::Dhcpd)
}

// --- restart from the persisted record: same IP, no DISCOVER on the wire ----------------------

fn restart_resumes_without_discover(server: Server) {
    let lab = lab_with(server, ServerOpts::default());
    let mac = "02:aa:00:00:04:01";
    let state = lab.dir().join("restart.json");
    let state = state.to_str().unwrap();
    let args = ["--mac", mac, "--state", state];
    let mut first = hold(&lab, &args);
    let ip = ip_of(&first.wait_for("first bound", STEP, |v| bound(v, false)));
    assert!(first.signal_and_wait(libc::SIGTERM).success());

    let capture = lab.capture(lab.parent()).unwrap();
    let mut second = hold(&lab, &args);
    let resumed = second.wait_for("the resumed lease", STEP, |v| event_is(v, "bound"));
    assert_eq!(ip_of(&resumed), ip, "same IP after the restart");
    second.signal_and_wait(libc::SIGTERM);
    let frames = capture.stop().unwrap();
    let chaddr: [u8; 6] = mac
        .parse::<dhcpmanager_engine::dhcp::MacAddr>()
        .unwrap()
        .octets();
    let ours: Vec<_> = frames
        .iter()
        .filter(|f| f.dhcp.op == 1 && f.dhcp.chaddr == chaddr)
        .collect();
    assert!(
        ours.iter()
            .any(|f| f.message_type() == Some(MessageType::Request)
                && f.dhcp.requested_ip == Some(ip)),
        "an INIT-REBOOT REQUEST for {ip} was sent: {ours:#?}"
    );
    assert!(
        !ours
            .iter()
            .any(|f| f.message_type() == Some(MessageType::Discover)),
        "no DISCOVER after a restart with a valid record: {ours:#?}"
    );
    let out = run(&lab, &["--release", "--state", state]);
    assert!(out.status.success());
}

#[test]
fn dnsmasq_restart_resumes_without_discover() {
    restart_resumes_without_discover(Server::Dnsmasq)
}
#[test]
fn kea_restart_resumes_without_discover() {
    restart_resumes_without_discover(Server::Kea)
}
#[test]
fn dhcpd_restart_resumes_without_discover() {
    restart_resumes_without_discover(Server::Dhcpd)
}

// --- no server ------------------------------------------------------------------------------

#[test]
fn no_server_is_a_clear_error_and_leaves_nothing() {
    let lab = Lab::up().unwrap();
    let out = run(
        &lab,
        &[
            "--mac",
            "02:aa:00:00:05:01",
            "--timeout",
            "3s",
            "--time-scale",
            "4",
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no lease after 3s"), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(our_links(&lab), "");
}

#[test]
fn bad_mac_is_refused_before_anything_happens() {
    let lab = Lab::up().unwrap();
    let out = run(&lab, &["--mac", "02:aa:00:00:05"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("02:aa:00:00:05"));
    assert_eq!(our_links(&lab), "");
}

// --- many addresses at once through the manager ---------------------------------------------

fn fifty_at_once(server: Server) {
    use dhcpmanager_engine::dhcp::{ClientConfig, MacAddr};
    use dhcpmanager_engine::manager::{AddressSpec, LeaseManager, ManagerConfig, wait_bound};
    use std::sync::Arc;

    let lab = lab_with(server, ServerOpts::default());
    let parent = lab.parent().to_string();
    let ips = dhcpmanager_tests::netns::in_netns(&lab.agent_ns(), move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let manager = LeaseManager::new(
                dhcpmanager_engine::instance::InstanceId::derived("test", "fifty"),
                ManagerConfig::default(),
                Arc::new(|_: &str, _: Option<&_>| {}),
            )
            .unwrap();
            let mut waiting = Vec::new();
            for n in 0..50u8 {
                let mac = MacAddr([0x02, 0xbb, 0, 0, 0, n]);
                let mut client = ClientConfig::new(mac);
                client.hostname = Some(format!("svc{n}.default"));
                let spec = AddressSpec {
                    key: format!("default/svc{n}"),
                    parent: parent.clone(),
                    client,
                };
                waiting.push(manager.start(spec, None).await.unwrap());
            }
            let mut ips = Vec::new();
            for mut status in waiting {
                ips.push(wait_bound(&mut status, STEP).await.unwrap().ip);
            }
            manager.stop_all().await.unwrap();
            ips
        })
    })
    .unwrap();
    let distinct: std::collections::BTreeSet<_> = ips.iter().collect();
    assert_eq!(distinct.len(), 50, "50 distinct addresses: {ips:?}");
    let active = lab
        .leases(server)
        .unwrap()
        .into_iter()
        .filter(|l| l.state == "active")
        .count();
    assert!(
        active >= 50,
        "the server holds the 50 leases ({active} active)"
    );
    assert_eq!(our_links(&lab), "", "stop_all removed every link");
}

#[test]
fn dnsmasq_fifty_at_once() {
    fifty_at_once(Server::Dnsmasq)
}
#[test]
fn kea_fifty_at_once() {
    fifty_at_once(Server::Kea)
}
#[test]
fn dhcpd_fifty_at_once() {
    fifty_at_once(Server::Dhcpd)
}
