//! The agent's and the command line's error type: the engine's errors, wrapped, plus what
//! Kubernetes and the command line add.

use dhcpmanager_engine as engine;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Engine(#[from] engine::Error),
    #[error("{0}")]
    Usage(&'static str),
    #[error("{0}: no recorded lease to release")]
    NothingToRelease(String),
    #[error("cannot install a signal handler: {0}")]
    Signal(#[source] std::io::Error),
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
    #[error("{flag}: {problem}")]
    Flag { flag: &'static str, problem: String },
    #[error("invalid DhcpAddress {address}: {problem}")]
    InvalidAddress { address: String, problem: String },
    #[error("Service {service}: {problem}")]
    InvalidService { service: String, problem: String },
}

impl Error {
    /// A short stable name for metrics labels (`dhcpmanager_reconcile_errors_total{error=...}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Engine(e) => e.metric_label(),
            Error::Usage(_)
            | Error::NothingToRelease(_)
            | Error::Signal(_)
            | Error::Flag { .. } => "usage",
            Error::Kube { .. } => "kube",
            Error::BadPool { .. } => "bad_pool",
            Error::PoolExhausted(_) => "pool_exhausted",
            Error::Contended(_) => "contended",
            Error::InvalidAddress { .. } => "invalid_address",
            Error::InvalidService { .. } => "invalid_service",
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
