//! One task per running address: it takes the engine's status of the address and the address's
//! events, and turns them into status writes, Events and metrics until the client stops.

use std::sync::Arc;

use dhcpmanager_crds::{DhcpAddressStatus, Phase};
use dhcpmanager_engine::dhcp::{LeaseRecord, MacAddr, State};
use dhcpmanager_engine::manager::{AddressStatus, KeyedEvent};
use k8s_openapi::api::core::v1::ObjectReference;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::sync::watch;
use tracing::warn;

use super::context::Context;
use super::events::notice_for;
use super::metrics::AddressLabel;
use super::status::{Observed, status_for};
use super::status_writer::ObjectKey;

/// The address a follower reports on, as the reconcile that started it saw it.
pub struct Followed {
    /// The engine's key ("namespace/name").
    pub key: String,
    pub object: ObjectKey,
    /// What its Events point at.
    pub reference: ObjectReference,
    pub mac: MacAddr,
    pub generation: Option<i64>,
    /// Its status when the client started.
    pub initial: DhcpAddressStatus,
}

/// Follows one running address. `events` must have been subscribed before the client started,
/// so that none of its events is missed; the events of other addresses are skipped. Every
/// follower thus receives (a clone of) every event: N addresses cost N x events, cheap next to
/// the status writes they cause, and no table from keys to followers can go stale.
pub fn spawn(
    ctx: Arc<Context>,
    address: Followed,
    mut engine: watch::Receiver<AddressStatus>,
    mut events: broadcast::Receiver<Arc<KeyedEvent>>,
) {
    tokio::spawn(async move {
        let mut follower = Follower::new(ctx, address);
        'following: loop {
            let current = engine.borrow_and_update().clone();
            if current.finished && current.state != State::Released {
                // Stopped without release (fenced or taken over): the next owner reports.
                break;
            }
            follower.on_status(&current);
            if current.finished {
                break;
            }
            loop {
                tokio::select! {
                    // Status first: an Event may wait, the status write is what a POST waits for.
                    biased;
                    changed = engine.changed() => match changed {
                        Ok(()) => continue 'following,
                        Err(_) => break 'following,
                    },
                    received = events.recv() => match received {
                        Ok(keyed) => follower.on_event(&keyed),
                        Err(RecvError::Lagged(missed)) => {
                            warn!(key = %follower.address.key, missed, "event stream lagged");
                        }
                        Err(RecvError::Closed) => break 'following,
                    },
                }
            }
        }
        // The engine sends an address's events before the status change that ends it (the
        // Released event before `finished`): they are queued by now.
        loop {
            match events.try_recv() {
                Ok(keyed) => follower.on_event(&keyed),
                Err(TryRecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
        follower.finish();
    });
}

struct Follower {
    ctx: Arc<Context>,
    address: Followed,
    started: tokio::time::Instant,
    /// The status last queued for writing.
    previous: DhcpAddressStatus,
    /// The phase counted in the `addresses` gauge.
    shown: Option<Phase>,
    timed: bool,
    expired: bool,
    last_record: Option<LeaseRecord>,
}

impl Follower {
    fn new(ctx: Arc<Context>, address: Followed) -> Self {
        Follower {
            previous: address.initial.clone(),
            ctx,
            address,
            started: tokio::time::Instant::now(),
            shown: None,
            timed: false,
            expired: false,
            last_record: None,
        }
    }

    fn label(&self) -> AddressLabel {
        AddressLabel {
            namespace: self.address.object.0.clone(),
            name: self.address.object.1.clone(),
        }
    }

    fn on_status(&mut self, current: &AddressStatus) {
        match (&self.last_record, &current.record) {
            (Some(old), None) if !old.is_valid_at(chrono::Utc::now()) => self.expired = true,
            (_, Some(_)) => self.expired = false,
            _ => {}
        }
        self.last_record = current.record.clone();
        let desired = status_for(
            current,
            &Observed {
                node: self.ctx.ownership.node(),
                generation: self.address.generation,
                mac: self.address.mac,
                expired: self.expired,
                previous: Some(&self.previous),
                now: chrono::Utc::now(),
            },
        );
        let metrics = &self.ctx.metrics;
        metrics.phase_changed(self.shown, desired.phase);
        self.shown = desired.phase;
        if !self.timed && desired.phase.is_some_and(Phase::holds_address) {
            self.timed = true;
            metrics
                .time_to_bound
                .observe(self.started.elapsed().as_secs_f64());
        }
        match &current.record {
            Some(record) => {
                metrics
                    .lease_expiry
                    .get_or_create(&self.label())
                    .set(record.expires_at.timestamp());
            }
            None => {
                metrics.lease_expiry.remove(&self.label());
            }
        }
        if desired != self.previous {
            self.ctx
                .report_status(self.address.object.clone(), desired.clone());
            self.previous = desired;
        }
    }

    fn on_event(&self, keyed: &KeyedEvent) {
        if keyed.key != self.address.key {
            return;
        }
        if let Some(notice) = notice_for(&keyed.event) {
            self.ctx.publish(self.address.reference.clone(), notice);
        }
    }

    fn finish(self) {
        self.ctx.metrics.phase_changed(self.shown, None);
        self.ctx.metrics.lease_expiry.remove(&self.label());
    }
}
