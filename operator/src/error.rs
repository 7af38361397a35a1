//! The agent's error type (its DhcpAddress reconciler and its Service controller): the engine's
//! errors, wrapped, plus what Kubernetes, MAC pools and ownership add. The command line's own
//! errors are `cli::Error`.

use dhcpmanager_engine as engine;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Engine(#[from] engine::Error),
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("MacPool {pool}: {problem}")]
    BadPool { pool: String, problem: String },
    #[error("MacPool {0} has no free MAC")]
    PoolExhausted(String),
    #[error("{0} kept changing under us; will retry")]
    Contended(String),
    /// A flag whose value the agent could not use at start (`--link-netns`, `--metrics-addr`).
    #[error("{flag}: {problem}")]
    Flag { flag: &'static str, problem: String },
    /// Something in the object's own spec: retried only once the object changes.
    #[error("invalid DhcpAddress {address}: {problem}")]
    InvalidAddress { address: String, problem: String },
    #[error("Service {service}: {problem}")]
    InvalidService { service: String, problem: String },
    /// The MacPool the address names does not exist (yet): retried, since creating the pool is
    /// no change of the address.
    #[error("invalid DhcpAddress {address}: MacPool {pool} does not exist")]
    MissingPool { address: String, pool: String },
}

impl Error {
    /// A short stable name for metrics labels (`dhcpmanager_reconcile_errors_total{error=...}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Engine(e) => e.metric_label(),
            Error::Flag { .. } => "usage",
            Error::Kube { .. } => "kube",
            Error::BadPool { .. } => "bad_pool",
            Error::PoolExhausted(_) => "pool_exhausted",
            Error::Contended(_) => "contended",
            Error::InvalidService { .. } => "invalid_service",
            // The label it had before it was told apart from InvalidAddress.
            Error::InvalidAddress { .. } | Error::MissingPool { .. } => "invalid_address",
        }
    }
}

impl From<dhcpmanager_engine::net::links::LinkError> for Error {
    fn from(e: dhcpmanager_engine::net::links::LinkError) -> Self {
        Error::Engine(e.into())
    }
}

impl From<dhcpmanager_engine::dhcp::Error> for Error {
    fn from(e: dhcpmanager_engine::dhcp::Error) -> Self {
        Error::Engine(e.into())
    }
}
