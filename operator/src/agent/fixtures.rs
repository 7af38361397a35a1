//! The agent's unit tests against a mock API server, in the style of kube-rs/controller-rs: fluent
//! fixtures for `DhcpAddress` and `MacPool` objects, a `Context` on a mocked client, and an
//! [`ApiServerVerifier`] that checks every request the code under test makes (method, path,
//! body), in order, answers it as a kube-apiserver would, and finally checks that nothing else
//! was asked.

use std::sync::Arc;
use std::time::Duration;

use dhcpmanager_crds::{
    DhcpAddress, DhcpAddressSpec, DhcpAddressStatus, MacAllocation, MacPool, MacPoolSpec,
    MacPoolStatus,
};
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::core::Status;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tower_test::mock::{self, Handle, SendResponse};

use super::event_writer::EventWriter;
use super::metrics::Metrics;
use super::ownership::{Ownership, OwnershipConfig};
use super::reconcile::FINALIZER;
use super::status_writer::StatusWriter;
use super::{Context, Settings};
use dhcpmanager_engine::manager::{LeaseManager, ManagerConfig};
use dhcpmanager_engine::metrics::{EngineMetrics, IpChanges};

pub const NAMESPACE: &str = "shop";
pub const NAME: &str = "web";
/// The `namespace/name` key of the test address (what pools record as its holder).
pub const KEY: &str = "shop/web";
/// This agent's node.
pub const ME: &str = "node-a";
/// Another agent's node.
pub const PEER: &str = "node-b";
pub const POOL: &str = "default";
/// Somebody else's finalizer, listed before ours so the index of ours is not 0.
pub const OTHER_FINALIZER: &str = "example.com/keep";
/// The resourceVersion every fixture object is read at.
pub const VERSION: &str = "7";
/// A parent interface that does not exist: a reconcile that gets as far as creating the macvlan
/// fails there instead of touching a real interface.
pub const ABSENT_PARENT: &str = "dmt-absent0";

const ADDRESSES: &str = "/apis/dhcpmanager.io/v1alpha1/namespaces/shop/dhcpaddresses";
const POOLS: &str = "/apis/dhcpmanager.io/v1alpha1/macpools";

/// Requeue delays of the test settings: all different, so an `Action` tells which branch ran.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(10);
pub const TAKEOVER_CHECK: Duration = Duration::from_secs(11);
pub const RESYNC: Duration = Duration::from_secs(60);
pub const LEASE_DURATION: Duration = Duration::from_secs(40);
pub const TAKEOVER_GRACE: Duration = Duration::from_secs(10);

/// The test address: `shop/web`, read at [`VERSION`], no finalizer, no status.
pub fn address() -> DhcpAddress {
    let mut address = DhcpAddress::new(NAME, DhcpAddressSpec::default());
    let meta = address.meta_mut();
    meta.namespace = Some(NAMESPACE.into());
    meta.resource_version = Some(VERSION.into());
    meta.generation = Some(1);
    meta.uid = Some("0d5c4a7e-0000-4000-8000-000000000001".into());
    address
}

/// Fluent changes of the test address.
pub trait AddressFixture: Sized {
    /// Carries our finalizer after somebody else's.
    fn finalized(self) -> Self;
    /// `status.node` names `node`.
    fn owned_by(self, node: &str) -> Self;
    /// `spec.node` pins it to `node`.
    fn pinned_to(self, node: &str) -> Self;
    /// `spec.mac` fixes its MAC (no pool involved).
    fn with_fixed_mac(self, mac: &str) -> Self;
    /// Being deleted (deletionTimestamp set; the finalizers hold it).
    fn deleted(self) -> Self;
}

impl AddressFixture for DhcpAddress {
    fn finalized(mut self) -> Self {
        let finalizers = self.finalizers_mut();
        finalizers.push(OTHER_FINALIZER.into());
        finalizers.push(FINALIZER.into());
        self
    }

    fn owned_by(mut self, node: &str) -> Self {
        self.status
            .get_or_insert_with(DhcpAddressStatus::default)
            .node = Some(node.into());
        self
    }

    fn pinned_to(mut self, node: &str) -> Self {
        self.spec.node = Some(node.into());
        self
    }

    fn with_fixed_mac(mut self, mac: &str) -> Self {
        self.spec.mac = Some(mac.into());
        self
    }

    fn deleted(mut self) -> Self {
        self.meta_mut().deletion_timestamp = Some(dhcpmanager_crds::to_time(chrono::Utc::now()));
        self
    }
}

/// The MacPool [`POOL`] of `macs`, read at `version`, nothing allocated.
pub fn pool(macs: &[&str], version: &str) -> MacPool {
    let mut pool = MacPool::new(
        POOL,
        MacPoolSpec {
            macs: macs.iter().map(|m| m.to_string()).collect(),
            ranges: Vec::new(),
            interface: None,
        },
    );
    pool.meta_mut().resource_version = Some(version.into());
    pool.status = Some(MacPoolStatus::default());
    pool
}

/// Fluent changes of a test pool.
pub trait PoolFixture: Sized {
    /// `mac` is held by `address` (on node [`PEER`]); the counts follow.
    fn allocated(self, mac: &str, address: &str) -> Self;
}

impl PoolFixture for MacPool {
    fn allocated(mut self, mac: &str, address: &str) -> Self {
        let total = self.spec.macs.len() as u32;
        let status = self.status.get_or_insert_with(MacPoolStatus::default);
        status.allocations.push(MacAllocation {
            mac: mac.into(),
            address: address.into(),
            node: Some(PEER.into()),
        });
        status.used = status.allocations.len() as u32;
        status.free = total - status.used;
        self
    }
}

impl Context {
    /// A context on `client` with the rest as the agent builds it (status writer, recorder,
    /// fresh metrics), without any background task of `run`.
    pub fn for_tests(
        client: Client,
        manager: LeaseManager,
        ownership: Arc<Ownership>,
        settings: Settings,
    ) -> Self {
        let engine = EngineMetrics::spawn(manager.clone(), IpChanges::FromEvents);
        Context {
            client: client.clone(),
            manager,
            ownership,
            settings,
            metrics: Arc::new(Metrics::new(engine)),
            status_writer: StatusWriter::spawn(client.clone()),
            event_writer: EventWriter::spawn(kube::runtime::events::Recorder::new(
                client,
                kube::runtime::events::Reporter {
                    controller: "dhcpmanager-agent".into(),
                    instance: Some(ME.into()),
                },
            )),
            pool_locks: Default::default(),
        }
    }
}

/// A mocked client and the verifier that answers its requests.
pub fn mock_client() -> (Client, ApiServerVerifier) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServerVerifier(handle))
}

/// The agent of node [`ME`] on a mocked API server: not yet holding its Lease, seeing no peer.
/// Builds a real lease manager (it opens only a netlink socket until an address is started).
pub fn test_context() -> (Arc<Context>, ApiServerVerifier) {
    let (client, verifier) = mock_client();
    let manager = LeaseManager::new(
        dhcpmanager_engine::instance::InstanceId::derived("agent", "fixture"),
        ManagerConfig::default(),
        Arc::new(|_, _| {}),
    )
    .expect("a lease manager (netlink socket)");
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
    let settings = Settings {
        interface: ABSENT_PARENT.into(),
        assign_interfaces: false,
        default_pool: POOL.into(),
        allow_custom_identity: false,
        renew_interval: RENEW_INTERVAL,
        takeover_check: TAKEOVER_CHECK,
        resync: RESYNC,
        time_scale: 1.0,
    };
    let ctx = Context::for_tests(client, manager, ownership, settings);
    (Arc::new(ctx), verifier)
}

/// Long enough since a peer's last Lease change for it to count as dead.
pub fn long_ago() -> Duration {
    LEASE_DURATION + TAKEOVER_GRACE + Duration::from_secs(5)
}

/// How the mock API server answers a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Accept,
    /// 409: the object changed since it was read.
    Conflict,
}

/// The conversations the tests have with the API server, each request in order.
#[allow(clippy::large_enum_variant, reason = "one value per test, moved once")]
pub enum Scenario {
    /// Not a single request.
    NoRequests,
    /// The finalizer is added to `address` by a merge patch carrying its resourceVersion.
    FinalizerAdded(DhcpAddress),
    /// `address` is claimed for [`ME`] by a status replace, answered with `Answer`.
    Claim(DhcpAddress, Answer),
    /// Our finalizer is removed from `address` by a JSON patch test+remove at `index`.
    FinalizerRemoved { address: DhcpAddress, index: usize },
    /// A deletion taken over: `address` is claimed for [`ME`] first, then the finalizer goes.
    ClaimedThenFinalizerRemoved { address: DhcpAddress, index: usize },
    /// `pool` holds a MAC of [`KEY`]; it goes back (one status replace), then the finalizer.
    PoolMacReturnedThenFinalizerRemoved {
        pool: MacPool,
        address: DhcpAddress,
        index: usize,
    },
    /// The agent's status writer applies exactly `status` to the test address (server-side
    /// apply, forced, as the agent's field manager).
    StatusApplied(DhcpAddressStatus),
    /// allocate: the first write loses a race (409), the re-read shows `raced` (a newer version
    /// in which the first free MAC went to someone else) and the second write wins.
    AllocationRace { first: MacPool, raced: MacPool },
    /// allocate: the pool is read and has nothing free; no write.
    PoolExhausted(MacPool),
    /// release: the pool does not exist (404); no write.
    PoolGone,
    /// reconcile of an address we own that needs a pool MAC: the pool is read (exists?), read
    /// again and written with the new allocation of its first MAC to [`KEY`].
    PoolMacAllocated(MacPool),
}

pub struct ApiServerVerifier(Handle<Request<Body>, Response<Body>>);

impl ApiServerVerifier {
    /// Plays `scenario`, then insists on silence until every client is gone.
    pub fn run(self, scenario: Scenario) -> JoinHandle<()> {
        tokio::spawn(async move {
            let verifier = match scenario {
                Scenario::NoRequests => self,
                Scenario::FinalizerAdded(address) => self.finalizer_added(&address).await,
                Scenario::Claim(address, answer) => self.claim(&address, answer).await,
                Scenario::FinalizerRemoved { address, index } => {
                    self.finalizer_removed(&address, index).await
                }
                Scenario::StatusApplied(status) => self.status_applied(&status).await,
                Scenario::ClaimedThenFinalizerRemoved { address, index } => {
                    self.claim(&address, Answer::Accept)
                        .await
                        .finalizer_removed(&address, index)
                        .await
                }
                Scenario::PoolMacReturnedThenFinalizerRemoved {
                    pool,
                    address,
                    index,
                } => {
                    let remaining = allocations_without(&pool, KEY);
                    self.pool_read(&pool)
                        .await
                        .pool_written(&pool, &remaining, Answer::Accept)
                        .await
                        .finalizer_removed(&address, index)
                        .await
                }
                Scenario::AllocationRace { first, raced } => {
                    let mine = |pool: &MacPool| {
                        let mut all = allocations_without(pool, KEY);
                        all.push(allocation(&first_free(pool), KEY, ME));
                        all
                    };
                    self.pool_read(&first)
                        .await
                        .pool_written(&first, &mine(&first), Answer::Conflict)
                        .await
                        .pool_read(&raced)
                        .await
                        .pool_written(&raced, &mine(&raced), Answer::Accept)
                        .await
                }
                Scenario::PoolExhausted(pool) => self.pool_read(&pool).await,
                Scenario::PoolGone => self.pool_missing().await,
                Scenario::PoolMacAllocated(pool) => {
                    let mine = vec![allocation(&first_free(&pool), KEY, ME)];
                    self.pool_read(&pool)
                        .await
                        .pool_read(&pool)
                        .await
                        .pool_written(&pool, &mine, Answer::Accept)
                        .await
                }
            };
            verifier.no_more_requests().await;
        })
    }

    /// The next request, which must be `method path`, read.
    async fn expect(&mut self, method: Method, path: &str) -> Received {
        let (request, send) = self.next(method, path).await;
        read_request(request, send).await
    }

    /// The next request, which must be `method path`.
    async fn next(
        &mut self,
        method: Method,
        path: &str,
    ) -> (Request<Body>, SendResponse<Response<Body>>) {
        let Some((request, send)) = self.0.next_request().await else {
            panic!("expected {method} {path}, but the code under test stopped asking");
        };
        assert_eq!(
            (request.method(), request.uri().path()),
            (&method, path),
            "unexpected request {} {}",
            request.method(),
            request.uri()
        );
        (request, send)
    }

    async fn finalizer_added(mut self, address: &DhcpAddress) -> Self {
        let (body, content_type, send) = self.expect(Method::PATCH, &address_path()).await;
        assert_eq!(
            content_type.as_deref(),
            Some("application/merge-patch+json")
        );
        let mut finalizers = address.finalizers().to_vec();
        finalizers.push(FINALIZER.into());
        assert_eq!(
            body,
            json!({"metadata": {"finalizers": finalizers, "resourceVersion": VERSION}})
        );
        let mut updated = address.clone();
        *updated.finalizers_mut() = finalizers;
        updated.meta_mut().resource_version = Some(next_version(VERSION));
        reply(send, &updated);
        self
    }

    async fn claim(mut self, address: &DhcpAddress, answer: Answer) -> Self {
        let path = format!("{}/status", address_path());
        let (body, _, send) = self.expect(Method::PUT, &path).await;
        let claimed: DhcpAddress = serde_json::from_value(body).expect("a DhcpAddress");
        assert_eq!(claimed.name_any(), NAME);
        assert_eq!(claimed.resource_version().as_deref(), Some(VERSION));
        let status = claimed.status.clone().expect("a status");
        assert_eq!(status.node.as_deref(), Some(ME));
        assert!(status.phase.is_some(), "a claim sets a phase: {status:?}");
        assert_eq!(claimed.spec, address.spec, "a claim keeps the spec");
        match answer {
            Answer::Accept => {
                let mut stored = address.clone();
                stored.status = Some(status);
                stored.meta_mut().resource_version = Some(next_version(VERSION));
                reply(send, &stored);
            }
            Answer::Conflict => conflict(send, "dhcpaddresses", NAME),
        }
        self
    }

    async fn status_applied(mut self, expected: &DhcpAddressStatus) -> Self {
        let path = format!("{}/status", address_path());
        let (query, (body, content_type, send)) = {
            let (request, send) = self.next(Method::PATCH, &path).await;
            let query = request.uri().query().unwrap_or_default().to_string();
            (query, read_request(request, send).await)
        };
        assert_eq!(
            content_type.as_deref(),
            Some("application/apply-patch+yaml")
        );
        let mut params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
        params.sort_unstable();
        assert_eq!(params, ["fieldManager=dhcpmanager-agent", "force=true"]);
        assert_eq!(body["apiVersion"], "dhcpmanager.io/v1alpha1");
        assert_eq!(body["kind"], "DhcpAddress");
        let status: DhcpAddressStatus =
            serde_json::from_value(body["status"].clone()).expect("a DhcpAddressStatus");
        assert_eq!(&status, expected);
        let mut stored = address();
        stored.status = Some(status);
        reply(send, &stored);
        self
    }

    async fn finalizer_removed(mut self, address: &DhcpAddress, index: usize) -> Self {
        let (body, content_type, send) = self.expect(Method::PATCH, &address_path()).await;
        assert_eq!(content_type.as_deref(), Some("application/json-patch+json"));
        let path = format!("/metadata/finalizers/{index}");
        assert_eq!(
            body,
            json!([
                {"op": "test", "path": path, "value": FINALIZER},
                {"op": "remove", "path": path},
            ])
        );
        let mut updated = address.clone();
        updated.finalizers_mut().remove(index);
        reply(send, &updated);
        self
    }

    async fn pool_read(mut self, pool: &MacPool) -> Self {
        let (_, _, send) = self.expect(Method::GET, &pool_path()).await;
        reply(send, pool);
        self
    }

    async fn pool_missing(mut self) -> Self {
        let (_, _, send) = self.expect(Method::GET, &pool_path()).await;
        send.send_response(status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            "macpools",
        ));
        self
    }

    /// A status replace of `read` (at its resourceVersion) leaving exactly `allocations`.
    async fn pool_written(
        mut self,
        read: &MacPool,
        allocations: &[MacAllocation],
        answer: Answer,
    ) -> Self {
        let path = format!("{}/status", pool_path());
        let (body, _, send) = self.expect(Method::PUT, &path).await;
        let written: MacPool = serde_json::from_value(body).expect("a MacPool");
        assert_eq!(written.resource_version(), read.resource_version());
        assert_eq!(written.spec, read.spec, "a status write keeps the spec");
        let status = written.status.clone().expect("a status");
        assert_eq!(status.allocations, allocations);
        let total = read.spec.macs.len() as u32;
        assert_eq!(
            (status.used, status.free),
            (allocations.len() as u32, total - allocations.len() as u32)
        );
        match answer {
            Answer::Accept => {
                let mut stored = written;
                let version = read.resource_version().expect("a read version");
                stored.meta_mut().resource_version = Some(next_version(&version));
                reply(send, &stored);
            }
            Answer::Conflict => conflict(send, "macpools", POOL),
        }
        self
    }

    /// Nothing more is asked until every clone of the mocked client is dropped.
    async fn no_more_requests(mut self) {
        if let Some((request, _)) = self.0.next_request().await {
            panic!(
                "unexpected extra request {} {}",
                request.method(),
                request.uri()
            );
        }
    }
}

/// A request's JSON body (Null when empty), its Content-Type, and the way to answer it.
type Received = (Value, Option<String>, SendResponse<Response<Body>>);

async fn read_request(request: Request<Body>, send: SendResponse<Response<Body>>) -> Received {
    let content_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().expect("ASCII content type").to_string());
    let bytes = request
        .into_body()
        .collect_bytes()
        .await
        .expect("request body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("a JSON request body")
    };
    (body, content_type, send)
}

/// Drops the context (and with it every client of the mock) and waits for the verifier to have
/// seen its whole scenario and nothing more; a verifier's failed assertion fails the test.
pub async fn finish(ctx: Arc<Context>, server: JoinHandle<()>) {
    drop(ctx);
    verified(server).await;
}

pub async fn verified(server: JoinHandle<()>) {
    // A safety net only: every scenario completes in milliseconds.
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Ok(Err(error)) => panic!("the verifier task failed: {error}"),
        Err(_) => panic!("the API scenario did not finish (a client clone still alive?)"),
    }
}

/// Awaits code under test with a safety net against a scenario that never answers.
pub async fn bounded<F: std::future::IntoFuture>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .expect("the code under test did not finish")
}

pub fn allocation(mac: &str, address: &str, node: &str) -> MacAllocation {
    MacAllocation {
        mac: mac.into(),
        address: address.into(),
        node: Some(node.into()),
    }
}

/// The lowest free MAC of `pool`: what `allocate` hands out.
pub fn first_free(pool: &MacPool) -> String {
    pool.free_macs()
        .expect("a valid pool")
        .into_iter()
        .next()
        .expect("a free MAC")
        .to_string()
}

fn allocations_without(pool: &MacPool, address: &str) -> Vec<MacAllocation> {
    pool.status
        .iter()
        .flat_map(|s| s.allocations.iter())
        .filter(|a| a.address != address)
        .cloned()
        .collect()
}

fn address_path() -> String {
    format!("{ADDRESSES}/{NAME}")
}

fn pool_path() -> String {
    format!("{POOLS}/{POOL}")
}

fn next_version(version: &str) -> String {
    (version.parse::<u64>().expect("numeric test versions") + 1).to_string()
}

fn reply(send: SendResponse<Response<Body>>, object: &impl Serialize) {
    let body = serde_json::to_vec(object).expect("serializable");
    send.send_response(Response::builder().body(Body::from(body)).unwrap());
}

fn conflict(send: SendResponse<Response<Body>>, resource: &str, name: &str) {
    send.send_response(status_response(
        StatusCode::CONFLICT,
        "Conflict",
        &format!("{resource} \"{name}\""),
    ));
}

/// An error answer the way kube-apiserver gives it: the HTTP code and a `Status` body.
fn status_response(code: StatusCode, reason: &str, what: &str) -> Response<Body> {
    let status = Status::failure(&format!("{what}: {reason}"), reason).with_code(code.as_u16());
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(&status).expect("a Status")))
        .unwrap()
}
