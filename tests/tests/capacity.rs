//! Past its capacity a node refuses the extra addresses and keeps every lease it holds (issue 13).
//!
//! Before the engine knew its capacity, 2,000 addresses on one parent bound 998, timed out the
//! rest, and then let all 998 expire: the macvlans' broadcast copies overflowed the kernel's
//! backlog and took the renewals down with the new DISCOVERs. The same push past capacity, at
//! a capacity lowered through the configuration so that it takes a few addresses instead of a
//! thousand: for linkless addresses (addresses per manager) and for addresses on macvlans
//! (links per parent). The extra addresses are refused with the documented error before they
//! touch the network, and every held lease renews, seen in Kea's own lease database. The one
//! real large run is the scale benchmark (`scripts/bench.sh scale`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use dhcpmanager_engine::Error;
use dhcpmanager_engine::dhcp::{ClientConfig, ClientEvent, MacAddr};
use dhcpmanager_engine::instance::InstanceId;
use dhcpmanager_engine::manager::{
    AddressSpec, Capacity, LeaseManager, ManagerConfig, Refusal, wait_bound,
};
use dhcpmanager_tests::lab::{Lab, Server, ServerOpts, active_lease};
use dhcpmanager_tests::netns::in_netns;

/// Safety net for one protocol step (never a performance assertion).
const STEP: Duration = Duration::from_secs(40);
const LINKLESS_CAPACITY: usize = 12;
const LINKS_CAPACITY: usize = 6;
const EXTRA: usize = 4;
/// Kea's 60 s leases, seen 10x faster by the clients: they renew every ~3 s.
const TIME_SCALE: f64 = 10.0;

fn spec(key: String, parent: &str, mac: [u8; 6]) -> AddressSpec {
    let mut client = ClientConfig::new(MacAddr(mac));
    client.timing.scale = TIME_SCALE;
    AddressSpec {
        key,
        parent: parent.to_owned(),
        client,
    }
}

fn manager(name: &str, linkless: bool, capacity: Capacity) -> LeaseManager {
    LeaseManager::new(
        InstanceId::derived("test", name),
        ManagerConfig {
            linkless,
            capacity,
            ..ManagerConfig::default()
        },
        Arc::new(|_: &str, _: Option<&_>| {}),
    )
    .expect("lease manager")
}

#[test]
fn addresses_beyond_capacity_are_refused_and_every_held_lease_renews() {
    let lab = Lab::up().expect("lab");
    lab.start(Server::Kea, ServerOpts::default()).expect("kea");
    let parent = lab.parent().to_string();
    let lab_ref = &lab;
    in_netns(&lab.agent_ns(), move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let linkless = manager(
                "linkless",
                true,
                Capacity {
                    addresses: LINKLESS_CAPACITY,
                    links_per_parent: None,
                },
            );
            let linked = manager(
                "links",
                false,
                Capacity {
                    addresses: 100,
                    links_per_parent: Some(LINKS_CAPACITY),
                },
            );
            assert_eq!(linkless.capacity().0, LINKLESS_CAPACITY);
            assert_eq!(linked.capacity().1, LINKS_CAPACITY);
            let mut events = vec![linkless.subscribe(), linked.subscribe()];

            // Fill both to capacity.
            let mut held: BTreeMap<[u8; 6], Ipv4Addr> = BTreeMap::new();
            for (manager, count, tag) in [
                (&linkless, LINKLESS_CAPACITY, 0xa0),
                (&linked, LINKS_CAPACITY, 0xb0),
            ] {
                let mut waiting = Vec::new();
                for i in 0..count {
                    let mac = [0x02, 0xca, tag, 0, 0, i as u8];
                    let status = manager
                        .start(spec(format!("cap/{tag:x}-{i}"), &parent, mac), None)
                        .await
                        .expect("within capacity");
                    waiting.push((mac, status));
                }
                for (mac, mut status) in waiting {
                    held.insert(mac, wait_bound(&mut status, STEP).await.expect("bound").ip);
                }
            }
            assert_eq!(held.len(), LINKLESS_CAPACITY + LINKS_CAPACITY);

            // Push past it: every extra address is refused with the documented error, at once.
            let mut refused_macs = Vec::new();
            for (manager, tag) in [(&linkless, 0xa0u8), (&linked, 0xb0)] {
                for i in 0..EXTRA {
                    let mac = [0x02, 0xca, tag, 1, 0, i as u8];
                    refused_macs.push(mac);
                    let refused = manager
                        .start(spec(format!("cap/{tag:x}-extra-{i}"), &parent, mac), None)
                        .await
                        .expect_err("beyond capacity");
                    let text = refused.to_string();
                    assert!(
                        text.contains("refused") && text.contains("capacity"),
                        "{text}"
                    );
                    assert_eq!(refused.metric_label(), "capacity");
                    match (tag, refused) {
                        (0xa0, Error::Capacity { refusal, .. }) => assert_eq!(
                            refusal,
                            Refusal::Addresses {
                                limit: LINKLESS_CAPACITY
                            }
                        ),
                        (_, Error::Capacity { refusal, .. }) => assert_eq!(
                            refusal,
                            Refusal::LinksOnParent {
                                parent: parent.clone(),
                                limit: LINKS_CAPACITY
                            }
                        ),
                        (_, other) => panic!("not a capacity error: {other}"),
                    }
                }
            }
            assert_eq!(linkless.keys().len(), LINKLESS_CAPACITY);
            assert_eq!(linked.keys().len(), LINKS_CAPACITY);
            assert_eq!(linked.seated(), LINKS_CAPACITY, "a refusal takes no seat");

            // Every held lease renews, in the server's own database: its expiry moves on.
            let at_capacity = lab_ref.leases(Server::Kea).expect("lease database");
            let first_expiry: BTreeMap<Ipv4Addr, u64> = held
                .values()
                .map(|ip| {
                    let lease = active_lease(&at_capacity, *ip).expect("the server holds it");
                    (*ip, lease.expires)
                })
                .collect();
            // The clients renew on the runtime's other worker meanwhile.
            let leases = tokio::task::block_in_place(|| {
                lab_ref.wait_for_leases(Server::Kea, "every held lease renewed", STEP, |leases| {
                    first_expiry.iter().all(|(ip, first)| {
                        active_lease(leases, *ip).is_some_and(|lease| lease.expires > *first)
                    })
                })
            });
            for mac in &refused_macs {
                let text = mac
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
                assert!(
                    !leases
                        .iter()
                        .any(|l| l.mac.as_deref() == Some(text.as_str())),
                    "a refused address sent nothing: {text}"
                );
            }
            // Nothing held was lost on the way: no NAK, no expiry, no IP change.
            for receiver in &mut events {
                while let Ok(event) = receiver.try_recv() {
                    assert!(
                        !matches!(
                            event.event,
                            ClientEvent::Nak { .. }
                                | ClientEvent::Expired { .. }
                                | ClientEvent::IpChanged { .. }
                        ),
                        "{}: {:?}",
                        event.key,
                        event.event
                    );
                }
            }
            for manager in [&linkless, &linked] {
                for key in manager.keys() {
                    let status = manager.status(&key).expect("running");
                    let ip = status.record.expect("still holds its lease").ip;
                    assert!(held.values().any(|held_ip| *held_ip == ip), "{key}: {ip}");
                }
            }
            linkless.stop_all().await.unwrap();
            linked.stop_all().await.unwrap();
        });
    })
    .expect("agent namespace");
}
