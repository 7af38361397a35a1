//! Mirrors the backend's state into etcd in the original's key layout, for tools that read it.
//!
//! The mirror is derived, never a source of truth: on every change notification (and every
//! `resync_every`) it computes the desired key set from `Backend::status()` and converges etcd to
//! it under the prefix. The API never waits on it; when etcd is down it retries with backoff, and
//! because every pass is a full comparison, a restarted (or wiped) etcd is rebuilt completely.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use etcd_client::{Client, ConnectOptions, GetOptions, PutOptions};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use crate::backend::{Backend, StatusSnapshot};
use crate::config::Config;
use crate::original_json::GoAllocation;

/// One key the mirror wants under the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredValue {
    pub value: String,
    /// Seconds of etcd lease to attach (the time left on the DHCP lease); None: no lease.
    pub ttl_seconds: Option<i64>,
}

/// The original's layout: `allocations/<uuid>` (Go-encoded JSON with its trailing newline, leased
/// for the time left on the DHCP lease), `lookup/<ip>` → uuid, `macs/<mac>` → mac for free MACs.
/// Allocations whose DHCP lease already expired get no keys, as their etcd lease would have run out.
pub fn desired_keys(
    prefix: &str,
    snapshot: &StatusSnapshot,
    now: DateTime<Utc>,
) -> BTreeMap<String, DesiredValue> {
    let mut keys = BTreeMap::new();
    for allocation in &snapshot.allocations {
        let ttl_seconds = match &allocation.lease {
            Some(lease) => {
                let left = (lease.expires_at - now).num_seconds();
                if left <= 0 {
                    continue;
                }
                Some(left)
            }
            None => None,
        };
        let mut value = serde_json::to_string(&GoAllocation::from(allocation))
            .expect("allocation JSON always serialises");
        value.push('\n');
        keys.insert(
            format!("{prefix}allocations/{}", allocation.id),
            DesiredValue { value, ttl_seconds },
        );
        if let (Some(ip), Some(_)) = (allocation.ip, &allocation.lease) {
            keys.insert(
                format!("{prefix}lookup/{ip}"),
                DesiredValue {
                    value: allocation.id.clone(),
                    ttl_seconds: None,
                },
            );
        }
    }
    for mac in &snapshot.available_macs {
        keys.insert(
            format!("{prefix}macs/{mac}"),
            DesiredValue {
                value: mac.to_string(),
                ttl_seconds: None,
            },
        );
    }
    keys
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConvergeStats {
    pub put: usize,
    pub deleted: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("backend status: {0}")]
    Backend(#[from] crate::backend::BackendError),
}

pub struct EtcdMirror {
    endpoints: Vec<String>,
    prefix: String,
    connect: ConnectOptions,
    backend: Arc<dyn Backend>,
    resync_every: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
}

/// Starts the mirror when etcd endpoints are configured (`etcd = []` turns it off).
pub fn spawn(config: &Config, backend: Arc<dyn Backend>) -> Option<JoinHandle<()>> {
    if config.etcd.is_empty() {
        return None;
    }
    let mirror = EtcdMirror::new(config, backend);
    Some(tokio::spawn(mirror.run()))
}

impl EtcdMirror {
    pub fn new(config: &Config, backend: Arc<dyn Backend>) -> Self {
        EtcdMirror {
            endpoints: config.etcd.clone(),
            prefix: config.etcd_prefix.clone(),
            connect: ConnectOptions::new()
                .with_connect_timeout(config.dial_timeout)
                .with_timeout(config.client_timeout),
            backend,
            resync_every: Duration::from_secs(30),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
        }
    }

    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }

    pub fn with_resync_every(mut self, every: Duration) -> Self {
        self.resync_every = every;
        self
    }

    /// Runs until the backend's change channel closes.
    pub async fn run(self) {
        let mut changes = self.backend.subscribe();
        let mut client: Option<Client> = None;
        let mut backoff = self.backoff_min;
        loop {
            // Coalesce a burst of notifications into one pass.
            while changes.try_recv().is_ok() {}
            match self.converge_once(&mut client).await {
                Ok(stats) => {
                    if stats != ConvergeStats::default() {
                        tracing::debug!(
                            put = stats.put,
                            deleted = stats.deleted,
                            "etcd mirror converged"
                        );
                    }
                    backoff = self.backoff_min;
                    tokio::select! {
                        received = changes.recv() => {
                            if matches!(received, Err(RecvError::Closed)) {
                                return;
                            }
                        }
                        _ = tokio::time::sleep(self.resync_every) => {}
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?backoff, "etcd mirror behind; retrying");
                    client = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.backoff_max);
                }
            }
        }
    }

    async fn converge_once(
        &self,
        client: &mut Option<Client>,
    ) -> Result<ConvergeStats, MirrorError> {
        let snapshot = self.backend.status().await?;
        let desired = desired_keys(&self.prefix, &snapshot, Utc::now());
        if client.is_none() {
            *client = Some(Client::connect(&self.endpoints, Some(self.connect.clone())).await?);
        }
        let client = client.as_mut().expect("connected above");
        Ok(converge(client, &self.prefix, &desired).await?)
    }
}

/// Makes the keys under `prefix` exactly `desired`: puts what is missing or different (with a
/// fresh etcd lease where a TTL is wanted, revoking the one it replaces), deletes the rest.
pub async fn converge(
    client: &mut Client,
    prefix: &str,
    desired: &BTreeMap<String, DesiredValue>,
) -> Result<ConvergeStats, etcd_client::Error> {
    let existing = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await?;
    let mut present: BTreeMap<String, (Vec<u8>, i64)> = BTreeMap::new();
    for kv in existing.kvs() {
        present.insert(
            String::from_utf8_lossy(kv.key()).into_owned(),
            (kv.value().to_vec(), kv.lease()),
        );
    }
    let mut stats = ConvergeStats::default();
    for (key, want) in desired {
        let old_lease = match present.get(key) {
            Some((value, _)) if value.as_slice() == want.value.as_bytes() => continue,
            Some((_, lease)) => *lease,
            None => 0,
        };
        let options = match want.ttl_seconds {
            Some(ttl) => {
                let lease = client.lease_grant(ttl, None).await?;
                Some(PutOptions::new().with_lease(lease.id()))
            }
            None => None,
        };
        client
            .put(key.as_str(), want.value.as_str(), options)
            .await?;
        if old_lease != 0 {
            // Best effort: an unrevoked lease only lingers until its TTL with no keys attached.
            let _ = client.lease_revoke(old_lease).await;
        }
        stats.put += 1;
    }
    for key in present.keys().filter(|key| !desired.contains_key(*key)) {
        client.delete(key.as_str(), None).await?;
        stats.deleted += 1;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MacAddr;
    use crate::backend::{Allocation, AllocationState, InterfaceInfo, LeaseInfo};
    use std::net::Ipv4Addr;

    const PREFIX: &str = "/kramergroup.science/dhcp-address-space-endpoint/";

    fn allocation(
        id: &str,
        ip: Option<Ipv4Addr>,
        expires_in: i64,
        now: DateTime<Utc>,
    ) -> Allocation {
        Allocation {
            id: id.into(),
            service: "default/web".into(),
            hostname: "web.default".into(),
            ip,
            mac: Some(MacAddr([2, 0, 0, 0, 0, 1])),
            interface: InterfaceInfo::default(),
            state: if ip.is_some() {
                AllocationState::Bound
            } else {
                AllocationState::Pending
            },
            lease: ip.map(|_| LeaseInfo {
                server_id: Ipv4Addr::new(10, 0, 0, 1),
                subnet_mask: None,
                routers: vec![],
                dns_servers: vec![],
                domain_name: None,
                bound_at: now,
                renew_at: now,
                rebind_at: now,
                expires_at: now + chrono::Duration::seconds(expires_in),
            }),
            unconfirmed: false,
        }
    }

    #[test]
    fn desired_keys_follow_the_original_layout() {
        let now = Utc::now();
        let snapshot = StatusSnapshot {
            allocations: vec![
                allocation("bound-id", Some(Ipv4Addr::new(10, 0, 0, 5)), 600, now),
                allocation("pending-id", None, 0, now),
                allocation("expired-id", Some(Ipv4Addr::new(10, 0, 0, 6)), -5, now),
            ],
            available_macs: vec![MacAddr([0x02, 0xAB, 0, 0, 0, 9])],
        };
        let keys = desired_keys(PREFIX, &snapshot, now);
        let names: Vec<&str> = keys.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            vec![
                "/kramergroup.science/dhcp-address-space-endpoint/allocations/bound-id",
                "/kramergroup.science/dhcp-address-space-endpoint/allocations/pending-id",
                "/kramergroup.science/dhcp-address-space-endpoint/lookup/10.0.0.5",
                "/kramergroup.science/dhcp-address-space-endpoint/macs/02:ab:00:00:00:09",
            ]
        );
        let bound = &keys[&format!("{PREFIX}allocations/bound-id")];
        assert_eq!(bound.ttl_seconds, Some(600));
        assert!(bound.value.ends_with("}\n"));
        assert!(bound.value.starts_with(r#"{"Interface":"#));
        assert_eq!(
            keys[&format!("{PREFIX}allocations/pending-id")].ttl_seconds,
            None
        );
        assert_eq!(keys[&format!("{PREFIX}lookup/10.0.0.5")].value, "bound-id");
        assert_eq!(
            keys[&format!("{PREFIX}macs/02:ab:00:00:00:09")].value,
            "02:ab:00:00:00:09"
        );
    }
}
