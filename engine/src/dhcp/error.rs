//! The errors of the DHCP core: only value parsing can fail here; the state machine itself reports
//! problems as events, never as errors.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    #[error(transparent)]
    InvalidMac(#[from] dhcpmanager_dhcp_core::MacError),
    #[error("invalid hex string {input:?}: {problem}")]
    InvalidHex {
        input: String,
        problem: &'static str,
    },
}
