//! The transport of linkless addresses: one `AF_PACKET`/`SOCK_RAW` socket on the parent
//! interface, shared by every address on it that needs no link of its own (issue 13).
//!
//! Why shared and raw (measured, docs/engine.md "Leases without links"): a packet socket per
//! address on the parent runs every socket's filter on every frame that arrives, so a round of N
//! replies costs N² filter runs, and each close waits for an RCU grace period; one socket costs
//! one filter per frame and a hash lookup in user space. `SOCK_RAW` because the frames carry the
//! *address's* MAC as Ethernet source, not the parent's: the switch sees exactly what it saw with
//! a macvlan per address. Replies to those MACs reach the socket because each address adds a
//! `PACKET_MR_UNICAST` membership for its MAC (the kernel's `dev_uc_add`; a NIC whose unicast
//! filter is full, and a veth that has none, turn promiscuous instead). Host UDP port 68 is never
//! bound, and broadcast replies are handed to their address by `chaddr`.

use std::io;
use std::mem::ManuallyDrop;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::bpf::{ETHERNET_HEADER_LEN, dhcp_replies_filter};
use super::frame::{build_client_datagram, parse_client_datagram};
use super::packet_socket::{
    BROADCAST_MAC, ETH_P_IP, RECEIVE_BUFFER, Received, attach_filter, bind_to_interface,
    enable_auxdata, link_address, recv_with_status, send_to, set_option,
};

const PACKET_ADD_MEMBERSHIP: libc::c_int = 1;
const PACKET_DROP_MEMBERSHIP: libc::c_int = 2;
const PACKET_MR_UNICAST: libc::c_ushort = 3;
/// Receive buffer of the shared socket: a burst of replies for thousands of addresses queues
/// here until the reader takes them (each ~600-byte reply costs ~2.3 KiB of kernel memory).
const SHARED_RECEIVE_BUFFER: libc::c_int = 16 << 20;
const ETHER_HEADER: usize = ETHERNET_HEADER_LEN as usize;
/// `chaddr` starts 28 bytes into a BOOTP message.
const CHADDR: std::ops::Range<usize> = 28..34;

/// A DHCP reply received on the parent, with the address it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentReceived {
    /// The BOOTP `chaddr`: the linkless address this reply belongs to.
    pub chaddr: [u8; 6],
    pub received: Received,
}

/// The shared socket of one parent interface.
#[derive(Debug)]
pub struct ParentSocket {
    /// Taken only by `Drop`.
    fd: ManuallyDrop<AsyncFd<OwnedFd>>,
    ifindex: u32,
}

impl Drop for ParentSocket {
    fn drop(&mut self) {
        // SAFETY: `fd` is never used again; this is the only place that takes it.
        let fd = unsafe { ManuallyDrop::take(&mut self.fd) }.into_inner();
        // Closing a packet socket waits for an RCU grace period: not on a runtime worker.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(fd))),
            Err(_) => drop(fd),
        }
    }
}

impl ParentSocket {
    /// Opens the socket on `ifindex` in the calling thread's network namespace, inside a tokio
    /// runtime. The filter is attached before the bind, so nothing unfiltered is ever queued.
    pub fn open(ifindex: u32) -> io::Result<Self> {
        let fd = raw_packet_socket()?;
        attach_filter(fd.as_raw_fd(), &dhcp_replies_filter())?;
        enable_auxdata(fd.as_raw_fd())?;
        set_receive_buffer(fd.as_raw_fd(), SHARED_RECEIVE_BUFFER);
        bind_to_interface(fd.as_raw_fd(), ifindex, ETH_P_IP)?;
        // SAFETY: the OwnedFd moves into the AsyncFd, which keeps it open and unreplaced for
        // as long as it is registered.
        let fd = ManuallyDrop::new(unsafe { AsyncFd::register(fd)? });
        Ok(Self { fd, ifindex })
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Lets unicast frames to `mac` in through the parent's filter (a membership of this socket:
    /// the kernel counts it, and drops it when the socket closes).
    pub fn add_mac(&self, mac: [u8; 6]) -> io::Result<()> {
        self.membership(PACKET_ADD_MEMBERSHIP, mac)
    }

    /// Undoes one [`ParentSocket::add_mac`].
    pub fn drop_mac(&self, mac: [u8; 6]) -> io::Result<()> {
        self.membership(PACKET_DROP_MEMBERSHIP, mac)
    }

    fn membership(&self, operation: libc::c_int, mac: [u8; 6]) -> io::Result<()> {
        let mut request = libc::packet_mreq {
            mr_ifindex: self.ifindex as libc::c_int,
            mr_type: PACKET_MR_UNICAST,
            mr_alen: 6,
            mr_address: [0; 8],
        };
        request.mr_address[..6].copy_from_slice(&mac);
        set_option(
            self.fd.get_ref().as_raw_fd(),
            libc::SOL_PACKET,
            operation,
            &request,
        )
    }

    /// Sends `dhcp_payload` from `src_ip`:68 to `dst_ip`:67 in one Ethernet frame from
    /// `src_mac` (the address's own MAC) to `l2_dest` (`None` = broadcast).
    pub fn send(
        &self,
        src_mac: [u8; 6],
        l2_dest: Option<[u8; 6]>,
        src_ip: Ipv4Addr,
        dst_ip: Ipv4Addr,
        dhcp_payload: &[u8],
    ) -> io::Result<()> {
        let packet = build_client_datagram(src_ip, dst_ip, dhcp_payload)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let dest = l2_dest.unwrap_or(BROADCAST_MAC);
        self.send_frame(&ethernet_frame(dest, src_mac, ETH_P_IP, &packet), dest)
    }

    /// Sends a whole Ethernet frame (header included) out of the parent.
    pub fn send_frame(&self, frame: &[u8], dest: [u8; 6]) -> io::Result<()> {
        let to = link_address(self.ifindex, ETH_P_IP, dest);
        send_to(self.fd.get_ref().as_raw_fd(), frame, &to)
    }

    /// Waits for the next DHCP reply on the parent, for any address; frames the parser rejects
    /// and frames this host sent are skipped.
    pub async fn recv(&self) -> io::Result<ParentReceived> {
        let mut buf = [0u8; RECEIVE_BUFFER];
        loop {
            let (len, from, udp_checksum) = self
                .fd
                .async_io(Interest::READABLE, |fd| {
                    recv_with_status(fd.as_raw_fd(), &mut buf)
                })
                .await?;
            if from.sll_pkttype == libc::PACKET_OUTGOING || len < ETHER_HEADER {
                continue;
            }
            let Ok(datagram) = parse_client_datagram(&buf[ETHER_HEADER..len], udp_checksum) else {
                continue;
            };
            let Some(chaddr) = datagram.payload.get(CHADDR) else {
                continue;
            };
            let mut src_mac = [0u8; 6];
            src_mac.copy_from_slice(&from.sll_addr[..6]);
            return Ok(ParentReceived {
                chaddr: chaddr.try_into().expect("six bytes"),
                received: Received {
                    src_mac,
                    src_ip: datagram.src_ip,
                    dst_ip: datagram.dst_ip,
                    payload: datagram.payload.to_vec(),
                },
            });
        }
    }
}

/// `dest`, `src`, EtherType, then `payload`.
pub fn ethernet_frame(dest: [u8; 6], src: [u8; 6], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(ETHER_HEADER + payload.len());
    frame.extend_from_slice(&dest);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The index of interface `name` in the calling thread's network namespace.
pub fn interface_index(name: &str) -> io::Result<u32> {
    let c_name = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
    // SAFETY: c_name is a valid C string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface {name}: {}", io::Error::last_os_error()),
        ));
    }
    Ok(index)
}

/// A nonblocking, close-on-exec `AF_PACKET`/`SOCK_RAW` socket that queues nothing until bound.
pub(super) fn raw_packet_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned fd is owned by us alone.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `SO_RCVBUFFORCE` (as root, past `rmem_max`), else `SO_RCVBUF` up to `rmem_max`; a failure
/// leaves the default, which still works at smaller bursts.
fn set_receive_buffer(fd: RawFd, bytes: libc::c_int) {
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        if set_option(fd, libc::SOL_SOCKET, option, &bytes).is_ok() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_carries_the_given_source_mac() {
        let frame = ethernet_frame([0xff; 6], [2, 0xaa, 0, 0, 0, 1], ETH_P_IP, &[0x45, 0]);
        assert_eq!(&frame[..6], &[0xff; 6]);
        assert_eq!(&frame[6..12], &[2, 0xaa, 0, 0, 0, 1]);
        assert_eq!(&frame[12..14], &[0x08, 0x00]);
        assert_eq!(&frame[14..], &[0x45, 0]);
    }
}
