//! What every handler and middleware shares. A leaf: it names the backend, the configuration and
//! the metrics, and no HTTP module imports anything that imports it back.

use std::sync::Arc;

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
}
