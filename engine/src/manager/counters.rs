//! Packet and exchange counters of one manager, read by the metrics endpoint and benchmarks.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::dhcp::RejectReason;

#[derive(Debug, Default)]
pub struct Counters {
    pub packets_sent: AtomicU64,
    pub packets_received: AtomicU64,
    pub replies_rejected: AtomicU64,
    pub send_errors: AtomicU64,
    /// `replies_rejected` by [`RejectReason::label`].
    rejected_by_reason: Mutex<BTreeMap<&'static str, u64>>,
}

/// A plain copy of [`Counters`] at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CounterSnapshot {
    pub packets_sent: u64,
    pub packets_received: u64,
    pub replies_rejected: u64,
    pub send_errors: u64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one discarded reply under its reason.
    pub fn count_rejection(&self, reason: &RejectReason) {
        Self::bump(&self.replies_rejected);
        let mut by_reason = self
            .rejected_by_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *by_reason.entry(reason.label()).or_default() += 1;
    }

    /// Discarded replies so far, by reason label (reasons never seen are absent).
    pub fn rejections(&self) -> BTreeMap<&'static str, u64> {
        self.rejected_by_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            packets_sent: self.packets_sent.load(Ordering::Relaxed),
            packets_received: self.packets_received.load(Ordering::Relaxed),
            replies_rejected: self.replies_rejected.load(Ordering::Relaxed),
            send_errors: self.send_errors.load(Ordering::Relaxed),
        }
    }
}

/// The `reason` label of the rejected-replies metric.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// The packet counters as Prometheus counters, for a /metrics endpoint: they grow by what the
/// manager counted since the previous scrape.
#[derive(Debug)]
pub struct PacketCounters {
    pub sent: Counter,
    pub received: Counter,
    /// Discarded replies by reason.
    pub rejected: Family<ReasonLabel, Counter>,
    seen: Mutex<(CounterSnapshot, BTreeMap<&'static str, u64>)>,
}

impl Default for PacketCounters {
    fn default() -> Self {
        let rejected = Family::<ReasonLabel, Counter>::default();
        for reason in RejectReason::suspicious_labels() {
            rejected.get_or_create(&ReasonLabel { reason }).inc_by(0);
        }
        PacketCounters {
            sent: Counter::default(),
            received: Counter::default(),
            rejected,
            seen: Mutex::default(),
        }
    }
}

impl PacketCounters {
    /// Catches up with the manager's counters at this scrape.
    pub fn catch_up(&self, counters: &Counters) {
        let now = counters.snapshot();
        let rejections = counters.rejections();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (seen_totals, seen_rejections) = &mut *seen;
        self.sent
            .inc_by(now.packets_sent.saturating_sub(seen_totals.packets_sent));
        self.received.inc_by(
            now.packets_received
                .saturating_sub(seen_totals.packets_received),
        );
        for (&reason, &count) in &rejections {
            let before = seen_rejections.get(reason).copied().unwrap_or(0);
            self.rejected
                .get_or_create(&ReasonLabel { reason })
                .inc_by(count.saturating_sub(before));
        }
        *seen_totals = now;
        *seen_rejections = rejections;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;
    use std::net::Ipv4Addr;

    #[test]
    fn rejections_reach_the_metric_by_reason() {
        let counters = Counters::default();
        let packets = PacketCounters::default();
        let mut registry = Registry::default();
        registry.register("replies_rejected", "test", packets.rejected.clone());
        let wrong_server = RejectReason::WrongServer {
            expected: Ipv4Addr::new(10, 0, 0, 1),
            got: None,
        };
        counters.count_rejection(&wrong_server);
        counters.count_rejection(&wrong_server);
        counters.count_rejection(&RejectReason::MissingServerId);
        packets.catch_up(&counters);
        // A second scrape adds only what is new.
        counters.count_rejection(&wrong_server);
        packets.catch_up(&counters);
        packets.catch_up(&counters);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("replies_rejected_total{reason=\"wrong_server\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("replies_rejected_total{reason=\"missing_server_id\"} 1"),
            "{text}"
        );
        assert_eq!(counters.snapshot().replies_rejected, 4);
        // Never seen, but present from the start for alerts.
        assert!(
            text.contains("replies_rejected_total{reason=\"network_address\"} 0"),
            "{text}"
        );
    }
}
