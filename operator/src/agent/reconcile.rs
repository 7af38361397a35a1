//! The DhcpAddress reconciler, top to bottom, in four phases:
//!
//! 1. **finalizer**: a deleted object is released ([`finalize`]); a new one first gets our
//!    finalizer, so that it cannot disappear without a DHCPRELEASE;
//! 2. **ownership gate**: only the agent that owns the address (`status.node`) goes on, and only
//!    while it holds its own Lease; a free address (or one whose owner stopped renewing its
//!    Lease) is claimed first;
//! 3. **MAC**: fixed in the spec, recorded in status (a restart or takeover keeps it), or taken
//!    from the MacPool;
//! 4. **start**: the engine's DHCP client, and the follower that reports on it.
//!
//! Only the ends touch the API server; what the status and Events say is computed by the pure
//! functions in `status.rs` and `events.rs`, and the DHCP work is the lease manager's.
//!
//! Why not kube-runtime's `finalizer` helper: it removes the finalizer as soon as the cleanup
//! returns `Ok`, whatever `Action` that carries. Our cleanup must often wait instead: while the
//! owning agent is alive only it may release, and an agent that does not hold its own Lease must
//! not transmit. Through the helper, "not yet" could only be an error (a warning in the log, a
//! count in `failures_total`, error_policy's retry). So the phases add and remove the finalizer
//! themselves, removing it with the same test-and-remove JSON patch the helper uses.

use std::sync::Arc;
use std::time::Duration;

use dhcpmanager_crds::{
    ClientIdMode as SpecClientIdMode, DhcpAddress, DhcpAddressStatus, MacPool, Phase,
};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::Context;
use super::follower::{self, Followed};
use super::status::record_from_status;
use crate::error::Error;
use dhcpmanager_engine::dhcp::{ClientConfig, ClientIdMode, LeaseRecord, MacAddr};
use dhcpmanager_engine::manager::AddressSpec;

pub const FINALIZER: &str = "dhcpmanager.io/release";

/// The object a reconcile works on, as it read it.
struct Target {
    /// "namespace/name": the engine's key of the address.
    key: String,
    namespace: String,
    name: String,
    api: Api<DhcpAddress>,
    status: DhcpAddressStatus,
}

pub async fn reconcile(address: Arc<DhcpAddress>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = address.namespace().unwrap_or_default();
    let name = address.name_any();
    let target = Target {
        key: format!("{namespace}/{name}"),
        api: Api::namespaced(ctx.client.clone(), &namespace),
        status: address.status.clone().unwrap_or_default(),
        namespace,
        name,
    };
    if let Some(done) = finalizer_phase(&address, &target, &ctx).await? {
        return Ok(done);
    }
    if let Some(wait) = ownership_gate(&address, &target, &ctx).await? {
        return Ok(wait);
    }
    if !ctx.settings.allow_custom_identity
        && let Err(problem) = custom_identity(&address.spec)
    {
        return Err(Error::InvalidAddress {
            address: target.key,
            problem,
        });
    }
    let (mac, pool) = resolve_mac(&address, &target.status, &target.key, &ctx).await?;
    start(&address, target, mac, pool.as_ref(), &ctx).await
}

/// The spec fields that choose a host interface or a DHCP identity, which only a cluster admin
/// may allow (`--allow-custom-identity`, chart `agent.allowCustomIdentity`): whoever may create
/// DhcpAddresses could otherwise transmit on any host interface, or claim (and release) another
/// host's lease with its MAC or client id.
pub fn custom_identity(spec: &dhcpmanager_crds::DhcpAddressSpec) -> Result<(), String> {
    let mut named = Vec::new();
    if spec.interface.as_deref().is_some_and(|i| !i.is_empty()) {
        named.push("spec.interface");
    }
    if spec.mac.is_some() {
        named.push("spec.mac");
    }
    if spec
        .client_id
        .as_ref()
        .is_some_and(|id| id.mode == SpecClientIdMode::Custom)
    {
        named.push("spec.clientId (mode Custom)");
    }
    if named.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} not allowed on this cluster: they choose a host interface or another host's DHCP \
         identity. A cluster admin allows them with the agent's --allow-custom-identity (chart \
         value agent.allowCustomIdentity=true); otherwise leave them out (the MAC then comes from \
         a MacPool)",
        named.join(", ")
    ))
}

/// Phase 1: a deleted object is released; a live one without our finalizer gets it (and the
/// update it causes brings the next reconcile).
async fn finalizer_phase(
    address: &DhcpAddress,
    target: &Target,
    ctx: &Context,
) -> Result<Option<Action>, Error> {
    if address.meta().deletion_timestamp.is_some() {
        let api = &target.api;
        return finalize(api, address, &target.key, &target.status, ctx)
            .await
            .map(Some);
    }
    if address.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(None);
    }
    // A merge patch replaces the whole list: keep whatever finalizers others put there, and let
    // the resourceVersion make a concurrent change fail instead of being lost.
    let mut finalizers = address.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": address.resource_version()}});
    target
        .api
        .patch(&target.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(kube_error(format!(
            "adding the finalizer to {}",
            target.key
        )))?;
    Ok(Some(Action::await_change()))
}

/// Phase 2: goes on only on the agent that owns the address and may transmit, and only when no
/// client runs for it yet. Stops a local client of an address another agent owns; claims a free
/// address, or one whose owner stopped renewing its Lease.
async fn ownership_gate(
    address: &DhcpAddress,
    target: &Target,
    ctx: &Context,
) -> Result<Option<Action>, Error> {
    let (key, me) = (&target.key, ctx.ownership.node());
    if let Some(pinned) = address.spec.node.as_deref().filter(|n| !n.is_empty())
        && pinned != me
    {
        ctx.stop_local(key).await;
        return Ok(Some(Action::await_change()));
    }
    match target.status.node.as_deref() {
        Some(owner) if owner == me => {}
        Some(owner) if ctx.ownership.peer_alive(owner) => {
            // Someone else holds it: make sure we do not transmit for it too.
            ctx.stop_local(key).await;
            return Ok(Some(Action::requeue(ctx.settings.takeover_check)));
        }
        previous => {
            if !ctx.ownership.may_transmit() {
                return Ok(Some(Action::requeue(ctx.settings.renew_interval)));
            }
            if !claim(&target.api, address, &target.status, me).await? {
                return Ok(Some(Action::requeue(Duration::from_millis(200))));
            }
            if let Some(previous) = previous {
                info!(%key, from = %previous, "took the address over from an agent that stopped renewing its Lease");
            }
            return Ok(Some(Action::await_change()));
        }
    }
    if !ctx.ownership.may_transmit() {
        return Ok(Some(Action::requeue(ctx.settings.renew_interval)));
    }
    if ctx.manager.status(key).is_some() {
        // Running here already; its follower reports on it.
        return Ok(Some(Action::requeue(ctx.settings.resync)));
    }
    Ok(None)
}

/// Phase 4: the DHCP client, resuming the lease recorded in status when it is for this MAC,
/// and its follower.
async fn start(
    address: &DhcpAddress,
    target: Target,
    mac: MacAddr,
    pool: Option<&MacPool>,
    ctx: &Arc<Context>,
) -> Result<Action, Error> {
    let hostname = address.hostname();
    let record = target
        .status
        .lease
        .as_ref()
        .and_then(|lease| record_from_status(lease, Some(hostname.clone())))
        .filter(|record| record.mac == mac);
    let parent = parent_interface(address, pool, ctx);
    let spec = address_spec(address, &target.key, mac, hostname, parent, ctx)?;
    let resumed = record.as_ref().map(|r: &LeaseRecord| r.ip);
    // Subscribed before the start, so the follower sees every event of the new client.
    let events = ctx.manager.subscribe();
    let engine = ctx.manager.start(spec, record).await?;
    info!(key = %target.key, %mac, ?resumed, "started the DHCP client");
    let followed = Followed {
        key: target.key,
        object: (target.namespace, target.name),
        reference: address.object_ref(&()),
        mac,
        generation: address.meta().generation,
        initial: target.status,
    };
    follower::spawn(ctx.clone(), followed, engine, events);
    Ok(Action::requeue(ctx.settings.resync))
}

pub fn error_policy(address: Arc<DhcpAddress>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(address = %address.name_any(), %error, "reconcile failed");
    ctx.metrics
        .failures
        .get_or_create(&super::metrics::ErrorLabel {
            error: error.metric_label().to_string(),
        })
        .inc();
    // Errors only the user can fix are shown on the object (by its owner only, so that agents
    // never fight over it); the rest are transient and just retried.
    // A node at capacity is one of them: the address stays Failed with the reason (and is
    // retried, so it starts once a seat frees) rather than Pending without one.
    let needs_user = matches!(
        error,
        Error::InvalidAddress { .. }
            | Error::MissingPool { .. }
            | Error::PoolExhausted(_)
            | Error::BadPool { .. }
            | Error::Engine(dhcpmanager_engine::Error::Capacity { .. })
    );
    let mut status = address.status.clone().unwrap_or_default();
    if needs_user && status.node.as_deref() == Some(ctx.ownership.node()) {
        status.phase = Some(Phase::Failed);
        status.last_error = Some(error.to_string());
        status.observed_generation = address.metadata.generation;
        let key = (address.namespace().unwrap_or_default(), address.name_any());
        ctx.report_status(key, status);
    }
    match error {
        // Lost a race with other agents: try again soon, at a random moment.
        Error::Contended(_) => Action::requeue(Duration::from_millis(rand::random_range(100..500))),
        // The object itself is wrong: retrying cannot help before the user changes it (and a
        // change brings a reconcile). Pool problems are fixed in the MacPool, which we do not
        // watch: those are retried.
        Error::InvalidAddress { .. } => Action::await_change(),
        _ => Action::requeue(Duration::from_secs(5)),
    }
}

/// Writes `status.node = me` if nobody changed the object since it was read (resourceVersion
/// precondition): of several agents racing for an address exactly one wins.
async fn claim(
    api: &Api<DhcpAddress>,
    address: &DhcpAddress,
    status: &DhcpAddressStatus,
    me: &str,
) -> Result<bool, Error> {
    let mut claimed = DhcpAddress::new(&address.name_any(), address.spec.clone());
    claimed.metadata.namespace = address.namespace();
    claimed.metadata.resource_version = address.resource_version();
    let mut next = status.clone();
    next.node = Some(me.to_string());
    next.phase.get_or_insert(Phase::Pending);
    claimed.status = Some(next);
    match api
        .replace_status(&address.name_any(), &PostParams::default(), &claimed)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(source) => Err(Error::Kube {
            action: format!("claiming {}", address.name_any()),
            source,
        }),
    }
}

/// Phase 3: the MAC of the address: fixed in the spec, already recorded in status (a takeover or a
/// restart keeps it), or a new one from the MacPool.
async fn resolve_mac(
    address: &DhcpAddress,
    status: &DhcpAddressStatus,
    key: &str,
    ctx: &Context,
) -> Result<(MacAddr, Option<MacPool>), Error> {
    let invalid = |problem: String| Error::InvalidAddress {
        address: key.to_string(),
        problem,
    };
    if let Some(mac) = address.spec.mac.as_deref() {
        return Ok((
            mac.parse()
                .map_err(|e: dhcpmanager_dhcp_core::MacError| invalid(e.to_string()))?,
            None,
        ));
    }
    let pool_name = pool_of(address, ctx);
    let pools: Api<MacPool> = Api::all(ctx.client.clone());
    let pool = pools
        .get_opt(&pool_name)
        .await
        .map_err(kube_error(format!("reading MacPool {pool_name}")))?;
    if pool.is_none() {
        return Err(Error::MissingPool {
            address: key.to_string(),
            pool: pool_name,
        });
    }
    let recorded = status
        .lease
        .as_ref()
        .map(|l| l.mac.as_str())
        .or(status.mac.as_deref())
        .and_then(|m| m.parse::<MacAddr>().ok());
    let mac = match recorded {
        Some(mac) => mac,
        None => {
            let _pool = ctx.pool_lock(&pool_name).await;
            let busy = |mac| ctx.manager.mac_in_retired_link(mac);
            super::mac_pool::allocate(&pools, &pool_name, key, ctx.ownership.node(), busy).await?
        }
    };
    Ok((mac, pool))
}

fn pool_of(address: &DhcpAddress, ctx: &Context) -> String {
    address
        .spec
        .mac_pool_ref
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| ctx.settings.default_pool.clone())
}

fn parent_interface(address: &DhcpAddress, pool: Option<&MacPool>, ctx: &Context) -> String {
    address
        .spec
        .interface
        .clone()
        .or_else(|| pool.and_then(|p| p.spec.interface.clone()))
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| ctx.settings.interface.clone())
}

fn address_spec(
    address: &DhcpAddress,
    key: &str,
    mac: MacAddr,
    hostname: String,
    parent: String,
    ctx: &Context,
) -> Result<AddressSpec, Error> {
    let invalid = |problem: String| Error::InvalidAddress {
        address: key.to_string(),
        problem,
    };
    let mut client = ClientConfig::new(mac);
    client.hostname = Some(hostname);
    client.client_id = match &address.spec.client_id {
        None => ClientIdMode::Stable,
        Some(spec) => match spec.mode {
            SpecClientIdMode::Stable => ClientIdMode::Stable,
            SpecClientIdMode::Mac => ClientIdMode::Mac,
            SpecClientIdMode::Custom => ClientIdMode::Custom(
                hex::decode(spec.value.as_deref().unwrap_or_default())
                    .map_err(|e| invalid(format!("clientId.value: {e}")))?,
            ),
        },
    };
    client.vendor_class = address.spec.vendor_class.clone();
    client.extra_options = address
        .spec
        .extra_options
        .iter()
        .map(|o| {
            hex::decode(&o.value)
                .map(|value| (o.code, value))
                .map_err(|e| invalid(format!("extraOptions[{}].value: {e}", o.code)))
        })
        .collect::<Result<_, _>>()?;
    client.requested_ip = address.spec.requested_ip;
    client.ip_assigned = address
        .spec
        .assign_to_interface
        .unwrap_or(ctx.settings.assign_interfaces);
    client.timing.scale = ctx.settings.time_scale;
    Ok(AddressSpec {
        key: key.to_string(),
        parent,
        client,
    })
}

/// Deletion: DHCPRELEASE, link gone, MAC back to its pool, then the finalizer goes. Only the
/// owner does it — or anyone, once the owner is gone.
async fn finalize(
    api: &Api<DhcpAddress>,
    address: &DhcpAddress,
    key: &str,
    status: &DhcpAddressStatus,
    ctx: &Context,
) -> Result<Action, Error> {
    if !address.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let me = ctx.ownership.node();
    let owner = status.node.as_deref();
    if let Some(owner) = owner
        && owner != me
        && ctx.ownership.peer_alive(owner)
    {
        return Ok(Action::requeue(ctx.settings.takeover_check));
    }
    if !ctx.ownership.may_transmit() {
        return Ok(Action::requeue(ctx.settings.renew_interval));
    }
    if owner.is_some_and(|o| o != me) && !claim(api, address, status, me).await? {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    if ctx.manager.status(key).is_some() {
        ctx.manager.release(key).await?;
    } else if let Some(lease) = &status.lease
        && let Some(record) = record_from_status(lease, Some(address.hostname()))
        && record.is_valid_at(chrono::Utc::now())
    {
        // The lease was held by an agent that is gone: release it from here.
        let parent = parent_interface(address, None, ctx);
        let spec = address_spec(address, key, record.mac, address.hostname(), parent, ctx)?;
        ctx.manager.release_recorded(spec, record).await?;
    }
    if address.spec.mac.is_none() {
        let pools: Api<MacPool> = Api::all(ctx.client.clone());
        let pool_name = pool_of(address, ctx);
        let _pool = ctx.pool_lock(&pool_name).await;
        super::mac_pool::release(&pools, &pool_name, key).await?;
    }
    // Test-and-remove of exactly our entry: concurrent status writes do not conflict with it,
    // and nobody else's finalizer can be lost.
    let index = address
        .finalizers()
        .iter()
        .position(|f| f == FINALIZER)
        .expect("checked above");
    let path = format!("/metadata/finalizers/{index}");
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": path, "value": FINALIZER},
        {"op": "remove", "path": path},
    ]))
    .expect("a well-formed JSON patch");
    match api
        .patch(
            &address.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(source) => {
            return Err(kube_error(format!("removing the finalizer of {key}"))(
                source,
            ));
        }
    }
    info!(%key, "released");
    Ok(Action::await_change())
}

fn kube_error(action: String) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { action, source }
}
