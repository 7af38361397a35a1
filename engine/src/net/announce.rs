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
//!   after the routing decision: its replies carry a connection mark ([`super::reply_mark`])
//!   and a rule `fwmark <mark>/<mask> lookup <table>` sends them the same way.
//! - **rp_filter**: loose (2) on the macvlan. A DNATed packet is checked against its new
//!   destination (the pod), which the `from` rule does not match; with strict checking and the
//!   node's own route to the client via the parent, it would be dropped.
//! - **Gratuitous ARP** (RFC 5227 announcements) from the macvlan whenever the address is put
//!   on it: when bound, after an IP change, after a takeover.
//!
//! The routes go with the link; the rules are removed when the address is withdrawn.

use std::net::Ipv4Addr;
use std::time::Duration;

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::link::{AfSpecInet, AfSpecUnspec, InetDevConf, LinkAttribute};
use netlink_packet_route::route::RouteScope;
use netlink_packet_route::rule::{RuleAction, RuleAttribute};
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

use super::links::{LinkError, Links};
use super::reply_mark::{self, Marked, ReplyMarks};

/// Priority of our `from <IP>` rules: before the main table's (32766).
pub const RULE_PRIORITY: u32 = 1000;
/// Priority of our `fwmark` rules (replies of connections kube-proxy DNATed), next to the
/// `from` rules.
pub const MARK_RULE_PRIORITY: u32 = 1001;
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

/// The settings of the macvlan itself: those of [`isolating_devconf`] and loose `rp_filter`
/// (2), so that a packet kube-proxy DNATs to a pod is not dropped for arriving on the
/// macvlan while the node's own route to the client is via the parent. The kernel uses the
/// larger of the device's and `all`'s value, so 2 wins over a strict `all`.
pub fn macvlan_devconf() -> InetDevConf {
    let mut conf = isolating_devconf();
    conf.rp_filter = 2;
    conf
}

/// Sets `conf`'s non-zero settings on the link (idempotent).
pub async fn set_devconf(links: &Links, ifindex: u32, conf: InetDevConf) -> Result<(), LinkError> {
    let mut request = LinkUnspec::new_with_index(ifindex).build();
    request
        .attributes
        .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
            AfSpecInet::DevConfRequest(conf),
        ])]));
    timed(
        format!("setting arp_ignore/arp_announce/rp_filter on link {ifindex}"),
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
/// its parent, the address's routing table and its `from` rule. Idempotent. The replies of
/// DNATed connections are [`mark_replies`]'s.
pub async fn install(links: &Links, announcement: &Announcement) -> Result<(), LinkError> {
    let ifindex = announcement.ifindex;
    set_devconf(links, ifindex, macvlan_devconf()).await?;
    if let Some(parent) = parent_of(links, ifindex).await? {
        set_devconf(links, parent, isolating_devconf()).await?;
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

/// Routes the replies of the connections that come in on the macvlan out of it, also those
/// kube-proxy DNATs to a pod: a mark of the address's own (kept if it has one: a restart), the
/// rule `fwmark <mark>/<mask> lookup <table>`, and the address's rules in our nftables table.
/// Idempotent; returns the mark.
pub async fn mark_replies(
    links: &Links,
    marks: &ReplyMarks,
    announcement: &Announcement,
) -> Result<u32, LinkError> {
    // The marks in use are read from the kernel's rules: two addresses of this instance must
    // not pick the same free one at once.
    let _allocating = marks.allocating().await;
    let (ifindex, ip, mask) = (announcement.ifindex, announcement.ip, marks.mask());
    let table = announcement.table();
    let rules = mark_rules(links).await?;
    let mark = match rules
        .iter()
        .find(|r| r.table == table && r.mask == mask && r.mark & !mask == 0 && r.mark != 0)
    {
        Some(ours) => ours.mark,
        None => reply_mark::free_mark(mask, |m| rules.iter().any(|r| r.mark & r.mask & mask == m))
            .ok_or(LinkError::MarksExhausted { ip, mask })?,
    };
    let mut rule = links
        .handle()
        .rule()
        .add()
        .v4()
        .fw_mark(mark)
        .table_id(table)
        .priority(MARK_RULE_PRIORITY)
        .action(RuleAction::ToTable);
    rule.message_mut().header.family = AddressFamily::Inet;
    rule.message_mut()
        .attributes
        .push(RuleAttribute::FwMask(mask));
    match timed(
        format!("adding the rule fwmark {mark:#x}/{mask:#x} lookup {table}"),
        rule.execute(),
    )
    .await
    {
        Err(LinkError::Netlink { source, .. }) if errno_of(&source) == Some(libc::EEXIST) => {}
        other => other?,
    }
    marks
        .mark(ifindex, Marked { ip, mark })
        .map_err(|source| LinkError::ReplyMarks { ip, source })?;
    Ok(mark)
}

/// A `fwmark` rule at [`MARK_RULE_PRIORITY`], as the kernel lists it.
struct MarkRule {
    mark: u32,
    mask: u32,
    table: u32,
    message: netlink_packet_route::rule::RuleMessage,
}

/// Every IPv4 rule at [`MARK_RULE_PRIORITY`] that matches a mark (ours or not: their marks are
/// taken either way).
async fn mark_rules(links: &Links) -> Result<Vec<MarkRule>, LinkError> {
    let mut found = Vec::new();
    let mut rules = links
        .handle()
        .rule()
        .get(rtnetlink::IpVersion::V4)
        .execute();
    while let Some(rule) = timed_value("listing rules".into(), rules.try_next()).await? {
        let attribute =
            |pick: fn(&RuleAttribute) -> Option<u32>| rule.attributes.iter().find_map(pick);
        let priority = attribute(|a| match a {
            RuleAttribute::Priority(p) => Some(*p),
            _ => None,
        });
        let mark = attribute(|a| match a {
            RuleAttribute::FwMark(m) => Some(*m),
            _ => None,
        });
        let mask = attribute(|a| match a {
            RuleAttribute::FwMask(m) => Some(*m),
            _ => None,
        });
        let table = attribute(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        });
        if let (Some(MARK_RULE_PRIORITY), Some(mark)) = (priority, mark) {
            found.push(MarkRule {
                mark,
                mask: mask.unwrap_or(u32::MAX),
                table: table.unwrap_or(u32::from(rule.header.table)),
                message: rule,
            });
        }
    }
    Ok(found)
}

/// Stops marking the replies of `announcement`: its nftables rules and its `fwmark` rules go;
/// what is already gone is not an error. Both are tried whatever fails first.
pub async fn unmark_replies(
    links: &Links,
    marks: &ReplyMarks,
    announcement: &Announcement,
) -> Result<(), LinkError> {
    let ip = announcement.ip;
    let nftables = marks
        .unmark(announcement.ifindex)
        .map_err(|source| LinkError::ReplyMarks { ip, source });
    let table = announcement.table();
    let _allocating = marks.allocating().await;
    for rule in mark_rules(links).await? {
        if rule.table != table {
            continue;
        }
        match links.handle().rule().del(rule.message).execute().await {
            Err(e) if !matches!(errno_of(&e), Some(libc::ENOENT)) => {
                return Err(LinkError::Netlink {
                    action: format!("removing the rule fwmark {:#x} of {ip}", rule.mark),
                    source: e,
                });
            }
            _ => {}
        }
    }
    nftables
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

/// Deletes our `from` rules (priority [`RULE_PRIORITY`], a table of ours) and our `fwmark`
/// rules (priority [`MARK_RULE_PRIORITY`], a mark, a table of ours) whose macvlan no longer
/// exists: left behind by a process killed before it could withdraw them (their tables
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
        let marks = rule
            .attributes
            .iter()
            .any(|a| matches!(a, RuleAttribute::FwMark(_)));
        let ours = match priority {
            Some(RULE_PRIORITY) => true,
            Some(MARK_RULE_PRIORITY) => marks,
            _ => false,
        };
        if ours
            && let Some(table) = table
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
    fn the_macvlan_also_gets_loose_rp_filter_and_the_parent_does_not() {
        let conf = macvlan_devconf();
        assert_eq!(
            (conf.arp_ignore, conf.arp_announce, conf.rp_filter),
            (1, 2, 2)
        );
        assert_eq!(isolating_devconf().rp_filter, 0);
        assert_eq!((conf.forwarding, conf.src_vmark), (0, 0));
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
