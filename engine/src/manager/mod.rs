//! The lease manager: many addresses at once, each a [`driver`] task with its own macvlan and
//! packet socket, sharing one rate limiter toward the DHCP server and one persistence callback.
//!
//! The manager never decides *which* addresses should exist: its callers (the Kubernetes agent,
//! the standalone apiserver, the `lease` command) do, and hand every lease-record change to the
//! persistence callback so that a restart resumes from it.

mod capacity;
mod counters;
mod driver;
pub mod owned_links;
mod rate_limit;
mod reaper;
mod spec;
mod transport;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::warn;

pub use capacity::{Capacity, DEFAULT_MAX_ADDRESSES, KernelLimits, Refusal};
pub use counters::{CounterSnapshot, Counters, PacketCounters, ReasonLabel};
pub use owned_links::OwnedLinks;
pub use rate_limit::{Priority, RateLimiter, TokenBucket};
pub use spec::{AddressSpec, AddressStatus, KeyedEvent};

use crate::dhcp::{Client, LeaseRecord, State};
use crate::error::Error;
use crate::instance::InstanceId;
use crate::net::NetNs;
use crate::net::arp::ProbeTiming;
use crate::net::links::{self, Links};
use crate::net::packet_socket::DhcpSocket;
use crate::net::reply_mark::ReplyMarks;
use driver::{Command, Driver};
use owned_links::Claim;
use transport::{Parents, Transport};

/// Called with every change of an address's lease record (`None`: the lease is gone). It runs
/// on the address's task: keep it quick (hand off to a channel for slow storage).
pub type PersistFn = Arc<dyn Fn(&str, Option<&LeaseRecord>) + Send + Sync>;

/// Settings shared by all addresses of one manager.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Link group of our macvlans (bulk delete, adoption).
    pub link_group: u32,
    /// Link group of retired links (silenced, waiting to be deleted in bulk, see [`reaper`]);
    /// must differ from `link_group` and from 0.
    pub retired_link_group: u32,
    /// New transmissions per second toward the DHCP server, all addresses together.
    pub rate_per_second: f64,
    /// How many transmissions may go out at once before the rate applies.
    pub burst: u32,
    /// RFC 5227 probe timing (used when a client has ARP probing on).
    pub probe_timing: ProbeTiming,
    /// The network namespace of the links and sockets (default: the caller's).
    pub netns: NetNs,
    /// How many addresses this manager takes on; more are refused (see [`capacity`]).
    pub capacity: Capacity,
    /// Addresses whose IP is not configured on the node (`ip_assigned` false) run without a
    /// macvlan, over one shared socket per parent (see [`transport`]); off: every address gets
    /// its own macvlan, as before.
    pub linkless: bool,
    /// The connection-mark bits of announced addresses (see [`crate::net::reply_mark`]): each
    /// announced address takes one value of these bits; must not be 0.
    pub reply_mark_mask: u32,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            link_group: links::DEFAULT_LINK_GROUP,
            retired_link_group: links::DEFAULT_RETIRED_LINK_GROUP,
            rate_per_second: 500.0,
            burst: 100,
            probe_timing: ProbeTiming::RFC5227,
            netns: NetNs::current(),
            capacity: Capacity::default(),
            linkless: true,
            reply_mark_mask: crate::net::reply_mark::DEFAULT_MARK_MASK,
        }
    }
}

struct Running {
    /// Its one command (release or stop); the task ends after it.
    commands: oneshot::Sender<Command>,
    status: watch::Receiver<AddressStatus>,
    task: JoinHandle<()>,
    mac: crate::dhcp::MacAddr,
    /// Its place in the capacity, given back when it is removed.
    _seat: capacity::Seat,
    /// Keeps the orphan sweep off the link while the address runs; `None` for a linkless
    /// address, which has no link (and so none is kept for it).
    claim: Option<Claim>,
}

/// Holds leases for many addresses. Cheap to clone; all clones share the same addresses.
#[derive(Clone)]
pub struct LeaseManager {
    inner: Arc<Inner>,
}

struct Inner {
    config: ManagerConfig,
    links: OwnedLinks,
    limiter: Arc<RateLimiter>,
    persist: PersistFn,
    events: broadcast::Sender<Arc<KeyedEvent>>,
    counters: Arc<Counters>,
    running: Mutex<HashMap<String, Running>>,
    seats: capacity::Seats,
    /// The shared sockets of linkless addresses, one per parent.
    parents: Parents,
}

impl LeaseManager {
    /// A manager whose links live in `config.netns`, on the current runtime (which also runs
    /// the task deleting retired links).
    ///
    /// `owner` is the instance whose links these are: written on every link, and the only links
    /// this manager adopts, sweeps or removes (see [`owned_links`]). It must stay the same across
    /// restarts of the same instance and differ between instances that share a network namespace.
    pub fn new(
        owner: InstanceId,
        config: ManagerConfig,
        persist: PersistFn,
    ) -> Result<Self, Error> {
        let retired = config.retired_link_group;
        if retired == 0 || retired == config.link_group {
            return Err(links::LinkError::RetiredGroup {
                retired,
                group: config.link_group,
            }
            .into());
        }
        let netlink = config
            .netns
            .run(Links::connect)
            .map_err(|source| Error::Socket {
                interface: "rtnetlink".into(),
                source,
            })??
            .with_retired_group(retired);
        if config.reply_mark_mask == 0 {
            return Err(Error::ConfigInvalid(
                "reply-mark-mask".into(),
                "the reply mark mask must have at least one bit".into(),
            ));
        }
        let marks = ReplyMarks::new(&owner, config.reply_mark_mask, config.netns.clone());
        let links = OwnedLinks::new(netlink, owner, config.link_group, marks);
        // Our table of an earlier run (killed before it could remove it) names links of then;
        // the addresses that resume mark their connections again.
        links.remove_reply_marks();
        // A broadcast channel allocates all its slots up front. Events travel behind an `Arc`
        // so a slot is a pointer, not a lease record: 4,096 slots cost ~0.2 MiB instead of
        // ~1.1 MiB, which was 9 KiB per lease for a node holding 100 addresses.
        let (events, _) = broadcast::channel(4096);
        Ok(LeaseManager {
            inner: Arc::new(Inner {
                limiter: Arc::new(RateLimiter::new(config.rate_per_second, config.burst)),
                seats: capacity::Seats::new(&config.capacity, KernelLimits::read()),
                parents: Parents::new(config.netns.clone()),
                config,
                persist,
                events,
                counters: Arc::new(Counters::default()),
                running: Mutex::new(HashMap::new()),
                links,
            }),
        })
    }

    /// The rtnetlink connection of the manager's links (tests and benchmarks inspect them).
    pub fn links(&self) -> &Links {
        self.inner.links.netlink()
    }

    /// The instance whose links this manager keeps.
    pub fn owner(&self) -> &InstanceId {
        self.inner.links.owner()
    }

    /// Every client event of every address, as it happens.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<KeyedEvent>> {
        self.inner.events.subscribe()
    }

    pub fn counters(&self) -> CounterSnapshot {
        self.inner.counters.snapshot()
    }

    /// The limits in force: (addresses in all, addresses on macvlans per parent).
    pub fn capacity(&self) -> (usize, usize) {
        self.inner.seats.limits()
    }

    /// Whether an address runs on a macvlan of its own: with its IP assigned, or when the
    /// manager is not linkless.
    pub fn needs_link(&self, ip_assigned: bool) -> bool {
        ip_assigned || !self.inner.config.linkless
    }

    /// Addresses that count against the capacity now (running, starting, prepared).
    pub fn seated(&self) -> usize {
        self.inner.seats.taken()
    }

    /// The live counters (for [`PacketCounters::catch_up`] and the rejections by reason).
    pub fn live_counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// Announcements that failed in part (the address kept its lease).
    pub fn announce_failures(&self) -> &prometheus_client::metrics::counter::Counter {
        self.inner.links.announce_failures()
    }

    /// Links re-created after they vanished (the address carried on with its lease).
    pub fn links_restored(&self) -> &prometheus_client::metrics::counter::Counter {
        self.inner.links.restored()
    }

    /// Starts holding `spec`. With a `record` that is still valid and has the same MAC the client
    /// resumes it (INIT-REBOOT for the same IP, never a DISCOVER); otherwise it starts in INIT.
    /// Starting a key that is already running returns its status.
    pub async fn start(
        &self,
        spec: AddressSpec,
        record: Option<LeaseRecord>,
    ) -> Result<watch::Receiver<AddressStatus>, Error> {
        if let Some(running) = self.lock().get(&spec.key) {
            return Ok(running.status.clone());
        }
        if !self.needs_link(spec.client.ip_assigned) {
            return self.start_linkless(spec, record);
        }
        // Boxed: making a link awaits rtnetlink several times, which would make every caller's
        // start future (one per address being started, thousands at once) KiBs larger.
        Box::pin(self.start_with_link(spec, record)).await
    }

    async fn start_with_link(
        &self,
        spec: AddressSpec,
        record: Option<LeaseRecord>,
    ) -> Result<watch::Receiver<AddressStatus>, Error> {
        let link = self
            .prepare(&spec.key, &spec.parent, spec.client.mac)
            .await?;
        self.start_prepared(spec, record, link).await
    }

    /// Creates the macvlan and packet socket of `key` without starting a client on them, so a
    /// caller that knows the next key and MAC ahead of time (the standalone apiserver's spares)
    /// takes link creation, the slowest step of a start, off the path of its request.
    pub async fn prepare(
        &self,
        key: &str,
        parent: &str,
        mac: crate::dhcp::MacAddr,
    ) -> Result<PreparedLink, Error> {
        if self.lock().contains_key(key) {
            // Its link has the same name: preparing would adopt the running address's link.
            return Err(Error::AlreadyRunning(key.to_owned()));
        }
        let seat = self
            .inner
            .seats
            .take(parent, true)
            .map_err(|refusal| Error::Capacity {
                key: key.to_owned(),
                refusal,
            })?;
        let owned_links::CreatedLink {
            name,
            ifindex,
            claim,
        } = self.inner.links.create(key, parent, mac).await?;
        match open_socket(&self.inner.config.netns, ifindex, mac) {
            Ok(socket) => Ok(PreparedLink {
                key: key.to_owned(),
                mac,
                parent: parent.to_owned(),
                name,
                ifindex,
                socket,
                claim,
                seat,
            }),
            Err(error) => {
                // Leave nothing behind for an address we could not start.
                let _ = self.inner.links.retire(ifindex, mac).await;
                Err(Error::Socket {
                    interface: name,
                    source: error,
                })
            }
        }
    }

    /// Retires a prepared link that will not be used (see [`LeaseManager::settle_links`]).
    pub async fn discard(&self, link: PreparedLink) -> Result<(), Error> {
        self.inner.links.retire(link.ifindex, link.mac).await
    }

    /// Whether a retired link, not deleted yet, holds `mac`: a new link with it would wait.
    pub fn mac_in_retired_link(&self, mac: crate::dhcp::MacAddr) -> bool {
        self.inner.links.mac_in_retired_link(mac)
    }

    /// Completes once every link retired before the call (by a release, a stop that removes
    /// its link, a discard) has been deleted: for clean shutdowns and for tests. An error says
    /// the last group delete failed and retired links may be left for the next orphan sweep.
    pub fn settle_links(&self) -> impl std::future::Future<Output = Result<(), Error>> + 'static {
        let settled = self.inner.links.settled();
        async move { Ok(settled.await?) }
    }

    /// [`LeaseManager::start`] on a link [`LeaseManager::prepare`]d for the same key and MAC.
    pub async fn start_prepared(
        &self,
        spec: AddressSpec,
        record: Option<LeaseRecord>,
        link: PreparedLink,
    ) -> Result<watch::Receiver<AddressStatus>, Error> {
        if link.key != spec.key || link.mac != spec.client.mac {
            let problem = Error::PreparedForOther {
                prepared: format!("{} ({})", link.key, link.mac),
                wanted: format!("{} ({})", spec.key, spec.client.mac),
            };
            let _ = self.discard(link).await;
            return Err(problem);
        }
        let PreparedLink {
            name,
            ifindex,
            socket,
            mac,
            claim,
            seat,
            ..
        } = link;
        let now = Utc::now();
        let assign_ip = spec.client.ip_assigned;
        let resumable = record.filter(|r| r.mac == mac && r.is_valid_at(now));
        let mut assigned = None;
        if let (true, Some(record)) = (assign_ip, &resumable) {
            // Keep the address on the link across the restart: it is still ours.
            match self
                .inner
                .links
                .assign_ip(ifindex, record.ip, record.prefix_len)
                .await
            {
                Ok(()) => assigned = Some((record.ip, record.prefix_len)),
                Err(error) => {
                    warn!(key = %spec.key, %error, "re-assigning the resumed address failed")
                }
            }
        }
        let launch = Launch {
            transport: Transport::Link { socket, ifindex },
            interface: name,
            ifindex,
            claim: Some(claim),
            assigned,
            seat,
        };
        Ok(self.launch(spec, resumable, launch))
    }

    /// [`LeaseManager::start`] for an address that needs no link: its client runs over the
    /// parent's shared socket (opened with the first such address on that parent).
    fn start_linkless(
        &self,
        spec: AddressSpec,
        record: Option<LeaseRecord>,
    ) -> Result<watch::Receiver<AddressStatus>, Error> {
        let refused = |refusal| Error::Capacity {
            key: spec.key.clone(),
            refusal,
        };
        let seat = self
            .inner
            .seats
            .take(&spec.parent, false)
            .map_err(refused)?;
        let lessee = self
            .inner
            .parents
            .join(&spec.parent, spec.client.mac.octets())
            .map_err(|source| parent_error(&spec.parent, source))?;
        let now = Utc::now();
        let mac = spec.client.mac;
        let resumable = record.filter(|r| r.mac == mac && r.is_valid_at(now));
        let launch = Launch {
            interface: lessee.parent_name().to_owned(),
            ifindex: lessee.parent_ifindex(),
            transport: Transport::Parent(lessee),
            claim: None,
            assigned: None,
            seat,
        };
        Ok(self.launch(spec, resumable, launch))
    }

    /// Spawns the driver of one address and records it as running.
    fn launch(
        &self,
        spec: AddressSpec,
        resumable: Option<LeaseRecord>,
        launch: Launch,
    ) -> watch::Receiver<AddressStatus> {
        let Launch {
            transport,
            interface,
            ifindex,
            claim,
            assigned,
            seat,
        } = launch;
        let now = Utc::now();
        let seed = rand::random::<u64>();
        let assign_ip = spec.client.ip_assigned;
        let mac = spec.client.mac;
        let client = match resumable {
            Some(record) => Client::resume(spec.client, record, now, seed),
            None => Client::new(spec.client, seed),
        };
        let (status_tx, status_rx) = watch::channel(AddressStatus {
            state: client.state(),
            record: client.record().cloned(),
            interface,
            ifindex,
            last_error: None,
            finished: false,
            link_missing: false,
        });
        let (commands_tx, commands_rx) = oneshot::channel();
        let driver = Driver {
            key: spec.key.clone(),
            client,
            transport,
            ifindex,
            links: self.inner.links.clone(),
            parent: spec.parent.clone(),
            limiter: self.inner.limiter.clone(),
            persist: self.inner.persist.clone(),
            events: self.inner.events.clone(),
            status: status_tx,
            commands: commands_rx,
            counters: self.inner.counters.clone(),
            probe_timing: self.inner.config.probe_timing,
            netns: self.inner.config.netns.clone(),
            assign_ip,
            assigned,
            announced: None,
        };
        let task = tokio::spawn(driver.run());
        self.lock().insert(
            spec.key,
            Running {
                commands: commands_tx,
                status: status_rx.clone(),
                task,
                mac,
                _seat: seat,
                claim,
            },
        );
        status_rx
    }

    /// Sends DHCPRELEASE for the address (if it holds a lease), stops it and retires its link
    /// (deleted soon after; see [`LeaseManager::settle_links`]).
    pub async fn release(&self, key: &str) -> Result<(), Error> {
        self.finish(key, true, true).await
    }

    /// Stops the address without telling the server (the lease stays valid for a successor);
    /// `remove_link` retires its macvlan too.
    pub async fn stop(&self, key: &str, remove_link: bool) -> Result<(), Error> {
        self.finish(key, false, remove_link).await
    }

    /// Stops every address without releasing and deletes every link this instance owns (and the
    /// retired group); other instances' links stay.
    pub async fn stop_all(&self) -> Result<(), Error> {
        let all: Vec<(String, Running)> = self.lock().drain().collect();
        let mut stopping = Vec::with_capacity(all.len());
        for (_, running) in all {
            // A task that ended already (its receiver gone) has nothing left to stop.
            let _ = running.commands.send(Command::Stop);
            stopping.push(running.task);
        }
        for task in stopping {
            let _ = task.await;
        }
        self.inner.links.remove_all().await
    }

    async fn finish(&self, key: &str, release: bool, remove_link: bool) -> Result<(), Error> {
        let running = self
            .lock()
            .remove(key)
            .ok_or_else(|| Error::UnknownAddress(key.to_owned()))?;
        let command = if release {
            Command::Release
        } else {
            Command::Stop
        };
        // The task ends once it has carried the command out (or had ended already).
        let _ = running.commands.send(command);
        let _ = running.task.await;
        if remove_link && running.claim.is_some() {
            // The status has the current index: a driver re-creates a link that vanished.
            let ifindex = running.status.borrow().ifindex;
            self.inner.links.retire(ifindex, running.mac).await?;
        }
        Ok(())
    }

    /// Releases a lease recorded earlier (by a process that is gone) without resuming it: one
    /// DHCPRELEASE from the recorded MAC and client id on a fresh link, then the link is retired.
    /// An expired record is only cleaned up: the server has forgotten it already.
    pub async fn release_recorded(
        &self,
        spec: AddressSpec,
        record: LeaseRecord,
    ) -> Result<(), Error> {
        let now = Utc::now();
        let mut client = Client::resume(spec.client.clone(), record, now, rand::random());
        let actions = client.release(now);
        let send_all = |transport: &Transport| {
            actions.iter().try_for_each(|action| {
                if let crate::dhcp::Action::Send(transmission) = action {
                    transport.send(transmission)?;
                    Counters::bump(&self.inner.counters.packets_sent);
                }
                Ok::<(), std::io::Error>(())
            })
        };
        if !self.needs_link(spec.client.ip_assigned) {
            let socket_error = |source| Error::Socket {
                interface: spec.parent.clone(),
                source,
            };
            let lessee = self
                .inner
                .parents
                .join(&spec.parent, spec.client.mac.octets())
                .map_err(|source| parent_error(&spec.parent, source))?;
            return send_all(&Transport::Parent(lessee)).map_err(socket_error);
        }
        let link = self
            .prepare(&spec.key, &spec.parent, spec.client.mac)
            .await?;
        let PreparedLink {
            name,
            ifindex,
            socket,
            mac,
            ..
        } = link;
        let transport = Transport::Link { socket, ifindex };
        let sent = send_all(&transport);
        drop(transport);
        self.inner.links.retire(ifindex, mac).await?;
        sent.map_err(|source| Error::Socket {
            interface: name,
            source,
        })
    }

    /// The current status of one address.
    pub fn status(&self, key: &str) -> Option<AddressStatus> {
        self.lock().get(key).map(|r| r.status.borrow().clone())
    }

    /// The keys of every running address.
    pub fn keys(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Deletes this instance's links that belong to no prepared or running address and whose
    /// address key `keep` does not claim, and every retired link: the leftovers of a crash or of
    /// addresses deleted meanwhile. Returns how many of our links it removed. Links of other
    /// instances are never touched.
    pub async fn remove_orphan_links(&self, keep: impl Fn(&str) -> bool) -> Result<usize, Error> {
        self.inner.links.sweep(keep).await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        lock(&self.inner.running)
    }
}

/// What [`LeaseManager::launch`] needs besides the spec and record: where the client runs.
struct Launch {
    transport: Transport,
    interface: String,
    ifindex: u32,
    /// The link's claim; `None`: linkless.
    claim: Option<Claim>,
    assigned: Option<(std::net::Ipv4Addr, u8)>,
    seat: capacity::Seat,
}

/// A macvlan and its packet socket, made by [`LeaseManager::prepare`] for one key and MAC.
/// Give it to [`LeaseManager::start_prepared`] or [`LeaseManager::discard`]; merely dropped, its
/// socket closes but the link stays until the next orphan sweep.
pub struct PreparedLink {
    key: String,
    mac: crate::dhcp::MacAddr,
    parent: String,
    name: String,
    ifindex: u32,
    socket: DhcpSocket,
    /// Keeps the orphan sweep away from the link until it runs or is discarded.
    claim: Claim,
    /// Its place in the capacity, taken before the link was made.
    seat: capacity::Seat,
}

impl PreparedLink {
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn mac(&self) -> crate::dhcp::MacAddr {
        self.mac
    }

    pub fn interface(&self) -> &str {
        &self.name
    }

    /// The parent interface the link was made on.
    pub fn parent(&self) -> &str {
        &self.parent
    }
}

impl std::fmt::Debug for PreparedLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedLink")
            .field("key", &self.key)
            .field("mac", &self.mac)
            .field("name", &self.name)
            .field("ifindex", &self.ifindex)
            .finish_non_exhaustive()
    }
}

/// A failure to join `parent`'s shared socket; a missing parent is the same error as for a
/// macvlan on it.
fn parent_error(parent: &str, source: std::io::Error) -> Error {
    if source.kind() == std::io::ErrorKind::NotFound {
        return links::LinkError::ParentNotFound(parent.to_owned()).into();
    }
    Error::Socket {
        interface: parent.to_owned(),
        source,
    }
}

fn open_socket(
    netns: &NetNs,
    ifindex: u32,
    mac: crate::dhcp::MacAddr,
) -> std::io::Result<DhcpSocket> {
    netns.run(|| DhcpSocket::open(ifindex, mac.octets()))?
}

/// A panic while one of the manager's locks is held cannot leave its collection inconsistent
/// (single inserts and removes), so a poisoned lock is still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits until the address is Bound and returns its lease, or fails after `timeout`.
pub async fn wait_bound(
    status: &mut watch::Receiver<AddressStatus>,
    timeout: Duration,
) -> Result<LeaseRecord, Error> {
    let bound =
        |s: &AddressStatus| s.finished || (matches!(s.state, State::Bound) && s.record.is_some());
    let outcome = tokio::time::timeout(timeout, status.wait_for(bound))
        .await
        .map(|seen| seen.map(|s| (s.finished, s.record.clone())));
    match outcome {
        Ok(Ok((false, Some(record)))) => Ok(record),
        Ok(_) => Err(Error::Stopped),
        Err(_) => {
            let status = status.borrow();
            Err(Error::NoLease {
                waited: timeout,
                state: status.state,
                last_error: status.last_error.clone(),
            })
        }
    }
}
