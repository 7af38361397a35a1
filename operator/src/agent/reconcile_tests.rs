//! The DhcpAddress reconciler, one branch per test, against the mock API server of
//! `fixtures.rs`: which requests it makes (and which it must not), and what it asks for next.

use std::sync::Arc;
use std::time::Duration;

use dhcpmanager_crds::Phase;
use kube::runtime::controller::Action;

use super::fixtures::*;
use super::metrics::ErrorLabel;
use super::reconcile::{error_policy, reconcile};
use crate::error::Error;
use dhcpmanager_engine::Error as EngineError;
use dhcpmanager_engine::net::links::LinkError;

const FIXED_MAC: &str = "02:aa:00:00:00:01";

/// The agent holds its own Lease (it may transmit).
fn holding(ctx: &super::Context) {
    ctx.ownership.mark_renewed_for_tests();
}

#[tokio::test]
async fn new_object_gets_the_finalizer_by_a_versioned_merge_patch() {
    let (ctx, verifier) = test_context();
    let address = address();
    let server = verifier.run(Scenario::FinalizerAdded(address.clone()));

    let result = bounded(reconcile(Arc::new(address), ctx.clone())).await;
    finish(ctx, server).await;
    assert_eq!(result.expect("reconcile"), Action::await_change());
}

#[tokio::test]
async fn unowned_object_is_claimed_and_a_lost_race_requeues_shortly_without_starting() {
    let (ctx, verifier) = test_context();
    holding(&ctx);
    let address = address().finalized();
    let server = verifier.run(Scenario::Claim(address.clone(), Answer::Conflict));

    let result = bounded(reconcile(Arc::new(address), ctx.clone())).await;
    assert!(ctx.manager.status(KEY).is_none(), "no DHCP client started");
    finish(ctx, server).await;
    assert_eq!(
        result.expect("a conflict is not an error"),
        Action::requeue(Duration::from_millis(200))
    );
}

#[tokio::test]
async fn unowned_object_claimed_waits_for_the_update() {
    let (ctx, verifier) = test_context();
    holding(&ctx);
    let address = address().finalized();
    let server = verifier.run(Scenario::Claim(address.clone(), Answer::Accept));

    let result = bounded(reconcile(Arc::new(address), ctx.clone())).await;
    assert!(ctx.manager.status(KEY).is_none());
    finish(ctx, server).await;
    assert_eq!(result.expect("reconcile"), Action::await_change());
}

#[tokio::test]
async fn unowned_object_is_not_claimed_without_our_lease() {
    let (ctx, verifier) = test_context();
    let server = verifier.run(Scenario::NoRequests);

    let result = bounded(reconcile(Arc::new(address().finalized()), ctx.clone())).await;
    finish(ctx, server).await;
    assert_eq!(result.expect("reconcile"), Action::requeue(RENEW_INTERVAL));
}

#[tokio::test]
async fn object_of_a_live_peer_is_left_alone() {
    let (ctx, verifier) = test_context();
    holding(&ctx);
    ctx.ownership.peer_seen_for_tests(PEER, Duration::ZERO);
    let server = verifier.run(Scenario::NoRequests);

    let address = address().finalized().owned_by(PEER);
    let result = bounded(reconcile(Arc::new(address), ctx.clone())).await;
    finish(ctx, server).await;
    assert_eq!(result.expect("reconcile"), Action::requeue(TAKEOVER_CHECK));
}

#[tokio::test]
async fn object_of_a_dead_peer_is_claimed() {
    let (ctx, verifier) = test_context();
    holding(&ctx);
    ctx.ownership.peer_seen_for_tests(PEER, long_ago());
    let address = address().finalized().owned_by(PEER);
    let server = verifier.run(Scenario::Claim(address.clone(), Answer::Accept));

    let result = bounded(reconcile(Arc::new(address), ctx.clone())).await;
    finish(ctx, server).await;
    assert_eq!(result.expect("reconcile"), Action::await_change());
}

#[tokio::test]
async fn object_pinned_to_another_node_is_not_touched() {
    let (ctx, verifier) = test_context();
    holding(&ctx);
    let server = verifier.run(Scenario::NoRequests);

    let address = address().finalized().pinned_to(PEER);
    let result = bounded(reconcile(Arc::new(address), ctx.clone())).await;
    finish(ctx, server).await;
    assert_eq!(result.expect("reconcile"), Action::await_change());
}

#[tokio::test]
async fn owned_object_gets_a_pool_mac_and_fails_on_the_missing_parent() {
    assert!(
        !std::path::Path::new("/sys/class/net")
            .join(ABSENT_PARENT)
            .exists(),
        "the test parent must not exist"
    );
    let (ctx, verifier) = test_context();
    holding(&ctx);
    let pool = pool(&["02:00:5e:00:00:01", "02:00:5e:00:00:02"], "3");
    let server = verifier.run(Scenario::PoolMacAllocated(pool));

    let address = address().finalized().owned_by(ME);
    let result = bounded(reconcile(Arc::new(address), ctx.clone())).await;
    assert!(ctx.manager.status(KEY).is_none(), "nothing left running");
    finish(ctx, server).await;
    match result {
        Err(Error::Engine(EngineError::Link(LinkError::ParentNotFound(parent)))) => {
            assert_eq!(parent, ABSENT_PARENT)
        }
        other => panic!("expected the missing parent, got {other:?}"),
    }
}

#[tokio::test]
async fn deletion_of_a_live_peers_object_waits_without_writing() {
    let (ctx, verifier) = test_context();
    holding(&ctx);
    ctx.ownership.peer_seen_for_tests(PEER, Duration::ZERO);
    let server = verifier.run(Scenario::NoRequests);

    let address = address().finalized().owned_by(PEER).deleted();
    let result = bounded(reconcile(Arc::new(address), ctx.clone())).await;
    finish(ctx, server).await;
    assert_eq!(result.expect("reconcile"), Action::requeue(TAKEOVER_CHECK));
}

#[tokio::test]
async fn deletion_holding_nothing_removes_exactly_our_finalizer() {
    let (ctx, verifier) = test_context();
    holding(&ctx);
    // No lease recorded and a fixed MAC: no DHCPRELEASE, no pool; only the finalizer goes.
    let address = address()
        .finalized()
        .with_fixed_mac(FIXED_MAC)
        .owned_by(ME)
        .deleted();
    let server = verifier.run(Scenario::FinalizerRemoved {
        address: address.clone(),
        index: 1,
    });

    let result = bounded(reconcile(Arc::new(address), ctx.clone())).await;
    finish(ctx, server).await;
    assert_eq!(result.expect("reconcile"), Action::await_change());
}

#[tokio::test]
async fn deletion_of_a_dead_peers_object_is_claimed_before_the_finalizer_goes() {
    let (ctx, verifier) = test_context();
    holding(&ctx);
    ctx.ownership.peer_seen_for_tests(PEER, long_ago());
    let address = address()
        .finalized()
        .with_fixed_mac(FIXED_MAC)
        .owned_by(PEER)
        .deleted();
    let server = verifier.run(Scenario::ClaimedThenFinalizerRemoved {
        address: address.clone(),
        index: 1,
    });

    let result = bounded(reconcile(Arc::new(address), ctx.clone())).await;
    finish(ctx, server).await;
    assert_eq!(result.expect("reconcile"), Action::await_change());
}

#[tokio::test]
async fn deletion_returns_the_pool_mac_before_removing_the_finalizer() {
    let (ctx, verifier) = test_context();
    holding(&ctx);
    let pool = pool(&["02:00:5e:00:00:01", "02:00:5e:00:00:02"], "3")
        .allocated("02:00:5e:00:00:01", "shop/other")
        .allocated("02:00:5e:00:00:02", KEY);
    let address = address().finalized().owned_by(ME).deleted();
    let server = verifier.run(Scenario::PoolMacReturnedThenFinalizerRemoved {
        pool,
        address: address.clone(),
        index: 1,
    });

    let result = bounded(reconcile(Arc::new(address), ctx.clone())).await;
    finish(ctx, server).await;
    assert_eq!(result.expect("reconcile"), Action::await_change());
}

#[tokio::test]
async fn error_policy_counts_failures_by_error() {
    let (ctx, verifier) = test_context();
    let server = verifier.run(Scenario::NoRequests);
    let address = Arc::new(address());
    let exhausted = Error::PoolExhausted(POOL.into());

    let first = error_policy(address.clone(), &exhausted, ctx.clone());
    error_policy(address.clone(), &exhausted, ctx.clone());
    error_policy(address, &Error::Contended(POOL.into()), ctx.clone());

    assert_eq!(first, Action::requeue(Duration::from_secs(5)));
    let count = |error: &str| {
        ctx.metrics
            .failures
            .get_or_create(&ErrorLabel {
                error: error.into(),
            })
            .get()
    };
    assert_eq!((count("pool_exhausted"), count("contended")), (2, 1));
    let text = ctx.metrics.render();
    assert!(
        text.contains("dhcpmanager_failures_total{error=\"pool_exhausted\"} 2"),
        "{text}"
    );
    finish(ctx, server).await;
}

#[tokio::test]
async fn error_policy_shows_a_user_fixable_error_on_an_owned_object() {
    let (ctx, verifier) = test_context();
    let address = address().finalized().owned_by(ME);
    let exhausted = Error::PoolExhausted(POOL.into());
    let mut expected = address.status.clone().expect("a status");
    expected.phase = Some(Phase::Failed);
    expected.last_error = Some(exhausted.to_string());
    expected.observed_generation = Some(1);
    let server = verifier.run(Scenario::StatusApplied(expected));

    let action = error_policy(Arc::new(address), &exhausted, ctx.clone());
    finish(ctx, server).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
}

#[tokio::test]
async fn error_policy_shows_a_node_at_capacity_as_failed_with_the_reason() {
    let (ctx, verifier) = test_context();
    let address = address().finalized().owned_by(ME);
    let refused = Error::Engine(dhcpmanager_engine::Error::Capacity {
        key: "default/web".into(),
        refusal: dhcpmanager_engine::manager::Refusal::Addresses { limit: 3 },
    });
    let mut expected = address.status.clone().expect("a status");
    expected.phase = Some(Phase::Failed);
    expected.last_error = Some(refused.to_string());
    expected.observed_generation = Some(1);
    let server = verifier.run(Scenario::StatusApplied(expected));

    let action = error_policy(Arc::new(address), &refused, ctx.clone());
    finish(ctx, server).await;
    assert!(refused.to_string().contains("capacity"), "{refused}");
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
}

#[tokio::test]
async fn error_policy_writes_nothing_for_transient_errors_or_others_objects() {
    let (ctx, verifier) = test_context();
    let server = verifier.run(Scenario::NoRequests);

    let mine = Arc::new(address().finalized().owned_by(ME));
    error_policy(mine, &Error::Contended(POOL.into()), ctx.clone());
    let peers = Arc::new(address().finalized().owned_by(PEER));
    error_policy(peers, &Error::PoolExhausted(POOL.into()), ctx.clone());
    finish(ctx, server).await;
}

#[tokio::test]
async fn an_invalid_object_fails_on_itself_and_waits_for_a_change() {
    let (ctx, verifier) = test_context();
    holding(&ctx);
    let mut address = address().finalized().owned_by(ME);
    address.spec.mac = Some("02:aa:00:00:00".into());
    let result = bounded(reconcile(Arc::new(address.clone()), ctx.clone())).await;
    let error = match result {
        Err(error @ Error::InvalidAddress { .. }) => error,
        other => panic!("expected an invalid address, got {other:?}"),
    };
    let mut expected = address.status.clone().expect("a status");
    expected.phase = Some(Phase::Failed);
    expected.last_error = Some(error.to_string());
    expected.observed_generation = Some(1);
    let server = verifier.run(Scenario::StatusApplied(expected));

    let action = error_policy(Arc::new(address), &error, ctx.clone());
    finish(ctx, server).await;
    // Not every 5 s: only the user's change of the object (which brings a reconcile) can help.
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn a_missing_pool_is_retried_since_creating_it_changes_no_address() {
    let (ctx, verifier) = test_context();
    let server = verifier.run(Scenario::NoRequests);
    let missing = Error::MissingPool {
        address: KEY.into(),
        pool: POOL.into(),
    };
    let action = error_policy(Arc::new(address()), &missing, ctx.clone());
    finish(ctx, server).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    assert_eq!(missing.metric_label(), "invalid_address");
}

#[tokio::test]
async fn a_custom_identity_is_refused_unless_the_admin_allows_it() {
    let (ctx, verifier) = test_context();
    holding(&ctx);
    // Refused before anything is read or written: no MacPool lookup, no link.
    let server = verifier.run(Scenario::NoRequests);
    let mut address = address().finalized().owned_by(ME);
    address.spec.interface = Some("eth9".into());
    address.spec.mac = Some("02:aa:00:00:00:09".into());
    address.spec.client_id = Some(dhcpmanager_crds::ClientIdSpec {
        mode: dhcpmanager_crds::ClientIdMode::Custom,
        value: Some("01aabbccddeeff".into()),
    });
    let result = bounded(reconcile(Arc::new(address), ctx.clone())).await;
    finish(ctx, server).await;
    let problem = match result {
        Err(Error::InvalidAddress { problem, .. }) => problem,
        other => panic!("expected a refusal, got {other:?}"),
    };
    for named in [
        "spec.interface",
        "spec.mac",
        "spec.clientId",
        "agent.allowCustomIdentity",
    ] {
        assert!(problem.contains(named), "{named}: {problem}");
    }
}

#[test]
fn only_interface_mac_and_custom_client_id_are_custom_identity() {
    use super::reconcile::custom_identity;
    use dhcpmanager_crds::{ClientIdMode, ClientIdSpec, DhcpAddressSpec};
    let plain = DhcpAddressSpec {
        service: Some("shop/web".into()),
        hostname: Some("web".into()),
        client_id: Some(ClientIdSpec {
            mode: ClientIdMode::Mac,
            value: None,
        }),
        ..Default::default()
    };
    assert_eq!(custom_identity(&plain), Ok(()));
    let empty_interface = DhcpAddressSpec {
        interface: Some(String::new()),
        ..Default::default()
    };
    assert_eq!(custom_identity(&empty_interface), Ok(()));
    let mac = DhcpAddressSpec {
        mac: Some("02:aa:00:00:00:01".into()),
        ..Default::default()
    };
    assert!(
        custom_identity(&mac)
            .unwrap_err()
            .starts_with("spec.mac not allowed")
    );
}
