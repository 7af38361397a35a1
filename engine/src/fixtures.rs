//! Values shared by the unit tests of the edges and of the agent (the DHCP core keeps its own).
//! Built for other crates only with the `test-support` feature.

use std::net::Ipv4Addr;

use chrono::{DateTime, TimeDelta, Utc};

use crate::dhcp::{LeaseRecord, MacAddr};

/// A 120 s lease obtained at `now` (T1 60 s, T2 105 s).
pub fn lease_record(now: DateTime<Utc>) -> LeaseRecord {
    LeaseRecord {
        ip: Ipv4Addr::new(10, 0, 0, 50),
        prefix_len: 24,
        routers: vec![Ipv4Addr::new(10, 0, 0, 1)],
        dns: vec![Ipv4Addr::new(10, 0, 0, 2)],
        domain_name: Some("lab.example".into()),
        mac: MacAddr([2, 0, 0, 0, 0, 1]),
        client_id: "ff0000000100030001020000000001".into(),
        hostname: Some("web.default".into()),
        server_id: Ipv4Addr::new(10, 0, 0, 1),
        server_mac: Some(MacAddr([2, 0, 0, 0, 0, 0xfe])),
        lease_seconds: 120,
        obtained_at: now,
        renew_at: now + TimeDelta::seconds(60),
        rebind_at: now + TimeDelta::seconds(105),
        expires_at: now + TimeDelta::seconds(120),
    }
}
