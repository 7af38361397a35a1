//! A LoadBalancer Service on a real node, end to end: our image and chart (Service controller
//! on), a Deployment behind a Service of class `dhcpmanager.io/dhcp`, kube-proxy in iptables
//! mode. From a client on the DHCP segment (the lab server's namespace), `curl` of the ingress
//! IP reaches the pod; a capture on the client shows the lease's MAC, and no other, answering
//! ARP for the address and carrying the HTTP replies, although the node has an address of its
//! own in the leased subnet (the pod's replies follow the agent's connection marks). Deleting the
//! Service releases the lease (DHCPRELEASE), removes the macvlan, our nftables table and returns
//! the MAC. Prints how long Service → ingress and Service → first successful curl took (figures,
//! not assertions).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcpmanager_tests::arp_capture::{ArpCapture, announced};
use dhcpmanager_tests::bootp::MessageType;
use dhcpmanager_tests::lab::{SERVER_ADDR_1, Server, active_lease};
use dhcpmanager_tests::node::{self, Node, SegmentCapture};
use dhcpmanager_tests::node_web::{
    HTTP_PORT, WEB_NAMESPACE, agent_links, deploy_web, install_chart, service_manifest,
    uninstall_chart,
};
use dhcpmanager_tests::pcap;
use serde_json::Value;

const STEP: Duration = Duration::from_secs(120);
/// The node's own address on the parent, in the leased subnet (outside the DHCP range).
const NODE_ADDRESS: &str = "10.77.0.5/24";
/// The agent's nftables table (`dhcpmanager-<owner>`, owner `agent-<node name>`).
const AGENT_TABLE: &str = "dhcpmanager-agent-dm-node";

fn agent_table(node: &Node) -> bool {
    node.in_node("nft")
        .args(["list", "table", "ip", AGENT_TABLE])
        .output()
        .unwrap()
        .status
        .success()
}
const CURL_MAX_TIME: Duration = Duration::from_secs(3);

fn ingress(node: &Node) -> Option<Ipv4Addr> {
    dhcpmanager_tests::node_web::ingress(node, "web")
}

fn curl_from_client(client: &str, ip: Ipv4Addr) -> Option<String> {
    dhcpmanager_tests::node_web::curl_from_client(client, ip, CURL_MAX_TIME)
}

#[test]
fn a_load_balancer_service_is_reached_from_the_segment_through_the_lease_mac_only() {
    let node = node::node_with_our_image_and_kea();
    let lab = node.lab();
    let client = lab.server_ns(SERVER_ADDR_1);
    // The node has an address of its own in the leased subnet: its main table reaches the
    // client through the parent, which the replies of the pod (DNATed by kube-proxy) must not
    // take (docs/engine.md, "Replies of connections kube-proxy DNATs").
    let added = node
        .in_node("ip")
        .args(["addr", "replace", NODE_ADDRESS, "dev", "lab0"])
        .status()
        .unwrap();
    assert!(added.success(), "the node's own address on lab0");
    let segment = SegmentCapture::start(&node, "segment");

    install_chart(&node, 16);
    deploy_web(&node, STEP);
    let capture = ArpCapture::start(&client, "lan", HTTP_PORT, node.dir().join("client.pcap"));

    let created = Instant::now();
    node.apply(&service_manifest("web").to_string());
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
        WEB_NAMESPACE,
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
    assert!(
        agent_table(&node),
        "the agent marks the address's connections"
    );

    // Delete: the garbage collector deletes the address, its finalizer releases the lease.
    node.kubectl(&[
        "-n",
        WEB_NAMESPACE,
        "delete",
        "service",
        "web",
        "--timeout=120s",
    ]);
    node.wait_until("the DhcpAddress gone", STEP, || {
        node.try_kubectl(&["-n", WEB_NAMESPACE, "get", "dhcpaddress", "web"])
            .is_err()
    });
    node.wait_until("Kea shows the lease released", STEP, || {
        active_lease(&lab.leases(Server::Kea).unwrap(), ip).is_none()
    });
    node.wait_until("the macvlan gone", STEP, || agent_links(&node).is_empty());
    assert!(
        !agent_table(&node),
        "the agent's nftables table went with the address"
    );
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

    node.kubectl(&["delete", "namespace", WEB_NAMESPACE, "--timeout=120s"]);
    uninstall_chart(&node);
    node.stop();
}
