//! `dhcpmanager-operator agent`: the node agent. It reconciles `DhcpAddress` objects through the
//! lease manager, holds MACs in `MacPool`s, owns addresses through `coordination.k8s.io` Leases,
//! writes status, Events and metrics.
//!
//! - [`args`]: its flags; [`context`]: what reconciles and followers share;
//! - [`reconcile`]: the reconciler, phase by phase; [`mac_pool`]: MAC allocation; [`ownership`]:
//!   which agent transmits for an address;
//! - [`follower`]: one task per running address, from engine status and events to
//!   [`status`] (pure) via [`status_writer`], [`events`] (pure) via [`event_writer`], and
//!   [`metrics`], whose `/metrics` only scrapers the API server vouches for read
//!   ([`metrics_auth`] (pure) via [`metrics_gate`]).

pub mod args;
pub mod context;
pub mod event_writer;
pub mod events;
pub mod follower;
pub mod mac_pool;
pub mod metrics;
pub mod metrics_auth;
pub mod metrics_gate;
pub mod ownership;
pub mod reconcile;
pub mod status;
pub mod status_writer;

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod mac_pool_tests;
#[cfg(test)]
mod metrics_auth_tests;
#[cfg(test)]
mod reconcile_tests;

use std::sync::Arc;
use std::time::Duration;

use dhcpmanager_crds::{DhcpAddress, MacPool};
use dhcpmanager_engine::dhcp::MacAddr;
use dhcpmanager_engine::instance::InstanceId;
use dhcpmanager_engine::manager::{LeaseManager, ManagerConfig};
use dhcpmanager_engine::metrics::{EngineMetrics, IpChanges};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{Controller, watcher};
use tokio::sync::watch;
use tracing::{info, warn};

pub use args::AgentArgs;
pub use context::{Context, Settings};
use event_writer::EventWriter;
use metrics::Metrics;
use ownership::{Ownership, OwnershipConfig};
use status_writer::StatusWriter;

use crate::error::Error;

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
        allow_custom_identity: args.allow_custom_identity,
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
        // One agent per node: the node name is stable across its restarts and rollouts.
        InstanceId::derived("agent", &args.node_name),
        ManagerConfig {
            rate_per_second: args.rate,
            burst: args.burst,
            netns,
            linkless: args.linkless,
            reply_mark_mask: args.reply_mark_mask,
            capacity: dhcpmanager_engine::manager::Capacity {
                addresses: args.max_addresses,
                links_per_parent: (args.links_per_parent > 0).then_some(args.links_per_parent),
            },
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
        event_writer: EventWriter::spawn(Recorder::new(
            client.clone(),
            Reporter {
                controller: "dhcpmanager-agent".into(),
                instance: Some(args.node_name.clone()),
            },
        )),
        pool_locks: Default::default(),
    });

    if args.metrics_auth == metrics_auth::MetricsAuth::None {
        warn!(
            addr = %args.metrics_addr,
            "UNAUTHENTICATED /metrics (--metrics-auth=none): anyone who reaches this address reads it"
        );
    }
    let gate = Arc::new(metrics_gate::MetricsGate::new(args.metrics_auth, &client));
    let metrics_server =
        metrics::server(args.metrics_addr, metrics.clone(), gate).map_err(|e| Error::Flag {
            flag: "--metrics-addr",
            problem: format!("cannot listen on {}: {e}", args.metrics_addr),
        })?;
    tokio::spawn(metrics_server);
    tokio::spawn({
        let ownership = ownership.clone();
        async move { ownership.run_peer_watch().await }
    });
    let (holding_tx, mut holding) = watch::channel(false);
    // Both controllers look at everything again whenever the Lease is held again: what they
    // saw before (an address or a Service nobody could write for) may be ours to act on now.
    let addresses_held_again = lease_held_again(holding_tx.subscribe());
    let services_held_again = lease_held_again(holding_tx.subscribe());
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
                if !held && let Err(error) = manager.stop_all().await {
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
            services_held_again,
        ));
    } else if args.default_load_balancer {
        warn!("--default-load-balancer has no effect without --service-controller");
    }
    Controller::new(Api::<DhcpAddress>::all(client), watcher::Config::default())
        .reconcile_all_on(addresses_held_again)
        .shutdown_on_signal()
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
    info!(
        "shutting down: stopping every DHCP client without releasing (the next agent resumes them)"
    );
    Ok(manager.stop_all().await?)
}

/// One item each time `holding` turns true (a controller's `reconcile_all_on` trigger).
fn lease_held_again(
    holding: watch::Receiver<bool>,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(holding, |mut holding| async move {
        while holding.changed().await.is_ok() {
            if *holding.borrow_and_update() {
                return Some(((), holding));
            }
        }
        None
    })
}
