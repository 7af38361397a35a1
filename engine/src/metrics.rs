//! The engine's figures as Prometheus metrics, one type and one set of names for both front ends
//! (the agent's and the standalone apiserver's /metrics): renewals, NAKs, expiries, IP changes,
//! packets and running clients. An IP change above all: whoever was handed the old address
//! (MetalLB) still announces it.
//!
//! Registered into a registry with the prefix `dhcpmanager`, they read `dhcpmanager_renewals_total`
//! and so on (docs/metrics.md lists them).

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::broadcast::error::RecvError;

use crate::dhcp::ClientEvent;
use crate::manager::{LeaseManager, PacketCounters, ReasonLabel};

/// Who counts IP changes.
pub enum IpChanges {
    /// Every [`ClientEvent::IpChanged`] of the engine (one client per address: the agent).
    FromEvents,
    /// The front end, in this counter: it alone knows which addresses were handed out (the
    /// standalone apiserver, whose pending allocations may change IP unseen by anyone).
    CountedBy(Counter),
}

pub struct EngineMetrics {
    manager: LeaseManager,
    renewals: Counter,
    naks: Counter,
    expirations: Counter,
    ip_changes: Counter,
    ip_changes_from_events: bool,
    packets: PacketCounters,
    clients: Gauge,
}

/// Discarded replies by reason label.
pub type RejectedReplies = Family<ReasonLabel, Counter>;

/// One counter's name (without prefix and `_total`), help text and value.
pub type NamedCounter<'a> = (&'static str, &'static str, &'a Counter);

impl EngineMetrics {
    /// Counts `manager`'s events from now on, on a task that ends with the manager or when the
    /// metrics are dropped.
    pub fn spawn(manager: LeaseManager, ip_changes: IpChanges) -> Arc<EngineMetrics> {
        let mut events = manager.subscribe();
        let (ip_changes, ip_changes_from_events) = match ip_changes {
            IpChanges::FromEvents => (Counter::default(), true),
            IpChanges::CountedBy(counter) => (counter, false),
        };
        let metrics = Arc::new(EngineMetrics {
            manager,
            renewals: Counter::default(),
            naks: Counter::default(),
            expirations: Counter::default(),
            ip_changes,
            ip_changes_from_events,
            packets: PacketCounters::default(),
            clients: Gauge::default(),
        });
        // Weak: the task must not keep the manager (and its links) alive.
        let counting = Arc::downgrade(&metrics);
        tokio::spawn(async move {
            loop {
                let keyed = match events.recv().await {
                    Ok(keyed) => keyed,
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "engine metrics missed events");
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                };
                let Some(metrics) = counting.upgrade() else {
                    return;
                };
                metrics.count(&keyed.event);
            }
        });
        metrics
    }

    fn count(&self, event: &ClientEvent) {
        let counter = match event {
            ClientEvent::Bound { renewal: true, .. } => &self.renewals,
            ClientEvent::Nak { .. } => &self.naks,
            ClientEvent::Expired { .. } => &self.expirations,
            ClientEvent::IpChanged { .. } if self.ip_changes_from_events => &self.ip_changes,
            _ => return,
        };
        counter.inc();
    }

    /// The counters with their names, as [`EngineMetrics::register`] registers them (a front end
    /// that keeps older names registers these same counters under them too).
    pub fn counters(&self) -> [NamedCounter<'_>; 6] {
        [
            (
                "renewals",
                "Leases extended by the server (RENEWING, REBINDING or INIT-REBOOT)",
                &self.renewals,
            ),
            ("naks", "DHCPNAKs received", &self.naks),
            (
                "lease_expirations",
                "Leases that ran out before they could be extended",
                &self.expirations,
            ),
            (
                "ip_changes",
                "Addresses whose IP the DHCP server changed (after a NAK or an expiry)",
                &self.ip_changes,
            ),
            ("packets_sent", "DHCP messages sent", &self.packets.sent),
            (
                "packets_received",
                "DHCP replies received for our MACs",
                &self.packets.received,
            ),
        ]
    }

    /// Name, help and value of the rejected-replies counter, labelled by `reason`.
    pub fn rejected(&self) -> (&'static str, &'static str, &RejectedReplies) {
        (
            "replies_rejected",
            "Replies discarded, by reason (wrong_xid, wrong_server, wrong_address, network_address...)",
            &self.packets.rejected,
        )
    }

    /// Name, help and value of the running-clients gauge.
    pub fn clients(&self) -> (&'static str, &'static str, &Gauge) {
        (
            "dhcp_clients",
            "DHCP clients running in the engine (bound, or getting or extending a lease)",
            &self.clients,
        )
    }

    /// Name, help and value of the links-restored counter.
    pub fn links_restored(&self) -> NamedCounter<'_> {
        (
            "links_restored",
            "Links of held addresses re-created after they vanished (ip link del, parent re-created)",
            self.manager.links_restored(),
        )
    }

    /// Name, help and value of the announce-failures counter.
    pub fn announce_failures(&self) -> NamedCounter<'_> {
        (
            "announce_failures",
            "Announcements of assigned addresses that failed in part (ARP settings, policy rules, reply marks); the lease was kept",
            self.manager.announce_failures(),
        )
    }

    /// Adds the metrics to `registry`, which should carry the prefix `dhcpmanager`.
    pub fn register(&self, registry: &mut Registry) {
        let (name, help, restored) = self.links_restored();
        registry.register(name, help, restored.clone());
        let (name, help, failures) = self.announce_failures();
        registry.register(name, help, failures.clone());
        for (name, help, counter) in self.counters() {
            registry.register(name, help, counter.clone());
        }
        let (name, help, rejected) = self.rejected();
        registry.register(name, help, rejected.clone());
        let (name, help, gauge) = self.clients();
        registry.register(name, help, gauge.clone());
    }

    /// Brings the figures read from the engine up to date; called before each encode.
    pub fn refresh(&self) {
        self.packets.catch_up(self.manager.live_counters());
        self.clients
            .set(i64::try_from(self.manager.keys().len()).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use prometheus_client::encoding::text::encode;

    use super::*;
    use crate::manager::ManagerConfig;

    /// A manager that runs no client (it opens an rtnetlink socket, nothing more).
    fn idle_manager() -> LeaseManager {
        LeaseManager::new(
            crate::instance::InstanceId::derived("test", "metrics"),
            ManagerConfig::default(),
            Arc::new(|_, _| {}),
        )
        .unwrap()
    }

    fn exposition(metrics: &EngineMetrics) -> String {
        let mut registry = Registry::with_prefix("dhcpmanager");
        metrics.register(&mut registry);
        metrics.refresh();
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        text
    }

    #[tokio::test]
    async fn one_set_of_names_under_the_dhcpmanager_prefix() {
        let metrics = EngineMetrics::spawn(idle_manager(), IpChanges::FromEvents);
        let text = exposition(&metrics);
        for name in [
            "dhcpmanager_renewals_total 0",
            "dhcpmanager_naks_total 0",
            "dhcpmanager_lease_expirations_total 0",
            "dhcpmanager_ip_changes_total 0",
            "dhcpmanager_packets_sent_total 0",
            "dhcpmanager_packets_received_total 0",
            "dhcpmanager_replies_rejected_total{reason=\"wrong_server\"} 0",
            "dhcpmanager_dhcp_clients 0",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }

    #[tokio::test]
    async fn ip_changes_come_from_events_or_from_the_front_end() {
        let change = ClientEvent::IpChanged {
            old: Ipv4Addr::new(10, 0, 0, 1),
            new: Ipv4Addr::new(10, 0, 0, 2),
        };
        let from_events = EngineMetrics::spawn(idle_manager(), IpChanges::FromEvents);
        from_events.count(&change);
        from_events.count(&ClientEvent::Expired {
            ip: Ipv4Addr::new(10, 0, 0, 1),
        });
        assert_eq!(from_events.ip_changes.get(), 1);
        assert_eq!(from_events.expirations.get(), 1);

        let own = Counter::default();
        let counted_by = EngineMetrics::spawn(idle_manager(), IpChanges::CountedBy(own.clone()));
        counted_by.count(&change);
        assert_eq!(own.get(), 0, "the front end's count alone");
        own.inc();
        assert!(exposition(&counted_by).contains("dhcpmanager_ip_changes_total 1"));
    }
}
