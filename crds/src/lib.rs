//! The Kubernetes API of dhcpmanager: the `DhcpAddress` and `MacPool` custom resources
//! (group `dhcpmanager.io`, version `v1alpha1`), the CRDs generated from them, and the small
//! pure helpers the operator and the apiserver share.

mod dhcp_address;
mod dhcp_address_status;
mod error;
mod generate;
mod mac;
mod mac_pool;
pub mod patterns;

pub use dhcp_address::{
    ClientIdMode, ClientIdSpec, DhcpAddress, DhcpAddressSpec, DhcpOptionSpec,
    RESERVED_OPTION_CODES, hostname_for_service,
};
pub use dhcp_address_status::{DhcpAddressStatus, LeaseRecordStatus, Phase, condition_type};
pub use error::Error;
pub use generate::{CRD_YAML_PATH, REGENERATE_COMMAND, crds, crds_yaml};
pub use mac::MacAddr;
pub use mac_pool::{MAX_POOL_SIZE, MacAllocation, MacPool, MacPoolSpec, MacPoolStatus, MacRange};

/// `group/version` of every resource in this crate.
pub const API_VERSION: &str = "dhcpmanager.io/v1alpha1";
