//! dhcpmanager's node side: the DHCP client engine (`dhcp`, pure), its edges (`net`), the lease
//! manager, the Kubernetes agent and the command line.

pub mod agent;
pub mod cli;
pub mod config;
pub mod dhcp;
pub mod error;
#[cfg(test)]
mod fixtures;
pub mod kube_client;
pub mod manager;
pub mod net;
pub mod state_file;
