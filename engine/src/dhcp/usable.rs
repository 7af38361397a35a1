//! Whether an offered or acknowledged address is a usable host address of its own subnet. A
//! server (or a host forging replies) can offer anything; whatever we bind ends up announced by
//! MetalLB, so an address that would break the segment is refused before it is ever used.

use std::net::Ipv4Addr;

use serde::Serialize;

/// Why an address cannot be a host's address. Each is a `reason` label of the rejected-replies
/// metric (see [`Unusable::label`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Unusable {
    /// 0.0.0.0/8: "this network" (RFC 1122 3.2.1.3), never a destination.
    ThisNetwork,
    /// 127.0.0.0/8.
    Loopback,
    /// 224.0.0.0/3: multicast (224/4) and reserved (240/4, which holds 255.255.255.255).
    MulticastOrReserved,
    /// Subnet mask 0.0.0.0: the address would claim the whole Internet as on-link.
    PrefixZero,
    /// A subnet mask whose ones are not contiguous.
    NonContiguousMask,
    /// The first address of a subnet of /30 or wider.
    NetworkAddress,
    /// The last address of a subnet of /30 or wider.
    BroadcastAddress,
    /// The answering server's own address (its server identifier or the packet's source).
    ServerAddress,
    /// One of the routers the reply names.
    RouterAddress,
    /// A /32 (or a reply without a mask) and no router: nothing would be reachable.
    HostRouteWithoutRouter,
}

impl Unusable {
    pub const ALL: [Unusable; 10] = [
        Unusable::ThisNetwork,
        Unusable::Loopback,
        Unusable::MulticastOrReserved,
        Unusable::PrefixZero,
        Unusable::NonContiguousMask,
        Unusable::NetworkAddress,
        Unusable::BroadcastAddress,
        Unusable::ServerAddress,
        Unusable::RouterAddress,
        Unusable::HostRouteWithoutRouter,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Unusable::ThisNetwork => "this_network",
            Unusable::Loopback => "loopback",
            Unusable::MulticastOrReserved => "multicast_or_reserved",
            Unusable::PrefixZero => "prefix_zero",
            Unusable::NonContiguousMask => "non_contiguous_mask",
            Unusable::NetworkAddress => "network_address",
            Unusable::BroadcastAddress => "broadcast_address",
            Unusable::ServerAddress => "server_address",
            Unusable::RouterAddress => "router_address",
            Unusable::HostRouteWithoutRouter => "host_route_without_router",
        }
    }
}

/// What a reply says about the address it hands out.
#[derive(Debug, Clone, Copy)]
pub struct Offered<'a> {
    pub ip: Ipv4Addr,
    /// Option 1; a reply without it is treated as a /32.
    pub subnet_mask: Option<Ipv4Addr>,
    pub routers: &'a [Ipv4Addr],
    /// The server's own addresses: option 54 and the IP source of the reply.
    pub server: &'a [Ipv4Addr],
}

/// Checks `offered.ip` against its subnet. /31 follows RFC 3021: both addresses are hosts.
pub fn check(offered: Offered<'_>) -> Result<(), Unusable> {
    let ip = offered.ip;
    let first = ip.octets()[0];
    if first == 0 {
        return Err(Unusable::ThisNetwork);
    }
    if first == 127 {
        return Err(Unusable::Loopback);
    }
    if first >= 224 {
        return Err(Unusable::MulticastOrReserved);
    }
    let mask = offered.subnet_mask.map_or(u32::MAX, u32::from);
    if mask == 0 {
        return Err(Unusable::PrefixZero);
    }
    if mask.leading_ones() + mask.trailing_zeros() != 32 {
        return Err(Unusable::NonContiguousMask);
    }
    let prefix = mask.leading_ones();
    let bits = u32::from(ip);
    if prefix <= 30 {
        if bits & !mask == 0 {
            return Err(Unusable::NetworkAddress);
        }
        if bits | mask == u32::MAX {
            return Err(Unusable::BroadcastAddress);
        }
    }
    if offered.server.contains(&ip) {
        return Err(Unusable::ServerAddress);
    }
    if offered.routers.contains(&ip) {
        return Err(Unusable::RouterAddress);
    }
    if prefix == 32 && offered.routers.is_empty() {
        return Err(Unusable::HostRouteWithoutRouter);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
    const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 254);

    fn offered(ip: [u8; 4], mask: Option<[u8; 4]>, routers: &[Ipv4Addr]) -> Result<(), Unusable> {
        check(Offered {
            ip: Ipv4Addr::from(ip),
            subnet_mask: mask.map(Ipv4Addr::from),
            routers,
            server: &[SERVER],
        })
    }

    const SLASH_24: Option<[u8; 4]> = Some([255, 255, 255, 0]);

    /// Address, mask, routers and the verdict expected.
    type Case = ([u8; 4], Option<[u8; 4]>, &'static [Ipv4Addr], Unusable);

    #[test]
    fn ordinary_host_addresses_are_usable() {
        assert_eq!(offered([10, 9, 0, 50], SLASH_24, &[ROUTER]), Ok(()));
        assert_eq!(offered([10, 9, 0, 50], SLASH_24, &[]), Ok(()));
        assert_eq!(offered([10, 9, 0, 253], SLASH_24, &[ROUTER]), Ok(()));
        // A /30 has two hosts.
        assert_eq!(
            offered([10, 9, 0, 5], Some([255, 255, 255, 252]), &[]),
            Ok(())
        );
        assert_eq!(
            offered([10, 9, 0, 6], Some([255, 255, 255, 252]), &[]),
            Ok(())
        );
        // A /32 with a router: the point-to-point style some ISPs hand out.
        assert_eq!(offered([10, 9, 0, 50], Some([255; 4]), &[ROUTER]), Ok(()));
        // 255.255.255.255 as a mask on a /32 is fine, and 223.x is still unicast.
        assert_eq!(offered([223, 1, 2, 3], SLASH_24, &[ROUTER]), Ok(()));
    }

    #[test]
    fn rfc_3021_slash_31_has_no_network_or_broadcast_address() {
        let mask = Some([255, 255, 255, 254]);
        assert_eq!(offered([10, 9, 0, 4], mask, &[]), Ok(()));
        assert_eq!(offered([10, 9, 0, 5], mask, &[]), Ok(()));
    }

    #[test]
    fn each_unusable_kind_is_named() {
        let cases: [Case; 13] = [
            ([0, 0, 0, 0], SLASH_24, &[], Unusable::ThisNetwork),
            ([0, 1, 2, 3], SLASH_24, &[], Unusable::ThisNetwork),
            ([127, 0, 0, 5], SLASH_24, &[], Unusable::Loopback),
            ([224, 0, 0, 5], SLASH_24, &[], Unusable::MulticastOrReserved),
            ([240, 0, 0, 5], SLASH_24, &[], Unusable::MulticastOrReserved),
            (
                [255, 255, 255, 255],
                SLASH_24,
                &[],
                Unusable::MulticastOrReserved,
            ),
            (
                [10, 9, 0, 50],
                Some([0; 4]),
                &[ROUTER],
                Unusable::PrefixZero,
            ),
            (
                [10, 9, 0, 50],
                Some([255, 0, 255, 0]),
                &[],
                Unusable::NonContiguousMask,
            ),
            ([10, 9, 0, 0], SLASH_24, &[], Unusable::NetworkAddress),
            ([10, 9, 0, 255], SLASH_24, &[], Unusable::BroadcastAddress),
            ([10, 9, 0, 1], SLASH_24, &[], Unusable::ServerAddress),
            (
                [10, 9, 0, 254],
                SLASH_24,
                &[ROUTER],
                Unusable::RouterAddress,
            ),
            ([10, 9, 0, 50], None, &[], Unusable::HostRouteWithoutRouter),
        ];
        for (ip, mask, routers, why) in cases {
            assert_eq!(offered(ip, mask, routers), Err(why), "{ip:?} {mask:?}");
        }
        assert_eq!(
            offered([10, 9, 0, 50], Some([255; 4]), &[]),
            Err(Unusable::HostRouteWithoutRouter)
        );
    }
}
