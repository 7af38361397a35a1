//! Which Kubernetes Events an address's DHCP client events become: a pure mapping, tested here;
//! the follower hands the result to the [`EventWriter`](super::event_writer::EventWriter).

use dhcpmanager_engine::dhcp::ClientEvent;
use kube::runtime::events::{Event, EventType};

/// One Event to publish on a `DhcpAddress` (kube's `Event` compares and prints nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub type_: EventType,
    pub reason: &'static str,
    pub note: String,
}

impl Notice {
    pub fn into_event(self) -> Event {
        Event {
            type_: self.type_,
            reason: self.reason.into(),
            note: Some(self.note),
            action: "Lease".into(),
            secondary: None,
        }
    }
}

/// The Event users care about for `event`, if any: quiet renewals, state changes and rejected
/// replies are not Events (the metrics count them).
pub fn notice_for(event: &ClientEvent) -> Option<Notice> {
    let (type_, reason, note) = match event {
        ClientEvent::Bound {
            record,
            renewal: false,
            ..
        } => (
            EventType::Normal,
            "Bound",
            format!(
                "leased {} from {} until {}",
                record.ip, record.server_id, record.expires_at
            ),
        ),
        ClientEvent::Bound {
            record,
            renewal: true,
            after_failures,
        } => {
            if *after_failures == 0 {
                return None;
            }
            (
                EventType::Normal,
                "Renewed",
                format!(
                    "{} renewed after {after_failures} unanswered attempts; valid until {}",
                    record.ip, record.expires_at
                ),
            )
        }
        ClientEvent::Nak {
            server,
            message,
            state,
        } => (
            EventType::Warning,
            "Nak",
            format!(
                "server {server} refused the address while {state}: {}",
                message.as_deref().unwrap_or("no message")
            ),
        ),
        ClientEvent::IpChanged { old, new } => (
            EventType::Warning,
            "IpChanged",
            format!("the address changed from {old} to {new}"),
        ),
        ClientEvent::Expired { ip } => (
            EventType::Warning,
            "Expired",
            format!("the lease of {ip} ran out; looking for a new one"),
        ),
        ClientEvent::Released { ip } => (
            EventType::Normal,
            "Released",
            format!("{ip} released to the DHCP server"),
        ),
        ClientEvent::Declined { ip } => (
            EventType::Warning,
            "Declined",
            format!("{ip} is in use on the network (ARP); declined"),
        ),
        ClientEvent::GaveUp { ip } => (
            EventType::Warning,
            "ServerSilent",
            format!("no answer to INIT-REBOOT; keeping the recorded lease of {ip}"),
        ),
        ClientEvent::Rejected { .. } | ClientEvent::StateChanged { .. } => return None,
    };
    Some(Notice {
        type_,
        reason,
        note,
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use chrono::{TimeZone, Utc};
    use dhcpmanager_engine::dhcp::State;
    use dhcpmanager_engine::fixtures::lease_record;

    use super::*;

    const OLD: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 50);
    const NEW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 51);

    fn bound(renewal: bool, after_failures: u32) -> ClientEvent {
        let now = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        ClientEvent::Bound {
            record: lease_record(now),
            renewal,
            after_failures,
        }
    }

    fn reason_and_type(event: &ClientEvent) -> Option<(&'static str, EventType)> {
        notice_for(event).map(|notice| (notice.reason, notice.type_))
    }

    #[test]
    fn a_first_lease_is_a_normal_bound_event_with_address_server_and_expiry() {
        let notice = notice_for(&bound(false, 0)).unwrap();
        assert_eq!((notice.reason, notice.type_), ("Bound", EventType::Normal));
        assert_eq!(
            notice.note,
            "leased 10.0.0.50 from 10.0.0.1 until 2026-01-02 03:06:05 UTC"
        );
    }

    #[test]
    fn only_renewals_after_unanswered_attempts_are_events() {
        assert_eq!(reason_and_type(&bound(true, 0)), None);
        let notice = notice_for(&bound(true, 3)).unwrap();
        assert_eq!(notice.reason, "Renewed");
        assert!(
            notice.note.contains("after 3 unanswered attempts"),
            "{notice:?}"
        );
    }

    #[test]
    fn lost_or_moved_addresses_are_warnings() {
        let nak = ClientEvent::Nak {
            server: Ipv4Addr::new(10, 0, 0, 1),
            message: None,
            state: State::Renewing,
        };
        let nak_notice = notice_for(&nak).unwrap();
        assert_eq!(
            nak_notice.note,
            "server 10.0.0.1 refused the address while RENEWING: no message"
        );
        for (event, reason) in [
            (nak, "Nak"),
            (ClientEvent::IpChanged { old: OLD, new: NEW }, "IpChanged"),
            (ClientEvent::Expired { ip: OLD }, "Expired"),
            (ClientEvent::Declined { ip: OLD }, "Declined"),
            (ClientEvent::GaveUp { ip: OLD }, "ServerSilent"),
        ] {
            assert_eq!(
                reason_and_type(&event),
                Some((reason, EventType::Warning)),
                "{event:?}"
            );
        }
        assert_eq!(
            reason_and_type(&ClientEvent::Released { ip: OLD }),
            Some(("Released", EventType::Normal))
        );
    }

    #[test]
    fn state_changes_are_not_events() {
        let change = ClientEvent::StateChanged {
            from: State::Selecting,
            to: State::Requesting,
        };
        assert_eq!(notice_for(&change), None);
    }
}
