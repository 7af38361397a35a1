//! Parsing and validating replies. Raw structural checks run first and only the options the
//! client reads reach dhcproto, so no datagram can make the parser panic (see the property tests).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder};
use serde::Serialize;

use super::mac::MacAddr;
use super::usable::Unusable;

/// Why a received datagram was discarded. Serialized for events and logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "camelCase")]
pub enum RejectReason {
    /// Shorter than the fixed BOOTP header plus magic cookie.
    Truncated {
        len: usize,
    },
    NotBootReply {
        op: u8,
    },
    /// htype/hlen other than Ethernet (1/6).
    NotEthernet {
        htype: u8,
        hlen: u8,
    },
    #[serde(rename_all = "camelCase")]
    WrongXid {
        expected: u32,
        got: u32,
    },
    WrongChaddr {
        got: MacAddr,
    },
    BadMagicCookie,
    /// An option overruns the packet or has a length its type does not allow.
    MalformedOption {
        code: u8,
    },
    /// dhcproto could not decode what the raw checks let through.
    Undecodable,
    MissingMessageType,
    UnexpectedMessageType {
        got: String,
    },
    /// Option 61 present but not ours (RFC 6842: MUST discard).
    ClientIdMismatch,
    /// No option 54 (RFC 2131 table 3: a server MUST send it in OFFER, ACK and NAK).
    MissingServerId,
    /// An ACK or NAK from a server other than the one this state talks to.
    WrongServer {
        expected: Ipv4Addr,
        got: Option<Ipv4Addr>,
    },
    /// An ACK for an address other than the one requested.
    WrongAddress {
        expected: Ipv4Addr,
        got: Ipv4Addr,
    },
    /// An OFFER or ACK whose address is not a usable host address of its subnet.
    UnusableAddress {
        yiaddr: Ipv4Addr,
        why: Unusable,
    },
    MissingLeaseTime,
    ZeroLeaseTime,
    /// The client is in a state that expects no reply (BOUND, PROBING, RELEASED, ...).
    NotExpectingReplies,
}

impl RejectReason {
    /// The `reason` label of the rejected-replies metric: one per variant, and one per kind of
    /// unusable address.
    pub fn label(&self) -> &'static str {
        match self {
            RejectReason::Truncated { .. } => "truncated",
            RejectReason::NotBootReply { .. } => "not_boot_reply",
            RejectReason::NotEthernet { .. } => "not_ethernet",
            RejectReason::WrongXid { .. } => "wrong_xid",
            RejectReason::WrongChaddr { .. } => "wrong_chaddr",
            RejectReason::BadMagicCookie => "bad_magic_cookie",
            RejectReason::MalformedOption { .. } => "malformed_option",
            RejectReason::Undecodable => "undecodable",
            RejectReason::MissingMessageType => "missing_message_type",
            RejectReason::UnexpectedMessageType { .. } => "unexpected_message_type",
            RejectReason::ClientIdMismatch => "client_id_mismatch",
            RejectReason::MissingServerId => "missing_server_id",
            RejectReason::WrongServer { .. } => "wrong_server",
            RejectReason::WrongAddress { .. } => "wrong_address",
            RejectReason::UnusableAddress { why, .. } => why.label(),
            RejectReason::MissingLeaseTime => "missing_lease_time",
            RejectReason::ZeroLeaseTime => "zero_lease_time",
            RejectReason::NotExpectingReplies => "not_expecting_replies",
        }
    }

    /// The labels of the suspicious reasons (see [`RejectReason::is_suspicious`]): metrics show
    /// them from the start, at 0, so an alert on them needs no series to appear first.
    pub fn suspicious_labels() -> impl Iterator<Item = &'static str> {
        ["wrong_server", "wrong_address", "client_id_mismatch"]
            .into_iter()
            .chain(Unusable::ALL.iter().map(|why| why.label()))
    }

    /// Whether the datagram was addressed to us and well formed but said something we must not
    /// accept (another server, another address, an unusable one): worth a warning in the log,
    /// unlike the stray and malformed traffic every shared segment carries.
    pub fn is_suspicious(&self) -> bool {
        matches!(
            self,
            RejectReason::WrongServer { .. }
                | RejectReason::WrongAddress { .. }
                | RejectReason::UnusableAddress { .. }
                | RejectReason::ClientIdMismatch
        )
    }
}

/// The reply types a client can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    Offer,
    Ack,
    Nak,
}

/// What the current state accepts; everything else is rejected.
#[derive(Debug, Clone)]
pub struct Expectation<'a> {
    pub xid: u32,
    pub mac: MacAddr,
    pub client_id: &'a [u8],
    pub kinds: &'a [ReplyKind],
    /// The server an ACK must name; `None`: any server, but it must name itself.
    pub ack_from: Option<Ipv4Addr>,
    /// The server a NAK must name; `None`: any server, but it must name itself.
    pub nak_from: Option<Ipv4Addr>,
    /// The address an ACK must carry in `yiaddr`: the one requested.
    pub address: Option<Ipv4Addr>,
}

/// A validated reply, reduced to what the client uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub kind: ReplyKind,
    pub yiaddr: Ipv4Addr,
    pub server_id: Option<Ipv4Addr>,
    pub lease_seconds: Option<u32>,
    pub t1_seconds: Option<u32>,
    pub t2_seconds: Option<u32>,
    pub subnet_mask: Option<Ipv4Addr>,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain_name: Option<String>,
    pub message: Option<String>,
}

impl Reply {
    pub fn prefix_len(&self) -> u8 {
        // Counts leading ones; a non-contiguous mask is malformed and this is the usable part.
        self.subnet_mask
            .map_or(32, |mask| u32::from(mask).leading_ones() as u8)
    }
}

const BOOTP_HEADER_LEN: usize = 236;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// The options the client reads. Only these reach dhcproto, so a hostile option elsewhere can
/// neither trip one of its decoding assertions nor stop it from decoding the ones we need.
const READ_OPTIONS: [u8; 11] = [1, 3, 6, 15, 51, 53, 54, 56, 58, 59, 61];

/// Checks a datagram against the expectation and decodes it. Never panics, whatever the bytes.
pub fn parse_reply(payload: &[u8], expect: &Expectation<'_>) -> Result<Reply, RejectReason> {
    check_header(payload, expect)?;
    let options = read_options(&payload[BOOTP_HEADER_LEN + 4..])?;
    let msg = decode_sanitized(&payload[..BOOTP_HEADER_LEN + 4], &options)?;
    let reply = extract(&msg)?;
    validate(&reply, &options, expect)?;
    Ok(reply)
}

fn check_header(payload: &[u8], expect: &Expectation<'_>) -> Result<(), RejectReason> {
    if payload.len() < BOOTP_HEADER_LEN + 4 {
        return Err(RejectReason::Truncated { len: payload.len() });
    }
    if payload[0] != 2 {
        return Err(RejectReason::NotBootReply { op: payload[0] });
    }
    if payload[1] != 1 || payload[2] != 6 {
        return Err(RejectReason::NotEthernet {
            htype: payload[1],
            hlen: payload[2],
        });
    }
    let xid = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
    if xid != expect.xid {
        return Err(RejectReason::WrongXid {
            expected: expect.xid,
            got: xid,
        });
    }
    let chaddr = [
        payload[28],
        payload[29],
        payload[30],
        payload[31],
        payload[32],
        payload[33],
    ];
    if chaddr != expect.mac.octets() {
        return Err(RejectReason::WrongChaddr {
            got: MacAddr(chaddr),
        });
    }
    if payload[BOOTP_HEADER_LEN..BOOTP_HEADER_LEN + 4] != MAGIC_COOKIE {
        return Err(RejectReason::BadMagicCookie);
    }
    Ok(())
}

/// Walks the option TLVs, concatenating repeated codes (RFC 3396), and keeps the ones we read
/// after checking each has a length its type allows.
fn read_options(mut rest: &[u8]) -> Result<BTreeMap<u8, Vec<u8>>, RejectReason> {
    let mut options: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
    while let Some((&code, tail)) = rest.split_first() {
        match code {
            0 => rest = tail,
            255 => break,
            _ => {
                let Some((&len, tail)) = tail.split_first() else {
                    return Err(RejectReason::MalformedOption { code });
                };
                let len = usize::from(len);
                if tail.len() < len {
                    return Err(RejectReason::MalformedOption { code });
                }
                if READ_OPTIONS.contains(&code) {
                    options
                        .entry(code)
                        .or_default()
                        .extend_from_slice(&tail[..len]);
                }
                rest = &tail[len..];
            }
        }
    }
    for (&code, value) in options.iter_mut() {
        let fits = match code {
            53 => value.len() == 1,
            1 | 51 | 54 | 58 | 59 => value.len() == 4,
            3 | 6 => !value.is_empty() && value.len() % 4 == 0,
            61 => !value.is_empty(),
            // Text options: invalid UTF-8 would make dhcproto stop decoding; keep it readable.
            15 | 56 => {
                *value = String::from_utf8_lossy(value).into_owned().into_bytes();
                true
            }
            _ => true,
        };
        if !fits {
            return Err(RejectReason::MalformedOption { code });
        }
    }
    Ok(options)
}

fn decode_sanitized(
    header: &[u8],
    options: &BTreeMap<u8, Vec<u8>>,
) -> Result<Message, RejectReason> {
    let mut packet = header.to_vec();
    for (&code, value) in options {
        // Long values are split into 255-byte chunks again, which dhcproto re-joins.
        for chunk in value.chunks(255).chain(value.is_empty().then_some(&[][..])) {
            packet.push(code);
            packet.push(chunk.len() as u8);
            packet.extend_from_slice(chunk);
        }
    }
    packet.push(255);
    let msg = Message::decode(&mut Decoder::new(&packet)).map_err(|_| RejectReason::Undecodable)?;
    // dhcproto stops at the first option it cannot decode instead of failing: compare counts.
    if msg.opts().len() != options.len() {
        return Err(RejectReason::Undecodable);
    }
    Ok(msg)
}

fn extract(msg: &Message) -> Result<Reply, RejectReason> {
    if msg.opcode() != Opcode::BootReply {
        return Err(RejectReason::Undecodable);
    }
    let kind = match msg.opts().msg_type() {
        None => return Err(RejectReason::MissingMessageType),
        Some(MessageType::Offer) => ReplyKind::Offer,
        Some(MessageType::Ack) => ReplyKind::Ack,
        Some(MessageType::Nak) => ReplyKind::Nak,
        Some(other) => {
            return Err(RejectReason::UnexpectedMessageType {
                got: format!("{other:?}"),
            });
        }
    };
    let mut reply = Reply {
        kind,
        yiaddr: msg.yiaddr(),
        server_id: None,
        lease_seconds: None,
        t1_seconds: None,
        t2_seconds: None,
        subnet_mask: None,
        routers: Vec::new(),
        dns: Vec::new(),
        domain_name: None,
        message: None,
    };
    for (_, option) in msg.opts().iter() {
        match option {
            DhcpOption::ServerIdentifier(ip) => reply.server_id = Some(*ip),
            DhcpOption::AddressLeaseTime(secs) => reply.lease_seconds = Some(*secs),
            DhcpOption::Renewal(secs) => reply.t1_seconds = Some(*secs),
            DhcpOption::Rebinding(secs) => reply.t2_seconds = Some(*secs),
            DhcpOption::SubnetMask(mask) => reply.subnet_mask = Some(*mask),
            DhcpOption::Router(ips) => reply.routers = ips.clone(),
            DhcpOption::DomainNameServer(ips) => reply.dns = ips.clone(),
            DhcpOption::DomainName(name) => reply.domain_name = Some(name.clone()),
            DhcpOption::Message(text) => reply.message = Some(text.clone()),
            _ => {}
        }
    }
    Ok(reply)
}

fn validate(
    reply: &Reply,
    options: &BTreeMap<u8, Vec<u8>>,
    expect: &Expectation<'_>,
) -> Result<(), RejectReason> {
    if !expect.kinds.contains(&reply.kind) {
        return Err(RejectReason::UnexpectedMessageType {
            got: format!("{:?}", reply.kind),
        });
    }
    if let Some(client_id) = options.get(&u8::from(OptionCode::ClientIdentifier))
        && client_id.as_slice() != expect.client_id
    {
        return Err(RejectReason::ClientIdMismatch);
    }
    let must_name = match reply.kind {
        ReplyKind::Offer => None,
        ReplyKind::Ack => expect.ack_from,
        ReplyKind::Nak => expect.nak_from,
    };
    match (must_name, reply.server_id) {
        (Some(expected), got) if got != Some(expected) => {
            return Err(RejectReason::WrongServer { expected, got });
        }
        (None, None) => return Err(RejectReason::MissingServerId),
        _ => {}
    }
    if reply.kind == ReplyKind::Ack
        && let Some(expected) = expect.address
        && reply.yiaddr != expected
    {
        return Err(RejectReason::WrongAddress {
            expected,
            got: reply.yiaddr,
        });
    }
    if reply.kind == ReplyKind::Ack {
        match reply.lease_seconds {
            None => return Err(RejectReason::MissingLeaseTime),
            Some(0) => return Err(RejectReason::ZeroLeaseTime),
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::message::{RequestForm, request};
    use crate::dhcp::options::own_client_id;
    use crate::dhcp::testkit::{CLIENT_MAC, OFFERED_IP, ReplyBuilder, SERVER_ID, config};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const XID: u32 = 0x1234_5678;

    fn our_request() -> Message {
        let tx = request(
            &config(),
            XID,
            0,
            RequestForm::Selecting {
                requested: OFFERED_IP,
                server: SERVER_ID,
            },
        );
        Message::decode(&mut Decoder::new(&tx.payload)).unwrap()
    }

    fn expect_ack(client_id: &[u8]) -> Expectation<'_> {
        Expectation {
            xid: XID,
            mac: CLIENT_MAC,
            client_id,
            kinds: &[ReplyKind::Ack, ReplyKind::Nak],
            ack_from: Some(SERVER_ID),
            nak_from: Some(SERVER_ID),
            address: Some(OFFERED_IP),
        }
    }

    #[test]
    fn a_well_formed_ack_parses_into_its_values() {
        let client_id = own_client_id(&config());
        let ack = ReplyBuilder::to(&our_request(), MessageType::Ack)
            .option(DhcpOption::Renewal(10))
            .option(DhcpOption::Rebinding(20))
            .bytes();
        let reply = parse_reply(&ack, &expect_ack(&client_id)).unwrap();
        assert_eq!(reply.kind, ReplyKind::Ack);
        assert_eq!(reply.yiaddr, OFFERED_IP);
        assert_eq!(reply.server_id, Some(SERVER_ID));
        assert_eq!(
            (reply.lease_seconds, reply.t1_seconds, reply.t2_seconds),
            (Some(3600), Some(10), Some(20))
        );
        assert_eq!(reply.prefix_len(), 24);
        assert_eq!(reply.domain_name.as_deref(), Some("lab.test"));
    }

    #[test]
    fn repeated_options_are_concatenated_and_hostile_unread_options_are_skipped() {
        let client_id = own_client_id(&config());
        let mut ack = ReplyBuilder::to(&our_request(), MessageType::Ack)
            .without(OptionCode::DomainName)
            .bytes();
        ack.pop(); // End
        // RFC 3396: "lab" + ".test" split over two instances of option 15.
        ack.extend_from_slice(&[15, 3, b'l', b'a', b'b', 15, 5, b'.', b't', b'e', b's', b't']);
        // Option 81 with a length dhcproto would assert on, and invalid UTF-8 in option 56.
        ack.extend_from_slice(&[81, 1, 0, 56, 2, 0xff, 0xfe, 255]);
        let reply = parse_reply(&ack, &expect_ack(&client_id)).unwrap();
        assert_eq!(reply.domain_name.as_deref(), Some("lab.test"));
    }

    #[test]
    fn fixed_length_options_with_wrong_lengths_are_malformed() {
        let client_id = own_client_id(&config());
        for (code, body) in [
            (51u8, vec![0, 0, 1]),
            (54, vec![10, 9, 0]),
            (53, vec![5, 5]),
            (3, vec![1, 2, 3, 4, 5]),
        ] {
            let mut ack = ReplyBuilder::to(&our_request(), MessageType::Ack)
                .without(OptionCode::from(code))
                .bytes();
            ack.pop();
            ack.push(code);
            ack.push(body.len() as u8);
            ack.extend_from_slice(&body);
            ack.push(255);
            assert_eq!(
                parse_reply(&ack, &expect_ack(&client_id)),
                Err(RejectReason::MalformedOption { code })
            );
        }
    }

    /// Property: whatever the bytes, parsing returns (never panics), and anything accepted is an
    /// ACK or NAK for our xid and MAC. Run in debug builds so dhcproto's debug assertions are armed.
    #[test]
    fn random_and_mutated_replies_never_panic() {
        let client_id = own_client_id(&config());
        let expect = expect_ack(&client_id);
        let valid = ReplyBuilder::to(&our_request(), MessageType::Ack)
            .option(DhcpOption::Renewal(10))
            .option(DhcpOption::Message("hello".into()))
            .bytes();
        assert!(parse_reply(&valid, &expect).is_ok());
        let mut rng = StdRng::seed_from_u64(0xdcb);
        let mut accepted = 0;
        let mut rejected = 0;
        for round in 0..30_000 {
            let payload = match round % 4 {
                // Pure noise of any length.
                0 => {
                    let len = rng.random_range(0..700);
                    (0..len).map(|_| rng.random()).collect::<Vec<u8>>()
                }
                // A valid header (our xid, MAC, cookie) followed by random option bytes.
                1 => {
                    let mut bytes = valid[..240].to_vec();
                    let len = rng.random_range(0..400);
                    bytes.extend((0..len).map(|_| rng.random::<u8>()));
                    bytes
                }
                // A valid reply with a few bytes flipped anywhere.
                2 => {
                    let mut bytes = valid.clone();
                    for _ in 0..rng.random_range(1..6) {
                        let at = rng.random_range(0..bytes.len());
                        bytes[at] = rng.random();
                    }
                    bytes
                }
                // A valid reply cut short, with random option TLVs spliced in.
                _ => {
                    let mut bytes = valid[..rng.random_range(0..valid.len())].to_vec();
                    for _ in 0..rng.random_range(0..8) {
                        let code = rng.random::<u8>();
                        let len = rng.random_range(0..6u8);
                        bytes.push(code);
                        bytes.push(len);
                        bytes.extend((0..len).map(|_| rng.random::<u8>()));
                    }
                    bytes
                }
            };
            match parse_reply(&payload, &expect) {
                Ok(reply) => {
                    accepted += 1;
                    assert!(matches!(reply.kind, ReplyKind::Ack | ReplyKind::Nak));
                    assert_eq!(&payload[4..8], &XID.to_be_bytes());
                    assert_eq!(&payload[28..34], &CLIENT_MAC.octets());
                }
                Err(_) => rejected += 1,
            }
        }
        // Both outcomes must actually occur, or the generator is not exercising the parser.
        assert!(
            accepted > 100 && rejected > 10_000,
            "accepted {accepted}, rejected {rejected}"
        );
    }

    #[test]
    fn hostile_hardware_length_is_rejected_before_dhcproto_sees_it() {
        let client_id = own_client_id(&config());
        let mut ack = ReplyBuilder::to(&our_request(), MessageType::Ack).bytes();
        ack[2] = 200;
        assert_eq!(
            parse_reply(&ack, &expect_ack(&client_id)),
            Err(RejectReason::NotEthernet {
                htype: 1,
                hlen: 200
            })
        );
    }
}
