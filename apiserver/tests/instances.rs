//! Several dhcpmanager instances on one host, against Kea in the lab: two standalone backends on
//! one parent, a third on a second parent, an agent-like lease manager and a `lease --hold`
//! process, started, crashed, stopped and restarted in several orders. Nobody ever loses a link
//! (every party's link keeps its ifindex: not deleted and re-made), every address stays Bound with
//! the same IP, and a second backend on a state directory in use refuses to start and changes
//! nothing, neither on disk nor on the network.
//!
//! Each backend runs on a tokio runtime of its own, all built on one thread inside the lab's
//! agent namespace (worker threads inherit it); dropping a runtime ends its tasks at once, like a
//! crash. Needs root, Kea and the workspace's binaries (`cargo build --workspace --bins`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dhcpmanager_apiserver::Config;
use dhcpmanager_apiserver::MacAddr;
use dhcpmanager_apiserver::backend::standalone::{
    StandaloneBackend, StandaloneError, StandaloneOptions,
};
use dhcpmanager_apiserver::backend::{Allocation, AllocationState, Backend};
use dhcpmanager_engine::dhcp::{ClientConfig, MacAddr as WireMac};
use dhcpmanager_engine::instance::InstanceId;
use dhcpmanager_engine::manager::{AddressSpec, LeaseManager, ManagerConfig, wait_bound};
use dhcpmanager_tests::binaries;
use dhcpmanager_tests::lab::{Lab, Server, ServerOpts, active_lease};
use dhcpmanager_tests::netns::in_netns;
use dhcpmanager_tests::process::JsonLinesProcess;
use tokio::runtime::Runtime;

/// Safety net for one exchange with a server that answers at once (not a timing assertion).
const STEP: Duration = Duration::from_secs(20);

fn mac(instance: u8, n: u8) -> MacAddr {
    MacAddr([0x02, 0x77, 0x5b, instance, 0x00, n])
}

fn state_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "dm-instances-{label}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn options(parent: &str, dir: &Path, macs: Vec<MacAddr>) -> StandaloneOptions {
    StandaloneOptions::from_config(&Config {
        interface: parent.to_string(),
        state_dir: dir.to_path_buf(),
        macs,
        spare_links: 0,
        // A macvlan per address: the links are what this test is about.
        linkless: false,
        ..Config::default()
    })
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Every macvlan of the agent namespace: MAC → (name, ifindex).
fn links(ns: &str) -> BTreeMap<[u8; 6], (String, u32)> {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show"])
        .output()
        .expect("ip link");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(": ");
            let index = fields.next()?.trim().parse().ok()?;
            let name = fields.next()?.split('@').next()?.to_string();
            let mac: MacAddr = line
                .split("link/ether ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            name.starts_with("dm").then_some((mac.0, (name, index)))
        })
        .collect()
}

/// The links of `parties` (by MAC) as they are now; each must exist.
fn snapshot(ns: &str, parties: &[[u8; 6]]) -> BTreeMap<[u8; 6], (String, u32)> {
    let all = links(ns);
    parties
        .iter()
        .map(|mac| {
            let link = all
                .get(mac)
                .unwrap_or_else(|| panic!("no link with MAC {mac:02x?}: {all:?}"))
                .clone();
            (*mac, link)
        })
        .collect()
}

/// Every file under `dir` with its contents, for "changed nothing".
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut found = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    found
}

async fn open(options: StandaloneOptions) -> Arc<StandaloneBackend> {
    StandaloneBackend::open(options)
        .await
        .expect("the standalone backend opens")
}

async fn allocate(backend: &StandaloneBackend, service: &str) -> Allocation {
    let allocation = backend
        .allocate(service, Instant::now() + STEP)
        .await
        .expect("an address");
    assert_eq!(allocation.state, AllocationState::Bound);
    allocation
}

/// The allocations of `backend` as (MAC, IP), all Bound.
async fn bound(backend: &StandaloneBackend) -> Vec<([u8; 6], std::net::Ipv4Addr)> {
    let status = backend.status().await.unwrap();
    status
        .allocations
        .iter()
        .map(|a| {
            assert_eq!(a.state, AllocationState::Bound, "{a:?}");
            (a.mac.unwrap().0, a.ip.unwrap())
        })
        .collect()
}

#[test]
fn instances_on_one_host_never_take_each_others_links() {
    let lab = Lab::up().expect("lab up");
    lab.start(
        Server::Kea,
        ServerOpts {
            lease: 60,
            ..ServerOpts::default()
        },
    )
    .expect("kea");
    let second_parent = lab.add_parent(1).expect("a second parent");
    let ns = lab.agent_ns();
    let (d1, d2, d3) = (state_dir("one"), state_dir("two"), state_dir("three"));

    // `lease --hold` first: every later start must leave its link alone.
    let held_mac = mac(9, 1);
    let held_state = d1.with_extension("lease.json");
    let mut held = {
        let mut cmd = lab.run_in_agent(binaries::operator());
        // --assign: the address on a macvlan of its own (without it, `lease` runs linkless).
        cmd.args([
            "lease",
            "--parent",
            lab.parent(),
            "--hold",
            "--assign",
            "--mac",
        ])
        .arg(held_mac.to_string())
        .arg("--state")
        .arg(&held_state);
        JsonLinesProcess::spawn(cmd).expect("lease --hold")
    };
    held.wait_for("lease --hold bound", STEP, |v| v["event"] == "bound");

    let parent = lab.parent().to_string();
    let (ips, parties) = in_netns(&ns, {
        let ns = ns.clone();
        let (d1, d2, d3) = (d1.clone(), d2.clone(), d3.clone());
        move || {
            let mut parties = vec![held_mac.0];
            let (rt1, rt2, rt3, rt_agent) = (runtime(), runtime(), runtime(), runtime());
            let one = |dir: &Path| options(&parent, dir, vec![mac(1, 1), mac(1, 2)]);
            let two = |dir: &Path| options(&parent, dir, vec![mac(2, 1)]);
            let three = |dir: &Path| options(&second_parent, dir, vec![mac(3, 1)]);

            // Start in turn: each start (and its orphan sweep) keeps everybody's links.
            let b1 = rt1.block_on(open(one(&d1)));
            rt1.block_on(allocate(&b1, "default/one"));
            parties.push(mac(1, 1).0);
            let before = snapshot(&ns, &parties);
            let b2 = rt2.block_on(open(two(&d2)));
            assert_eq!(snapshot(&ns, &parties), before, "b2's start");
            rt2.block_on(allocate(&b2, "default/two"));
            parties.push(mac(2, 1).0);
            let b3 = rt3.block_on(open(three(&d3)));
            rt3.block_on(allocate(&b3, "default/three"));
            parties.push(mac(3, 1).0);

            // An agent-like manager on the first parent, with its periodic sweep.
            let agent_mac = mac(4, 1);
            let agent = rt_agent.block_on(async {
                let agent = LeaseManager::new(
                    InstanceId::derived("agent", "node-1"),
                    ManagerConfig {
                        linkless: false,
                        ..ManagerConfig::default()
                    },
                    Arc::new(|_: &str, _: Option<&_>| {}),
                )
                .unwrap();
                let mut client = ClientConfig::new(WireMac(agent_mac.0));
                client.hostname = Some("svc.default".into());
                let spec = AddressSpec {
                    key: "default/svc".into(),
                    parent: parent.clone(),
                    client,
                };
                let mut status = agent.start(spec, None).await.unwrap();
                wait_bound(&mut status, STEP).await.unwrap();
                assert_eq!(agent.remove_orphan_links(|_| false).await.unwrap(), 0);
                agent
            });
            parties.push(agent_mac.0);
            let all_up = snapshot(&ns, &parties);
            let ips_before = [
                rt1.block_on(bound(&b1)),
                rt2.block_on(bound(&b2)),
                rt3.block_on(bound(&b3)),
            ];

            // A second backend on b1's state directory refuses and changes nothing.
            let files_before = files(&d1);
            match rt_agent.block_on(StandaloneBackend::open(one(&d1))) {
                Err(StandaloneError::StateDir(error)) => {
                    let text = error.to_string();
                    assert!(text.contains("is in use by another process (pid"), "{text}");
                    assert!(text.contains(&d1.display().to_string()), "{text}");
                }
                Err(other) => panic!("expected StateDir, got {other}"),
                Ok(_) => panic!("a second backend opened a locked state directory"),
            }
            assert_eq!(files(&d1), files_before, "nothing changed on disk");
            assert_eq!(
                snapshot(&ns, &parties),
                all_up,
                "nothing changed on the network"
            );
            assert_eq!(rt1.block_on(bound(&b1)), ips_before[0]);

            // Stops in several orders: b2 crashes, b3 shuts down cleanly, the agent stops all.
            drop(b2);
            drop(rt2);
            assert_eq!(snapshot(&ns, &parties), all_up, "after b2's crash");
            rt3.block_on(b3.shutdown());
            drop(b3);
            drop(rt3);
            assert_eq!(snapshot(&ns, &parties), all_up, "after b3's shutdown");
            rt_agent.block_on(agent.stop_all()).unwrap();
            parties.retain(|m| *m != agent_mac.0);
            assert!(
                !links(&ns).contains_key(&agent_mac.0),
                "the agent's own link"
            );
            let after_agent = snapshot(&ns, &parties);
            assert_eq!(
                after_agent,
                all_up
                    .iter()
                    .filter(|(m, _)| **m != agent_mac.0)
                    .map(|(m, l)| (*m, l.clone()))
                    .collect(),
                "the agent's stop_all took only its own link"
            );

            // Restarts: b2 after its crash, b3 after its shutdown, then b1 crashes and restarts
            // while the others run. Each start sweeps, each keeps everybody's links.
            let rt2 = runtime();
            let b2 = rt2.block_on(open(two(&d2)));
            let rt3 = runtime();
            let b3 = rt3.block_on(open(three(&d3)));
            drop(b1);
            drop(rt1);
            let rt1 = runtime();
            let b1 = rt1.block_on(open(one(&d1)));
            assert_eq!(snapshot(&ns, &parties), after_agent, "after the restarts");
            // Resumed clients re-request their address (INIT-REBOOT): same IPs, Bound again.
            let rebound = |rt: &Runtime, backend: &StandaloneBackend, label: &str| {
                let started = Instant::now();
                loop {
                    let status = rt.block_on(backend.status()).unwrap();
                    if status
                        .allocations
                        .iter()
                        .all(|a| a.state == AllocationState::Bound)
                    {
                        return rt.block_on(bound(backend));
                    }
                    assert!(started.elapsed() < STEP, "{label} never bound again");
                    std::thread::sleep(Duration::from_millis(50));
                }
            };
            assert_eq!(rebound(&rt1, &b1, "b1"), ips_before[0]);
            assert_eq!(rebound(&rt2, &b2, "b2"), ips_before[1]);
            assert_eq!(rebound(&rt3, &b3, "b3"), ips_before[2]);
            let ips: Vec<_> = ips_before.iter().flatten().map(|(_, ip)| *ip).collect();
            for (rt, backend) in [(&rt1, &b1), (&rt2, &b2), (&rt3, &b3)] {
                rt.block_on(backend.shutdown());
            }
            (ips, parties)
        }
    })
    .expect("agent namespace");

    // `lease --hold` kept its link through all of it, and is still bound.
    assert!(links(&ns).contains_key(&held_mac.0));
    assert!(parties.contains(&held_mac.0));
    let leases = lab.leases(Server::Kea).unwrap();
    for ip in &ips {
        assert!(active_lease(&leases, *ip).is_some(), "{ip} active in Kea");
    }
    // SIGTERM: stop without releasing, removing its link.
    let status = held.signal_and_wait(15);
    assert!(status.success(), "{status:?}");
    for dir in [&d1, &d2, &d3] {
        std::fs::remove_dir_all(dir).unwrap();
    }
    let _ = std::fs::remove_file(&held_state);
}
