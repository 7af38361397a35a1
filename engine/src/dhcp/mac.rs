//! The MAC address of chaddr, client ids and L2 destinations: the one type the API shares
//! (`dhcpmanager-dhcp-core`), named here so the core's modules import it from one place.

pub use dhcpmanager_dhcp_core::MacAddr;
