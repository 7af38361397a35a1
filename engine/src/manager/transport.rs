//! How one address's client reaches the wire: its own macvlan and packet socket, or — for an
//! address that needs no link (its IP is not configured on the node, the default) — the one
//! shared socket of its parent, with replies handed to it by `chaddr` (see
//! [`crate::net::parent_socket`] for why, and docs/engine.md for the measurements).
//!
//! Per linkless address the cost is an inbox (a short queue and a [`Notify`]), one entry in the
//! parent's map and one unicast membership; per parent one socket and one reader task.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::dhcp::{L2Dest, Transmission};
use crate::net::NetNs;
use crate::net::arp::{self, ProbeTiming};
use crate::net::packet_socket::{DhcpSocket, Received};
use crate::net::parent_socket::{ParentSocket, interface_index};

/// Replies queued for one address before older ones are dropped: a client waits for one
/// reply at a time, and the server answers each transmission once.
const INBOX_DEPTH: usize = 8;

/// The transport of one running address.
pub(super) enum Transport {
    /// Its own macvlan's socket.
    Link { socket: DhcpSocket, ifindex: u32 },
    /// Its place on the parent's shared socket.
    Parent(Lessee),
}

impl Transport {
    /// Puts one transmission of the client on the wire, from the address's own MAC.
    pub fn send(&self, transmission: &Transmission) -> io::Result<()> {
        let l2 = match transmission.l2_dest {
            L2Dest::Broadcast => None,
            L2Dest::Unicast(mac) => Some(mac.octets()),
        };
        match self {
            Transport::Link { socket, .. } => socket.send(
                l2,
                transmission.src_ip,
                transmission.dst_ip,
                &transmission.payload,
            ),
            Transport::Parent(lessee) => lessee.parent.socket.send(
                lessee.mac,
                l2,
                transmission.src_ip,
                transmission.dst_ip,
                &transmission.payload,
            ),
        }
    }

    /// The address's MAC: the Ethernet source of everything it sends.
    pub fn mac(&self) -> [u8; 6] {
        match self {
            Transport::Link { socket, .. } => socket.mac(),
            Transport::Parent(lessee) => lessee.mac,
        }
    }

    /// The next DHCP reply for this address.
    pub async fn recv(&self) -> io::Result<Received> {
        match self {
            // Boxed: its 2 KiB receive buffer would otherwise sit in every address's task,
            // linkless ones included (a future is as large as its largest variant).
            Transport::Link { socket, .. } => Box::pin(socket.recv()).await,
            Transport::Parent(lessee) => Ok(lessee.inbox.next().await),
        }
    }

    /// RFC 5227 probe for `ip` from the address's MAC; `Ok(true)`: the address is in use.
    pub async fn probe(
        &self,
        ip: Ipv4Addr,
        timing: ProbeTiming,
        netns: &NetNs,
    ) -> io::Result<bool> {
        match self {
            Transport::Link { socket, ifindex } => {
                let fd = netns.run(|| arp::arp_socket(*ifindex))??;
                arp::probe_on(fd, *ifindex, socket.mac(), ip, timing).await
            }
            Transport::Parent(lessee) => {
                let ifindex = lessee.parent.socket.ifindex();
                let fd = netns.run(|| arp::parent_arp_socket(ifindex))??;
                arp::probe_on_raw(fd, ifindex, lessee.mac, ip, timing).await
            }
        }
    }
}

/// Replies waiting for one linkless address.
#[derive(Debug, Default)]
struct Inbox {
    queue: Mutex<VecDeque<Received>>,
    arrived: Notify,
}

impl Inbox {
    fn put(&self, received: Received) {
        let mut queue = lock(&self.queue);
        if queue.len() >= INBOX_DEPTH {
            queue.pop_front();
        }
        queue.push_back(received);
        drop(queue);
        // A stored permit if nobody waits yet: the next `next()` returns at once.
        self.arrived.notify_one();
    }

    async fn next(&self) -> Received {
        loop {
            if let Some(received) = lock(&self.queue).pop_front() {
                return received;
            }
            self.arrived.notified().await;
        }
    }
}

/// One parent's shared socket and who is listening on it.
struct Parent {
    name: String,
    socket: ParentSocket,
    inboxes: Mutex<HashMap<[u8; 6], Arc<Inbox>>>,
}

impl Parent {
    /// Hands every reply to the inbox of its `chaddr`; replies for nobody are dropped.
    async fn read(self: Arc<Self>) {
        loop {
            match self.socket.recv().await {
                Ok(frame) => {
                    let inbox = lock(&self.inboxes).get(&frame.chaddr).cloned();
                    if let Some(inbox) = inbox {
                        inbox.put(frame.received);
                    }
                }
                Err(error) => {
                    // The parent went down or away, or the kernel is out of buffers: the
                    // clients' own timers retry, so wait a little instead of spinning.
                    warn!(parent = %self.name, %error, "receiving on the parent failed");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// A linkless address's place on its parent: its inbox and its unicast membership, both given
/// back when dropped.
pub(super) struct Lessee {
    parent: Arc<Parent>,
    mac: [u8; 6],
    inbox: Arc<Inbox>,
}

impl Lessee {
    pub fn parent_name(&self) -> &str {
        &self.parent.name
    }

    pub fn parent_ifindex(&self) -> u32 {
        self.parent.socket.ifindex()
    }
}

impl Drop for Lessee {
    fn drop(&mut self) {
        lock(&self.parent.inboxes).remove(&self.mac);
        if let Err(error) = self.parent.socket.drop_mac(self.mac) {
            warn!(parent = %self.parent.name, %error, "dropping the unicast membership failed");
        }
    }
}

/// The shared sockets of every parent with linkless addresses, each opened on first use and
/// kept (with its reader task) for the manager's life.
pub(super) struct Parents {
    netns: NetNs,
    open: Mutex<HashMap<String, OpenParent>>,
}

/// A parent's shared socket and the task reading it.
struct OpenParent {
    parent: Arc<Parent>,
    reader: JoinHandle<()>,
}

impl Parents {
    pub fn new(netns: NetNs) -> Self {
        Parents {
            netns,
            open: Mutex::default(),
        }
    }

    /// A place for `mac` on `parent`'s shared socket. A MAC already listening there is refused:
    /// two addresses with one MAC would each see the other's replies.
    pub fn join(&self, parent: &str, mac: [u8; 6]) -> io::Result<Lessee> {
        let parent = self.parent(parent)?;
        let inbox = Arc::new(Inbox::default());
        {
            let mut inboxes = lock(&parent.inboxes);
            if inboxes.contains_key(&mac) {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another linkless address on this parent has the same MAC",
                ));
            }
            inboxes.insert(mac, inbox.clone());
        }
        let lessee = Lessee { parent, mac, inbox };
        lessee.parent.socket.add_mac(mac)?;
        Ok(lessee)
    }

    fn parent(&self, name: &str) -> io::Result<Arc<Parent>> {
        let mut open = lock(&self.open);
        if let Some(open) = open.get(name) {
            return Ok(open.parent.clone());
        }
        let socket = self
            .netns
            .run(|| interface_index(name).and_then(ParentSocket::open))??;
        let parent = Arc::new(Parent {
            name: name.to_owned(),
            socket,
            inboxes: Mutex::default(),
        });
        let reader = tokio::spawn(parent.clone().read());
        open.insert(
            name.to_owned(),
            OpenParent {
                parent: parent.clone(),
                reader,
            },
        );
        Ok(parent)
    }
}

impl Drop for Parents {
    fn drop(&mut self) {
        for (_, open) in lock(&self.open).drain() {
            open.reader.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(n: u8) -> Received {
        Received {
            src_mac: [n; 6],
            src_ip: Ipv4Addr::new(10, 0, 0, n),
            dst_ip: Ipv4Addr::BROADCAST,
            payload: vec![n],
        }
    }

    #[tokio::test]
    async fn an_inbox_hands_out_replies_in_order_and_keeps_the_newest() {
        let inbox = Inbox::default();
        for n in 0..(INBOX_DEPTH as u8 + 2) {
            inbox.put(reply(n));
        }
        assert_eq!(inbox.next().await, reply(2), "the two oldest were dropped");
        assert_eq!(inbox.next().await, reply(3));
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_for_a_reply_put_later() {
        let inbox = Arc::new(Inbox::default());
        let waiting = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.next().await }
        });
        tokio::task::yield_now().await;
        inbox.put(reply(7));
        assert_eq!(waiting.await.unwrap(), reply(7));
    }
}
