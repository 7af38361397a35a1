//! `dhcpmanager-operator agent`: the node agent. It reconciles `DhcpAddress` objects through the
//! lease manager, holds MACs in `MacPool`s, owns addresses through `coordination.k8s.io` Leases,
//! writes status, Events and metrics.

pub mod mac_pool;
pub mod metrics;
pub mod ownership;
pub mod reconcile;
pub mod status;
pub mod status_writer;

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod mac_pool_tests;
#[cfg(test)]
mod reconcile_tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use dhcpmanager_crds::{DhcpAddress, DhcpAddressStatus, MacPool, Phase};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{Controller, watcher};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::error::Error;
use dhcpmanager_engine::dhcp::{ClientEvent, MacAddr, State};
use dhcpmanager_engine::manager::{AddressStatus, LeaseManager, ManagerConfig};
use dhcpmanager_engine::metrics::{EngineMetrics, IpChanges};
use metrics::{AddressLabel, Metrics};
use ownership::{Ownership, OwnershipConfig};
use status::{Observed, status_for};
use status_writer::{ObjectKey, StatusWriter};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// This node's name (the DaemonSet passes spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Namespace of the agents' coordination Leases.
    #[arg(long, env = "POD_NAMESPACE", default_value = "dhcpmanager")]
    pub namespace: String,
    /// The agent's own Pod (the DaemonSet passes metadata.name and metadata.uid): its Lease is
    /// owned by the Pod, so Kubernetes deletes the Lease once no agent Pod on the node is left
    /// (`helm uninstall`, a node leaving the DaemonSet), even after a crash.
    #[arg(long, env = "POD_NAME", requires = "pod_uid")]
    pub pod_name: Option<String>,
    #[arg(long, env = "POD_UID", requires = "pod_name")]
    pub pod_uid: Option<String>,
    /// The original configuration file (interface, assign-interfaces, macs, ...).
    #[arg(long, env = "DHCP_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Parent interface of the macvlans (overrides the configuration's `interface`).
    #[arg(long)]
    pub interface: Option<String>,
    /// Configure leased IPs on the macvlans by default (overrides `assign-interfaces`).
    #[arg(long)]
    pub assign_interfaces: Option<bool>,
    /// The MacPool used when a DhcpAddress names none; created from the configuration's `macs`.
    #[arg(long, default_value = "default")]
    pub default_pool: String,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:9342")]
    pub metrics_addr: SocketAddr,
    /// How long the agent's Lease is valid without renewal (and so the longest API outage that
    /// does not pause DHCP renewals).
    #[arg(long, default_value = "40s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub renew_interval: Duration,
    /// Extra time a peer's Lease must stay unrenewed before its addresses are taken over.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub takeover_grace: Duration,
    /// How often every address is re-checked even without a change.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub resync: Duration,
    /// New DHCP transmissions per second toward the server, all addresses together.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 100)]
    pub burst: u32,
    /// Create the macvlans and DHCP sockets in this network namespace (e.g. /proc/1/ns/net, the
    /// host's, when the agent runs in the pod network) instead of the agent's own.
    #[arg(long)]
    pub link_netns: Option<std::path::PathBuf>,
    /// Run the Service controller: LoadBalancer Services of class `dhcpmanager.io/dhcp` get a
    /// DhcpAddress, and their status shows its IP.
    #[arg(long)]
    pub service_controller: bool,
    /// With the Service controller: also serve LoadBalancer Services that name no class
    /// (dhcpmanager is the cluster's default load balancer).
    #[arg(long)]
    pub default_load_balancer: bool,
    /// Divide every DHCP protocol wait by this factor (tests only).
    #[arg(long, default_value_t = 1.0, hide = true)]
    pub time_scale: f64,
}

/// The settings reconciles read.
#[derive(Debug, Clone)]
pub struct Settings {
    pub interface: String,
    pub assign_interfaces: bool,
    pub default_pool: String,
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
    status_writer: StatusWriter,
    recorder: Recorder,
    references: Mutex<HashMap<String, ObjectReference>>,
    /// One MAC allocation at a time per pool from this agent: its own reconciles would otherwise
    /// race each other for the same free MAC (measured: 100 creates at once, 170 conflicts).
    pool_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Context {
    fn refs(&self) -> std::sync::MutexGuard<'_, HashMap<String, ObjectReference>> {
        self.references.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn remember(&self, key: &str, reference: ObjectReference) {
        self.refs().insert(key.to_string(), reference);
    }

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

    /// Stops the local client of `key` (if any) without releasing: another agent owns it now.
    pub async fn stop_local(&self, key: &str) {
        if self.manager.status(key).is_some() {
            info!(%key, "another agent owns this address: stopping the local client");
            if let Err(error) = self.manager.stop(key, true).await {
                warn!(%key, %error, "stopping the local client failed");
            }
        }
    }

    /// Follows one running address and turns every change into a status write and metrics.
    pub fn watch_address(
        self: &Arc<Self>,
        key: String,
        object: ObjectKey,
        mut engine: watch::Receiver<AddressStatus>,
        mac: MacAddr,
        generation: Option<i64>,
        initial: DhcpAddressStatus,
    ) {
        let ctx = self.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut previous = initial;
            let mut shown: Option<Phase> = None;
            let mut timed = false;
            let mut expired = false;
            let mut last_record = None;
            loop {
                let current = engine.borrow_and_update().clone();
                if current.finished && current.state != State::Released {
                    // Stopped without release (fenced or taken over): the next owner reports.
                    break;
                }
                match (&last_record, &current.record) {
                    (Some(old), None) if old_expired(old) => expired = true,
                    (_, Some(_)) => expired = false,
                    _ => {}
                }
                last_record = current.record.clone();
                let desired = status_for(
                    &current,
                    &Observed {
                        node: ctx.ownership.node(),
                        generation,
                        mac,
                        expired,
                        previous: Some(&previous),
                        now: chrono::Utc::now(),
                    },
                );
                ctx.metrics.phase_changed(shown, desired.phase);
                shown = desired.phase;
                if !timed && desired.phase.is_some_and(Phase::holds_address) {
                    timed = true;
                    ctx.metrics
                        .time_to_bound
                        .observe(started.elapsed().as_secs_f64());
                }
                let label = AddressLabel {
                    namespace: object.0.clone(),
                    name: object.1.clone(),
                };
                match &current.record {
                    Some(record) => {
                        ctx.metrics
                            .lease_expiry
                            .get_or_create(&label)
                            .set(record.expires_at.timestamp());
                    }
                    None => {
                        ctx.metrics.lease_expiry.remove(&label);
                    }
                }
                if desired != previous {
                    ctx.status_writer.set(object.clone(), desired.clone());
                    previous = desired;
                }
                if current.finished || engine.changed().await.is_err() {
                    break;
                }
            }
            ctx.metrics.phase_changed(shown, None);
            ctx.metrics.lease_expiry.remove(&AddressLabel {
                namespace: object.0.clone(),
                name: object.1.clone(),
            });
            let _ = key;
        });
    }

    /// Publishes the Events users care about and counts them.
    async fn publish(&self, key: &str, event: &ClientEvent) {
        let (type_, reason, note) = match event {
            ClientEvent::Bound {
                record,
                renewal: false,
                ..
            } => (
                EventType::Normal,
                "Bound",
                format!(
                    "leased {} from {} until {}",
                    record.ip, record.server_id, record.expires_at
                ),
            ),
            ClientEvent::Bound {
                record,
                renewal: true,
                after_failures,
            } => {
                if *after_failures == 0 {
                    return;
                }
                (
                    EventType::Normal,
                    "Renewed",
                    format!(
                        "{} renewed after {after_failures} unanswered attempts; valid until {}",
                        record.ip, record.expires_at
                    ),
                )
            }
            ClientEvent::Nak {
                server,
                message,
                state,
            } => (
                EventType::Warning,
                "Nak",
                format!(
                    "server {server} refused the address while {state}: {}",
                    message.as_deref().unwrap_or("no message")
                ),
            ),
            ClientEvent::IpChanged { old, new } => (
                EventType::Warning,
                "IpChanged",
                format!("the address changed from {old} to {new}"),
            ),
            ClientEvent::Expired { ip } => (
                EventType::Warning,
                "Expired",
                format!("the lease of {ip} ran out; looking for a new one"),
            ),
            ClientEvent::Released { ip } => (
                EventType::Normal,
                "Released",
                format!("{ip} released to the DHCP server"),
            ),
            ClientEvent::Declined { ip } => (
                EventType::Warning,
                "Declined",
                format!("{ip} is in use on the network (ARP); declined"),
            ),
            ClientEvent::GaveUp { ip } => (
                EventType::Warning,
                "ServerSilent",
                format!("no answer to INIT-REBOOT; keeping the recorded lease of {ip}"),
            ),
            ClientEvent::Rejected { .. } | ClientEvent::StateChanged { .. } => return,
        };
        // The Released event is the last word on an address: forget it afterwards.
        let reference = match event {
            ClientEvent::Released { .. } => self.refs().remove(key),
            _ => self.refs().get(key).cloned(),
        };
        let Some(reference) = reference else {
            return;
        };
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Lease".into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &reference).await {
            warn!(%key, %error, "could not publish an Event");
        }
    }
}

fn old_expired(record: &dhcpmanager_engine::dhcp::LeaseRecord) -> bool {
    !record.is_valid_at(chrono::Utc::now())
}

pub async fn run(args: AgentArgs, config: dhcpmanager_engine::config::Config) -> Result<(), Error> {
    info!(node = %args.node_name, "agent starting");
    let client = dhcpmanager_crds::client::connect()
        .await
        .map_err(|source| Error::Kube {
            action: "connecting to the Kubernetes API".into(),
            source,
        })?;
    let settings = Settings {
        interface: args
            .interface
            .clone()
            .unwrap_or_else(|| config.interface.clone()),
        assign_interfaces: args.assign_interfaces.unwrap_or(config.assign_interfaces),
        default_pool: args.default_pool.clone(),
        renew_interval: args.renew_interval,
        takeover_check: args.takeover_grace.max(Duration::from_secs(1)),
        resync: args.resync,
        time_scale: args.time_scale,
    };
    let netns = match &args.link_netns {
        Some(path) => dhcpmanager_engine::net::NetNs::open(path).map_err(|e| Error::Flag {
            flag: "--link-netns",
            problem: e.to_string(),
        })?,
        None => dhcpmanager_engine::net::NetNs::current(),
    };
    let manager = LeaseManager::new(
        ManagerConfig {
            rate_per_second: args.rate,
            burst: args.burst,
            netns,
            ..ManagerConfig::default()
        },
        // Records reach the API through the status watch; nothing else to persist.
        Arc::new(|_: &str, _: Option<&dhcpmanager_engine::dhcp::LeaseRecord>| {}),
    )?;
    let macs: Vec<MacAddr> = config.macs.clone();
    let pools: Api<MacPool> = Api::all(client.clone());
    if let Err(error) =
        mac_pool::seed_default_pool(&pools, &settings.default_pool, &macs, None).await
    {
        warn!(%error, "could not create the default MacPool (continuing)");
    }
    let ownership = Arc::new(Ownership::new(
        OwnershipConfig {
            node: args.node_name.clone(),
            lease_duration: args.lease_duration,
            renew_interval: args.renew_interval,
            takeover_grace: args.takeover_grace,
            owner: args
                .pod_name
                .clone()
                .zip(args.pod_uid.clone())
                .map(|(name, uid)| OwnerReference {
                    api_version: "v1".into(),
                    kind: "Pod".into(),
                    name,
                    uid,
                    ..OwnerReference::default()
                }),
        },
        Api::namespaced(client.clone(), &args.namespace),
    ));
    let metrics = Arc::new(Metrics::new(EngineMetrics::spawn(
        manager.clone(),
        IpChanges::FromEvents,
    )));
    let ctx = Arc::new(Context {
        client: client.clone(),
        manager: manager.clone(),
        ownership: ownership.clone(),
        settings,
        metrics: metrics.clone(),
        status_writer: StatusWriter::spawn(client.clone()),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "dhcpmanager-agent".into(),
                instance: Some(args.node_name.clone()),
            },
        ),
        references: Mutex::new(HashMap::new()),
        pool_locks: Mutex::default(),
    });

    let metrics_server =
        metrics::server(args.metrics_addr, metrics.clone()).map_err(|e| Error::Flag {
            flag: "--metrics-addr",
            problem: format!("cannot listen on {}: {e}", args.metrics_addr),
        })?;
    tokio::spawn(metrics_server);
    tokio::spawn({
        let ctx = ctx.clone();
        async move {
            let mut events = ctx.manager.subscribe();
            loop {
                match events.recv().await {
                    Ok(keyed) => ctx.publish(&keyed.key, &keyed.event).await,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        warn!(missed = n, "event stream lagged")
                    }
                    Err(_) => return,
                }
            }
        }
    });
    tokio::spawn({
        let ownership = ownership.clone();
        async move { ownership.run_peer_watch().await }
    });
    let (reconcile_all, reconcile_all_rx) = tokio::sync::mpsc::channel::<()>(4);
    let (holding_tx, mut holding) = watch::channel(false);
    tokio::spawn({
        let ownership = ownership.clone();
        async move { ownership.run_renewals(holding_tx).await }
    });
    tokio::spawn({
        let (manager, metrics) = (manager.clone(), metrics.clone());
        async move {
            while holding.changed().await.is_ok() {
                let held = *holding.borrow_and_update();
                metrics
                    .ready
                    .store(held, std::sync::atomic::Ordering::Relaxed);
                if held {
                    let _ = reconcile_all.send(()).await;
                } else if let Err(error) = manager.stop_all().await {
                    warn!(%error, "fencing: removing links failed");
                }
            }
        }
    });
    tokio::spawn({
        let manager = manager.clone();
        async move {
            // Links of addresses that were deleted while we were down, or of a crash: once the
            // addresses we own had a chance to start, anything else in our link group goes.
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            tick.tick().await;
            loop {
                tick.tick().await;
                match manager.remove_orphan_links(|_| false).await {
                    Ok(0) => {}
                    Ok(n) => info!(removed = n, "removed orphaned links"),
                    Err(error) => warn!(%error, "orphan link sweep failed"),
                }
            }
        }
    });

    if args.service_controller {
        tokio::spawn(crate::service::run(
            client.clone(),
            ownership.clone(),
            crate::service::ServiceSettings {
                default_load_balancer: args.default_load_balancer,
                resync: args.resync,
            },
        ));
    } else if args.default_load_balancer {
        warn!("--default-load-balancer has no effect without --service-controller");
    }
    let trigger = futures::stream::unfold(reconcile_all_rx, |mut rx| async move {
        rx.recv().await.map(|()| ((), rx))
    });
    Controller::new(Api::<DhcpAddress>::all(client), watcher::Config::default())
        .reconcile_all_on(trigger)
        .shutdown_on_signal()
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
    info!(
        "shutting down: stopping every DHCP client without releasing (the next agent resumes them)"
    );
    Ok(manager.stop_all().await?)
}
