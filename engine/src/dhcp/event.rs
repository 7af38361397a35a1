//! What the client asks its runtime to do and what it reports.

use std::net::Ipv4Addr;

use serde::Serialize;

use super::message::Transmission;
use super::record::LeaseRecord;
use super::reply::RejectReason;
use super::state::State;

/// Effects requested by the state machine; the runtime performs them in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Send(Transmission),
    /// ARP-probe this address and answer with `Client::on_probe_result`.
    Probe(Ipv4Addr),
    /// The record changed (new lease or extended): store it.
    Persist(LeaseRecord),
    /// The lease is gone (expired, NAKed, released): forget the stored record.
    ClearRecord,
    Event(ClientEvent),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "camelCase")]
pub enum ClientEvent {
    /// A lease was granted or extended. `renewal`: it extends the address already held.
    /// `after_failures`: unanswered transmissions, NAKs and DECLINEs since the previous Bound.
    #[serde(rename_all = "camelCase")]
    Bound {
        record: LeaseRecord,
        renewal: bool,
        after_failures: u32,
    },
    /// The new lease's address differs from the one held (or last held) before.
    IpChanged {
        old: Ipv4Addr,
        new: Ipv4Addr,
    },
    Nak {
        server: Ipv4Addr,
        message: Option<String>,
        state: State,
    },
    Expired {
        ip: Ipv4Addr,
    },
    Released {
        ip: Ipv4Addr,
    },
    Declined {
        ip: Ipv4Addr,
    },
    /// A received datagram was discarded; nothing changed.
    Rejected {
        reason: RejectReason,
    },
    StateChanged {
        from: State,
        to: State,
    },
    /// INIT-REBOOT went unanswered: the recorded lease is kept and used until its own times.
    GaveUp {
        ip: Ipv4Addr,
    },
}
