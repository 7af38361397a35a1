//! What a client is configured with: identity, options to send, and its clock parameters.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::mac::MacAddr;

/// How option 61 (client identifier) is built.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ClientIdMode {
    /// RFC 4361: type 255, IAID (last 4 bytes of the MAC), DUID-LL of the MAC. Stable across
    /// restarts because it is derived from the pool MAC alone.
    #[default]
    Stable,
    /// The classic hardware-type 1 form: 0x01 followed by the MAC.
    Mac,
    /// Exactly these bytes (written as hex in JSON).
    Custom(#[serde(with = "hex_bytes")] Vec<u8>),
}

/// The client's clock parameters. Every duration the client waits is divided by `scale`, so tests
/// (and the lab) can run RFC behaviour faster without changing the protocol logic.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    /// Divides every wait, including T1/T2/expiry as the client perceives them. 1.0 = RFC time.
    pub scale: f64,
    /// First retransmission delay in SELECTING/REQUESTING/REBOOTING (RFC 2131 4.1: 4 s).
    pub retransmit_base: Duration,
    /// Cap of the doubling retransmission delay (RFC 2131 4.1: 64 s).
    pub retransmit_max: Duration,
    /// Lower bound of the retransmission interval in RENEWING/REBINDING (RFC 2131 4.4.5: 60 s).
    pub renew_retry_min: Duration,
    /// REQUESTING gives up and returns to INIT after this many REQUESTs went unanswered.
    pub request_attempts: u32,
    /// REBOOTING keeps the recorded lease after this many REQUESTs went unanswered.
    pub init_reboot_attempts: u32,
    /// Wait after a DHCPDECLINE before DISCOVER again (RFC 2131 3.1.5: at least 10 s).
    pub decline_backoff: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            scale: 1.0,
            retransmit_base: Duration::from_secs(4),
            retransmit_max: Duration::from_secs(64),
            renew_retry_min: Duration::from_secs(60),
            request_attempts: 4,
            init_reboot_attempts: 3,
            decline_backoff: Duration::from_secs(10),
        }
    }
}

/// Option 55 when nothing else is configured: mask, routers, DNS, domain, lease, server id, T1, T2.
pub const DEFAULT_PARAMETER_REQUEST_LIST: [u8; 8] = [1, 3, 6, 15, 51, 54, 58, 59];

#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// chaddr and the source MAC of the macvlan.
    pub mac: MacAddr,
    /// Option 12.
    pub hostname: Option<String>,
    /// Option 81 with flag S=1 (the server updates the A record).
    pub fqdn: Option<String>,
    /// Option 61.
    pub client_id: ClientIdMode,
    /// Option 60.
    pub vendor_class: Option<String>,
    /// Option 55.
    pub parameter_request_list: Vec<u8>,
    /// Sent verbatim in DISCOVER and REQUEST; codes the protocol itself owns (0, 50, 52, 53, 54,
    /// 61, 255) are ignored so a configuration cannot break the exchange.
    pub extra_options: Vec<(u8, Vec<u8>)>,
    /// Option 50 of the first DISCOVER when no address was held before (a user's wish, e.g. a
    /// re-created Service's old address); the address last held always takes precedence.
    pub requested_ip: Option<std::net::Ipv4Addr>,
    /// Ask servers to broadcast replies: needed whenever the offered IP is not on the link.
    pub broadcast_flag: bool,
    /// Whether the leased IP is configured on the link; chooses the RENEW/REBIND/RELEASE forms
    /// (see the table in `message.rs`).
    pub ip_assigned: bool,
    /// ARP-probe an offered address before using it (RFC 2131 4.4.1, RFC 5227).
    pub arp_probe: bool,
    pub timing: Timing,
}

impl ClientConfig {
    /// A configuration with the defaults the brief and the measured lab facts call for.
    pub fn new(mac: MacAddr) -> Self {
        ClientConfig {
            mac,
            hostname: None,
            fqdn: None,
            client_id: ClientIdMode::default(),
            vendor_class: None,
            parameter_request_list: DEFAULT_PARAMETER_REQUEST_LIST.to_vec(),
            extra_options: Vec::new(),
            requested_ip: None,
            broadcast_flag: true,
            ip_assigned: false,
            arp_probe: false,
            timing: Timing::default(),
        }
    }
}

/// Serde adapter: bytes as a lowercase hex string.
pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_rfc_2131() {
        let cfg = ClientConfig::new(MacAddr([2, 0, 0, 0, 0, 1]));
        assert_eq!(
            cfg.parameter_request_list,
            vec![1, 3, 6, 15, 51, 54, 58, 59]
        );
        assert!(cfg.broadcast_flag && !cfg.ip_assigned && !cfg.arp_probe);
        assert_eq!(cfg.client_id, ClientIdMode::Stable);
        let t = cfg.timing;
        assert_eq!(t.scale, 1.0);
        assert_eq!(t.retransmit_base, Duration::from_secs(4));
        assert_eq!(t.retransmit_max, Duration::from_secs(64));
        assert_eq!(t.renew_retry_min, Duration::from_secs(60));
        assert_eq!((t.request_attempts, t.init_reboot_attempts), (4, 3));
        assert_eq!(t.decline_backoff, Duration::from_secs(10));
    }

    #[test]
    fn client_id_mode_serializes_readably() {
        assert_eq!(
            serde_json::to_string(&ClientIdMode::Stable).unwrap(),
            "\"stable\""
        );
        assert_eq!(
            serde_json::to_string(&ClientIdMode::Mac).unwrap(),
            "\"mac\""
        );
        let custom = ClientIdMode::Custom(vec![0x00, 0xab, 0x10]);
        let json = serde_json::to_string(&custom).unwrap();
        assert_eq!(json, r#"{"custom":"00ab10"}"#);
        assert_eq!(serde_json::from_str::<ClientIdMode>(&json).unwrap(), custom);
        assert!(serde_json::from_str::<ClientIdMode>(r#"{"custom":"0g"}"#).is_err());
    }
}
