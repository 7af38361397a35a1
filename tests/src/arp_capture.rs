//! A capture of ARP and one TCP port on a lab interface, read back as Ethernet frames, with the
//! small parsers the announcement tests need (who answered ARP for an address, which MAC
//! carried the IP packets from it). tcpdump is stopped by PID; dropping the guard kills it.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pcap::{self, EthernetFrame};

const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV4: u16 = 0x0800;

pub struct ArpCapture {
    child: Child,
    file: PathBuf,
}

impl ArpCapture {
    /// tcpdump of `arp or tcp port {port}` on `iface` in network namespace `netns`.
    pub fn start(netns: &str, iface: &str, port: u16, file: PathBuf) -> ArpCapture {
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "tcpdump", "-i", iface, "-U"])
            .args(["--immediate-mode", "-Z", "root", "-w"])
            .arg(&file)
            .arg(format!("arp or tcp port {port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump");
        let started = Instant::now();
        while std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) < 24 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "tcpdump did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        ArpCapture { child, file }
    }

    /// Stops tcpdump and returns every frame it wrote.
    pub fn stop(mut self) -> Vec<EthernetFrame> {
        // --immediate-mode -U: what was received is written at once; a moment for the last one.
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: SIGINT to our own child; tcpdump flushes and exits.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        pcap::read_ethernet(&self.file).expect("read the capture")
    }
}

impl Drop for ArpCapture {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An ARP packet's fields that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    /// 1 request, 2 reply.
    pub op: u16,
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

pub fn arp(frame: &EthernetFrame) -> Option<Arp> {
    let p = &frame.payload;
    (frame.ethertype == ETHERTYPE_ARP && p.len() >= 28).then(|| Arp {
        op: u16::from_be_bytes([p[6], p[7]]),
        sender_mac: p[8..14].try_into().expect("6 bytes"),
        sender_ip: Ipv4Addr::new(p[14], p[15], p[16], p[17]),
        target_ip: Ipv4Addr::new(p[24], p[25], p[26], p[27]),
    })
}

pub fn ipv4_source(frame: &EthernetFrame) -> Option<Ipv4Addr> {
    let p = &frame.payload;
    (frame.ethertype == ETHERTYPE_IPV4 && p.len() >= 20)
        .then(|| Ipv4Addr::new(p[12], p[13], p[14], p[15]))
}

/// What a capture says about how `ip` was announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    /// Senders of gratuitous ARP for `ip` (request, sender = target = ip).
    pub gratuitous_from: Vec<[u8; 6]>,
    /// Senders of ARP replies for `ip`.
    pub answered_by: Vec<[u8; 6]>,
    /// Ethernet sources of IPv4 packets from `ip`.
    pub ip_packets_from: Vec<Option<[u8; 6]>>,
}

pub fn announced(frames: &[EthernetFrame], ip: Ipv4Addr) -> Announced {
    let arps: Vec<Arp> = frames.iter().filter_map(arp).collect();
    Announced {
        gratuitous_from: arps
            .iter()
            .filter(|a| a.op == 1 && a.sender_ip == ip && a.target_ip == ip)
            .map(|a| a.sender_mac)
            .collect(),
        answered_by: arps
            .iter()
            .filter(|a| a.op == 2 && a.sender_ip == ip)
            .map(|a| a.sender_mac)
            .collect(),
        ip_packets_from: frames
            .iter()
            .filter(|f| ipv4_source(f) == Some(ip))
            .map(|f| f.src_mac)
            .collect(),
    }
}
