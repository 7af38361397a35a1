use thiserror::Error;

/// Everything that can go wrong turning API strings into values: MACs, MAC ranges and pools,
/// phase names.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    #[error(transparent)]
    InvalidMac(#[from] dhcpmanager_dhcp_core::MacError),

    #[error(
        "MAC range starting at {start} must be unicast (multicast bit clear in the first octet)"
    )]
    MulticastRangeStart { start: String },

    #[error(
        "MAC range starting at {start} must be locally administered (bit 0x02 set in the first octet)"
    )]
    GloballyAdministeredRangeStart { start: String },

    #[error("MAC range starting at {start} has count {count}; it must be between 1 and {max}")]
    InvalidRangeCount { start: String, count: u32, max: u32 },

    #[error(
        "MAC range starting at {start} with count {count} leaves the first three octets; \
         keep a range inside one 24-bit block"
    )]
    RangeCrossesPrefix { start: String, count: u32 },

    #[error("MAC pool expands to more than {max} addresses")]
    PoolTooLarge { max: usize },

    #[error("unknown phase {0:?}")]
    UnknownPhase(String),
}
