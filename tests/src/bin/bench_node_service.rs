//! The LoadBalancer Service benchmark on the real node: figures, no assertions.
//!
//! The one-node cluster of the node tests (kubelet, containerd, kube-proxy in iptables mode;
//! `tests/k8s/node.sh`), our image and chart with the Service controller on, Kea on the lab
//! segment, a web Deployment. One Service at a time (each deleted and its address released
//! before the next), measured from the create call:
//! - → `status.loadBalancer.ingress` set (seen through a watch);
//! - → the first successful `curl http://<ingress>/healthz` from a client on the DHCP segment
//!   (the lab server's namespace), i.e. the agent announced the address and kube-proxy programmed
//!   its rules: what a user waits for;
//! - beside them, the raw DHCP exchange (DISCOVER → ACK) from the node's namespace, same server,
//!   same run.
//!
//! Failover (owner node lost → first answer) needs two nodes: `bench_service` measures it with
//! two agents.
//!
//! Usage: `bench_node_service [--samples N]` (default 20). Run as root; builds the image from the
//! debug binaries like the node tests (`cargo build --workspace --bins` first).

use std::time::{Duration, Instant};

use dhcpmanager_crds::DhcpAddress;
use dhcpmanager_tests::bench::cli;
use dhcpmanager_tests::bench::error::BenchError;
use dhcpmanager_tests::bench::figures::{self, Latency};
use dhcpmanager_tests::bench::raw_dora;
use dhcpmanager_tests::bench::services::{
    create_and_wait, delete_and_wait_gone, kube_client, runtime,
};
use dhcpmanager_tests::lab::SERVER_ADDR_1;
use dhcpmanager_tests::netns::in_netns;
use dhcpmanager_tests::node::{self, LAB_PARENT, NODE_NETNS};
use dhcpmanager_tests::node_web::{
    WEB_NAMESPACE, curl_from_client, deploy_web, install_chart, service_manifest, uninstall_chart,
};
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;

const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// One curl attempt; a refused connection (kube-proxy's rules not there yet) fails at once.
const CURL_ATTEMPT: Duration = Duration::from_millis(500);
const RAW_LINK_GROUP: u32 = 0x6261_6e73; // "bans"

type Result<T> = std::result::Result<T, BenchError>;

fn parse_args() -> Result<usize> {
    let mut samples = 20;
    for (flag, value) in cli::flag_values()? {
        match flag.as_str() {
            "--samples" => samples = value.parse().map_err(|_| BenchError::Usage)?,
            _ => return Err(BenchError::Usage),
        }
    }
    Ok(samples)
}

fn main() {
    let samples = cli::args_or_exit(parse_args());
    if let Err(error) = run(samples) {
        eprintln!("bench_node_service: {error}");
        std::process::exit(1);
    }
}

fn run(samples: usize) -> Result<()> {
    let node = node::node_with_our_image_and_kea();
    let lab = node.lab();
    let client_ns = lab.server_ns(SERVER_ADDR_1);
    install_chart(&node, 16);
    deploy_web(&node, STEP_TIMEOUT);

    let rt = runtime();
    let client = rt.block_on(kube_client(&node.cp().kubeconfig_path()))?;
    let services: Api<Service> = Api::namespaced(client.clone(), WEB_NAMESPACE);
    let addresses: Api<DhcpAddress> = Api::namespaced(client, WEB_NAMESPACE);

    let (mut to_ingress, mut to_curl, mut failed) = (Vec::new(), Vec::new(), 0);
    for i in 0..samples {
        let name = format!("web-{i}");
        let service: Service = serde_json::from_value(service_manifest(&name))
            .map_err(|e| BenchError::Protocol(format!("the Service manifest: {e}")))?;
        // The create call is the origin of both figures.
        let created = Instant::now();
        let sample = rt
            .block_on(create_and_wait(&services, &service, STEP_TIMEOUT))
            .and_then(|(took, ip)| {
                while curl_from_client(&client_ns, ip, CURL_ATTEMPT).is_none() {
                    if created.elapsed() > STEP_TIMEOUT {
                        return Err(BenchError::Timeout(format!("no answer from {ip}")));
                    }
                }
                Ok((took, created.elapsed()))
            });
        match sample {
            Ok((ingress, curl)) => {
                to_ingress.push(ingress);
                to_curl.push(curl);
            }
            Err(error) => {
                eprintln!("sample {i}: {error}");
                failed += 1;
            }
        }
        rt.block_on(delete_and_wait_gone(
            &services,
            &addresses,
            &name,
            STEP_TIMEOUT,
        ))?;
    }

    let raw = in_netns(NODE_NETNS, || {
        rt.block_on(raw_dora::raw_one_by_one(
            LAB_PARENT,
            samples,
            RAW_LINK_GROUP,
            STEP_TIMEOUT,
            |i| [0x02, 0xba, 0x6e, 0x00, (i >> 8) as u8, i as u8],
        ))
    })??;

    println!(
        "bench_node_service: {} on {}, {samples} samples, one Service at a time",
        figures::date_utc(),
        figures::machine()
    );
    println!(
        "{}",
        Latency::of(to_ingress, failed).line("Service created -> ingress IP in status")
    );
    println!(
        "{}",
        Latency::of(to_curl, failed).line("Service created -> first successful curl")
    );
    println!(
        "{}",
        Latency::of(raw.exchange, raw.failed).line("raw DHCP exchange (DISCOVER -> ACK)")
    );

    node.kubectl(&["delete", "namespace", WEB_NAMESPACE, "--timeout=120s"]);
    uninstall_chart(&node);
    node.stop();
    Ok(())
}
