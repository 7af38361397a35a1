//! The `dhcpmanager-operator` command line: one subcommand per file.

pub mod lease;

use clap::{Parser, Subcommand};

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
    /// Obtain (and by default release) one DHCP lease on a fresh macvlan: a diagnostic that
    /// exercises exactly the engine the agent runs.
    Lease(lease::LeaseArgs),
}
