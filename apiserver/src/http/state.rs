//! What every handler and middleware shares. A leaf: it names the backend, the configuration and
//! the metrics, and no HTTP module imports anything that imports it back.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dhcpmanager_engine::manager::{Priority, TokenBucket};

use crate::backend::Backend;
use crate::config::Config;
use crate::http::metrics::Metrics;

pub struct AppState {
    pub backend: Arc<dyn Backend>,
    pub config: Arc<Config>,
    /// Also registered on its own as app data, for the request-counting middleware.
    pub metrics: Arc<Metrics>,
    /// The OpenAPI document, rendered once for this configuration.
    pub openapi: String,
    /// `allocate-rate`/`allocate-burst`; `None`: no limit.
    pub allocations: Option<Mutex<TokenBucket>>,
}

impl AppState {
    /// The bucket `config` asks for (`allocate-rate = 0`: none).
    pub fn allocation_limit(config: &Config) -> Option<Mutex<TokenBucket>> {
        (config.allocate_rate > 0).then(|| {
            Mutex::new(TokenBucket::new(
                f64::from(config.allocate_rate),
                config.allocate_burst,
                tokio::time::Instant::now(),
            ))
        })
    }

    /// Takes one allocation from the limit, or says how long until the next may start.
    pub fn take_allocation(&self) -> Result<(), Duration> {
        let Some(bucket) = &self.allocations else {
            return Ok(());
        };
        let mut bucket = bucket.lock().unwrap_or_else(|p| p.into_inner());
        // Held: the whole burst is for allocations (no reserve, unlike DHCP transmissions).
        bucket.try_take(tokio::time::Instant::now(), Priority::Held)
    }
}
