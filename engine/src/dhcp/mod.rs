//! The DHCP client core: RFC 2131 state machine, message forms and lease records. No sockets, no
//! clock, no global randomness: the runtime injects time, bytes and a seed, and performs actions.

mod client;
mod config;
mod error;
mod event;
mod mac;
mod message;
mod options;
mod record;
mod reply;
mod state;
mod timing;
mod usable;

pub use client::{Client, ReplyMeta};
pub use config::{ClientConfig, ClientIdMode, DEFAULT_PARAMETER_REQUEST_LIST, Timing};
pub use error::Error;
pub use event::{Action, ClientEvent};
pub use mac::MacAddr;
pub use message::{L2Dest, MessageKind, Transmission};
pub use options::client_id_bytes;
pub use record::LeaseRecord;
pub use reply::RejectReason;
pub use state::State;
pub use timing::LeaseTimes;
pub use usable::Unusable;

#[cfg(test)]
mod client_tests;
#[cfg(test)]
mod testkit;
