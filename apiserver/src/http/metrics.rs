//! Prometheus metrics of the API: requests by route/method/status, allocation latency by outcome.

use std::time::Duration;

use actix_web::Error;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::engine_metrics::EngineMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The matched route pattern, so unknown paths cannot blow up cardinality.
    pub route: String,
    pub method: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    allocation_seconds: Family<OutcomeLabels, Histogram>,
    engine: Option<std::sync::Arc<EngineMetrics>>,
}

fn allocation_histogram() -> Histogram {
    // 10 ms … ~80 s: DHCP binds take from milliseconds (local server) to the request timeout.
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(None)
    }
}

impl Metrics {
    /// The API's own metrics, and the engine's when the backend runs one.
    pub fn new(engine: Option<std::sync::Arc<EngineMetrics>>) -> Self {
        let mut registry = Registry::with_prefix("dhcpmanager_apiserver");
        let requests = Family::<RequestLabels, Counter>::default();
        let allocation_seconds = Family::<OutcomeLabels, Histogram>::new_with_constructor(
            allocation_histogram as fn() -> Histogram,
        );
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        registry.register(
            "allocation_duration_seconds",
            "Time POST /v1/ip took to bind an address (or give up), by outcome",
            allocation_seconds.clone(),
        );
        // Every outcome exists from the start, so rate() counts the first allocation of each too.
        for outcome in [
            crate::http::wire::SUCCESS,
            crate::http::wire::ERROR,
            crate::http::wire::TIMEOUT,
        ] {
            let _ = allocation_seconds.get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            });
        }
        if let Some(engine) = &engine {
            engine.register(&mut registry);
        }
        Metrics {
            registry,
            requests,
            allocation_seconds,
            engine,
        }
    }

    pub fn observe_allocation(&self, outcome: &str, took: Duration) {
        self.allocation_seconds
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn encode(&self) -> String {
        if let Some(engine) = &self.engine {
            engine.refresh();
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// Counts every answer, including the ones produced by other middleware (auth, 404, 405).
pub async fn count_requests(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let metrics = request.app_data::<web::Data<Metrics>>().cloned();
    // Arbitrary method tokens are valid HTTP; only known ones become label values.
    let method = match request.method().as_str() {
        known @ ("GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS") => known,
        _ => "other",
    }
    .to_string();
    let response = next.call(request).await?;
    if let Some(metrics) = metrics {
        let route = response
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_string());
        metrics
            .requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status: response.status().as_u16().to_string(),
            })
            .inc();
    }
    Ok(response)
}
