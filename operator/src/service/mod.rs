//! The Service controller, run inside the agent (`--service-controller`): LoadBalancer Services
//! of class `dhcpmanager.io/dhcp` (and, with `--default-load-balancer`, those without a class)
//! get a `DhcpAddress` of their own, and their `status.loadBalancer.ingress` shows its IP.
//!
//! Every agent runs it, and exactly one writes for a Service at a time: the agent that owns the
//! Service's address (`status.node`, decided through the agents' Leases, see
//! `agent/ownership.rs`) while it holds its Lease. Before an address has an owner, the
//! coordinator (the live agent with the smallest node name) creates it. An owner that loses its
//! Lease stops writing before a peer may take its addresses over, so two agents never write
//! for one Service at once, during failover and upgrades alike.

pub mod desired;
pub mod ingress;
pub mod reconcile;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod reconcile_tests;

use std::sync::Arc;
use std::time::Duration;

use dhcpmanager_crds::DhcpAddress;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use tracing::info;

use crate::agent::ownership::Ownership;

/// Field manager of the DhcpAddresses this controller applies.
pub const FIELD_MANAGER: &str = "dhcpmanager-service-controller";

#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// Serve LoadBalancer Services without a class too.
    pub default_load_balancer: bool,
    /// How often every Service is re-checked without a change.
    pub resync: Duration,
}

pub struct ServiceContext {
    pub client: Client,
    pub ownership: Arc<Ownership>,
    /// Every DhcpAddress, as the shared watch last saw it: reconciles read here, not the API.
    pub addresses: Store<DhcpAddress>,
    /// Events that repeat unchanged (a Service we cannot serve, at every resync) go through
    /// this one recorder, which folds repeats into one Event series.
    pub recorder: Recorder,
    /// Who reports: each change of the ingress is its own Event, with its own note (a series
    /// keeps the first note, which would show an old IP).
    pub reporter: Reporter,
    pub settings: ServiceSettings,
}

/// Runs the controller until the process is asked to stop. Every Service is reconciled again
/// at each item of `reconcile_all` (the agent's Lease held again).
pub async fn run(
    client: Client,
    ownership: Arc<Ownership>,
    settings: ServiceSettings,
    reconcile_all: impl futures::Stream<Item = ()> + Send + 'static,
) {
    info!(
        default_load_balancer = settings.default_load_balancer,
        "Service controller starting"
    );
    let (addresses, writer) = reflector::store();
    let address_events = reflector::reflector(
        writer,
        watcher(
            Api::<DhcpAddress>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects();
    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: Some(ownership.node().to_string()),
    };
    let ctx = Arc::new(ServiceContext {
        recorder: Recorder::new(client.clone(), reporter.clone()),
        reporter,
        client: client.clone(),
        ownership,
        addresses,
        settings,
    });
    Controller::new(Api::<Service>::all(client), watcher::Config::default())
        .owns_stream(address_events)
        .reconcile_all_on(reconcile_all)
        .shutdown_on_signal()
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}
