//! The DHCP client's transport on one macvlan: an `AF_PACKET`/`SOCK_DGRAM` socket.
//!
//! Why a packet socket and not UDP port 68: replies addressed to the offered IP (no broadcast
//! flag) never reach a UDP socket on an interface without that IP, host port 68 may be taken by
//! the host's own DHCP client, and `rp_filter` drops replies before UDP sees them. The kernel
//! writes the interface's MAC as the Ethernet source, so every frame leaves with the macvlan's
//! MAC. Closing such a socket costs ~10 ms (the kernel waits for an RCU grace period), so one
//! lives as long as its client, and is closed on a blocking thread: on a runtime worker, the
//! close would stall every task of that worker (measured: 100 concurrent DELETEs on the
//! standalone apiserver ran one after the other, 8-11 ms apart, behind these closes).

use std::io;
use std::mem::{self, ManuallyDrop};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::bpf::{BpfInstruction, dhcp_client_filter};
use super::frame::{UdpChecksum, build_client_datagram, parse_client_datagram};

pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];
pub(super) const ETH_P_IP: u16 = 0x0800;
// From <linux/if_packet.h>; not in the libc crate.
const PACKET_AUXDATA: libc::c_int = 8;
const TP_STATUS_CSUMNOTREADY: u32 = 1 << 3;
/// Big enough for any frame on a standard MTU; DHCP replies are far smaller.
pub(super) const RECEIVE_BUFFER: usize = 2048;

/// A DHCP message received on the interface, with the addresses it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub src_mac: [u8; 6],
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub payload: Vec<u8>,
}

/// A packet socket that sends DHCP client datagrams and receives only replies whose `chaddr`
/// is this interface's MAC (filtered in the kernel).
#[derive(Debug)]
pub struct DhcpSocket {
    /// Taken only by `Drop`.
    fd: ManuallyDrop<AsyncFd<OwnedFd>>,
    ifindex: u32,
    mac: [u8; 6],
}

impl Drop for DhcpSocket {
    fn drop(&mut self) {
        // SAFETY: `fd` is never used again; this is the only place that takes it.
        let fd = unsafe { ManuallyDrop::take(&mut self.fd) };
        // Deregistered from the reactor here, closed where waiting is harmless.
        let fd = fd.into_inner();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(fd))),
            Err(_) => drop(fd),
        }
    }
}

impl DhcpSocket {
    /// Opens the socket in the calling thread's network namespace. Must run inside a tokio
    /// runtime (the fd is registered with its reactor).
    pub fn open(ifindex: u32, mac: [u8; 6]) -> io::Result<Self> {
        // Protocol 0 queues nothing until bind, so the filter is in place before the first
        // packet can arrive: no unfiltered foreign reply is ever queued.
        let fd = packet_socket(0)?;
        attach_filter(fd.as_raw_fd(), &dhcp_client_filter(mac))?;
        enable_auxdata(fd.as_raw_fd())?;
        bind_to_interface(fd.as_raw_fd(), ifindex, ETH_P_IP)?;
        // SAFETY: the OwnedFd moves into the AsyncFd, which keeps it open and unreplaced for
        // as long as it is registered.
        let fd = ManuallyDrop::new(unsafe { AsyncFd::register(fd)? });
        Ok(Self { fd, ifindex, mac })
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Sends `dhcp_payload` from `src_ip`:68 to `dst_ip`:67 in one Ethernet frame to `l2_dest`
    /// (`None` = broadcast). A full send buffer shows as `WouldBlock`; DHCP retransmits anyway.
    pub fn send(
        &self,
        l2_dest: Option<[u8; 6]>,
        src_ip: Ipv4Addr,
        dst_ip: Ipv4Addr,
        dhcp_payload: &[u8],
    ) -> io::Result<()> {
        let packet = build_client_datagram(src_ip, dst_ip, dhcp_payload)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let dest = link_address(self.ifindex, ETH_P_IP, l2_dest.unwrap_or(BROADCAST_MAC));
        send_to(self.fd.get_ref().as_raw_fd(), &packet, &dest)
    }

    /// Waits for the next DHCP reply for this MAC; packets the parser rejects are skipped.
    pub async fn recv(&self) -> io::Result<Received> {
        let mut buf = [0u8; RECEIVE_BUFFER];
        loop {
            // ERROR too: when the link goes down or away the kernel reports ENETDOWN on the
            // socket with EPOLLERR alone, which a wait for READABLE would never see.
            let (len, from, udp_checksum) = self
                .fd
                .async_io(Interest::READABLE | Interest::ERROR, |fd| {
                    recv_with_status(fd.as_raw_fd(), &mut buf)
                })
                .await?;
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let Ok(datagram) = parse_client_datagram(&buf[..len], udp_checksum) else {
                continue;
            };
            let mut src_mac = [0u8; 6];
            src_mac.copy_from_slice(&from.sll_addr[..6]);
            return Ok(Received {
                src_mac,
                src_ip: datagram.src_ip,
                dst_ip: datagram.dst_ip,
                payload: datagram.payload.to_vec(),
            });
        }
    }
}

/// A nonblocking, close-on-exec `AF_PACKET`/`SOCK_DGRAM` socket for `protocol` (host order).
pub(super) fn packet_socket(protocol: u16) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned fd is owned by us alone.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            i32::from(protocol.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn attach_filter(fd: RawFd, program: &[BpfInstruction]) -> io::Result<()> {
    let filters: Vec<libc::sock_filter> = program
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let fprog = libc::sock_fprog {
        len: u16::try_from(filters.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "BPF program too long"))?,
        filter: filters.as_ptr().cast_mut(),
    };
    // fprog points at `filters`, which outlives the call; the kernel copies the program.
    set_option(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)
}

/// Asks the kernel to report, per packet, whether its checksum was left to (absent) hardware:
/// replies between namespaces over veth/macvlan carry only a partial UDP checksum.
pub(super) fn enable_auxdata(fd: RawFd) -> io::Result<()> {
    set_option(fd, libc::SOL_PACKET, PACKET_AUXDATA, &(1 as libc::c_int))
}

/// `setsockopt` with a plain value (an integer or a C struct) that the kernel copies.
pub(super) fn set_option<T>(
    fd: RawFd,
    level: libc::c_int,
    option: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` is a valid, initialised T for the duration of the call, and its exact size
    // goes with it; the kernel only reads (copies) it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            std::ptr::from_ref(value).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `recvfrom` plus the `PACKET_AUXDATA` status telling whether the UDP checksum is ready.
pub(super) fn recv_with_status(
    fd: RawFd,
    buf: &mut [u8],
) -> io::Result<(usize, libc::sockaddr_ll, UdpChecksum)> {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero (null pointers, zero lengths) is a valid value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&raw mut from).cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = mem::size_of_val(&control);
    // SAFETY: every pointer in msg refers to a live local buffer of the stated length.
    let len = unsafe { libc::recvmsg(fd, &raw mut msg, 0) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut udp_checksum = UdpChecksum::Verify;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel just filled, within
    // msg_controllen; tpacket_auxdata starts with its u32 tp_status.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_PACKET && (*cmsg).cmsg_type == PACKET_AUXDATA {
                let status = libc::CMSG_DATA(cmsg).cast::<u32>().read_unaligned();
                if status & TP_STATUS_CSUMNOTREADY != 0 {
                    udp_checksum = UdpChecksum::NotReady;
                }
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    Ok((len as usize, from, udp_checksum))
}

pub(super) fn link_address(ifindex: u32, protocol: u16, mac: [u8; 6]) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol.to_be();
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&mac);
    addr
}

pub(super) fn bind_to_interface(fd: RawFd, ifindex: u32, protocol: u16) -> io::Result<()> {
    let addr = link_address(ifindex, protocol, [0; 6]);
    // SAFETY: addr is a valid sockaddr_ll and the length matches it.
    let rc = unsafe {
        libc::bind(
            fd,
            (&raw const addr).cast(),
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn send_to(fd: RawFd, packet: &[u8], dest: &libc::sockaddr_ll) -> io::Result<()> {
    // SAFETY: packet and dest are valid for the duration of the call.
    let sent = unsafe {
        libc::sendto(
            fd,
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (dest as *const libc::sockaddr_ll).cast(),
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    if sent as usize != packet.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short send: {sent} of {} bytes", packet.len()),
        ));
    }
    Ok(())
}

pub(super) fn recv_from(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, libc::sockaddr_ll)> {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
    let mut from_len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: buf and from are valid and writable for the lengths passed.
    let len = unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
            (&raw mut from).cast(),
            &mut from_len,
        )
    };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((len as usize, from))
}
