//! Prometheus metrics of the API (requests by route/method/status, allocation latency by outcome,
//! as `dhcpmanager_apiserver_*`) and, with the standalone backend, the engine's (the agent's
//! names, `dhcpmanager_*`: [`EngineMetrics`]).

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

use dhcpmanager_engine::metrics::EngineMetrics;

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
    unconfirmed: prometheus_client::metrics::gauge::Gauge,
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

/// The standalone apiserver's 0.1 names of the engine metrics (after `dhcpmanager_apiserver_`)
/// and the name each became (after `dhcpmanager_`). Until 0.2 both are served, the old ones
/// marked deprecated in their help (docs/metrics.md).
pub const RENAMED_ENGINE_METRICS: [(&str, &str); 8] = [
    ("renewals", "renewals"),
    ("naks", "naks"),
    ("lease_expirations", "lease_expirations"),
    ("ip_changes", "ip_changes"),
    ("dhcp_packets_sent", "packets_sent"),
    ("dhcp_packets_received", "packets_received"),
    ("dhcp_replies_rejected", "replies_rejected"),
    ("dhcp_clients", "dhcp_clients"),
];

/// The same series under the pre-0.2 names, so dashboards and alerts keep working for a release.
fn register_deprecated_names(engine: &EngineMetrics, api: &mut Registry) {
    let deprecated = |old: &str, new: &str| {
        format!(
            "Deprecated: renamed to dhcpmanager_{new} (the agent's name); \
             dhcpmanager_apiserver_{old} is removed in 0.2"
        )
    };
    let renamed = |name: &str| {
        RENAMED_ENGINE_METRICS
            .iter()
            .find(|(_, new)| *new == name)
            .map(|(old, _)| *old)
    };
    for (name, _, counter) in engine.counters() {
        if let Some(old) = renamed(name) {
            api.register(old, deprecated(old, name), counter.clone());
        }
    }
    let (name, _, rejected) = engine.rejected();
    if let Some(old) = renamed(name) {
        api.register(old, deprecated(old, name), rejected.clone());
    }
    let (name, _, gauge) = engine.clients();
    if let Some(old) = renamed(name) {
        api.register(old, deprecated(old, name), gauge.clone());
    }
}

impl Metrics {
    /// The API's own metrics, and the engine's when the backend runs one.
    pub fn new(engine: Option<std::sync::Arc<EngineMetrics>>) -> Self {
        let mut registry = Registry::with_prefix("dhcpmanager");
        if let Some(engine) = &engine {
            engine.register(&mut registry);
        }
        let api = registry.sub_registry_with_prefix("apiserver");
        let requests = Family::<RequestLabels, Counter>::default();
        let allocation_seconds = Family::<OutcomeLabels, Histogram>::new_with_constructor(
            allocation_histogram as fn() -> Histogram,
        );
        api.register("http_requests", "HTTP requests answered", requests.clone());
        let unconfirmed = prometheus_client::metrics::gauge::Gauge::default();
        api.register(
            "unconfirmed_allocations",
            "Allocations held and renewed whose answer may not have reached the requester (a crash between write and answer); DELETE those no client uses",
            unconfirmed.clone(),
        );
        api.register(
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
            register_deprecated_names(engine, api);
        }
        Metrics {
            registry,
            requests,
            allocation_seconds,
            unconfirmed,
            engine,
        }
    }

    /// How many allocations `/v1/status` shows as unconfirmed now.
    pub fn set_unconfirmed(&self, count: usize) {
        self.unconfirmed
            .set(i64::try_from(count).unwrap_or(i64::MAX));
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use dhcpmanager_engine::manager::{LeaseManager, ManagerConfig};
    use dhcpmanager_engine::metrics::{EngineMetrics, IpChanges};

    use super::*;

    #[tokio::test]
    async fn engine_metrics_carry_the_agents_names_and_the_old_ones_until_0_2() {
        let manager = LeaseManager::new(
            dhcpmanager_engine::instance::InstanceId::derived("test", "metrics"),
            ManagerConfig::default(),
            Arc::new(|_, _| {}),
        )
        .unwrap();
        let ip_changes = Counter::default();
        ip_changes.inc();
        let engine = EngineMetrics::spawn(manager, IpChanges::CountedBy(ip_changes));
        let text = Metrics::new(Some(engine)).encode();
        for (old, new) in RENAMED_ENGINE_METRICS {
            let suffix = if new == "dhcp_clients" { "" } else { "_total" };
            // Rejected replies carry a `reason` label (its suspicious reasons exist at 0).
            let labels = if new == "replies_rejected" {
                "{reason=\"wrong_server\"}"
            } else {
                ""
            };
            let new_series = format!("\ndhcpmanager_{new}{suffix}{labels} ");
            let old_series = format!("\ndhcpmanager_apiserver_{old}{suffix}{labels} ");
            assert!(text.contains(&new_series), "{new_series:?} in\n{text}");
            assert!(text.contains(&old_series), "{old_series:?} in\n{text}");
        }
        assert!(
            text.contains("\ndhcpmanager_ip_changes_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("\ndhcpmanager_apiserver_ip_changes_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "# HELP dhcpmanager_apiserver_naks Deprecated: renamed to dhcpmanager_naks"
            )
        );
        assert!(
            text.contains("# TYPE dhcpmanager_apiserver_allocation_duration_seconds histogram"),
            "{text}"
        );
    }

    #[test]
    fn without_an_engine_only_the_apis_own_metrics() {
        let text = Metrics::new(None).encode();
        assert!(text.contains("dhcpmanager_apiserver_allocation_duration_seconds"));
        assert!(!text.contains("renewals"), "{text}");
    }
}
