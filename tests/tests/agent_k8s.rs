//! The agent on a real kube-apiserver with the chart's RBAC, against real DHCP servers: CRDs and
//! their validation, bind and release through kubectl, restart without DISCOVER, failover
//! between two "nodes" (network namespaces on one segment), and an API outage.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dhcpmanager_tests::bootp::MessageType;
use dhcpmanager_tests::cluster::{AgentOpts, Cluster};
use dhcpmanager_tests::lab::{Server, ServerOpts, active_lease};
use dhcpmanager_tests::pcap::{self, DhcpFrame};
use serde_json::Value;

const STEP: Duration = Duration::from_secs(60);

fn phase(status: &Value) -> &str {
    status["phase"].as_str().unwrap_or("")
}

fn ip(status: &Value) -> Option<Ipv4Addr> {
    status["ip"].as_str().and_then(|s| s.parse().ok())
}

fn all_bound(cluster: &Cluster, namespace: &str, count: usize) -> bool {
    let addresses = cluster.addresses(namespace);
    addresses.len() == count
        && addresses
            .iter()
            .all(|(_, s)| phase(s) == "Bound" && ip(s).is_some())
}

fn mac_bytes(mac: &str) -> [u8; 6] {
    mac.parse::<dhcpmanager_engine::dhcp::MacAddr>()
        .unwrap()
        .octets()
}

/// tcpdump on one interface and direction, stopped by PID.
struct PortCapture {
    child: Child,
    file: PathBuf,
}

impl PortCapture {
    fn start(netns: &str, iface: &str, file: PathBuf) -> PortCapture {
        Self::start_with(netns, iface, file, "in")
    }

    fn start_with(netns: &str, iface: &str, file: PathBuf, direction: &str) -> PortCapture {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                netns,
                "tcpdump",
                // -Q in on a bridge port: only what this node sent (the bridge floods the
                // other node's broadcasts out of every port too).
                "-Q",
                direction,
                "-i",
                iface,
                "-U",
                "--immediate-mode",
                "-w",
            ])
            .arg(&file)
            .args(["udp port 67 or udp port 68"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump");
        // The pcap header is written when tcpdump has opened the interface.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) < 24 {
            assert!(
                std::time::Instant::now() < deadline,
                "tcpdump did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        PortCapture { child, file }
    }

    fn stop(mut self) -> Vec<DhcpFrame> {
        // SAFETY: SIGINT to our own child; tcpdump flushes and exits.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        pcap::read(&self.file).expect("read the capture")
    }
}

impl Drop for PortCapture {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A cluster with `server` serving the lab and one agent ("node-a") in the lab's agent
/// namespace; returns the agent's index too.
fn with_server_and_agent(server: Server, opts: &AgentOpts) -> (Cluster, usize) {
    let mut cluster = Cluster::start();
    cluster.lab.start(server, ServerOpts::default()).unwrap();
    let agent_ns = cluster.lab.agent_ns();
    let agent = cluster.start_agent("node-a", &agent_ns, opts);
    (cluster, agent)
}

fn with_kea_and_agent(opts: &AgentOpts) -> (Cluster, usize) {
    with_server_and_agent(Server::Kea, opts)
}

/// The status says the lease was (re)obtained after `t`.
fn obtained_after(status: &Value, t: chrono::DateTime<chrono::Utc>) -> bool {
    status["obtainedAt"]
        .as_str()
        .and_then(|at| at.parse::<chrono::DateTime<chrono::Utc>>().ok())
        .is_some_and(|at| at > t)
}

// --- the CRDs on the API server -------------------------------------------------------------

#[test]
fn crds_are_served_with_columns_and_validation() {
    let cluster = Cluster::start();
    let examples = dhcpmanager_tests::repo_root().join("examples");
    cluster.kubectl_ok(&["create", "namespace", "shop"]);
    cluster.kubectl_ok(&[
        "apply",
        "-f",
        examples.join("macpool.yaml").to_str().unwrap(),
    ]);
    cluster.kubectl_ok(&[
        "apply",
        "-f",
        examples.join("dhcpaddress.yaml").to_str().unwrap(),
    ]);
    let table = cluster.kubectl_ok(&["get", "dhcpaddresses", "-A"]);
    let header = table.lines().next().unwrap();
    for column in ["IP", "MAC", "PHASE", "NODE", "EXPIRES", "AGE"] {
        assert!(header.contains(column), "{header}");
    }
    let header = cluster.kubectl_ok(&["get", "macpools"]);
    for column in ["FREE", "USED", "AGE"] {
        assert!(header.lines().next().unwrap().contains(column), "{header}");
    }
    assert!(
        cluster
            .kubectl_ok(&["get", "da", "-n", "shop"])
            .contains("web"),
        "short name da"
    );
    assert!(
        cluster
            .kubectl_ok(&["get", "dhcpmanager", "-A"])
            .contains("dhcpaddress"),
        "category"
    );

    let refused = |yaml: &str, message: &str| {
        let out = cluster.cp.apply_yaml(yaml);
        let error = out
            .expect_err(&format!("the API server must refuse:\n{yaml}"))
            .to_string();
        assert!(error.contains(message), "expected {message:?} in: {error}");
    };
    let address = |spec: &str| {
        format!(
            "apiVersion: dhcpmanager.io/v1alpha1\nkind: DhcpAddress\nmetadata: {{name: bad, namespace: shop}}\nspec: {spec}\n"
        )
    };
    refused(&address("{mac: \"02:00:00:00:00:zz\"}"), "spec.mac");
    refused(&address("{hostname: \"not a hostname!\"}"), "spec.hostname");
    refused(
        &address("{extraOptions: [{code: 53, value: \"01\"}]}"),
        "managed by dhcpmanager",
    );
    refused(
        &address("{clientId: {mode: Custom}}"),
        "custom client id needs value",
    );
    refused(
        "apiVersion: dhcpmanager.io/v1alpha1\nkind: MacPool\nmetadata: {name: bad}\nspec: {ranges: [{start: \"01:00:00:00:00:00\", count: 4}]}\n",
        "locally administered",
    );
    // Immutable once set.
    cluster.apply(&address("{mac: \"02:00:00:00:00:01\"}"));
    refused(&address("{mac: \"02:00:00:00:00:02\"}"), "immutable");
}

// --- kubectl apply -> Bound; delete -> released, link gone, MAC back --------------------------

fn bind_and_release(server: Server) {
    let cluster = with_server_and_agent(server, &AgentOpts::default()).0;
    cluster.kubectl_ok(&["create", "namespace", "shop"]);
    cluster.apply(
        "apiVersion: dhcpmanager.io/v1alpha1\nkind: DhcpAddress\nmetadata: {name: web, namespace: shop}\nspec: {service: shop/web}\n",
    );
    cluster.wait_for("shop/web Bound", STEP, |c| all_bound(c, "shop", 1));
    let status = cluster.json(&["get", "da", "-n", "shop", "web"])["status"].clone();
    let leased = ip(&status).unwrap();
    assert_eq!(leased.octets()[..3], [10, 77, 0]);
    assert_eq!(status["node"], "node-a");
    let mac = status["mac"].as_str().unwrap().to_string();
    assert!(
        mac.starts_with("02:cc:00:00:00:"),
        "from the default pool seeded by the config: {mac}"
    );
    assert!(
        status["lease"]["expiresAt"].is_string(),
        "the lease record to resume from: {status}"
    );
    let ready = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "True");
    let server_lease = cluster
        .lab
        .leases(server)
        .unwrap()
        .into_iter()
        .find(|l| l.ip == leased && l.state == "active");
    let server_lease = server_lease.expect("the server holds the lease");
    assert_eq!(server_lease.mac.as_deref(), Some(mac.as_str()));
    let pool = cluster.json(&["get", "macpool", "default"]);
    assert_eq!(pool["status"]["used"], 1);
    assert_eq!(pool["status"]["allocations"][0]["address"], "shop/web");
    cluster.wait_for("a Bound event", STEP, |c| {
        c.kubectl_ok(&["get", "events", "-n", "shop"])
            .contains("Bound")
    });
    // Linkless, the default for an address not assigned to a link: its client sends from the
    // parent with the address's own MAC, and no macvlan carries that MAC.
    assert_eq!(status["interface"], cluster.lab.parent(), "{status}");
    let links = |c: &Cluster| {
        let out = Command::new("ip")
            .args(["-n", &c.lab.agent_ns(), "-o", "link"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(!links(&cluster).contains(&mac), "{}", links(&cluster));

    cluster.kubectl_ok(&["delete", "da", "-n", "shop", "web", "--timeout=60s"]);
    cluster.wait_for("the server shows the address free", STEP, |c| {
        !c.lab
            .leases(server)
            .unwrap()
            .iter()
            .any(|l| l.ip == leased && l.state == "active")
    });
    // The follower of the address publishes the release it saw last, before it ends.
    cluster.wait_for("a Released event", STEP, |c| {
        c.kubectl_ok(&["get", "events", "-n", "shop"])
            .contains("Released")
    });
    assert!(!links(&cluster).contains(&mac), "{}", links(&cluster));
    let pool = cluster.json(&["get", "macpool", "default"]);
    assert_eq!(
        pool["status"]["used"], 0,
        "the MAC is back in the pool: {pool}"
    );
}

#[test]
fn kea_bind_and_release() {
    bind_and_release(Server::Kea)
}
#[test]
fn dnsmasq_bind_and_release() {
    bind_and_release(Server::Dnsmasq)
}
#[test]
fn dhcpd_bind_and_release() {
    bind_and_release(Server::Dhcpd)
}

// --- kill -9 and restart: same IPs, no DISCOVER ------------------------------------------------

#[test]
fn agent_restart_resumes_twenty_addresses_without_discover() {
    let (mut cluster, first) = with_kea_and_agent(&AgentOpts::default());
    let agent_ns = cluster.lab.agent_ns();
    cluster.create_addresses("apps", "svc", 20);
    cluster.wait_for("20 addresses Bound", STEP, |c| all_bound(c, "apps", 20));
    let before: BTreeMap<String, Ipv4Addr> = cluster
        .addresses("apps")
        .into_iter()
        .map(|(n, s)| (n, ip(&s).unwrap()))
        .collect();

    cluster.signal_agent(first, libc::SIGKILL);
    let capture = PortCapture::start_with(
        &agent_ns,
        "lab0",
        cluster.lab.dir().join("restart.pcap"),
        "inout",
    );
    let restarted_at = chrono::Utc::now();
    cluster.start_agent("node-a", &agent_ns, &AgentOpts::default());
    cluster.wait_for("every address renewed by the new agent", STEP, |c| {
        let now = c.addresses("apps");
        now.len() == 20
            && now
                .iter()
                .all(|(_, s)| phase(s) == "Bound" && obtained_after(s, restarted_at))
    });
    let frames = capture.stop();
    let after: BTreeMap<String, Ipv4Addr> = cluster
        .addresses("apps")
        .into_iter()
        .map(|(n, s)| (n, ip(&s).unwrap()))
        .collect();
    assert_eq!(before, after, "the same IPs after kill -9 and restart");
    let requests = frames
        .iter()
        .filter(|f| f.dhcp.op == 1 && f.message_type() == Some(MessageType::Request))
        .count();
    assert!(
        requests >= 20,
        "one INIT-REBOOT REQUEST per address at least ({requests})"
    );
    let discovers: Vec<_> = frames
        .iter()
        .filter(|f| f.message_type() == Some(MessageType::Discover))
        .collect();
    assert!(
        discovers.is_empty(),
        "no DISCOVER after the restart: {discovers:#?}"
    );
}

// --- two nodes: failover keeps the IPs, never two transmitters for one MAC --------------------

#[test]
fn failover_between_two_nodes_keeps_ips_and_never_transmits_twice() {
    let mut cluster = Cluster::start();
    cluster
        .lab
        .start(Server::Kea, ServerOpts::default())
        .unwrap();
    let node_b_ns = cluster.lab.add_node(2).unwrap();
    let srv_ns = cluster.lab.server_ns(dhcpmanager_tests::lab::SERVER_ADDR_1);
    let dir = cluster.lab.dir().to_path_buf();
    let capture_a = PortCapture::start(&srv_ns, "p-ag", dir.join("node-a.pcap"));
    let capture_b = PortCapture::start(&srv_ns, "p-ag2", dir.join("node-b.pcap"));

    let node_a_ns = cluster.lab.agent_ns();
    let a = cluster.start_agent("node-a", &node_a_ns, &AgentOpts::default());
    cluster.start_agent("node-b", &node_b_ns, &AgentOpts::default());
    cluster.create_addresses("apps", "lb", 8);
    cluster.wait_for("8 addresses Bound", STEP, |c| all_bound(c, "apps", 8));
    let before = cluster.addresses("apps");
    let macs: BTreeSet<&str> = before
        .iter()
        .map(|(_, s)| s["mac"].as_str().unwrap())
        .collect();
    assert_eq!(
        macs.len(),
        8,
        "two agents allocating from one pool never share a MAC"
    );
    let pool = cluster.json(&["get", "macpool", "default"]);
    assert_eq!(pool["status"]["used"], 8);
    let on_a: Vec<String> = before
        .iter()
        .filter(|(_, s)| s["node"] == "node-a")
        .map(|(n, _)| n.clone())
        .collect();

    // node-a dies: its agent stops renewing its Lease and sends nothing more.
    cluster.signal_agent(a, libc::SIGKILL);
    let killed_at = std::time::Instant::now();
    cluster.wait_for("every address held by node-b", STEP, |c| {
        c.addresses("apps")
            .iter()
            .all(|(_, s)| s["node"] == "node-b" && phase(s) == "Bound")
    });
    let took = killed_at.elapsed();
    let after: BTreeMap<String, Value> = cluster.addresses("apps").into_iter().collect();
    for (name, status) in &before {
        assert_eq!(
            ip(&after[name]),
            ip(status),
            "{name} keeps its IP across the failover"
        );
        assert_eq!(after[name]["mac"], status["mac"], "{name} keeps its MAC");
        assert_eq!(
            after[name]["clientId"], status["clientId"],
            "{name} keeps its client id"
        );
    }
    // Let node-b renew a few times, then compare what each node put on the wire.
    std::thread::sleep(Duration::from_secs(4));
    let from_a = capture_a.stop();
    let from_b = capture_b.stop();
    for (_, status) in &before {
        let mac = mac_bytes(status["mac"].as_str().unwrap());
        let sent = |frames: &[DhcpFrame]| -> Vec<u64> {
            frames
                .iter()
                .filter(|f| f.dhcp.op == 1 && f.dhcp.chaddr == mac)
                .map(|f| f.time_ns)
                .collect()
        };
        let (a_times, b_times) = (sent(&from_a), sent(&from_b));
        if let (Some(last_a), Some(first_b)) = (a_times.iter().max(), b_times.iter().min()) {
            assert!(
                last_a < first_b,
                "{mac:x?}: node-a sent at {last_a} after node-b started at {first_b}"
            );
        }
    }
    eprintln!(
        "failover of {} addresses from node-a took {took:?} (lease 6s + grace 2s)",
        on_a.len()
    );
}

// --- the API server goes away: renewals go on, status catches up -------------------------------

#[test]
fn renewals_continue_while_the_api_server_is_down() {
    let opts = AgentOpts {
        lease_duration: "60s",
        ..AgentOpts::default()
    };
    let cluster = with_kea_and_agent(&opts).0;
    cluster.create_addresses("apps", "web", 1);
    cluster.wait_for("Bound", STEP, |c| all_bound(c, "apps", 1));
    let (_, status) = cluster.addresses("apps").remove(0);
    let leased = ip(&status).unwrap();
    let server_expiry =
        |c: &Cluster| active_lease(&c.lab.leases(Server::Kea).unwrap(), leased).map(|l| l.expires);
    let expiry_before = server_expiry(&cluster).expect("active at the server");

    cluster.cp.stop_apiserver();
    let down_at = chrono::Utc::now();
    // T1 is 3 s here (60 s Kea lease, --time-scale 10): wait for at least two renewals' worth.
    std::thread::sleep(Duration::from_secs(8));
    let expiry_during = server_expiry(&cluster).expect("still active at the server");
    assert!(
        expiry_during > expiry_before,
        "renewed while the API server was down: {expiry_before} -> {expiry_during}"
    );
    cluster.cp.restart();
    cluster.wait_for("status caught up with the renewals", STEP, |c| {
        let (_, s) = c.addresses("apps").remove(0);
        phase(&s) == "Bound" && ip(&s) == Some(leased) && obtained_after(&s, down_at)
    });
}

// --- a problem only the user can fix is shown on the object, and heals ------------------------

#[test]
fn exhausted_pool_is_reported_and_heals_when_a_mac_returns() {
    let opts = AgentOpts {
        macs: vec!["02:cc:00:00:00:01".into()],
        ..AgentOpts::default()
    };
    let cluster = with_kea_and_agent(&opts).0;
    cluster.create_addresses("apps", "first", 1);
    cluster.wait_for("first Bound", STEP, |c| all_bound(c, "apps", 1));
    cluster.create_addresses("apps", "second", 1);
    cluster.wait_for("second Failed with the reason", STEP, |c| {
        c.addresses("apps").iter().any(|(n, s)| {
            n == "second-0"
                && phase(s) == "Failed"
                && s["lastError"]
                    .as_str()
                    .is_some_and(|e| e.contains("no free MAC"))
        })
    });
    cluster.kubectl_ok(&["delete", "da", "-n", "apps", "first-0", "--timeout=60s"]);
    cluster.wait_for("second Bound with the returned MAC", STEP, |c| {
        all_bound(c, "apps", 1)
    });
    let (_, status) = cluster.addresses("apps").remove(0);
    assert_eq!(status["mac"], "02:cc:00:00:00:01");
    assert!(
        status["lastError"].is_null(),
        "the error is cleared: {status}"
    );
}
