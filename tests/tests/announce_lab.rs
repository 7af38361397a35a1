//! Announcement with the lease's own MAC, in the lab (no Kubernetes): the engine leases an
//! address from Kea with the IP on its macvlan, on a "node" whose parent interface has an
//! address of its own in the subnet and Linux's default ARP settings (`arp_ignore=0`,
//! `arp_announce=0`: ARP flux). A client on the segment (the server's namespace) sees a
//! gratuitous ARP from the lease's MAC, only the lease's MAC answering its ARP request, and the
//! TCP replies of a server on the node carrying the lease's MAC as Ethernet source.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use dhcpmanager_engine::dhcp::{ClientConfig, MacAddr};
use dhcpmanager_engine::manager::{AddressSpec, LeaseManager, ManagerConfig, wait_bound};
use dhcpmanager_engine::net::NetNs;
use dhcpmanager_tests::lab::{Lab, SERVER_ADDR_1, Server, ServerOpts};
use dhcpmanager_tests::pcap::{self, EthernetFrame};

const LEASE_MAC: &str = "02:cc:00:00:09:01";
const NODE_ADDRESS: &str = "10.77.0.5/24";
const PORT: u16 = 8080;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV4: u16 = 0x0800;

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

/// tcpdump of ARP and the test's TCP port, stopped by PID.
struct Tcpdump {
    child: Child,
    file: PathBuf,
}

impl Tcpdump {
    fn start(netns: &str, iface: &str, file: PathBuf) -> Tcpdump {
        let filter = format!("arp or tcp port {PORT}");
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "tcpdump", "-i", iface, "-U"])
            .args(["--immediate-mode", "-w"])
            .arg(&file)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) < 24 {
            assert!(
                std::time::Instant::now() < deadline,
                "tcpdump did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Tcpdump { child, file }
    }

    fn stop(mut self) -> Vec<EthernetFrame> {
        // --immediate-mode -U: what was received is written at once; a moment for the last one.
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: SIGINT to our own child; tcpdump flushes and exits.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        pcap::read_ethernet(&self.file).expect("read the capture")
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
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

struct Arp {
    op: u16,
    sender_mac: [u8; 6],
    sender_ip: Ipv4Addr,
    target_ip: Ipv4Addr,
}

fn arp(frame: &EthernetFrame) -> Option<Arp> {
    let p = &frame.payload;
    (frame.ethertype == ETHERTYPE_ARP && p.len() >= 28).then(|| Arp {
        op: u16::from_be_bytes([p[6], p[7]]),
        sender_mac: p[8..14].try_into().unwrap(),
        sender_ip: Ipv4Addr::new(p[14], p[15], p[16], p[17]),
        target_ip: Ipv4Addr::new(p[24], p[25], p[26], p[27]),
    })
}

fn ipv4_source(frame: &EthernetFrame) -> Option<Ipv4Addr> {
    let p = &frame.payload;
    (frame.ethertype == ETHERTYPE_IPV4 && p.len() >= 20)
        .then(|| Ipv4Addr::new(p[12], p[13], p[14], p[15]))
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
    run(&[
        "ip",
        "-n",
        &node,
        "addr",
        "add",
        NODE_ADDRESS,
        "dev",
        &parent,
    ]);
    let parent_mac = mac_of(&node, &parent);
    let lease_mac: MacAddr = LEASE_MAC.parse().unwrap();

    let capture = Tcpdump::start(&client, "lan", lab.dir().join("announce.pcap"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let node_ns = NetNs::open(Path::new(&format!("/run/netns/{node}"))).unwrap();
    let (manager, leased) = runtime.block_on(async {
        let manager = LeaseManager::new(
            dhcpmanager_engine::instance::InstanceId::derived("test", "announce"),
            ManagerConfig {
                netns: node_ns.clone(),
                ..ManagerConfig::default()
            },
            Arc::new(|_, _| {}),
        )
        .unwrap();
        let mut client_config = ClientConfig::new(lease_mac);
        client_config.hostname = Some("web.shop".into());
        client_config.ip_assigned = true;
        let mut status = manager
            .start(
                AddressSpec {
                    key: "shop/web".into(),
                    parent: parent.clone(),
                    client: client_config,
                },
                None,
            )
            .await
            .unwrap();
        let record = wait_bound(&mut status, Duration::from_secs(30))
            .await
            .unwrap();
        (manager, record.ip)
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
    // The client has never seen the address: its ARP request goes to the whole segment.
    let _ = Command::new("ip")
        .args(["-n", &client, "neigh", "flush", "all"])
        .status();
    let body = run(&[
        "ip",
        "netns",
        "exec",
        &client,
        "curl",
        "-s",
        "--max-time",
        "10",
        &format!("http://{leased}:{PORT}/"),
    ]);
    assert_eq!(body, "hello\n");
    let frames = capture.stop();

    let arps: Vec<Arp> = frames.iter().filter_map(arp).collect();
    let gratuitous: Vec<&Arp> = arps
        .iter()
        .filter(|a| a.op == 1 && a.sender_ip == leased && a.target_ip == leased)
        .collect();
    assert!(!gratuitous.is_empty(), "no gratuitous ARP for {leased}");
    assert!(
        gratuitous
            .iter()
            .all(|a| a.sender_mac == lease_mac.octets())
    );
    let answers: Vec<&Arp> = arps
        .iter()
        .filter(|a| a.op == 2 && a.sender_ip == leased)
        .collect();
    assert!(!answers.is_empty(), "nobody answered ARP for {leased}");
    for answer in &answers {
        assert_eq!(
            answer.sender_mac,
            lease_mac.octets(),
            "ARP for {leased} answered by {:02x?} (the parent is {parent_mac:02x?})",
            answer.sender_mac
        );
    }
    let from_lease: Vec<&EthernetFrame> = frames
        .iter()
        .filter(|f| ipv4_source(f) == Some(leased))
        .collect();
    assert!(
        !from_lease.is_empty(),
        "no TCP reply from {leased} captured"
    );
    for frame in &from_lease {
        assert_eq!(
            frame.src_mac,
            Some(lease_mac.octets()),
            "a reply from {leased}"
        );
    }
    // Nothing at all left the node with its parent's MAC for this exchange.
    assert!(
        !frames.iter().any(|f| f.src_mac == Some(parent_mac)),
        "the parent's MAC was seen"
    );

    runtime.block_on(async {
        manager.release("shop/web").await.unwrap();
        manager.settle_links().await.unwrap();
    });
    let rules = run(&["ip", "-n", &node, "rule", "show"]);
    assert!(
        !rules.contains(&format!("from {leased} lookup")),
        "rule left behind: {rules}"
    );
    drop(runtime);
    lab.down().unwrap();
}
