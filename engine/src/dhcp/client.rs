//! The RFC 2131 client state machine for one address. Pure: the runtime feeds it replies, timer
//! expiries and probe results with the current time, and performs the actions it returns.

use std::net::Ipv4Addr;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::config::ClientConfig;
use super::event::{Action, ClientEvent};
use super::mac::MacAddr;
use super::message::{self, RequestForm, Transmission};
use super::options::own_client_id;
use super::record::LeaseRecord;
use super::reply::{self, Expectation, RejectReason, Reply, ReplyKind};
use super::state::State;
use super::timing;
use super::usable;

/// Link-layer facts about a received reply that the DHCP payload does not carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyMeta {
    pub src_mac: MacAddr,
    pub src_ip: Ipv4Addr,
}

/// The OFFER taken in SELECTING.
#[derive(Debug, Clone, Copy)]
struct Offer {
    ip: Ipv4Addr,
    server: Ipv4Addr,
}

/// Clone gives an independent copy with the same random stream (useful to explore outcomes).
#[derive(Debug, Clone)]
pub struct Client {
    cfg: ClientConfig,
    client_id: Vec<u8>,
    rng: StdRng,
    state: State,
    deadline: Option<DateTime<Utc>>,
    /// Transaction id of the current exchange, kept across its retransmissions.
    xid: u32,
    /// Start of the current exchange, for the `secs` field.
    exchange_started: DateTime<Utc>,
    /// First transmission of the current REQUEST: the lease counts from here (RFC 2131 4.4.1).
    /// The earliest send is the conservative choice: a late ACK to it cannot overstate the lease.
    request_sent_at: DateTime<Utc>,
    /// Transmissions in the current exchange.
    sends: u32,
    record: Option<LeaseRecord>,
    offer: Option<Offer>,
    /// An ACKed lease waiting for the ARP probe. Boxed: probing is rare and short, and the
    /// client sits in every address's task.
    probing: Option<Box<LeaseRecord>>,
    /// The last address held, for DISCOVER's option 50 and IpChanged.
    last_ip: Option<Ipv4Addr>,
    /// A record found expired on resume, reported on start().
    expired_on_resume: Option<Ipv4Addr>,
    failures: u32,
    consecutive_naks: u32,
    /// INIT-REBOOT: a NAK from a server other than the lease's, held back (server, message).
    /// It takes effect only if nobody confirms the lease before the next retransmission.
    deferred_nak: Option<(Ipv4Addr, Option<String>)>,
}

impl Client {
    pub fn new(cfg: ClientConfig, seed: u64) -> Self {
        let client_id = own_client_id(&cfg);
        let epoch = DateTime::<Utc>::UNIX_EPOCH;
        Client {
            cfg,
            client_id,
            rng: StdRng::seed_from_u64(seed),
            state: State::Init,
            deadline: None,
            xid: 0,
            exchange_started: epoch,
            request_sent_at: epoch,
            sends: 0,
            record: None,
            offer: None,
            probing: None,
            last_ip: None,
            expired_on_resume: None,
            failures: 0,
            consecutive_naks: 0,
            deferred_nak: None,
        }
    }

    /// Continues from a persisted record: INIT-REBOOT while it is valid, INIT otherwise.
    pub fn resume(cfg: ClientConfig, record: LeaseRecord, now: DateTime<Utc>, seed: u64) -> Self {
        let mut client = Client::new(cfg, seed);
        client.last_ip = Some(record.ip);
        if record.is_valid_at(now) {
            client.state = State::InitReboot;
            client.record = Some(record);
        } else {
            client.expired_on_resume = Some(record.ip);
        }
        client
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn deadline(&self) -> Option<DateTime<Utc>> {
        self.deadline
    }

    pub fn record(&self) -> Option<&LeaseRecord> {
        self.record.as_ref()
    }

    pub fn xid(&self) -> u32 {
        self.xid
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// The first transmission: DISCOVER from INIT, the INIT-REBOOT REQUEST after a resume.
    pub fn start(&mut self, now: DateTime<Utc>) -> Vec<Action> {
        let mut actions = Vec::new();
        match self.state {
            State::InitReboot => {
                self.new_exchange(now);
                self.set_state(State::Rebooting, &mut actions);
                self.send(now, &mut actions);
            }
            State::Init if self.deadline.is_none() && self.sends == 0 => {
                if let Some(ip) = self.expired_on_resume.take() {
                    actions.push(Action::ClearRecord);
                    actions.push(Action::Event(ClientEvent::Expired { ip }));
                }
                self.discover(now, &mut actions);
            }
            _ => {}
        }
        actions
    }

    pub fn on_timeout(&mut self, now: DateTime<Utc>) -> Vec<Action> {
        let mut actions = Vec::new();
        match self.deadline {
            Some(deadline) if now >= deadline => {}
            _ => return actions,
        }
        match self.state {
            State::Init => self.discover(now, &mut actions),
            State::Selecting => {
                self.failures += 1;
                self.send(now, &mut actions);
            }
            State::Requesting => {
                self.failures += 1;
                if self.sends >= self.cfg.timing.request_attempts {
                    self.set_state(State::Init, &mut actions);
                    self.discover(now, &mut actions);
                } else {
                    self.send(now, &mut actions);
                }
            }
            State::Rebooting => {
                self.failures += 1;
                if let Some((server, message)) = self.deferred_nak.take() {
                    // The lease's server stayed silent for a whole retransmission interval
                    // after another server NAKed: the network (or its server) changed.
                    self.drop_lease(now, server, message, &mut actions);
                } else if self.sends >= self.cfg.timing.init_reboot_attempts {
                    if let Some(record) = &self.record {
                        let ip = record.ip;
                        actions.push(Action::Event(ClientEvent::GaveUp { ip }));
                    }
                    self.follow_record(now, &mut actions);
                } else {
                    self.send(now, &mut actions);
                }
            }
            State::Renewing | State::Rebinding => {
                self.failures += 1;
                self.follow_record(now, &mut actions);
            }
            State::Bound => self.follow_record(now, &mut actions),
            State::InitReboot | State::Probing | State::Released | State::Stopped => {}
        }
        actions
    }

    /// Handles one received datagram. Never panics, whatever the bytes.
    pub fn on_reply(&mut self, now: DateTime<Utc>, payload: &[u8], meta: ReplyMeta) -> Vec<Action> {
        let kinds: &[ReplyKind] = match self.state {
            State::Selecting => &[ReplyKind::Offer],
            State::Requesting | State::Rebooting | State::Renewing | State::Rebinding => {
                &[ReplyKind::Ack, ReplyKind::Nak]
            }
            _ => return vec![rejected(RejectReason::NotExpectingReplies)],
        };
        // Who may answer and for what (RFC 2131 4.3.2, 4.4.5; reasoning in docs/engine.md):
        // REQUESTING and RENEWING talk to one server, which alone may ACK or NAK. REBINDING asks
        // every server, so any may, naming itself. INIT-REBOOT asks every server too: any may
        // confirm the address, the lease's own server may take it away at once, and another
        // server's NAK only counts if nobody confirms the lease before the next retransmission:
        // a NAK changes the address a client is announcing, and a forger sees every broadcast.
        let record = self.record.as_ref();
        let (ack_from, nak_from, address) = match self.state {
            State::Requesting => {
                let server = self.offer.map(|offer| offer.server);
                (server, server, self.offer.map(|offer| offer.ip))
            }
            State::Renewing => {
                let server = record.map(|r| r.server_id);
                (server, server, record.map(|r| r.ip))
            }
            State::Rebooting => (None, None, record.map(|r| r.ip)),
            _ => (None, None, record.map(|r| r.ip)),
        };
        let expect = Expectation {
            xid: self.xid,
            mac: self.cfg.mac,
            client_id: &self.client_id,
            kinds,
            ack_from,
            nak_from,
            address,
        };
        let reply = match reply::parse_reply(payload, &expect) {
            Ok(reply) => reply,
            Err(reason) => return vec![rejected(reason)],
        };
        if reply.kind != ReplyKind::Nak {
            let server: Vec<Ipv4Addr> = reply.server_id.into_iter().chain([meta.src_ip]).collect();
            let offered = usable::Offered {
                ip: reply.yiaddr,
                subnet_mask: reply.subnet_mask,
                routers: &reply.routers,
                server: &server,
            };
            if let Err(why) = usable::check(offered) {
                return vec![rejected(RejectReason::UnusableAddress {
                    yiaddr: reply.yiaddr,
                    why,
                })];
            }
        }
        if reply.kind == ReplyKind::Nak
            && self.state == State::Rebooting
            && let Some(expected) = record.map(|r| r.server_id)
            && reply.server_id != Some(expected)
        {
            self.deferred_nak = reply
                .server_id
                .map(|server| (server, reply.message.clone()));
            return vec![rejected(RejectReason::WrongServer {
                expected,
                got: reply.server_id,
            })];
        }
        let mut actions = Vec::new();
        match reply.kind {
            ReplyKind::Offer => self.take_offer(now, &reply, &mut actions),
            ReplyKind::Nak => self.on_nak(now, &reply, meta, &mut actions),
            ReplyKind::Ack => self.on_ack(&reply, meta, &mut actions),
        }
        actions
    }

    pub fn on_probe_result(&mut self, now: DateTime<Utc>, conflict: bool) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.state != State::Probing {
            return actions;
        }
        let Some(record) = self.probing.take().map(|record| *record) else {
            return actions;
        };
        if !conflict {
            self.bind(record, &mut actions);
            return actions;
        }
        // RFC 2131 3.1.5: the address is in use; decline it and wait before starting over.
        let decline = message::decline(&self.cfg, self.xid, record.ip, record.server_id);
        actions.push(Action::Send(decline));
        actions.push(Action::Event(ClientEvent::Declined { ip: record.ip }));
        self.failures += 1;
        self.set_state(State::Init, &mut actions);
        let backoff = timing::scaled(self.cfg.timing.decline_backoff, &self.cfg.timing);
        self.deadline = Some(timing::after(now, backoff));
        actions
    }

    /// Gives the address back: DHCPRELEASE if a lease is held, then nothing more is sent.
    pub fn release(&mut self, now: DateTime<Utc>) -> Vec<Action> {
        let mut actions = Vec::new();
        if matches!(self.state, State::Released | State::Stopped) {
            return actions;
        }
        let held = match self.state {
            State::Probing => self.probing.take().map(|record| *record),
            State::Bound
            | State::Renewing
            | State::Rebinding
            | State::Rebooting
            | State::InitReboot => self.record.clone().filter(|record| record.is_valid_at(now)),
            _ => None,
        };
        if let Some(record) = &held {
            self.xid = self.rng.random();
            actions.push(Action::Send(message::release(&self.cfg, self.xid, record)));
        }
        if self.record.take().is_some() {
            actions.push(Action::ClearRecord);
        }
        if let Some(record) = held {
            actions.push(Action::Event(ClientEvent::Released { ip: record.ip }));
        }
        self.set_state(State::Released, &mut actions);
        self.deadline = None;
        actions
    }

    /// Stops without releasing: the record stays valid for whoever resumes it (another node).
    pub fn stop(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        if !matches!(self.state, State::Released | State::Stopped) {
            self.set_state(State::Stopped, &mut actions);
        }
        self.deadline = None;
        actions
    }

    // --- transitions ---------------------------------------------------------------------------

    fn discover(&mut self, now: DateTime<Utc>, actions: &mut Vec<Action>) {
        self.offer = None;
        self.new_exchange(now);
        self.set_state(State::Selecting, actions);
        self.send(now, actions);
    }

    fn take_offer(&mut self, now: DateTime<Utc>, reply: &Reply, actions: &mut Vec<Action>) {
        let Some(server) = reply.server_id else {
            return;
        };
        self.offer = Some(Offer {
            ip: reply.yiaddr,
            server,
        });
        // Same xid as the DISCOVER (RFC 2131 4.4.1); the REQUEST count starts afresh.
        self.sends = 0;
        self.set_state(State::Requesting, actions);
        self.send(now, actions);
    }

    fn on_nak(
        &mut self,
        now: DateTime<Utc>,
        reply: &Reply,
        meta: ReplyMeta,
        actions: &mut Vec<Action>,
    ) {
        let server = reply.server_id.unwrap_or(meta.src_ip);
        self.drop_lease(now, server, reply.message.clone(), actions);
    }

    /// A NAK that counts: the lease is gone, start over after a short random delay.
    fn drop_lease(
        &mut self,
        now: DateTime<Utc>,
        server: Ipv4Addr,
        message: Option<String>,
        actions: &mut Vec<Action>,
    ) {
        self.deferred_nak = None;
        let state = self.state;
        if let Some(record) = self.record.take() {
            self.last_ip = Some(record.ip);
            actions.push(Action::ClearRecord);
        }
        actions.push(Action::Event(ClientEvent::Nak {
            server,
            message,
            state,
        }));
        self.failures += 1;
        self.consecutive_naks += 1;
        self.offer = None;
        self.set_state(State::Init, actions);
        let delay = timing::restart_delay(self.consecutive_naks, &self.cfg.timing, &mut self.rng);
        self.deadline = Some(timing::after(now, delay));
    }

    fn on_ack(&mut self, reply: &Reply, meta: ReplyMeta, actions: &mut Vec<Action>) {
        let record = self.record_from(reply, meta);
        if self.state == State::Requesting && self.cfg.arp_probe {
            let ip = record.ip;
            self.probing = Some(Box::new(record));
            self.set_state(State::Probing, actions);
            self.deadline = None;
            actions.push(Action::Probe(ip));
        } else {
            self.bind(record, actions);
        }
    }

    fn bind(&mut self, record: LeaseRecord, actions: &mut Vec<Action>) {
        let previous_ip = self.record.as_ref().map(|held| held.ip).or(self.last_ip);
        let renewal = self
            .record
            .as_ref()
            .is_some_and(|held| held.ip == record.ip);
        self.set_state(State::Bound, actions);
        self.deadline = Some(record.renew_at);
        actions.push(Action::Persist(record.clone()));
        actions.push(Action::Event(ClientEvent::Bound {
            record: record.clone(),
            renewal,
            after_failures: self.failures,
        }));
        if let Some(old) = previous_ip.filter(|&old| old != record.ip) {
            actions.push(Action::Event(ClientEvent::IpChanged {
                old,
                new: record.ip,
            }));
        }
        self.failures = 0;
        self.consecutive_naks = 0;
        self.deferred_nak = None;
        self.offer = None;
        self.last_ip = Some(record.ip);
        self.record = Some(record);
    }

    /// Puts the client where the held record's times say it should be: BOUND until T1, RENEWING
    /// until T2, REBINDING until expiry, then INIT. Retransmits when already in that state.
    fn follow_record(&mut self, now: DateTime<Utc>, actions: &mut Vec<Action>) {
        let Some(record) = &self.record else {
            self.set_state(State::Init, actions);
            self.discover(now, actions);
            return;
        };
        let target = if now >= record.expires_at {
            None
        } else if now >= record.rebind_at {
            Some(State::Rebinding)
        } else if now >= record.renew_at {
            Some(State::Renewing)
        } else {
            Some(State::Bound)
        };
        match target {
            None => self.expire(now, actions),
            Some(State::Bound) => {
                self.deadline = Some(record.renew_at);
                self.set_state(State::Bound, actions);
            }
            Some(state) => {
                if self.state != state {
                    self.new_exchange(now);
                    self.set_state(state, actions);
                }
                self.send(now, actions);
            }
        }
    }

    fn expire(&mut self, now: DateTime<Utc>, actions: &mut Vec<Action>) {
        if let Some(record) = self.record.take() {
            self.last_ip = Some(record.ip);
            actions.push(Action::ClearRecord);
            actions.push(Action::Event(ClientEvent::Expired { ip: record.ip }));
        }
        self.set_state(State::Init, actions);
        self.discover(now, actions);
    }

    // --- plumbing ------------------------------------------------------------------------------

    fn new_exchange(&mut self, now: DateTime<Utc>) {
        self.xid = self.rng.random();
        self.exchange_started = now;
        self.sends = 0;
    }

    /// Sends (or re-sends) the current state's message and arms its retransmission timer.
    fn send(&mut self, now: DateTime<Utc>, actions: &mut Vec<Action>) {
        let Some(transmission) = self.transmission(now) else {
            return;
        };
        if self.sends == 0 && self.state != State::Selecting {
            self.request_sent_at = now;
        }
        self.sends += 1;
        actions.push(Action::Send(transmission));
        let timing = &self.cfg.timing;
        self.deadline = Some(match (self.state, &self.record) {
            (State::Renewing, Some(record)) => {
                timing::renew_retry_at(now, record.rebind_at, timing)
            }
            (State::Rebinding, Some(record)) => {
                timing::renew_retry_at(now, record.expires_at, timing)
            }
            _ => timing::after(
                now,
                timing::retransmit_delay(self.sends, timing, &mut self.rng),
            ),
        });
    }

    fn transmission(&self, now: DateTime<Utc>) -> Option<Transmission> {
        let secs =
            u16::try_from((now - self.exchange_started).num_seconds().max(0)).unwrap_or(u16::MAX);
        let form = match (self.state, &self.record, self.offer) {
            (State::Selecting, _, _) => {
                return Some(message::discover(
                    &self.cfg,
                    self.xid,
                    secs,
                    self.last_ip.or(self.cfg.requested_ip),
                ));
            }
            (State::Requesting, _, Some(offer)) => RequestForm::Selecting {
                requested: offer.ip,
                server: offer.server,
            },
            (State::Rebooting, Some(record), _) => RequestForm::InitReboot {
                requested: record.ip,
            },
            (State::Renewing, Some(record), _) => RequestForm::Renewing {
                ip: record.ip,
                server: record.server_id,
                server_mac: record.server_mac,
            },
            (State::Rebinding, Some(record), _) => RequestForm::Rebinding { ip: record.ip },
            _ => return None,
        };
        Some(message::request(&self.cfg, self.xid, secs, form))
    }

    fn record_from(&mut self, reply: &Reply, meta: ReplyMeta) -> LeaseRecord {
        let lease_seconds = reply.lease_seconds.unwrap_or(1);
        let times = timing::lease_times(
            self.request_sent_at,
            lease_seconds,
            reply.t1_seconds,
            reply.t2_seconds,
            &self.cfg.timing,
            &mut self.rng,
        );
        let server_id = reply
            .server_id
            .or(self.offer.map(|offer| offer.server))
            .unwrap_or(meta.src_ip);
        let usable_mac = |mac: MacAddr| !mac.is_multicast() && mac.octets() != [0; 6];
        LeaseRecord {
            ip: reply.yiaddr,
            prefix_len: reply.prefix_len(),
            routers: reply.routers.clone(),
            dns: reply.dns.clone(),
            domain_name: reply.domain_name.clone(),
            mac: self.cfg.mac,
            client_id: hex::encode(&self.client_id),
            hostname: self.cfg.hostname.clone(),
            server_id,
            server_mac: Some(meta.src_mac).filter(|&mac| usable_mac(mac)),
            lease_seconds,
            obtained_at: self.request_sent_at,
            renew_at: times.renew_at,
            rebind_at: times.rebind_at,
            expires_at: times.expires_at,
        }
    }

    fn set_state(&mut self, to: State, actions: &mut Vec<Action>) {
        if self.state != to {
            let from = std::mem::replace(&mut self.state, to);
            actions.push(Action::Event(ClientEvent::StateChanged { from, to }));
        }
    }
}

fn rejected(reason: RejectReason) -> Action {
    Action::Event(ClientEvent::Rejected { reason })
}
