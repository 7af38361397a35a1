//! The crate's one error type for start-up and the edges (configuration, etcd, serving).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read configuration file {0}: {1}")]
    ConfigRead(PathBuf, #[source] std::io::Error),
    #[error("invalid configuration in {0}: {1}")]
    ConfigInvalid(String, String),
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("cannot serve HTTP: {0}")]
    Serve(#[source] std::io::Error),
    #[error("no backend: {0}")]
    NoBackend(String),
    #[error("standalone backend: {0}")]
    Standalone(#[from] crate::backend::standalone::StandaloneError),
}
