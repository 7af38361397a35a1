//! The DHCP values both sides of dhcpmanager speak: the Kubernetes API types (`dhcpmanager-crds`)
//! and the engine (`dhcpmanager-engine`). One [`MacAddr`] and one list of the option codes a user
//! may not set ([`RESERVED_OPTION_CODES`]), so that what admission refuses and what the engine
//! drops cannot drift apart. Pure values: no I/O, no Kubernetes, no unsafe code.

#![forbid(unsafe_code)]

mod mac;
mod options;

pub use mac::{MacAddr, MacError};
pub use options::{END, PAD, RESERVED_OPTION_CODES, is_user_settable};
