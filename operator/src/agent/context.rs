//! What every reconcile and follower shares: the API client, the lease manager, ownership, the
//! settings, and the writers of status, Events and metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dhcpmanager_crds::DhcpAddressStatus;
use dhcpmanager_engine::manager::LeaseManager;
use k8s_openapi::api::core::v1::ObjectReference;
use tracing::{info, warn};

use super::event_writer::EventWriter;
use super::events::Notice;
use super::metrics::Metrics;
use super::ownership::Ownership;
use super::status_writer::{ObjectKey, StatusWriter};

/// The settings reconciles read.
#[derive(Debug, Clone)]
pub struct Settings {
    pub interface: String,
    pub assign_interfaces: bool,
    pub default_pool: String,
    /// Whether `spec.interface`, `spec.mac` and a custom `spec.clientId` are honoured.
    pub allow_custom_identity: bool,
    pub renew_interval: Duration,
    pub takeover_check: Duration,
    pub resync: Duration,
    pub time_scale: f64,
}

pub struct Context {
    pub client: kube::Client,
    pub manager: LeaseManager,
    pub ownership: Arc<Ownership>,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub(super) status_writer: StatusWriter,
    pub(super) event_writer: EventWriter,
    /// One MAC allocation at a time per pool from this agent: its own reconciles would otherwise
    /// race each other for the same free MAC (measured: 100 creates at once, 170 conflicts).
    pub(super) pool_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Context {
    /// Held while this agent changes `pool`'s allocations.
    pub async fn pool_lock(&self, pool: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .pool_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(pool.to_string())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// Queues a status write for an address this agent owns.
    pub fn report_status(&self, object: ObjectKey, status: DhcpAddressStatus) {
        self.status_writer.set(object, status);
    }

    /// Queues an Event on the object `reference` names.
    pub fn publish(&self, reference: ObjectReference, notice: Notice) {
        self.event_writer.publish(reference, notice);
    }

    /// Stops the local client of `key` (if any) without releasing: another agent owns it now.
    pub async fn stop_local(&self, key: &str) {
        if self.manager.status(key).is_some() {
            info!(%key, "another agent owns this address: stopping the local client");
            if let Err(error) = self.manager.stop(key, true).await {
                warn!(%key, %error, "stopping the local client failed");
            }
        }
    }
}
