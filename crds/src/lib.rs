//! The Kubernetes API of dhcpmanager: the `DhcpAddress` and `MacPool` custom resources
//! (group `dhcpmanager.io`, version `v1alpha1`), the CRDs generated from them, and the small
//! pure helpers the operator and the apiserver share.

// Only a test reads socket options through libc (crate::client's tests allow it there).
#![deny(unsafe_code)]

/// The Kubernetes client every dhcpmanager process uses (kube's layers, TCP_NODELAY).
pub mod client;
mod dhcp_address;
mod dhcp_address_status;
mod error;
mod generate;
mod mac_pool;
pub mod patterns;
mod time;

pub use dhcp_address::{
    ClientIdMode, ClientIdSpec, DhcpAddress, DhcpAddressSpec, DhcpOptionSpec, check_service_ref,
    hostname_for_service,
};
pub use dhcp_address_status::{DhcpAddressStatus, LeaseRecordStatus, Phase, condition_type};
pub use dhcpmanager_dhcp_core::{MacAddr, MacError, RESERVED_OPTION_CODES};
pub use error::Error;
pub use generate::{CRD_YAML_PATH, REGENERATE_COMMAND, crds, crds_yaml};
pub use mac_pool::{MAX_POOL_SIZE, MacAllocation, MacPool, MacPoolSpec, MacPoolStatus, MacRange};
pub use time::{from_time, to_time};

/// `group/version` of every resource in this crate.
pub const API_VERSION: &str = "dhcpmanager.io/v1alpha1";
