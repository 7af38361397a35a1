//! dhcpmanager-apiserver: the original dhcpmanager's `/v1` REST API over a pluggable [`Backend`],
//! mirrored into etcd in the original's key layout.

#![forbid(unsafe_code)]

pub mod backend;
pub mod config;
pub mod error;
pub mod etcd_mirror;
pub mod http;
pub mod original_json;

pub use backend::{Backend, BackendError};
pub use config::Config;
pub use dhcpmanager_dhcp_core::MacAddr;
pub use error::Error;
