//! The agent's command-line flags (and their environment variables).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::Args;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// This node's name (the DaemonSet passes spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Namespace of the agents' coordination Leases.
    #[arg(long, env = "POD_NAMESPACE", default_value = "dhcpmanager")]
    pub namespace: String,
    /// The agent's own Pod (the DaemonSet passes metadata.name and metadata.uid): its Lease is
    /// owned by the Pod, so Kubernetes deletes the Lease once no agent Pod on the node is left
    /// (`helm uninstall`, a node leaving the DaemonSet), even after a crash.
    #[arg(long, env = "POD_NAME", requires = "pod_uid")]
    pub pod_name: Option<String>,
    #[arg(long, env = "POD_UID", requires = "pod_name")]
    pub pod_uid: Option<String>,
    /// The original configuration file (interface, assign-interfaces, macs, ...).
    #[arg(long, env = "DHCP_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Parent interface of the macvlans (overrides the configuration's `interface`).
    #[arg(long)]
    pub interface: Option<String>,
    /// Configure leased IPs on the macvlans by default (overrides `assign-interfaces`).
    #[arg(long)]
    pub assign_interfaces: Option<bool>,
    /// The MacPool used when a DhcpAddress names none; created from the configuration's `macs`.
    #[arg(long, default_value = "default")]
    pub default_pool: String,
    /// Let DhcpAddresses name their own parent interface, fixed MAC or custom client id. Off by
    /// default: those fields pick a host interface and a DHCP identity (another host's MAC or
    /// client id claims, and a release gives away, that host's lease).
    #[arg(long, env = "DHCP_ALLOW_CUSTOM_IDENTITY")]
    pub allow_custom_identity: bool,
    /// Address of /metrics, /healthz and /readyz (e.g. the node's IP, or 127.0.0.1 where only
    /// a local collector scrapes and no kubelet probes them).
    #[arg(
        long,
        alias = "metrics-bind-address",
        default_value = "0.0.0.0:9342",
        value_parser = listen_addr
    )]
    pub metrics_addr: SocketAddr,
    /// Who may read /metrics. kubernetes: a bearer token that the API server authenticates
    /// (TokenReview) and authorises for `get` on the non-resource URL /metrics
    /// (SubjectAccessReview); none: anyone who reaches the port. /healthz and /readyz are always
    /// open.
    #[arg(
        long,
        env = "DHCP_METRICS_AUTH",
        value_enum,
        default_value = "kubernetes"
    )]
    pub metrics_auth: super::metrics_auth::MetricsAuth,
    /// How long the agent's Lease is valid without renewal (and so the longest API outage that
    /// does not pause DHCP renewals and announcements). 15 s, as Kubernetes' own leader
    /// election: node loss to takeover is ~20 s (measured; was ~50 s with 40 s / 10 s / 10 s).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// Three renewals fit in a lease duration; a failed one is retried at a quarter of this.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub renew_interval: Duration,
    /// Extra time a peer's Lease must stay unrenewed before its addresses are taken over.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub takeover_grace: Duration,
    /// How often every address is re-checked even without a change.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub resync: Duration,
    /// New DHCP transmissions per second toward the server, all addresses together.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 100)]
    pub burst: u32,
    /// Addresses without assignToInterface run with no macvlan, over one shared socket per
    /// parent, from their own MACs (docs/engine.md "Leases without links"); false: a macvlan per
    /// address.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub linkless: bool,
    /// Connection-mark bits of announced addresses (replies of pods behind kube-proxy leave
    /// through the address's macvlan): each announced address takes one value of these bits, so
    /// 0x7e (bits 1-6) allows 63 per node. Keep clear of other users' bits (docs/engine.md).
    #[arg(long, default_value = "0x7e", value_parser = parse_mark_mask)]
    pub reply_mark_mask: u32,
    /// Addresses this agent holds at most; more are refused (phase Failed with the reason).
    #[arg(long, default_value_t = dhcpmanager_engine::manager::DEFAULT_MAX_ADDRESSES)]
    pub max_addresses: usize,
    /// Addresses on macvlans per parent at most; 0: half of net.core.netdev_max_backlog.
    #[arg(long, default_value_t = 0)]
    pub links_per_parent: usize,
    /// Create the macvlans and DHCP sockets in this network namespace (e.g. /proc/1/ns/net, the
    /// host's, when the agent runs in the pod network) instead of the agent's own.
    #[arg(long)]
    pub link_netns: Option<std::path::PathBuf>,
    /// Run the Service controller: LoadBalancer Services of class `dhcpmanager.io/dhcp` get a
    /// DhcpAddress, and their status shows its IP.
    #[arg(long)]
    pub service_controller: bool,
    /// With the Service controller: also serve LoadBalancer Services that name no class
    /// (dhcpmanager is the cluster's default load balancer).
    #[arg(long)]
    pub default_load_balancer: bool,
    /// Divide every DHCP protocol wait by this factor (tests only).
    #[arg(long, default_value_t = 1.0, hide = true)]
    pub time_scale: f64,
}

/// A non-zero 32-bit mask, hexadecimal with `0x` or decimal.
fn parse_mark_mask(text: &str) -> Result<u32, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    match parsed {
        Ok(0) => Err("the mask needs at least one bit".into()),
        Ok(mask) => Ok(mask),
        Err(e) => Err(format!("{text:?} is not a 32-bit mask (e.g. 0x7e): {e}")),
    }
}

#[cfg(test)]
mod mark_mask_tests {
    use super::parse_mark_mask;

    #[test]
    fn masks_are_hex_or_decimal_and_never_zero() {
        assert_eq!(parse_mark_mask("0x7e"), Ok(0x7e));
        assert_eq!(parse_mark_mask("0XFF000000"), Ok(0xff00_0000));
        assert_eq!(parse_mark_mask("126"), Ok(0x7e));
        assert!(parse_mark_mask("0").is_err());
        assert!(parse_mark_mask("0x").is_err());
        assert!(parse_mark_mask("0x1ffffffff").is_err());
    }
}

/// `IP:port`, an IPv6 address bracketed or not: the chart passes `$(HOST_IP):port`, and the
/// node's IP may be either family.
fn listen_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let (ip, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?}: expected IP:port"))?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("{text:?}: {ip:?} is not an IP address"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{text:?}: {port:?} is not a port"))?;
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod listen_addr_tests {
    use super::listen_addr;

    #[test]
    fn listen_addresses_of_either_family() {
        assert_eq!(
            listen_addr("0.0.0.0:9342").unwrap().to_string(),
            "0.0.0.0:9342"
        );
        assert_eq!(
            listen_addr("[fd00::5]:9342").unwrap().to_string(),
            "[fd00::5]:9342"
        );
        assert_eq!(
            listen_addr("fd00::5:9342").unwrap().to_string(),
            "[fd00::5]:9342"
        );
        for bad in ["", "9342", "node-a:9342", "10.0.0.1:", "10.0.0.1:70000"] {
            assert!(listen_addr(bad).is_err(), "{bad:?}");
        }
    }
}
