//! Pure mapping between the /v1 world (services, allocation ids) and DhcpAddress objects.

use std::collections::BTreeMap;

use dhcpmanager_crds::from_time;
use dhcpmanager_crds::{DhcpAddress, DhcpAddressSpec, Phase};
use kube::ResourceExt;

use crate::MacAddr;
use crate::backend::{
    Allocation, AllocationState, BackendError, InterfaceInfo, LeaseInfo, lease_cidr,
};

/// The label that marks a DhcpAddress as created through /v1 (and so deletable through it).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "dhcpmanager-apiserver";
pub const SERVICE_NAMESPACE_LABEL: &str = "dhcpmanager.io/service-namespace";
pub const SERVICE_NAME_LABEL: &str = "dhcpmanager.io/service-name";
/// The /v1 `id` of the allocation (the original's uuid; also the etcd key).
pub const ALLOCATION_ID_ANNOTATION: &str = "dhcpmanager.io/allocation-id";
/// The same id as a label: finds the object of an allocation whose create never answered.
pub const ALLOCATION_ID_LABEL: &str = "dhcpmanager.io/allocation-id";

/// `managed-by=dhcpmanager-apiserver`: selects exactly the objects /v1 may touch.
pub fn ours_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY}")
}

/// Our object(s) of one allocation.
pub fn allocation_selector(id: &str) -> String {
    format!(
        "{ALLOCATION_ID_LABEL}={},{}",
        label_value(id),
        ours_selector()
    )
}

/// The namespace a new address for `service` lives in: the service's own for "ns/name",
/// else `fallback` (the apiserver's namespace). Checked before any API call: the reference must
/// follow the CRD's rule, and Kubernetes' own namespaces (`kube-*`) are refused, so a client of
/// `/v1` cannot place objects there.
pub fn namespace_for<'a>(service: &'a str, fallback: &'a str) -> Result<&'a str, BackendError> {
    dhcpmanager_crds::check_service_ref(service).map_err(BackendError::Invalid)?;
    let namespace = match service.split_once('/') {
        Some((namespace, _)) => namespace,
        None => fallback,
    };
    if namespace.starts_with("kube-") {
        return Err(BackendError::Invalid(format!(
            "namespace {namespace} is reserved for Kubernetes; addresses are not created there"
        )));
    }
    Ok(namespace)
}

/// A new DhcpAddress for `service` (not yet created; the API server completes its name).
pub fn new_address(service: &str, id: &str, namespace: &str) -> DhcpAddress {
    let (service_namespace, service_name) = match service.split_once('/') {
        Some((namespace, name)) => (Some(namespace), name),
        None => (None, service),
    };
    let mut labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        (ALLOCATION_ID_LABEL.to_string(), label_value(id)),
    ]);
    if let Some(value) = service_namespace.map(label_value).filter(|v| !v.is_empty()) {
        labels.insert(SERVICE_NAMESPACE_LABEL.to_string(), value);
    }
    let name_label = label_value(service_name);
    if !name_label.is_empty() {
        labels.insert(SERVICE_NAME_LABEL.to_string(), name_label);
    }
    let mut address = DhcpAddress::new(
        "",
        DhcpAddressSpec {
            service: Some(service.to_string()),
            ..Default::default()
        },
    );
    address.metadata.name = None;
    address.metadata.generate_name = Some(generate_name(service_name));
    address.metadata.namespace = Some(namespace.to_string());
    address.metadata.labels = Some(labels);
    address.metadata.annotations = Some(BTreeMap::from([(
        ALLOCATION_ID_ANNOTATION.to_string(),
        id.to_string(),
    )]));
    address
}

/// A label value (at most 63 of `[A-Za-z0-9_.-]`, alphanumeric at both ends) as close to
/// `text` as possible; empty when nothing of it survives.
pub fn label_value(text: &str) -> String {
    let replaced: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    replaced
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// `generateName` from the service name: a DNS label prefix ending in `-`. The API server
/// appends 5 random characters and cuts the prefix to 58 itself; we cut earlier so the
/// separator survives.
pub fn generate_name(service_name: &str) -> String {
    let cleaned: String = service_name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(57)
        .collect();
    let cleaned = cleaned.trim_matches('-');
    if cleaned.is_empty() {
        "v1-ip-".to_string()
    } else {
        format!("{cleaned}-")
    }
}

pub fn is_ours(address: &DhcpAddress) -> bool {
    address.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
}

/// The /v1 id of an address: our annotation, else (for objects made by hand) its uid.
pub fn allocation_id(address: &DhcpAddress) -> String {
    address
        .annotations()
        .get(ALLOCATION_ID_ANNOTATION)
        .cloned()
        .or_else(|| address.uid())
        .unwrap_or_default()
}

pub fn phase(address: &DhcpAddress) -> Phase {
    address
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or_default()
}

/// The address an object holds right now (a lease-holding phase with an IP), if any.
pub fn held_ip(address: &DhcpAddress) -> Option<std::net::Ipv4Addr> {
    let status = address.status.as_ref()?;
    if phase(address).holds_address() {
        status.ip
    } else {
        None
    }
}

/// The subnet of the lease an object holds.
pub fn held_cidr(address: &DhcpAddress) -> Option<String> {
    let ip = held_ip(address)?;
    let prefix = address.status.as_ref()?.prefix_length?;
    lease_cidr(ip, prefix_mask(prefix)?)
}

fn prefix_mask(prefix: u8) -> Option<std::net::Ipv4Addr> {
    match prefix {
        0 => Some(std::net::Ipv4Addr::UNSPECIFIED),
        1..=32 => Some(std::net::Ipv4Addr::from(
            u32::MAX << (32 - u32::from(prefix)),
        )),
        _ => None,
    }
}

/// What /v1/status and the etcd mirror show for an address. The apiserver does not run on the
/// agent's node, so the link's index, MTU and flags are unknown here and left 0.
pub fn allocation_of(address: &DhcpAddress) -> Allocation {
    let status = address.status.clone().unwrap_or_default();
    let service = address
        .spec
        .service
        .clone()
        .unwrap_or_else(|| match address.namespace() {
            Some(namespace) => format!("{namespace}/{}", address.name_any()),
            None => address.name_any(),
        });
    let state = match phase(address) {
        Phase::Pending => AllocationState::Pending,
        Phase::Bound | Phase::Renewing | Phase::Rebinding => AllocationState::Bound,
        Phase::Expired | Phase::Releasing | Phase::Failed => AllocationState::Stopped,
    };
    let lease = status.lease.as_ref().map(|lease| LeaseInfo {
        server_id: lease.server_id,
        subnet_mask: prefix_mask(lease.prefix_length),
        routers: lease.routers.clone(),
        dns_servers: lease.dns.clone(),
        domain_name: lease.domain_name.clone(),
        bound_at: from_time(&lease.obtained_at),
        renew_at: from_time(&lease.renew_at),
        rebind_at: from_time(&lease.rebind_at),
        expires_at: from_time(&lease.expires_at),
    });
    Allocation {
        id: allocation_id(address),
        hostname: address.hostname(),
        service,
        ip: held_ip(address),
        mac: status
            .mac
            .as_deref()
            .and_then(|m| m.parse::<MacAddr>().ok()),
        interface: InterfaceInfo {
            name: status.interface.clone().unwrap_or_default(),
            ..Default::default()
        },
        state,
        lease,
        unconfirmed: false,
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn hostile_namespaces_are_refused_before_any_api_call() {
        for service in [
            "?x=/y",
            "#frag/y",
            "../x",
            "a/b/c",
            "Shop/web",
            "kube-system/pwn",
        ] {
            let refused = namespace_for(service, "dhcpmanager");
            assert!(
                matches!(refused, Err(BackendError::Invalid(_))),
                "{service:?}: {refused:?}"
            );
        }
        let Err(BackendError::Invalid(message)) = namespace_for("kube-system/pwn", "dm") else {
            panic!("refused above");
        };
        assert!(message.contains("kube-system"), "{message}");
        assert_eq!(namespace_for("shop/web", "dm"), Ok("shop"));
    }
    use super::*;
    use dhcpmanager_crds::DhcpAddressStatus;

    #[test]
    fn a_namespaced_service_gets_its_own_namespace_and_labels() {
        let address = new_address(
            "shop/web",
            "id-1",
            namespace_for("shop/web", "dhcpmanager").unwrap(),
        );
        assert_eq!(address.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(address.metadata.generate_name.as_deref(), Some("web-"));
        assert_eq!(address.metadata.name, None);
        assert_eq!(address.spec.service.as_deref(), Some("shop/web"));
        let labels = address.labels();
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(labels[SERVICE_NAMESPACE_LABEL], "shop");
        assert_eq!(labels[SERVICE_NAME_LABEL], "web");
        assert_eq!(address.annotations()[ALLOCATION_ID_ANNOTATION], "id-1");
        assert_eq!(labels[ALLOCATION_ID_LABEL], "id-1");
        assert_eq!(
            allocation_selector("id-1"),
            "dhcpmanager.io/allocation-id=id-1,app.kubernetes.io/managed-by=dhcpmanager-apiserver"
        );
        assert!(is_ours(&address));
    }

    #[test]
    fn a_bare_service_lives_in_the_apiservers_namespace() {
        assert_eq!(namespace_for("web", "dhcpmanager"), Ok("dhcpmanager"));
        let address = new_address("web", "id", "dhcpmanager");
        assert!(!address.labels().contains_key(SERVICE_NAMESPACE_LABEL));
        assert_eq!(address.labels()[SERVICE_NAME_LABEL], "web");
    }

    #[test]
    fn labels_and_generated_names_are_made_safe() {
        assert_eq!(label_value("-a b/c_"), "a-b-c");
        assert_eq!(label_value(&"x".repeat(80)).len(), 63);
        assert_eq!(label_value("///"), "");
        assert_eq!(generate_name("Web_Front"), "web-front-");
        assert_eq!(generate_name("..."), "v1-ip-");
        assert!(generate_name(&"a".repeat(100)).len() <= 58);
    }

    #[test]
    fn only_lease_holding_phases_show_an_ip() {
        let mut address = new_address("shop/web", "id", "shop");
        address.status = Some(DhcpAddressStatus {
            phase: Some(Phase::Releasing),
            ip: Some("10.77.0.5".parse().unwrap()),
            prefix_length: Some(24),
            ..Default::default()
        });
        assert_eq!(held_ip(&address), None);
        assert_eq!(allocation_of(&address).state, AllocationState::Stopped);
        address.status.as_mut().unwrap().phase = Some(Phase::Renewing);
        assert_eq!(held_ip(&address), Some("10.77.0.5".parse().unwrap()));
        assert_eq!(held_cidr(&address).as_deref(), Some("10.77.0.0/24"));
        let allocation = allocation_of(&address);
        assert_eq!(allocation.state, AllocationState::Bound);
        assert_eq!(allocation.hostname, "web.shop");
        assert_eq!(allocation.id, "id");
    }

    #[test]
    fn prefix_masks() {
        assert_eq!(prefix_mask(24), Some("255.255.255.0".parse().unwrap()));
        assert_eq!(prefix_mask(32), Some("255.255.255.255".parse().unwrap()));
        assert_eq!(prefix_mask(0), Some("0.0.0.0".parse().unwrap()));
        assert_eq!(prefix_mask(33), None);
    }
}
