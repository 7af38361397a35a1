//! The in-process lease engine's figures on the standalone apiserver's /metrics: what the agent's
//! /metrics shows per node (renewals, NAKs, expiries, IP changes, packets), so a host without
//! Kubernetes can alert on the same things. An IP change above all: whoever was handed the old
//! address (MetalLB) still announces it.

use std::sync::Arc;

use dhcpmanager_engine::dhcp::ClientEvent;
use dhcpmanager_engine::manager::{LeaseManager, PacketCounters};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::broadcast::error::RecvError;

pub struct EngineMetrics {
    manager: LeaseManager,
    renewals: Counter,
    naks: Counter,
    expirations: Counter,
    ip_changes: Counter,
    packets: PacketCounters,
    clients: Gauge,
}

impl EngineMetrics {
    /// Counts `manager`'s events from now on, on a task that ends with the manager.
    /// `ip_changes` is the backend's own count (kept where it knows which addresses were
    /// handed out), registered here as it is.
    pub fn spawn(manager: LeaseManager, ip_changes: Counter) -> Arc<EngineMetrics> {
        let mut events = manager.subscribe();
        let metrics = Arc::new(EngineMetrics {
            manager,
            renewals: Counter::default(),
            naks: Counter::default(),
            expirations: Counter::default(),
            ip_changes,
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
            _ => return,
        };
        counter.inc();
    }

    /// Adds the metrics to `registry` (under its prefix).
    pub fn register(&self, registry: &mut Registry) {
        let counters = [
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
                "Handed-out addresses whose IP the DHCP server changed (after a NAK or an expiry)",
                &self.ip_changes,
            ),
            (
                "dhcp_packets_sent",
                "DHCP messages sent",
                &self.packets.sent,
            ),
            (
                "dhcp_packets_received",
                "DHCP replies received for our MACs",
                &self.packets.received,
            ),
            (
                "dhcp_replies_rejected",
                "Replies discarded (wrong xid, client id, malformed...)",
                &self.packets.rejected,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "dhcp_clients",
            "DHCP clients running in the engine (bound, or getting or extending a lease)",
            self.clients.clone(),
        );
    }

    /// Brings the figures read from the engine up to date; called before each encode.
    pub fn refresh(&self) {
        self.packets.catch_up(self.manager.counters());
        self.clients
            .set(i64::try_from(self.manager.keys().len()).unwrap_or(i64::MAX));
    }
}
