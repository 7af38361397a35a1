//! The transport experiment behind linkless leases (issue 13): figures, no assertions.
//!
//! How should one node receive DHCP replies for N MACs on one parent without a macvlan each?
//! In a lab (its parent `lab0` in the agent namespace, frames sent from the server namespace's
//! bridge), for N MACs:
//! - *per-MAC*: one `AF_PACKET` socket per MAC on the parent, each with a
//!   `PACKET_MR_UNICAST` membership for its MAC and a BPF filter accepting frames to its MAC or
//!   with its `chaddr`;
//! - *shared*: one socket on the parent with N `PACKET_MR_UNICAST` memberships and one BPF filter
//!   (IPv4, UDP, port 68), demultiplexed in user space by `chaddr` (a hash map);
//! - *shared-promisc*: the same with one `PACKET_MR_PROMISC` instead of N memberships.
//!
//! Per N and mode: setup time (sockets, filters, memberships), the parent's promiscuity after it,
//! then one frame at a time (unicast to a MAC, and broadcast with its `chaddr`) sent from the
//! server side and waited for on the receiving socket: that round trip holds the kernel's
//! per-frame cost, which for per-MAC sockets runs every socket's filter on every frame; finally
//! the time to close the sockets (each close waits for an RCU grace period).
//!
//! Run as root; `scripts/bench.sh transport` builds and runs it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::mem;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use dhcpmanager_engine::net::frame::build_udp_datagram;
use dhcpmanager_tests::bench::cli;
use dhcpmanager_tests::bench::error::BenchError;
use dhcpmanager_tests::bench::figures::{self, Latency};
use dhcpmanager_tests::lab::{Lab, SERVER_ADDR_1};
use dhcpmanager_tests::netns::in_netns;
use serde::Serialize;

const ETH_P_IP: u16 = 0x0800;
const PACKET_ADD_MEMBERSHIP: libc::c_int = 1;
const PACKET_STATISTICS: libc::c_int = 6;
const PACKET_MR_PROMISC: u16 = 1;
const PACKET_MR_UNICAST: u16 = 3;
const SERVER_MAC: [u8; 6] = [0x02, 0x53, 0, 0, 0, 1];
/// Frames timed one by one per (N, mode, kind).
const PROBES: usize = 400;
const WAIT: Duration = Duration::from_secs(2);

type Result<T> = std::result::Result<T, BenchError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Mode {
    PerMac,
    Shared,
    SharedPromisc,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::PerMac => "per-MAC sockets",
            Mode::Shared => "shared + unicast memberships",
            Mode::SharedPromisc => "shared + promiscuous",
        }
    }
}

#[derive(Debug, Serialize)]
struct Row {
    mode: Mode,
    macs: usize,
    sockets: usize,
    setup_ms: f64,
    /// `promiscuity` of the parent after the setup (veth has no unicast filter: any unicast
    /// membership turns it promiscuous).
    parent_promiscuity: u64,
    unicast: Latency,
    broadcast: Latency,
    /// Frames the sockets' queues dropped (PACKET_STATISTICS).
    socket_drops: u64,
    close_ms: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    date_utc: String,
    machine: String,
    probes_per_series: usize,
    rows: Vec<Row>,
}

struct Args {
    sizes: Vec<usize>,
    out: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        sizes: vec![100, 1_000, 5_000, 10_000],
        out: dhcpmanager_tests::repo_root().join("target/bench/transport.json"),
    };
    for (flag, value) in cli::flag_values()? {
        match flag.as_str() {
            "--sizes" => {
                args.sizes = value
                    .split(',')
                    .map(|n| n.parse().map_err(|_| BenchError::Usage))
                    .collect::<Result<_>>()?
            }
            "--out" => args.out = value.into(),
            _ => return Err(BenchError::Usage),
        }
    }
    Ok(args)
}

// --- raw sockets -------------------------------------------------------------------------------

struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor and close it once.
        unsafe { libc::close(self.0) };
    }
}

fn os_error(what: &str) -> BenchError {
    BenchError::Io(what.to_string(), std::io::Error::last_os_error())
}

fn setsockopt<T>(
    fd: &Fd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
    what: &str,
) -> Result<()> {
    // SAFETY: value points at a live T of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.0,
            level,
            name,
            (value as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(os_error(what));
    }
    Ok(())
}

fn link_address(ifindex: u32, dest: [u8; 6]) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data.
    let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_IP.to_be();
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&dest);
    addr
}

/// A nonblocking `SOCK_RAW` packet socket with `filter`, bound to `ifindex` for IPv4.
fn raw_socket(ifindex: u32, filter: Option<&[libc::sock_filter]>) -> Result<Fd> {
    // SAFETY: plain syscall.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(os_error("socket"));
    }
    let fd = Fd(fd);
    if let Some(program) = filter {
        let fprog = libc::sock_fprog {
            len: program.len() as u16,
            filter: program.as_ptr().cast_mut(),
        };
        setsockopt(
            &fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &fprog,
            "SO_ATTACH_FILTER",
        )?;
    }
    let addr = link_address(ifindex, [0; 6]);
    // SAFETY: addr is a valid sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.0,
            (&raw const addr).cast(),
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(os_error("bind"));
    }
    Ok(fd)
}

fn membership(fd: &Fd, ifindex: u32, kind: u16, mac: [u8; 6]) -> Result<()> {
    let mut mreq = libc::packet_mreq {
        mr_ifindex: ifindex as i32,
        mr_type: kind,
        mr_alen: 6,
        mr_address: [0; 8],
    };
    mreq.mr_address[..6].copy_from_slice(&mac);
    setsockopt(
        fd,
        libc::SOL_PACKET,
        PACKET_ADD_MEMBERSHIP,
        &mreq,
        "PACKET_ADD_MEMBERSHIP",
    )
}

fn socket_drops(fd: &Fd) -> u64 {
    let mut stats = [0u32; 2];
    let mut len = mem::size_of_val(&stats) as libc::socklen_t;
    // SAFETY: stats is a writable tpacket_stats-sized buffer.
    let rc = unsafe {
        libc::getsockopt(
            fd.0,
            libc::SOL_PACKET,
            PACKET_STATISTICS,
            stats.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc < 0 { 0 } else { u64::from(stats[1]) }
}

fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).expect("no NUL");
    // SAFETY: c is a valid C string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(os_error("if_nametoindex"));
    }
    Ok(index)
}

/// Waits up to `WAIT` for one frame on `fd`; returns its length.
fn recv_one(fd: &Fd, buf: &mut [u8]) -> Option<usize> {
    let mut pfd = libc::pollfd {
        fd: fd.0,
        events: libc::POLLIN,
        revents: 0,
    };
    let deadline = Instant::now() + WAIT;
    loop {
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(fd.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 0 {
            return Some(n as usize);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, left.as_millis() as libc::c_int) };
    }
}

// --- filters -----------------------------------------------------------------------------------

const fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

const LDH: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
const LDB: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
const LDW: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JEQ: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const RET: u16 = 0x06; // BPF_RET | BPF_K
/// `chaddr` in an Ethernet frame with a 20-byte IP header: 14 + 20 + 8 + 28.
const CHADDR: u32 = 70;

/// IPv4, UDP, destination port 68 (a 20-byte IP header, as in this experiment's frames).
fn shared_filter() -> Vec<libc::sock_filter> {
    vec![
        stmt(LDH, 12),
        jump(JEQ, 0x0800, 0, 5),
        stmt(LDB, 23),
        jump(JEQ, 17, 0, 3),
        stmt(LDH, 36),
        jump(JEQ, 68, 0, 1),
        stmt(RET, 0x40000),
        stmt(RET, 0),
    ]
}

/// [`shared_filter`] and then: destination MAC or `chaddr` is `mac`.
fn per_mac_filter(mac: [u8; 6]) -> Vec<libc::sock_filter> {
    let head = u32::from_be_bytes([mac[0], mac[1], mac[2], mac[3]]);
    let tail = u32::from(u16::from_be_bytes([mac[4], mac[5]]));
    vec![
        /* 0 */ stmt(LDH, 12),
        /* 1 */ jump(JEQ, 0x0800, 0, 13),
        /* 2 */ stmt(LDB, 23),
        /* 3 */ jump(JEQ, 17, 0, 11),
        /* 4 */ stmt(LDH, 36),
        /* 5 */ jump(JEQ, 68, 0, 9),
        /* 6 */ stmt(LDW, 0),
        /* 7 */ jump(JEQ, head, 0, 2),
        /* 8 */ stmt(LDH, 4),
        /* 9 */ jump(JEQ, tail, 4, 0),
        /* 10 */ stmt(LDW, CHADDR),
        /* 11 */ jump(JEQ, head, 0, 3),
        /* 12 */ stmt(LDH, CHADDR + 4),
        /* 13 */ jump(JEQ, tail, 0, 1),
        /* 14 */ stmt(RET, 0x40000),
        /* 15 */ stmt(RET, 0),
    ]
}

// --- frames ------------------------------------------------------------------------------------

fn mac_of(i: usize) -> [u8; 6] {
    let i = i as u32;
    [0x02, 0x7e, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]
}

/// A DHCP reply-shaped Ethernet frame from the server to `dest` for `chaddr`.
fn reply_frame(dest: [u8; 6], chaddr: [u8; 6]) -> Vec<u8> {
    let mut bootp = vec![0u8; 300];
    bootp[0] = 2;
    bootp[1] = 1;
    bootp[2] = 6;
    bootp[28..34].copy_from_slice(&chaddr);
    let ip = build_udp_datagram(SERVER_ADDR_1, Ipv4Addr::BROADCAST, 67, 68, &bootp)
        .expect("fits a datagram");
    let mut frame = Vec::with_capacity(14 + ip.len());
    frame.extend_from_slice(&dest);
    frame.extend_from_slice(&SERVER_MAC);
    frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame
}

// --- one (N, mode) -----------------------------------------------------------------------------

struct Receivers {
    sockets: Vec<Fd>,
}

fn open_receivers(parent: u32, mode: Mode, n: usize) -> Result<Receivers> {
    let mut sockets = Vec::new();
    match mode {
        Mode::PerMac => {
            for i in 0..n {
                let mac = mac_of(i);
                let fd = raw_socket(parent, Some(&per_mac_filter(mac)))?;
                membership(&fd, parent, PACKET_MR_UNICAST, mac)?;
                sockets.push(fd);
            }
        }
        Mode::Shared => {
            let fd = raw_socket(parent, Some(&shared_filter()))?;
            for i in 0..n {
                membership(&fd, parent, PACKET_MR_UNICAST, mac_of(i))?;
            }
            sockets.push(fd);
        }
        Mode::SharedPromisc => {
            let fd = raw_socket(parent, Some(&shared_filter()))?;
            membership(&fd, parent, PACKET_MR_PROMISC, [0; 6])?;
            sockets.push(fd);
        }
    }
    Ok(Receivers { sockets })
}

fn promiscuity(parent: &str) -> u64 {
    Command::new("ip")
        .args(["-d", "-j", "link", "show", "dev", parent])
        .output()
        .ok()
        .and_then(|out| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
        .and_then(|v| v[0]["promiscuity"].as_u64())
        .unwrap_or(0)
}

/// Closes the sockets from 32 threads at once (each close waits for an RCU grace period, and
/// concurrent closes share them); returns the wall time.
fn close_all(sockets: Vec<Fd>) -> Duration {
    let t0 = Instant::now();
    let mut chunks: Vec<Vec<Fd>> = (0..32).map(|_| Vec::new()).collect();
    for (i, fd) in sockets.into_iter().enumerate() {
        chunks[i % 32].push(fd);
    }
    std::thread::scope(|scope| {
        for chunk in chunks {
            scope.spawn(move || drop(chunk));
        }
    });
    t0.elapsed()
}

/// What the sender thread (in the server namespace) is asked to do.
enum Send {
    Frame(Vec<u8>),
    Stop,
}

fn measure(lab: &Lab, mode: Mode, n: usize) -> Result<Row> {
    // The sender lives in the server namespace and sends what it is handed, one at a time.
    let (to_sender, from_main) = mpsc::channel::<Send>();
    let ready = Arc::new(Barrier::new(2));
    let sender_ready = ready.clone();
    let server_ns = lab.server_ns(SERVER_ADDR_1);
    let sender = std::thread::spawn(move || {
        in_netns(&server_ns, move || -> Result<()> {
            let lan = ifindex("lan")?;
            let fd = raw_socket(lan, Some(&[stmt(RET, 0)]))?;
            sender_ready.wait();
            while let Ok(Send::Frame(frame)) = from_main.recv() {
                let dest = link_address(lan, [0; 6]);
                // SAFETY: frame and dest are valid for the call.
                let sent = unsafe {
                    libc::sendto(
                        fd.0,
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                        (&raw const dest).cast(),
                        mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                    )
                };
                if sent < 0 {
                    return Err(os_error("sendto"));
                }
            }
            Ok(())
        })
    });
    let parent_name = lab.parent().to_string();
    let row = in_netns(&lab.agent_ns(), || -> Result<Row> {
        let parent = ifindex(&parent_name)?;
        let t0 = Instant::now();
        let receivers = open_receivers(parent, mode, n)?;
        let setup = t0.elapsed();
        let promiscuity = promiscuity(&parent_name);
        ready.wait();
        let mut buf = vec![0u8; 2048];
        let step = (n / PROBES).max(1);
        let mut series = |broadcast: bool| -> Latency {
            let mut times = Vec::new();
            let mut failed = 0;
            let demux: HashMap<[u8; 6], usize> = match mode {
                Mode::PerMac => HashMap::new(),
                _ => (0..n).map(|i| (mac_of(i), i)).collect(),
            };
            for probe in 0..PROBES.min(n) {
                let i = (probe * step) % n;
                let mac = mac_of(i);
                let dest = if broadcast { [0xff; 6] } else { mac };
                let socket = match mode {
                    Mode::PerMac => &receivers.sockets[i],
                    _ => &receivers.sockets[0],
                };
                let t = Instant::now();
                let _ = to_sender.send(Send::Frame(reply_frame(dest, mac)));
                let got = loop {
                    let Some(len) = recv_one(socket, &mut buf) else {
                        break false;
                    };
                    if len < 76 {
                        continue;
                    }
                    let mut chaddr = [0u8; 6];
                    chaddr.copy_from_slice(&buf[70..76]);
                    // The shared socket hands the frame to its owner by chaddr.
                    if mode == Mode::PerMac || demux.get(&chaddr) == Some(&i) {
                        break true;
                    }
                };
                if got {
                    times.push(t.elapsed());
                } else {
                    failed += 1;
                }
            }
            Latency::of(times, failed)
        };
        let unicast = series(false);
        let broadcast = series(true);
        let _ = to_sender.send(Send::Stop);
        let drops = receivers.sockets.iter().map(socket_drops).sum();
        let sockets = receivers.sockets.len();
        let close = close_all(receivers.sockets);
        Ok(Row {
            mode,
            macs: n,
            sockets,
            setup_ms: setup.as_secs_f64() * 1000.0,
            parent_promiscuity: promiscuity,
            unicast,
            broadcast,
            socket_drops: drops,
            close_ms: close.as_secs_f64() * 1000.0,
        })
    })??;
    sender
        .join()
        .expect("sender thread")
        .map_err(|e| BenchError::Protocol(format!("sender: {e}")))??;
    Ok(row)
}

fn table(report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nReceiving replies for N MACs on one parent without macvlans — {} — {}",
        report.date_utc, report.machine
    );
    let _ = writeln!(
        s,
        "(one frame at a time from the server's bridge to the receiving socket; {} frames per series)\n",
        report.probes_per_series
    );
    let _ = writeln!(
        s,
        "{:<30} {:>6} {:>7} {:>10} {:>6} {:>12} {:>12} {:>12} {:>6} {:>10}",
        "mode",
        "N",
        "sockets",
        "setup ms",
        "promisc",
        "unicast p50",
        "bcast p50",
        "bcast p99",
        "drops",
        "close ms"
    );
    for r in &report.rows {
        let _ = writeln!(
            s,
            "{:<30} {:>6} {:>7} {:>10.1} {:>6} {:>9.3} ms {:>9.3} ms {:>9.3} ms {:>6} {:>10.1}",
            r.mode.name(),
            r.macs,
            r.sockets,
            r.setup_ms,
            r.parent_promiscuity,
            r.unicast.p50_ms,
            r.broadcast.p50_ms,
            r.broadcast.p99_ms,
            r.socket_drops,
            r.close_ms
        );
    }
    s
}

fn run(args: &Args) -> Result<Report> {
    let lab = Lab::up()?;
    let mut rows = Vec::new();
    for &n in &args.sizes {
        for mode in [Mode::Shared, Mode::SharedPromisc, Mode::PerMac] {
            eprintln!("[transport] {} x{n}", mode.name());
            rows.push(measure(&lab, mode, n)?);
        }
    }
    lab.down()?;
    Ok(Report {
        date_utc: figures::date_utc(),
        machine: figures::machine(),
        probes_per_series: PROBES,
        rows,
    })
}

fn main() {
    let args = cli::args_or_exit(parse_args());
    match run(&args) {
        Ok(report) => cli::publish(&table(&report), &args.out, &report),
        Err(e) => {
            eprintln!("bench_transport: {e}");
            std::process::exit(1);
        }
    }
}
