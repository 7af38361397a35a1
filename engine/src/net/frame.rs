//! IPv4 + UDP framing of DHCP payloads for an `AF_PACKET`/`SOCK_DGRAM` socket, where the
//! kernel adds and strips the Ethernet header and we own everything from the IP header on.

use std::net::Ipv4Addr;

pub const DHCP_CLIENT_PORT: u16 = 68;
pub const DHCP_SERVER_PORT: u16 = 67;

const IPV4_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;
const IPPROTO_UDP: u8 = 17;
const TTL: u8 = 64;
/// More-fragments flag plus the 13-bit fragment offset.
const FRAGMENT_MASK: u16 = 0x3fff;

/// Why a received packet is not a DHCP reply for a client; never fatal, the caller skips it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    TooShort(usize),
    NotIpv4(u8),
    BadHeaderLength(usize),
    BadTotalLength { total: usize, captured: usize },
    NotUdp(u8),
    Fragment,
    BadIpChecksum,
    BadUdpLength(usize),
    WrongPort(u16),
    BadUdpChecksum,
    PayloadTooLarge(usize),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooShort(n) => write!(f, "packet of {n} bytes is too short for IPv4 + UDP"),
            Self::NotIpv4(v) => write!(f, "IP version {v}, expected 4"),
            Self::BadHeaderLength(n) => write!(f, "IPv4 header length {n} is invalid"),
            Self::BadTotalLength { total, captured } => {
                write!(
                    f,
                    "IPv4 total length {total} does not fit the {captured} captured bytes"
                )
            }
            Self::NotUdp(p) => write!(f, "IP protocol {p}, expected UDP (17)"),
            Self::Fragment => write!(f, "IPv4 fragment"),
            Self::BadIpChecksum => write!(f, "IPv4 header checksum mismatch"),
            Self::BadUdpLength(n) => write!(f, "UDP length {n} is invalid"),
            Self::WrongPort(p) => write!(f, "UDP destination port {p}, expected 68"),
            Self::BadUdpChecksum => write!(f, "UDP checksum mismatch"),
            Self::PayloadTooLarge(n) => write!(f, "payload of {n} bytes does not fit one datagram"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Whether to check the UDP checksum of a received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpChecksum {
    Verify,
    /// The sender's kernel left the checksum to hardware that a virtual link (veth, macvlan)
    /// never ran, so the field holds only a partial sum (`TP_STATUS_CSUMNOTREADY`).
    NotReady,
}

/// A UDP datagram addressed to the DHCP client port, as taken out of an IPv4 packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedDatagram<'a> {
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub payload: &'a [u8],
}

/// Builds the IPv4 packet carrying `payload` from the client port 68 to the server port 67.
pub fn build_client_datagram(
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
    payload: &[u8],
) -> Result<Vec<u8>, FrameError> {
    build_udp_datagram(src_ip, dst_ip, DHCP_CLIENT_PORT, DHCP_SERVER_PORT, payload)
}

/// Builds an IPv4 packet (TTL 64, DF off, id 0) with a UDP datagram and both checksums.
pub fn build_udp_datagram(
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    payload: &[u8],
) -> Result<Vec<u8>, FrameError> {
    let udp_len = UDP_HEADER_LEN + payload.len();
    let total_len = IPV4_HEADER_LEN + udp_len;
    if total_len > usize::from(u16::MAX) {
        return Err(FrameError::PayloadTooLarge(payload.len()));
    }
    let mut packet = Vec::with_capacity(total_len);
    packet.extend_from_slice(&[0x45, 0]);
    packet.extend_from_slice(&(total_len as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0, 0, 0, TTL, IPPROTO_UDP, 0, 0]);
    packet.extend_from_slice(&src_ip.octets());
    packet.extend_from_slice(&dst_ip.octets());
    let ip_checksum = internet_checksum(&[&packet[..IPV4_HEADER_LEN]]);
    packet[10..12].copy_from_slice(&ip_checksum.to_be_bytes());

    packet.extend_from_slice(&src_port.to_be_bytes());
    packet.extend_from_slice(&dst_port.to_be_bytes());
    packet.extend_from_slice(&(udp_len as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(payload);
    let udp_checksum = udp_checksum(src_ip, dst_ip, &packet[IPV4_HEADER_LEN..]);
    packet[IPV4_HEADER_LEN + 6..IPV4_HEADER_LEN + 8].copy_from_slice(&udp_checksum.to_be_bytes());
    Ok(packet)
}

/// Extracts the UDP payload of an IPv4 packet addressed to port 68. The IP header checksum is
/// always verified, the UDP one when `udp_checksum` says it is ready and the sender computed it
/// (zero means "not computed", RFC 768).
pub fn parse_client_datagram(
    packet: &[u8],
    udp_checksum: UdpChecksum,
) -> Result<ParsedDatagram<'_>, FrameError> {
    if packet.len() < IPV4_HEADER_LEN + UDP_HEADER_LEN {
        return Err(FrameError::TooShort(packet.len()));
    }
    let version = packet[0] >> 4;
    if version != 4 {
        return Err(FrameError::NotIpv4(version));
    }
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    if header_len < IPV4_HEADER_LEN || header_len + UDP_HEADER_LEN > packet.len() {
        return Err(FrameError::BadHeaderLength(header_len));
    }
    let total_len = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    // Ethernet pads short frames, so the capture may be longer than the IP packet, never shorter.
    if total_len < header_len + UDP_HEADER_LEN || total_len > packet.len() {
        return Err(FrameError::BadTotalLength {
            total: total_len,
            captured: packet.len(),
        });
    }
    let packet = &packet[..total_len];
    if packet[9] != IPPROTO_UDP {
        return Err(FrameError::NotUdp(packet[9]));
    }
    if u16::from_be_bytes([packet[6], packet[7]]) & FRAGMENT_MASK != 0 {
        return Err(FrameError::Fragment);
    }
    if internet_checksum(&[&packet[..header_len]]) != 0 {
        return Err(FrameError::BadIpChecksum);
    }
    let src_ip = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst_ip = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);

    let udp = &packet[header_len..];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len < UDP_HEADER_LEN || udp_len > udp.len() {
        return Err(FrameError::BadUdpLength(udp_len));
    }
    let udp = &udp[..udp_len];
    let dst_port = u16::from_be_bytes([udp[2], udp[3]]);
    if dst_port != DHCP_CLIENT_PORT {
        return Err(FrameError::WrongPort(dst_port));
    }
    let sent_checksum = u16::from_be_bytes([udp[6], udp[7]]);
    let verify = udp_checksum == UdpChecksum::Verify && sent_checksum != 0;
    if verify && pseudo_header_sum(src_ip, dst_ip, udp) != 0 {
        return Err(FrameError::BadUdpChecksum);
    }
    Ok(ParsedDatagram {
        src_ip,
        dst_ip,
        payload: &udp[UDP_HEADER_LEN..],
    })
}

/// The UDP checksum to put on the wire: 0 is sent as 0xffff because 0 means "none".
fn udp_checksum(src_ip: Ipv4Addr, dst_ip: Ipv4Addr, udp_with_zero_checksum: &[u8]) -> u16 {
    match pseudo_header_sum(src_ip, dst_ip, udp_with_zero_checksum) {
        0 => 0xffff,
        sum => sum,
    }
}

/// One's-complement checksum over the pseudo header and the UDP datagram; 0 for a valid one.
fn pseudo_header_sum(src_ip: Ipv4Addr, dst_ip: Ipv4Addr, udp: &[u8]) -> u16 {
    let len = (udp.len() as u16).to_be_bytes();
    let pseudo = [0, IPPROTO_UDP, len[0], len[1]];
    internet_checksum(&[&src_ip.octets(), &dst_ip.octets(), &pseudo, udp])
}

/// RFC 1071 checksum over the concatenation of `parts` (each part but the last has even length).
fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        let mut words = part.chunks_exact(2);
        for word in &mut words {
            sum += u32::from(u16::from_be_bytes([word[0], word[1]]));
        }
        if let [last] = words.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    const OFFERED: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 42);

    /// A reply as a server sends it: from port 67 to port 68.
    fn server_reply(payload: &[u8]) -> Vec<u8> {
        build_udp_datagram(SERVER, OFFERED, DHCP_SERVER_PORT, DHCP_CLIENT_PORT, payload).unwrap()
    }

    #[test]
    fn built_datagram_has_the_documented_header() {
        let payload = [1u8, 2, 3, 4, 5];
        let p =
            build_client_datagram(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, &payload).unwrap();
        assert_eq!(p.len(), 20 + 8 + 5);
        assert_eq!(p[0], 0x45);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 33);
        assert_eq!(
            u16::from_be_bytes([p[6], p[7]]),
            0,
            "DF off, not a fragment"
        );
        assert_eq!(p[8], 64);
        assert_eq!(p[9], 17);
        assert_eq!(&p[12..16], &[0, 0, 0, 0]);
        assert_eq!(&p[16..20], &[255, 255, 255, 255]);
        assert_eq!(u16::from_be_bytes([p[20], p[21]]), 68);
        assert_eq!(u16::from_be_bytes([p[22], p[23]]), 67);
        assert_eq!(u16::from_be_bytes([p[24], p[25]]), 13);
        assert_eq!(&p[28..], &payload);
        assert_eq!(internet_checksum(&[&p[..20]]), 0, "IP checksum verifies");
        assert_ne!(
            u16::from_be_bytes([p[26], p[27]]),
            0,
            "UDP checksum is computed"
        );
    }

    #[test]
    fn checksums_match_a_known_packet() {
        // Header from the RFC 1071 / Wikipedia example: checksum 0xb861.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&[&header]), 0xb861);
    }

    #[test]
    fn round_trip_through_the_parser() {
        let payload: Vec<u8> = (0..=255u8).cycle().take(300).collect();
        let p = server_reply(&payload);
        let parsed = parse_client_datagram(&p, UdpChecksum::Verify).unwrap();
        assert_eq!(parsed.src_ip, SERVER);
        assert_eq!(parsed.dst_ip, OFFERED);
        assert_eq!(parsed.payload, &payload[..]);
    }

    #[test]
    fn odd_payload_length_checksums_verify() {
        let p = server_reply(&[7u8; 301]);
        assert!(parse_client_datagram(&p, UdpChecksum::Verify).is_ok());
    }

    #[test]
    fn ethernet_padding_after_the_packet_is_ignored() {
        let mut p = server_reply(&[9u8; 3]);
        p.extend_from_slice(&[0u8; 20]);
        assert_eq!(
            parse_client_datagram(&p, UdpChecksum::Verify)
                .unwrap()
                .payload,
            &[9, 9, 9]
        );
    }

    #[test]
    fn zero_udp_checksum_means_not_computed() {
        let mut p = server_reply(&[1, 2, 3]);
        p[26] = 0;
        p[27] = 0;
        assert!(parse_client_datagram(&p, UdpChecksum::Verify).is_ok());
    }

    #[test]
    fn a_partial_checksum_passes_only_when_not_ready() {
        let mut p = server_reply(&[1, 2, 3]);
        p[26] ^= 0x55;
        assert_eq!(
            parse_client_datagram(&p, UdpChecksum::Verify).unwrap_err(),
            FrameError::BadUdpChecksum
        );
        assert_eq!(
            parse_client_datagram(&p, UdpChecksum::NotReady)
                .unwrap()
                .payload,
            &[1, 2, 3]
        );
    }

    #[test]
    fn ip_options_are_skipped() {
        let inner = server_reply(&[5u8; 10]);
        // Insert one 4-byte option word (NOPs + EOL) and fix IHL, total length and checksum.
        let mut p = inner[..20].to_vec();
        p.extend_from_slice(&[1, 1, 1, 0]);
        p.extend_from_slice(&inner[20..]);
        p[0] = 0x46;
        let total = (p.len() as u16).to_be_bytes();
        p[2..4].copy_from_slice(&total);
        p[10..12].copy_from_slice(&[0, 0]);
        let c = internet_checksum(&[&p[..24]]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(
            parse_client_datagram(&p, UdpChecksum::Verify)
                .unwrap()
                .payload,
            &[5u8; 10]
        );
    }

    #[test]
    fn each_invalid_field_is_rejected() {
        let good = server_reply(&[1, 2, 3, 4]);
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut p = good.clone();
            f(&mut p);
            parse_client_datagram(&p, UdpChecksum::Verify).unwrap_err()
        };
        assert_eq!(with(&|p| p.truncate(27)), FrameError::TooShort(27));
        assert_eq!(with(&|p| p[0] = 0x65), FrameError::NotIpv4(6));
        assert_eq!(with(&|p| p[0] = 0x44), FrameError::BadHeaderLength(16));
        assert_eq!(with(&|p| p[0] = 0x4f), FrameError::BadHeaderLength(60));
        assert!(matches!(
            with(&|p| p[3] = 200),
            FrameError::BadTotalLength { .. }
        ));
        assert_eq!(with(&|p| p[9] = 6), FrameError::NotUdp(6));
        assert_eq!(with(&|p| p[6] = 0x20), FrameError::Fragment);
        assert_eq!(with(&|p| p[7] = 1), FrameError::Fragment);
        assert_eq!(with(&|p| p[8] = 1), FrameError::BadIpChecksum);
        assert_eq!(with(&|p| p[25] = 100), FrameError::BadUdpLength(100));
        assert_eq!(with(&|p| p[25] = 7), FrameError::BadUdpLength(7));
        assert_eq!(with(&|p| p[31] ^= 0xff), FrameError::BadUdpChecksum);
    }

    #[test]
    fn wrong_destination_port_is_rejected() {
        let p = build_udp_datagram(SERVER, OFFERED, 67, 67, &[0]).unwrap();
        assert_eq!(
            parse_client_datagram(&p, UdpChecksum::Verify).unwrap_err(),
            FrameError::WrongPort(67)
        );
    }

    #[test]
    fn oversized_payload_is_an_error() {
        let big = vec![0u8; 65_536];
        assert_eq!(
            build_client_datagram(OFFERED, SERVER, &big).unwrap_err(),
            FrameError::PayloadTooLarge(65_536)
        );
    }

    #[test]
    fn random_and_mutated_bytes_never_panic() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(0x6468_6370);
        let good = server_reply(&[0xabu8; 40]);
        for _ in 0..20_000 {
            let len = rng.random_range(0..120);
            let random: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let _ = parse_client_datagram(&random, UdpChecksum::Verify);

            let mut truncated = good.clone();
            truncated.truncate(rng.random_range(0..good.len()));
            assert!(parse_client_datagram(&truncated, UdpChecksum::Verify).is_err());

            // One changed byte is always caught by a checksum or a field check, so whatever
            // still parses must be the original datagram.
            let mut mutant = good.clone();
            let at = rng.random_range(0..mutant.len());
            mutant[at] = rng.random();
            if let Ok(parsed) = parse_client_datagram(&mutant, UdpChecksum::Verify) {
                assert_eq!(
                    parsed,
                    parse_client_datagram(&good, UdpChecksum::Verify).unwrap()
                );
            }
        }
    }
}
