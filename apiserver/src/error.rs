//! The crate's one error type for start-up and the edges (configuration, etcd, serving).

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration errors (and other failures of the shared operator crate).
    #[error(transparent)]
    Engine(#[from] dhcpmanager_engine::Error),
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("cannot serve HTTP: {0}")]
    Serve(#[source] std::io::Error),
    #[error("no backend: {0}")]
    NoBackend(String),
    #[error("standalone backend: {0}")]
    Standalone(#[from] crate::backend::standalone::StandaloneError),
}
