//! Test helpers: a scripted DHCP server that answers the client's own transmissions, decoding
//! helpers and a fake clock. Compiled for tests only.

use std::net::Ipv4Addr;

use chrono::{DateTime, TimeDelta, Utc};
use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
use dhcproto::{Decodable, Decoder, Encodable};

use super::client::ReplyMeta;
use super::config::ClientConfig;
use super::event::{Action, ClientEvent};
use super::mac::MacAddr;
use super::message::Transmission;

pub const CLIENT_MAC: MacAddr = MacAddr([0x02, 0xdc, 0x00, 0x00, 0x00, 0x01]);
pub const SERVER_MAC: MacAddr = MacAddr([0x02, 0x5e, 0x00, 0x00, 0x00, 0xfe]);
pub const SERVER_ID: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
pub const OFFERED_IP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 50);

pub fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z")
        .unwrap()
        .to_utc()
}

pub fn secs(seconds: f64) -> TimeDelta {
    TimeDelta::microseconds((seconds * 1e6) as i64)
}

pub fn as_secs(delta: TimeDelta) -> f64 {
    delta.num_microseconds().unwrap() as f64 / 1e6
}

pub fn config() -> ClientConfig {
    let mut cfg = ClientConfig::new(CLIENT_MAC);
    cfg.hostname = Some("web.default".into());
    cfg
}

pub fn meta() -> ReplyMeta {
    ReplyMeta {
        src_mac: SERVER_MAC,
        src_ip: SERVER_ID,
    }
}

pub fn decode(tx: &Transmission) -> Message {
    Message::decode(&mut Decoder::new(&tx.payload)).expect("client sent an undecodable message")
}

pub fn sent(actions: &[Action]) -> Vec<&Transmission> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Send(tx) => Some(tx),
            _ => None,
        })
        .collect()
}

/// The single transmission among the actions.
pub fn only_sent(actions: &[Action]) -> (Transmission, Message) {
    let sent = sent(actions);
    assert_eq!(
        sent.len(),
        1,
        "expected exactly one transmission in {actions:#?}"
    );
    (sent[0].clone(), decode(sent[0]))
}

pub fn events(actions: &[Action]) -> Vec<&ClientEvent> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Event(event) => Some(event),
            _ => None,
        })
        .collect()
}

pub fn msg_type(msg: &Message) -> MessageType {
    msg.opts().msg_type().expect("message type")
}

pub fn requested_ip(msg: &Message) -> Option<Ipv4Addr> {
    match msg.opts().get(dhcproto::v4::OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    }
}

pub fn server_id(msg: &Message) -> Option<Ipv4Addr> {
    match msg.opts().get(dhcproto::v4::OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}

/// A reply to one of the client's requests, built the way dnsmasq/Kea answer: echo xid, chaddr,
/// flags and option 61, name the server, grant the lease.
pub struct ReplyBuilder {
    msg: Message,
}

impl ReplyBuilder {
    pub fn to(request: &Message, kind: MessageType) -> Self {
        let mut msg = request.clone();
        msg.set_opcode(Opcode::BootReply);
        msg.set_ciaddr(Ipv4Addr::UNSPECIFIED);
        msg.set_secs(0);
        msg.set_flags(request.flags());
        let client_id = request
            .opts()
            .get(dhcproto::v4::OptionCode::ClientIdentifier)
            .cloned();
        msg.opts_mut().clear();
        msg.opts_mut().insert(DhcpOption::MessageType(kind));
        msg.opts_mut()
            .insert(DhcpOption::ServerIdentifier(SERVER_ID));
        if let Some(client_id) = client_id {
            msg.opts_mut().insert(client_id);
        }
        let mut builder = ReplyBuilder { msg };
        if kind != MessageType::Nak {
            builder = builder
                .yiaddr(OFFERED_IP)
                .option(DhcpOption::AddressLeaseTime(3600))
                .option(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
                .option(DhcpOption::Router(vec![SERVER_ID]))
                .option(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
                    10, 9, 0, 2,
                )]))
                .option(DhcpOption::DomainName("lab.test".into()));
        }
        builder
    }

    pub fn yiaddr(mut self, ip: Ipv4Addr) -> Self {
        self.msg.set_yiaddr(ip);
        self
    }

    pub fn lease(self, seconds: u32) -> Self {
        self.option(DhcpOption::AddressLeaseTime(seconds))
    }

    pub fn option(mut self, option: DhcpOption) -> Self {
        self.msg.opts_mut().insert(option);
        self
    }

    pub fn without(mut self, code: dhcproto::v4::OptionCode) -> Self {
        self.msg.opts_mut().remove(code);
        self
    }

    pub fn xid(mut self, xid: u32) -> Self {
        self.msg.set_xid(xid);
        self
    }

    pub fn chaddr(mut self, mac: MacAddr) -> Self {
        self.msg.set_chaddr(&mac.octets());
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.msg.to_vec().unwrap()
    }
}
