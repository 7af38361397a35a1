//! The `dhcpmanager-operator` command line: one subcommand per file.

mod error;
pub mod lease;

pub use error::Error;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::agent::AgentArgs;

#[derive(Debug, Parser)]
#[command(
    name = "dhcpmanager-operator",
    version,
    about = "dhcpmanager's node agent and tools"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent: reconcile DhcpAddress objects on this node (a DaemonSet).
    Agent(AgentArgs),
    /// Obtain (and by default release) one DHCP lease on a fresh macvlan: a diagnostic that
    /// exercises exactly the engine the agent runs.
    Lease(lease::LeaseArgs),
    /// Print the CustomResourceDefinitions (YAML) generated from the API types.
    Crd,
}

/// The original configuration: `--config FILE` (must exist) or the default path (may be missing),
/// then the `DHCP_` environment in both spellings.
pub fn load_config(path: Option<&PathBuf>) -> Result<dhcpmanager_engine::config::Config, Error> {
    let source = match path {
        Some(path) => dhcpmanager_engine::config::Source::Explicit(path),
        None => dhcpmanager_engine::config::Source::Default,
    };
    Ok(dhcpmanager_engine::config::Config::load(
        source,
        std::env::vars(),
        &[],
    )?)
}
