//! Announcing a leased address with the lease's own MAC, and with no other.
//!
//! Switches doing DHCP snooping with Dynamic ARP Inspection and IP Source Guard bind the leased
//! IP to the MAC that leased it, and drop ARP and IP frames that disagree. Linux, by default,
//! answers ARP for any local address on every interface (`arp_ignore=0`) and picks the source
//! address of its own ARP requests freely (`arp_announce=0`), so an IP on a macvlan would also
//! be answered from the parent with the node's MAC, and replies would leave by whichever route
//! to the client comes first (the parent, when the node has an address in the subnet). So:
//!
//! - **ARP**: `arp_ignore=1` (answer only for addresses of the receiving interface) and
//!   `arp_announce=2` (ask with the best local address of the outgoing interface) on the parent
//!   and on the macvlan, set through rtnetlink (`IFLA_AF_SPEC` → `AF_INET` →
//!   `IFLA_INET_CONF`), since `/proc/sys` is read-only in a hostNetwork pod. The kernel uses
//!   the larger of the device's and `all`'s value, so the device setting is enough.
//! - **Replies**: source-based policy routing: a rule `from <IP> lookup <table>` and, in that
//!   table, the subnet and the default route out of the macvlan. Everything the node sends with
//!   the leased IP as source (replies of sockets bound to it, its own ARP requests) leaves with
//!   the lease's MAC. Traffic that kube-proxy DNATs to a pod gets its source rewritten only
//!   after the routing decision; those replies need a connection mark (not done here, see
//!   docs/engine.md).
//! - **Gratuitous ARP** (RFC 5227 announcements) from the macvlan whenever the address is put
//!   on it: when bound, after an IP change, after a takeover.
//!
//! The routes go with the link; the rule is removed when the address is withdrawn.

use std::net::Ipv4Addr;
use std::time::Duration;

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::link::{AfSpecInet, AfSpecUnspec, InetDevConf, LinkAttribute};
use netlink_packet_route::route::RouteScope;
use netlink_packet_route::rule::{RuleAction, RuleAttribute};
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

use super::links::{LinkError, Links};

/// Priority of our `from <IP>` rules: before the main table's (32766).
pub const RULE_PRIORITY: u32 = 1000;
/// Routing tables of announced addresses are `TABLE_BASE + ifindex of the macvlan` ("dh" in
/// the high bytes: far from the kernel's 253-255 and from what distributions use).
pub const TABLE_BASE: u32 = 0x6468_0000;
/// An operation that takes longer lost a netlink reply.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(20);

/// One address on its macvlan, as announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announcement {
    /// The macvlan holding the address.
    pub ifindex: u32,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    /// The first router of the lease, for the default route of the address's table.
    pub gateway: Option<Ipv4Addr>,
}

impl Announcement {
    pub fn table(&self) -> u32 {
        table_for(self.ifindex)
    }

    /// The subnet of the address (its network address).
    pub fn network(&self) -> Ipv4Addr {
        network_of(self.ip, self.prefix_len)
    }
}

pub fn table_for(ifindex: u32) -> u32 {
    TABLE_BASE | (ifindex & 0xffff)
}

pub fn network_of(ip: Ipv4Addr, prefix_len: u8) -> Ipv4Addr {
    let mask = match prefix_len {
        0 => 0,
        n if n >= 32 => u32::MAX,
        n => u32::MAX << (32 - n),
    };
    Ipv4Addr::from(u32::from(ip) & mask)
}

/// The device settings that keep ARP for an address on the interface that holds it.
pub fn isolating_devconf() -> InetDevConf {
    let mut conf = InetDevConf::default();
    conf.arp_ignore = 1;
    conf.arp_announce = 2;
    conf
}

/// Sets `arp_ignore=1`, `arp_announce=2` on the link (idempotent).
pub async fn isolate_arp(links: &Links, ifindex: u32) -> Result<(), LinkError> {
    let mut request = LinkUnspec::new_with_index(ifindex).build();
    request
        .attributes
        .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
            AfSpecInet::DevConfRequest(isolating_devconf()),
        ])]));
    timed(
        format!("setting arp_ignore/arp_announce on link {ifindex}"),
        links.handle().link().change(request).execute(),
    )
    .await
}

/// The parent of a macvlan, by its `IFLA_LINK`.
pub async fn parent_of(links: &Links, ifindex: u32) -> Result<Option<u32>, LinkError> {
    let mut found = links.handle().link().get().match_index(ifindex).execute();
    let message = timed_value(format!("looking up link {ifindex}"), found.try_next()).await?;
    Ok(message.and_then(|m| {
        m.attributes.iter().find_map(|a| match a {
            LinkAttribute::Link(parent) => Some(*parent),
            _ => None,
        })
    }))
}

/// Makes the address answer and reply from its macvlan only: ARP settings on the macvlan and
/// its parent, the address's routing table and its `from` rule. Idempotent.
pub async fn install(links: &Links, announcement: &Announcement) -> Result<(), LinkError> {
    let ifindex = announcement.ifindex;
    isolate_arp(links, ifindex).await?;
    if let Some(parent) = parent_of(links, ifindex).await? {
        isolate_arp(links, parent).await?;
    }
    let table = announcement.table();
    let subnet = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(announcement.network(), announcement.prefix_len)
        .output_interface(ifindex)
        .pref_source(announcement.ip)
        .scope(RouteScope::Link)
        .table_id(table)
        .build();
    timed(
        format!(
            "adding the subnet route of {} to table {table}",
            announcement.ip
        ),
        links.handle().route().add(subnet).replace().execute(),
    )
    .await?;
    if let Some(gateway) = announcement
        .gateway
        .filter(|g| network_of(*g, announcement.prefix_len) == announcement.network())
    {
        let default = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(ifindex)
            .pref_source(announcement.ip)
            .table_id(table)
            .build();
        timed(
            format!(
                "adding the default route of {} to table {table}",
                announcement.ip
            ),
            links.handle().route().add(default).replace().execute(),
        )
        .await?;
    }
    let rule = rule_request(links, announcement);
    match timed(
        format!("adding the rule from {} lookup {table}", announcement.ip),
        rule.execute(),
    )
    .await
    {
        Err(LinkError::Netlink { source, .. }) if errno_of(&source) == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// Removes the address's `from` rule and its routes; what is already gone is not an error.
pub async fn withdraw(links: &Links, announcement: &Announcement) -> Result<(), LinkError> {
    let mut rule = rule_request(links, announcement);
    let message = rule.message_mut().clone();
    let gone = |e: &rtnetlink::Error| {
        matches!(errno_of(e), Some(libc::ENOENT | libc::ESRCH | libc::ENODEV))
    };
    match links.handle().rule().del(message).execute().await {
        Err(e) if !gone(&e) => {
            return Err(LinkError::Netlink {
                action: format!("removing the rule from {}", announcement.ip),
                source: e,
            });
        }
        _ => {}
    }
    let subnet = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(announcement.network(), announcement.prefix_len)
        .output_interface(announcement.ifindex)
        .table_id(announcement.table())
        .build();
    let default = RouteMessageBuilder::<Ipv4Addr>::new()
        .output_interface(announcement.ifindex)
        .table_id(announcement.table())
        .build();
    for route in [subnet, default] {
        match links.handle().route().del(route).execute().await {
            Err(e) if !gone(&e) => {
                return Err(LinkError::Netlink {
                    action: format!("removing a route of {}", announcement.ip),
                    source: e,
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Deletes our `from` rules (priority [`RULE_PRIORITY`], a table of ours) whose macvlan no
/// longer exists: left behind by a process killed before it could withdraw them (their tables
/// went with the links). A rule whose link exists is kept, whoever owns the link, so several
/// managers on one host never take each other's. Returns how many went.
pub async fn remove_stale_rules(links: &Links) -> Result<usize, LinkError> {
    let handle = links.handle();
    let mut existing = std::collections::HashSet::new();
    let mut dump = handle.link().get().execute();
    while let Some(link) = timed_value("listing links".into(), dump.try_next()).await? {
        existing.insert(link.header.index & 0xffff);
    }
    let mut stale = Vec::new();
    let mut rules = handle.rule().get(rtnetlink::IpVersion::V4).execute();
    while let Some(rule) = timed_value("listing rules".into(), rules.try_next()).await? {
        let priority = rule.attributes.iter().find_map(|a| match a {
            RuleAttribute::Priority(p) => Some(*p),
            _ => None,
        });
        let table = rule.attributes.iter().find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        });
        if let (Some(RULE_PRIORITY), Some(table)) = (priority, table)
            && table & !0xffff == TABLE_BASE
            && !existing.contains(&(table & 0xffff))
        {
            stale.push(rule);
        }
    }
    let count = stale.len();
    for rule in stale {
        match handle.rule().del(rule).execute().await {
            Err(e) if !matches!(errno_of(&e), Some(libc::ENOENT)) => {
                return Err(LinkError::Netlink {
                    action: "removing a stale announcement rule".into(),
                    source: e,
                });
            }
            _ => {}
        }
    }
    Ok(count)
}

fn rule_request(links: &Links, announcement: &Announcement) -> rtnetlink::RuleAddRequest<Ipv4Addr> {
    let mut request = links
        .handle()
        .rule()
        .add()
        .v4()
        .source_prefix(announcement.ip, 32)
        .table_id(announcement.table())
        .priority(RULE_PRIORITY)
        .action(RuleAction::ToTable);
    request.message_mut().header.family = AddressFamily::Inet;
    request
}

async fn timed(
    action: String,
    operation: impl std::future::Future<Output = Result<(), rtnetlink::Error>>,
) -> Result<(), LinkError> {
    match tokio::time::timeout(OPERATION_TIMEOUT, operation).await {
        Ok(result) => result.map_err(|source| LinkError::Netlink { action, source }),
        Err(_) => Err(LinkError::Timeout(action)),
    }
}

async fn timed_value<T>(
    action: String,
    operation: impl std::future::Future<Output = Result<T, rtnetlink::Error>>,
) -> Result<T, LinkError> {
    match tokio::time::timeout(OPERATION_TIMEOUT, operation).await {
        Ok(result) => result.map_err(|source| LinkError::Netlink { action, source }),
        Err(_) => Err(LinkError::Timeout(action)),
    }
}

fn errno_of(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => Some(message.raw_code().abs()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_of_an_address() {
        let ip = Ipv4Addr::new(10, 77, 0, 123);
        assert_eq!(network_of(ip, 24), Ipv4Addr::new(10, 77, 0, 0));
        assert_eq!(network_of(ip, 32), ip);
        assert_eq!(network_of(ip, 0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(network_of(ip, 20), Ipv4Addr::new(10, 77, 0, 0));
        assert_eq!(
            network_of(Ipv4Addr::new(192, 168, 17, 9), 20),
            Ipv4Addr::new(192, 168, 16, 0)
        );
    }

    #[test]
    fn tables_are_per_link_and_away_from_the_kernels() {
        assert_eq!(table_for(7), 0x6468_0007);
        assert_ne!(table_for(7), table_for(8));
        for reserved in [0, 253, 254, 255] {
            assert_ne!(table_for(7), reserved);
        }
    }

    #[test]
    fn the_devconf_request_sets_only_the_two_arp_knobs() {
        let conf = isolating_devconf();
        assert_eq!((conf.arp_ignore, conf.arp_announce), (1, 2));
        // Zero means "not in the request": nothing else is changed.
        assert_eq!(
            (
                conf.rp_filter,
                conf.forwarding,
                conf.arpfilter,
                conf.proxy_arp
            ),
            (0, 0, 0, 0)
        );
    }
}
