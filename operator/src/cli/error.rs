//! The command line's error type: its own mistakes of use, and the agent's and the engine's
//! errors, wrapped.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Agent(#[from] crate::error::Error),
    #[error(transparent)]
    Engine(#[from] dhcpmanager_engine::Error),
    #[error("{0}")]
    Usage(&'static str),
    #[error("{0}: no recorded lease to release")]
    NothingToRelease(String),
    #[error("cannot install a signal handler: {0}")]
    Signal(#[source] std::io::Error),
}

impl From<dhcpmanager_engine::dhcp::Error> for Error {
    fn from(e: dhcpmanager_engine::dhcp::Error) -> Self {
        Error::Engine(e.into())
    }
}

impl From<dhcpmanager_engine::net::links::LinkError> for Error {
    fn from(e: dhcpmanager_engine::net::links::LinkError) -> Self {
        Error::Engine(e.into())
    }
}
