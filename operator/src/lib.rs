//! dhcpmanager's node side: the Kubernetes agent and the command line, on the engine
//! (`dhcpmanager-engine`).

#![forbid(unsafe_code)]

pub mod agent;
pub mod cli;
pub mod error;
pub mod service;
