//! One-shot DHCP exchanges sent from inside the lab with a plain UDP socket, for tests that need a
//! message form busybox udhcpc cannot send (e.g. an INIT-REBOOT REQUEST to a second server).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::bootp::{self, DhcpMessage, MessageType};
use crate::lab_error::LabError;
use crate::netns::in_netns;

/// An RFC 2131 INIT-REBOOT REQUEST for `ip`: broadcast flag, ciaddr 0, option 50, no server id,
/// client id 01 + MAC (what busybox udhcpc sends by default).
pub fn init_reboot_request(mac: [u8; 6], ip: Ipv4Addr, xid: u32) -> DhcpMessage {
    let mut client_id = vec![1];
    client_id.extend_from_slice(&mac);
    DhcpMessage {
        op: 1,
        xid,
        broadcast_flag: true,
        ciaddr: Ipv4Addr::UNSPECIFIED,
        yiaddr: Ipv4Addr::UNSPECIFIED,
        chaddr: mac,
        message_type: Some(MessageType::Request),
        requested_ip: Some(ip),
        server_id: None,
        client_id: Some(client_id),
        lease_time: None,
    }
}

/// Broadcasts `request` from `iface` in namespace `ns` (UDP 0.0.0.0:68 bound to the device) and
/// returns the first reply with the same xid and chaddr, or `None` when none came within `wait`
/// (a safety net: a server that ignores the request says nothing).
pub fn exchange(
    ns: &str,
    iface: &str,
    request: &DhcpMessage,
    wait: Duration,
) -> Result<Option<DhcpMessage>, LabError> {
    let replies = collect_replies(ns, iface, request, wait, |replies| !replies.is_empty())?;
    Ok(replies.into_iter().next())
}

/// Like [`exchange`], but gathers replies (e.g. OFFERs from several servers) until `enough`
/// says so or `wait` runs out.
pub fn collect_replies(
    ns: &str,
    iface: &str,
    request: &DhcpMessage,
    wait: Duration,
    enough: impl Fn(&[DhcpMessage]) -> bool + Send,
) -> Result<Vec<DhcpMessage>, LabError> {
    let socket_error = |source| LabError::Socket {
        ns: ns.to_string(),
        source,
    };
    in_netns(ns, move || {
        let socket = client_socket(iface)?;
        socket.send_to(
            &bootp::encode_request(request),
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 67),
        )?;
        let deadline = Instant::now() + wait;
        let mut replies = Vec::new();
        let mut buf = [0u8; 1500];
        while !enough(&replies) {
            let Some(left) = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
            else {
                break;
            };
            socket.set_read_timeout(Some(left))?;
            let len = match socket.recv(&mut buf) {
                Ok(len) => len,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) => return Err(e),
            };
            // every macvlan on the parent sees every broadcast reply: keep only ours
            if let Some(reply) = bootp::decode(&buf[..len])
                && reply.op == 2
                && reply.xid == request.xid
                && reply.chaddr == request.chaddr
            {
                replies.push(reply);
            }
        }
        Ok(replies)
    })?
    .map_err(socket_error)
}

/// An RFC 2131 REBINDING REQUEST: ciaddr = `ip`, no option 50, no server id, broadcast to
/// 255.255.255.255 without the broadcast flag. Servers answer to ciaddr, so the reply only arrives
/// when `ip` is configured on the sending interface.
pub fn rebind_request(mac: [u8; 6], ip: Ipv4Addr, xid: u32) -> DhcpMessage {
    DhcpMessage {
        broadcast_flag: false,
        ciaddr: ip,
        requested_ip: None,
        ..init_reboot_request(mac, ip, xid)
    }
}

/// UDP socket on 0.0.0.0:68 bound to `iface`: the device binding must come before bind(), and it
/// lets several such sockets (one per macvlan) share port 68.
fn client_socket(iface: &str) -> std::io::Result<UdpSocket> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let socket = UdpSocket::from(fd);
    set_option(&socket, libc::SO_BINDTODEVICE, iface.as_bytes())?;
    set_option(&socket, libc::SO_REUSEADDR, &1i32.to_ne_bytes())?;
    socket.set_broadcast(true)?;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 68u16.to_be(),
        sin_addr: libc::in_addr { s_addr: 0 },
        sin_zero: [0; 8],
    };
    // SAFETY: addr is a valid sockaddr_in of the size passed.
    let rc = unsafe {
        libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(socket)
}

fn set_option(socket: &UdpSocket, option: libc::c_int, value: &[u8]) -> std::io::Result<()> {
    // SAFETY: value points to value.len() readable bytes for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            libc::SOL_SOCKET,
            option,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
