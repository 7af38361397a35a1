//! What the agent reports about a `DhcpAddress`, including the lease record it resumes from.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use crate::{Error, patterns};

/// Condition types the agent sets on a `DhcpAddress`.
pub mod condition_type {
    /// The address is usable: a lease is held and the macvlan exists.
    pub const READY: &str = "Ready";
    /// A lease is held (possibly while the link is being rebuilt).
    pub const LEASED: &str = "Leased";
    /// A MAC was allocated in a MacPool for this address.
    pub const MAC_ALLOCATED: &str = "MacAllocated";
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DhcpAddressStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// The leased address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 32))]
    pub prefix_length: Option<u8>,

    /// The first router offered (option 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,

    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub dns: Vec<Ipv4Addr>,

    /// The MAC the lease is held with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = patterns::MAC), length(max = 17))]
    pub mac: Option<String>,

    /// The client identifier sent (option 61 payload in hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = patterns::HEX_BYTES), length(max = 510))]
    pub client_id: Option<String>,

    /// The macvlan's name on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    pub interface: Option<String>,

    /// The node whose agent holds the lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub node: Option<String>,

    /// The DHCP server identifier (option 54).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<Ipv4Addr>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub obtained_at: Option<Time>,

    /// T1: when the agent starts renewing with the server that granted the lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_at: Option<Time>,

    /// T2: when the agent starts rebinding with any server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebind_at: Option<Time>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub last_error: Option<String>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Everything a new agent needs to take the lease over without a DISCOVER.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseRecordStatus>,
}

/// Where an address is in its life, as the DHCP client state machine sees it.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash,
)]
pub enum Phase {
    /// Not bound yet: waiting for an agent, a MAC, a link or the server's answer.
    #[default]
    Pending,
    /// Holding a valid lease, before T1.
    Bound,
    /// Past T1: unicasting REQUESTs to the server that granted the lease.
    Renewing,
    /// Past T2: broadcasting REQUESTs to any server.
    Rebinding,
    /// The lease ran out; the address must not be used.
    Expired,
    /// The object is being deleted: DHCPRELEASE, link and MAC clean-up.
    Releasing,
    /// Cannot proceed without a change (see `lastError` and the conditions).
    Failed,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::Pending,
        Phase::Bound,
        Phase::Renewing,
        Phase::Rebinding,
        Phase::Expired,
        Phase::Releasing,
        Phase::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Bound => "Bound",
            Phase::Renewing => "Renewing",
            Phase::Rebinding => "Rebinding",
            Phase::Expired => "Expired",
            Phase::Releasing => "Releasing",
            Phase::Failed => "Failed",
        }
    }

    /// The address may be used: the lease is valid (bound, or being extended before expiry).
    pub fn holds_address(self) -> bool {
        matches!(self, Phase::Bound | Phase::Renewing | Phase::Rebinding)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The phase names are part of the API; parsing is exact (case-sensitive).
impl FromStr for Phase {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|phase| phase.as_str() == text)
            .ok_or_else(|| Error::UnknownPhase(text.to_string()))
    }
}

/// A held lease, as stored in status: the operator converts its own lease type to and from
/// this one. Resuming from it means INIT-REBOOT (or RENEWING before T2) for `ip` with the same
/// `mac` and `clientId`, never a new DISCOVER while `expiresAt` is in the future.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRecordStatus {
    pub ip: Ipv4Addr,

    #[schemars(range(max = 32))]
    pub prefix_length: u8,

    /// Routers offered (option 3), in the server's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub routers: Vec<Ipv4Addr>,

    /// DNS servers offered (option 6), in the server's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub dns: Vec<Ipv4Addr>,

    /// Domain name offered (option 15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub domain_name: Option<String>,

    #[schemars(regex(pattern = patterns::MAC), length(max = 17))]
    pub mac: String,

    /// Option 61 payload in hex, exactly as sent.
    #[schemars(regex(pattern = patterns::HEX_BYTES), length(max = 510))]
    pub client_id: String,

    /// Option 54 of the ACK: where RENEWING unicasts go.
    pub server_id: Ipv4Addr,

    /// The server's Ethernet address, when it was seen (lets a renewal skip ARP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = patterns::MAC), length(max = 17))]
    pub server_mac: Option<String>,

    /// Option 51 of the ACK.
    pub lease_seconds: u32,

    pub obtained_at: Time,
    pub renew_at: Time,
    pub rebind_at: Time,
    pub expires_at: Time,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_display_and_parse_round_trip() {
        for phase in Phase::ALL {
            assert_eq!(phase.to_string().parse::<Phase>(), Ok(phase));
        }
        assert_eq!(
            "bound".parse::<Phase>(),
            Err(Error::UnknownPhase("bound".into()))
        );
    }

    #[test]
    fn phase_display_matches_its_serde_name() {
        for phase in Phase::ALL {
            assert_eq!(serde_json::to_value(phase).unwrap(), phase.to_string());
        }
    }

    #[test]
    fn only_lease_holding_phases_hold_the_address() {
        let holding: Vec<Phase> = Phase::ALL
            .into_iter()
            .filter(|p| p.holds_address())
            .collect();
        assert_eq!(holding, [Phase::Bound, Phase::Renewing, Phase::Rebinding]);
    }

    #[test]
    fn an_empty_status_serialises_to_an_empty_object() {
        assert_eq!(
            serde_json::to_string(&DhcpAddressStatus::default()).unwrap(),
            "{}"
        );
    }
}
