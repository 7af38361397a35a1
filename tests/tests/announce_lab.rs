//! Announcement with the lease's own MAC, in the lab (no Kubernetes): the engine leases an
//! address from Kea with the IP on its macvlan, on a "node" whose parent interface has an
//! address of its own in the subnet and Linux's default ARP settings (`arp_ignore=0`,
//! `arp_announce=0`: ARP flux). A client on the segment (the server's namespace) sees a
//! gratuitous ARP from the lease's MAC, only the lease's MAC answering its ARP request, and the
//! TCP replies of a server on the node carrying the lease's MAC as Ethernet source.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use dhcpmanager_engine::dhcp::{ClientConfig, MacAddr};
use dhcpmanager_engine::instance::InstanceId;
use dhcpmanager_engine::manager::{AddressSpec, LeaseManager, ManagerConfig, wait_bound};
use dhcpmanager_engine::net::NetNs;
use dhcpmanager_tests::arp_capture::{ArpCapture, announced};
use dhcpmanager_tests::lab::{Lab, SERVER_ADDR_1, Server, ServerOpts};
use dhcpmanager_tests::pcap::EthernetFrame;

const LEASE_MAC: &str = "02:cc:00:00:09:01";
const NODE_ADDRESS: &str = "10.77.0.5/24";
const PORT: u16 = 8080;

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mac_of(netns: &str, iface: &str) -> [u8; 6] {
    let out = run(&["ip", "-n", netns, "-o", "link", "show", iface]);
    let text = out.split("link/ether ").nth(1).unwrap();
    text.split_whitespace()
        .next()
        .unwrap()
        .parse::<MacAddr>()
        .unwrap()
        .octets()
}

/// A TCP server on the node (every address), answering each connection with one line.
fn serve_on_node(node: &NetNs) {
    let listener = node
        .run(|| TcpListener::bind(("0.0.0.0", PORT)))
        .unwrap()
        .expect("listen on the node");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nhello\n");
        }
    });
}

/// A node as it comes: an address of its own in the leased subnet, on the parent.
fn give_the_node_an_address(node: &str, parent: &str) {
    run(&["ip", "-n", node, "addr", "add", NODE_ADDRESS, "dev", parent]);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A manager of `owner` keeping its links in the node's namespace; persists nothing.
fn manager_on(runtime: &tokio::runtime::Runtime, node: &NetNs, owner: InstanceId) -> LeaseManager {
    runtime.block_on(async {
        LeaseManager::new(
            owner,
            ManagerConfig {
                netns: node.clone(),
                ..ManagerConfig::default()
            },
            Arc::new(|_, _| {}),
        )
        .unwrap()
    })
}

/// `shop/web` with its IP on its macvlan, as the agent holds a Service's address.
fn announced_address(parent: &str, mac: MacAddr) -> AddressSpec {
    let mut client = ClientConfig::new(mac);
    client.hostname = Some("web.shop".into());
    client.ip_assigned = true;
    AddressSpec {
        key: "shop/web".into(),
        parent: parent.into(),
        client,
    }
}

/// The body of `http://IP:PORT/` fetched from the client, which has forgotten every neighbour
/// first: its ARP request for the address goes to the whole segment.
fn curl_as_a_stranger(client: &str, ip: Ipv4Addr) -> String {
    let _ = Command::new("ip")
        .args(["-n", client, "neigh", "flush", "all"])
        .status();
    run(&[
        "ip",
        "netns",
        "exec",
        client,
        "curl",
        "-s",
        "--max-time",
        "10",
        &format!("http://{ip}:{PORT}/"),
    ])
}

/// Every IP reply from `ip` in the capture left with the lease's MAC, and no frame at all with
/// the parent's.
fn assert_replies_carry_only(
    frames: &[EthernetFrame],
    ip: Ipv4Addr,
    lease: [u8; 6],
    parent: [u8; 6],
) {
    let seen = announced(frames, ip);
    assert!(
        !seen.ip_packets_from.is_empty(),
        "no reply from {ip} captured"
    );
    assert!(
        seen.ip_packets_from.iter().all(|m| *m == Some(lease)),
        "a reply left with another MAC than the lease's (the parent is {parent:02x?}): {seen:02x?}"
    );
    assert!(
        !frames.iter().any(|f| f.src_mac == Some(parent)),
        "the parent's MAC was seen"
    );
}

/// Released: the address's `from` rule goes with it.
fn release(runtime: &tokio::runtime::Runtime, manager: &LeaseManager) {
    runtime.block_on(async {
        manager.release("shop/web").await.unwrap();
        manager.settle_links().await.unwrap();
    });
}

#[test]
fn only_the_lease_mac_answers_arp_and_carries_the_replies() {
    let lab = Lab::up().unwrap();
    lab.start(Server::Kea, ServerOpts::default()).unwrap();
    let node = lab.agent_ns();
    let client = lab.server_ns(SERVER_ADDR_1);
    let parent = lab.parent().to_string();
    // A node as it comes: Linux's ARP defaults, and an address of its own on the parent.
    run(&[
        "ip",
        "netns",
        "exec",
        &node,
        "sysctl",
        "-qw",
        "net.ipv4.conf.all.arp_ignore=0",
        "net.ipv4.conf.all.arp_announce=0",
        "net.ipv4.conf.default.arp_ignore=0",
        "net.ipv4.conf.default.arp_announce=0",
    ]);
    give_the_node_an_address(&node, &parent);
    let parent_mac = mac_of(&node, &parent);
    let lease_mac: MacAddr = LEASE_MAC.parse().unwrap();

    let capture = ArpCapture::start(&client, "lan", PORT, lab.dir().join("announce.pcap"));
    let runtime = runtime();
    let node_ns = NetNs::open(Path::new(&format!("/run/netns/{node}"))).unwrap();
    let manager = manager_on(&runtime, &node_ns, InstanceId::derived("test", "announce"));
    let leased = runtime.block_on(async {
        let mut status = manager
            .start(announced_address(&parent, lease_mac), None)
            .await
            .unwrap();
        let record = wait_bound(&mut status, Duration::from_secs(30))
            .await
            .unwrap();
        record.ip
    });
    let link = dhcpmanager_engine::net::link_name("shop/web");
    // What the agent set through rtnetlink, as the kernel reports it.
    for iface in [parent.as_str(), link.as_str()] {
        let sysctl = |knob: &str| {
            run(&[
                "ip",
                "netns",
                "exec",
                &node,
                "sysctl",
                "-n",
                &format!("net.ipv4.conf.{iface}.{knob}"),
            ])
            .trim()
            .to_string()
        };
        assert_eq!(
            (sysctl("arp_ignore"), sysctl("arp_announce")),
            ("1".into(), "2".into()),
            "{iface}"
        );
    }
    let rules = run(&["ip", "-n", &node, "rule", "show"]);
    assert!(rules.contains(&format!("from {leased} lookup")), "{rules}");

    serve_on_node(&node_ns);
    assert_eq!(curl_as_a_stranger(&client, leased), "hello\n");
    let frames = capture.stop();

    let seen = announced(&frames, leased);
    let lease = lease_mac.octets();
    assert!(
        !seen.gratuitous_from.is_empty(),
        "no gratuitous ARP for {leased}"
    );
    assert!(
        seen.gratuitous_from.iter().all(|m| *m == lease),
        "{seen:02x?}"
    );
    assert!(
        !seen.answered_by.is_empty(),
        "nobody answered ARP for {leased}"
    );
    assert!(
        seen.answered_by.iter().all(|m| *m == lease),
        "ARP for {leased} answered by another MAC (the parent is {parent_mac:02x?}): {seen:02x?}"
    );
    assert_replies_carry_only(&frames, leased, lease, parent_mac);

    release(&runtime, &manager);
    let rules = run(&["ip", "-n", &node, "rule", "show"]);
    assert!(
        !rules.contains(&format!("from {leased} lookup")),
        "rule left behind: {rules}"
    );
    drop(runtime);
    lab.down().unwrap();
}

/// A killed process cannot withdraw its `from` and `fwmark` rules (their tables go with the
/// links): the orphan sweep removes ours whose link is gone, and nothing else.
#[test]
fn the_orphan_sweep_removes_announcement_rules_of_links_that_are_gone_and_nothing_else() {
    use dhcpmanager_engine::net::announce::{MARK_RULE_PRIORITY, RULE_PRIORITY, TABLE_BASE};
    let lab = Lab::up().unwrap();
    let node = lab.agent_ns();
    let ifindex_of = |iface: &str| -> u32 {
        let out = run(&["ip", "-n", &node, "-o", "link", "show", iface]);
        out.split(':').next().unwrap().trim().parse().unwrap()
    };
    let live_table = TABLE_BASE | ifindex_of(lab.parent());
    let gone_table = TABLE_BASE | 0xfff0;
    let priority = RULE_PRIORITY.to_string();
    for (from, table, priority) in [
        ("10.77.0.99", gone_table.to_string(), priority.as_str()),
        ("10.77.0.98", live_table.to_string(), priority.as_str()),
        // Not ours: another table, or another priority.
        ("10.77.0.97", "100".to_string(), priority.as_str()),
        ("10.77.0.96", gone_table.to_string(), "1001"),
    ] {
        run(&[
            "ip", "-n", &node, "rule", "add", "from", from, "lookup", &table, "priority", priority,
        ]);
    }
    // Reply-mark rules: ours of a link that is gone, and one of another table.
    let mark_priority = MARK_RULE_PRIORITY.to_string();
    for (mark, table) in [
        ("0x4/0x7e", gone_table.to_string()),
        ("0x6/0x7e", "100".into()),
    ] {
        run(&[
            "ip",
            "-n",
            &node,
            "rule",
            "add",
            "fwmark",
            mark,
            "lookup",
            &table,
            "priority",
            &mark_priority,
        ]);
    }
    let runtime = runtime();
    let node_ns = NetNs::open(Path::new(&format!("/run/netns/{node}"))).unwrap();
    let manager = manager_on(&runtime, &node_ns, InstanceId::derived("test", "sweep"));
    runtime.block_on(async {
        manager.remove_orphan_links(|_| false).await.unwrap();
    });
    let rules = run(&["ip", "-n", &node, "rule", "show"]);
    assert!(
        !rules.contains("from 10.77.0.99 "),
        "the stale rule went: {rules}"
    );
    assert!(
        !rules.contains("fwmark 0x4/0x7e"),
        "the stale mark rule went: {rules}"
    );
    assert!(rules.contains("fwmark 0x6/0x7e lookup 100"), "{rules}");
    for kept in ["10.77.0.98", "10.77.0.97", "10.77.0.96"] {
        assert!(
            rules.contains(&format!("from {kept} ")),
            "{kept} kept: {rules}"
        );
    }
    drop(runtime);
    lab.down().unwrap();
}

const POD_ADDRESS: &str = "10.244.0.2";
const DNAT_MAC: &str = "02:cc:00:00:09:02";

/// `nft ARGS...` in `netns`; its output.
fn nft(netns: &str, args: &[&str]) -> String {
    let mut all = vec!["ip", "netns", "exec", netns, "nft"];
    all.extend_from_slice(args);
    run(&all)
}

/// Whether `nft list table ip NAME` finds the table in `netns`.
fn nft_table(netns: &str, name: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "list", "table", "ip", name])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// kube-proxy's part: the ingress IP DNATed to a pod. The node has an address of its own in the
/// leased subnet on the parent (its main table reaches the client through the parent) and strict
/// rp_filter; the pod's replies must still leave with the lease's MAC, through the address's
/// macvlan, marked by our nftables table, which goes when the address does. Nobody else's table
/// is touched.
#[test]
fn replies_of_a_pod_behind_a_dnat_leave_with_the_lease_mac() {
    let lab = Lab::up().unwrap();
    lab.start(Server::Kea, ServerOpts::default()).unwrap();
    let node = lab.agent_ns();
    let client = lab.server_ns(SERVER_ADDR_1);
    let parent = lab.parent().to_string();
    let pod = lab.add_pod().unwrap();
    run(&[
        "ip",
        "netns",
        "exec",
        &node,
        "sysctl",
        "-qw",
        "net.ipv4.conf.all.rp_filter=1",
        "net.ipv4.conf.default.rp_filter=1",
        &format!("net.ipv4.conf.{parent}.rp_filter=1"),
    ]);
    give_the_node_an_address(&node, &parent);
    let parent_mac = mac_of(&node, &parent);
    let lease_mac: MacAddr = DNAT_MAC.parse().unwrap();
    let owner = InstanceId::derived("test", "dnat");
    let ours = dhcpmanager_engine::net::reply_mark::table_name(&owner);
    // A table of ours left by an earlier run (killed): replaced at start.
    nft(&node, &["add", "table", "ip", &ours]);
    nft(&node, &["add", "chain", "ip", &ours, "left-over"]);
    // Somebody else's table, with a chain at the same hook as ours: never touched.
    nft(&node, &["add", "table", "ip", "foreign"]);
    nft(
        &node,
        &[
            "add",
            "chain",
            "ip",
            "foreign",
            "pre",
            "{",
            "type",
            "filter",
            "hook",
            "prerouting",
            "priority",
            "-150",
            ";",
            "}",
        ],
    );
    nft(
        &node,
        &[
            "add", "rule", "ip", "foreign", "pre", "meta", "mark", "0x1", "counter",
        ],
    );
    let foreign_before = nft_table(&node, "foreign").unwrap();

    let pod_ns = NetNs::open(Path::new(&format!("/run/netns/{pod}"))).unwrap();
    serve_on_node(&pod_ns);
    let runtime = runtime();
    let node_ns = NetNs::open(Path::new(&format!("/run/netns/{node}"))).unwrap();
    let start = |manager: &LeaseManager| {
        runtime.block_on(async {
            let mut status = manager
                .start(announced_address(&parent, lease_mac), None)
                .await
                .unwrap();
            wait_bound(&mut status, Duration::from_secs(30))
                .await
                .unwrap()
                .ip
        })
    };
    let manager = manager_on(&runtime, &node_ns, owner.clone());
    let leased = start(&manager);
    // kube-proxy: the ingress IP to the pod, before routing.
    nft(&node, &["add", "table", "ip", "kube"]);
    nft(
        &node,
        &[
            "add",
            "chain",
            "ip",
            "kube",
            "pre",
            "{",
            "type",
            "nat",
            "hook",
            "prerouting",
            "priority",
            "-100",
            ";",
            "}",
        ],
    );
    nft(
        &node,
        &[
            "add",
            "rule",
            "ip",
            "kube",
            "pre",
            "ip",
            "daddr",
            &leased.to_string(),
            "tcp",
            "dport",
            &PORT.to_string(),
            "dnat",
            "to",
            &format!("{POD_ADDRESS}:{PORT}"),
        ],
    );
    let kube_before = nft_table(&node, "kube").unwrap();
    let table = nft_table(&node, &ours).expect("our table while the address is announced");
    assert!(!table.contains("left-over"), "{table}");
    assert!(
        table.contains(&format!("dhcpmanager: {leased} reply")),
        "{table}"
    );
    let link = dhcpmanager_engine::net::link_name("shop/web");
    let rp_filter = run(&[
        "ip",
        "netns",
        "exec",
        &node,
        "sysctl",
        "-n",
        &format!("net.ipv4.conf.{link}.rp_filter"),
    ]);
    assert_eq!(rp_filter.trim(), "2", "loose rp_filter on the macvlan");
    let rules = run(&["ip", "-n", &node, "rule", "show"]);
    assert!(rules.contains("fwmark 0x2/0x7e lookup"), "{rules}");

    let capture = ArpCapture::start(&client, "lan", PORT, lab.dir().join("dnat.pcap"));
    assert_eq!(
        curl_as_a_stranger(&client, leased),
        "hello\n",
        "the pod answered through the DNAT"
    );
    let frames = capture.stop();
    assert_replies_carry_only(&frames, leased, lease_mac.octets(), parent_mac);

    // Released: our table goes with the last address, the others stay as they were.
    release(&runtime, &manager);
    assert_eq!(nft_table(&node, &ours), None, "our table after the release");
    let rules = run(&["ip", "-n", &node, "rule", "show"]);
    assert!(
        !rules.contains("fwmark"),
        "fwmark rule left behind: {rules}"
    );
    // Held again, then the instance stops (an agent shutting down or fenced).
    start(&manager);
    assert!(nft_table(&node, &ours).is_some());
    runtime.block_on(manager.stop_all()).unwrap();
    assert_eq!(nft_table(&node, &ours), None, "our table after stop_all");
    assert_eq!(
        nft_table(&node, "foreign").as_deref(),
        Some(foreign_before.as_str())
    );
    assert_eq!(
        nft_table(&node, "kube").as_deref(),
        Some(kube_before.as_str())
    );
    drop(runtime);
    lab.down().unwrap();
}
