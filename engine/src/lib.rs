//! dhcpmanager's DHCP client engine, free of Kubernetes and HTTP so that both front ends (the
//! agent and the standalone REST API) share it and Cargo enforces the boundary:
//! - [`dhcp`]: the RFC 2131 client state machine and message codec, pure (no I/O, injected clock);
//! - [`net`]: the kernel at the edges: packet sockets, frames, macvlan links over rtnetlink;
//! - [`manager`]: many clients at once: rate limit, renewals, link lifetime, counters;
//! - [`metrics`]: the engine's figures as Prometheus metrics, one set of names for both front ends;
//! - [`state_file`] and [`config`]: a lease record on disk, the original's configuration file;
//! - [`instance`] and [`state_dir`]: who owns a link, and one instance per state directory.

// Unsafe code only where the kernel is: the socket and namespace modules of `net` allow it, and
// each block there says why it is sound.
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod config;
pub mod dhcp;
pub mod error;
#[cfg(any(test, feature = "test-support"))]
pub mod fixtures;
pub mod instance;
pub mod manager;
pub mod metrics;
pub mod net;
pub mod state_dir;
pub mod state_file;

pub use error::Error;
