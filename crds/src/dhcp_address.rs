//! `DhcpAddress`: one service address obtained from the site's DHCP server.

use dhcpmanager_dhcp_core::RESERVED_OPTION_CODES;
use kube::{CustomResource, KubeSchema, ResourceExt};
use serde::{Deserialize, Serialize};

use crate::dhcp_address_status::DhcpAddressStatus;
use crate::patterns;

/// What the user wants: an address from the DHCP server, held for as long as this object exists.
///
/// Every field is optional; an empty spec asks for an address named after the object.
// Each printcolumn(...) repeats `type_ = ...`, which clippy mistakes for a duplicate attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "dhcpmanager.io",
    version = "v1alpha1",
    kind = "DhcpAddress",
    plural = "dhcpaddresses",
    namespaced,
    status = "DhcpAddressStatus",
    derive = "PartialEq",
    shortname = "dhcpaddr",
    shortname = "da",
    category = "dhcpmanager",
    doc = "An IPv4 address leased from the site's DHCP server on a macvlan with a managed MAC",
    printcolumn(name = "IP", type_ = "string", json_path = ".status.ip"),
    printcolumn(name = "MAC", type_ = "string", json_path = ".status.mac"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Node", type_ = "string", json_path = ".status.node"),
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.expiresAt"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    selectable = ".spec.node",
    selectable = ".status.node",
    selectable = ".status.phase"
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = kube::core::Rule::new("!has(self.mac) || !has(self.macPoolRef)")
        .message("set either mac (a fixed MAC) or macPoolRef (a MAC from a pool), not both"),
    validation = kube::core::Rule::new("!has(oldSelf.mac) || (has(self.mac) && self.mac == oldSelf.mac)")
        .message("mac is immutable once set"),
    validation = kube::core::Rule::new(
        "!has(oldSelf.macPoolRef) || (has(self.macPoolRef) && self.macPoolRef == oldSelf.macPoolRef)"
    )
    .message("macPoolRef is immutable once set"),
    validation = kube::core::Rule::new(
        "!has(oldSelf.clientId) || (has(self.clientId) && self.clientId == oldSelf.clientId)"
    )
    .message("clientId is immutable once set"),
    validation = kube::core::Rule::new(
        "!has(oldSelf.interface) || (has(self.interface) && self.interface == oldSelf.interface)"
    )
    .message("interface is immutable once set")
)]
pub struct DhcpAddressSpec {
    /// The Service this address is for, as `namespace/name` (or a bare `name`). Also the
    /// source of the DHCP hostname when `hostname` is not set: `ns/name` is sent as `name.ns`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = patterns::SERVICE_REF), length(max = 127))]
    pub service: Option<String>,

    /// The hostname sent to the DHCP server (option 12), overriding the one derived from
    /// `service` or from this object's namespace and name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = patterns::DNS_SUBDOMAIN), length(max = 253))]
    pub hostname: Option<String>,

    /// A fixed MAC for the macvlan, `aa:bb:cc:dd:ee:ff` (lowercase). Without it the agent takes
    /// one from a MacPool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = patterns::MAC), length(max = 17))]
    pub mac: Option<String>,

    /// The MacPool to take the MAC from; without it the agent picks a pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = patterns::DNS_SUBDOMAIN), length(max = 253))]
    pub mac_pool_ref: Option<String>,

    /// The parent interface of the macvlan, overriding the agent's (or the pool's) default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = patterns::INTERFACE), length(max = 15))]
    pub interface: Option<String>,

    /// The DHCP client identifier (option 61). Without it the agent uses mode Stable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<ClientIdSpec>,

    /// Vendor class identifier (option 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub vendor_class: Option<String>,

    /// Further options sent in DISCOVER and REQUEST, at most one per code.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["code".into()]))]
    pub extra_options: Vec<DhcpOptionSpec>,

    /// Also add the address to the macvlan (for traffic from the node itself); otherwise the
    /// macvlan only holds the lease and the address is announced by MetalLB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assign_to_interface: Option<bool>,

    /// The address to ask for (option 50 in DISCOVER) when no lease is held yet, e.g. the
    /// address a re-created Service had before. A server that keeps it free offers it; any other
    /// offer is taken all the same (the server decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    pub requested_ip: Option<std::net::Ipv4Addr>,

    /// Only the agent on this node may hold the lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = patterns::DNS_SUBDOMAIN), length(max = 253))]
    pub node: Option<String>,
}

/// How the DHCP client identifier (option 61) is made.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = kube::core::Rule::new("self.mode != 'Custom' || has(self.value)")
        .message("custom client id needs value"),
    validation = kube::core::Rule::new("self.mode == 'Custom' || !has(self.value)")
        .message("value is only used with mode Custom")
)]
pub struct ClientIdSpec {
    pub mode: ClientIdMode,

    /// The whole option 61 payload in hex, type byte first (e.g. `01` + MAC, `ff` + IAID +
    /// DUID); only with mode Custom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = patterns::HEX_BYTES), length(min = 4, max = 510))]
    pub value: Option<String>,
}

/// A plain string enum on purpose: a tagged enum would give a non-structural schema.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientIdMode {
    /// RFC 4361 identifier (type 255, IAID + DUID) derived from the object, the same on every
    /// agent and across MAC changes.
    Stable,
    /// Type 1 + the macvlan's MAC, what most clients send.
    Mac,
    /// The bytes in `value`.
    Custom,
}

/// One additional DHCP option, sent as given.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DhcpOptionSpec {
    /// Option code, 1..=254, not one the agent writes itself (12, 50-55, 57, 60, 61).
    #[schemars(range(min = 1, max = 254))]
    #[x_kube(validation = reserved_option_rule())]
    pub code: u8,

    /// Option payload in hex (either case, no separators); empty for flag options.
    #[serde(default)]
    #[schemars(regex(pattern = patterns::HEX_BYTES), length(max = 510))]
    pub value: String,
}

impl DhcpAddress {
    /// The hostname sent to the DHCP server: `spec.hostname` if set, else `spec.service`
    /// turned into `name.namespace`, else this object's own `namespace/name` the same way.
    pub fn hostname(&self) -> String {
        if let Some(hostname) = non_empty(&self.spec.hostname) {
            return hostname.to_string();
        }
        if let Some(service) = non_empty(&self.spec.service) {
            return hostname_for_service(service);
        }
        match self.namespace() {
            Some(namespace) => format!("{}.{namespace}", self.name_any()),
            None => self.name_any(),
        }
    }
}

/// The original service's rule: `"ns/name"` becomes `"name.ns"` (so that a DHCP-tied DNS
/// resolves it inside the namespace's subdomain), a bare `"name"` stays. The one place this rule
/// lives: the agent, the standalone apiserver and the `lease` command all call it.
/// Checks `service` against the CRD's rule for `spec.service` ([`crate::patterns::SERVICE_REF`]):
/// `namespace/name` or `name`, each a DNS-1123 label. Everything that builds a hostname or a
/// Kubernetes path from a service name checks it first, so option 12 is always a DNS name and a
/// namespace can never carry `/`, `?`, `#` or `..` into a URL.
pub fn check_service_ref(service: &str) -> Result<(), String> {
    let is_label = |text: &str| {
        let bytes = text.as_bytes();
        (1..=63).contains(&bytes.len())
            && bytes
                .iter()
                .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && bytes[0] != b'-'
            && bytes[bytes.len() - 1] != b'-'
    };
    let fits = match service.split_once('/') {
        Some((namespace, name)) => is_label(namespace) && is_label(name),
        None => is_label(service),
    };
    if fits {
        return Ok(());
    }
    let shown: String = service.chars().take(80).collect();
    Err(format!(
        "\"service\" must be \"namespace/name\" or \"name\", each a DNS-1123 label (at most 63 \
         lowercase letters, digits or '-', starting and ending with a letter or digit), not {shown:?}"
    ))
}

pub fn hostname_for_service(service: &str) -> String {
    match service.split_once('/') {
        Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => {
            format!("{name}.{namespace}")
        }
        Some((namespace, name)) => format!("{namespace}{name}"),
        None => service.to_string(),
    }
}

/// The CEL rule keeping users off the options in [`RESERVED_OPTION_CODES`] (the engine writes
/// them itself; the list says why each). Pad (0) and end (255) are kept out by the 1..=254 range.
fn reserved_option_rule() -> kube::core::Rule {
    let codes = RESERVED_OPTION_CODES
        .map(|code| code.to_string())
        .join(", ");
    kube::core::Rule::new(format!("!(self in [{codes}])"))
        .message(format!("option codes {codes} are managed by dhcpmanager").as_str())
}

fn non_empty(field: &Option<String>) -> Option<&str> {
    field.as_deref().filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {

    #[test]
    fn service_refs_follow_exactly_the_crds_pattern() {
        let pattern = regex::Regex::new(crate::patterns::SERVICE_REF).unwrap();
        let long = "a".repeat(64);
        let cases = [
            "default/web",
            "web",
            "a/b",
            "kube-system/pwn",
            "shop-1/web-2",
            "",
            "/web",
            "web/",
            "?x=/y",
            "#frag/y",
            "../x",
            "a/b/c",
            "Default/web",
            "ns/we b",
            "ns/web\0",
            "ns/web\nx",
            "ns/web;rm",
            "-ns/web",
            "ns/web-",
            long.as_str(),
        ];
        for service in cases {
            assert_eq!(
                check_service_ref(service).is_ok(),
                pattern.is_match(service),
                "{service:?}"
            );
        }
        let error = check_service_ref("../x").unwrap_err();
        assert!(
            error.contains("DNS-1123") && error.contains("\"../x\""),
            "{error}"
        );
    }
    use super::*;

    fn address(namespace: &str, name: &str, spec: DhcpAddressSpec) -> DhcpAddress {
        let mut address = DhcpAddress::new(name, spec);
        address.metadata.namespace = Some(namespace.to_string());
        address
    }

    #[test]
    fn service_ns_slash_name_becomes_name_dot_ns() {
        assert_eq!(hostname_for_service("default/web"), "web.default");
        assert_eq!(hostname_for_service("web"), "web");
        assert_eq!(
            hostname_for_service("kube-system/dns-lb"),
            "dns-lb.kube-system"
        );
        assert_eq!(hostname_for_service("/web"), "web");
        assert_eq!(hostname_for_service("ns/"), "ns");
    }

    #[test]
    fn explicit_hostname_wins_over_service() {
        let spec = DhcpAddressSpec {
            service: Some("shop/web".into()),
            hostname: Some("www.example".into()),
            ..Default::default()
        };
        assert_eq!(address("ns", "obj", spec).hostname(), "www.example");
    }

    #[test]
    fn service_is_used_when_hostname_is_absent_or_empty() {
        for hostname in [None, Some(String::new())] {
            let spec = DhcpAddressSpec {
                service: Some("shop/web".into()),
                hostname,
                ..Default::default()
            };
            assert_eq!(address("ns", "obj", spec).hostname(), "web.shop");
        }
    }

    #[test]
    fn the_object_itself_names_the_host_when_both_are_empty() {
        let spec = DhcpAddressSpec {
            service: Some(String::new()),
            hostname: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(address("ns", "obj", spec).hostname(), "obj.ns");
        assert_eq!(
            DhcpAddress::new("lonely", DhcpAddressSpec::default()).hostname(),
            "lonely"
        );
    }

    #[test]
    fn the_reserved_option_rule_lists_every_reserved_code() {
        let rule = reserved_option_rule().rule;
        assert_eq!(rule, "!(self in [12, 50, 51, 52, 53, 54, 55, 57, 60, 61])");
    }
}
