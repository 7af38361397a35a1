//! RFC 5227 address conflict detection: before using an offered address the client probes for
//! it with ARP and must DECLINE it if another host answers or probes for it too.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::fd::OwnedFd;
use std::time::Duration;

use rand::Rng;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::time::{Instant, sleep_until};

use super::packet_socket::{
    BROADCAST_MAC, bind_to_interface, link_address, packet_socket, recv_from, send_to,
};

const ETH_P_ARP: u16 = 0x0806;
const ARP_PACKET_LEN: usize = 28;
const ARPOP_REQUEST: u16 = 1;
const ARPOP_REPLY: u16 = 2;

/// The RFC 5227 timing constants, passed in so tests can scale them down.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeTiming {
    /// The first probe waits a random time in `0..=probe_wait`.
    pub probe_wait: Duration,
    pub probe_num: u32,
    pub probe_min: Duration,
    pub probe_max: Duration,
    /// How long to keep listening after the last probe.
    pub announce_wait: Duration,
}

impl ProbeTiming {
    /// PROBE_WAIT 1 s, PROBE_NUM 3, PROBE_MIN 1 s, PROBE_MAX 2 s, ANNOUNCE_WAIT 2 s.
    pub const RFC5227: Self = Self {
        probe_wait: Duration::from_secs(1),
        probe_num: 3,
        probe_min: Duration::from_secs(1),
        probe_max: Duration::from_secs(2),
        announce_wait: Duration::from_secs(2),
    };

    /// The RFC timing multiplied by `factor` (e.g. 0.01 in tests).
    pub fn scaled(factor: f64) -> Self {
        let r = Self::RFC5227;
        Self {
            probe_wait: r.probe_wait.mul_f64(factor),
            probe_num: r.probe_num,
            probe_min: r.probe_min.mul_f64(factor),
            probe_max: r.probe_max.mul_f64(factor),
            announce_wait: r.announce_wait.mul_f64(factor),
        }
    }
}

/// An ARP probe (RFC 5227 2.1.1): request, sender IP 0.0.0.0, target hardware address zero.
pub fn build_probe(mac: [u8; 6], ip: Ipv4Addr) -> [u8; ARP_PACKET_LEN] {
    let mut p = [0u8; ARP_PACKET_LEN];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&ARPOP_REQUEST.to_be_bytes());
    p[8..14].copy_from_slice(&mac);
    // sender IP (14..18) and target MAC (18..24) stay zero
    p[24..28].copy_from_slice(&ip.octets());
    p
}

/// An ARP announcement (RFC 5227 2.3, "gratuitous ARP"): a request whose sender and target IP
/// are both `ip`, from `mac`. Neighbours and switches update their tables from it.
pub fn build_announcement(mac: [u8; 6], ip: Ipv4Addr) -> [u8; ARP_PACKET_LEN] {
    let mut p = build_probe(mac, ip);
    p[14..18].copy_from_slice(&ip.octets());
    p
}

/// Sends one announcement of `ip` from `mac` on interface `ifindex`, broadcast; in the calling
/// thread's network namespace (the socket is closed afterwards).
pub fn announce(ifindex: u32, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<()> {
    let fd = arp_socket(ifindex)?;
    let dest = link_address(ifindex, ETH_P_ARP, BROADCAST_MAC);
    send_to(fd.as_raw_fd(), &build_announcement(mac, ip), &dest)
}

/// Whether a received ARP packet shows that another host uses, or also probes for, `ip`
/// (RFC 5227 2.1.1). Packets from our own MAC and malformed packets never conflict.
pub fn is_conflict(packet: &[u8], our_mac: [u8; 6], ip: Ipv4Addr) -> bool {
    let Some(p) = packet.get(..ARP_PACKET_LEN) else {
        return false;
    };
    let ethernet_ipv4 = p[0..2] == [0, 1] && p[2..4] == [8, 0] && p[4] == 6 && p[5] == 4;
    if !ethernet_ipv4 || p[8..14] == our_mac {
        return false;
    }
    let op = u16::from_be_bytes([p[6], p[7]]);
    let sender_ip = Ipv4Addr::new(p[14], p[15], p[16], p[17]);
    let target_ip = Ipv4Addr::new(p[24], p[25], p[26], p[27]);
    match op {
        ARPOP_REQUEST | ARPOP_REPLY if sender_ip == ip => true,
        ARPOP_REQUEST => sender_ip.is_unspecified() && target_ip == ip,
        _ => false,
    }
}

/// An ARP packet socket on one interface, opened in the calling thread's network namespace
/// (see [`crate::net::NetNs`] for opening it elsewhere).
pub fn arp_socket(ifindex: u32) -> io::Result<OwnedFd> {
    let fd = packet_socket(ETH_P_ARP)?;
    bind_to_interface(fd.as_raw_fd(), ifindex, ETH_P_ARP)?;
    Ok(fd)
}

/// Probes for `ip` on interface `ifindex` from `mac`; `Ok(true)` means the address is in use.
/// Runs in the calling thread's network namespace, inside a tokio runtime.
pub async fn probe(
    ifindex: u32,
    mac: [u8; 6],
    ip: Ipv4Addr,
    timing: ProbeTiming,
) -> io::Result<bool> {
    probe_on(arp_socket(ifindex)?, ifindex, mac, ip, timing).await
}

/// [`probe`] on a socket from [`arp_socket`].
pub async fn probe_on(
    fd: OwnedFd,
    ifindex: u32,
    mac: [u8; 6],
    ip: Ipv4Addr,
    timing: ProbeTiming,
) -> io::Result<bool> {
    probe_with(fd, ifindex, mac, ip, timing, Framing::Kernel).await
}

/// [`probe`] for a linkless address, on a socket from [`parent_arp_socket`]: in frames whose
/// Ethernet source is the address's `mac` (not the parent's), so the probe looks exactly like one
/// from the address's own macvlan. Replies to `mac` reach the socket through the address's unicast
/// membership on the parent (see [`crate::net::parent_socket`]).
pub async fn probe_on_raw(
    fd: OwnedFd,
    parent_ifindex: u32,
    mac: [u8; 6],
    ip: Ipv4Addr,
    timing: ProbeTiming,
) -> io::Result<bool> {
    probe_with(fd, parent_ifindex, mac, ip, timing, Framing::Ours).await
}

/// A `SOCK_RAW` ARP socket on the parent (see [`probe_on_raw`]), opened in the calling thread's
/// network namespace.
pub fn parent_arp_socket(parent_ifindex: u32) -> io::Result<OwnedFd> {
    let fd = super::parent_socket::raw_packet_socket()?;
    bind_to_interface(fd.as_raw_fd(), parent_ifindex, ETH_P_ARP)?;
    Ok(fd)
}

/// Who writes the Ethernet header: the kernel (`SOCK_DGRAM`, the link's MAC) or we (`SOCK_RAW`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Kernel,
    Ours,
}

async fn probe_with(
    fd: OwnedFd,
    ifindex: u32,
    mac: [u8; 6],
    ip: Ipv4Addr,
    timing: ProbeTiming,
    framing: Framing,
) -> io::Result<bool> {
    // SAFETY: we own this fd and keep it open, unreplaced, for as long as the AsyncFd lives.
    let fd = unsafe { AsyncFd::register(fd)? };
    let dest = link_address(ifindex, ETH_P_ARP, BROADCAST_MAC);
    let (request, header) = match framing {
        Framing::Kernel => (build_probe(mac, ip).to_vec(), 0),
        Framing::Ours => (
            super::parent_socket::ethernet_frame(
                BROADCAST_MAC,
                mac,
                ETH_P_ARP,
                &build_probe(mac, ip),
            ),
            14,
        ),
    };

    // StdRng, not ThreadRng: this future must be Send (it runs inside spawned driver tasks).
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
    let mut next_probe =
        Instant::now() + random_between(&mut rng, Duration::ZERO, timing.probe_wait);
    let mut probes_sent = 0;
    let mut deadline = None;
    let mut buf = [0u8; 64];
    loop {
        let wake_at = deadline.unwrap_or(next_probe);
        tokio::select! {
            received = fd.async_io(Interest::READABLE, |fd| recv_from(fd.as_raw_fd(), &mut buf)) => {
                let (len, from) = received?;
                let arp = buf.get(header..len).unwrap_or_default();
                if from.sll_pkttype != libc::PACKET_OUTGOING && is_conflict(arp, mac, ip) {
                    return Ok(true);
                }
            }
            () = sleep_until(wake_at) => {
                if deadline.is_some() {
                    return Ok(false);
                }
                send_to(fd.get_ref().as_raw_fd(), &request, &dest)?;
                probes_sent += 1;
                if probes_sent >= timing.probe_num {
                    deadline = Some(Instant::now() + timing.announce_wait);
                } else {
                    next_probe = Instant::now()
                        + random_between(&mut rng, timing.probe_min, timing.probe_max);
                }
            }
        }
    }
}

fn random_between(rng: &mut impl Rng, low: Duration, high: Duration) -> Duration {
    if high <= low {
        return low;
    }
    rng.random_range(low..=high)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: [u8; 6] = [2, 0x77, 0, 0, 0, 1];
    const THEIRS: [u8; 6] = [2, 0x77, 0, 0, 0, 2];
    const IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 42);
    const OTHER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 43);

    fn arp(op: u16, sender_mac: [u8; 6], sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Vec<u8> {
        let mut p = build_probe(sender_mac, target_ip).to_vec();
        p[6..8].copy_from_slice(&op.to_be_bytes());
        p[14..18].copy_from_slice(&sender_ip.octets());
        p
    }

    #[test]
    fn probe_has_the_rfc_5227_form() {
        let p = build_probe(OURS, IP);
        assert_eq!(&p[..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&p[8..14], &OURS);
        assert_eq!(&p[14..24], &[0; 10], "sender IP and target MAC are zero");
        assert_eq!(&p[24..28], &IP.octets());
    }

    #[test]
    fn an_announcement_names_the_address_as_sender_and_target() {
        let p = build_announcement(OURS, IP);
        assert_eq!(&p[..8], &[0, 1, 8, 0, 6, 4, 0, 1], "an ARP request");
        assert_eq!(&p[8..14], &OURS);
        assert_eq!(&p[14..18], &IP.octets());
        assert_eq!(&p[18..24], &[0; 6]);
        assert_eq!(&p[24..28], &IP.octets());
        // Another host announcing our address is a conflict, our own announcement is not.
        assert!(is_conflict(&build_announcement(THEIRS, IP), OURS, IP));
        assert!(!is_conflict(&p, OURS, IP));
    }

    #[test]
    fn a_reply_or_request_from_the_address_is_a_conflict() {
        assert!(is_conflict(
            &arp(ARPOP_REPLY, THEIRS, IP, Ipv4Addr::UNSPECIFIED),
            OURS,
            IP
        ));
        assert!(is_conflict(
            &arp(ARPOP_REQUEST, THEIRS, IP, OTHER_IP),
            OURS,
            IP
        ));
    }

    #[test]
    fn another_probe_for_the_address_is_a_conflict() {
        assert!(is_conflict(&build_probe(THEIRS, IP), OURS, IP));
    }

    #[test]
    fn unrelated_or_own_packets_are_not_conflicts() {
        assert!(
            !is_conflict(&build_probe(OURS, IP), OURS, IP),
            "our own probe"
        );
        assert!(!is_conflict(&build_probe(THEIRS, OTHER_IP), OURS, IP));
        assert!(!is_conflict(
            &arp(ARPOP_REPLY, THEIRS, OTHER_IP, IP),
            OURS,
            IP
        ));
        assert!(
            !is_conflict(&arp(ARPOP_REQUEST, THEIRS, OTHER_IP, IP), OURS, IP),
            "a plain who-has"
        );
        assert!(!is_conflict(&arp(3, THEIRS, IP, IP), OURS, IP), "RARP op");
        let mut not_ipv4 = arp(ARPOP_REPLY, THEIRS, IP, IP);
        not_ipv4[2] = 0x86;
        assert!(!is_conflict(&not_ipv4, OURS, IP));
        assert!(!is_conflict(
            &arp(ARPOP_REPLY, THEIRS, IP, IP)[..27],
            OURS,
            IP
        ));
        assert!(!is_conflict(&[], OURS, IP));
    }

    #[test]
    fn scaled_timing_keeps_the_probe_count() {
        let t = ProbeTiming::scaled(0.01);
        assert_eq!(t.probe_num, 3);
        assert_eq!(t.probe_min, Duration::from_millis(10));
        assert_eq!(t.probe_max, Duration::from_millis(20));
        assert_eq!(t.announce_wait, Duration::from_millis(20));
    }
}
