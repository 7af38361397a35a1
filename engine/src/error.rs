//! The engine's error type for everything that touches the outside world. The pure DHCP core has
//! its own small error for parsing values ([`crate::dhcp::Error`]).

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
    #[error("address {0:?} is already running")]
    AlreadyRunning(String),
    #[error("a link prepared for {prepared} cannot start {wanted}")]
    PreparedForOther { prepared: String, wanted: String },
    #[error("address {key:?} refused: {refusal}")]
    Capacity {
        key: String,
        refusal: crate::manager::Refusal,
    },
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
    #[error("cannot read configuration file {0}: {1}")]
    ConfigRead(std::path::PathBuf, #[source] std::io::Error),
    #[error("invalid configuration in {0}: {1}")]
    ConfigInvalid(String, String),
    #[error("instance id {0}")]
    InstanceId(String),
    #[error(
        "state-dir {} is in use by {holder}: only one instance may use a state directory \
         (nothing was changed; stop the other instance or give this one its own state-dir)",
        .dir.display()
    )]
    StateDirInUse {
        dir: std::path::PathBuf,
        holder: String,
    },
}

impl Error {
    /// A short stable name for metrics labels (`dhcpmanager_reconcile_errors_total{error=...}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Link(_) => "link",
            Error::Socket { .. } => "socket",
            Error::UnknownAddress(_) => "unknown_address",
            Error::AlreadyRunning(_) | Error::PreparedForOther { .. } => "prepared_link",
            Error::Capacity { .. } => "capacity",
            Error::Stopped => "stopped",
            Error::NoLease { .. } => "no_lease",
            Error::Value(_) => "value",
            Error::StateFile { .. } | Error::StateFormat { .. } => "state_file",
            Error::ConfigRead(..) | Error::ConfigInvalid(..) => "config",
            Error::InstanceId(_) | Error::StateDirInUse { .. } => "instance",
        }
    }
}
