//! The original's JSON shape of an allocation (Go's encoding of its `Allocation` struct with a
//! go-dhclient `Lease`), used by `GET /v1/status` and the etcd mirror's `allocations/<uuid>` values.

use std::net::Ipv4Addr;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::backend::{Allocation, AllocationState, LeaseInfo};

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GoAllocation {
    pub interface: GoInterface,
    #[serde(rename = "ID")]
    pub id: String,
    pub lease: Option<GoLease>,
    pub hostname: String,
    pub state: u8,
    /// Not in the original: present (true) only for an allocation whose answer may not have
    /// reached its requester (see docs/apiserver.md); absent otherwise, so the shape is unchanged.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unconfirmed: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GoInterface {
    pub index: u32,
    #[serde(rename = "MTU")]
    pub mtu: u32,
    pub name: String,
    pub hardware_addr: String,
    pub flags: u32,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GoLease {
    #[serde(rename = "ServerID")]
    pub server_id: String,
    pub fixed_address: String,
    /// net.IPMask is a byte slice: Go writes it base64-encoded.
    pub netmask: Option<String>,
    pub next_server: String,
    pub broadcast: String,
    pub router: Option<Vec<String>>,
    #[serde(rename = "DNS")]
    pub dns: Option<Vec<String>>,
    pub time_server: Option<Vec<String>>,
    pub domain_name: String,
    #[serde(rename = "MTU")]
    pub mtu: u16,
    pub other_options: Option<Vec<()>>,
    pub bound: String,
    pub renew: String,
    pub rebind: String,
    pub expire: String,
}

impl From<&Allocation> for GoAllocation {
    fn from(allocation: &Allocation) -> Self {
        GoAllocation {
            interface: GoInterface {
                index: allocation.interface.index,
                mtu: allocation.interface.mtu,
                name: allocation.interface.name.clone(),
                hardware_addr: allocation.mac.map(|m| m.to_string()).unwrap_or_default(),
                flags: allocation.interface.flags,
            },
            id: allocation.id.clone(),
            lease: match (allocation.ip, &allocation.lease) {
                (Some(ip), Some(lease)) => Some(go_lease(ip, lease)),
                _ => None,
            },
            hostname: allocation.hostname.clone(),
            state: go_state(allocation.state),
            unconfirmed: allocation.unconfirmed,
        }
    }
}

/// The original's numbering: 0 unbound, 1 bound, (2 stale, never produced), 3 stopped.
pub fn go_state(state: AllocationState) -> u8 {
    match state {
        AllocationState::Pending => 0,
        AllocationState::Bound => 1,
        AllocationState::Stopped => 3,
    }
}

fn go_lease(ip: Ipv4Addr, lease: &LeaseInfo) -> GoLease {
    // Go encodes a nil slice as null and an empty one as []; go-dhclient left absent options nil.
    let ips = |list: &[Ipv4Addr]| {
        (!list.is_empty()).then(|| list.iter().map(ToString::to_string).collect())
    };
    GoLease {
        server_id: lease.server_id.to_string(),
        fixed_address: ip.to_string(),
        netmask: lease.subnet_mask.map(|mask| base64_4(mask.octets())),
        next_server: String::new(),
        broadcast: String::new(),
        router: ips(&lease.routers),
        dns: ips(&lease.dns_servers),
        time_server: None,
        domain_name: lease.domain_name.clone().unwrap_or_default(),
        mtu: 0,
        other_options: None,
        bound: go_time(lease.bound_at),
        renew: go_time(lease.renew_at),
        rebind: go_time(lease.rebind_at),
        expire: go_time(lease.expires_at),
    }
}

/// Go's time.RFC3339Nano: fractional seconds with trailing zeros removed.
pub fn go_time(at: DateTime<Utc>) -> String {
    let whole = at.format("%Y-%m-%dT%H:%M:%S").to_string();
    let fraction = format!("{:09}", at.timestamp_subsec_nanos());
    let fraction = fraction.trim_end_matches('0');
    if fraction.is_empty() {
        format!("{whole}Z")
    } else {
        format!("{whole}.{fraction}Z")
    }
}

fn base64_4(bytes: [u8; 4]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(8);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MacAddr;
    use crate::backend::InterfaceInfo;
    use chrono::TimeZone;

    #[test]
    fn netmask_is_base64_like_go() {
        assert_eq!(base64_4([255, 255, 255, 0]), "////AA==");
        assert_eq!(base64_4([255, 255, 0, 0]), "//8AAA==");
    }

    #[test]
    fn times_are_rfc3339nano() {
        let at = Utc.with_ymd_and_hms(2018, 6, 1, 12, 0, 5).unwrap();
        assert_eq!(go_time(at), "2018-06-01T12:00:05Z");
        let at = at + chrono::Duration::milliseconds(250);
        assert_eq!(go_time(at), "2018-06-01T12:00:05.25Z");
    }

    #[test]
    fn bound_allocation_has_the_original_field_order_and_names() {
        let at = Utc.with_ymd_and_hms(2018, 6, 1, 12, 0, 0).unwrap();
        let allocation = Allocation {
            id: "d24b92f1-2e40-4c2d-b074-1c438ae31e78".into(),
            service: "default/web".into(),
            hostname: "web.default".into(),
            ip: Some(Ipv4Addr::new(192, 168, 1, 100)),
            mac: Some(MacAddr([0x56, 0x6a, 0xe2, 0x0b, 0x01, 0x8d])),
            interface: InterfaceInfo {
                name: "dm1".into(),
                index: 7,
                mtu: 1500,
                flags: 19,
            },
            state: AllocationState::Bound,
            lease: Some(LeaseInfo {
                server_id: Ipv4Addr::new(192, 168, 1, 1),
                subnet_mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
                routers: vec![Ipv4Addr::new(192, 168, 1, 1)],
                dns_servers: vec![],
                domain_name: None,
                bound_at: at,
                renew_at: at + chrono::Duration::seconds(1800),
                rebind_at: at + chrono::Duration::seconds(3150),
                expires_at: at + chrono::Duration::seconds(3600),
            }),
            unconfirmed: false,
        };
        let json = serde_json::to_string(&GoAllocation::from(&allocation)).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"Interface":{"Index":7,"MTU":1500,"Name":"dm1","HardwareAddr":"56:6a:e2:0b:01:8d","Flags":19},"#,
                r#""ID":"d24b92f1-2e40-4c2d-b074-1c438ae31e78","#,
                r#""Lease":{"ServerID":"192.168.1.1","FixedAddress":"192.168.1.100","Netmask":"////AA==","#,
                r#""NextServer":"","Broadcast":"","Router":["192.168.1.1"],"DNS":null,"TimeServer":null,"#,
                r#""DomainName":"","MTU":0,"OtherOptions":null,"Bound":"2018-06-01T12:00:00Z","#,
                r#""Renew":"2018-06-01T12:30:00Z","Rebind":"2018-06-01T12:52:30Z","Expire":"2018-06-01T13:00:00Z"},"#,
                r#""Hostname":"web.default","State":1}"#
            )
        );
    }
}
