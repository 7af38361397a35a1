//! The errors of the DHCP core: only value parsing can fail here; the state machine itself reports
//! problems as events, never as errors.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    #[error("invalid MAC address {input:?}: {problem}")]
    InvalidMac {
        input: String,
        problem: &'static str,
    },
    #[error("invalid hex string {input:?}: {problem}")]
    InvalidHex {
        input: String,
        problem: &'static str,
    },
}
