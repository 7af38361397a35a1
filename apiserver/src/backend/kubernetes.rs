//! The Kubernetes backend: a /v1 allocation is a DhcpAddress that the agents bind; a release
//! deletes it and the agent's finalizer sends the DHCPRELEASE and returns link and MAC. Only
//! objects labelled `app.kubernetes.io/managed-by=dhcpmanager-apiserver` are ever deleted here:
//! a user's own DhcpAddress is out of reach of the /v1 API.

mod changes;
pub mod objects;
pub mod pool_edit;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dhcpmanager_crds::{DhcpAddress, MacPool, MacPoolSpec, Phase};
use futures::FutureExt;
use futures::future::BoxFuture;
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, ResourceExt};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::MacAddr;
use crate::backend::{Allocation, Backend, BackendError, StatusSnapshot};
use objects::{allocation_of, held_cidr, is_ours, ours_selector};

const FIELD_MANAGER: &str = "dhcpmanager-apiserver";
/// When a withdrawal looks again: a create cut off by the deadline may still land after the
/// first look (the API server finishes a request whose client has gone).
const WITHDRAW_AGAIN_AFTER: Duration = Duration::from_secs(10);
/// Read-modify-write rounds of a MacPool edit before giving up on a busy pool.
const POOL_EDIT_ATTEMPTS: usize = 8;

#[derive(Debug, Clone)]
pub struct KubernetesOptions {
    /// Where addresses for a bare service name (no `namespace/`) are created.
    pub namespace: String,
    /// The MacPool /v1/mac edits and /v1/status reports.
    pub mac_pool: String,
    /// How long DELETE /v1/ip waits for the agent's release before answering anyway.
    pub release_wait: Duration,
}

pub struct KubernetesBackend {
    client: Client,
    options: KubernetesOptions,
    changed: broadcast::Sender<()>,
    watch: JoinHandle<()>,
}

impl Drop for KubernetesBackend {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

impl KubernetesBackend {
    /// In-cluster configuration or KUBECONFIG (kube's usual order). Errors when neither exists.
    pub async fn connect(options: KubernetesOptions) -> Result<Arc<Self>, kube::Error> {
        let client = dhcpmanager_crds::client::connect().await?;
        Ok(Self::with_client(client, options))
    }

    /// Must be called inside a tokio runtime: it starts the watch behind [`Backend::subscribe`].
    pub fn with_client(client: Client, options: KubernetesOptions) -> Arc<Self> {
        let (changed, _) = broadcast::channel(64);
        let watch = changes::spawn(client.clone(), changed.clone());
        Arc::new(KubernetesBackend {
            client,
            options,
            changed,
            watch,
        })
    }

    fn pools(&self) -> Api<MacPool> {
        Api::all(self.client.clone())
    }

    async fn our_addresses(&self) -> Result<Vec<DhcpAddress>, BackendError> {
        let api: Api<DhcpAddress> = Api::all(self.client.clone());
        let list = api
            .list(&ListParams::default().labels(&ours_selector()))
            .await
            .map_err(|e| unavailable("listing DhcpAddresses", e))?;
        // The selector already says so; checked again because deleting is at stake.
        Ok(list.items.into_iter().filter(is_ours).collect())
    }

    async fn allocate_by(
        &self,
        service: &str,
        deadline: Instant,
    ) -> Result<Allocation, BackendError> {
        let id = uuid::Uuid::new_v4().to_string();
        let namespace = objects::namespace_for(service, &self.options.namespace)?.to_string();
        let api: Api<DhcpAddress> = Api::namespaced(self.client.clone(), &namespace);
        let address = objects::new_address(service, &id, &namespace);
        // Armed before the create: if this future is dropped at any point (the route's own
        // timeout, a client gone), the object is deleted even if the create's answer was lost.
        let mut withdrawal = Withdrawal::armed(api.clone(), id.clone());
        let bound = tokio::time::timeout_at(deadline.into(), create_and_wait(&api, &address)).await;
        match bound {
            Ok(Ok(address)) => {
                withdrawal.disarm();
                Ok(allocation_of(&address))
            }
            // Refused by the API server: certainly nothing was created.
            Ok(Err(Failure::NotCreated(error @ BackendError::Invalid(_)))) => {
                withdrawal.disarm();
                Err(error)
            }
            // Maybe created (the answer was lost): withdraw whatever exists.
            Ok(Err(Failure::NotCreated(error))) => {
                withdrawal.now().await;
                Err(error)
            }
            Ok(Err(Failure::Unbound(reason))) => {
                tracing::warn!(service, id, reason, "withdrawing the allocation");
                withdrawal.now().await;
                Err(BackendError::Timeout { id })
            }
            Err(_elapsed) => {
                tracing::warn!(service, id, "no lease before the deadline; withdrawing");
                withdrawal.now().await;
                Err(BackendError::Timeout { id })
            }
        }
    }

    async fn release_ip(&self, ip: Ipv4Addr) -> Result<Allocation, BackendError> {
        let address = self
            .our_addresses()
            .await?
            .into_iter()
            .find(|a| a.status.as_ref().and_then(|s| s.ip) == Some(ip))
            .ok_or(BackendError::NotFound(ip))?;
        let name = address.name_any();
        let namespace = address.namespace().unwrap_or_default();
        let uid = address.uid().unwrap_or_default();
        let api: Api<DhcpAddress> = Api::namespaced(self.client.clone(), &namespace);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => {}
            // Gone (or replaced) meanwhile: someone else released it; the IP is not ours now.
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {
                return Err(BackendError::NotFound(ip));
            }
            Err(error) => return Err(unavailable("deleting a DhcpAddress", error)),
        }
        // The agent's finalizer sends the DHCPRELEASE; wait for it so a POST right after gets
        // a clean server, but answer success anyway once the deletion is accepted: the
        // finalizer finishes the release without us.
        let gone = await_condition(api, &name, conditions::is_deleted(&uid));
        match tokio::time::timeout(self.options.release_wait, gone).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%ip, %error, "watching the release"),
            Err(_) => tracing::warn!(%ip, name, "release still in progress; answered anyway"),
        }
        Ok(allocation_of(&address))
    }

    /// Read the pool, compute the new `spec.macs`, write it with the resourceVersion read;
    /// on a conflict start over. Returns what `edit` reports.
    async fn edit_pool<T>(
        &self,
        missing: impl Fn() -> (Option<Vec<String>>, T),
        edit: impl Fn(&MacPool) -> (Option<Vec<String>>, T),
    ) -> Result<T, BackendError> {
        let pools = self.pools();
        let name = &self.options.mac_pool;
        for _ in 0..POOL_EDIT_ATTEMPTS {
            let current = pools
                .get_opt(name)
                .await
                .map_err(|e| unavailable("reading the MacPool", e))?;
            let written = match current {
                None => match missing() {
                    (None, report) => return Ok(report),
                    (Some(macs), report) => {
                        let pool = MacPool::new(
                            name,
                            MacPoolSpec {
                                macs,
                                ..Default::default()
                            },
                        );
                        (pools.create(&post_params(), &pool).await, report)
                    }
                },
                Some(mut pool) => match edit(&pool) {
                    (None, report) => return Ok(report),
                    (Some(macs), report) => {
                        pool.spec.macs = macs;
                        (pools.replace(name, &post_params(), &pool).await, report)
                    }
                },
            };
            match written {
                (Ok(_), report) => return Ok(report),
                (Err(kube::Error::Api(status)), _) if status.code == 409 => continue,
                (Err(kube::Error::Api(status)), _) if status.code == 422 => {
                    return Err(BackendError::Invalid(status.message));
                }
                (Err(error), _) => return Err(unavailable("writing the MacPool", error)),
            }
        }
        Err(BackendError::Unavailable(format!(
            "MacPool {name} kept changing; gave up after {POOL_EDIT_ATTEMPTS} attempts"
        )))
    }
}

/// Why an allocation ended without an address.
enum Failure {
    /// Nothing was created: nothing to withdraw.
    NotCreated(BackendError),
    /// The object exists but will not (or did not) bind.
    Unbound(String),
}

async fn create_and_wait(
    api: &Api<DhcpAddress>,
    address: &DhcpAddress,
) -> Result<DhcpAddress, Failure> {
    let created = api
        .create(&post_params(), address)
        .await
        .map_err(|error| Failure::NotCreated(create_error(error)))?;
    let name = created.name_any();
    tracing::debug!(name, "created; waiting for an agent to bind it");
    // A watch (list + watch from that version): no bind is missed between create and watch.
    let settled = await_condition(api.clone(), &name, |address: Option<&DhcpAddress>| {
        address.is_none_or(|a| objects::held_ip(a).is_some() || objects::phase(a) == Phase::Failed)
    })
    .await
    .map_err(|e| Failure::Unbound(format!("watching {name}: {e}")))?;
    match settled {
        Some(address) if objects::held_ip(&address).is_some() => Ok(address),
        Some(address) => Err(Failure::Unbound(
            address
                .status
                .and_then(|s| s.last_error)
                .unwrap_or_else(|| "failed".into()),
        )),
        None => Err(Failure::Unbound(format!(
            "{name} was deleted while pending"
        ))),
    }
}

/// Deletes the object(s) of one allocation id, now or (if dropped armed) in the background.
struct Withdrawal {
    api: Api<DhcpAddress>,
    id: String,
    armed: bool,
}

impl Withdrawal {
    fn armed(api: Api<DhcpAddress>, id: String) -> Self {
        Withdrawal {
            api,
            id,
            armed: true,
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }

    /// Withdraws before returning; if this is dropped midway, Drop still does it.
    async fn now(mut self) {
        withdraw(&self.api, &self.id).await;
        self.armed = false;
        tokio::spawn(withdraw_later(self.api.clone(), self.id.clone()));
    }
}

impl Drop for Withdrawal {
    fn drop(&mut self) {
        if self.armed
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let (api, id) = (self.api.clone(), self.id.clone());
            runtime.spawn(async move {
                withdraw(&api, &id).await;
                withdraw_later(api, id).await;
            });
        }
    }
}

async fn withdraw_later(api: Api<DhcpAddress>, id: String) {
    tokio::time::sleep(WITHDRAW_AGAIN_AFTER).await;
    withdraw(&api, &id).await;
}

/// Deleting is all it takes: the agent's finalizer releases whatever was bound meanwhile.
async fn withdraw(api: &Api<DhcpAddress>, id: &str) {
    let selector = objects::allocation_selector(id);
    let found = match api.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => list.items,
        Err(error) => {
            tracing::error!(id, %error, "cannot list the allocation to withdraw it");
            return;
        }
    };
    // Already being deleted: the finalizer is at work, nothing to add.
    for address in found
        .iter()
        .filter(|a| a.metadata.deletion_timestamp.is_none())
    {
        let name = address.name_any();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => tracing::info!(id, name, "withdrew the allocation"),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => tracing::error!(id, name, %error, "cannot withdraw the allocation"),
        }
    }
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    }
}

fn create_error(error: kube::Error) -> BackendError {
    match error {
        kube::Error::Api(status) if status.code == 422 || status.code == 400 => {
            BackendError::Invalid(status.message)
        }
        kube::Error::Api(status) if status.code == 404 => {
            BackendError::Invalid(format!("cannot create the address: {}", status.message))
        }
        other => unavailable("creating a DhcpAddress", other),
    }
}

fn unavailable(action: &str, error: kube::Error) -> BackendError {
    BackendError::Unavailable(format!("{action}: {error}"))
}

impl Backend for KubernetesBackend {
    fn allocate(
        &self,
        service: &str,
        deadline: Instant,
    ) -> BoxFuture<'_, Result<Allocation, BackendError>> {
        let service = service.to_string();
        async move { self.allocate_by(&service, deadline).await }.boxed()
    }

    fn release(&self, ip: Ipv4Addr) -> BoxFuture<'_, Result<Allocation, BackendError>> {
        self.release_ip(ip).boxed()
    }

    fn add_macs(&self, macs: Vec<MacAddr>) -> BoxFuture<'_, Result<(), BackendError>> {
        async move {
            let fresh = || {
                let unique: Vec<String> = macs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                ((!unique.is_empty()).then_some(unique), ())
            };
            self.edit_pool(fresh, |pool| (pool_edit::with_added(pool, &macs), ()))
                .await
        }
        .boxed()
    }

    fn remove_macs(&self, macs: Vec<MacAddr>) -> BoxFuture<'_, Result<Vec<MacAddr>, BackendError>> {
        async move {
            self.edit_pool(
                || (None, Vec::new()),
                |pool| {
                    let removal = pool_edit::without(pool, &macs);
                    (removal.macs, removal.unprocessed)
                },
            )
            .await
        }
        .boxed()
    }

    fn status(&self) -> BoxFuture<'_, Result<StatusSnapshot, BackendError>> {
        async move {
            let allocations = self
                .our_addresses()
                .await?
                .iter()
                .map(allocation_of)
                .collect();
            let pool = self
                .pools()
                .get_opt(&self.options.mac_pool)
                .await
                .map_err(|e| unavailable("reading the MacPool", e))?;
            let available_macs = match pool.map(|p| p.free_macs()) {
                None => Vec::new(),
                Some(Ok(free)) => free.into_iter().collect(),
                Some(Err(error)) => {
                    tracing::warn!(pool = self.options.mac_pool, %error, "invalid MacPool");
                    Vec::new()
                }
            };
            Ok(StatusSnapshot {
                allocations,
                available_macs,
            })
        }
        .boxed()
    }

    fn lease_cidrs(&self) -> BoxFuture<'_, Result<Vec<String>, BackendError>> {
        async move {
            let cidrs: BTreeSet<String> = self
                .our_addresses()
                .await?
                .iter()
                .filter_map(held_cidr)
                .collect();
            Ok(cidrs.into_iter().collect())
        }
        .boxed()
    }

    fn subscribe(&self) -> broadcast::Receiver<()> {
        self.changed.subscribe()
    }
}
