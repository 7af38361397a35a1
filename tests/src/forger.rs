//! A hostile host on the lab segment: it listens on UDP 67 at server address 2 (10.77.0.2, its
//! own namespace) and answers the requests of one client MAC with replies a script crafts. It is
//! what an attacker (or a misconfigured server) on a shared segment can do: client requests are
//! broadcast, so every host sees their xid, chaddr and client id.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
use dhcproto::{Decodable, Decoder, Encodable};

use crate::lab::{Lab, SERVER_ADDR_2};
use crate::lab_error::LabError;

/// The forger's own address (server address 2 of the lab).
pub const FORGER_ADDR: Ipv4Addr = SERVER_ADDR_2;

/// Given one request of the target MAC, the replies to send (in order).
pub type Script = Box<dyn FnMut(&Message) -> Vec<Message> + Send>;

/// Runs until dropped.
pub struct ForgedServer {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU32>,
    thread: Option<JoinHandle<()>>,
}

impl ForgedServer {
    /// Starts answering requests whose chaddr is `target` in `lab`'s second server namespace.
    pub fn start(lab: &Lab, target: [u8; 6], mut script: Script) -> Result<ForgedServer, LabError> {
        let ns = lab.server_ns(SERVER_ADDR_2);
        let socket_error = |source| LabError::Socket {
            ns: ns.clone(),
            source,
        };
        // The socket belongs to the namespace it was made in; the thread using it need not be.
        let socket = crate::netns::in_netns(&ns, open_socket)?.map_err(socket_error)?;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU32::new(0));
        let (stopping, counting) = (stop.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stopping.load(Ordering::Relaxed) {
                let Ok(len) = socket.recv(&mut buf) else {
                    continue; // the read timeout: look at the stop flag again
                };
                let Ok(request) = Message::decode(&mut Decoder::new(&buf[..len])) else {
                    continue;
                };
                if request.opcode() != Opcode::BootRequest
                    || request.chaddr().get(..6) != Some(&target)
                {
                    continue;
                }
                for (n, reply) in script(&request).into_iter().enumerate() {
                    // Paced like a server answering several clients, not a single burst.
                    if n > 0 {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    let bytes = reply.to_vec().expect("a crafted reply encodes");
                    let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 68);
                    // Counted before it is on the wire, so a test that saw the client react
                    // to it also sees it counted.
                    counting.fetch_add(1, Ordering::Relaxed);
                    if socket.send_to(&bytes, to).is_err() {
                        counting.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
        });
        Ok(ForgedServer {
            stop,
            sent,
            thread: Some(thread),
        })
    }

    /// Replies sent so far.
    pub fn sent(&self) -> u32 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for ForgedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// UDP 67 on the namespace's segment interface, able to send to 255.255.255.255.
fn open_socket() -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67))?;
    socket.set_broadcast(true)?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    // Limited broadcast needs an outgoing device: the namespace has no default route.
    let device = b"lan\0";
    // SAFETY: a valid socket fd and a NUL-terminated buffer of the given length.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            device.as_ptr().cast(),
            device.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(socket)
}

/// A reply to `request` the way a server would build it: xid, chaddr and flags echoed, a /24 of
/// the lab with `server` as router, a 600 s lease. Adjust the result for the attack at hand.
pub fn reply_to(
    request: &Message,
    kind: MessageType,
    server: Ipv4Addr,
    yiaddr: Ipv4Addr,
) -> Message {
    let mut reply = Message::default();
    reply
        .set_opcode(Opcode::BootReply)
        .set_xid(request.xid())
        .set_flags(request.flags())
        .set_chaddr(request.chaddr())
        .set_giaddr(request.giaddr());
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(server));
    if kind != MessageType::Nak {
        reply.set_yiaddr(yiaddr);
        let opts = reply.opts_mut();
        opts.insert(DhcpOption::AddressLeaseTime(600));
        opts.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        opts.insert(DhcpOption::Router(vec![server]));
    }
    reply
}

/// The DHCP message type of a request.
pub fn kind_of(request: &Message) -> Option<MessageType> {
    request.opts().msg_type()
}
