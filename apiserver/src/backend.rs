//! The seam between the /v1 routes and whatever really obtains addresses (Kubernetes or standalone).

/// An in-memory backend for the HTTP and etcd-mirror tests: not in the production library
/// (feature `test-support`, which this crate's own dev-dependency on itself turns on).
#[cfg(any(test, feature = "test-support"))]
pub mod fake;
pub mod kubernetes;
pub mod standalone;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use crate::MacAddr;
use dhcpmanager_engine::metrics::EngineMetrics;

pub trait Backend: Send + Sync + 'static {
    /// Obtain a new address for `service` ("namespace/name"), bound before `deadline`.
    /// Not idempotent: every call is a new allocation. On error or timeout it must leave NOTHING
    /// behind (no pending request that binds later, no link, no MAC taken from the pool).
    fn allocate(
        &self,
        service: &str,
        deadline: Instant,
    ) -> BoxFuture<'_, Result<Allocation, BackendError>>;

    /// The answer of a successful `allocate` was written to its requester's connection. The
    /// standalone backend records that: until then a crash leaves the allocation shown as
    /// unconfirmed (docs/apiserver.md).
    fn answered(&self, _id: &str) {}

    /// Give the address back (DHCPRELEASE, link and MAC returned). `NotFound` for an unknown IP.
    fn release(&self, ip: Ipv4Addr) -> BoxFuture<'_, Result<Allocation, BackendError>>;

    /// Add MACs to the free pool; MACs already known are accepted silently.
    fn add_macs(&self, macs: Vec<MacAddr>) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Remove MACs from the pool; returns those left in place because an allocation uses them.
    fn remove_macs(&self, macs: Vec<MacAddr>) -> BoxFuture<'_, Result<Vec<MacAddr>, BackendError>>;

    fn status(&self) -> BoxFuture<'_, Result<StatusSnapshot, BackendError>>;

    /// Whether it can serve allocations now (`/readyz`): by default, whether it answers at all.
    fn ready(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move { self.status().await.map(drop) })
    }

    /// Subnets (`a.b.c.d/len`) of the currently bound leases.
    fn lease_cidrs(&self) -> BoxFuture<'_, Result<Vec<String>, BackendError>>;

    /// Fires (without payload) whenever allocations or the MAC pool changed; the etcd mirror listens.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<()>;

    /// The figures of a lease engine running in this process, for /metrics (the Kubernetes
    /// backend has none: the agents' /metrics show theirs).
    fn engine_metrics(&self) -> Option<Arc<EngineMetrics>> {
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// uuid, the `id` of the /v1 answers and the etcd key.
    pub id: String,
    /// "namespace/name" as the client sent it.
    pub service: String,
    /// What is sent as option 12: "name.namespace".
    pub hostname: String,
    pub ip: Option<Ipv4Addr>,
    pub mac: Option<MacAddr>,
    pub interface: InterfaceInfo,
    pub state: AllocationState,
    pub lease: Option<LeaseInfo>,
    /// Handed out durably, but not known to have reached its requester: a crash came between
    /// the write and the answer (standalone; docs/apiserver.md). Renewed like any other.
    pub unconfirmed: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    /// Go's net.Flags bits (up = 1, broadcast = 2, multicast = 16), as the original stored them.
    pub flags: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocationState {
    Pending,
    Bound,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    pub server_id: Ipv4Addr,
    pub subnet_mask: Option<Ipv4Addr>,
    pub routers: Vec<Ipv4Addr>,
    pub dns_servers: Vec<Ipv4Addr>,
    pub domain_name: Option<String>,
    pub bound_at: DateTime<Utc>,
    pub renew_at: DateTime<Utc>,
    pub rebind_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusSnapshot {
    pub allocations: Vec<Allocation>,
    pub available_macs: Vec<MacAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    #[error("no allocation holds {0}")]
    NotFound(Ipv4Addr),
    #[error("no free MAC address in the pool")]
    NoFreeMac,
    /// `id` names the withdrawn allocation (empty when none was created).
    #[error("no lease was bound before the request timeout; the request was withdrawn")]
    Timeout { id: String },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    #[error("DHCP server refused the address: {0}")]
    Refused(String),
}

/// The option-12 hostname of a service ("ns/name" → "name.ns"), shared with the DHCP client.
pub use dhcpmanager_crds::hostname_for_service;

/// `a.b.c.d/len` of the network a lease belongs to; None without a (contiguous) mask.
pub fn lease_cidr(ip: Ipv4Addr, mask: Ipv4Addr) -> Option<String> {
    let bits = u32::from(mask);
    let prefix = bits.leading_ones();
    if bits.count_ones() != prefix {
        return None;
    }
    let network = Ipv4Addr::from(u32::from(ip) & bits);
    Some(format!("{network}/{prefix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_cidr_masks_the_address() {
        let cidr = lease_cidr(
            Ipv4Addr::new(10, 77, 0, 57),
            Ipv4Addr::new(255, 255, 255, 0),
        );
        assert_eq!(cidr.as_deref(), Some("10.77.0.0/24"));
        assert_eq!(
            lease_cidr(Ipv4Addr::new(10, 1, 2, 3), Ipv4Addr::new(255, 0, 255, 0)),
            None
        );
    }
}
