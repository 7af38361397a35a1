//! LoadBalancer Services as the Service benchmarks drive them: create one and wait for its
//! ingress IP through a watch, delete one and wait until its DhcpAddress is gone.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use dhcpmanager_crds::DhcpAddress;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};

use crate::bench::error::BenchError;

type Result<T> = std::result::Result<T, BenchError>;

/// A client for the cluster of `kubeconfig`, built as the agent builds its own.
pub async fn kube_client(kubeconfig: &Path) -> Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig)
        .map_err(|e| BenchError::Kubeconfig(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .map_err(|e| BenchError::Kubeconfig(e.to_string()))?;
    Ok(dhcpmanager_crds::client::client_for(config)?)
}

/// The first `status.loadBalancer.ingress` IP of `service`.
pub fn ingress_of(service: &Service) -> Option<Ipv4Addr> {
    service
        .status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?
        .first()?
        .ip
        .as_ref()?
        .parse()
        .ok()
}

/// Creates `service` and returns (create → ingress, the IP), seen through a watch; gives up
/// after `timeout`.
pub async fn create_and_wait(
    services: &Api<Service>,
    service: &Service,
    timeout: Duration,
) -> Result<(Duration, Ipv4Addr)> {
    let name = service.metadata.name.clone().unwrap_or_default();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    // The watch lists once polled: the Service is in that list (or in an event after it), so
    // no update can slip by.
    let mut events = watcher(services.clone(), config).applied_objects().boxed();
    let started = Instant::now();
    services.create(&PostParams::default(), service).await?;
    let found = tokio::time::timeout(timeout, async {
        while let Some(event) = events.next().await {
            if let Ok(service) = event
                && let Some(ip) = ingress_of(&service)
            {
                return Some(ip);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(ip)) => Ok((started.elapsed(), ip)),
        _ => Err(BenchError::Timeout(format!("no ingress for {name}"))),
    }
}

/// Deletes Service `name` and waits until its DhcpAddress (same name) is gone, i.e. released.
pub async fn delete_and_wait_gone(
    services: &Api<Service>,
    addresses: &Api<DhcpAddress>,
    name: &str,
    timeout: Duration,
) -> Result<()> {
    services.delete(name, &DeleteParams::default()).await?;
    let started = Instant::now();
    while addresses.get_opt(name).await?.is_some() {
        if started.elapsed() > timeout {
            return Err(BenchError::Timeout(format!(
                "{name}'s address not released"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A tokio runtime for a benchmark's main thread.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}
