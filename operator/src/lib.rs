
pub mod net;
pub mod dhcp;
