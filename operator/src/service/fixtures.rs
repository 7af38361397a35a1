//! The Service controller's unit-test kit: fluent Service and DhcpAddress fixtures, a context
//! on a mocked API server, and a verifier that checks each request (method, path, query, body)
//! in order, answers it, and then insists that nothing else was asked.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use dhcpmanager_crds::{DhcpAddress, DhcpAddressStatus, Phase};
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Service, ServiceSpec, ServiceStatus,
};
use kube::client::Body;
use kube::core::Status;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::Value;
use tokio::task::JoinHandle;
use tower_test::mock::{self, Handle};

use super::desired::{self, LOAD_BALANCER_CLASS};
use super::{FIELD_MANAGER, ServiceContext, ServiceSettings};
use crate::agent::fixtures::{LEASE_DURATION, ME, RENEW_INTERVAL, TAKEOVER_GRACE};
use crate::agent::ownership::{Ownership, OwnershipConfig};

pub const NAMESPACE: &str = "shop";
pub const NAME: &str = "web";
pub const SERVICE_UID: &str = "5e1f0000-0000-4000-8000-00000000000a";
pub const RESYNC: Duration = Duration::from_secs(61);
/// A live agent whose name sorts before ours: it coordinates, we do not.
pub const SMALLER_PEER: &str = "node-0";
/// A live agent whose name sorts after ours.
pub const PEER: &str = "node-b";

pub const ADDRESS_PATH: &str = "/apis/dhcpmanager.io/v1alpha1/namespaces/shop/dhcpaddresses";
pub const SERVICE_STATUS_PATH: &str = "/api/v1/namespaces/shop/services/web/status";
pub const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";

/// `shop/web`, type LoadBalancer of our class, stored (it has a UID), nothing in status.
pub fn service() -> Service {
    let mut service = Service {
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            load_balancer_class: Some(LOAD_BALANCER_CLASS.into()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    service.metadata.name = Some(NAME.into());
    service.metadata.namespace = Some(NAMESPACE.into());
    service.metadata.uid = Some(SERVICE_UID.into());
    service.metadata.resource_version = Some("3".into());
    service
}

pub trait ServiceFixture: Sized {
    fn class(self, class: Option<&str>) -> Self;
    fn type_(self, type_: &str) -> Self;
    fn families(self, families: &[&str]) -> Self;
    fn annotated(self, key: &str, value: &str) -> Self;
    /// `status.loadBalancer.ingress` lists `ip`.
    fn showing(self, ip: &str) -> Self;
}

impl ServiceFixture for Service {
    fn class(mut self, class: Option<&str>) -> Self {
        self.spec.as_mut().unwrap().load_balancer_class = class.map(str::to_string);
        self
    }

    fn type_(mut self, type_: &str) -> Self {
        self.spec.as_mut().unwrap().type_ = Some(type_.into());
        self
    }

    fn families(mut self, families: &[&str]) -> Self {
        self.spec.as_mut().unwrap().ip_families =
            Some(families.iter().map(|f| f.to_string()).collect());
        self
    }

    fn annotated(mut self, key: &str, value: &str) -> Self {
        self.annotations_mut().insert(key.into(), value.into());
        self
    }

    fn showing(mut self, ip: &str) -> Self {
        self.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some(ip.into()),
                    ..LoadBalancerIngress::default()
                }]),
            }),
            ..ServiceStatus::default()
        });
        self
    }
}

/// The address the controller made for [`service`], as stored (a UID, no status yet).
pub fn address() -> DhcpAddress {
    let mut address = desired::desired_address(&service()).expect("a valid Service");
    address.metadata.uid = Some("da000000-0000-4000-8000-000000000001".into());
    address.metadata.resource_version = Some("9".into());
    address
}

pub trait AddressFixture: Sized {
    /// `status.node` is `node`, phase `phase`, IP `ip`.
    fn held(self, node: &str, phase: Phase, ip: Option<&str>) -> Self;
    /// Not controlled by the Service (made by hand).
    fn foreign(self) -> Self;
}

impl AddressFixture for DhcpAddress {
    fn held(mut self, node: &str, phase: Phase, ip: Option<&str>) -> Self {
        self.status = Some(DhcpAddressStatus {
            node: Some(node.into()),
            phase: Some(phase),
            ip: ip.map(|ip| ip.parse().expect("an IPv4 address")),
            ..DhcpAddressStatus::default()
        });
        self
    }

    fn foreign(mut self) -> Self {
        self.metadata.owner_references = None;
        self
    }
}

/// Who this agent is in the cluster, for a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Holding its Lease, no live agent with a smaller name: it coordinates.
    Coordinator,
    /// Holding its Lease, but [`SMALLER_PEER`] is alive and coordinates.
    Member,
    /// Without its Lease: it must not write anything.
    Fenced,
}

/// A context for node [`crate::agent::fixtures::ME`] on a mocked API server, whose address
/// store holds `addresses` (and has listed once, unless `addresses` is `None`).
pub fn context(
    standing: Standing,
    default_load_balancer: bool,
    addresses: Option<Vec<DhcpAddress>>,
) -> (Arc<ServiceContext>, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let ownership = Arc::new(Ownership::new(
        OwnershipConfig {
            node: ME.into(),
            lease_duration: LEASE_DURATION,
            renew_interval: RENEW_INTERVAL,
            takeover_grace: TAKEOVER_GRACE,
            owner: None,
        },
        Api::namespaced(client.clone(), "dhcpmanager"),
    ));
    // Our watch is healthy and sees a live peer after us in any case.
    ownership.peer_seen_for_tests(PEER, Duration::ZERO);
    match standing {
        Standing::Coordinator => ownership.mark_renewed_for_tests(),
        Standing::Member => {
            ownership.mark_renewed_for_tests();
            ownership.peer_seen_for_tests(SMALLER_PEER, Duration::ZERO);
        }
        Standing::Fenced => {}
    }
    let mut writer = reflector::store::Writer::<DhcpAddress>::default();
    if let Some(addresses) = addresses {
        writer.apply_watcher_event(&watcher::Event::Init);
        for address in addresses {
            writer.apply_watcher_event(&watcher::Event::InitApply(address));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
    }
    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: Some(ME.into()),
    };
    let ctx = ServiceContext {
        recorder: Recorder::new(client.clone(), reporter.clone()),
        reporter,
        client,
        ownership,
        addresses: writer.as_reader(),
        settings: ServiceSettings {
            default_load_balancer,
            resync: RESYNC,
        },
    };
    // The writer must outlive the test's reads: a dropped writer leaves the store as it was.
    std::mem::forget(writer);
    (Arc::new(ctx), ApiServer::new(handle))
}

/// Checks the (sorted) query parameters and the JSON body of a request; panics on a mismatch.
pub type RequestCheck = Box<dyn FnOnce(&[String], &Value) + Send>;

/// One request the code under test must make, and how it is answered.
pub struct Expected {
    pub method: Method,
    pub path: String,
    pub check: RequestCheck,
    pub status: StatusCode,
    pub answer: Value,
}

impl Expected {
    pub fn new(method: Method, path: &str) -> Self {
        Expected {
            method,
            path: path.into(),
            check: Box::new(|_, _| {}),
            status: StatusCode::OK,
            // Null: echo the request body (what a create or a patch mostly returns).
            answer: Value::Null,
        }
    }

    pub fn checking(mut self, check: impl FnOnce(&[String], &Value) + Send + 'static) -> Self {
        self.check = Box::new(check);
        self
    }

    pub fn answering(mut self, answer: Value) -> Self {
        self.answer = answer;
        self
    }

    /// An error answer the way kube-apiserver gives it.
    pub fn failing(mut self, status: StatusCode, reason: &str) -> Self {
        self.status = status;
        let body =
            Status::failure(&format!("{}: {reason}", self.path), reason).with_code(status.as_u16());
        self.answer = serde_json::to_value(body).expect("a Status");
        self
    }

    /// An Event on the Service with this type and reason whose note contains `note`.
    pub fn event(type_: &'static str, reason: &'static str, note: &'static str) -> Self {
        Expected::new(Method::POST, EVENTS_PATH).checking(move |_, body| {
            assert_eq!(body["type"], type_, "{body}");
            assert_eq!(body["reason"], reason, "{body}");
            let text = body["note"].as_str().unwrap_or_default();
            assert!(text.contains(note), "{note:?} not in {text:?}");
            assert_eq!(body["regarding"]["kind"], "Service");
            assert_eq!(body["regarding"]["name"], NAME);
            assert_eq!(body["reportingController"], FIELD_MANAGER);
            assert_eq!(body["reportingInstance"], ME);
        })
    }

    /// The merge patch of services/status leaving exactly `ingress`.
    pub fn ingress(ingress: Value) -> Self {
        Expected::new(Method::PATCH, SERVICE_STATUS_PATH).checking(move |query, body| {
            assert_eq!(query, [format!("fieldManager={FIELD_MANAGER}")]);
            assert_eq!(
                body,
                &serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}})
            );
        })
    }
}

pub struct ApiServer(Handle<Request<Body>, Response<Body>>);

impl ApiServer {
    fn new(handle: Handle<Request<Body>, Response<Body>>) -> Self {
        ApiServer(handle)
    }

    /// Plays `expected` in order, then insists on silence until every client is gone.
    pub fn expect(self, expected: Vec<Expected>) -> JoinHandle<()> {
        let mut handle = self.0;
        let mut expected: VecDeque<Expected> = expected.into();
        tokio::spawn(async move {
            while let Some(next) = expected.pop_front() {
                let Some((request, send)) = handle.next_request().await else {
                    panic!(
                        "expected {} {}, but the code under test stopped asking",
                        next.method, next.path
                    );
                };
                assert_eq!(
                    (request.method(), request.uri().path()),
                    (&next.method, next.path.as_str()),
                    "unexpected request {} {}",
                    request.method(),
                    request.uri()
                );
                let mut query: Vec<String> = request
                    .uri()
                    .query()
                    .unwrap_or_default()
                    .split('&')
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect();
                query.sort_unstable();
                let bytes = request.into_body().collect_bytes().await.expect("a body");
                let body = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).expect("a JSON body")
                };
                (next.check)(&query, &body);
                let answer = if next.status == StatusCode::OK && next.answer == Value::Null {
                    body
                } else {
                    next.answer
                };
                send.send_response(
                    Response::builder()
                        .status(next.status)
                        .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                        .unwrap(),
                );
            }
            if let Some((request, _)) = handle.next_request().await {
                panic!(
                    "unexpected extra request {} {}",
                    request.method(),
                    request.uri()
                );
            }
        })
    }
}

/// Drops the context (every client of the mock) and waits for the scenario to have been played
/// exactly; a failed check in the server fails the test.
pub async fn finish(ctx: Arc<ServiceContext>, server: JoinHandle<()>) {
    drop(ctx);
    crate::agent::fixtures::verified(server).await;
}
