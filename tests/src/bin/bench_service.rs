//! The LoadBalancer Service benchmark: figures, no assertions.
//!
//! A private real kube-apiserver with the chart's RBAC (Service controller on), the garbage
//! collector of kube-controller-manager, the lab's Kea, and two agents ("nodes": the lab's agent
//! namespace and a second one on the same segment), `--time-scale 1`. Measured in one run:
//! - Service of class `dhcpmanager.io/dhcp` created → `status.loadBalancer.ingress` set, one at
//!   a time (each Service deleted and its address gone before the next), seen through a watch;
//! - the raw DHCP exchange floor (`bench::raw_dora`) beside it;
//! - failover: the owning node lost (its agent killed with SIGKILL and its segment link set
//!   down) → the address claimed by the other agent, and → the first answer (a TCP RST from a
//!   closed port) of the ingress IP to a client on the segment (the lab server's namespace), with the agents'
//!   `--lease-duration`, `--renew-interval`, `--takeover-grace` given here (default: the
//!   agent's defaults).
//!
//! Usage: `bench_service [--samples N] [--lease-duration 15s] [--renew-interval 5s]
//! [--takeover-grace 5s]`. Run as root.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use dhcpmanager_crds::DhcpAddress;
use dhcpmanager_tests::bench::cli;
use dhcpmanager_tests::bench::error::BenchError;
use dhcpmanager_tests::bench::figures::Latency;
use dhcpmanager_tests::bench::raw_dora;
use dhcpmanager_tests::bench::services::{
    create_and_wait, delete_and_wait_gone, kube_client, runtime,
};
use dhcpmanager_tests::cluster::{AgentOpts, Cluster};
use dhcpmanager_tests::garbage_collector::GarbageCollector;
use dhcpmanager_tests::lab::{SERVER_ADDR_1, Server, ServerOpts};
use dhcpmanager_tests::netns::in_netns;
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;

const NAMESPACE: &str = "bench";
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
const RAW_LINK_GROUP: u32 = 0x6261_7376; // "basv"

type Result<T> = std::result::Result<T, BenchError>;

struct Args {
    samples: usize,
    lease_duration: &'static str,
    renew_interval: &'static str,
    takeover_grace: &'static str,
}

fn parse_args() -> Result<Args> {
    let leak = |v: String| -> &'static str { Box::leak(v.into_boxed_str()) };
    let mut args = Args {
        samples: 20,
        lease_duration: "",
        renew_interval: "",
        takeover_grace: "",
    };
    for (flag, value) in cli::flag_values()? {
        match flag.as_str() {
            "--samples" => args.samples = value.parse().map_err(|_| BenchError::Usage)?,
            "--lease-duration" => args.lease_duration = leak(value),
            "--renew-interval" => args.renew_interval = leak(value),
            "--takeover-grace" => args.takeover_grace = leak(value),
            _ => return Err(BenchError::Usage),
        }
    }
    Ok(args)
}

fn service(name: &str) -> Service {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "type": "LoadBalancer", "loadBalancerClass": "dhcpmanager.io/dhcp",
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        },
    }))
    .expect("a Service")
}

/// Whether the node holding `ip` answers from the client: a TCP connection to a closed port is
/// refused by its kernel (no ping on this machine; nothing listens on port 9).
fn ping(client_ns: &str, ip: Ipv4Addr) -> bool {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            client_ns,
            "curl",
            "-sS",
            "--connect-timeout",
            "0.3",
        ])
        .arg(format!("http://{ip}:9/"))
        .output()
        // 7: could not connect, here at once (refused); 28 would be the timeout.
        .is_ok_and(|out| out.status.code() == Some(7))
}

fn main() {
    let args = cli::args_or_exit(parse_args());
    if let Err(error) = run(&args) {
        eprintln!("bench_service: {error}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<()> {
    let mut cluster = Cluster::start_with(&["agent.serviceController.enabled=true"]);
    cluster.lab.start(
        Server::Kea,
        ServerOpts {
            lease: 600,
            ..ServerOpts::default()
        },
    )?;
    let _gc = GarbageCollector::start(&cluster.cp);
    let defaults = AgentOpts::default();
    let pick = |given: &'static str, default: &'static str| {
        if given.is_empty() { default } else { given }
    };
    let opts = AgentOpts {
        time_scale: 1.0,
        // Not given: the agent's defaults (docs/configuration.md).
        lease_duration: pick(args.lease_duration, "15s"),
        renew_interval: pick(args.renew_interval, "5s"),
        takeover_grace: pick(args.takeover_grace, "5s"),
        extra: vec!["--service-controller".into()],
        ..defaults
    };
    let node_a_ns = cluster.lab.agent_ns();
    let node_b_ns = cluster.lab.add_node(2)?;
    let a = cluster.start_agent("node-a", &node_a_ns, &opts);
    let b = cluster.start_agent("node-b", &node_b_ns, &opts);
    cluster.kubectl_ok(&["create", "namespace", NAMESPACE]);
    let rt = runtime();
    let client = rt.block_on(kube_client(&cluster.cp.kubeconfig_path()))?;
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let addresses: Api<DhcpAddress> = Api::namespaced(client.clone(), NAMESPACE);

    // --- Service created -> ingress, one at a time -------------------------------------------
    let (mut times, mut failed) = (Vec::new(), 0);
    for i in 0..args.samples {
        let name = format!("svc-{i}");
        match rt.block_on(create_and_wait(&services, &service(&name), STEP_TIMEOUT)) {
            Ok((took, _)) => times.push(took),
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
    let to_ingress = Latency::of(times, failed);

    // --- the raw exchange floor, same server, same segment -----------------------------------
    let parent = cluster.lab.parent().to_string();
    let raw = in_netns(&node_a_ns, || {
        rt.block_on(raw_dora::raw_one_by_one(
            &parent,
            args.samples,
            RAW_LINK_GROUP,
            STEP_TIMEOUT,
            |i| [0x02, 0xba, 0x5e, 0x00, (i >> 8) as u8, i as u8],
        ))
    })??;
    let raw_exchange = Latency::of(raw.exchange, raw.failed);

    // --- failover: the owning node lost ------------------------------------------------------
    let (_, ip) = rt.block_on(create_and_wait(
        &services,
        &service("failover"),
        STEP_TIMEOUT,
    ))?;
    let owner = rt
        .block_on(addresses.get("failover"))?
        .status
        .and_then(|s| s.node)
        .ok_or_else(|| BenchError::NotReady("the failover address has no owner".into()))?;
    let client_ns = cluster.lab.server_ns(SERVER_ADDR_1);
    let started = Instant::now();
    while !ping(&client_ns, ip) {
        if started.elapsed() > STEP_TIMEOUT {
            return Err(BenchError::NotReady(format!("{ip} never answered a ping")));
        }
    }
    let (victim, victim_ns) = if owner == "node-a" {
        (a, node_a_ns.clone())
    } else {
        (b, node_b_ns.clone())
    };
    let lost_at = Instant::now();
    cluster.signal_agent(victim, libc::SIGKILL);
    let down = Command::new("ip")
        .args(["-n", &victim_ns, "link", "set", "lab0", "down"])
        .status()
        .map_err(|e| BenchError::Io("ip link set down".into(), e))?;
    if !down.success() {
        return Err(BenchError::NotReady("could not cut the owner off".into()));
    }
    let mut claimed = None;
    let mut answered = None;
    while answered.is_none() || claimed.is_none() {
        if lost_at.elapsed() > Duration::from_secs(300) {
            return Err(BenchError::Timeout("no takeover within 300 s".into()));
        }
        if claimed.is_none() {
            let node = rt
                .block_on(addresses.get("failover"))?
                .status
                .and_then(|s| s.node);
            if node.is_some_and(|n| n != owner) {
                claimed = Some(lost_at.elapsed());
            }
        }
        if answered.is_none() && ping(&client_ns, ip) {
            answered = Some(lost_at.elapsed());
        }
    }
    let claimed = claimed.expect("set in the loop");
    let answered = answered.expect("set in the loop");

    println!(
        "bench_service: {} samples, agents with --lease-duration {} --renew-interval {} --takeover-grace {}",
        args.samples, opts.lease_duration, opts.renew_interval, opts.takeover_grace
    );
    println!(
        "{}",
        to_ingress.line("Service created -> ingress IP in status")
    );
    println!(
        "{}",
        raw_exchange.line("raw DHCP exchange (DISCOVER -> ACK)")
    );
    println!(
        "failover: owner {owner} lost -> address claimed by the other agent {:.1} s, -> first answer (TCP RST) from {ip} {:.1} s",
        claimed.as_secs_f64(),
        answered.as_secs_f64()
    );
    Ok(())
}
