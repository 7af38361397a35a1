//! Which Services are ours and the `DhcpAddress` each one wants: pure functions of the Service.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use dhcpmanager_crds::{ClientIdMode, ClientIdSpec, DhcpAddress, DhcpAddressSpec};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

/// `spec.loadBalancerClass` of the Services this controller serves.
pub const LOAD_BALANCER_CLASS: &str = "dhcpmanager.io/dhcp";

/// Labels on every DhcpAddress made for a Service (what `kubectl get da -l` finds them by).
pub const MANAGED_BY_LABEL: (&str, &str) = (
    "app.kubernetes.io/managed-by",
    "dhcpmanager-service-controller",
);
pub const SERVICE_NAME_LABEL: &str = "dhcpmanager.io/service-name";

/// The Service annotations users set; documented in docs/operator.md.
pub mod annotation {
    /// The MacPool to take the MAC from (`spec.macPoolRef`; immutable once the address exists).
    pub const MAC_POOL: &str = "dhcpmanager.io/mac-pool";
    /// The DHCP hostname (option 12) instead of `name.namespace`.
    pub const HOSTNAME: &str = "dhcpmanager.io/hostname";
    /// The client identifier: `stable` (RFC 4361, default), `mac` (01 + MAC), or the whole
    /// option 61 payload in hex (immutable once the address exists).
    pub const CLIENT_ID: &str = "dhcpmanager.io/client-id";
    /// The IPv4 address to ask for (option 50); wins over `spec.loadBalancerIP`.
    pub const REQUESTED_IP: &str = "dhcpmanager.io/requested-ip";
}

/// What the controller does with a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not a LoadBalancer of our class: never touched.
    NotOurs,
    /// Ours, but it asks for IPv6 only, which DHCPv4 cannot give.
    Ipv6Only,
    /// Ours: it gets a DhcpAddress.
    Serve,
}

/// Ours = `type: LoadBalancer` with our class, or with no class when we are the cluster's
/// default load balancer.
pub fn classify(service: &Service, default_load_balancer: bool) -> Verdict {
    let Some(spec) = &service.spec else {
        return Verdict::NotOurs;
    };
    if spec.type_.as_deref() != Some("LoadBalancer") {
        return Verdict::NotOurs;
    }
    let ours = match spec.load_balancer_class.as_deref() {
        Some(class) => class == LOAD_BALANCER_CLASS,
        None => default_load_balancer,
    };
    if !ours {
        return Verdict::NotOurs;
    }
    let families = spec.ip_families.as_deref().unwrap_or_default();
    let ipv6_only = !families.is_empty() && families.iter().all(|f| f == "IPv6");
    if ipv6_only {
        Verdict::Ipv6Only
    } else {
        Verdict::Serve
    }
}

/// The DhcpAddress a served Service wants: same namespace and name, controlled by the Service
/// (the garbage collector deletes it with the Service, and its finalizer releases the lease),
/// hostname `name.namespace` unless annotated, the IP on the macvlan (announced from there).
pub fn desired_address(service: &Service) -> Result<DhcpAddress, String> {
    let namespace = service.namespace().unwrap_or_default();
    let name = service.name_any();
    let annotations = service.annotations();
    let get = |key: &str| {
        annotations
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };
    let spec = DhcpAddressSpec {
        service: Some(format!("{namespace}/{name}")),
        hostname: get(annotation::HOSTNAME).map(str::to_string),
        mac_pool_ref: get(annotation::MAC_POOL).map(str::to_string),
        client_id: get(annotation::CLIENT_ID)
            .map(parse_client_id)
            .transpose()?,
        requested_ip: requested_ip(service, get(annotation::REQUESTED_IP))?,
        assign_to_interface: Some(true),
        ..DhcpAddressSpec::default()
    };
    let mut address = DhcpAddress::new(&name, spec);
    address.metadata.namespace = Some(namespace);
    address.metadata.labels = Some(BTreeMap::from([
        (
            MANAGED_BY_LABEL.0.to_string(),
            MANAGED_BY_LABEL.1.to_string(),
        ),
        (SERVICE_NAME_LABEL.to_string(), name.clone()),
    ]));
    address.metadata.owner_references = Some(vec![owner_reference(service)?]);
    Ok(address)
}

/// Whether `address` is controlled by `service` (the same object, by UID).
pub fn is_controlled_by(address: &DhcpAddress, service: &Service) -> bool {
    let uid = service.uid();
    address
        .owner_references()
        .iter()
        .any(|r| r.controller == Some(true) && r.kind == "Service" && Some(&r.uid) == uid.as_ref())
}

/// The spec fields this controller sets, for telling whether an apply would change anything
/// (fields others set, e.g. `vendorClass` by hand, are left out of the comparison).
pub fn managed_fields_differ(current: &DhcpAddressSpec, desired: &DhcpAddressSpec) -> bool {
    let view = |s: &DhcpAddressSpec| {
        (
            s.service.clone(),
            s.hostname.clone(),
            s.mac_pool_ref.clone(),
            s.client_id.clone(),
            s.requested_ip,
            s.assign_to_interface,
        )
    };
    view(current) != view(desired)
}

fn owner_reference(service: &Service) -> Result<OwnerReference, String> {
    let uid = service
        .uid()
        .ok_or_else(|| "has no uid yet (not stored by the API server?)".to_string())?;
    Ok(OwnerReference {
        api_version: Service::api_version(&()).into_owned(),
        kind: Service::kind(&()).into_owned(),
        name: service.name_any(),
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

fn parse_client_id(value: &str) -> Result<ClientIdSpec, String> {
    let spec = match value.to_ascii_lowercase().as_str() {
        "stable" => ClientIdSpec {
            mode: ClientIdMode::Stable,
            value: None,
        },
        "mac" => ClientIdSpec {
            mode: ClientIdMode::Mac,
            value: None,
        },
        hex_value => {
            let bytes = hex::decode(hex_value).map_err(|e| {
                format!(
                    "annotation {}: {value:?} is neither stable, mac nor hex bytes ({e})",
                    annotation::CLIENT_ID
                )
            })?;
            if !(2..=255).contains(&bytes.len()) {
                return Err(format!(
                    "annotation {}: a client identifier has 2 to 255 bytes, not {}",
                    annotation::CLIENT_ID,
                    bytes.len()
                ));
            }
            ClientIdSpec {
                mode: ClientIdMode::Custom,
                value: Some(hex_value.to_string()),
            }
        }
    };
    Ok(spec)
}

/// The annotation, else `spec.loadBalancerIP` (deprecated upstream, still what users write).
fn requested_ip(service: &Service, annotated: Option<&str>) -> Result<Option<Ipv4Addr>, String> {
    let (text, source) = match annotated {
        Some(text) => (text, format!("annotation {}", annotation::REQUESTED_IP)),
        None => match service
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_ip.as_deref())
            .filter(|ip| !ip.is_empty())
        {
            Some(text) => (text, "spec.loadBalancerIP".to_string()),
            None => return Ok(None),
        },
    };
    let ip: Ipv4Addr = text
        .parse()
        .map_err(|_| format!("{source}: {text:?} is not an IPv4 address"))?;
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        return Err(format!(
            "{source}: {ip} cannot be leased from a DHCP server"
        ));
    }
    Ok(Some(ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServiceSpec;

    fn service(spec: ServiceSpec) -> Service {
        let mut service = Service {
            spec: Some(spec),
            ..Service::default()
        };
        service.metadata.name = Some("web".into());
        service.metadata.namespace = Some("shop".into());
        service.metadata.uid = Some("5e1f0000-0000-4000-8000-00000000000a".into());
        service
    }

    fn load_balancer(class: Option<&str>) -> Service {
        service(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            load_balancer_class: class.map(str::to_string),
            ..ServiceSpec::default()
        })
    }

    fn annotated(mut service: Service, key: &str, value: &str) -> Service {
        service.annotations_mut().insert(key.into(), value.into());
        service
    }

    #[test]
    fn only_load_balancers_of_our_class_are_ours_and_classless_ones_by_choice() {
        let ours = Some(LOAD_BALANCER_CLASS);
        assert_eq!(classify(&load_balancer(ours), false), Verdict::Serve);
        assert_eq!(classify(&load_balancer(None), false), Verdict::NotOurs);
        assert_eq!(classify(&load_balancer(None), true), Verdict::Serve);
        for default in [false, true] {
            let other = load_balancer(Some("metallb.io/metallb"));
            assert_eq!(classify(&other, default), Verdict::NotOurs);
            let cluster_ip = service(ServiceSpec {
                type_: Some("ClusterIP".into()),
                ..ServiceSpec::default()
            });
            assert_eq!(classify(&cluster_ip, default), Verdict::NotOurs);
            assert_eq!(classify(&Service::default(), default), Verdict::NotOurs);
        }
    }

    #[test]
    fn ipv6_only_is_recognised_and_dual_stack_is_served_with_ipv4() {
        let with_families = |families: &[&str]| {
            let mut service = load_balancer(Some(LOAD_BALANCER_CLASS));
            service.spec.as_mut().unwrap().ip_families =
                Some(families.iter().map(|f| f.to_string()).collect());
            service
        };
        assert_eq!(
            classify(&with_families(&["IPv6"]), false),
            Verdict::Ipv6Only
        );
        assert_eq!(
            classify(&with_families(&["IPv6", "IPv4"]), false),
            Verdict::Serve
        );
        assert_eq!(classify(&with_families(&["IPv4"]), false), Verdict::Serve);
        assert_eq!(classify(&with_families(&[]), false), Verdict::Serve);
    }

    #[test]
    fn the_address_is_named_after_the_service_and_controlled_by_it() {
        let service = load_balancer(Some(LOAD_BALANCER_CLASS));
        let address = desired_address(&service).unwrap();
        assert_eq!(address.name_any(), "web");
        assert_eq!(address.namespace().as_deref(), Some("shop"));
        assert_eq!(address.hostname(), "web.shop", "the original's rule");
        assert_eq!(
            address.spec,
            DhcpAddressSpec {
                service: Some("shop/web".into()),
                assign_to_interface: Some(true),
                ..DhcpAddressSpec::default()
            }
        );
        let owner = &address.owner_references()[0];
        assert_eq!(
            (
                owner.api_version.as_str(),
                owner.kind.as_str(),
                owner.name.as_str()
            ),
            ("v1", "Service", "web")
        );
        assert_eq!(owner.uid, "5e1f0000-0000-4000-8000-00000000000a");
        assert_eq!(
            (owner.controller, owner.block_owner_deletion),
            (Some(true), Some(true))
        );
        assert!(is_controlled_by(&address, &service));
        let mut other = service.clone();
        other.metadata.uid = Some("another".into());
        assert!(!is_controlled_by(&address, &other), "a re-created Service");
        assert_eq!(
            address.labels().get(MANAGED_BY_LABEL.0).map(String::as_str),
            Some(MANAGED_BY_LABEL.1)
        );
    }

    #[test]
    fn annotations_set_pool_hostname_client_id_and_requested_ip() {
        let service = load_balancer(Some(LOAD_BALANCER_CLASS));
        let service = annotated(service, annotation::MAC_POOL, "site-pool");
        let service = annotated(service, annotation::HOSTNAME, "www.example");
        let service = annotated(service, annotation::CLIENT_ID, "Mac");
        let service = annotated(service, annotation::REQUESTED_IP, " 10.77.0.42 ");
        let spec = desired_address(&service).unwrap().spec;
        assert_eq!(spec.mac_pool_ref.as_deref(), Some("site-pool"));
        assert_eq!(spec.hostname.as_deref(), Some("www.example"));
        assert_eq!(
            spec.client_id,
            Some(ClientIdSpec {
                mode: ClientIdMode::Mac,
                value: None
            })
        );
        assert_eq!(spec.requested_ip, Some(Ipv4Addr::new(10, 77, 0, 42)));

        let custom = annotated(load_balancer(None), annotation::CLIENT_ID, "FF0001");
        assert_eq!(
            desired_address(&custom).unwrap().spec.client_id,
            Some(ClientIdSpec {
                mode: ClientIdMode::Custom,
                value: Some("ff0001".into())
            })
        );
    }

    #[test]
    fn load_balancer_ip_is_the_requested_ip_unless_annotated() {
        let mut service = load_balancer(Some(LOAD_BALANCER_CLASS));
        service.spec.as_mut().unwrap().load_balancer_ip = Some("10.77.0.7".into());
        let from_spec = desired_address(&service).unwrap().spec.requested_ip;
        assert_eq!(from_spec, Some(Ipv4Addr::new(10, 77, 0, 7)));
        let service = annotated(service, annotation::REQUESTED_IP, "10.77.0.8");
        let from_annotation = desired_address(&service).unwrap().spec.requested_ip;
        assert_eq!(from_annotation, Some(Ipv4Addr::new(10, 77, 0, 8)));
    }

    #[test]
    fn bad_annotations_are_refused_with_a_message_naming_them() {
        let refused = |key: &str, value: &str, expected: &str| {
            let service = annotated(load_balancer(None), key, value);
            let error = desired_address(&service).expect_err(value);
            assert!(error.contains(expected), "{error}");
        };
        refused(annotation::REQUESTED_IP, "10.77.0", "not an IPv4 address");
        refused(annotation::REQUESTED_IP, "fd00::1", "not an IPv4 address");
        refused(
            annotation::REQUESTED_IP,
            "255.255.255.255",
            "cannot be leased",
        );
        refused(
            annotation::CLIENT_ID,
            "random",
            "neither stable, mac nor hex",
        );
        refused(annotation::CLIENT_ID, "ff", "2 to 255 bytes");
        let mut no_uid = load_balancer(None);
        no_uid.metadata.uid = None;
        assert!(desired_address(&no_uid).is_err());
    }

    #[test]
    fn only_the_fields_we_set_count_as_a_difference() {
        let desired = desired_address(&load_balancer(None)).unwrap().spec;
        let mut current = desired.clone();
        current.vendor_class = Some("set by hand".into());
        current.node = Some("worker-1".into());
        assert!(!managed_fields_differ(&current, &desired));
        current.requested_ip = Some(Ipv4Addr::new(10, 77, 0, 9));
        assert!(managed_fields_differ(&current, &desired));
    }
}
