//! The standalone backend against real DHCP servers in the lab (tests/lab): allocations bind and
//! show up in the server's lease database with the original's hostname, releases free them, a
//! timeout leaves nothing behind, a restart resumes the same addresses without DISCOVER, a crash
//! mid-POST is cleaned up at the next start, concurrent allocations never share a MAC,
//! spare links are taken by POSTs, refilled, send nothing while idle and never outlive a start,
//! and the engine's renewals, packets and IP changes show on /metrics.
//!
//! Each "process lifetime" of the backend is one tokio runtime built on a thread inside the lab's
//! agent namespace; dropping that runtime ends every task at once, like a crash would.
//! Needs root and the Debian DHCP servers (scripts/install-deps.sh).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use dhcpmanager_apiserver::backend::standalone::store::{Phase, Store};
use dhcpmanager_apiserver::backend::standalone::{StandaloneBackend, StandaloneOptions};
use dhcpmanager_apiserver::backend::{AllocationState, Backend, BackendError};
use dhcpmanager_apiserver::http::metrics::Metrics;
use dhcpmanager_apiserver::{Config, MacAddr, http};
use dhcpmanager_engine::dhcp::State;
use dhcpmanager_tests::bootp::MessageType;
use dhcpmanager_tests::lab::{Lab, SERVER_ADDR_2, Server, ServerOpts, active_lease};
use dhcpmanager_tests::netns::in_netns;
use dhcpmanager_tests::prometheus;

/// Safety net for an exchange with a server that answers at once (not a timing assertion).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Safety net for polling a lease database or a client state.
const POLL_LIMIT: Duration = Duration::from_secs(20);

fn pool_mac(index: u8) -> MacAddr {
    MacAddr([0x02, 0x77, 0x5a, 0x00, 0x00, index])
}

fn pool(count: u8) -> Vec<MacAddr> {
    (1..=count).map(pool_mac).collect()
}

fn in_lab_subnet(ip: Ipv4Addr) -> bool {
    ip.octets()[..3] == [10, 77, 0]
}

fn state_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "dm-standalone-{label}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The default configuration: linkless addresses (no macvlans, so no spares either).
fn options(lab: &Lab, state_dir: &Path, macs: Vec<MacAddr>) -> StandaloneOptions {
    configured(lab, state_dir, macs, 0, true)
}

/// A macvlan per address (`linkless = false`) with `spare_links` made ahead of time.
fn with_spares(
    lab: &Lab,
    state_dir: &Path,
    macs: Vec<MacAddr>,
    spare_links: usize,
) -> StandaloneOptions {
    configured(lab, state_dir, macs, spare_links, false)
}

fn configured(
    lab: &Lab,
    state_dir: &Path,
    macs: Vec<MacAddr>,
    spare_links: usize,
    linkless: bool,
) -> StandaloneOptions {
    let config = Config {
        interface: lab.parent().to_string(),
        state_dir: state_dir.to_path_buf(),
        macs,
        spare_links,
        linkless,
        ..Config::default()
    };
    StandaloneOptions::from_config(&config)
}

/// One lifetime of the backend: `f` runs on a runtime inside the agent namespace; when it
/// returns the runtime is dropped and every DHCP client task with it (a crash, not a shutdown).
fn lifetime<T, F>(lab: &Lab, f: F) -> T
where
    T: Send,
    F: FnOnce(&tokio::runtime::Runtime) -> T + Send,
{
    in_netns(&lab.agent_ns(), move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        f(&runtime)
    })
    .expect("agent namespace")
}

async fn open(options: StandaloneOptions) -> Arc<StandaloneBackend> {
    StandaloneBackend::open(options)
        .await
        .expect("the standalone backend opens")
}

fn deadline() -> Instant {
    Instant::now() + REQUEST_TIMEOUT
}

/// A deadline no step of a test waits for.
fn deadline_far() -> Instant {
    Instant::now() + Duration::from_secs(120)
}

/// Polls `done` on the runtime until it holds (safety net: [`POLL_LIMIT`]).
async fn wait_until(done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < POLL_LIMIT, "condition never held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Names of our macvlans (dm + hash) in the agent namespace, sorted.
fn our_links(lab: &Lab) -> Vec<String> {
    our_link_macs(lab).into_keys().collect()
}

/// Ids of the allocations on disk (reserved record files without a record are not allocations).
fn stored_ids(state_dir: &Path) -> Vec<String> {
    let loaded = Store::peek(state_dir).expect("the store reads");
    let mut ids: Vec<String> = loaded.allocations.into_iter().map(|a| a.id).collect();
    ids.sort();
    ids
}

fn start_server(lab: &Lab, server: Server) {
    let lease = if server == Server::Dnsmasq { 120 } else { 60 };
    lab.start(
        server,
        ServerOpts {
            lease,
            ..Default::default()
        },
    )
    .expect("server starts");
}

fn allocate_release_on(server: Server) {
    let lab = Lab::up().expect("lab up");
    start_server(&lab, server);
    let dir = state_dir(server.name());
    let macs = pool(3);

    let (first, second) = lifetime(&lab, |rt| {
        rt.block_on(async {
            // Every free MAC gets a spare link: both POSTs run on links made before they came.
            let backend = open(with_spares(&lab, &dir, macs.clone(), 3)).await;
            wait_until(|| backend.spare_interfaces().len() == 3).await;
            let spares = backend.spare_interfaces();
            let first = backend.allocate("default/web", deadline()).await.unwrap();
            // Not idempotent per service: MetalLB may hold several pending addresses for one.
            let second = backend.allocate("default/web", deadline()).await.unwrap();
            for allocation in [&first, &second] {
                assert!(
                    spares.contains(&allocation.interface.name),
                    "{} is not one of the spares {spares:?}",
                    allocation.interface.name
                );
            }
            assert_eq!(backend.spare_interfaces().len(), 1, "no free MAC to refill");
            let status = backend.status().await.unwrap();
            assert_eq!(status.allocations.len(), 2);
            assert!(
                status
                    .allocations
                    .iter()
                    .all(|a| a.state == AllocationState::Bound)
            );
            assert_eq!(status.available_macs.len(), 1);
            assert_eq!(
                backend.lease_cidrs().await.unwrap(),
                vec!["10.77.0.0/24".to_string()]
            );
            (first, second)
        })
    });
    for allocation in [&first, &second] {
        assert!(in_lab_subnet(allocation.ip.unwrap()), "{allocation:?}");
        assert_eq!(allocation.hostname, "web.default");
        assert_eq!(allocation.state, AllocationState::Bound);
        assert!(allocation.lease.is_some());
    }
    assert_ne!(first.ip, second.ip);
    assert_ne!(first.mac, second.mac);
    assert_ne!(first.id, second.id);
    let (ip1, ip2) = (first.ip.unwrap(), second.ip.unwrap());
    let leases = lab.wait_for_leases(server, "both leases active", POLL_LIMIT, |l| {
        active_lease(l, ip1).is_some() && active_lease(l, ip2).is_some()
    });
    // dnsmasq records only the first label of a name outside its own domain.
    let recorded = if server == Server::Dnsmasq {
        "web"
    } else {
        "web.default"
    };
    let mut named = 0;
    for allocation in [&first, &second] {
        let lease = active_lease(&leases, allocation.ip.unwrap()).unwrap();
        assert_eq!(
            lease.mac.as_deref(),
            Some(allocation.mac.unwrap().to_string().as_str())
        );
        match lease.hostname.as_deref() {
            Some(name) if name == recorded => named += 1,
            None => {}
            other => panic!("hostname {other:?} in {lease:?}"),
        }
    }
    // dnsmasq keeps a hostname on one lease only: the newer client with the same name takes it.
    let expected_named = if server == Server::Dnsmasq { 1 } else { 2 };
    assert_eq!(named, expected_named, "{leases:#?}");
    assert_eq!(stored_ids(&dir), {
        let mut ids = vec![first.id.clone(), second.id.clone()];
        ids.sort();
        ids
    });

    // The runtime above is gone (a crash): the next lifetime resumes both, then releases.
    lifetime(&lab, |rt| {
        rt.block_on(async {
            let backend = open(with_spares(&lab, &dir, macs.clone(), 3)).await;
            let unknown = Ipv4Addr::new(10, 77, 0, 251);
            assert_eq!(
                backend.release(unknown).await,
                Err(BackendError::NotFound(unknown))
            );
            assert_eq!(backend.status().await.unwrap().allocations.len(), 2);
            let released = backend.release(ip1).await.unwrap();
            assert_eq!(released.id, first.id);
            assert_eq!(released.state, AllocationState::Stopped);
            let status = backend.status().await.unwrap();
            assert_eq!(status.allocations.len(), 1);
            assert!(status.available_macs.contains(&first.mac.unwrap()));
            assert_eq!(backend.release(ip1).await, Err(BackendError::NotFound(ip1)));
            backend.release(ip2).await.unwrap();
            let status = backend.status().await.unwrap();
            assert!(status.allocations.is_empty());
            // spares are free MACs to the API
            assert_eq!(status.available_macs, macs);
            // released MACs get spares again; a clean shutdown deletes them
            wait_until(|| backend.spare_interfaces().len() == 3).await;
            backend.shutdown().await;
        })
    });
    lab.wait_for_leases(server, "both leases released", POLL_LIMIT, |l| {
        active_lease(l, ip1).is_none() && active_lease(l, ip2).is_none()
    });
    assert!(stored_ids(&dir).is_empty());
    assert!(our_links(&lab).is_empty(), "{:?}", our_links(&lab));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn allocate_and_release_with_kea() {
    allocate_release_on(Server::Kea);
}

#[test]
fn allocate_and_release_with_dnsmasq() {
    allocate_release_on(Server::Dnsmasq);
}

#[test]
fn allocate_and_release_with_dhcpd() {
    allocate_release_on(Server::Dhcpd);
}

#[test]
fn without_a_server_the_request_times_out_and_leaves_nothing() {
    let lab = Lab::up().expect("lab up");
    let dir = state_dir("timeout");
    // A corrupt file from an earlier life is reported and skipped, not fatal.
    std::fs::create_dir_all(dir.join("allocations")).unwrap();
    let corrupt = dir.join("allocations/garbage.rec");
    std::fs::write(&corrupt, b"{\"id\":").unwrap();

    lifetime(&lab, |rt| {
        rt.block_on(async {
            let backend = open(options(&lab, &dir, pool(1))).await;
            let skipped: Vec<&Path> = backend
                .skipped_files()
                .iter()
                .map(|s| s.path.as_path())
                .collect();
            assert_eq!(skipped, vec![corrupt.as_path()]);

            let deadline = Instant::now() + Duration::from_secs(2);
            let outcome =
                tokio::time::timeout(REQUEST_TIMEOUT, backend.allocate("default/web", deadline))
                    .await
                    .expect("the request answers (safety net)");
            let Err(BackendError::Timeout { id }) = outcome else {
                panic!("expected a timeout, got {outcome:?}");
            };
            assert!(!id.is_empty());
            let status = backend.status().await.unwrap();
            assert!(status.allocations.is_empty(), "{status:?}");
            assert_eq!(status.available_macs, pool(1));
            assert!(backend.manager().keys().is_empty());
            assert!(!stored_ids(&dir).contains(&id));
            // The stopped address's link was retired; its deletion comes in a batch.
            settle(&backend).await;
            assert!(our_links(&lab).is_empty(), "{:?}", our_links(&lab));

            // The MAC really is free again: the next request takes it. While it waits, the pool
            // is empty and another request fails at once instead of queueing.
            let waiting = {
                let backend = backend.clone();
                tokio::spawn(async move { backend.allocate("default/web", deadline_far()).await })
            };
            wait_until(|| backend.manager().keys().len() == 1).await;
            assert_eq!(
                backend.allocate("default/other", deadline_far()).await,
                Err(BackendError::NoFreeMac)
            );
            let pending = backend.status().await.unwrap().allocations;
            assert_eq!(pending.len(), 1);
            assert_eq!(pending[0].state, AllocationState::Pending);

            // The requester goes away (HTTP client disconnected): the request is withdrawn.
            waiting.abort();
            let started = Instant::now();
            let backend_status = loop {
                let status = backend.status().await.unwrap();
                // The file goes after the in-memory entry, on the store's writer thread.
                if status.allocations.is_empty() && !stored_ids(&dir).contains(&pending[0].id) {
                    break status;
                }
                assert!(
                    started.elapsed() < POLL_LIMIT,
                    "never withdrawn: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            assert!(backend.manager().keys().is_empty());
            assert_eq!(backend_status.available_macs, pool(1));
            settle(&backend).await;
            assert!(our_links(&lab).is_empty(), "{:?}", our_links(&lab));
        })
    });
    assert!(stored_ids(&dir).is_empty());
    assert!(
        corrupt.exists(),
        "an unreadable file is kept for inspection"
    );
    assert!(our_links(&lab).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_restart_resumes_the_same_addresses_without_discover() {
    let lab = Lab::up().expect("lab up");
    start_server(&lab, Server::Kea);
    let dir = state_dir("restart");
    let macs = pool(2);

    let before = lifetime(&lab, |rt| {
        rt.block_on(async {
            let backend = open(options(&lab, &dir, macs.clone())).await;
            let a = backend.allocate("default/a", deadline()).await.unwrap();
            let b = backend.allocate("other/b", deadline()).await.unwrap();
            vec![(a.id, a.ip.unwrap()), (b.id, b.ip.unwrap())]
        })
    });

    let capture = lab.capture(lab.parent()).expect("capture");
    let after = lifetime(&lab, |rt| {
        rt.block_on(async {
            let backend = open(options(&lab, &dir, macs.clone())).await;
            // Resumed clients re-request their address (INIT-REBOOT); wait for the ACKs.
            let started = Instant::now();
            while !before.iter().all(|(id, _)| {
                backend
                    .manager()
                    .status(id)
                    .is_some_and(|s| s.state == State::Bound)
            }) {
                assert!(
                    started.elapsed() < POLL_LIMIT,
                    "resumed clients never bound"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let status = backend.status().await.unwrap();
            assert!(status.available_macs.is_empty());
            let mut after: Vec<(String, Ipv4Addr)> = status
                .allocations
                .iter()
                .map(|a| (a.id.clone(), a.ip.unwrap()))
                .collect();
            after.sort();
            assert_eq!(backend.ip_changes(), 0);
            after
        })
    });
    let frames = capture.stop().expect("capture readable");

    let mut expected = before.clone();
    expected.sort();
    assert_eq!(after, expected, "same allocations, same addresses");
    let ours: BTreeSet<[u8; 6]> = macs.iter().map(|m| m.0).collect();
    let sent: Vec<_> = frames
        .iter()
        .filter(|f| f.dhcp.op == 1 && ours.contains(&f.dhcp.chaddr))
        .collect();
    assert!(
        sent.iter()
            .all(|f| f.message_type() != Some(MessageType::Discover)),
        "no DISCOVER after a restart: {sent:#?}"
    );
    for (_, ip) in &before {
        assert!(
            sent.iter()
                .any(|f| f.message_type() == Some(MessageType::Request)
                    && f.dhcp.requested_ip == Some(*ip)
                    && f.dhcp.server_id.is_none()),
            "an INIT-REBOOT REQUEST for {ip}: {sent:#?}"
        );
    }
    let leases = lab.leases(Server::Kea).unwrap();
    assert!(
        before
            .iter()
            .all(|(_, ip)| active_lease(&leases, *ip).is_some())
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A crash mid-POST: the allocation is on disk as Pending before its DISCOVER, with no lease
/// (the confirming write never came), while the server may have committed the lease. The next
/// start asks the server for that MAC again and releases what comes back. A Pending record that
/// carries its lease (a store restored from a backup, or written by an older version) is
/// released from the record.
#[test]
fn an_allocation_left_pending_by_a_crash_is_released_at_open() {
    let lab = Lab::up().expect("lab up");
    start_server(&lab, Server::Kea);
    let dir = state_dir("pending");
    let macs = pool(2);

    let (with_record, cut_off) = lifetime(&lab, |rt| {
        rt.block_on(async {
            let backend = open(options(&lab, &dir, macs.clone())).await;
            let first = backend.allocate("default/web", deadline()).await.unwrap();
            let second = backend.allocate("default/api", deadline()).await.unwrap();
            (first, second)
        })
    });
    let ips = [with_record.ip.unwrap(), cut_off.ip.unwrap()];
    lab.wait_for_leases(Server::Kea, "leases active", POLL_LIMIT, |l| {
        ips.iter().all(|ip| active_lease(l, *ip).is_some())
    });
    let (store, loaded) = Store::open(&dir).unwrap();
    for mut stored in loaded.allocations {
        stored.phase = Phase::Pending;
        stored.handed_out_ip = None;
        stored.answered = false;
        if stored.id == cut_off.id {
            // What `allocate` writes before the DISCOVER: the MAC, no lease.
            stored.record = None;
        }
        store.save_allocation(&stored).unwrap();
    }

    lifetime(&lab, |rt| {
        rt.block_on(async {
            let backend = open(options(&lab, &dir, macs.clone())).await;
            let status = backend.status().await.unwrap();
            assert!(status.allocations.is_empty(), "{status:?}");
            assert_eq!(status.available_macs, macs);
            assert!(backend.manager().keys().is_empty());
            // The releases' links were retired; the runtime's end must not leave them behind.
            settle(&backend).await;
        })
    });
    assert!(stored_ids(&dir).is_empty());
    assert!(our_links(&lab).is_empty(), "{:?}", our_links(&lab));
    lab.wait_for_leases(Server::Kea, "both leases released", POLL_LIMIT, |l| {
        ips.iter().all(|ip| active_lease(l, *ip).is_none())
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn twenty_concurrent_allocations_are_all_kept_with_distinct_macs() {
    let lab = Lab::up().expect("lab up");
    start_server(&lab, Server::Kea);
    let dir = state_dir("concurrent");
    let macs = pool(24);

    let allocations = lifetime(&lab, |rt| {
        rt.block_on(async {
            // Spares on: some POSTs take a spare, some wait for one, the rest create links.
            let backend = open(with_spares(&lab, &dir, macs.clone(), 4)).await;
            let requests = (0..20).map(|i| {
                let backend = backend.clone();
                tokio::spawn(
                    async move { backend.allocate(&format!("load/svc{i}"), deadline()).await },
                )
            });
            let mut allocations = Vec::new();
            for outcome in futures::future::join_all(requests).await {
                allocations.push(outcome.unwrap().expect("every allocation binds"));
            }
            let status = backend.status().await.unwrap();
            assert_eq!(status.allocations.len(), 20);
            assert_eq!(status.available_macs.len(), 4);
            allocations
        })
    });
    let distinct_macs: BTreeSet<MacAddr> = allocations.iter().map(|a| a.mac.unwrap()).collect();
    let distinct_ips: BTreeSet<Ipv4Addr> = allocations.iter().map(|a| a.ip.unwrap()).collect();
    assert_eq!(distinct_macs.len(), 20);
    assert_eq!(distinct_ips.len(), 20);
    assert_eq!(stored_ids(&dir).len(), 20);
    let leases = lab.wait_for_leases(Server::Kea, "20 leases active", POLL_LIMIT, |l| {
        distinct_ips.iter().all(|ip| active_lease(l, *ip).is_some())
    });
    for allocation in &allocations {
        let lease = active_lease(&leases, allocation.ip.unwrap()).unwrap();
        let service = allocation.service.strip_prefix("load/").unwrap();
        assert_eq!(
            lease.hostname.as_deref(),
            Some(format!("{service}.load").as_str())
        );
    }

    lifetime(&lab, |rt| {
        rt.block_on(async {
            let backend = open(with_spares(&lab, &dir, macs.clone(), 4)).await;
            let releases = distinct_ips.iter().map(|ip| backend.release(*ip));
            for outcome in futures::future::join_all(releases).await {
                outcome.expect("release");
            }
            assert_eq!(backend.status().await.unwrap().available_macs, macs);
            backend.shutdown().await;
        })
    });
    lab.wait_for_leases(Server::Kea, "all released", POLL_LIMIT, |l| {
        distinct_ips.iter().all(|ip| active_lease(l, *ip).is_none())
    });
    assert!(stored_ids(&dir).is_empty());
    assert!(our_links(&lab).is_empty(), "{:?}", our_links(&lab));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_nak_that_moves_the_address_is_counted_and_delete_still_finds_it() {
    let lab = Lab::up().expect("lab up");
    let first_range = (Ipv4Addr::new(10, 77, 0, 10), Ipv4Addr::new(10, 77, 0, 100));
    lab.start(
        Server::Kea,
        ServerOpts {
            range: first_range,
            ..Default::default()
        },
    )
    .expect("kea starts");
    let dir = state_dir("nak");
    let macs = pool(1);
    let handed_out = lifetime(&lab, |rt| {
        rt.block_on(async {
            let backend = open(options(&lab, &dir, macs.clone())).await;
            backend.allocate("default/web", deadline()).await.unwrap()
        })
    });
    let old_ip = handed_out.ip.unwrap();

    // While "down", the site replaces its server: another Kea, authoritative, with a pool that
    // does not hold the old address. It NAKs the INIT-REBOOT and offers a new address.
    lab.stop(Server::Kea).expect("kea stops");
    lab.start(
        Server::Kea,
        ServerOpts {
            addr: SERVER_ADDR_2,
            authoritative: true,
            range: (Ipv4Addr::new(10, 77, 0, 200), Ipv4Addr::new(10, 77, 0, 250)),
            ..Default::default()
        },
    )
    .expect("second kea starts");

    let new_ip = lifetime(&lab, |rt| {
        rt.block_on(async {
            let backend = open(options(&lab, &dir, macs.clone())).await;
            let started = Instant::now();
            while backend.ip_changes() == 0 {
                assert!(started.elapsed() < POLL_LIMIT, "no IP change was reported");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(backend.ip_changes(), 1);
            let metrics = Metrics::new(backend.engine_metrics()).encode();
            assert_eq!(metric(&metrics, "dhcpmanager_ip_changes_total"), 1.0);
            assert!(metric(&metrics, "dhcpmanager_naks_total") >= 1.0);
            let status = backend.status().await.unwrap();
            let moved = &status.allocations[0];
            assert_eq!(moved.id, handed_out.id);
            let new_ip = moved.ip.unwrap();
            assert_ne!(new_ip, old_ip);
            // MetalLB only knows the address it was given: DELETE of that one must work.
            let released = backend.release(old_ip).await.unwrap();
            assert_eq!(released.id, handed_out.id);
            assert!(backend.status().await.unwrap().allocations.is_empty());
            settle(&backend).await;
            new_ip
        })
    });
    let range = 200..=250;
    assert!(range.contains(&new_ip.octets()[3]), "{new_ip}");
    let started = Instant::now();
    loop {
        let leases = lab
            .leases_at(Server::Kea, SERVER_ADDR_2)
            .expect("lease database");
        if active_lease(&leases, new_ip).is_none() {
            break;
        }
        assert!(
            started.elapsed() < POLL_LIMIT,
            "{new_ip} never released: {leases:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(stored_ids(&dir).is_empty());
    assert!(our_links(&lab).is_empty(), "{:?}", our_links(&lab));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_forks_requests_over_http_get_and_give_back_a_real_lease() {
    let lab = Lab::up().expect("lab up");
    start_server(&lab, Server::Kea);
    let dir = state_dir("http");
    let ip = lifetime(&lab, |rt| {
        rt.block_on(async {
            let backend = open(options(&lab, &dir, pool(1))).await;
            let config = Config {
                request_timeout: REQUEST_TIMEOUT,
                ..common::test_config()
            };
            // Loopback of the agent namespace: the fork talks to the apiserver on the node.
            let (http, address) = http::bind(config, backend.clone()).expect("binds");
            let handle = http.handle();
            tokio::spawn(http);

            let body = "{\"service\":\"default/web\"}\n";
            let answer = common::json_request(address, "POST", "/v1/ip", body).await;
            let json = answer.assert_compact_json();
            assert_eq!(json["status"], "success", "{answer:?}");
            let ip: Ipv4Addr = json["ip"].as_str().unwrap().parse().unwrap();
            assert!(in_lab_subnet(ip));

            // The pool is empty now: the next POST fails at once with a non-success status.
            let answer = common::json_request(address, "POST", "/v1/ip", body).await;
            assert_ne!(
                answer.assert_compact_json()["status"],
                "success",
                "{answer:?}"
            );

            let body = format!("{{\"ip\":\"{ip}\"}}\n");
            let answer = common::json_request(address, "DELETE", "/v1/ip", &body).await;
            assert_eq!(
                answer.assert_compact_json()["status"],
                "success",
                "{answer:?}"
            );
            assert!(backend.status().await.unwrap().allocations.is_empty());
            handle.stop(true).await;
            ip
        })
    });
    let leases = lab.wait_for_leases(Server::Kea, "released", POLL_LIMIT, |l| {
        active_lease(l, ip).is_none()
    });
    assert!(
        leases.iter().any(|l| l.ip == ip),
        "Kea did lease {ip}: {leases:#?}"
    );
    assert!(stored_ids(&dir).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Waits until the links the backend retired are deleted (a runtime's end must leave none).
async fn settle(backend: &StandaloneBackend) {
    backend
        .manager()
        .settle_links()
        .await
        .expect("retired links deleted");
}

/// The value of the sample `name` (no labels) in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> f64 {
    prometheus::sample(text, name).unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[test]
fn renewals_packets_and_clients_of_the_engine_are_on_metrics() {
    let lab = Lab::up().expect("lab up");
    start_server(&lab, Server::Kea);
    let dir = state_dir("metrics");
    lifetime(&lab, |rt| {
        rt.block_on(async {
            // 10x time: Kea's 60 s lease renews after 3 s.
            let backend = open(StandaloneOptions {
                time_scale: 10.0,
                ..options(&lab, &dir, pool(1))
            })
            .await;
            let config = Config {
                request_timeout: REQUEST_TIMEOUT,
                ..common::test_config()
            };
            let (http, address) = http::bind(config, backend.clone()).expect("binds");
            let handle = http.handle();
            tokio::spawn(http);
            let scrape = || async { common::get(address, "/metrics").await.body };

            let before = scrape().await;
            assert_eq!(metric(&before, "dhcpmanager_dhcp_clients"), 0.0);
            assert_eq!(metric(&before, "dhcpmanager_renewals_total"), 0.0);
            let body = "{\"service\":\"default/web\"}\n";
            let answer = common::json_request(address, "POST", "/v1/ip", body).await;
            let json = answer.assert_compact_json();
            assert_eq!(json["status"], "success", "{answer:?}");
            let ip = json["ip"].as_str().unwrap().to_string();

            let started = Instant::now();
            let renewed = loop {
                let text = scrape().await;
                if metric(&text, "dhcpmanager_renewals_total") >= 1.0 {
                    break text;
                }
                assert!(
                    started.elapsed() < POLL_LIMIT,
                    "no renewal counted:\n{text}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            // DISCOVER, REQUEST, then the renewal's REQUEST; OFFER, ACK, ACK.
            assert!(metric(&renewed, "dhcpmanager_packets_sent_total") >= 3.0);
            assert!(metric(&renewed, "dhcpmanager_packets_received_total") >= 3.0);
            assert_eq!(metric(&renewed, "dhcpmanager_dhcp_clients"), 1.0);
            for quiet in ["ip_changes", "naks", "lease_expirations"] {
                let name = format!("dhcpmanager_{quiet}_total");
                assert_eq!(metric(&renewed, &name), 0.0, "{name}");
            }
            // The pre-0.2 names serve the same series until 0.2 (docs/metrics.md).
            for (old, new) in [
                ("renewals_total", "renewals_total"),
                ("dhcp_packets_sent_total", "packets_sent_total"),
                ("dhcp_clients", "dhcp_clients"),
            ] {
                assert_eq!(
                    metric(&renewed, &format!("dhcpmanager_apiserver_{old}")),
                    metric(&renewed, &format!("dhcpmanager_{new}")),
                    "{old}"
                );
            }
            let status = backend.status().await.unwrap();
            assert_eq!(status.allocations[0].ip.unwrap().to_string(), ip);

            let body = format!("{{\"ip\":\"{ip}\"}}\n");
            let answer = common::json_request(address, "DELETE", "/v1/ip", &body).await;
            assert_eq!(answer.assert_compact_json()["status"], "success");
            assert_eq!(metric(&scrape().await, "dhcpmanager_dhcp_clients"), 0.0);
            handle.stop(true).await;
            settle(&backend).await;
        })
    });
    assert!(stored_ids(&dir).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// MACs of our macvlans in the agent namespace, by interface name.
fn our_link_macs(lab: &Lab) -> BTreeMap<String, MacAddr> {
    let out = Command::new("ip")
        .args(["-n", &lab.agent_ns(), "-o", "link", "show"])
        .output()
        .expect("ip link");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let name = line.split(": ").nth(1)?.split('@').next()?.to_string();
            let mac = line
                .split("link/ether ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            name.starts_with("dm").then_some((name, mac))
        })
        .collect()
}

#[test]
fn spare_links_are_taken_refilled_silent_while_idle_and_never_outlive_a_start() {
    let lab = Lab::up().expect("lab up");
    start_server(&lab, Server::Kea);
    let dir = state_dir("spares");
    let macs = pool(4);
    let capture = lab.capture(lab.parent()).expect("capture");

    let (taken, spare_macs_while_idle, allocation) = lifetime(&lab, |rt| {
        rt.block_on(async {
            let backend = open(with_spares(&lab, &dir, macs.clone(), 2)).await;
            wait_until(|| backend.spare_interfaces().len() == 2).await;
            let links = our_link_macs(&lab);
            let spares = backend.spare_interfaces();
            assert_eq!(links.keys().cloned().collect::<Vec<_>>(), spares);
            let spare_macs: BTreeSet<MacAddr> = links.values().copied().collect();
            // spares are free MACs to the API, and no allocation
            let status = backend.status().await.unwrap();
            assert_eq!(status.available_macs, macs);
            assert!(status.allocations.is_empty());
            // Idle a while: a spare must send nothing (checked in the capture below).
            tokio::time::sleep(Duration::from_millis(300)).await;

            let allocation = backend.allocate("default/web", deadline()).await.unwrap();
            let taken = allocation.interface.name.clone();
            assert!(spares.contains(&taken), "{taken} not in {spares:?}");
            assert!(spare_macs.contains(&allocation.mac.unwrap()));
            // refilled: the allocation's link plus two spares
            wait_until(|| backend.spare_interfaces().len() == 2).await;
            assert_eq!(our_link_macs(&lab).len(), 3);
            assert!(!backend.spare_interfaces().contains(&taken));

            // A spare's MAC leaves the pool: its link goes, and no free MAC is left to refill.
            let removed: Vec<MacAddr> = our_link_macs(&lab)
                .iter()
                .filter(|(name, _)| backend.spare_interfaces().contains(name))
                .map(|(_, mac)| *mac)
                .take(1)
                .collect();
            let free_others: Vec<MacAddr> = backend
                .status()
                .await
                .unwrap()
                .available_macs
                .into_iter()
                .filter(|mac| !removed.contains(mac))
                .collect();
            assert_eq!(backend.remove_macs(removed.clone()).await.unwrap(), vec![]);
            wait_until(|| {
                let links = our_link_macs(&lab);
                links.len() == 3 && !links.values().any(|mac| removed.contains(mac))
            })
            .await;
            assert_eq!(backend.status().await.unwrap().available_macs, free_others);
            (taken, spare_macs, allocation)
        })
    });
    // The runtime is gone (a crash): two spare links and the allocation's link are left over.
    assert_eq!(our_link_macs(&lab).len(), 3);

    lifetime(&lab, |rt| {
        rt.block_on(async {
            let backend = open(with_spares(&lab, &dir, allocation_macs(&allocation), 0)).await;
            // The orphan sweep took the spares; the handed-out address runs on its own link.
            assert_eq!(our_links(&lab), vec![taken.clone()]);
            assert!(backend.spare_interfaces().is_empty());
            backend.release(allocation.ip.unwrap()).await.unwrap();
            settle(&backend).await;
            assert!(our_links(&lab).is_empty(), "{:?}", our_links(&lab));
        })
    });
    let frames = capture.stop().expect("capture readable");
    let from = |mac: MacAddr| {
        frames
            .iter()
            .filter(move |f| f.dhcp.op == 1 && f.dhcp.chaddr == mac.0)
            .collect::<Vec<_>>()
    };
    let used = allocation.mac.unwrap();
    for mac in spare_macs_while_idle.iter().filter(|mac| **mac != used) {
        assert!(from(*mac).is_empty(), "spare {mac} sent {:#?}", from(*mac));
    }
    let sent = from(used);
    assert_eq!(
        sent.first().and_then(|f| f.message_type()),
        Some(MessageType::Discover),
        "{sent:#?}"
    );
    lab.wait_for_leases(Server::Kea, "released", POLL_LIMIT, |l| {
        active_lease(l, allocation.ip.unwrap()).is_none()
    });
    assert!(stored_ids(&dir).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn allocation_macs(allocation: &dhcpmanager_apiserver::backend::Allocation) -> Vec<MacAddr> {
    allocation.mac.into_iter().collect()
}

/// `/readyz` says 503 with the reason while the parent interface is missing, and 200 again when
/// it is back (a NIC renamed or re-created under the running apiserver).
#[test]
fn readyz_fails_while_the_parent_interface_is_missing() {
    let lab = Lab::up().expect("lab up");
    let dir = state_dir("readyz");
    let rename = |from: &str, to: &str| {
        let out = Command::new("ip")
            .args(["-n", &lab.agent_ns(), "link", "set", from, "name", to])
            .output()
            .expect("ip link set name");
        assert!(out.status.success(), "{out:?}");
    };
    lifetime(&lab, |rt| {
        rt.block_on(async {
            let backend = open(options(&lab, &dir, pool(1))).await;
            let (http, address) =
                http::bind(common::test_config(), backend.clone()).expect("binds");
            let handle = http.handle();
            tokio::spawn(http);
            assert_eq!(common::get(address, "/readyz").await.status, 200);

            // A rename is a missing parent to us, and unlike a delete it can be undone.
            rename(lab.parent(), "lab0-away");
            let answer = common::get(address, "/readyz").await;
            assert_eq!(answer.status, 503, "{answer:?}");
            let error = answer.json()["error"].as_str().unwrap().to_string();
            assert!(error.contains(lab.parent()), "{error}");

            rename("lab0-away", lab.parent());
            assert_eq!(common::get(address, "/readyz").await.status, 200);
            handle.stop(true).await;
        })
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What a crash between the confirming write and the answer leaves (docs/apiserver.md): the
/// allocation is held and renewed with its IP (its requester may be announcing it), and shown as
/// unconfirmed on /v1/status and /metrics until someone DELETEs it. A POST is recorded as
/// answered once its answer was written to the connection, not before.
#[test]
fn an_allocation_a_crash_left_unanswered_is_held_and_shown_unconfirmed() {
    let lab = Lab::up().expect("lab up");
    start_server(&lab, Server::Kea);
    let dir = state_dir("unconfirmed");
    let macs = pool(2);

    let bound = lifetime(&lab, |rt| {
        rt.block_on(async {
            let backend = open(options(&lab, &dir, macs.clone())).await;
            // Taken by the backend alone, nobody was answered: unconfirmed while it runs too.
            let direct = backend
                .allocate("default/direct", deadline())
                .await
                .unwrap();
            let status = backend.status().await.unwrap();
            assert!(status.allocations[0].unconfirmed, "{status:?}");
            backend.release(direct.ip.unwrap()).await.unwrap();

            let (http, address) =
                http::bind(common::test_config(), backend.clone()).expect("binds");
            let handle = http.handle();
            tokio::spawn(http);
            let answer = common::fork_post(address, "/v1/ip", "default/web", None).await;
            let json = answer.assert_compact_json();
            assert_eq!(json["status"], "success", "{json}");
            // The answered mark is written in the background, after the answer went out.
            let id = json["id"].as_str().unwrap().to_string();
            wait_until(|| {
                Store::peek(&dir)
                    .unwrap()
                    .allocations
                    .iter()
                    .any(|a| a.id == id && a.answered)
            })
            .await;
            let status = backend.status().await.unwrap();
            assert!(!status.allocations[0].unconfirmed, "{status:?}");
            handle.stop(true).await;
            status.allocations[0].clone()
        })
    });
    let ip = bound.ip.unwrap();
    // As a crash after the confirming write and before the answer leaves it.
    let (store, loaded) = Store::open(&dir).unwrap();
    let mut unanswered = loaded.allocations[0].clone();
    assert_eq!(unanswered.phase, Phase::Confirmed);
    unanswered.answered = false;
    store.save_allocation(&unanswered).unwrap();
    drop(store);

    lifetime(&lab, |rt| {
        rt.block_on(async {
            let backend = open(options(&lab, &dir, macs.clone())).await;
            let status = backend.status().await.unwrap();
            assert_eq!(status.allocations.len(), 1, "{status:?}");
            let held = &status.allocations[0];
            assert_eq!((held.ip, held.unconfirmed), (Some(ip), true));
            assert_eq!(backend.manager().keys(), vec![bound.id.clone()], "renewed");

            let (http, address) =
                http::bind(common::test_config(), backend.clone()).expect("binds");
            let handle = http.handle();
            tokio::spawn(http);
            let answer = common::get(address, "/v1/status").await;
            let json = answer.assert_compact_json();
            assert_eq!(json["Allocations"][0]["Unconfirmed"], true, "{json}");
            let text = common::get(address, "/metrics").await.body;
            assert_eq!(
                metric(&text, "dhcpmanager_apiserver_unconfirmed_allocations"),
                1.0
            );
            // The operator's way out once no Service uses it.
            let body = format!("{{\"ip\":\"{ip}\"}}\n");
            let answer = common::json_request(address, "DELETE", "/v1/ip", &body).await;
            assert_eq!(answer.assert_compact_json()["status"], "success");
            let text = common::get(address, "/metrics").await.body;
            assert_eq!(
                metric(&text, "dhcpmanager_apiserver_unconfirmed_allocations"),
                0.0
            );
            handle.stop(true).await;
            settle(&backend).await;
        })
    });
    lab.wait_for_leases(Server::Kea, "released", POLL_LIMIT, |l| {
        active_lease(l, ip).is_none()
    });
    std::fs::remove_dir_all(&dir).unwrap();
}
