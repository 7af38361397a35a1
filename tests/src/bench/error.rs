//! The one error type of the benchmark binaries.

use crate::bench::raw_dora::RawDoraError;
use crate::lab_error::LabError;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error(transparent)]
    Engine(#[from] dhcpmanager_engine::Error),
    #[error(transparent)]
    Link(#[from] dhcpmanager_engine::net::LinkError),
    #[error(transparent)]
    Raw(#[from] RawDoraError),
    #[error("kube: {0}")]
    Kube(#[from] kube::Error),
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    NotReady(String),
    #[error("{0}")]
    Protocol(String),
    #[error("bad arguments: the usage of every benchmark is in the header of scripts/bench.sh")]
    Usage,
}
