//! The Service controller on a real kube-apiserver (with the garbage collector of a real
//! kube-controller-manager), an agent process with the chart's RBAC for it, and a real DHCP
//! server in the lab: Service → DhcpAddress owned by it → Bound → ingress; the server forces a
//! new IP → the ingress follows with an Event; Service deleted → lease released, link gone, MAC
//! back in the pool.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use dhcpmanager_tests::cluster::{AGENT_NAMESPACE, AgentOpts, Cluster};
use dhcpmanager_tests::garbage_collector::GarbageCollector;
use dhcpmanager_tests::lab::{Server, ServerOpts};
use serde_json::Value;

const STEP: Duration = Duration::from_secs(60);
const CLASS: &str = "dhcpmanager.io/dhcp";

fn cluster_with_service_controller(server: Server, opts: ServerOpts) -> Cluster {
    let mut cluster = Cluster::start_with(&["agent.serviceController.enabled=true"]);
    cluster.lab.start(server, opts).unwrap();
    let agent_ns = cluster.lab.agent_ns();
    let agent = AgentOpts {
        extra: vec!["--service-controller".into()],
        ..AgentOpts::default()
    };
    cluster.start_agent("node-a", &agent_ns, &agent);
    cluster.kubectl_ok(&["create", "namespace", "shop"]);
    cluster
}

fn service_yaml(name: &str, class: Option<&str>, annotations: &[(&str, &str)]) -> String {
    let class = class
        .map(|c| format!("  loadBalancerClass: {c}\n"))
        .unwrap_or_default();
    let annotations: String = annotations
        .iter()
        .map(|(k, v)| format!("    {k}: \"{v}\"\n"))
        .collect();
    let annotations = if annotations.is_empty() {
        String::new()
    } else {
        format!("  annotations:\n{annotations}")
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: shop\n{annotations}spec:\n  type: LoadBalancer\n{class}  selector: {{app: {name}}}\n  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]\n"
    )
}

fn address(cluster: &Cluster, name: &str) -> Option<Value> {
    let out = cluster.kubectl(&["get", "da", "-n", "shop", name, "-o", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("kubectl JSON"))
}

fn bound_ip(cluster: &Cluster, name: &str) -> Option<Ipv4Addr> {
    let address = address(cluster, name)?;
    let status = &address["status"];
    (status["phase"] == "Bound")
        .then(|| status["ip"].as_str()?.parse().ok())
        .flatten()
}

fn service(cluster: &Cluster, name: &str) -> Value {
    cluster.json(&["get", "service", "-n", "shop", name])
}

fn ingress(cluster: &Cluster, name: &str) -> Vec<String> {
    service(cluster, name)["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| i["ip"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// (type, reason, note) of the Events regarding Service `name`.
fn service_events(cluster: &Cluster, name: &str) -> Vec<(String, String, String)> {
    let events = cluster.json(&["get", "events.v1.events.k8s.io", "-n", "shop"]);
    events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["regarding"]["kind"] == "Service" && e["regarding"]["name"] == name)
        .map(|e| {
            let text = |key: &str| e[key].as_str().unwrap_or_default().to_string();
            (text("type"), text("reason"), text("note"))
        })
        .collect()
}

fn links(cluster: &Cluster) -> String {
    let out = Command::new("ip")
        .args(["-n", &cluster.lab.agent_ns(), "-o", "link"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_load_balancer_service_gets_a_dhcp_address_and_releases_it_when_deleted() {
    let cluster = cluster_with_service_controller(Server::Kea, ServerOpts::default());
    let _gc = GarbageCollector::start(&cluster.cp);
    // Created first, so that by the time ours is served the controller has seen it too.
    cluster.apply(&service_yaml("other", Some("example.com/other"), &[]));
    cluster.apply(&service_yaml("web", Some(CLASS), &[]));

    cluster.wait_for("the DhcpAddress of shop/web Bound", STEP, |c| {
        bound_ip(c, "web").is_some()
    });
    let leased = bound_ip(&cluster, "web").unwrap();
    let da = address(&cluster, "web").unwrap();
    let owner = &da["metadata"]["ownerReferences"][0];
    let uid = service(&cluster, "web")["metadata"]["uid"].clone();
    assert_eq!(
        (&owner["kind"], &owner["name"], &owner["uid"]),
        (&Value::from("Service"), &Value::from("web"), &uid),
        "{da}"
    );
    assert_eq!(
        (&owner["controller"], &owner["blockOwnerDeletion"]),
        (&Value::from(true), &Value::from(true))
    );
    assert_eq!(da["spec"]["service"], "shop/web");
    let mac = da["status"]["mac"].as_str().unwrap().to_string();
    let iface = da["status"]["interface"].as_str().unwrap().to_string();

    cluster.wait_for("the ingress shows the leased IP", STEP, |c| {
        ingress(c, "web") == [leased.to_string()]
    });
    cluster.wait_for("an AddressAssigned Event", STEP, |c| {
        service_events(c, "web").iter().any(|(t, r, n)| {
            t == "Normal" && r == "AddressAssigned" && n.contains(&leased.to_string())
        })
    });
    let server_lease = cluster
        .lab
        .leases(Server::Kea)
        .unwrap()
        .into_iter()
        .find(|l| l.ip == leased && l.state == "active")
        .expect("Kea holds the lease");
    assert_eq!(server_lease.hostname.as_deref(), Some("web.shop"));
    assert_eq!(server_lease.mac.as_deref(), Some(mac.as_str()));

    // The Service of another class: no address, no status, no Event.
    assert!(address(&cluster, "other").is_none());
    assert!(ingress(&cluster, "other").is_empty());
    assert!(service_events(&cluster, "other").is_empty());

    cluster.kubectl_ok(&["delete", "service", "-n", "shop", "web", "--timeout=60s"]);
    cluster.wait_for(
        "the garbage collector and the finalizer removed the address",
        STEP,
        |c| address(c, "web").is_none(),
    );
    cluster.wait_for("Kea shows the lease released", STEP, |c| {
        !c.lab
            .leases(Server::Kea)
            .unwrap()
            .iter()
            .any(|l| l.ip == leased && l.state == "active")
    });
    cluster.wait_for("the macvlan is gone", STEP, |c| !links(c).contains(&iface));
    let pool = cluster.json(&["get", "macpool", "default"]);
    assert_eq!(pool["status"]["used"], 0, "the MAC is back: {pool}");
}

/// Who may create a Service's address changes without any change of the Service: the agent
/// first holds its Lease, or the coordinator (the live agent with the smallest node name) dies.
/// Here the Services exist before our agent starts, and a peer `node-0` that never renews its
/// Lease coordinates at first; once that Lease has run out, our agent is the coordinator and
/// must create the addresses soon, not at its resync (set beyond this test's patience).
#[test]
fn when_the_coordinator_is_gone_the_next_agent_creates_the_waiting_addresses() {
    let mut cluster = Cluster::start_with(&["agent.serviceController.enabled=true"]);
    cluster
        .lab
        .start(Server::Kea, ServerOpts::default())
        .unwrap();
    cluster.kubectl_ok(&["create", "namespace", "shop"]);
    let names = ["web", "shop-front", "api"];
    for name in names {
        cluster.apply(&service_yaml(name, Some(CLASS), &[]));
    }
    let renewed = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    cluster.apply(&format!(
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: dhcpmanager-agent-node-0\n  namespace: {AGENT_NAMESPACE}\n  labels: {{app.kubernetes.io/component: dhcpmanager-agent}}\nspec:\n  holderIdentity: node-0\n  leaseDurationSeconds: 5\n  renewTime: \"{renewed}\"\n"
    ));
    let agent_ns = cluster.lab.agent_ns();
    let agent = AgentOpts {
        extra: vec![
            "--service-controller".into(),
            "--resync".into(),
            "600s".into(),
        ],
        ..AgentOpts::default()
    };
    cluster.start_agent("node-a", &agent_ns, &agent);
    cluster.wait_for("every Service's address Bound and shown", STEP, |c| {
        names
            .iter()
            .all(|name| bound_ip(c, name).is_some_and(|ip| ingress(c, name) == [ip.to_string()]))
    });
}

#[test]
fn the_requested_ip_is_honoured_and_a_new_ip_after_the_server_forgot_follows_to_the_service() {
    let opts = ServerOpts {
        authoritative: true,
        ..ServerOpts::default()
    };
    let cluster = cluster_with_service_controller(Server::Kea, opts.clone());
    let wanted = "10.77.0.123";
    cluster.apply(&service_yaml(
        "web",
        Some(CLASS),
        &[("dhcpmanager.io/requested-ip", wanted)],
    ));
    cluster.wait_for("the requested IP in the ingress", STEP, |c| {
        ingress(c, "web") == [wanted]
    });
    assert_eq!(
        address(&cluster, "web").unwrap()["spec"]["requestedIp"],
        wanted
    );

    // Kea comes back with an empty database and a pool without the address: NAK, new lease.
    cluster.lab.stop(Server::Kea).unwrap();
    cluster
        .lab
        .start(
            Server::Kea,
            ServerOpts {
                range: (Ipv4Addr::new(10, 77, 0, 150), Ipv4Addr::new(10, 77, 0, 200)),
                ..opts
            },
        )
        .unwrap();
    cluster.wait_for("the ingress follows the new IP", STEP, |c| {
        ingress(c, "web")
            .first()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
            .is_some_and(|ip| (150..=200).contains(&ip.octets()[3]))
    });
    let new = ingress(&cluster, "web")[0].clone();
    // Kea stays silent to the RFC RENEWING/REBINDING forms (the IP is on the macvlan) of a lease
    // it forgot, so the lease runs out first: AddressLost, then the new one, AddressAssigned.
    // (After a NAK instead, the ingress moves at once with one IpChanged: unit-tested.)
    let told = |events: &[(String, String, String)]| {
        let warned = events.iter().any(|(t, r, n)| {
            t == "Warning" && (r == "AddressLost" || r == "IpChanged") && n.contains(wanted)
        });
        let assigned = events
            .iter()
            .any(|(_, r, n)| (r == "AddressAssigned" || r == "IpChanged") && n.contains(&new));
        warned && assigned
    };
    let deadline = std::time::Instant::now() + STEP;
    let mut events = service_events(&cluster, "web");
    while !told(&events) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        events = service_events(&cluster, "web");
    }
    assert!(told(&events), "Events of shop/web: {events:#?}");
}

/// Whether a client in `netns` gets an answer from `ip` (a TCP RST from a closed port: curl's
/// exit code 7 at once; no answer would be a timeout, 28).
fn answers(netns: &str, ip: Ipv4Addr) -> bool {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "curl",
            "-sS",
            "--connect-timeout",
            "0.5",
        ])
        .arg(format!("http://{ip}:9/"))
        .output()
        .is_ok_and(|out| out.status.code() == Some(7))
}

#[test]
fn when_the_owning_node_is_lost_the_other_takes_the_service_address_over_and_announces_it() {
    let mut cluster = cluster_with_service_controller(Server::Kea, ServerOpts::default());
    let node_b = cluster.lab.add_node(2).unwrap();
    let agent = AgentOpts {
        extra: vec!["--service-controller".into()],
        ..AgentOpts::default()
    };
    let b = cluster.start_agent("node-b", &node_b, &agent);
    cluster.apply(&service_yaml("web", Some(CLASS), &[]));
    cluster.wait_for("the ingress IP", STEP, |c| ingress(c, "web").len() == 1);
    let ip: Ipv4Addr = ingress(&cluster, "web")[0].parse().unwrap();
    let da = address(&cluster, "web").unwrap();
    let owner = da["status"]["node"].as_str().unwrap().to_string();
    let mac: dhcpmanager_engine::dhcp::MacAddr =
        da["status"]["mac"].as_str().unwrap().parse().unwrap();
    let client = cluster.lab.server_ns(dhcpmanager_tests::lab::SERVER_ADDR_1);
    cluster.wait_for("the address answers the client", STEP, |_| {
        answers(&client, ip)
    });

    let capture = dhcpmanager_tests::arp_capture::ArpCapture::start(
        &client,
        "lan",
        9,
        cluster.lab.dir().join("failover-client.pcap"),
    );
    // The owning node is lost: its agent killed, its link to the segment down.
    let (victim, victim_ns) = if owner == "node-a" {
        (0, cluster.lab.agent_ns())
    } else {
        (b, node_b.clone())
    };
    cluster.signal_agent(victim, libc::SIGKILL);
    let down = Command::new("ip")
        .args(["-n", &victim_ns, "link", "set", "lab0", "down"])
        .status()
        .unwrap();
    assert!(down.success());
    cluster.wait_for("the other agent owns the address, Bound", STEP, |c| {
        address(c, "web").is_some_and(|da| {
            da["status"]["node"].as_str().is_some_and(|n| n != owner)
                && da["status"]["phase"] == "Bound"
        })
    });
    cluster.wait_for("the address answers the client again", STEP, |_| {
        answers(&client, ip)
    });
    let da = address(&cluster, "web").unwrap();
    assert_eq!(da["status"]["ip"], ip.to_string(), "same IP");
    assert_eq!(da["status"]["mac"], mac.to_string(), "same MAC");
    assert_eq!(
        ingress(&cluster, "web"),
        [ip.to_string()],
        "the ingress unchanged"
    );
    assert!(
        !service_events(&cluster, "web")
            .iter()
            .any(|(_, r, _)| r == "IpChanged" || r == "AddressLost"),
        "{:?}",
        service_events(&cluster, "web")
    );
    let seen = dhcpmanager_tests::arp_capture::announced(&capture.stop(), ip);
    assert!(
        !seen.gratuitous_from.is_empty(),
        "the new owner announced {ip}: {seen:02x?}"
    );
    assert!(seen.gratuitous_from.iter().all(|m| *m == mac.octets()));
    assert!(
        seen.answered_by.iter().all(|m| *m == mac.octets()),
        "{seen:02x?}"
    );
}
