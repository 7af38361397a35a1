//! What a Service's `status.loadBalancer.ingress` should say, given its DhcpAddress, and what
//! to tell the user when it changes: pure functions.

use std::net::Ipv4Addr;

use dhcpmanager_crds::{DhcpAddress, Phase};
use k8s_openapi::api::core::v1::Service;
use kube::runtime::events::EventType;
use serde_json::{Value, json};

/// The address clients may use: the leased IP while the lease is held (Bound, Renewing,
/// Rebinding), nothing before, after expiry, on failure or while releasing.
pub fn leased_ip(address: Option<&DhcpAddress>) -> Option<Ipv4Addr> {
    let status = address?.status.as_ref()?;
    status
        .phase
        .filter(|phase| phase.holds_address())
        .and(status.ip)
}

/// How long a Service keeps showing its address while its DhcpAddress, after holding a lease,
/// looks for a new one (after a NAK): a new exchange takes milliseconds, and the Service then
/// shows one `IpChanged` instead of `AddressLost` followed by `AddressAssigned`.
pub const REBIND_SETTLE: std::time::Duration = std::time::Duration::from_secs(10);

/// What the ingress should become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// Exactly this (nothing: no entry).
    Show(Option<Ipv4Addr>),
    /// Leave it as it is for this long, then look again: the address is between two leases.
    Wait(std::time::Duration),
}

/// The ingress for `address` at `now`: the leased IP; nothing when there is no lease, except for
/// [`REBIND_SETTLE`] after the address stopped being Ready while it looks for a new lease
/// (Pending). Expired, Failed, Releasing or gone: nothing at once.
pub fn wanted_ingress(address: Option<&DhcpAddress>, now: chrono::DateTime<chrono::Utc>) -> Wanted {
    if let Some(ip) = leased_ip(address) {
        return Wanted::Show(Some(ip));
    }
    let Some(status) = address.and_then(|a| a.status.as_ref()) else {
        return Wanted::Show(None);
    };
    let not_ready_since = status
        .conditions
        .iter()
        .find(|c| c.type_ == dhcpmanager_crds::condition_type::READY && c.status == "False")
        .map(|c| dhcpmanager_crds::from_time(&c.last_transition_time));
    match (status.phase, not_ready_since) {
        (Some(Phase::Pending), Some(since)) => {
            let left = (since + REBIND_SETTLE - now).to_std().unwrap_or_default();
            if left.is_zero() {
                Wanted::Show(None)
            } else {
                Wanted::Wait(left)
            }
        }
        _ => Wanted::Show(None),
    }
}

/// The IPs the Service's status lists now, in order (hostname entries are not ours: skipped).
pub fn current_ingress(service: &Service) -> Vec<String> {
    service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ingress| ingress.iter().filter_map(|i| i.ip.clone()).collect())
        .unwrap_or_default()
}

/// Whether the Service's ingress list differs from exactly `wanted` (any other entry, such as a
/// hostname, counts as a difference: the list is ours).
pub fn ingress_differs(service: &Service, wanted: Option<Ipv4Addr>) -> bool {
    let entries = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    match wanted {
        None => !entries.is_empty(),
        Some(ip) => {
            entries.len() != 1
                || entries[0].ip.as_deref() != Some(ip.to_string().as_str())
                || entries[0].hostname.is_some()
        }
    }
}

/// The merge patch of `services/status` that makes the ingress exactly `wanted` (null removes
/// the list).
pub fn status_patch(wanted: Option<Ipv4Addr>) -> Value {
    let ingress = match wanted {
        Some(ip) => json!([{"ip": ip.to_string()}]),
        None => Value::Null,
    };
    json!({"status": {"loadBalancer": {"ingress": ingress}}})
}

/// How the ingress moves from what the Service shows to what it should show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngressChange {
    Unchanged,
    Assigned(Ipv4Addr),
    /// The DHCP server gave another address (after a NAK or an expiry).
    Changed {
        old: String,
        new: Ipv4Addr,
    },
    Lost {
        old: String,
        why: String,
    },
}

pub fn ingress_change(
    service: &Service,
    address: Option<&DhcpAddress>,
    wanted: Option<Ipv4Addr>,
) -> IngressChange {
    let old = current_ingress(service).into_iter().next();
    match (old, wanted) {
        (Some(old), Some(new)) if old == new.to_string() => IngressChange::Unchanged,
        (Some(old), Some(new)) => IngressChange::Changed { old, new },
        (None, Some(new)) => IngressChange::Assigned(new),
        (Some(old), None) => IngressChange::Lost {
            old,
            why: why_not_leased(address),
        },
        (None, None) => IngressChange::Unchanged,
    }
}

/// The Event on the Service for a change: (type, reason, note).
pub fn event_for(change: &IngressChange) -> Option<(EventType, &'static str, String)> {
    match change {
        IngressChange::Unchanged => None,
        IngressChange::Assigned(ip) => Some((
            EventType::Normal,
            "AddressAssigned",
            format!("{ip} leased from the DHCP server"),
        )),
        IngressChange::Changed { old, new } => Some((
            EventType::Warning,
            "IpChanged",
            format!(
                "the DHCP server gave a new address: {old} -> {new}; clients and DNS entries of {old} must follow"
            ),
        )),
        IngressChange::Lost { old, why } => Some((
            EventType::Warning,
            "AddressLost",
            format!("{old} is no longer leased ({why}); looking for an address again"),
        )),
    }
}

fn why_not_leased(address: Option<&DhcpAddress>) -> String {
    let Some(address) = address else {
        return "its DhcpAddress is gone".into();
    };
    let status = address.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or(Phase::Pending);
    match status.last_error {
        Some(error) => format!("DhcpAddress {phase}: {error}"),
        None => format!("DhcpAddress {phase}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcpmanager_crds::{DhcpAddressSpec, DhcpAddressStatus};
    use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};

    const IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 10);

    fn address(phase: Phase, ip: Option<Ipv4Addr>) -> DhcpAddress {
        let mut address = DhcpAddress::new("web", DhcpAddressSpec::default());
        address.status = Some(DhcpAddressStatus {
            phase: Some(phase),
            ip,
            ..DhcpAddressStatus::default()
        });
        address
    }

    fn service_showing(entries: &[(&str, Option<&str>)]) -> Service {
        Service {
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(
                        entries
                            .iter()
                            .map(|(ip, hostname)| LoadBalancerIngress {
                                ip: Some(ip.to_string()),
                                hostname: hostname.map(str::to_string),
                                ..LoadBalancerIngress::default()
                            })
                            .collect(),
                    ),
                }),
                ..ServiceStatus::default()
            }),
            ..Service::default()
        }
    }

    #[test]
    fn only_a_held_lease_gives_an_address() {
        for phase in Phase::ALL {
            let expected = phase.holds_address().then_some(IP);
            assert_eq!(
                leased_ip(Some(&address(phase, Some(IP)))),
                expected,
                "{phase}"
            );
        }
        assert_eq!(leased_ip(Some(&address(Phase::Bound, None))), None);
        assert_eq!(leased_ip(None), None);
        let mut no_status = address(Phase::Bound, Some(IP));
        no_status.status = None;
        assert_eq!(leased_ip(Some(&no_status)), None);
    }

    fn not_ready_since(mut address: DhcpAddress, at: chrono::DateTime<chrono::Utc>) -> DhcpAddress {
        address.status.as_mut().unwrap().conditions =
            vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: "Pending".into(),
                message: String::new(),
                last_transition_time: dhcpmanager_crds::to_time(at),
                observed_generation: None,
            }];
        address
    }

    #[test]
    fn between_two_leases_the_ingress_waits_a_little_then_goes() {
        let now = chrono::Utc::now();
        let bound = address(Phase::Bound, Some(IP));
        assert_eq!(wanted_ingress(Some(&bound), now), Wanted::Show(Some(IP)));
        assert_eq!(wanted_ingress(None, now), Wanted::Show(None));

        let just_naked = not_ready_since(address(Phase::Pending, None), now);
        assert_eq!(
            wanted_ingress(Some(&just_naked), now),
            Wanted::Wait(REBIND_SETTLE)
        );
        let later = now + chrono::TimeDelta::seconds(4);
        assert_eq!(
            wanted_ingress(Some(&just_naked), later),
            Wanted::Wait(REBIND_SETTLE - std::time::Duration::from_secs(4))
        );
        let too_late = now + chrono::TimeDelta::seconds(10);
        assert_eq!(
            wanted_ingress(Some(&just_naked), too_late),
            Wanted::Show(None)
        );

        // Lost for good: at once, however recent.
        for phase in [Phase::Expired, Phase::Failed, Phase::Releasing] {
            let lost = not_ready_since(address(phase, None), now);
            assert_eq!(
                wanted_ingress(Some(&lost), now),
                Wanted::Show(None),
                "{phase}"
            );
        }
        // Never Ready yet: nothing to keep.
        assert_eq!(
            wanted_ingress(Some(&address(Phase::Pending, None)), now),
            Wanted::Show(None)
        );
    }

    #[test]
    fn the_ingress_list_must_be_exactly_the_leased_ip() {
        let showing = service_showing(&[("10.77.0.10", None)]);
        assert!(!ingress_differs(&showing, Some(IP)));
        assert!(ingress_differs(&showing, None));
        assert!(ingress_differs(
            &showing,
            Some(Ipv4Addr::new(10, 77, 0, 11))
        ));
        assert!(ingress_differs(&Service::default(), Some(IP)));
        assert!(!ingress_differs(&Service::default(), None));
        let two = service_showing(&[("10.77.0.10", None), ("10.77.0.12", None)]);
        assert!(ingress_differs(&two, Some(IP)));
        let with_hostname = service_showing(&[("10.77.0.10", Some("web.example"))]);
        assert!(ingress_differs(&with_hostname, Some(IP)));
    }

    #[test]
    fn status_patches_set_or_remove_the_list() {
        assert_eq!(
            status_patch(Some(IP)),
            json!({"status": {"loadBalancer": {"ingress": [{"ip": "10.77.0.10"}]}}})
        );
        assert_eq!(
            status_patch(None),
            json!({"status": {"loadBalancer": {"ingress": null}}})
        );
    }

    #[test]
    fn changes_and_their_events() {
        let bound = address(Phase::Bound, Some(IP));
        let nothing = Service::default();
        let showing = service_showing(&[("10.77.0.10", None)]);
        let new_ip = Ipv4Addr::new(10, 77, 0, 20);

        let assigned = ingress_change(&nothing, Some(&bound), Some(IP));
        assert_eq!(assigned, IngressChange::Assigned(IP));
        let (kind, reason, note) = event_for(&assigned).unwrap();
        assert_eq!((kind, reason), (EventType::Normal, "AddressAssigned"));
        assert!(note.contains("10.77.0.10"), "{note}");

        assert_eq!(
            ingress_change(&showing, Some(&bound), Some(IP)),
            IngressChange::Unchanged
        );
        assert_eq!(event_for(&IngressChange::Unchanged), None);
        assert_eq!(
            ingress_change(&nothing, None, None),
            IngressChange::Unchanged
        );

        let changed = ingress_change(&showing, Some(&bound), Some(new_ip));
        let (kind, reason, note) = event_for(&changed).unwrap();
        assert_eq!((kind, reason), (EventType::Warning, "IpChanged"));
        assert!(note.contains("10.77.0.10 -> 10.77.0.20"), "{note}");

        let mut expired = address(Phase::Expired, Some(IP));
        expired.status.as_mut().unwrap().last_error = Some("no answer".into());
        let lost = ingress_change(&showing, Some(&expired), None);
        let (kind, reason, note) = event_for(&lost).unwrap();
        assert_eq!((kind, reason), (EventType::Warning, "AddressLost"));
        assert!(note.contains("DhcpAddress Expired: no answer"), "{note}");
        let gone = ingress_change(&showing, None, None);
        assert!(event_for(&gone).unwrap().2.contains("DhcpAddress is gone"));
    }
}
