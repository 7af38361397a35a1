//! The agent's Prometheus metrics and its /metrics, /healthz and /readyz endpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::http::header;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use dhcpmanager_crds::Phase;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use dhcpmanager_engine::metrics::EngineMetrics;

use super::metrics_auth::Verdict;
use super::metrics_gate::{Access, MetricsGate};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AddressLabel {
    pub namespace: String,
    pub name: String,
}

pub struct Metrics {
    registry: Registry,
    pub addresses: Family<PhaseLabel, Gauge>,
    pub time_to_bound: Histogram,
    pub failures: Family<ErrorLabel, Counter>,
    pub lease_expiry: Family<AddressLabel, Gauge>,
    /// Renewals, NAKs, expiries, IP changes, packets, clients: the engine's own type and names,
    /// the same as on the standalone apiserver.
    engine: Arc<EngineMetrics>,
    pub ready: AtomicBool,
}

impl Metrics {
    /// The agent's metrics, with `engine`'s registered beside them.
    pub fn new(engine: Arc<EngineMetrics>) -> Self {
        let mut registry = Registry::with_prefix("dhcpmanager");
        let metrics = Metrics {
            addresses: Family::default(),
            // 1 ms .. ~33 s
            time_to_bound: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            failures: Family::default(),
            lease_expiry: Family::default(),
            engine,
            ready: AtomicBool::new(false),
            registry: Registry::default(),
        };
        registry.register(
            "addresses",
            "Addresses held by this agent, by phase",
            metrics.addresses.clone(),
        );
        registry.register(
            "time_to_bound_seconds",
            "Time from starting an address to its first lease",
            metrics.time_to_bound.clone(),
        );
        registry.register(
            "failures",
            "Reconcile failures by error",
            metrics.failures.clone(),
        );
        registry.register(
            "lease_expiry_timestamp_seconds",
            "When each held lease expires (Unix time)",
            metrics.lease_expiry.clone(),
        );
        metrics.engine.register(&mut registry);
        Metrics {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    pub fn phase_changed(&self, from: Option<Phase>, to: Option<Phase>) {
        if from == to {
            return;
        }
        if let Some(from) = from {
            self.addresses
                .get_or_create(&PhaseLabel {
                    phase: from.to_string(),
                })
                .dec();
        }
        if let Some(to) = to {
            self.addresses
                .get_or_create(&PhaseLabel {
                    phase: to.to_string(),
                })
                .inc();
        }
    }

    /// The text exposition, with the engine's figures brought up to date first.
    pub fn render(&self) -> String {
        self.engine.refresh();
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// The server of /metrics, /healthz and /readyz, bound and ready to be spawned. `/metrics` is
/// behind `gate`; the probes stay open (the kubelet calls them without a token, and they tell
/// nothing but "up" and "holding the Lease").
pub fn server(
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    gate: Arc<MetricsGate>,
) -> std::io::Result<actix_web::dev::Server> {
    let state = web::Data::from(metrics);
    let gate = web::Data::from(gate);
    HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(gate.clone())
            .route("/metrics", web::get().to(scrape))
            .route(
                "/healthz",
                web::get().to(|| async { HttpResponse::Ok().body("ok\n") }),
            )
            .route(
                "/readyz",
                web::get().to(|metrics: web::Data<Metrics>| async move {
                    if metrics.ready.load(Ordering::Relaxed) {
                        HttpResponse::Ok().body("ready\n")
                    } else {
                        HttpResponse::ServiceUnavailable().body("not holding the agent Lease yet\n")
                    }
                }),
            )
    })
    .workers(1)
    .disable_signals()
    .bind(addr)
    .map(|server| server.run())
}

async fn scrape(
    request: HttpRequest,
    metrics: web::Data<Metrics>,
    gate: web::Data<MetricsGate>,
) -> HttpResponse {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    match gate.check(authorization).await {
        Access::Granted(Verdict::Allowed) => HttpResponse::Ok()
            .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(metrics.render()),
        Access::Granted(Verdict::Unauthenticated) => HttpResponse::Unauthorized()
            .insert_header((
                header::WWW_AUTHENTICATE,
                "Bearer realm=\"dhcpmanager-agent\"",
            ))
            .body(
                "401 Unauthorized: /metrics needs `Authorization: Bearer <token>` with a \
                 Kubernetes token the API server accepts (e.g. a ServiceAccount's)\n",
            ),
        Access::Granted(Verdict::Forbidden { user }) => HttpResponse::Forbidden().body(format!(
            "403 Forbidden: {user} may not get /metrics; bind it to a ClusterRole allowing \
             `get` on nonResourceURLs [\"/metrics\"] (the chart ships <release>-metrics-reader)\n"
        )),
        Access::Unavailable(problem) => HttpResponse::ServiceUnavailable().body(format!(
            "503 Service Unavailable: cannot check the scraper's token: {problem}\n"
        )),
    }
}
