//! Building each outgoing message form (replies are parsed in `reply.rs`).
//!
//! # Message forms
//!
//! `assigned` is [`ClientConfig::ip_assigned`](super::ClientConfig): whether the leased IP is
//! configured on the macvlan. Without it the kernel drops replies sent to the IP and unicast from
//! 0.0.0.0, so every exchange uses broadcast forms that the measured servers (dnsmasq, Kea, ISC
//! dhcpd, udhcpd) all answer; docs/engine.md ("Message forms") says what each was proven against.
//!
//! | message | when | ciaddr | opt 50 | opt 54 | src IP | dst IP | L2 dst | flags |
//! |---|---|---|---|---|---|---|---|---|
//! | DISCOVER | INIT, SELECTING | 0 | last IP held, if any | - | 0.0.0.0 | 255.255.255.255 | broadcast | config |
//! | REQUEST | REQUESTING | 0 | offered IP | offering server | 0.0.0.0 | 255.255.255.255 | broadcast | config |
//! | REQUEST | REBOOTING (INIT-REBOOT) | 0 | recorded IP | - | 0.0.0.0 | 255.255.255.255 | broadcast | config |
//! | REQUEST | RENEWING, assigned | IP | - | - | IP | server id | server MAC (broadcast if unknown) | config |
//! | REQUEST | REBINDING, assigned | IP | - | - | IP | 255.255.255.255 | broadcast | config |
//! | REQUEST | RENEWING / REBINDING, not assigned | 0 | IP | - | 0.0.0.0 | 255.255.255.255 | broadcast | config |
//! | DECLINE | PROBING found a conflict | 0 | declined IP | server | 0.0.0.0 | 255.255.255.255 | broadcast | 0 |
//! | RELEASE | release(), assigned | IP | - | server | IP | server id | server MAC (broadcast if unknown) | 0 |
//! | RELEASE | release(), not assigned | IP | - | server | IP | 255.255.255.255 | broadcast | 0 |
//!
//! DISCOVER and REQUEST carry 53, 61, 12, 81, 60, 55, 57 and the extra options; `secs` counts
//! from the start of the exchange. DECLINE and RELEASE carry only 53, 50/54 as above and 61:
//! RFC 2131 table 5 forbids the negotiation options there, and no reply is expected, so their
//! broadcast flag is 0.

use std::fmt;
use std::net::Ipv4Addr;

use dhcproto::Encodable;
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType};
use serde::Serialize;

use super::config::ClientConfig;
use super::mac::MacAddr;
use super::options::{client_id_option, negotiation_options};
use super::record::LeaseRecord;

/// The DHCP message type of a transmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum MessageKind {
    Discover,
    Request,
    Decline,
    Release,
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MessageKind::Discover => "DHCPDISCOVER",
            MessageKind::Request => "DHCPREQUEST",
            MessageKind::Decline => "DHCPDECLINE",
            MessageKind::Release => "DHCPRELEASE",
        })
    }
}

/// Where the frame goes at layer 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L2Dest {
    Broadcast,
    Unicast(MacAddr),
}

/// One datagram for the transport to send from the client's macvlan (UDP 68 -> 67).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmission {
    /// The encoded DHCP message.
    pub payload: Vec<u8>,
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub l2_dest: L2Dest,
    pub kind: MessageKind,
}

/// What a REQUEST is for; each purpose has its own form (see the table above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestForm {
    Selecting {
        requested: Ipv4Addr,
        server: Ipv4Addr,
    },
    InitReboot {
        requested: Ipv4Addr,
    },
    Renewing {
        ip: Ipv4Addr,
        server: Ipv4Addr,
        server_mac: Option<MacAddr>,
    },
    Rebinding {
        ip: Ipv4Addr,
    },
}

pub fn discover(
    cfg: &ClientConfig,
    xid: u32,
    secs: u16,
    last_ip: Option<Ipv4Addr>,
) -> Transmission {
    let mut msg = header(cfg, xid, secs, Ipv4Addr::UNSPECIFIED, cfg.broadcast_flag);
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(MessageType::Discover));
    if let Some(ip) = last_ip {
        opts.insert(DhcpOption::RequestedIpAddress(ip));
    }
    insert_all(&mut msg, negotiation_options(cfg));
    broadcast_from_nowhere(msg, MessageKind::Discover)
}

pub fn request(cfg: &ClientConfig, xid: u32, secs: u16, form: RequestForm) -> Transmission {
    let form = match form {
        // The IP is not on the link: a reply to ciaddr could never arrive, so use the
        // INIT-REBOOT form, the one every measured server answers by broadcast.
        RequestForm::Renewing { ip, .. } | RequestForm::Rebinding { ip } if !cfg.ip_assigned => {
            RequestForm::InitReboot { requested: ip }
        }
        form => form,
    };
    let ciaddr = match form {
        RequestForm::Renewing { ip, .. } | RequestForm::Rebinding { ip } => ip,
        _ => Ipv4Addr::UNSPECIFIED,
    };
    let mut msg = header(cfg, xid, secs, ciaddr, cfg.broadcast_flag);
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(MessageType::Request));
    match form {
        RequestForm::Selecting { requested, server } => {
            opts.insert(DhcpOption::RequestedIpAddress(requested));
            opts.insert(DhcpOption::ServerIdentifier(server));
        }
        RequestForm::InitReboot { requested } => {
            opts.insert(DhcpOption::RequestedIpAddress(requested));
        }
        RequestForm::Renewing { .. } | RequestForm::Rebinding { .. } => {}
    }
    insert_all(&mut msg, negotiation_options(cfg));
    match form {
        RequestForm::Renewing {
            ip,
            server,
            server_mac,
        } => Transmission {
            payload: encode(&msg),
            src_ip: ip,
            dst_ip: server,
            l2_dest: server_mac.map_or(L2Dest::Broadcast, L2Dest::Unicast),
            kind: MessageKind::Request,
        },
        RequestForm::Rebinding { ip } => Transmission {
            payload: encode(&msg),
            src_ip: ip,
            dst_ip: Ipv4Addr::BROADCAST,
            l2_dest: L2Dest::Broadcast,
            kind: MessageKind::Request,
        },
        _ => broadcast_from_nowhere(msg, MessageKind::Request),
    }
}

pub fn decline(cfg: &ClientConfig, xid: u32, ip: Ipv4Addr, server: Ipv4Addr) -> Transmission {
    let mut msg = header(cfg, xid, 0, Ipv4Addr::UNSPECIFIED, false);
    insert_all(
        &mut msg,
        vec![
            DhcpOption::MessageType(MessageType::Decline),
            DhcpOption::RequestedIpAddress(ip),
            DhcpOption::ServerIdentifier(server),
            client_id_option(cfg),
        ],
    );
    broadcast_from_nowhere(msg, MessageKind::Decline)
}

pub fn release(cfg: &ClientConfig, xid: u32, record: &LeaseRecord) -> Transmission {
    let mut msg = header(cfg, xid, 0, record.ip, false);
    insert_all(
        &mut msg,
        vec![
            DhcpOption::MessageType(MessageType::Release),
            DhcpOption::ServerIdentifier(record.server_id),
            client_id_option(cfg),
        ],
    );
    let (dst_ip, l2_dest) = if cfg.ip_assigned {
        let l2 = record.server_mac.map_or(L2Dest::Broadcast, L2Dest::Unicast);
        (record.server_id, l2)
    } else {
        // dnsmasq ignores a unicast RELEASE that the kernel cannot route back; all servers
        // honour a broadcast one.
        (Ipv4Addr::BROADCAST, L2Dest::Broadcast)
    };
    Transmission {
        payload: encode(&msg),
        src_ip: record.ip,
        dst_ip,
        l2_dest,
        kind: MessageKind::Release,
    }
}

fn header(cfg: &ClientConfig, xid: u32, secs: u16, ciaddr: Ipv4Addr, broadcast: bool) -> Message {
    let unspecified = Ipv4Addr::UNSPECIFIED;
    let mut msg = Message::new_with_id(
        xid,
        ciaddr,
        unspecified,
        unspecified,
        unspecified,
        &cfg.mac.octets(),
    );
    msg.set_secs(secs);
    msg.set_flags(if broadcast {
        Flags::default().set_broadcast()
    } else {
        Flags::default()
    });
    msg
}

fn insert_all(msg: &mut Message, options: Vec<DhcpOption>) {
    for option in options {
        msg.opts_mut().insert(option);
    }
}

fn broadcast_from_nowhere(msg: Message, kind: MessageKind) -> Transmission {
    Transmission {
        payload: encode(&msg),
        src_ip: Ipv4Addr::UNSPECIFIED,
        dst_ip: Ipv4Addr::BROADCAST,
        l2_dest: L2Dest::Broadcast,
        kind,
    }
}

fn encode(msg: &Message) -> Vec<u8> {
    // dhcproto only fails to encode over-long sname/file fields, which the client never sets.
    msg.to_vec().unwrap_or_default()
}
