//! The original's configuration file: shared with the agent, so it lives in the operator crate.

pub use dhcpmanager_engine::config::*;
