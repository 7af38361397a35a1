//! The classic BPF program that lets a DHCP client's packet socket see only its own replies.
//!
//! Servers broadcast replies that reach every macvlan on the parent (measured: 50 idle sockets
//! queued ~47,000 foreign replies during a 500-lease run), so the kernel must drop everything
//! whose BOOTP `chaddr` is not our MAC before it is queued. The program runs on an
//! `AF_PACKET`/`SOCK_DGRAM` socket, where offset 0 is the first byte of the IP header.

/// One classic BPF instruction, laid out like the kernel's `struct sock_filter`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfInstruction {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

// Opcode parts from <linux/filter.h>.
pub const BPF_LD: u16 = 0x00;
pub const BPF_LDX: u16 = 0x01;
pub const BPF_ALU: u16 = 0x04;
pub const BPF_JMP: u16 = 0x05;
pub const BPF_RET: u16 = 0x06;
pub const BPF_W: u16 = 0x00;
pub const BPF_H: u16 = 0x08;
pub const BPF_B: u16 = 0x10;
pub const BPF_ABS: u16 = 0x20;
pub const BPF_IND: u16 = 0x40;
pub const BPF_MSH: u16 = 0xa0;
pub const BPF_RSH: u16 = 0x70;
pub const BPF_JEQ: u16 = 0x10;
pub const BPF_JSET: u16 = 0x40;
pub const BPF_K: u16 = 0x00;

const IPPROTO_UDP: u32 = 17;
const DHCP_CLIENT_PORT: u32 = 68;
/// Flags MF + fragment offset: any of them set means a fragment, which carries no full reply.
const FRAGMENT_MASK: u32 = 0x3fff;
/// `chaddr` starts 28 bytes into the BOOTP message, which follows the 8-byte UDP header.
const CHADDR_OFFSET_FROM_UDP: u32 = 8 + 28;
/// Accept the whole packet (the kernel truncates to this many bytes).
const ACCEPT: u32 = 0x0004_0000;
const DROP: u32 = 0;

const fn stmt(code: u16, k: u32) -> BpfInstruction {
    BpfInstruction {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> BpfInstruction {
    BpfInstruction { code, jt, jf, k }
}

/// IPv4, UDP, not a fragment, destination port 68, `chaddr` == `mac`; everything else is dropped.
pub fn dhcp_client_filter(mac: [u8; 6]) -> Vec<BpfInstruction> {
    let mac_head = u32::from_be_bytes([mac[0], mac[1], mac[2], mac[3]]);
    let mac_tail = u32::from(u16::from_be_bytes([mac[4], mac[5]]));
    // Jump offsets count instructions after the jump; DROP is the last instruction (index 15).
    let program = vec![
        /* 0 */ stmt(BPF_LD | BPF_B | BPF_ABS, 0),
        /* 1 */ stmt(BPF_ALU | BPF_RSH | BPF_K, 4),
        /* 2 */ jump(BPF_JMP | BPF_JEQ | BPF_K, 4, 0, 12),
        /* 3 */ stmt(BPF_LD | BPF_B | BPF_ABS, 9),
        /* 4 */ jump(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_UDP, 0, 10),
        /* 5 */ stmt(BPF_LD | BPF_H | BPF_ABS, 6),
        /* 6 */ jump(BPF_JMP | BPF_JSET | BPF_K, FRAGMENT_MASK, 8, 0),
        /* 7 */ stmt(BPF_LDX | BPF_B | BPF_MSH, 0),
        /* 8 */ stmt(BPF_LD | BPF_H | BPF_IND, 2),
        /* 9 */ jump(BPF_JMP | BPF_JEQ | BPF_K, DHCP_CLIENT_PORT, 0, 5),
        /* 10 */ stmt(BPF_LD | BPF_W | BPF_IND, CHADDR_OFFSET_FROM_UDP),
        /* 11 */ jump(BPF_JMP | BPF_JEQ | BPF_K, mac_head, 0, 3),
        /* 12 */ stmt(BPF_LD | BPF_H | BPF_IND, CHADDR_OFFSET_FROM_UDP + 4),
        /* 13 */ jump(BPF_JMP | BPF_JEQ | BPF_K, mac_tail, 0, 1),
        /* 14 */ stmt(BPF_RET | BPF_K, ACCEPT),
        /* 15 */ stmt(BPF_RET | BPF_K, DROP),
    ];
    debug_assert_eq!(program.len(), 16);
    program
}

/// Length of the Ethernet header in front of the IP header on a `SOCK_RAW` packet socket.
pub const ETHERNET_HEADER_LEN: u32 = 14;

/// For the one `SOCK_RAW` socket a parent shares among all its linkless addresses (offset 0 is
/// the Ethernet header): IPv4, UDP, not a fragment, destination port 68, and nothing more — the
/// socket's owner hands each reply to its address by `chaddr`, so one filter serves them all.
pub fn dhcp_replies_filter() -> Vec<BpfInstruction> {
    let ip = ETHERNET_HEADER_LEN;
    // DROP is the last instruction (index 11).
    let program = vec![
        /* 0 */ stmt(BPF_LD | BPF_B | BPF_ABS, ip),
        /* 1 */ stmt(BPF_ALU | BPF_RSH | BPF_K, 4),
        /* 2 */ jump(BPF_JMP | BPF_JEQ | BPF_K, 4, 0, 8),
        /* 3 */ stmt(BPF_LD | BPF_B | BPF_ABS, ip + 9),
        /* 4 */ jump(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_UDP, 0, 6),
        /* 5 */ stmt(BPF_LD | BPF_H | BPF_ABS, ip + 6),
        /* 6 */ jump(BPF_JMP | BPF_JSET | BPF_K, FRAGMENT_MASK, 4, 0),
        /* 7 */ stmt(BPF_LDX | BPF_B | BPF_MSH, ip),
        /* 8 */ stmt(BPF_LD | BPF_H | BPF_IND, ip + 2),
        /* 9 */ jump(BPF_JMP | BPF_JEQ | BPF_K, DHCP_CLIENT_PORT, 0, 1),
        /* 10 */ stmt(BPF_RET | BPF_K, ACCEPT),
        /* 11 */ stmt(BPF_RET | BPF_K, DROP),
    ];
    debug_assert_eq!(program.len(), 12);
    program
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::frame::build_udp_datagram;
    use std::net::Ipv4Addr;

    /// Enough of the kernel's classic BPF interpreter for the instructions above. Loads past the
    /// end of the packet drop it, as the kernel does.
    fn run(program: &[BpfInstruction], packet: &[u8]) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let load = |offset: u32, size: usize| -> Option<u32> {
            let start = usize::try_from(offset).ok()?;
            let bytes = packet.get(start..start.checked_add(size)?)?;
            Some(bytes.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
        };
        loop {
            let i = program[pc];
            pc += 1;
            let size = match i.code & 0x18 {
                BPF_W => 4,
                BPF_H => 2,
                _ => 1,
            };
            match i.code & 0x07 {
                BPF_LD => {
                    let offset = match i.code & 0xe0 {
                        BPF_ABS => i.k,
                        BPF_IND => x.wrapping_add(i.k),
                        mode => panic!("unsupported load mode {mode:#x}"),
                    };
                    match load(offset, size) {
                        Some(v) => a = v,
                        None => return 0,
                    }
                }
                BPF_LDX => {
                    assert_eq!(i.code & 0xe0, BPF_MSH, "only ldxb msh is used");
                    match load(i.k, 1) {
                        Some(v) => x = 4 * (v & 0x0f),
                        None => return 0,
                    }
                }
                BPF_ALU => {
                    assert_eq!(i.code & 0xf0, BPF_RSH);
                    a >>= i.k;
                }
                BPF_JMP => {
                    let taken = match i.code & 0xf0 {
                        BPF_JEQ => a == i.k,
                        BPF_JSET => a & i.k != 0,
                        op => panic!("unsupported jump {op:#x}"),
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                BPF_RET => return i.k,
                class => panic!("unsupported class {class:#x}"),
            }
        }
    }

    const MINE: [u8; 6] = [0x02, 0x77, 0x00, 0x00, 0x01, 0x02];
    const OTHER: [u8; 6] = [0x02, 0x77, 0x00, 0x00, 0x01, 0x03];

    fn bootp_reply(chaddr: [u8; 6]) -> Vec<u8> {
        let mut bootp = vec![0u8; 240];
        bootp[0] = 2;
        bootp[28..34].copy_from_slice(&chaddr);
        bootp
    }

    fn reply_packet(chaddr: [u8; 6], dst_port: u16) -> Vec<u8> {
        build_udp_datagram(
            Ipv4Addr::new(10, 77, 0, 1),
            Ipv4Addr::BROADCAST,
            67,
            dst_port,
            &bootp_reply(chaddr),
        )
        .unwrap()
    }

    fn accepts(packet: &[u8]) -> bool {
        run(&dhcp_client_filter(MINE), packet) != 0
    }

    #[test]
    fn accepts_a_reply_for_our_mac() {
        assert_eq!(
            run(&dhcp_client_filter(MINE), &reply_packet(MINE, 68)),
            ACCEPT
        );
    }

    #[test]
    fn drops_a_reply_for_another_mac() {
        assert!(!accepts(&reply_packet(OTHER, 68)));
        let mut first_byte_differs = MINE;
        first_byte_differs[0] ^= 0x80;
        assert!(!accepts(&reply_packet(first_byte_differs, 68)));
    }

    #[test]
    fn drops_other_ports_protocols_versions_and_fragments() {
        assert!(!accepts(&reply_packet(MINE, 67)));
        let mut tcp = reply_packet(MINE, 68);
        tcp[9] = 6;
        assert!(!accepts(&tcp));
        let mut v6 = reply_packet(MINE, 68);
        v6[0] = 0x65;
        assert!(!accepts(&v6));
        let mut more_fragments = reply_packet(MINE, 68);
        more_fragments[6] = 0x20;
        assert!(!accepts(&more_fragments));
        let mut later_fragment = reply_packet(MINE, 68);
        later_fragment[7] = 0x10;
        assert!(!accepts(&later_fragment));
        let mut dont_fragment = reply_packet(MINE, 68);
        dont_fragment[6] = 0x40;
        assert!(accepts(&dont_fragment), "DF is not a fragment");
    }

    #[test]
    fn follows_the_ip_header_length() {
        // Same reply with a 4-byte IP option: the filter must find the UDP header at 24.
        let plain = reply_packet(MINE, 68);
        let mut with_option = plain[..20].to_vec();
        with_option.extend_from_slice(&[1, 1, 1, 0]);
        with_option.extend_from_slice(&plain[20..]);
        with_option[0] = 0x46;
        assert!(accepts(&with_option));
        // Without fixing IHL the port and chaddr land elsewhere and it is dropped.
        with_option[0] = 0x45;
        assert!(!accepts(&with_option));
    }

    #[test]
    fn drops_packets_too_short_to_hold_chaddr() {
        let p = reply_packet(MINE, 68);
        assert!(!accepts(&p[..20 + 8 + 33]));
        assert!(accepts(&p[..20 + 8 + 34]));
        assert!(!accepts(&[]));
    }

    fn in_ethernet(ip_packet: &[u8]) -> Vec<u8> {
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&OTHER);
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(ip_packet);
        frame
    }

    #[test]
    fn the_shared_filter_takes_every_reply_to_port_68_whatever_its_chaddr() {
        let shared = dhcp_replies_filter();
        let accepts = |packet: &[u8]| run(&shared, &in_ethernet(packet)) != 0;
        assert_eq!(run(&shared, &in_ethernet(&reply_packet(MINE, 68))), ACCEPT);
        assert!(accepts(&reply_packet(OTHER, 68)));
        assert!(!accepts(&reply_packet(MINE, 67)), "a client's own DISCOVER");
        let mut tcp = reply_packet(MINE, 68);
        tcp[9] = 6;
        assert!(!accepts(&tcp));
        let mut fragment = reply_packet(MINE, 68);
        fragment[6] = 0x20;
        assert!(!accepts(&fragment));
        let plain = reply_packet(MINE, 68);
        let mut with_option = plain[..20].to_vec();
        with_option.extend_from_slice(&[1, 1, 1, 0]);
        with_option.extend_from_slice(&plain[20..]);
        with_option[0] = 0x46;
        assert!(accepts(&with_option), "follows the IP header length");
        assert!(!accepts(&[]));
        for (pc, i) in shared.iter().enumerate() {
            if i.code & 0x07 == BPF_JMP {
                assert!(pc + 1 + usize::from(i.jt.max(i.jf)) < shared.len());
            }
        }
    }

    #[test]
    fn every_jump_lands_inside_the_program() {
        let program = dhcp_client_filter(MINE);
        for (pc, i) in program.iter().enumerate() {
            if i.code & 0x07 == BPF_JMP {
                assert!(pc + 1 + usize::from(i.jt.max(i.jf)) < program.len());
            }
        }
        assert_eq!(program.last().unwrap().code, BPF_RET | BPF_K);
    }
}
