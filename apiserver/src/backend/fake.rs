//! An in-memory Backend for tests: binds after a delay, never binds, or fails, on demand.
//! Not a runtime option of the binary.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::BoxFuture;
use tokio::sync::broadcast;

use super::{
    Allocation, AllocationState, Backend, BackendError, InterfaceInfo, LeaseInfo, StatusSnapshot,
    hostname_for_service, lease_cidr,
};
use crate::MacAddr;

#[derive(Debug, Clone)]
pub enum FakeBehaviour {
    BindAfter(Duration),
    /// Honours the deadline: answers Timeout at it.
    NeverBind,
    /// Ignores the deadline and never answers: only the caller dropping the future ends it.
    Hang,
    Fail(BackendError),
}

pub struct FakeBackend {
    behaviour: Mutex<FakeBehaviour>,
    state: Mutex<FakeState>,
    changes: broadcast::Sender<()>,
    /// When the pool is empty, make up a fresh MAC instead of failing (for fuzzing, where
    /// random DELETE /v1/mac calls would otherwise starve POST /v1/ip).
    synthesize_macs: bool,
}

#[derive(Default)]
struct FakeState {
    allocations: Vec<Allocation>,
    /// Ids `Backend::answered` reported, in order.
    answered: Vec<String>,
    free_macs: BTreeSet<MacAddr>,
    issued: u32,
}

const SUBNET: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 0);
const MASK: Ipv4Addr = Ipv4Addr::new(255, 255, 0, 0);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const LEASE_SECONDS: i64 = 3600;

impl FakeBackend {
    pub fn new(behaviour: FakeBehaviour) -> Self {
        FakeBackend {
            behaviour: Mutex::new(behaviour),
            state: Mutex::default(),
            changes: broadcast::channel(64).0,
            synthesize_macs: false,
        }
    }

    pub fn with_macs(self, macs: impl IntoIterator<Item = MacAddr>) -> Self {
        self.state.lock().unwrap().free_macs.extend(macs);
        self
    }

    pub fn synthesizing_macs(mut self) -> Self {
        self.synthesize_macs = true;
        self
    }

    /// The allocations whose answer the HTTP layer reported written, in order.
    pub fn answered_ids(&self) -> Vec<String> {
        self.state.lock().unwrap().answered.clone()
    }

    pub fn set_behaviour(&self, behaviour: FakeBehaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    fn notify(&self) {
        // No receiver is fine: nobody mirrors.
        let _ = self.changes.send(());
    }

    /// Reserve a MAC and record the pending allocation, as a real backend would before DISCOVER.
    fn begin(&self, service: &str) -> Result<Allocation, BackendError> {
        let mut state = self.state.lock().unwrap();
        let mac = match state.free_macs.pop_first() {
            Some(mac) => mac,
            None if self.synthesize_macs => {
                let [_, _, a, b] = state.issued.to_be_bytes();
                MacAddr([0x02, 0xfa, 0xce, 0x00, a, b])
            }
            None => return Err(BackendError::NoFreeMac),
        };
        state.issued += 1;
        let allocation = Allocation {
            id: uuid::Uuid::new_v4().to_string(),
            service: service.to_string(),
            hostname: hostname_for_service(service),
            ip: None,
            mac: Some(mac),
            interface: InterfaceInfo {
                name: format!("dm{}", state.issued),
                index: 100 + state.issued,
                mtu: 1500,
                flags: 0,
            },
            state: AllocationState::Pending,
            lease: None,
            unconfirmed: false,
        };
        state.allocations.push(allocation.clone());
        Ok(allocation)
    }

    fn bind(&self, id: &str) -> Option<Allocation> {
        let mut state = self.state.lock().unwrap();
        let allocation = state.allocations.iter_mut().find(|a| a.id == id)?;
        let host = (allocation.interface.index % 65_000) + 10;
        let now = Utc::now();
        let ip = Ipv4Addr::from(u32::from(SUBNET) + host);
        allocation.ip = Some(ip);
        allocation.state = AllocationState::Bound;
        allocation.interface.flags = 1 | 2 | 16;
        allocation.lease = Some(LeaseInfo {
            server_id: SERVER,
            subnet_mask: Some(MASK),
            routers: vec![SERVER],
            dns_servers: vec![SERVER],
            domain_name: Some("lab.test".into()),
            bound_at: now,
            renew_at: now + chrono::Duration::seconds(LEASE_SECONDS / 2),
            rebind_at: now + chrono::Duration::seconds(LEASE_SECONDS * 7 / 8),
            expires_at: now + chrono::Duration::seconds(LEASE_SECONDS),
        });
        Some(allocation.clone())
    }

    /// Withdraw an allocation and return its MAC to the pool.
    fn forget(&self, id: &str) -> Option<Allocation> {
        let mut state = self.state.lock().unwrap();
        let position = state.allocations.iter().position(|a| a.id == id)?;
        let allocation = state.allocations.remove(position);
        if let Some(mac) = allocation.mac {
            state.free_macs.insert(mac);
        }
        Some(allocation)
    }

    /// Wait as the behaviour says; false when the deadline comes first.
    async fn bound_before(behaviour: &FakeBehaviour, deadline: Instant) -> bool {
        match behaviour {
            FakeBehaviour::BindAfter(delay) if Instant::now() + *delay <= deadline => {
                tokio::time::sleep(*delay).await;
                true
            }
            FakeBehaviour::Hang => std::future::pending().await,
            _ => {
                tokio::time::sleep_until(deadline.into()).await;
                false
            }
        }
    }
}

impl Backend for FakeBackend {
    fn answered(&self, id: &str) {
        self.state.lock().unwrap().answered.push(id.to_string());
    }

    fn allocate(
        &self,
        service: &str,
        deadline: Instant,
    ) -> BoxFuture<'_, Result<Allocation, BackendError>> {
        let service = service.to_string();
        Box::pin(async move {
            let behaviour = self.behaviour.lock().unwrap().clone();
            if let FakeBehaviour::Fail(error) = behaviour {
                return Err(error);
            }
            let pending = self.begin(&service)?;
            self.notify();
            // Dropped mid-wait (client went away): withdraw, as a real backend must.
            let guard = PendingGuard {
                backend: self,
                id: pending.id.clone(),
                armed: true,
            };
            let in_time = Self::bound_before(&behaviour, deadline).await;
            guard.disarm();
            let outcome = match in_time {
                true => self
                    .bind(&pending.id)
                    .ok_or(BackendError::Timeout { id: pending.id }),
                false => {
                    self.forget(&pending.id);
                    Err(BackendError::Timeout { id: pending.id })
                }
            };
            self.notify();
            outcome
        })
    }

    fn release(&self, ip: Ipv4Addr) -> BoxFuture<'_, Result<Allocation, BackendError>> {
        Box::pin(async move {
            let id = {
                let state = self.state.lock().unwrap();
                state
                    .allocations
                    .iter()
                    .find(|a| a.ip == Some(ip))
                    .map(|a| a.id.clone())
            };
            let mut released = id
                .and_then(|id| self.forget(&id))
                .ok_or(BackendError::NotFound(ip))?;
            released.state = AllocationState::Stopped;
            self.notify();
            Ok(released)
        })
    }

    fn add_macs(&self, macs: Vec<MacAddr>) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            {
                let mut state = self.state.lock().unwrap();
                let in_use: BTreeSet<MacAddr> =
                    state.allocations.iter().filter_map(|a| a.mac).collect();
                state
                    .free_macs
                    .extend(macs.into_iter().filter(|mac| !in_use.contains(mac)));
            }
            self.notify();
            Ok(())
        })
    }

    fn remove_macs(&self, macs: Vec<MacAddr>) -> BoxFuture<'_, Result<Vec<MacAddr>, BackendError>> {
        Box::pin(async move {
            let unprocessed = {
                let mut state = self.state.lock().unwrap();
                let in_use: BTreeSet<MacAddr> =
                    state.allocations.iter().filter_map(|a| a.mac).collect();
                let mut unprocessed = Vec::new();
                for mac in macs {
                    if in_use.contains(&mac) {
                        unprocessed.push(mac);
                    } else {
                        state.free_macs.remove(&mac);
                    }
                }
                unprocessed
            };
            self.notify();
            Ok(unprocessed)
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<StatusSnapshot, BackendError>> {
        Box::pin(async move {
            let state = self.state.lock().unwrap();
            Ok(StatusSnapshot {
                allocations: state.allocations.clone(),
                available_macs: state.free_macs.iter().copied().collect(),
            })
        })
    }

    fn lease_cidrs(&self) -> BoxFuture<'_, Result<Vec<String>, BackendError>> {
        Box::pin(async move {
            let state = self.state.lock().unwrap();
            let mut cidrs: Vec<String> = state
                .allocations
                .iter()
                .filter_map(|a| lease_cidr(a.ip?, a.lease.as_ref()?.subnet_mask?))
                .collect();
            cidrs.sort();
            cidrs.dedup();
            Ok(cidrs)
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<()> {
        self.changes.subscribe()
    }
}

/// Withdraws a pending allocation when its allocate future is dropped unfinished.
struct PendingGuard<'a> {
    backend: &'a FakeBackend,
    id: String,
    armed: bool,
}

impl PendingGuard<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.backend.forget(&self.id);
        self.backend.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> MacAddr {
        MacAddr([0x02, 0x77, 0, 0, 0, last])
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn binds_then_releases_and_returns_the_mac() {
        let backend =
            FakeBackend::new(FakeBehaviour::BindAfter(Duration::ZERO)).with_macs([mac(1)]);
        let bound = backend.allocate("default/web", soon()).await.unwrap();
        assert_eq!(bound.hostname, "web.default");
        assert_eq!(bound.state, AllocationState::Bound);
        assert_eq!(bound.mac, Some(mac(1)));
        assert!(backend.status().await.unwrap().available_macs.is_empty());
        assert_eq!(backend.lease_cidrs().await.unwrap(), vec!["10.77.0.0/16"]);

        let released = backend.release(bound.ip.unwrap()).await.unwrap();
        assert_eq!(released.id, bound.id);
        let status = backend.status().await.unwrap();
        assert!(status.allocations.is_empty());
        assert_eq!(status.available_macs, vec![mac(1)]);
    }

    #[tokio::test]
    async fn timeout_leaves_nothing_behind() {
        let backend = FakeBackend::new(FakeBehaviour::NeverBind).with_macs([mac(1)]);
        let deadline = Instant::now() + Duration::from_millis(50);
        let outcome = backend.allocate("default/web", deadline).await;
        assert!(
            matches!(&outcome, Err(BackendError::Timeout { id }) if !id.is_empty()),
            "{outcome:?}"
        );
        let status = backend.status().await.unwrap();
        assert!(status.allocations.is_empty());
        assert_eq!(status.available_macs, vec![mac(1)]);
    }

    #[tokio::test]
    async fn dropped_request_is_withdrawn() {
        let backend = FakeBackend::new(FakeBehaviour::NeverBind).with_macs([mac(1)]);
        let request = backend.allocate("default/web", soon());
        let _ = tokio::time::timeout(Duration::from_millis(20), request).await;
        assert!(backend.status().await.unwrap().allocations.is_empty());
    }

    #[tokio::test]
    async fn empty_pool_fails_unless_synthesizing() {
        let strict = FakeBackend::new(FakeBehaviour::BindAfter(Duration::ZERO));
        assert_eq!(
            strict.allocate("a", soon()).await,
            Err(BackendError::NoFreeMac)
        );
        let lenient =
            FakeBackend::new(FakeBehaviour::BindAfter(Duration::ZERO)).synthesizing_macs();
        let first = lenient.allocate("a", soon()).await.unwrap();
        let second = lenient.allocate("a", soon()).await.unwrap();
        assert_ne!(first.ip, second.ip, "POST is not idempotent per service");
    }

    #[tokio::test]
    async fn macs_in_use_are_not_removed() {
        let backend =
            FakeBackend::new(FakeBehaviour::BindAfter(Duration::ZERO)).with_macs([mac(1), mac(2)]);
        let bound = backend.allocate("a", soon()).await.unwrap();
        let unprocessed = backend.remove_macs(vec![mac(1), mac(2)]).await.unwrap();
        assert_eq!(unprocessed, vec![bound.mac.unwrap()]);
        assert!(backend.status().await.unwrap().available_macs.is_empty());
    }
}
