//! MacPool allocation and release against the mock API server: optimistic concurrency (409 →
//! re-read → retry at the new resourceVersion), exhaustion, a pool that is gone.

use dhcpmanager_crds::MacPool;
use kube::Api;

use super::fixtures::*;
use super::mac_pool::{allocate, choose, release};
use crate::error::Error;
use dhcpmanager_engine::dhcp::MacAddr;

const FIRST: &str = "02:00:5e:00:00:01";
const SECOND: &str = "02:00:5e:00:00:02";

#[tokio::test]
async fn allocation_that_loses_a_race_rereads_and_wins_at_the_new_version() {
    let (client, verifier) = mock_client();
    let first = pool(&[FIRST, SECOND], "3");
    // Meanwhile another agent took the first MAC (version 4).
    let raced = pool(&[FIRST, SECOND], "4").allocated(FIRST, "shop/other");
    assert_ne!(
        first.metadata.resource_version,
        raced.metadata.resource_version
    );
    let server = verifier.run(Scenario::AllocationRace { first, raced });

    let pools: Api<MacPool> = Api::all(client);
    let result = bounded(allocate(&pools, POOL, KEY, ME, |_| false)).await;
    drop(pools);
    verified(server).await;
    let mac = result.expect("allocated on the second attempt");
    assert_eq!(mac, SECOND.parse::<MacAddr>().unwrap());
}

#[tokio::test]
async fn allocation_from_a_full_pool_is_pool_exhausted() {
    let (client, verifier) = mock_client();
    let full = pool(&[FIRST], "3").allocated(FIRST, "shop/other");
    let server = verifier.run(Scenario::PoolExhausted(full));

    let pools: Api<MacPool> = Api::all(client);
    let result = bounded(allocate(&pools, POOL, KEY, ME, |_| false)).await;
    drop(pools);
    verified(server).await;
    match result {
        Err(Error::PoolExhausted(pool)) => assert_eq!(pool, POOL),
        other => panic!("expected PoolExhausted, got {other:?}"),
    }
}

#[tokio::test]
async fn release_into_a_pool_that_is_gone_is_done() {
    let (client, verifier) = mock_client();
    let server = verifier.run(Scenario::PoolGone);

    let pools: Api<MacPool> = Api::all(client);
    let result = bounded(release(&pools, POOL, KEY)).await;
    drop(pools);
    verified(server).await;
    result.expect("nothing to give back");
}

#[test]
fn a_mac_held_by_a_retired_link_is_passed_over_while_another_is_free() {
    let (first, second): (MacAddr, MacAddr) = (FIRST.parse().unwrap(), SECOND.parse().unwrap());
    assert_eq!(choose([first, second], |mac| mac == first), Some(second));
    assert_eq!(choose([first, second], |_| false), Some(first));
    // All busy: waiting for a deletion beats failing the allocation.
    assert_eq!(choose([first, second], |_| true), Some(first));
    assert_eq!(choose([], |_| false), None);
}
