//! A LoadBalancer Service on a real node, end to end: our image and chart (Service controller
//! on), a Deployment behind a Service of class `dhcpmanager.io/dhcp`, kube-proxy in iptables
//! mode. From a client on the DHCP segment (the lab server's namespace), `curl` of the ingress
//! IP reaches the pod; a capture on the client shows the lease's MAC, and no other, answering
//! ARP for the address and carrying the HTTP replies. Deleting the Service releases the lease
//! (DHCPRELEASE), removes the macvlan and returns the MAC. Prints how long Service → ingress and
//! Service → first successful curl took (figures, not assertions).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcpmanager_tests::arp_capture::{ArpCapture, announced};
use dhcpmanager_tests::bootp::MessageType;
use dhcpmanager_tests::lab::{SERVER_ADDR_1, Server, ServerOpts, active_lease};
use dhcpmanager_tests::node::{
    self, IMAGE_REPOSITORY, IMAGE_TAG, LAB_PARENT, Node, SegmentCapture,
};
use dhcpmanager_tests::pcap;
use dhcpmanager_tests::repo_root;
use serde_json::Value;

const NAMESPACE: &str = "dhcpmanager";
const STEP: Duration = Duration::from_secs(120);
const HTTP_PORT: u16 = 80;

fn web_yaml() -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: shop}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
        - name: web
          image: {IMAGE_REPOSITORY}:{IMAGE_TAG}
          imagePullPolicy: Never
          # Any HTTP server will do: the standalone REST shim answers /healthz.
          command: ["dhcpmanager-apiserver"]
          args: ["--standalone", "--bind", "0.0.0.0", "--port", "8080", "--state-dir", "/tmp"]
          # Its lease manager sweeps links at start (in the pod's own network namespace).
          securityContext: {{runAsUser: 0, capabilities: {{add: [NET_ADMIN]}}}}
          ports: [{{containerPort: 8080}}]
          readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}, periodSeconds: 1}}
"#
    )
}

const SERVICE_YAML: &str = r#"apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: LoadBalancer
  loadBalancerClass: dhcpmanager.io/dhcp
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
"#;

fn ingress(node: &Node) -> Option<Ipv4Addr> {
    let service = node
        .try_kubectl(&["-n", "shop", "get", "service", "web", "-o", "json"])
        .ok()?;
    let service: Value = serde_json::from_str(&service).ok()?;
    service["status"]["loadBalancer"]["ingress"][0]["ip"]
        .as_str()?
        .parse()
        .ok()
}

fn agent_links(node: &Node) -> Vec<String> {
    let out = node
        .in_node("ip")
        .args(["-d", "-o", "link", "show"])
        .output()
        .expect("ip link in the node");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("alias dhcpmanager:"))
        .map(str::to_string)
        .collect()
}

/// `curl http://ip/healthz` from the client namespace: the body on success.
fn curl_from_client(client: &str, ip: Ipv4Addr) -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", client, "curl", "-s", "--max-time", "3"])
        .arg(format!("http://{ip}:{HTTP_PORT}/healthz"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn a_load_balancer_service_is_reached_from_the_segment_through_the_lease_mac_only() {
    let image = node::dhcpmanager_image();
    let node = Node::start();
    node.import_image(image);
    let lab = node.lab();
    lab.start(
        Server::Kea,
        ServerOpts {
            lease: 600,
            ..ServerOpts::default()
        },
    )
    .expect("Kea on the segment");
    let client = lab.server_ns(SERVER_ADDR_1);
    let segment = SegmentCapture::start(&node, "segment");

    node.kubectl(&["create", "namespace", NAMESPACE]);
    let chart = repo_root().join("charts/dhcpmanager");
    node.helm(&[
        "install",
        "dhcpmanager",
        chart.to_str().unwrap(),
        "--namespace",
        NAMESPACE,
        "--set",
        &format!("image.repository={IMAGE_REPOSITORY}"),
        "--set",
        &format!("image.tag={IMAGE_TAG}"),
        "--set",
        "image.pullPolicy=Never",
        "--set",
        &format!("agent.interface={LAB_PARENT}"),
        "--set",
        "agent.macPool.ranges[0].start=02:d4:c9:00:00:00",
        "--set",
        "agent.macPool.ranges[0].count=16",
        "--set",
        "agent.serviceController.enabled=true",
        "--set",
        "apiserver.enabled=false",
        "--wait",
        "--timeout",
        "180s",
    ])
    .unwrap_or_else(|err| panic!("helm install: {err}"));

    node.kubectl(&["create", "namespace", "shop"]);
    node.apply(&web_yaml());
    let web_ready = || {
        node.try_kubectl(&[
            "-n",
            "shop",
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ])
        .is_ok_and(|ready| ready.trim() == "1")
    };
    let started = Instant::now();
    while !web_ready() {
        if started.elapsed() > STEP {
            let describe = node.try_kubectl(&["-n", "shop", "describe", "pods"]);
            let logs = node.try_kubectl(&["-n", "shop", "logs", "deployment/web", "--tail=30"]);
            panic!("the web pod is not Ready:\n{describe:?}\n{logs:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let capture = ArpCapture::start(&client, "lan", HTTP_PORT, node.dir().join("client.pcap"));

    let created = Instant::now();
    node.apply(SERVICE_YAML);
    node.wait_until("the Service's ingress IP", STEP, || {
        ingress(&node).is_some()
    });
    let to_ingress = created.elapsed();
    let ip = ingress(&node).unwrap();
    let mut body = None;
    node.wait_until("curl from the segment reaches the pod", STEP, || {
        body = curl_from_client(&client, ip);
        body.is_some()
    });
    let to_curl = created.elapsed();
    println!(
        "figures: Service created -> ingress {:.0} ms, -> first successful curl from the segment {:.0} ms",
        to_ingress.as_secs_f64() * 1000.0,
        to_curl.as_secs_f64() * 1000.0
    );
    assert!(body.unwrap().contains("ok"), "the pod's /healthz answered");

    let address: Value = serde_json::from_str(&node.kubectl(&[
        "-n",
        "shop",
        "get",
        "dhcpaddress",
        "web",
        "-o",
        "json",
    ]))
    .unwrap();
    let mac: dhcpmanager_engine::dhcp::MacAddr =
        address["status"]["mac"].as_str().unwrap().parse().unwrap();
    assert_eq!(address["status"]["ip"], ip.to_string());
    assert_eq!(address["metadata"]["ownerReferences"][0]["kind"], "Service");
    let leases = lab.leases(Server::Kea).unwrap();
    let lease = active_lease(&leases, ip).expect("Kea holds the lease");
    assert_eq!(lease.hostname.as_deref(), Some("web.shop"));
    assert_eq!(lease.mac.as_deref(), Some(mac.to_string().as_str()));

    let frames = capture.stop();
    let seen = announced(&frames, ip);
    let lease_mac = mac.octets();
    assert!(
        !seen.answered_by.is_empty(),
        "the client's ARP request was answered"
    );
    assert!(
        seen.answered_by.iter().all(|m| *m == lease_mac),
        "ARP for {ip} answered only by the lease's MAC: {seen:02x?}"
    );
    assert!(
        !seen.gratuitous_from.is_empty(),
        "a gratuitous ARP when bound"
    );
    assert!(seen.gratuitous_from.iter().all(|m| *m == lease_mac));
    assert!(!seen.ip_packets_from.is_empty(), "HTTP replies captured");
    assert!(
        seen.ip_packets_from.iter().all(|m| *m == Some(lease_mac)),
        "every reply from {ip} carries the lease's MAC: {seen:02x?}"
    );

    // Delete: the garbage collector deletes the address, its finalizer releases the lease.
    node.kubectl(&["-n", "shop", "delete", "service", "web", "--timeout=120s"]);
    node.wait_until("the DhcpAddress gone", STEP, || {
        node.try_kubectl(&["-n", "shop", "get", "dhcpaddress", "web"])
            .is_err()
    });
    node.wait_until("Kea shows the lease released", STEP, || {
        active_lease(&lab.leases(Server::Kea).unwrap(), ip).is_none()
    });
    node.wait_until("the macvlan gone", STEP, || agent_links(&node).is_empty());
    let pool: Value =
        serde_json::from_str(&node.kubectl(&["get", "macpool", "default", "-o", "json"])).unwrap();
    assert_eq!(pool["status"]["used"], 0, "the MAC is back: {pool}");
    assert_eq!(
        curl_from_client(&client, ip),
        None,
        "nothing answers any more"
    );

    let file = segment.stop(&node);
    let releases = pcap::read(&file)
        .unwrap()
        .into_iter()
        .filter(|f| f.dhcp.chaddr == lease_mac && f.message_type() == Some(MessageType::Release))
        .count();
    assert!(releases >= 1, "DHCPRELEASE on delete");

    node.kubectl(&["delete", "namespace", "shop", "--timeout=120s"]);
    node.helm(&[
        "uninstall",
        "dhcpmanager",
        "--namespace",
        NAMESPACE,
        "--wait",
        "--timeout",
        "180s",
    ])
    .unwrap_or_else(|err| panic!("helm uninstall: {err}"));
    node.stop();
}
