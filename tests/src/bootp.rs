//! Pure decoding and encoding of the BOOTP/DHCP payload of a UDP datagram (RFC 2131/2132):
//! just the fields the lab's assertions look at.

use std::net::Ipv4Addr;

const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
const FIXED_LEN: usize = 236;
const BROADCAST_FLAG: u16 = 0x8000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Discover,
    Offer,
    Request,
    Decline,
    Ack,
    Nak,
    Release,
    Inform,
    Other(u8),
}

impl MessageType {
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => Self::Discover,
            2 => Self::Offer,
            3 => Self::Request,
            4 => Self::Decline,
            5 => Self::Ack,
            6 => Self::Nak,
            7 => Self::Release,
            8 => Self::Inform,
            other => Self::Other(other),
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Self::Discover => 1,
            Self::Offer => 2,
            Self::Request => 3,
            Self::Decline => 4,
            Self::Ack => 5,
            Self::Nak => 6,
            Self::Release => 7,
            Self::Inform => 8,
            Self::Other(code) => code,
        }
    }
}

/// One DHCP message as seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpMessage {
    /// 1 = BOOTREQUEST (client to server), 2 = BOOTREPLY.
    pub op: u8,
    pub xid: u32,
    pub broadcast_flag: bool,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub chaddr: [u8; 6],
    /// Option 53; `None` for plain BOOTP.
    pub message_type: Option<MessageType>,
    /// Option 50.
    pub requested_ip: Option<Ipv4Addr>,
    /// Option 54.
    pub server_id: Option<Ipv4Addr>,
    /// Option 61, raw bytes.
    pub client_id: Option<Vec<u8>>,
    /// Option 51, seconds.
    pub lease_time: Option<u32>,
}

fn ipv4_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

fn ipv4_option(value: &[u8]) -> Option<Ipv4Addr> {
    (value.len() == 4).then(|| ipv4_at(value, 0))
}

/// A DISCOVER with the broadcast flag and client id 01 + MAC (as busybox udhcpc sends it).
pub fn discover(mac: [u8; 6], xid: u32) -> DhcpMessage {
    let mut client_id = vec![1];
    client_id.extend_from_slice(&mac);
    DhcpMessage {
        op: 1,
        xid,
        broadcast_flag: true,
        ciaddr: Ipv4Addr::UNSPECIFIED,
        yiaddr: Ipv4Addr::UNSPECIFIED,
        chaddr: mac,
        message_type: Some(MessageType::Discover),
        requested_ip: None,
        server_id: None,
        client_id: Some(client_id),
        lease_time: None,
    }
}

/// Decodes a BOOTP payload; `None` when it is too short or has no DHCP magic cookie.
pub fn decode(b: &[u8]) -> Option<DhcpMessage> {
    if b.len() < FIXED_LEN + MAGIC_COOKIE.len() || b[FIXED_LEN..FIXED_LEN + 4] != MAGIC_COOKIE {
        return None;
    }
    let mut msg = DhcpMessage {
        op: b[0],
        xid: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        broadcast_flag: u16::from_be_bytes([b[10], b[11]]) & BROADCAST_FLAG != 0,
        ciaddr: ipv4_at(b, 12),
        yiaddr: ipv4_at(b, 16),
        chaddr: b[28..34].try_into().ok()?,
        message_type: None,
        requested_ip: None,
        server_id: None,
        client_id: None,
        lease_time: None,
    };
    let mut options = &b[FIXED_LEN + 4..];
    while let [code, rest @ ..] = options {
        match code {
            0 => options = rest,
            255 => break,
            _ => {
                let [len, rest @ ..] = rest else { break };
                let Some(value) = rest.get(..usize::from(*len)) else {
                    break;
                };
                match code {
                    53 if value.len() == 1 => {
                        msg.message_type = Some(MessageType::from_code(value[0]))
                    }
                    50 => msg.requested_ip = ipv4_option(value),
                    54 => msg.server_id = ipv4_option(value),
                    61 => msg.client_id = Some(value.to_vec()),
                    51 if value.len() == 4 => {
                        msg.lease_time = Some(u32::from_be_bytes(value.try_into().ok()?));
                    }
                    _ => {}
                }
                options = &rest[usize::from(*len)..];
            }
        }
    }
    Some(msg)
}

/// Encodes a client message (BOOTREQUEST) with the fields of `msg` that a client sends.
pub fn encode_request(msg: &DhcpMessage) -> Vec<u8> {
    let mut b = vec![0u8; FIXED_LEN];
    b[0] = 1; // BOOTREQUEST
    b[1] = 1; // htype ethernet
    b[2] = 6; // hlen
    b[4..8].copy_from_slice(&msg.xid.to_be_bytes());
    if msg.broadcast_flag {
        b[10..12].copy_from_slice(&BROADCAST_FLAG.to_be_bytes());
    }
    b[12..16].copy_from_slice(&msg.ciaddr.octets());
    b[28..34].copy_from_slice(&msg.chaddr);
    b.extend_from_slice(&MAGIC_COOKIE);
    if let Some(t) = msg.message_type {
        b.extend_from_slice(&[53, 1, t.code()]);
    }
    if let Some(ip) = msg.requested_ip {
        b.extend_from_slice(&[50, 4]);
        b.extend_from_slice(&ip.octets());
    }
    if let Some(ip) = msg.server_id {
        b.extend_from_slice(&[54, 4]);
        b.extend_from_slice(&ip.octets());
    }
    if let Some(id) = &msg.client_id {
        b.extend_from_slice(&[61, id.len() as u8]);
        b.extend_from_slice(id);
    }
    b.extend_from_slice(&[55, 3, 1, 3, 51]); // ask for netmask, router, lease time
    b.push(255);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init_reboot() -> DhcpMessage {
        DhcpMessage {
            op: 1,
            xid: 0xdead_beef,
            broadcast_flag: true,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            chaddr: [2, 0x77, 0, 0, 0, 9],
            message_type: Some(MessageType::Request),
            requested_ip: Some(Ipv4Addr::new(10, 77, 0, 42)),
            server_id: None,
            client_id: Some(vec![1, 2, 0x77, 0, 0, 0, 9]),
            lease_time: None,
        }
    }

    #[test]
    fn encoded_request_decodes_to_itself() {
        let msg = init_reboot();
        assert_eq!(decode(&encode_request(&msg)), Some(msg));
    }

    #[test]
    fn payload_without_magic_cookie_is_not_dhcp() {
        let mut b = encode_request(&init_reboot());
        b[FIXED_LEN] = 0;
        assert_eq!(decode(&b), None);
    }

    #[test]
    fn truncated_option_stops_parsing_without_panic() {
        let mut b = encode_request(&init_reboot());
        b.truncate(FIXED_LEN + 4 + 3 + 2); // message type + half of option 50
        let msg = decode(&b).expect("fixed part is intact");
        assert_eq!(msg.message_type, Some(MessageType::Request));
        assert_eq!(msg.requested_ip, None);
    }
}
