//! A minimal nf_tables client over `NETLINK_NETFILTER`: one batch of changes applied as one
//! kernel transaction (all or nothing), and nothing else. The container image has no `nft` or
//! `iptables` binary, so the messages are built here with `netlink-packet-netfilter` (MIT, the
//! family of the rtnetlink crates we already use); see docs/engine.md for why not `rustables`.
//!
//! The kernel handles a batch synchronously inside `sendmsg`: when the send returns, the answer
//! to every message (an ack or an error) is already queued on the socket. So the answers are
//! read without blocking, and a missing one is an error instead of a hang.

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::nftables::NfTablesMessage;
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

/// `NFNL_SUBSYS_NFTABLES`: the batch markers name the subsystem the batch is for.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// Room for the answers of a large batch (an ack is 36 bytes; an error echoes its request).
const RECEIVE_BUFFER_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot open a netfilter netlink socket: {0}")]
    Open(#[source] io::Error),
    #[error("sending the nftables batch failed: {0}")]
    Send(#[source] io::Error),
    #[error("reading the kernel's answer to the nftables batch failed: {0}")]
    Receive(#[source] io::Error),
    #[error("the kernel's answer to the nftables batch is malformed: {0}")]
    Decode(String),
    #[error("the kernel answered {answered} of {sent} nftables requests")]
    Unanswered { answered: usize, sent: usize },
    /// The whole batch was rolled back; `request` is the first message the kernel refused.
    #[error("nftables refused request {request} of the batch: {source}")]
    Refused {
        request: usize,
        #[source]
        source: io::Error,
    },
}

impl NftError {
    /// The errno of a refused request (ENOENT for something that was not there).
    pub fn errno(&self) -> Option<i32> {
        match self {
            NftError::Refused { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// One change of a batch: the message, its address family, and its extra netlink flags
/// (`NLM_F_CREATE`...).
#[derive(Debug, Clone)]
pub struct Change {
    pub family: NetfilterProtoFamily,
    pub message: NfTablesMessage,
    pub flags: u16,
}

/// A netfilter netlink socket, in the network namespace of the thread that opened it.
pub struct Nft {
    socket: Socket,
    sequence: u32,
}

impl std::fmt::Debug for Nft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nft").finish_non_exhaustive()
    }
}

impl Nft {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open() -> Result<Nft, NftError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(NftError::Open)?;
        socket.bind_auto().map_err(NftError::Open)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NftError::Open)?;
        socket
            .set_rx_buf_sz(RECEIVE_BUFFER_BYTES)
            .map_err(NftError::Open)?;
        socket.set_non_blocking(true).map_err(NftError::Open)?;
        Ok(Nft {
            socket,
            sequence: rand::random::<u32>() >> 1,
        })
    }

    /// Applies `changes` as one transaction: every change, or (on any refusal) none.
    pub fn apply(&mut self, changes: &[Change]) -> Result<(), NftError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.drain();
        let first = self.sequence.wrapping_add(1);
        let mut batch = Vec::new();
        let marker = |inner: ControlMessage| {
            NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES),
                inner,
            )
        };
        self.push(&mut batch, marker(ControlMessage::BatchBegin), 0);
        for change in changes {
            let message = NetfilterMessage::new(
                NetfilterHeader::new(change.family, 0, 0),
                change.message.clone(),
            );
            self.push(&mut batch, message, NLM_F_ACK | change.flags);
        }
        self.push(&mut batch, marker(ControlMessage::BatchEnd), 0);
        self.socket.send(&batch, 0).map_err(NftError::Send)?;
        self.collect_answers(first, changes.len())
    }

    fn push(&mut self, batch: &mut Vec<u8>, message: NetfilterMessage, flags: u16) {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.sequence;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        message.finalize();
        let start = batch.len();
        batch.resize(start + message.buffer_len(), 0);
        message.serialize(&mut batch[start..]);
    }

    /// Reads one answer per request: the batch begin is numbered `begin`, the requests follow.
    /// A refused batch begin (no nf_tables in the kernel) answers for them all.
    fn collect_answers(&mut self, begin: u32, count: usize) -> Result<(), NftError> {
        let first = begin.wrapping_add(1);
        let mut answered = 0;
        let mut refused: Option<(usize, io::Error)> = None;
        let mut buffer = vec![0u8; RECEIVE_BUFFER_BYTES];
        while answered < count {
            let received = match self.socket.recv(&mut &mut buffer[..], 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return match refused {
                        Some((request, source)) => Err(NftError::Refused { request, source }),
                        None => Err(NftError::Unanswered {
                            answered,
                            sent: count,
                        }),
                    };
                }
                Err(e) => return Err(NftError::Receive(e)),
            };
            let mut offset = 0;
            while offset < received {
                let message =
                    NetlinkMessage::<NetfilterMessage>::deserialize(&buffer[offset..received])
                        .map_err(|e| NftError::Decode(e.to_string()))?;
                let length = message.header.length as usize;
                if length == 0 {
                    break;
                }
                offset += (length + 3) & !3;
                let sequence = message.header.sequence_number;
                if sequence == begin
                    && let NetlinkPayload::Error(error) = &message.payload
                    && error.code.is_some()
                {
                    return Err(NftError::Refused {
                        request: 0,
                        source: error.to_io(),
                    });
                }
                let index = sequence.wrapping_sub(first) as usize;
                if index >= count {
                    continue; // an answer to an older request, or to a batch marker
                }
                if let NetlinkPayload::Error(error) = message.payload {
                    answered += 1;
                    if error.code.is_some() && refused.is_none() {
                        refused = Some((index, error.to_io()));
                    }
                }
            }
        }
        match refused {
            Some((request, source)) => Err(NftError::Refused { request, source }),
            None => Ok(()),
        }
    }

    /// Discards whatever an earlier, failed exchange left on the socket.
    fn drain(&mut self) {
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(n) = self.socket.recv(&mut &mut buffer[..], 0) {
            if n == 0 {
                break;
            }
        }
    }
}
