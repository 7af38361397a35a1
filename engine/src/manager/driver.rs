//! The task that runs one address: it feeds the pure [`Client`] with replies, timeouts and probe
//! results, and carries out what the client asks for (send, probe, persist, report). This is the
//! only place where the state machine meets sockets, links and the clock.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{broadcast, oneshot, watch};
use tracing::{debug, info, warn};

use super::PersistFn;
use super::counters::Counters;
use super::owned_links::OwnedLinks;
use super::rate_limit::{Priority, RateLimiter};
use super::spec::{AddressStatus, KeyedEvent};
use super::transport::Transport;
use crate::dhcp::{Action, Client, ClientEvent, LeaseRecord, MacAddr, ReplyMeta, State};
use crate::net::announce::{self, Announcement};
use crate::net::arp::{self, ProbeTiming};
use crate::net::packet_socket::DhcpSocket;

/// RFC 5227 ANNOUNCE_INTERVAL: the second gratuitous ARP follows the first after this.
const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(2);
/// First pause between attempts to re-create a vanished link (the parent may be gone too).
const RESTORE_FIRST_PAUSE: Duration = Duration::from_millis(100);
/// Longest pause between such attempts.
const RESTORE_MAX_PAUSE: Duration = Duration::from_secs(5);

/// What the manager may ask of a running address: once, as its last word (the task ends after
/// it, which is how the manager learns it was carried out). A oneshot, not an mpsc channel:
/// tokio's mpsc allocates ~1 KiB per channel (cache-padded halves and a first block of 32
/// slots), a oneshot ~100 bytes, and every address has one for its whole life.
#[derive(Debug)]
pub(super) enum Command {
    /// Send DHCPRELEASE (if a lease is held) and stop.
    Release,
    /// Stop without telling the server: the lease stays valid for whoever resumes it.
    Stop,
}

/// What woke an address's task.
enum Woke {
    Command(Option<Command>),
    /// Time to try re-creating the vanished link.
    Restore,
    Received(std::io::Result<crate::net::packet_socket::Received>),
    /// The client's deadline passed.
    Deadline,
}

/// Everything one address's task owns.
pub(super) struct Driver {
    pub key: String,
    pub client: Client,
    /// Its macvlan's socket, or its place on the parent's shared socket.
    pub transport: Transport,
    /// The link's index (assign mode); the parent's for a linkless address.
    pub ifindex: u32,
    pub links: OwnedLinks,
    /// Parent interface of the link (to re-create it if it vanishes).
    pub parent: String,
    pub limiter: Arc<RateLimiter>,
    pub persist: PersistFn,
    pub events: broadcast::Sender<Arc<KeyedEvent>>,
    pub status: watch::Sender<AddressStatus>,
    pub commands: oneshot::Receiver<Command>,
    pub counters: Arc<Counters>,
    pub probe_timing: ProbeTiming,
    /// Where the link's sockets are created.
    pub netns: crate::net::NetNs,
    /// Whether the leased IP is configured on the link.
    pub assign_ip: bool,
    /// The address currently configured on the link (only when the IP is assigned).
    pub assigned: Option<(std::net::Ipv4Addr, u8)>,
    /// What was installed to answer and reply for the assigned address from this link only.
    pub announced: Option<Announcement>,
}

impl Driver {
    /// The address's task. Not an `async fn (mut self)`: that keeps the driver twice in the
    /// future (once as the argument, once moved into the body), ~1.2 KiB more in every
    /// address's task; an `async move` block keeps its capture in place.
    #[expect(
        clippy::manual_async_fn,
        reason = "the async fn form stores the driver twice (measured 2.9 vs 1.7 KiB)"
    )]
    pub fn run(mut self) -> impl std::future::Future<Output = ()> + Send + 'static {
        async move { self.drive().await }
    }

    async fn drive(&mut self) {
        if let Some((ip, prefix_len)) = self.assigned {
            // Resumed (restart or takeover) with the address kept on the link: say so on the
            // segment, from this MAC, before anything else.
            let gateway = self
                .client
                .record()
                .and_then(|r| r.routers.first().copied());
            // Boxed, like every rare await below that talks rtnetlink: a future is as large as
            // its largest await, and this one lives in every address's task for its whole life
            // (unboxed they made it 5.3 KiB, most of a linkless lease's memory).
            Box::pin(self.announce(ip, prefix_len, gateway)).await;
        }
        let actions = self.client.start(Utc::now());
        Box::pin(self.execute(actions)).await;
        // While the link is missing: when to try re-creating it next, and the pause after that.
        let mut restore: Option<(tokio::time::Instant, Duration)> = None;
        loop {
            // The select only says what happened; its futures are gone before anything is
            // carried out, and there is one `execute` below for every reply and timeout: the
            // task's future (which every address holds for its whole life) then needs room
            // for one execution, not one per branch.
            let woke = {
                let deadline = sleep_until(self.client.deadline());
                let retry = async {
                    match restore {
                        Some((at, _)) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    command = &mut self.commands => Woke::Command(command.ok()),
                    () = retry => Woke::Restore,
                    received = self.transport.recv(), if restore.is_none() => {
                        Woke::Received(received)
                    }
                    () = deadline => Woke::Deadline,
                }
            };
            let actions = match woke {
                Woke::Command(command) => {
                    // Boxed: once in an address's life.
                    Box::pin(self.carry_out(command)).await;
                    return;
                }
                Woke::Restore => {
                    let (_, pause) = restore.expect("only armed while missing");
                    restore = match Box::pin(self.restore_link()).await {
                        true => None,
                        false => {
                            let next = (pause * 2).min(RESTORE_MAX_PAUSE);
                            Some((tokio::time::Instant::now() + pause, next))
                        }
                    };
                    continue;
                }
                Woke::Received(Ok(frame)) => {
                    Counters::bump(&self.counters.packets_received);
                    let meta = ReplyMeta {
                        src_mac: MacAddr(frame.src_mac),
                        src_ip: frame.src_ip,
                    };
                    self.client.on_reply(Utc::now(), &frame.payload, meta)
                }
                Woke::Received(Err(error)) => {
                    // A packet socket reports ENETDOWN once when its link goes down or
                    // away; otherwise the kernel is out of buffers and the client's own
                    // timers retry, so wait a little instead of spinning.
                    if Box::pin(self.link_vanished()).await {
                        restore = Some((tokio::time::Instant::now(), RESTORE_FIRST_PAUSE));
                        continue;
                    }
                    warn!(key = %self.key, %error, "receive failed");
                    self.set_error(format!("receive failed: {error}"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Woke::Deadline => self.client.on_timeout(Utc::now()),
            };
            // Boxed for the time it runs (one allocation per reply or timeout, freed at once)
            // rather than ~0.7 KiB in every address's task for its whole life.
            Box::pin(self.execute(actions)).await;
        }
    }

    /// The manager's last word: release (or just stop) and report the address finished. `None`:
    /// the manager is gone without a word.
    async fn carry_out(&mut self, command: Option<Command>) {
        match command {
            Some(Command::Release) => {
                let actions = self.client.release(Utc::now());
                self.execute(actions).await;
            }
            Some(Command::Stop) => self.withdraw().await,
            None => {}
        }
        self.finish();
    }

    /// Carries out the client's actions; a probe result feeds more actions back in.
    async fn execute(&mut self, actions: Vec<Action>) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Send(_) if self.status.borrow().link_missing => {
                    // Lost like any datagram; the client's timers retry once the link is back.
                    debug!(key = %self.key, "not sent: the link is missing");
                }
                Action::Send(transmission) => {
                    // Renewals (and INIT-REBOOT, release) of a held lease go before new
                    // addresses' exchanges: adding addresses must never cost one a renewal.
                    let held = self.client.record().is_some()
                        || transmission.kind == crate::dhcp::MessageKind::Release;
                    let priority = if held { Priority::Held } else { Priority::New };
                    self.limiter.acquire(priority).await;
                    match self.transport.send(&transmission) {
                        Ok(()) => Counters::bump(&self.counters.packets_sent),
                        Err(error) => {
                            Counters::bump(&self.counters.send_errors);
                            warn!(key = %self.key, %error, kind = ?transmission.kind, "send failed");
                            self.set_error(format!(
                                "sending {:?} failed: {error}",
                                transmission.kind
                            ));
                        }
                    }
                }
                Action::Probe(ip) => {
                    // Boxed: a probe is rare and its state large; unboxed it would sit in
                    // every address's task for its whole life.
                    let conflict =
                        Box::pin(self.transport.probe(ip, self.probe_timing, &self.netns))
                            .await
                            .unwrap_or_else(|error| {
                                // A probe that cannot run must not block the lease: RFC 5227 probing
                                // is a SHOULD. Report it and carry on as if no conflict was seen.
                                warn!(key = %self.key, %error, "ARP probe failed");
                                false
                            });
                    queue.extend(self.client.on_probe_result(Utc::now(), conflict));
                }
                Action::Persist(record) => {
                    if self.assign_ip {
                        Box::pin(self.sync_assigned_ip(Some(&record))).await;
                    }
                    (self.persist)(&self.key, Some(&record));
                }
                Action::ClearRecord => {
                    if self.assign_ip {
                        Box::pin(self.sync_assigned_ip(None)).await;
                    }
                    (self.persist)(&self.key, None);
                }
                Action::Event(event) => {
                    self.log_event(&event);
                    if let ClientEvent::Rejected { reason } = &event {
                        self.counters.count_rejection(reason);
                    }
                    let _ = self.events.send(Arc::new(KeyedEvent {
                        key: self.key.clone(),
                        event,
                    }));
                }
            }
        }
        self.publish();
    }

    /// Keeps the link's configured address equal to the held lease (assign mode only).
    async fn sync_assigned_ip(&mut self, record: Option<&LeaseRecord>) {
        if !self.assign_ip {
            return;
        }
        let wanted = record.map(|r| (r.ip, r.prefix_len));
        if wanted == self.assigned {
            return;
        }
        self.withdraw().await;
        if let Some((ip, prefix)) = self.assigned.take()
            && let Err(error) = self.links.remove_ip(self.ifindex, ip, prefix).await
        {
            warn!(key = %self.key, %error, "removing the old address failed");
        }
        if let Some((ip, prefix)) = wanted {
            match self.links.assign_ip(self.ifindex, ip, prefix).await {
                Ok(()) => {
                    self.assigned = Some((ip, prefix));
                    let gateway = record.and_then(|r| r.routers.first().copied());
                    self.announce(ip, prefix, gateway).await;
                }
                Err(error) => self.set_error(format!("assigning {ip}/{prefix} failed: {error}")),
            }
        }
    }

    /// Answers and replies for the address from this link only, and tells the segment (two
    /// RFC 5227 announcements, 2 s apart). A failure is reported, not fatal: the lease is held.
    async fn announce(
        &mut self,
        ip: std::net::Ipv4Addr,
        prefix_len: u8,
        gateway: Option<std::net::Ipv4Addr>,
    ) {
        let announcement = Announcement {
            ifindex: self.ifindex,
            ip,
            prefix_len,
            gateway,
        };
        match announce::install(self.links.netlink(), &announcement).await {
            Ok(()) => self.announced = Some(announcement),
            Err(error) => {
                warn!(key = %self.key, %error, "isolating the address on its link failed");
                self.links.count_announce_failure();
                self.set_error(format!(
                    "announcing {ip} from its link only failed: {error}"
                ));
            }
        }
        if self.announced.is_some() {
            let marks = self.links.reply_marks();
            match announce::mark_replies(self.links.netlink(), marks, &announcement).await {
                Ok(mark) => {
                    debug!(key = %self.key, %ip, mark = format!("{mark:#x}"), "replies of DNATed connections marked")
                }
                Err(error) => {
                    // Replies of pods behind kube-proxy may leave with the node's MAC; the
                    // node's own replies still leave with the lease's.
                    warn!(key = %self.key, %error, "marking the replies of the address failed");
                    self.links.count_announce_failure();
                    self.set_error(format!(
                        "routing DNATed replies of {ip} out of its link failed: {error}"
                    ));
                }
            }
        }
        let (ifindex, mac, netns) = (self.ifindex, self.transport.mac(), self.netns.clone());
        let send = move || match netns.run(|| arp::announce(ifindex, mac, ip)) {
            Ok(Ok(())) => {}
            Ok(Err(error)) | Err(error) => warn!(%ip, %error, "gratuitous ARP failed"),
        };
        send();
        tokio::spawn(async move {
            tokio::time::sleep(ANNOUNCE_INTERVAL).await;
            send();
        });
    }

    /// Removes what [`Driver::announce`] installed (the routes would go with the link, the
    /// rule would not).
    async fn withdraw(&mut self) {
        let Some(announcement) = self.announced.take() else {
            return;
        };
        let netlink = self.links.netlink();
        if let Err(error) =
            announce::unmark_replies(netlink, self.links.reply_marks(), &announcement).await
        {
            warn!(key = %self.key, %error, "removing the reply marks of the address failed");
        }
        if let Err(error) = announce::withdraw(netlink, &announcement).await {
            warn!(key = %self.key, %error, "withdrawing the announcement failed");
        }
    }

    /// Whether the link is gone (not merely down); if so, marks the address as unable to
    /// transmit, forgets what was configured on the link (it went with it) and says so.
    async fn link_vanished(&mut self) -> bool {
        // A linkless address has no link of its own to lose (its parent's socket is shared).
        if !matches!(self.transport, Transport::Link { .. }) {
            return false;
        }
        match self.links.exists(self.ifindex).await {
            Ok(true) => return false,
            Ok(false) => {}
            Err(error) => {
                warn!(key = %self.key, %error, "cannot tell whether the link still exists");
                return false;
            }
        }
        let interface = self.status.borrow().interface.clone();
        warn!(key = %self.key, %interface, ifindex = self.ifindex, "the address's link vanished; re-creating it");
        // The policy rule of an announcement outlives the link; addresses and routes do not.
        self.withdraw().await;
        self.assigned = None;
        self.status.send_modify(|status| {
            status.link_missing = true;
            status.last_error = Some(format!(
                "link {interface} vanished: nothing can be sent until it is re-created"
            ));
        });
        true
    }

    /// One attempt to re-create the vanished link (same name, MAC and owner alias) with a fresh
    /// socket; on success the lease carries on: the address goes back on the link (assign mode)
    /// and a held lease is re-confirmed at once with INIT-REBOOT for the same IP, which the
    /// server answers with an ACK that extends it (RFC 2131 3.2: a client that may have lost its
    /// network attachment verifies its lease). Returns whether the link is back.
    async fn restore_link(&mut self) -> bool {
        let mac = MacAddr(self.transport.mac());
        let created = match self.links.create(&self.key, &self.parent, mac).await {
            Ok(created) => created,
            Err(error) => {
                debug!(key = %self.key, %error, "re-creating the link failed; trying again");
                self.set_error(format!(
                    "link {} vanished and cannot be re-created yet: {error}",
                    self.status.borrow().interface
                ));
                return false;
            }
        };
        // The manager's claim on the name stays with the running address.
        let (name, ifindex) = (created.name.clone(), created.ifindex);
        drop(created);
        let socket = match self.netns.run(|| DhcpSocket::open(ifindex, mac.octets())) {
            Ok(Ok(socket)) => socket,
            Ok(Err(error)) | Err(error) => {
                warn!(key = %self.key, %error, "opening the socket on the re-created link failed");
                self.set_error(format!("opening the socket on {name} failed: {error}"));
                return false;
            }
        };
        self.transport = Transport::Link { socket, ifindex };
        self.ifindex = ifindex;
        self.links.count_restored();
        warn!(key = %self.key, interface = %name, ifindex, "link re-created");
        self.status.send_modify(|status| {
            status.link_missing = false;
            status.ifindex = ifindex;
            status.last_error = None;
        });
        let now = Utc::now();
        let record = self.client.record().cloned();
        self.sync_assigned_ip(record.as_ref()).await;
        if let Some(record) = record.filter(|r| r.is_valid_at(now)) {
            let config = self.client.config().clone();
            self.client = Client::resume(config, record, now, rand::random());
            let actions = self.client.start(now);
            self.execute(actions).await;
        }
        self.publish();
        true
    }

    fn log_event(&self, event: &ClientEvent) {
        match event {
            // Stray and malformed traffic is everyday noise on a shared segment; a well-formed
            // reply to us that we must refuse (another server, address or an unusable one) is
            // worth an operator's attention.
            ClientEvent::Rejected { reason } if reason.is_suspicious() => {
                warn!(key = %self.key, reason = reason.label(), ?event, "dhcp reply refused")
            }
            ClientEvent::Rejected { .. } | ClientEvent::StateChanged { .. } => {
                debug!(key = %self.key, ?event, "dhcp")
            }
            _ => info!(key = %self.key, ?event, "dhcp"),
        }
    }

    fn set_error(&mut self, message: String) {
        self.status
            .send_modify(|status| status.last_error = Some(message));
    }

    fn publish(&mut self) {
        let state = self.client.state();
        let record = self.client.record().cloned();
        self.status.send_if_modified(|status| {
            let changed = status.state != state || status.record != record;
            if changed {
                status.state = state;
                status.record = record;
                if matches!(state, State::Bound) {
                    status.last_error = None;
                }
            }
            changed
        });
    }

    fn finish(&mut self) {
        self.publish();
        self.status.send_modify(|status| status.finished = true);
    }
}

/// Sleeps until a wall-clock deadline; forever when there is none.
async fn sleep_until(deadline: Option<DateTime<Utc>>) {
    match deadline {
        Some(at) => {
            let wait = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            tokio::time::sleep(wait).await
        }
        None => std::future::pending().await,
    }
}
