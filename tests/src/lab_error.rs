//! The one error type of the DHCP lab harness (`lab`, `capture`, `netns`, `udhcpc`, `probe`).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("could not run {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{command} failed ({status}):\n{stderr}")]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("lease database line is not a lease ({line}): {source}")]
    LeaseLine {
        line: String,
        source: serde_json::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a pcap file this reader knows: {0}")]
    Pcap(String),
    #[error("network namespace {ns}: {source}")]
    Netns { ns: String, source: std::io::Error },
    #[error("socket in namespace {ns}: {source}")]
    Socket { ns: String, source: std::io::Error },
    #[error("udhcpc got no lease on {iface}; its output:\n{output}")]
    NoLease { iface: String, output: String },
}
