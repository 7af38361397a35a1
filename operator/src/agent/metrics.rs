//! The agent's Prometheus metrics and its /metrics, /healthz and /readyz endpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::{App, HttpResponse, HttpServer, web};
use dhcpmanager_crds::Phase;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use dhcpmanager_engine::metrics::EngineMetrics;

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

/// The server of /metrics, /healthz and /readyz, bound and ready to be spawned.
pub fn server(
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
) -> std::io::Result<actix_web::dev::Server> {
    let state = web::Data::from(metrics);
    HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route(
                "/metrics",
                web::get().to(|metrics: web::Data<Metrics>| async move {
                    HttpResponse::Ok()
                        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
                        .body(metrics.render())
                }),
            )
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
