//! A small reader for classic pcap files (what `tcpdump -w` writes) that keeps only the DHCP
//! frames: enough for tests to assert what went over the wire ("no DISCOVER", "RELEASE sent").

use std::net::Ipv4Addr;
use std::path::Path;

use crate::bootp::{self, DhcpMessage, MessageType};
use crate::lab_error::LabError;

const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_LINUX_SLL: u32 = 113;
const LINKTYPE_LINUX_SLL2: u32 = 276;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_VLAN: u16 = 0x8100;
const IPPROTO_UDP: u8 = 17;

/// One captured DHCP frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpFrame {
    /// Capture time, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// Ethernet source / destination, when the link type has them.
    pub src_mac: Option<[u8; 6]>,
    pub dst_mac: Option<[u8; 6]>,
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub dhcp: DhcpMessage,
}

impl DhcpFrame {
    pub fn message_type(&self) -> Option<MessageType> {
        self.dhcp.message_type
    }
}

/// Reads a pcap file and returns its DHCP frames in capture order.
pub fn read(path: &Path) -> Result<Vec<DhcpFrame>, LabError> {
    let bytes = std::fs::read(path).map_err(|source| LabError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&bytes)
}

/// One captured frame of any kind (ARP, IP, ...), with its link-layer addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EthernetFrame {
    pub time_ns: u64,
    pub src_mac: Option<[u8; 6]>,
    pub dst_mac: Option<[u8; 6]>,
    pub ethertype: u16,
    /// The network-layer bytes (ARP packet, IPv4 header and on).
    pub payload: Vec<u8>,
}

/// Reads a pcap file and returns every frame in capture order.
pub fn read_ethernet(path: &Path) -> Result<Vec<EthernetFrame>, LabError> {
    let bytes = std::fs::read(path).map_err(|source| LabError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut frames = Vec::new();
    for_each_record(&bytes, |linktype, data, time_ns| {
        if let Some((src_mac, dst_mac, ethertype, payload)) = link_layer(linktype, data) {
            frames.push(EthernetFrame {
                time_ns,
                src_mac,
                dst_mac,
                ethertype,
                payload: payload.to_vec(),
            });
        }
    })?;
    Ok(frames)
}

/// Parses pcap bytes; frames that are not IPv4/UDP/DHCP are skipped.
pub fn parse(bytes: &[u8]) -> Result<Vec<DhcpFrame>, LabError> {
    let mut frames = Vec::new();
    for_each_record(bytes, |linktype, data, time_ns| {
        frames.extend(dhcp_frame(linktype, data, time_ns))
    })?;
    Ok(frames)
}

pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// Calls `each(linktype, frame bytes, capture time in ns)` for every record of a pcap file.
fn for_each_record(bytes: &[u8], mut each: impl FnMut(u32, &[u8], u64)) -> Result<(), LabError> {
    let header = bytes.get(..24).ok_or_else(|| {
        LabError::Pcap(format!("{} bytes, shorter than a pcap header", bytes.len()))
    })?;
    let magic = [header[0], header[1], header[2], header[3]];
    let (big_endian, nanos) = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] => (false, false),
        [0xa1, 0xb2, 0xc3, 0xd4] => (true, false),
        [0x4d, 0x3c, 0xb2, 0xa1] => (false, true),
        [0xa1, 0xb2, 0x3c, 0x4d] => (true, true),
        _ => return Err(LabError::Pcap(format!("magic {magic:02x?}"))),
    };
    let u32_at = |b: &[u8], at: usize| {
        let word = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if big_endian {
            u32::from_be_bytes(word)
        } else {
            u32::from_le_bytes(word)
        }
    };
    let linktype = u32_at(header, 20) & 0x0fff_ffff;
    let mut rest = &bytes[24..];
    while rest.len() >= 16 {
        let (secs, frac, caplen) = (u32_at(rest, 0), u32_at(rest, 4), u32_at(rest, 8) as usize);
        let data = rest
            .get(16..16 + caplen)
            .ok_or_else(|| LabError::Pcap("last record is cut short".into()))?;
        let time_ns =
            u64::from(secs) * 1_000_000_000 + u64::from(frac) * if nanos { 1 } else { 1000 };
        each(linktype, data, time_ns);
        rest = &rest[16 + caplen..];
    }
    Ok(())
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn mac_at(b: &[u8], at: usize) -> Option<[u8; 6]> {
    b.get(at..at + 6)?.try_into().ok()
}

/// Link header -> (src mac, dst mac, ethertype, network-layer bytes).
type LinkLayer<'a> = (Option<[u8; 6]>, Option<[u8; 6]>, u16, &'a [u8]);

fn link_layer(linktype: u32, data: &[u8]) -> Option<LinkLayer<'_>> {
    match linktype {
        LINKTYPE_ETHERNET => {
            let (dst, src) = (mac_at(data, 0)?, mac_at(data, 6)?);
            let mut ethertype = be16(data, 12)?;
            let mut at = 14;
            if ethertype == ETHERTYPE_VLAN {
                ethertype = be16(data, 16)?;
                at = 18;
            }
            Some((Some(src), Some(dst), ethertype, data.get(at..)?))
        }
        LINKTYPE_LINUX_SLL => {
            let src = (be16(data, 4)? == 6).then(|| mac_at(data, 6)).flatten();
            Some((src, None, be16(data, 14)?, data.get(16..)?))
        }
        LINKTYPE_LINUX_SLL2 => {
            let src = (data.get(11) == Some(&6))
                .then(|| mac_at(data, 12))
                .flatten();
            Some((src, None, be16(data, 0)?, data.get(20..)?))
        }
        _ => None,
    }
}

fn dhcp_frame(linktype: u32, data: &[u8], time_ns: u64) -> Option<DhcpFrame> {
    let (src_mac, dst_mac, ethertype, ip) = link_layer(linktype, data)?;
    if ethertype != ETHERTYPE_IPV4 || ip.first()? >> 4 != 4 || *ip.get(9)? != IPPROTO_UDP {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let fragment_offset = be16(ip, 6)? & 0x1fff;
    if fragment_offset != 0 {
        return None;
    }
    let udp = ip.get(ihl..)?;
    let (src_port, dst_port, udp_len) = (be16(udp, 0)?, be16(udp, 2)?, usize::from(be16(udp, 4)?));
    if ![src_port, dst_port].iter().any(|p| *p == 67 || *p == 68) {
        return None;
    }
    let payload = udp.get(8..udp_len.clamp(8, udp.len()))?;
    Some(DhcpFrame {
        time_ns,
        src_mac,
        dst_mac,
        src_ip: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst_ip: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        src_port,
        dst_port,
        dhcp: bootp::decode(payload)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootp::encode_request;

    const MAC: [u8; 6] = [2, 0x77, 0, 0, 0, 1];

    fn discover() -> DhcpMessage {
        DhcpMessage {
            op: 1,
            xid: 7,
            broadcast_flag: true,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            chaddr: MAC,
            message_type: Some(MessageType::Discover),
            requested_ip: None,
            server_id: None,
            client_id: None,
            lease_time: None,
        }
    }

    fn ethernet_udp(payload: &[u8], dst_port: u16) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&MAC);
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let total = (20 + 8 + payload.len()) as u16;
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0, 64, IPPROTO_UDP, 0, 0]);
        f.extend_from_slice(&[0, 0, 0, 0, 255, 255, 255, 255]);
        f.extend_from_slice(&68u16.to_be_bytes());
        f.extend_from_slice(&dst_port.to_be_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    /// A little-endian microsecond pcap file, as tcpdump writes on x86.
    fn pcap_of(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut b = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&262_144u32.to_le_bytes());
        b.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        for (i, f) in frames.iter().enumerate() {
            b.extend_from_slice(&(1_700_000_000u32 + i as u32).to_le_bytes());
            b.extend_from_slice(&500u32.to_le_bytes());
            b.extend_from_slice(&(f.len() as u32).to_le_bytes());
            b.extend_from_slice(&(f.len() as u32).to_le_bytes());
            b.extend_from_slice(f);
        }
        b
    }

    #[test]
    fn keeps_dhcp_frames_and_skips_other_udp() {
        let dhcp = ethernet_udp(&encode_request(&discover()), 67);
        let dns = ethernet_udp(&[0; 300], 53);
        let frames = parse(&pcap_of(&[dns, dhcp])).unwrap();
        assert_eq!(frames.len(), 1);
        let f = &frames[0];
        assert_eq!(f.message_type(), Some(MessageType::Discover));
        assert_eq!(f.dhcp.chaddr, MAC);
        assert_eq!(f.dhcp.xid, 7);
        assert_eq!(f.src_mac, Some(MAC));
        assert_eq!(f.dst_ip, Ipv4Addr::BROADCAST);
        assert_eq!((f.src_port, f.dst_port), (68, 67));
        assert_eq!(f.time_ns, 1_700_000_001 * 1_000_000_000 + 500_000);
    }

    #[test]
    fn empty_capture_has_no_frames() {
        assert_eq!(parse(&pcap_of(&[])).unwrap(), vec![]);
    }

    #[test]
    fn rejects_unknown_magic_and_cut_records() {
        assert!(matches!(parse(&[0; 24]), Err(LabError::Pcap(_))));
        let mut cut = pcap_of(&[ethernet_udp(&encode_request(&discover()), 67)]);
        cut.truncate(cut.len() - 1);
        assert!(matches!(parse(&cut), Err(LabError::Pcap(_))));
    }
}
