//! The Service reconciler against the mock API server, one branch per test: the requests it
//! makes (and those it must not), in order, and what it asks for next.

use std::sync::Arc;
use std::time::Duration;

use dhcpmanager_crds::{DhcpAddress, Phase};
use http::{Method, StatusCode};
use kube::runtime::controller::Action;
use serde_json::json;

use super::desired::annotation;
use super::fixtures::*;
use super::reconcile::{COORDINATOR_RECHECK, reconcile};
use crate::agent::fixtures::{ME, bounded};
use crate::error::Error;

async fn run(
    standing: Standing,
    default_lb: bool,
    addresses: Vec<DhcpAddress>,
    service: k8s_openapi::api::core::v1::Service,
    expected: Vec<Expected>,
) -> Result<Action, Error> {
    let (ctx, api) = context(standing, default_lb, Some(addresses));
    let server = api.expect(expected);
    let result = bounded(reconcile(Arc::new(service), ctx.clone())).await;
    finish(ctx, server).await;
    result
}

// --- the class filter ------------------------------------------------------------------------

#[tokio::test]
async fn services_of_other_classes_and_types_are_never_touched() {
    for (service, default_lb) in [
        (service().class(Some("metallb.io/metallb")), true),
        (service().class(None), false),
        (service().type_("ClusterIP").class(None), true),
        (service().type_("NodePort").class(None), true),
    ] {
        // Even a coordinator, even with a same-named address around: no request at all.
        let result = run(
            Standing::Coordinator,
            default_lb,
            vec![address().foreign()],
            service,
            vec![],
        )
        .await;
        assert_eq!(result.expect("reconcile"), Action::await_change());
    }
}

#[tokio::test]
async fn a_classless_load_balancer_is_served_when_we_are_the_default() {
    let created = Expected::new(Method::POST, ADDRESS_PATH);
    let result = run(
        Standing::Coordinator,
        true,
        vec![],
        service().class(None),
        vec![created],
    )
    .await;
    assert_eq!(result.expect("reconcile"), Action::requeue(RESYNC));
}

// --- creating the address: the coordinator only ----------------------------------------------

#[tokio::test]
async fn the_coordinator_creates_the_address_owned_by_the_service() {
    let created = Expected::new(Method::POST, ADDRESS_PATH).checking(|query, body| {
        assert_eq!(query, ["fieldManager=dhcpmanager-service-controller"]);
        assert_eq!(body["metadata"]["name"], "web");
        assert_eq!(body["metadata"]["namespace"], "shop");
        assert_eq!(
            body["metadata"]["ownerReferences"],
            json!([{
                "apiVersion": "v1", "kind": "Service", "name": "web", "uid": SERVICE_UID,
                "controller": true, "blockOwnerDeletion": true,
            }])
        );
        assert_eq!(
            body["spec"],
            json!({"service": "shop/web", "assignToInterface": true, "requestedIp": "10.77.0.42"})
        );
    });
    let service = service().annotated(annotation::REQUESTED_IP, "10.77.0.42");
    let result = run(Standing::Coordinator, false, vec![], service, vec![created]).await;
    assert_eq!(result.expect("reconcile"), Action::requeue(RESYNC));
}

#[tokio::test]
async fn an_address_created_by_another_agent_meanwhile_is_fine() {
    let conflict =
        Expected::new(Method::POST, ADDRESS_PATH).failing(StatusCode::CONFLICT, "AlreadyExists");
    let result = run(
        Standing::Coordinator,
        false,
        vec![],
        service(),
        vec![conflict],
    )
    .await;
    assert_eq!(result.expect("reconcile"), Action::requeue(RESYNC));
}

#[tokio::test]
async fn members_and_fenced_agents_create_nothing_and_look_again_soon() {
    // Soon, not at the resync: the agent may become the coordinator without any change of the
    // Service (its Lease held at last, the coordinator gone).
    for standing in [Standing::Member, Standing::Fenced] {
        let result = run(standing, false, vec![], service(), vec![]).await;
        assert_eq!(
            result.expect("reconcile"),
            Action::requeue(COORDINATOR_RECHECK)
        );
    }
}

#[tokio::test]
async fn nothing_is_decided_before_the_address_watch_has_listed_once() {
    let (ctx, api) = context(Standing::Coordinator, false, None);
    let server = api.expect(vec![]);
    let result = bounded(reconcile(
        Arc::new(service().showing("10.77.0.10")),
        ctx.clone(),
    ))
    .await;
    finish(ctx, server).await;
    assert_eq!(
        result.expect("reconcile"),
        Action::requeue(Duration::from_secs(1))
    );
}

#[tokio::test]
async fn a_same_named_address_of_someone_else_is_left_alone_and_reported() {
    let event = Expected::event(
        "Warning",
        "AddressNameTaken",
        "does not belong to this Service",
    );
    let result = run(
        Standing::Coordinator,
        false,
        vec![address().foreign()],
        service(),
        vec![event],
    )
    .await;
    assert_eq!(result.expect("reconcile"), Action::requeue(RESYNC));
}

// --- the ingress: written by the address's owner only ----------------------------------------

#[tokio::test]
async fn the_owner_shows_the_bound_ip_and_says_so() {
    let bound = address().held(ME, Phase::Bound, Some("10.77.0.10"));
    let result = run(
        Standing::Member,
        false,
        vec![bound],
        service(),
        vec![
            Expected::ingress(json!([{"ip": "10.77.0.10"}])),
            Expected::event("Normal", "AddressAssigned", "10.77.0.10 leased"),
        ],
    )
    .await;
    assert_eq!(result.expect("reconcile"), Action::requeue(RESYNC));
}

#[tokio::test]
async fn an_ingress_already_right_is_not_written_again() {
    let renewing = address().held(ME, Phase::Renewing, Some("10.77.0.10"));
    let result = run(
        Standing::Member,
        false,
        vec![renewing],
        service().showing("10.77.0.10"),
        vec![],
    )
    .await;
    assert_eq!(result.expect("reconcile"), Action::requeue(RESYNC));
}

#[tokio::test]
async fn an_address_of_another_agent_is_not_ours_to_show_even_for_the_coordinator() {
    let bound = address().held(PEER, Phase::Bound, Some("10.77.0.10"));
    let result = run(Standing::Coordinator, false, vec![bound], service(), vec![]).await;
    assert_eq!(result.expect("reconcile"), Action::requeue(RESYNC));
}

#[tokio::test]
async fn a_fenced_owner_writes_nothing() {
    let bound = address().held(ME, Phase::Bound, Some("10.77.0.10"));
    let result = run(Standing::Fenced, false, vec![bound], service(), vec![]).await;
    assert_eq!(result.expect("reconcile"), Action::requeue(RESYNC));
}

#[tokio::test]
async fn a_new_ip_forced_by_the_server_replaces_the_ingress_with_a_warning() {
    let moved = address().held(ME, Phase::Bound, Some("10.77.0.20"));
    let result = run(
        Standing::Member,
        false,
        vec![moved],
        service().showing("10.77.0.10"),
        vec![
            Expected::ingress(json!([{"ip": "10.77.0.20"}])),
            Expected::event("Warning", "IpChanged", "10.77.0.10 -> 10.77.0.20"),
        ],
    )
    .await;
    assert_eq!(result.expect("reconcile"), Action::requeue(RESYNC));
}

#[tokio::test]
async fn a_lost_lease_empties_the_ingress_with_a_warning() {
    let expired = address().held(ME, Phase::Expired, Some("10.77.0.10"));
    let result = run(
        Standing::Member,
        false,
        vec![expired],
        service().showing("10.77.0.10"),
        vec![
            Expected::ingress(json!(null)),
            Expected::event("Warning", "AddressLost", "DhcpAddress Expired"),
        ],
    )
    .await;
    assert_eq!(result.expect("reconcile"), Action::requeue(RESYNC));
}

#[tokio::test]
async fn an_address_deleted_behind_our_back_is_recreated_and_the_stale_ingress_goes() {
    let result = run(
        Standing::Coordinator,
        false,
        vec![],
        service().showing("10.77.0.10"),
        vec![
            Expected::new(Method::POST, ADDRESS_PATH),
            Expected::ingress(json!(null)),
            Expected::event("Warning", "AddressLost", "its DhcpAddress is gone"),
        ],
    )
    .await;
    assert_eq!(result.expect("reconcile"), Action::requeue(RESYNC));
}

// --- changes of the Service ------------------------------------------------------------------

#[tokio::test]
async fn changed_annotations_are_applied_by_the_owner() {
    let bound = address().held(ME, Phase::Bound, Some("10.77.0.10"));
    let applied =
        Expected::new(Method::PATCH, &format!("{ADDRESS_PATH}/web")).checking(|query, body| {
            assert_eq!(
                query,
                [
                    "fieldManager=dhcpmanager-service-controller".to_string(),
                    "force=true".to_string()
                ]
            );
            assert_eq!(body["kind"], "DhcpAddress");
            assert_eq!(body["spec"]["hostname"], "www.example");
            assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], SERVICE_UID);
        });
    let service = service()
        .showing("10.77.0.10")
        .annotated(annotation::HOSTNAME, "www.example");
    let result = run(Standing::Member, false, vec![bound], service, vec![applied]).await;
    assert_eq!(result.expect("reconcile"), Action::requeue(RESYNC));
}

#[tokio::test]
async fn a_refused_change_is_shown_on_the_service() {
    let bound = address().held(ME, Phase::Bound, Some("10.77.0.10"));
    let refused = Expected::new(Method::PATCH, &format!("{ADDRESS_PATH}/web")).failing(
        StatusCode::UNPROCESSABLE_ENTITY,
        "macPoolRef is immutable once set",
    );
    let event = Expected::event("Warning", "InvalidService", "macPoolRef is immutable");
    let service = service()
        .showing("10.77.0.10")
        .annotated(annotation::MAC_POOL, "other-pool");
    let result = run(
        Standing::Member,
        false,
        vec![bound],
        service,
        vec![refused, event],
    )
    .await;
    assert!(
        matches!(result, Err(Error::InvalidService { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn an_invalid_annotation_is_reported_and_nothing_is_created() {
    let event = Expected::event("Warning", "InvalidService", "not an IPv4 address");
    let service = service().annotated(annotation::REQUESTED_IP, "10.77.0.256");
    let result = run(Standing::Coordinator, false, vec![], service, vec![event]).await;
    match result {
        Err(Error::InvalidService { service, problem }) => {
            assert_eq!(service, "shop/web");
            assert!(problem.contains(annotation::REQUESTED_IP), "{problem}");
        }
        other => panic!("expected an invalid Service, got {other:?}"),
    }
}

#[tokio::test]
async fn an_ipv6_only_service_is_told_that_ipv4_is_supported() {
    let event = Expected::event("Warning", "IPv6Unsupported", "IPv4");
    let service = service().families(&["IPv6"]);
    let result = run(Standing::Coordinator, false, vec![], service, vec![event]).await;
    assert_eq!(result.expect("reconcile"), Action::await_change());
    let member = run(Standing::Member, false, vec![], service_v6(), vec![]).await;
    assert_eq!(member.expect("reconcile"), Action::await_change());
}

fn service_v6() -> k8s_openapi::api::core::v1::Service {
    service().families(&["IPv6"])
}

#[tokio::test]
async fn a_service_no_longer_a_load_balancer_loses_its_address_and_ingress() {
    let bound = address().held(ME, Phase::Bound, Some("10.77.0.10"));
    let deleted = Expected::new(Method::DELETE, &format!("{ADDRESS_PATH}/web"))
        .checking(|_, body| {
            assert_eq!(
                body["preconditions"]["uid"],
                "da000000-0000-4000-8000-000000000001"
            );
            assert_eq!(body["propagationPolicy"], "Background");
        })
        .answering(serde_json::to_value(address()).unwrap());
    let service = service()
        .type_("ClusterIP")
        .class(None)
        .showing("10.77.0.10");
    let result = run(
        Standing::Member,
        false,
        vec![bound],
        service,
        vec![deleted, Expected::ingress(json!(null))],
    )
    .await;
    assert_eq!(result.expect("reconcile"), Action::await_change());
}

#[tokio::test]
async fn a_former_load_balancer_of_another_agent_is_left_to_that_agent() {
    let bound = address().held(PEER, Phase::Bound, Some("10.77.0.10"));
    let service = service().type_("ClusterIP").class(None);
    let result = run(Standing::Coordinator, false, vec![bound], service, vec![]).await;
    assert_eq!(result.expect("reconcile"), Action::await_change());
}

#[tokio::test]
async fn between_two_leases_the_ingress_is_kept_and_looked_at_again_soon() {
    let mut naked = address().held(ME, Phase::Pending, None);
    naked.status.as_mut().unwrap().conditions =
        vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: "Ready".into(),
            status: "False".into(),
            reason: "Pending".into(),
            message: String::new(),
            last_transition_time: dhcpmanager_crds::to_time(chrono::Utc::now()),
            observed_generation: None,
        }];
    let result = run(
        Standing::Member,
        false,
        vec![naked],
        service().showing("10.77.0.10"),
        vec![],
    )
    .await;
    match result.expect("reconcile") {
        action if action == Action::requeue(RESYNC) || action == Action::await_change() => {
            panic!("expected a short requeue, got {action:?}")
        }
        _ => {}
    }
}
