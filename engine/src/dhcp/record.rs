//! The lease record: everything needed to keep using, renew, resume and release one lease. It is
//! what gets persisted (DhcpAddress status, etcd) and what a restarted agent resumes from.

use std::net::Ipv4Addr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::mac::MacAddr;

/// Times are the client's perceived times: with `Timing::scale != 1` they are compressed by the
/// same factor as every other wait, so a record written by a scaled client resumes consistently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRecord {
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain_name: Option<String>,
    pub mac: MacAddr,
    /// Option 61 as sent, lowercase hex (e.g. "ff0a1b...").
    pub client_id: String,
    pub hostname: Option<String>,
    pub server_id: Ipv4Addr,
    /// L2 source of the ACK: the next hop for unicast renewals and releases.
    pub server_mac: Option<MacAddr>,
    /// Option 51 as granted by the server (unscaled).
    pub lease_seconds: u32,
    /// When the REQUEST that earned this lease was first sent (RFC 2131 4.4.1).
    pub obtained_at: DateTime<Utc>,
    pub renew_at: DateTime<Utc>,
    pub rebind_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl LeaseRecord {
    /// The address may still be used: the lease has not expired.
    pub fn is_valid_at(&self, now: DateTime<Utc>) -> bool {
        now < self.expires_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    #[test]
    fn valid_until_expiry_exclusive() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        let record = crate::fixtures::lease_record(now);
        assert!(record.is_valid_at(now));
        assert!(record.is_valid_at(now + TimeDelta::seconds(119)));
        assert!(!record.is_valid_at(now + TimeDelta::seconds(120)));
    }

    #[test]
    fn json_is_camel_case_and_round_trips() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        let record = crate::fixtures::lease_record(now);
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["ip"], "10.0.0.50");
        assert_eq!(json["prefixLen"], 24);
        assert_eq!(json["serverMac"], "02:00:00:00:00:fe");
        assert_eq!(json["leaseSeconds"], 120);
        assert_eq!(json["expiresAt"], "2026-01-01T00:02:00Z");
        assert_eq!(json["domainName"], "lab.example");
        let back: LeaseRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
    }
}
