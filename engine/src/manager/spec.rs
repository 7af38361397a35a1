//! What the manager is asked to hold, and what it reports back about each address.

use serde::Serialize;

use crate::dhcp::{ClientConfig, LeaseRecord, State};

/// One address the manager should hold a lease for.
#[derive(Debug, Clone)]
pub struct AddressSpec {
    /// Stable identity of the address ("namespace/name" of a DhcpAddress, or an allocation id).
    /// The link name and alias derive from it, so the same key always maps to the same link.
    pub key: String,
    /// Parent interface of the macvlan.
    pub parent: String,
    /// MAC, hostname, options, message forms and timing of the DHCP client.
    pub client: ClientConfig,
}

/// What the manager currently knows about one address.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AddressStatus {
    pub state: State,
    pub record: Option<LeaseRecord>,
    pub interface: String,
    pub ifindex: u32,
    /// The last transport or link error; cleared by the next successful exchange.
    pub last_error: Option<String>,
    /// Set once the client has stopped for good (released, or stopped by the manager).
    pub finished: bool,
    /// The address's link vanished (`ip link del`, a parent deleted or re-created) and is not
    /// back yet: nothing can be sent or received, whatever `state` says. The address task
    /// re-creates it (same name, MAC and owner) and then re-confirms the lease.
    pub link_missing: bool,
}

/// A client event tagged with the address it belongs to.
#[derive(Debug, Clone)]
pub struct KeyedEvent {
    pub key: String,
    pub event: crate::dhcp::ClientEvent,
}
