//! The per-macvlan transport of the DHCP client and the links it runs on.
//!
//! `frame` and `bpf` are pure; `packet_socket`, `arp` and `links` are the edges that talk to
//! the kernel, always in the network namespace of the calling thread.

// The modules that call into the kernel through libc or register raw descriptors; the rest of
// the engine denies unsafe code.
pub mod announce;
#[allow(unsafe_code)]
pub mod arp;
pub mod bpf;
pub mod frame;
pub mod links;
#[allow(unsafe_code)]
pub mod netns;
pub mod nft;
#[allow(unsafe_code)]
pub mod packet_socket;
#[allow(unsafe_code)]
pub mod parent_socket;
pub mod reply_mark;

pub use arp::{ProbeTiming, probe};
pub use links::{
    AliasOwner, DEFAULT_LINK_GROUP, LinkError, Links, OwnedLink, alias_owner, link_alias, link_name,
};
pub use netns::NetNs;
pub use packet_socket::{DhcpSocket, Received};
pub use parent_socket::{ParentReceived, ParentSocket};
