//! The raw DHCP exchange floor of the benchmarks: DISCOVER→OFFER→REQUEST→ACK by hand over the
//! engine's `DhcpSocket`, no state machine, no retries, no options beyond the minimum. What any
//! client of the same server on the same segment cannot beat, so every benchmark measures its
//! figures beside this one, in the same run against the same server.
//!
//! Runs in the calling thread's network namespace (call it inside `netns::in_netns`).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcpmanager_engine::net::links::{self, LinkError, Links};
use dhcpmanager_engine::net::packet_socket::{DhcpSocket, Received};

use crate::bootp::{self, DhcpMessage, MessageType};

#[derive(Debug, thiserror::Error)]
pub enum RawDoraError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("{0}: {1}")]
    Io(&'static str, #[source] std::io::Error),
    #[error("{0}")]
    Protocol(String),
}

type Result<T> = std::result::Result<T, RawDoraError>;

/// What the RELEASE of a raw lease needs: the leased IP, the server id and the server's MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawLease {
    pub ip: Ipv4Addr,
    pub server_id: Ipv4Addr,
    pub server_mac: [u8; 6],
}

/// The reply to `xid` of type `kind`, skipping everything else (other clients' broadcasts).
async fn reply_of(
    socket: &DhcpSocket,
    xid: u32,
    kind: MessageType,
) -> Result<(DhcpMessage, Received)> {
    loop {
        let frame = socket
            .recv()
            .await
            .map_err(|e| RawDoraError::Io("receiving on the raw socket", e))?;
        if let Some(msg) = bootp::decode(&frame.payload)
            && msg.op == 2
            && msg.xid == xid
        {
            if msg.message_type == Some(kind) {
                return Ok((msg, frame));
            }
            return Err(RawDoraError::Protocol(format!(
                "expected {kind:?}, got {:?}",
                msg.message_type
            )));
        }
    }
}

/// DISCOVER→OFFER→REQUEST→ACK, nothing else.
pub async fn raw_dora(socket: &DhcpSocket, mac: [u8; 6], xid: u32) -> Result<RawLease> {
    let discover = bootp::discover(mac, xid);
    let send = |msg: &DhcpMessage| {
        socket
            .send(
                None,
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::BROADCAST,
                &bootp::encode_request(msg),
            )
            .map_err(|e| RawDoraError::Io("sending on the raw socket", e))
    };
    send(&discover)?;
    let (offer, _) = reply_of(socket, xid, MessageType::Offer).await?;
    let server_id = offer
        .server_id
        .ok_or_else(|| RawDoraError::Protocol("OFFER without server id".into()))?;
    let request = DhcpMessage {
        message_type: Some(MessageType::Request),
        requested_ip: Some(offer.yiaddr),
        server_id: Some(server_id),
        ..discover
    };
    send(&request)?;
    let (ack, frame) = reply_of(socket, xid, MessageType::Ack).await?;
    Ok(RawLease {
        ip: ack.yiaddr,
        server_id,
        server_mac: frame.src_mac,
    })
}

/// Gives the lease back (unicast to the server), so that samples do not exhaust the pool.
pub fn raw_release(socket: &DhcpSocket, mac: [u8; 6], lease: RawLease) -> Result<()> {
    let release = DhcpMessage {
        message_type: Some(MessageType::Release),
        broadcast_flag: false,
        ciaddr: lease.ip,
        requested_ip: None,
        server_id: Some(lease.server_id),
        ..bootp::discover(mac, rand_xid())
    };
    socket
        .send(
            Some(lease.server_mac),
            lease.ip,
            lease.server_id,
            &bootp::encode_request(&release),
        )
        .map_err(|e| RawDoraError::Io("sending RELEASE", e))
}

pub fn rand_xid() -> u32 {
    // Distinct per call is all that matters; the clock's low bits are enough here.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ 0x5eed_0000
}

/// Per-sample times of [`raw_one_by_one`].
#[derive(Debug, Default)]
pub struct RawSamples {
    /// DISCOVER sent → ACK received (link and socket made beforehand).
    pub exchange: Vec<Duration>,
    /// The same plus macvlan creation and socket open.
    pub total: Vec<Duration>,
    pub failed: usize,
}

/// `samples` raw exchanges one after the other, each on a fresh macvlan of `parent` with the MAC
/// `mac_of(i)`, released and deleted afterwards. The macvlans are put in `link_group` (not the
/// engine's, so neither touches the other's links); a sample that needs `timeout` counts as
/// failed, never as a figure.
pub async fn raw_one_by_one(
    parent: &str,
    samples: usize,
    link_group: u32,
    timeout: Duration,
    mac_of: impl Fn(usize) -> [u8; 6],
) -> Result<RawSamples> {
    let links = Links::connect()?;
    let mut out = RawSamples::default();
    for i in 0..samples {
        let mac = mac_of(i);
        let identity = format!("bench/raw-{link_group:x}-{i}");
        let name = links::link_name(&identity);
        let t0 = Instant::now();
        let ifindex = links
            .create_macvlan(
                parent,
                &name,
                mac,
                link_group,
                &links::link_alias(
                    &dhcpmanager_engine::instance::InstanceId::derived("bench", "raw"),
                    &identity,
                ),
            )
            .await?;
        let socket = DhcpSocket::open(ifindex, mac)
            .map_err(|e| RawDoraError::Io("opening DhcpSocket", e))?;
        let t1 = Instant::now();
        match tokio::time::timeout(timeout, raw_dora(&socket, mac, rand_xid())).await {
            Ok(Ok(lease)) => {
                let t2 = Instant::now();
                out.exchange.push(t2 - t1);
                out.total.push(t2 - t0);
                raw_release(&socket, mac, lease)?;
            }
            Ok(Err(e)) => {
                eprintln!("raw sample {i}: {e}");
                out.failed += 1;
            }
            Err(_) => {
                eprintln!("raw sample {i}: no ACK within {timeout:?}");
                out.failed += 1;
            }
        }
        drop(socket);
        links.delete(ifindex).await?;
    }
    links.delete_group(link_group).await?;
    Ok(out)
}
