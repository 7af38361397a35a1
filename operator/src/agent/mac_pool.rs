//! MAC allocation from MacPools. The pool's `status.allocations` is the source of truth; every
//! change is a status replace carrying the resourceVersion that was read, so two agents racing
//! for the last free MAC cannot both win: the loser gets 409 Conflict, re-reads and tries again.

use std::collections::BTreeSet;

use dhcpmanager_crds::{MacAllocation, MacPool, MacPoolStatus};
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::info;

use crate::error::Error;
use dhcpmanager_engine::dhcp::MacAddr;

/// How often a conflicting write is retried before the reconcile gives up (and is requeued).
const ATTEMPTS: usize = 16;

/// The MAC `address` holds in `pool`, allocating a free one if it holds none yet: the first
/// free MAC that `busy` does not flag, else the first free one.
pub async fn allocate(
    pools: &Api<MacPool>,
    pool: &str,
    address: &str,
    node: &str,
    busy: impl Fn(MacAddr) -> bool,
) -> Result<MacAddr, Error> {
    for _ in 0..ATTEMPTS {
        let current = pools.get(pool).await.map_err(|source| Error::Kube {
            action: format!("reading MacPool {pool}"),
            source,
        })?;
        let status = current.status.clone().unwrap_or_default();
        if let Some(held) = status.allocations.iter().find(|a| a.address == address) {
            return held.mac.parse().map_err(|_| Error::BadPool {
                pool: pool.to_string(),
                problem: format!("allocation of {address} has an invalid MAC {:?}", held.mac),
            });
        }
        let free = current.free_macs().map_err(|e| Error::BadPool {
            pool: pool.to_string(),
            problem: e.to_string(),
        })?;
        let Some(mac) = choose(free, &busy) else {
            return Err(Error::PoolExhausted(pool.to_string()));
        };
        let mut allocations = status.allocations.clone();
        allocations.push(MacAllocation {
            mac: mac.to_string(),
            address: address.to_string(),
            node: Some(node.to_string()),
        });
        if write(pools, &current, allocations).await? {
            info!(%pool, %address, %mac, "allocated MAC");
            return Ok(mac);
        }
        backoff().await;
    }
    Err(Error::Contended(format!("MacPool {pool}")))
}

/// The first of `free` that is not `busy`, else the first of `free`. A MAC this agent gave back
/// moments ago is busy while its retired macvlan waits for deletion: taking it again would wait
/// for that (~15 ms), and with lowest-first order every one-at-a-time allocation did.
pub fn choose(
    free: impl IntoIterator<Item = MacAddr>,
    busy: impl Fn(MacAddr) -> bool,
) -> Option<MacAddr> {
    let mut first = None;
    for mac in free {
        if !busy(mac) {
            return Some(mac);
        }
        first.get_or_insert(mac);
    }
    first
}

/// Gives `address`'s MAC back to `pool`; nothing to do if it holds none (or the pool is gone).
pub async fn release(pools: &Api<MacPool>, pool: &str, address: &str) -> Result<(), Error> {
    for _ in 0..ATTEMPTS {
        let Some(current) = pools.get_opt(pool).await.map_err(|source| Error::Kube {
            action: format!("reading MacPool {pool}"),
            source,
        })?
        else {
            return Ok(());
        };
        let status = current.status.clone().unwrap_or_default();
        if !status.allocations.iter().any(|a| a.address == address) {
            return Ok(());
        }
        let allocations = status
            .allocations
            .into_iter()
            .filter(|a| a.address != address)
            .collect();
        if write(pools, &current, allocations).await? {
            info!(%pool, %address, "returned MAC");
            return Ok(());
        }
        backoff().await;
    }
    Err(Error::Contended(format!("MacPool {pool}")))
}

/// After a lost race: wait a random moment so that racing agents spread out.
async fn backoff() {
    tokio::time::sleep(std::time::Duration::from_millis(rand::random_range(5..50))).await;
}

/// Replaces the pool's status with `allocations` (and the counts derived from them) if nobody
/// changed the pool since `current` was read. `Ok(false)` means: lost the race, read again.
async fn write(
    pools: &Api<MacPool>,
    current: &MacPool,
    allocations: Vec<MacAllocation>,
) -> Result<bool, Error> {
    let name = current.name_any();
    let total = current.all_macs().map(|all| all.len()).unwrap_or(0);
    let used = allocations
        .iter()
        .map(|a| a.mac.as_str())
        .collect::<BTreeSet<_>>()
        .len();
    let next = MacPool {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            resource_version: current.resource_version(),
            ..ObjectMeta::default()
        },
        spec: current.spec.clone(),
        status: Some(MacPoolStatus {
            free: u32::try_from(total.saturating_sub(used)).unwrap_or(u32::MAX),
            used: u32::try_from(used).unwrap_or(u32::MAX),
            allocations,
        }),
    };
    match pools
        .replace_status(&name, &PostParams::default(), &next)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(source) => Err(Error::Kube {
            action: format!("writing MacPool {name} status"),
            source,
        }),
    }
}

/// Creates the default pool from the original configuration's `macs` if it does not exist yet
/// (an existing pool is left as the cluster has it: the API is the source of truth).
pub async fn seed_default_pool(
    pools: &Api<MacPool>,
    name: &str,
    macs: &[MacAddr],
    interface: Option<&str>,
) -> Result<(), Error> {
    if pools
        .get_opt(name)
        .await
        .map_err(|source| Error::Kube {
            action: format!("reading MacPool {name}"),
            source,
        })?
        .is_some()
    {
        return Ok(());
    }
    let pool = MacPool::new(
        name,
        dhcpmanager_crds::MacPoolSpec {
            macs: macs.iter().map(|m| m.to_string()).collect(),
            ranges: Vec::new(),
            interface: interface.map(str::to_string),
        },
    );
    match pools.create(&PostParams::default(), &pool).await {
        Ok(_) => {
            info!(pool = %name, count = macs.len(), "created the default MacPool from the configured MACs");
            Ok(())
        }
        // Another agent created it first: fine.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(source) => Err(Error::Kube {
            action: format!("creating MacPool {name}"),
            source,
        }),
    }
}
