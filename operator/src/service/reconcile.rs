//! The Service reconciler, top to bottom: classify → desired address → who may write → create
//! or update the address → ingress and Events.
//!
//! What a Service wants and what its status should say are pure functions (`desired.rs`,
//! `ingress.rs`); this file only decides who writes and makes the requests.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use dhcpmanager_crds::{API_VERSION, DhcpAddress};
use futures::FutureExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::desired::{self, Verdict};
use super::ingress::{self, IngressChange, Wanted};
use super::{FIELD_MANAGER, ServiceContext};
use crate::error::Error;

/// Until the shared DhcpAddress watch has listed everything once, "no address" may be wrong:
/// acting on it could clear a good ingress after an agent restart.
const STORE_NOT_READY_RETRY: Duration = Duration::from_secs(1);

/// How soon an agent that may not write for a Service without an owned address looks again.
/// Who coordinates changes without an event for the Service: our Lease is first held (the
/// controller also reconciles everything then), or the coordinator dies and after its Lease
/// runs out we are next. Waiting for the resync (60 s) would leave a new Service without an
/// address that long; a look is a read of the local store.
pub const COORDINATOR_RECHECK: Duration = Duration::from_secs(5);

pub async fn reconcile(service: Arc<Service>, ctx: Arc<ServiceContext>) -> Result<Action, Error> {
    let verdict = desired::classify(&service, ctx.settings.default_load_balancer);
    if verdict == Verdict::NotOurs && !has_address_of(&service, &ctx) {
        // Never touched: not a single request for Services of other classes.
        return Ok(Action::await_change());
    }
    if !matches!(
        ctx.addresses.wait_until_ready().now_or_never(),
        Some(Ok(()))
    ) {
        return Ok(Action::requeue(STORE_NOT_READY_RETRY));
    }
    let namespace = service.namespace().unwrap_or_default();
    let name = service.name_any();
    let existing = ctx.addresses.get(&ObjectRef::new(&name).within(&namespace));
    let ours = existing
        .as_deref()
        .filter(|a| desired::is_controlled_by(a, &service));
    let writer = may_write(ours, &ctx);

    match verdict {
        Verdict::NotOurs => {
            // It was ours (the type changed away from LoadBalancer): the lease goes.
            if let (Some(address), true) = (ours, writer) {
                delete_address(address, &ctx).await?;
                if ingress::ingress_differs(&service, None) {
                    write_ingress(&service, None, &ctx).await?;
                }
            }
            return Ok(Action::await_change());
        }
        Verdict::Ipv6Only => {
            if writer {
                let note = "asks for IPv6 only (spec.ipFamilies); dhcpmanager leases IPv4 \
                            addresses from DHCPv4 servers only, for now: allow IPv4 to get one";
                publish(&service, EventType::Warning, "IPv6Unsupported", note, &ctx).await;
            }
            return Ok(Action::await_change());
        }
        Verdict::Serve => {}
    }

    let wanted = match desired::desired_address(&service) {
        Ok(wanted) => wanted,
        Err(problem) => {
            if writer {
                publish(
                    &service,
                    EventType::Warning,
                    "InvalidService",
                    &problem,
                    &ctx,
                )
                .await;
            }
            return Err(Error::InvalidService {
                service: format!("{namespace}/{name}"),
                problem,
            });
        }
    };

    match (existing.as_deref(), ours) {
        (None, _) => {
            if writer {
                create_address(&service, &wanted, &ctx).await?;
                if ingress::ingress_differs(&service, None) {
                    // The address was deleted behind our back: what the Service shows is stale.
                    update_ingress(&service, None, None, &ctx).await?;
                }
            }
        }
        (Some(other), None) => {
            if writer {
                let note = format!(
                    "DhcpAddress {namespace}/{} exists and does not belong to this Service; \
                     delete it (or rename the Service) to get an address",
                    other.name_any()
                );
                publish(
                    &service,
                    EventType::Warning,
                    "AddressNameTaken",
                    &note,
                    &ctx,
                )
                .await;
            }
        }
        (Some(_), Some(address)) => {
            if writer && desired::managed_fields_differ(&address.spec, &wanted.spec) {
                apply_address(&service, &wanted, &ctx).await?;
            }
            if writer && owns(address, &ctx) {
                match ingress::wanted_ingress(Some(address), chrono::Utc::now()) {
                    Wanted::Wait(left) if ingress::ingress_differs(&service, None) => {
                        return Ok(Action::requeue(left));
                    }
                    Wanted::Wait(_) => {}
                    Wanted::Show(ip) => {
                        if ingress::ingress_differs(&service, ip) {
                            update_ingress(&service, Some(address), ip, &ctx).await?;
                        }
                    }
                }
            }
        }
    }
    if !writer && address_owner(ours).is_none() {
        return Ok(Action::requeue(
            COORDINATOR_RECHECK.min(ctx.settings.resync),
        ));
    }
    Ok(Action::requeue(ctx.settings.resync))
}

pub fn error_policy(service: Arc<Service>, error: &Error, _ctx: Arc<ServiceContext>) -> Action {
    warn!(service = %service.name_any(), namespace = ?service.namespace(), %error, "Service reconcile failed");
    match error {
        // Only an edit of the Service fixes it; the edit triggers a reconcile.
        Error::InvalidService { .. } => Action::await_change(),
        _ => Action::requeue(Duration::from_secs(5)),
    }
}

/// Whether the shared watch holds an address controlled by this Service.
fn has_address_of(service: &Service, ctx: &ServiceContext) -> bool {
    let key = ObjectRef::new(&service.name_any()).within(&service.namespace().unwrap_or_default());
    ctx.addresses
        .get(&key)
        .is_some_and(|a| desired::is_controlled_by(&a, service))
}

/// The one agent that writes for this Service now: the owner of its address, or, while the
/// address has no owner (or does not exist), the coordinator. Never an agent without its Lease.
fn may_write(address: Option<&DhcpAddress>, ctx: &ServiceContext) -> bool {
    match (address, address_owner(address)) {
        (Some(address), Some(_)) => owns(address, ctx),
        _ => ctx.ownership.is_coordinator(),
    }
}

/// The node whose agent holds the address, once one does.
fn address_owner(address: Option<&DhcpAddress>) -> Option<&str> {
    address?.status.as_ref()?.node.as_deref()
}

fn owns(address: &DhcpAddress, ctx: &ServiceContext) -> bool {
    address_owner(Some(address)) == Some(ctx.ownership.node()) && ctx.ownership.may_transmit()
}

/// A create, never an apply: an object of that name made by someone else must not be taken.
async fn create_address(
    service: &Service,
    wanted: &DhcpAddress,
    ctx: &ServiceContext,
) -> Result<(), Error> {
    let api: Api<DhcpAddress> =
        Api::namespaced(ctx.client.clone(), &wanted.namespace().unwrap_or_default());
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    match api.create(&params, wanted).await {
        Ok(_) => {
            info!(service = %key(service), "created its DhcpAddress");
            Ok(())
        }
        // Another agent (with a different view of who coordinates) was first.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 422 => Err(refused(
            service,
            format!("its DhcpAddress was refused: {}", e.message),
            ctx,
        )
        .await),
        Err(source) => Err(Error::Kube {
            action: format!("creating the DhcpAddress of Service {}", key(service)),
            source,
        }),
    }
}

/// The API server refused the Service's DhcpAddress (422): said on the Service, where the user
/// who wrote the annotations looks.
async fn refused(service: &Service, problem: String, ctx: &ServiceContext) -> Error {
    publish(service, EventType::Warning, "InvalidService", &problem, ctx).await;
    Error::InvalidService {
        service: key(service),
        problem,
    }
}

/// Brings the fields we manage up to date (annotations changed). The API server refuses a
/// change of an immutable field (pool, client id): that is shown on the Service.
async fn apply_address(
    service: &Service,
    wanted: &DhcpAddress,
    ctx: &ServiceContext,
) -> Result<(), Error> {
    let api: Api<DhcpAddress> =
        Api::namespaced(ctx.client.clone(), &wanted.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": API_VERSION,
        "kind": "DhcpAddress",
        "metadata": {
            "name": wanted.name_any(),
            "namespace": wanted.namespace(),
            "labels": wanted.labels(),
            "ownerReferences": wanted.owner_references(),
        },
        "spec": wanted.spec,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api
        .patch(&wanted.name_any(), &params, &Patch::Apply(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 422 => Err(refused(
            service,
            format!("cannot change its DhcpAddress: {}", e.message),
            ctx,
        )
        .await),
        Err(source) => Err(Error::Kube {
            action: format!("updating the DhcpAddress of Service {}", key(service)),
            source,
        }),
    }
}

/// The Service stopped being a LoadBalancer of ours: its address goes (the agent's finalizer
/// releases the lease), guarded by the UID we saw so a re-created address is not hit.
async fn delete_address(address: &DhcpAddress, ctx: &ServiceContext) -> Result<(), Error> {
    let api: Api<DhcpAddress> =
        Api::namespaced(ctx.client.clone(), &address.namespace().unwrap_or_default());
    let params = DeleteParams {
        preconditions: address.uid().map(|uid| kube::api::Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match api.delete(&address.name_any(), &params).await {
        Ok(_) => {
            info!(address = %address.name_any(), "the Service is no longer ours: deleted its DhcpAddress");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(source) => Err(Error::Kube {
            action: format!("deleting DhcpAddress {}", address.name_any()),
            source,
        }),
    }
}

/// Writes the ingress and tells the user what changed.
async fn update_ingress(
    service: &Service,
    address: Option<&DhcpAddress>,
    ip: Option<Ipv4Addr>,
    ctx: &ServiceContext,
) -> Result<(), Error> {
    let change = ingress::ingress_change(service, address, ip);
    write_ingress(service, ip, ctx).await?;
    if let IngressChange::Changed { old, new } = &change {
        warn!(service = %key(service), %old, %new, "the DHCP server changed the Service's address");
    }
    if let Some((type_, reason, note)) = ingress::event_for(&change) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Address".into(),
            secondary: None,
        };
        let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
        if let Err(error) = recorder.publish(&event, &service.object_ref(&())).await {
            warn!(service = %key(service), %error, "could not publish an Event");
        }
    }
    Ok(())
}

async fn write_ingress(
    service: &Service,
    ip: Option<Ipv4Addr>,
    ctx: &ServiceContext,
) -> Result<(), Error> {
    let api: Api<Service> =
        Api::namespaced(ctx.client.clone(), &service.namespace().unwrap_or_default());
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    match api
        .patch_status(
            &service.name_any(),
            &params,
            &Patch::Merge(&ingress::status_patch(ip)),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Deleted meanwhile: nothing to show any more.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::Kube {
            action: format!("writing the ingress of Service {}", key(service)),
            source,
        }),
    }
}

/// Events are best effort: a failure is logged, never retried.
async fn publish(
    service: &Service,
    type_: EventType,
    reason: &str,
    note: &str,
    ctx: &ServiceContext,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Address".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &service.object_ref(&())).await {
        warn!(service = %key(service), %error, "could not publish an Event");
    }
}

fn key(service: &Service) -> String {
    format!(
        "{}/{}",
        service.namespace().unwrap_or_default(),
        service.name_any()
    )
}
