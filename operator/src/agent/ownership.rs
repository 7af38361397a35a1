//! Which agent may transmit for which address, through `coordination.k8s.io` Leases.
//!
//! Each agent renews one Lease of its own (`dhcpmanager-agent-<node>`); an address belongs to the
//! agent named in its `status.node`. The two rules that keep one MAC on one node:
//! - an agent that has not renewed its Lease for `lease_duration` (by its own clock, from the
//!   last renewal the API server acknowledged) stops transmitting and deletes its links: it
//!   *fences* itself;
//! - another agent takes an address over only after it has watched the owner's Lease stay
//!   unchanged for `lease_duration + grace` **while its own watch of the Leases was healthy**.
//!   The owner's last acknowledged renewal happened before any peer could see it, so the owner
//!   always fences before a peer may take over, even across an API outage.
//!
//! While the API server is down for everyone nobody can take over (a takeover is an API write),
//! and renewals of DHCP leases go on until the owner's own Lease runs out (`lease_duration`);
//! longer outages pause DHCP renewals (the leases stay valid at the server until they expire)
//! and the agent resumes them with INIT-REBOOT once it renews its Lease again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::watcher;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::error::Error;

/// Label on every agent Lease (what peers watch).
pub const LEASE_LABEL: (&str, &str) = ("app.kubernetes.io/component", "dhcpmanager-agent");

#[derive(Debug, Clone)]
pub struct OwnershipConfig {
    pub node: String,
    pub lease_duration: Duration,
    pub renew_interval: Duration,
    pub takeover_grace: Duration,
    /// The agent's Pod: set as the owner of our Lease on every renewal (a new Pod takes it
    /// over), so the garbage collector removes the Lease with the last agent Pod of the node.
    pub owner: Option<OwnerReference>,
}

/// What one agent knows about its own Lease and its peers'.
pub struct Ownership {
    config: OwnershipConfig,
    leases: Api<Lease>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// When the API server last acknowledged a renewal of our Lease (local monotonic clock).
    renewed_at: Option<Instant>,
    /// Since when our watch of the peers' Leases has been answering without error.
    watch_healthy_since: Option<Instant>,
    /// holder -> (resourceVersion last seen, when it was first seen, its lease duration).
    peers: HashMap<String, PeerSeen>,
}

struct PeerSeen {
    version: String,
    seen_at: Instant,
    duration: Duration,
}

impl Ownership {
    pub fn new(config: OwnershipConfig, leases: Api<Lease>) -> Self {
        Ownership {
            config,
            leases,
            state: Mutex::new(State::default()),
        }
    }

    pub fn node(&self) -> &str {
        &self.config.node
    }

    pub fn lease_name(&self) -> String {
        format!("dhcpmanager-agent-{}", self.config.node)
    }

    /// Whether this agent may transmit now: its Lease was renewed less than a duration ago.
    pub fn may_transmit(&self) -> bool {
        self.lock()
            .renewed_at
            .is_some_and(|at| at.elapsed() < self.config.lease_duration)
    }

    /// Whether `node`'s agent must be presumed alive (so its addresses are not to be taken).
    /// Blind (our own watch unhealthy) means alive: never take over what we cannot see.
    pub fn peer_alive(&self, node: &str) -> bool {
        if node == self.config.node {
            return true;
        }
        let state = self.lock();
        let Some(healthy_since) = state.watch_healthy_since else {
            return true;
        };
        let (reference, duration) = match state.peers.get(node) {
            Some(peer) => (peer.seen_at.max(healthy_since), peer.duration),
            None => (healthy_since, self.config.lease_duration),
        };
        reference.elapsed() < duration + self.config.takeover_grace
    }

    /// Whether this agent is the coordinator: it holds its own Lease and no live agent it knows
    /// of has a smaller node name. The coordinator does what no address owner can do yet (the
    /// Service controller: create a Service's address, warn about a Service it cannot serve).
    /// Two agents with different views may both think so for a moment; what they do then is
    /// idempotent or refused by the API server (create of an existing object).
    pub fn is_coordinator(&self) -> bool {
        if !self.may_transmit() {
            return false;
        }
        let known: Vec<String> = self.lock().peers.keys().cloned().collect();
        known
            .iter()
            .filter(|node| node.as_str() < self.node())
            .all(|node| !self.peer_alive(node))
    }

    /// One renewal of our Lease (created if missing). Ok(true) when the API server took it.
    pub async fn renew(&self) -> Result<bool, Error> {
        let name = self.lease_name();
        let kube_error = |action: &str| {
            let action = format!("{action} Lease {name}");
            move |source| Error::Kube { action, source }
        };
        let now = MicroTime(dhcpmanager_crds::to_time(Utc::now()).0);
        let duration = i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let current = self
            .leases
            .get_opt(&name)
            .await
            .map_err(kube_error("reading"))?;
        let result = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        labels: Some(
                            [(LEASE_LABEL.0.to_string(), LEASE_LABEL.1.to_string())].into(),
                        ),
                        owner_references: self.owner_references(),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.config.node.clone()),
                        lease_duration_seconds: Some(duration),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        ..LeaseSpec::default()
                    }),
                };
                self.leases.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                if self.config.owner.is_some() {
                    lease.metadata.owner_references = self.owner_references();
                }
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                spec.holder_identity = Some(self.config.node.clone());
                spec.lease_duration_seconds = Some(duration);
                spec.renew_time = Some(now);
                self.leases
                    .replace(&name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => {
                self.lock().renewed_at = Some(Instant::now());
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(source) => Err(kube_error("renewing")(source)),
        }
    }

    fn owner_references(&self) -> Option<Vec<OwnerReference>> {
        self.config.owner.clone().map(|owner| vec![owner])
    }

    /// Renews our Lease forever and publishes whether it is held: `false` means fence (stop
    /// every client, remove the links), `true` means transmit. A failed renewal is retried at a
    /// quarter of the interval.
    pub async fn run_renewals(&self, holding: tokio::sync::watch::Sender<bool>) {
        loop {
            let renewed = match self.renew().await {
                Ok(renewed) => renewed,
                Err(error) => {
                    warn!(%error, "could not renew the agent Lease");
                    false
                }
            };
            let may_transmit = self.may_transmit();
            holding.send_if_modified(|held| {
                let changed = *held != may_transmit;
                if changed && may_transmit {
                    info!(lease = %self.lease_name(), "holding the agent Lease: transmitting");
                } else if changed {
                    warn!(lease = %self.lease_name(), "agent Lease ran out: stopping every DHCP client and removing its links");
                }
                *held = may_transmit;
                changed
            });
            let wait = if renewed {
                self.config.renew_interval
            } else {
                self.config.renew_interval / 4
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Watches the peers' Leases forever, recording when each last changed.
    pub async fn run_peer_watch(&self) {
        let config =
            watcher::Config::default().labels(&format!("{}={}", LEASE_LABEL.0, LEASE_LABEL.1));
        let mut events = watcher(self.leases.clone(), config).boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    let mut state = self.lock();
                    state.watch_healthy_since.get_or_insert_with(Instant::now);
                    if let watcher::Event::Apply(lease) | watcher::Event::InitApply(lease) = event {
                        observe(&mut state, &lease);
                    }
                }
                Err(error) => {
                    warn!(%error, "watching agent Leases failed; no takeovers until it recovers");
                    self.lock().watch_healthy_since = None;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Tests: as if the API server had just acknowledged a renewal of our Lease.
    #[cfg(test)]
    pub(crate) fn mark_renewed_for_tests(&self) {
        self.lock().renewed_at = Some(Instant::now());
    }

    /// Tests: as if our (healthy) watch had last seen `node`'s Lease change `ago`, with our own
    /// lease duration. Long ago means dead, just now means alive.
    #[cfg(test)]
    pub(crate) fn peer_seen_for_tests(&self, node: &str, ago: Duration) {
        let at = Instant::now()
            .checked_sub(ago)
            .expect("the monotonic clock started longer ago than `ago`");
        let mut state = self.lock();
        let since = state.watch_healthy_since.map_or(at, |since| since.min(at));
        state.watch_healthy_since = Some(since);
        state.peers.insert(
            node.to_string(),
            PeerSeen {
                version: "test".into(),
                seen_at: at,
                duration: self.config.lease_duration,
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn observe(state: &mut State, lease: &Lease) {
    let Some(spec) = &lease.spec else { return };
    let Some(holder) = &spec.holder_identity else {
        return;
    };
    let version = lease.resource_version().unwrap_or_default();
    let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(1) as u64);
    let changed = state
        .peers
        .get(holder)
        .is_none_or(|seen| seen.version != version);
    if changed {
        state.peers.insert(
            holder.clone(),
            PeerSeen {
                version,
                seen_at: Instant::now(),
                duration,
            },
        );
    }
}
