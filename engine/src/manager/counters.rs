//! Packet and exchange counters of one manager, read by the metrics endpoint and benchmarks.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;

#[derive(Debug, Default)]
pub struct Counters {
    pub packets_sent: AtomicU64,
    pub packets_received: AtomicU64,
    pub replies_rejected: AtomicU64,
    pub send_errors: AtomicU64,
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

    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            packets_sent: self.packets_sent.load(Ordering::Relaxed),
            packets_received: self.packets_received.load(Ordering::Relaxed),
            replies_rejected: self.replies_rejected.load(Ordering::Relaxed),
            send_errors: self.send_errors.load(Ordering::Relaxed),
        }
    }
}

/// The packet counters as Prometheus counters, for a /metrics endpoint: they grow by what the
/// manager counted since the previous scrape.
#[derive(Debug, Default)]
pub struct PacketCounters {
    pub sent: Counter,
    pub received: Counter,
    pub rejected: Counter,
    seen: Mutex<CounterSnapshot>,
}

impl PacketCounters {
    /// Catches up with `now`, the manager's [`CounterSnapshot`] at this scrape.
    pub fn catch_up(&self, now: CounterSnapshot) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        self.sent
            .inc_by(now.packets_sent.saturating_sub(seen.packets_sent));
        self.received
            .inc_by(now.packets_received.saturating_sub(seen.packets_received));
        self.rejected
            .inc_by(now.replies_rejected.saturating_sub(seen.replies_rejected));
        *seen = now;
    }
}
