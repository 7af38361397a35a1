//! The per-macvlan transport of the DHCP client and the links it runs on.
//!
//! `frame` and `bpf` are pure; `packet_socket`, `arp` and `links` are the edges that talk to
//! the kernel, always in the network namespace of the calling thread.

pub mod arp;
pub mod bpf;
pub mod frame;
pub mod links;
pub mod netns;
pub mod packet_socket;

pub use arp::{ProbeTiming, probe};
pub use links::{DEFAULT_LINK_GROUP, LinkError, Links, OwnedLink, link_alias, link_name};
pub use netns::NetNs;
pub use packet_socket::{DhcpSocket, Received};
