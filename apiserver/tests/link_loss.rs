//! A bound address whose macvlan vanishes gets it back and keeps its lease, against Kea in the
//! lab: after `ip link del` of the address's link, and after its parent interface is deleted and
//! re-created. The link comes back with the same name, MAC and owner alias; the client re-confirms
//! the same IP (INIT-REBOOT), which Kea's lease database shows as a later expiry; each restoration
//! is counted in `dhcpmanager_links_restored_total`; and while the link cannot come back (no
//! parent), `/v1/status` says Pending, never Bound.
//!
//! Needs root and Kea (scripts/install-deps.sh).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use dhcpmanager_apiserver::backend::standalone::{StandaloneBackend, StandaloneOptions};
use dhcpmanager_apiserver::backend::{Allocation, AllocationState, Backend};
use dhcpmanager_apiserver::http::metrics::Metrics;
use dhcpmanager_apiserver::{Config, MacAddr};
use dhcpmanager_tests::lab::{Lab, Server, ServerOpts, active_lease};
use dhcpmanager_tests::netns::in_netns;
use dhcpmanager_tests::prometheus;

/// Safety net for polling (not a timing assertion).
const POLL_LIMIT: Duration = Duration::from_secs(30);

/// `ip -d -o link show NAME` in `ns`, or None when there is no such link.
fn link_details(ns: &str, name: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["-n", ns, "-d", "-o", "link", "show", name])
        .output()
        .expect("ip link");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The ifindex at the start of an `ip -o link` line.
fn index_of(details: &str) -> u32 {
    details.split(':').next().unwrap().trim().parse().unwrap()
}

/// The alias in an `ip -d -o link` line.
fn alias_of(details: &str) -> String {
    details
        .split(" alias ")
        .nth(1)
        .expect("an alias")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn ip_cmd(ns: &str, args: &[&str]) {
    let out = Command::new("ip")
        .arg("-n")
        .arg(ns)
        .args(args)
        .output()
        .expect("ip");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

/// Polls `done` (async) until it holds; the limit is a safety net.
async fn wait_for<T>(what: &str, mut done: impl AsyncFnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = done().await {
            return value;
        }
        assert!(started.elapsed() < POLL_LIMIT, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The one allocation as `/v1/status` shows it.
async fn the_allocation(backend: &StandaloneBackend) -> Allocation {
    let status = backend.status().await.unwrap();
    assert_eq!(status.allocations.len(), 1, "{status:?}");
    status.allocations[0].clone()
}

fn restored(backend: &StandaloneBackend) -> f64 {
    let text = Metrics::new(backend.engine_metrics()).encode();
    prometheus::sample(&text, "dhcpmanager_links_restored_total")
        .unwrap_or_else(|| panic!("no links_restored in:\n{text}"))
}

/// Kea's expiry of `ip`'s active lease, once it is later than `after` (a renewal).
fn expiry_after(lab: &Lab, ip: Ipv4Addr, after: u64) -> u64 {
    let leases = lab.wait_for_leases(Server::Kea, "a later expiry", POLL_LIMIT, |leases| {
        active_lease(leases, ip).is_some_and(|l| l.expires > after)
    });
    active_lease(&leases, ip).unwrap().expires
}

/// Waits until the wall clock is in a later second than `unix`: Kea records expiries in whole
/// seconds, so a renewal in the same second as the last one would not show.
async fn next_second_after(unix: u64) {
    while (chrono::Utc::now().timestamp() as u64) <= unix {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn a_bound_address_gets_its_vanished_link_back_and_keeps_its_lease() {
    let lab = Lab::up().expect("lab up");
    lab.start(
        Server::Kea,
        ServerOpts {
            lease: 600,
            ..ServerOpts::default()
        },
    )
    .expect("kea");
    let parent = lab.add_parent(1).expect("a parent of its own");
    let ns = lab.agent_ns();
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "dm-link-loss-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    let mac = MacAddr([0x02, 0x77, 0x5c, 0, 0, 1]);
    let options = StandaloneOptions::from_config(&Config {
        interface: parent.clone(),
        state_dir: dir.clone(),
        macs: vec![mac],
        spare_links: 0,
        // A macvlan per address (linkless addresses have no link to lose).
        linkless: false,
        ..Config::default()
    });

    in_netns(&ns, {
        let (lab, ns) = (&lab, ns.clone());
        move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let backend = StandaloneBackend::open(options).await.expect("opens");
                let deadline = Instant::now() + Duration::from_secs(10);
                let bound = backend.allocate("default/web", deadline).await.unwrap();
                let ip = bound.ip.unwrap();
                let name = bound.interface.name.clone();
                let first = link_details(&ns, &name).expect("the link");
                let alias = alias_of(&first);
                assert!(alias.starts_with("dhcpmanager:standalone-"), "{alias}");
                let leases = lab.wait_for_leases(Server::Kea, "the lease", POLL_LIMIT, |l| {
                    active_lease(l, ip).is_some()
                });
                let expires = active_lease(&leases, ip).unwrap().expires;
                assert_eq!(restored(&backend), 0.0);

                // 1. `ip link del` of the address's link.
                next_second_after(chrono::Utc::now().timestamp() as u64).await;
                ip_cmd(&ns, &["link", "del", &name]);
                let back = wait_for("the link re-created", async || {
                    link_details(&ns, &name).filter(|d| index_of(d) != index_of(&first))
                })
                .await;
                assert!(
                    back.contains(&format!("link/ether {mac}")),
                    "same MAC: {back}"
                );
                assert_eq!(alias_of(&back), alias, "same owner alias");
                assert!(back.contains("addrgenmode none"), "{back}");
                let after = wait_for("Bound again on the new link", async || {
                    let a = the_allocation(&backend).await;
                    (a.state == AllocationState::Bound && a.interface.index == index_of(&back))
                        .then_some(a)
                })
                .await;
                assert_eq!(after.ip, Some(ip), "same IP");
                let renewed = expiry_after(lab, ip, expires);
                assert_eq!(restored(&backend), 1.0);
                assert_eq!(backend.ip_changes(), 0);

                // 2. The parent goes away (and the link with it): the link cannot come back, and
                // the address is not shown Bound meanwhile.
                next_second_after(chrono::Utc::now().timestamp() as u64).await;
                ip_cmd(&ns, &["link", "del", &parent]);
                let missing = wait_for("Pending while the link is missing", async || {
                    let a = the_allocation(&backend).await;
                    (a.state == AllocationState::Pending).then_some(a)
                })
                .await;
                assert_eq!(missing.ip, Some(ip), "the lease is still shown");
                assert!(link_details(&ns, &name).is_none());
                let live = backend.manager().status(&missing.id).unwrap();
                assert!(live.link_missing);
                assert!(
                    live.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("vanished")),
                    "{live:?}"
                );

                // The parent is re-created: the link follows, same IP, renewed again.
                assert_eq!(lab.add_parent(1).expect("the parent again"), parent);
                let again = wait_for("the link back on the new parent", async || {
                    link_details(&ns, &name)
                })
                .await;
                assert_eq!(alias_of(&again), alias);
                let after = wait_for("Bound again", async || {
                    let a = the_allocation(&backend).await;
                    (a.state == AllocationState::Bound && a.interface.index == index_of(&again))
                        .then_some(a)
                })
                .await;
                assert_eq!(after.ip, Some(ip));
                expiry_after(lab, ip, renewed);
                assert_eq!(restored(&backend), 2.0);
                assert_eq!(backend.ip_changes(), 0);
                backend.shutdown().await;
            });
        }
    })
    .expect("agent namespace");
    std::fs::remove_dir_all(&dir).unwrap();
}
