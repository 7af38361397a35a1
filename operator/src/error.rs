//! The operator crate's error type for everything that touches the outside world. The pure DHCP
//! core has its own small error for parsing values ([`crate::dhcp::Error`]).

use std::time::Duration;

use crate::dhcp::State;
use crate::net::links::LinkError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("cannot open the DHCP socket on {interface}: {source}")]
    Socket {
        interface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no address {0:?} is running")]
    UnknownAddress(String),
    #[error("the address was stopped before it was bound")]
    Stopped,
    #[error("no lease after {}: the client is still {state}{}", humantime::format_duration(*.waited), .last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    NoLease {
        waited: Duration,
        state: State,
        last_error: Option<String>,
    },
    #[error(transparent)]
    Value(#[from] crate::dhcp::Error),
    #[error("{path}: {source}")]
    StateFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a lease record: {source}")]
    StateFormat {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    Usage(&'static str),
    #[error("{0}: no recorded lease to release")]
    NothingToRelease(String),
    #[error("cannot install a signal handler: {0}")]
    Signal(#[source] std::io::Error),
}
