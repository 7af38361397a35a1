//! The standalone backend: the lease manager in-process, allocations and the MAC pool in an
//! embedded crash-safe store ([`store`]), no Kubernetes.
//!
//! Guarantees (the original's defects must not come back; docs/apiserver.md lists what it did
//! not keep):
//! - a POST that fails or times out leaves nothing behind: the client is released through the
//!   manager (so an ACK that arrived meanwhile is released too), the link is deleted, the MAC
//!   returns to the pool, the allocation is gone from disk;
//! - an address handed out is renewed until it is DELETEd, across restarts: the store records it
//!   as Confirmed with its lease record, and `open` resumes it (INIT-REBOOT for the same IP);
//! - a crash mid-DELETE is finished at the next `open`: the lease is released; a crash mid-POST
//!   leaves no allocation and no lease: the allocation is on disk (Pending, naming its MAC)
//!   before its first DISCOVER, and `open` asks the server again for that MAC and releases
//!   whatever lease it gets back (the answer waits for the confirmed record, so such a POST was
//!   never answered);
//! - a lease that moves to another IP (the server's decision after a NAK) is logged as an error
//!   and counted, never silent.
//!
//! The manager opens rtnetlink and packet sockets in the namespace of the thread that calls
//! [`StandaloneBackend::open`], and all of its work runs on the runtime `open` was called on,
//! whatever runtime later calls the [`Backend`] methods (actix workers).

mod book;
mod recovery;
mod spares;
pub mod store;
mod writer;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::Utc;
use dhcpmanager_engine::dhcp::{ClientConfig, ClientIdMode, LeaseRecord};
use dhcpmanager_engine::manager::{
    AddressSpec, Capacity, LeaseManager, ManagerConfig, PersistFn, wait_bound,
};
use dhcpmanager_engine::metrics::{EngineMetrics, IpChanges};
use dhcpmanager_engine::state_dir::StateDirLock;
use futures::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use tokio::runtime::Handle;
use tokio::sync::{broadcast, oneshot};
use tracing::{error, info, warn};

use super::{Allocation, AllocationState, Backend, BackendError, StatusSnapshot};
use crate::MacAddr;
use crate::config::Config;
use book::{Begun, Book, RecordChange, to_api};
use spares::SpareLinks;
use store::{Phase, SkippedFile, Store, StoreError, StoredAllocation};
use writer::{StoreWriter, written};

/// How long a start waits for the server to hand back the lease of a POST a crash cut off (see
/// [`Core::reclaim`]); the reclaims run side by side.
const RECLAIM_WAIT: Duration = Duration::from_secs(10);

/// What the DHCP client of every allocation sends, beyond MAC and hostname.
#[derive(Debug, Clone)]
pub struct RequestSettings {
    pub client_id: ClientIdMode,
    /// Option 60.
    pub vendor_class: Option<String>,
    /// RFC 5227 probe of an offered address before using it.
    pub arp_probe: bool,
    /// Sent verbatim in DISCOVER and REQUEST.
    pub extra_options: Vec<(u8, Vec<u8>)>,
}

impl Default for RequestSettings {
    fn default() -> Self {
        let defaults = ClientConfig::new(MacAddr([2, 0, 0, 0, 0, 0]));
        RequestSettings {
            client_id: defaults.client_id,
            vendor_class: defaults.vendor_class,
            arp_probe: defaults.arp_probe,
            extra_options: defaults.extra_options,
        }
    }
}

#[derive(Debug, Clone)]
pub struct StandaloneOptions {
    /// Parent interface of the macvlans (the original's `interface`).
    pub parent: String,
    /// Where the store lives (`state-dir`).
    pub state_dir: PathBuf,
    /// MACs added to the pool at start (the original's `macs`); MACs already known stay.
    pub initial_macs: Vec<MacAddr>,
    /// Configure the leased IP on its macvlan (the original's `assign-interfaces`).
    pub assign_interfaces: bool,
    pub request: RequestSettings,
    /// Links kept ready on free MACs so a POST need not create one (`spare-links`; 0: none).
    pub spare_links: usize,
    /// Divides every DHCP wait (T1, T2, retransmissions); 1.0 in production, larger in tests.
    pub time_scale: f64,
    pub manager: ManagerConfig,
}

impl StandaloneOptions {
    /// The options the original's configuration implies.
    pub fn from_config(config: &Config) -> Self {
        StandaloneOptions {
            parent: config.interface.clone(),
            state_dir: config.state_dir.clone(),
            initial_macs: config.macs.clone(),
            assign_interfaces: config.assign_interfaces,
            request: RequestSettings::default(),
            spare_links: config.spare_links,
            time_scale: 1.0,
            manager: ManagerConfig {
                rate_per_second: f64::from(config.dhcp_rate),
                burst: config.dhcp_burst,
                linkless: config.linkless,
                reply_mark_mask: config.reply_mark_mask,
                capacity: Capacity {
                    addresses: config.max_addresses,
                    links_per_parent: (config.links_per_parent > 0)
                        .then_some(config.links_per_parent),
                },
                ..ManagerConfig::default()
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot start the store writer: {0}")]
    Writer(#[source] std::io::Error),
    #[error("lease manager: {0}")]
    Manager(#[from] dhcpmanager_engine::Error),
    #[error("the standalone backend must be opened inside a tokio runtime")]
    NoRuntime,
    /// Another instance holds the state directory, or it cannot be locked.
    #[error("{0}")]
    StateDir(#[source] dhcpmanager_engine::Error),
}

pub struct StandaloneBackend {
    core: Arc<Core>,
    skipped: Vec<SkippedFile>,
    engine_metrics: Arc<EngineMetrics>,
}

/// Everything an allocation task needs; tasks hold it, so it outlives a dropped request.
struct Core {
    shared: Arc<Shared>,
    manager: LeaseManager,
    spares: SpareLinks,
    runtime: Handle,
    options: StandaloneOptions,
    /// Held while any part of the backend runs: allocation tasks hold the core.
    _lock: StateDirLock,
}

/// The part the manager's persistence callback reaches (it must not hold the manager). Writes are
/// queued while the book is locked, so the disk sees changes in the order the book made them.
struct Shared {
    book: Mutex<Book>,
    writer: StoreWriter,
    changes: broadcast::Sender<()>,
    /// Also `ip_changes_total` on /metrics (the engine metrics register this very counter).
    ip_changes: Counter,
}

impl StandaloneBackend {
    /// Loads the store, finishes what a crash interrupted, resumes every handed-out address and
    /// removes our links that belong to no allocation. Call it in the network namespace of the
    /// parent interface, on the runtime that should run the DHCP clients.
    pub async fn open(
        options: StandaloneOptions,
    ) -> Result<Arc<StandaloneBackend>, StandaloneError> {
        let runtime = Handle::try_current().map_err(|_| StandaloneError::NoRuntime)?;
        // First of all: nothing on disk or on the network changes before this instance knows it
        // is the only one using the directory (and so the only owner of the links it names).
        let lock = StateDirLock::acquire(&options.state_dir).map_err(StandaloneError::StateDir)?;
        info!(state_dir = %options.state_dir.display(), instance = %lock.instance(), "state directory locked");
        let (store, loaded) = Store::open(&options.state_dir)?;
        for skipped in &loaded.skipped {
            error!(path = %skipped.path.display(), problem = %skipped.problem, "skipping an unreadable store file");
        }
        if loaded.unused_reservations > 0 {
            info!(
                files = loaded.unused_reservations,
                "removed record files reserved for allocations that never got a lease"
            );
        }
        let mut pool = loaded.pool.clone();
        pool.extend(options.initial_macs.iter().copied());
        let plan = recovery::plan(loaded.allocations, Utc::now());
        let writer = StoreWriter::spawn(store).map_err(StandaloneError::Writer)?;
        let shared = Arc::new(Shared {
            book: Mutex::new(Book::new(pool)),
            writer,
            changes: broadcast::channel(256).0,
            ip_changes: Counter::default(),
        });
        let persist: PersistFn = {
            let shared = shared.clone();
            Arc::new(move |id: &str, record: Option<&LeaseRecord>| {
                shared.on_record(id, record.cloned())
            })
        };
        let manager = LeaseManager::new(lock.instance().clone(), options.manager.clone(), persist)?;
        // Before recovery, so that the resumed clients' renewals count too.
        let engine_metrics = EngineMetrics::spawn(
            manager.clone(),
            IpChanges::CountedBy(shared.ip_changes.clone()),
        );
        let core = Arc::new(Core {
            shared,
            manager,
            spares: SpareLinks::default(),
            runtime,
            options,
            _lock: lock,
        });
        core.recover(plan).await;
        let unconfirmed = core.shared.book().unconfirmed();
        if unconfirmed > 0 {
            warn!(
                unconfirmed,
                "allocations handed out just before a crash may never have reached their requester: kept and renewed (a client may announce them); /v1/status marks them \"Unconfirmed\": DELETE those no Service uses"
            );
        }
        let pool = core.shared.book().pool().clone();
        if let Err(problem) = written(core.shared.writer.save_pool(pool)).await {
            error!(%problem, "cannot save the MAC pool");
        }
        let removed = core
            .manager
            // A linkless address keeps no link: one left from a run with links goes.
            .remove_orphan_links(|id| {
                core.manager.needs_link(core.options.assign_interfaces)
                    && core.shared.book().contains(id)
            })
            .await?;
        info!(
            allocations = core.shared.book().len(),
            orphan_links_removed = removed,
            spare_links = core.options.spare_links,
            "standalone backend ready"
        );
        core.fill_spares();
        Ok(Arc::new(StandaloneBackend {
            core,
            skipped: loaded.skipped,
            engine_metrics,
        }))
    }

    /// Store files that could not be read at open (each was logged with its path).
    pub fn skipped_files(&self) -> &[SkippedFile] {
        &self.skipped
    }

    /// How often a lease moved to another IP than the one handed out.
    pub fn ip_changes(&self) -> u64 {
        self.core.shared.ip_changes.get()
    }

    pub fn manager(&self) -> &LeaseManager {
        &self.core.manager
    }

    /// The interfaces of the spare links ready now, sorted.
    pub fn spare_interfaces(&self) -> Vec<String> {
        self.core.spares.interfaces()
    }

    /// Stops every client without releasing (the leases stay valid for the next start) and
    /// waits until the store is on disk. Links stay, so assigned addresses stay configured;
    /// spare links go.
    pub async fn shutdown(&self) {
        self.core.close_spares().await;
        for id in self.core.manager.keys() {
            if let Err(error) = self.core.manager.stop(&id, false).await {
                warn!(%id, %error, "stopping the client failed");
            }
        }
        if let Err(problem) = written(self.core.shared.writer.flush()).await {
            error!(%problem, "store flush failed at shutdown");
        }
        // Released and stopped links are only retired; a clean exit leaves none behind.
        if let Err(error) = self.core.manager.settle_links().await {
            warn!(%error, "deleting retired links failed at shutdown");
        }
    }
}

impl Shared {
    fn book(&self) -> MutexGuard<'_, Book> {
        // Every mutation of the book is a single step, so a panic elsewhere cannot leave it
        // half-changed: a poisoned lock is still consistent.
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self) {
        let _ = self.changes.send(());
    }

    /// The manager's persistence callback: runs on the address's task, so it only queues.
    fn on_record(&self, id: &str, record: Option<LeaseRecord>) {
        {
            let mut book = self.book();
            match book.apply_record(id, record) {
                RecordChange::Unknown => return,
                // Not on disk before its POST confirms it (see `allocate`).
                RecordChange::Updated(stored) if stored.phase == Phase::Pending => {}
                RecordChange::Updated(stored) => self.writer.save_in_background(stored),
                RecordChange::IpChanged { stored, old, new } => {
                    let count = self.ip_changes.inc() + 1;
                    error!(
                        id, service = %stored.service, %old, %new, ip_changes = count,
                        "the DHCP server moved a handed-out address: whoever was given the old IP (MetalLB) still announces it"
                    );
                    self.writer.save_in_background(stored);
                }
            }
        }
        self.notify();
    }
}

impl Core {
    /// What the book cannot know about an allocation's link: a re-created link has another
    /// index, and while the link is missing the address cannot transmit, so it is not shown
    /// Bound (Pending, with its lease, until the link is back).
    fn overlay_link(&self, allocation: &mut Allocation) {
        let Some(live) = self.manager.status(&allocation.id) else {
            return;
        };
        if allocation.interface.name == live.interface {
            allocation.interface.index = live.ifindex;
        }
        if live.link_missing && allocation.state == AllocationState::Bound {
            allocation.state = AllocationState::Pending;
        }
    }

    fn spec(&self, stored: &StoredAllocation) -> AddressSpec {
        let mut client = ClientConfig::new(stored.mac);
        client.hostname = Some(stored.hostname.clone());
        client.client_id = self.options.request.client_id.clone();
        client.vendor_class = self.options.request.vendor_class.clone();
        client.arp_probe = self.options.request.arp_probe;
        client.extra_options = self.options.request.extra_options.clone();
        client.ip_assigned = self.options.assign_interfaces;
        client.timing.scale = self.options.time_scale;
        AddressSpec {
            key: stored.id.clone(),
            parent: self.options.parent.clone(),
            client,
        }
    }

    async fn recover(&self, plan: recovery::RecoveryPlan) {
        for (stored, reason) in plan.forget {
            warn!(id = %stored.id, service = %stored.service, %reason, "dropping a stored allocation");
            self.forget_on_disk(&stored.id).await;
        }
        for stored in plan.release {
            let record = stored
                .record
                .clone()
                .expect("planned releases carry a record");
            info!(id = %stored.id, service = %stored.service, ip = %record.ip, phase = ?stored.phase,
                "releasing an allocation a crash left unfinished");
            if let Err(error) = self
                .manager
                .release_recorded(self.spec(&stored), record)
                .await
            {
                error!(id = %stored.id, %error, "releasing the unfinished allocation failed");
            }
            self.forget_on_disk(&stored.id).await;
        }
        futures::future::join_all(plan.reclaim.into_iter().map(|stored| self.reclaim(stored)))
            .await;
        for stored in plan.resume {
            let spec = self.spec(&stored);
            let record = stored.record.clone();
            let id = stored.id.clone();
            self.shared.book().insert(stored);
            match self.manager.start(spec, record).await {
                Ok(status) => {
                    let status = status.borrow().clone();
                    self.shared
                        .book()
                        .set_link(&id, status.interface, status.ifindex);
                }
                // Kept in the book (and on disk): a DELETE must still find and release it.
                Err(error) => error!(%id, %error, "cannot resume a handed-out address"),
            }
        }
    }

    /// A POST a crash cut off during its DHCP exchange: the server may have committed a lease for
    /// its MAC that nothing on disk names. Asking again for the MAC gets that lease back (a
    /// server offers a client the address it holds), which is then released; without a leak the
    /// server sees a lease made and released at once.
    async fn reclaim(&self, stored: StoredAllocation) {
        let id = stored.id.clone();
        match self.manager.start(self.spec(&stored), None).await {
            Ok(mut status) => match wait_bound(&mut status, RECLAIM_WAIT).await {
                Ok(record) => {
                    info!(%id, service = %stored.service, mac = %stored.mac, ip = %record.ip,
                        "releasing the lease of a POST a crash cut off");
                    if let Err(error) = self.manager.release(&id).await {
                        error!(%id, %error, "releasing the cut-off POST's lease failed");
                    }
                }
                Err(error) => {
                    warn!(%id, mac = %stored.mac, %error,
                        "no lease came back for a POST a crash cut off; a lease the server may hold runs out unrenewed");
                    if let Err(error) = self.manager.stop(&id, true).await {
                        warn!(%id, %error, "stopping the reclaim failed");
                    }
                }
            },
            Err(error) => {
                error!(%id, %error, "cannot ask the server for the lease of a POST a crash cut off")
            }
        }
        self.forget_on_disk(&id).await;
    }

    async fn forget_on_disk(&self, id: &str) {
        if let Err(problem) = written(self.shared.writer.remove(id)).await {
            error!(%id, %problem, "cannot remove the allocation from the store");
        }
    }

    /// The whole of one POST. Runs as its own task: it finishes (bound and handed out, or
    /// withdrawn) even when the request is dropped; `answer` closed means nobody will take the
    /// address, so it is withdrawn. Spares are refilled afterwards: a refill's link and record
    /// file would otherwise compete with this POST for rtnetlink and the store's writer.
    async fn allocate(
        self: Arc<Self>,
        service: String,
        deadline: Instant,
        answer: oneshot::Sender<Result<Allocation, BackendError>>,
    ) {
        self.clone().allocate_once(service, deadline, answer).await;
        self.fill_spares();
    }

    async fn allocate_once(
        self: Arc<Self>,
        service: String,
        deadline: Instant,
        mut answer: oneshot::Sender<Result<Allocation, BackendError>>,
    ) {
        let (stored, spare_link) = loop {
            // Registered before the book is asked, so a spare made ready in between is not missed.
            let spare_changed = self.spares.changed.notified();
            tokio::pin!(spare_changed);
            spare_changed.as_mut().enable();
            let new_id = uuid::Uuid::new_v4().to_string();
            let (begun, spare_link) = {
                let mut book = self.shared.book();
                let begun = book.begin(new_id, &service);
                let link = match &begun {
                    Ok(Begun::OnSpare(stored)) => self.spares.take(stored.mac),
                    _ => None,
                };
                (begun, link)
            };
            match begun {
                Ok(Begun::OnSpare(stored) | Begun::Cold(stored)) => break (stored, spare_link),
                Ok(Begun::WaitForSpare) => {
                    let waited = tokio::time::timeout_at(deadline.into(), spare_changed).await;
                    if waited.is_err() {
                        let _ = answer.send(Err(BackendError::Timeout { id: String::new() }));
                        return;
                    }
                }
                Err(error) => {
                    let _ = answer.send(Err(error));
                    return;
                }
            }
        };
        let id = stored.id.clone();
        self.shared.notify();
        // On disk before the first DISCOVER: from then on the server may commit a lease for this
        // MAC that a crash leaves behind, and this record (Pending, no lease) is how the next
        // start finds the MAC and releases that lease (`Core::reclaim`). The lease itself is not
        // recorded until the confirming write below, which the answer waits for: a crash before
        // it leaves no allocation, and never an address handed out and then forgotten.
        if let Err(problem) = written(self.shared.writer.save(stored.clone())).await {
            if let Some(link) = spare_link
                && let Err(error) = self.manager.discard(link).await
            {
                warn!(%id, %error, "cannot delete the spare link; the next start sweeps it");
            }
            self.withdraw(&id, false).await;
            let _ = answer.send(Err(BackendError::Unavailable(format!(
                "cannot record the allocation: {problem}"
            ))));
            return;
        }
        let spec = self.spec(&stored);
        let started = match spare_link {
            Some(link) => self.manager.start_prepared(spec, None, link).await,
            None => self.manager.start(spec, None).await,
        };
        let mut status = match started {
            Ok(status) => status,
            Err(error) => {
                self.withdraw(&id, false).await;
                let _ = answer.send(Err(BackendError::Unavailable(format!(
                    "cannot start a DHCP client on {}: {error}",
                    self.options.parent
                ))));
                return;
            }
        };
        {
            let current = status.borrow().clone();
            self.shared
                .book()
                .set_link(&id, current.interface, current.ifindex);
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        let bound = tokio::select! {
            bound = wait_bound(&mut status, wait) => bound.ok(),
            () = answer.closed() => None,
        };
        let Some(record) = bound else {
            self.withdraw(&id, true).await;
            let _ = answer.send(Err(BackendError::Timeout { id }));
            return;
        };
        let confirmed = {
            let mut book = self.shared.book();
            book.confirm(&id, record)
                .map(|stored| self.shared.writer.save(stored))
        };
        let outcome = match confirmed {
            Some(saved) => written(saved).await.map_err(BackendError::Unavailable),
            None => Err(BackendError::Unavailable("the allocation vanished".into())),
        };
        self.shared.notify();
        let allocation = self.shared.book().get(&id).map(to_api);
        match (outcome, allocation) {
            (Ok(()), Some(allocation)) => {
                // Marked answered only once the answer reached the connection
                // (`Backend::answered`): a crash before then leaves it shown as unconfirmed.
                if answer.send(Ok(allocation)).is_err() {
                    info!(%id, "the requester left before the answer: withdrawing the address");
                    self.withdraw(&id, true).await;
                }
            }
            (outcome, _) => {
                // Not durable as handed out: a restart would drop it, so do not hand it out.
                self.withdraw(&id, true).await;
                let error = outcome
                    .err()
                    .unwrap_or_else(|| BackendError::Unavailable("the allocation vanished".into()));
                let _ = answer.send(Err(error));
            }
        }
    }

    /// Takes an allocation back completely: DHCPRELEASE and link removal through the manager
    /// (when it was started), then out of the book and off the disk, its MAC free again.
    async fn withdraw(self: &Arc<Self>, id: &str, started: bool) {
        if started && let Err(error) = self.manager.release(id).await {
            warn!(%id, %error, "releasing the withdrawn allocation failed");
        }
        let removed = {
            let mut book = self.shared.book();
            book.remove(id).map(|_| self.shared.writer.remove(id))
        };
        self.shared.notify();
        self.fill_spares();
        if let Some(removed) = removed
            && let Err(problem) = written(removed).await
        {
            error!(%id, %problem, "cannot remove the withdrawn allocation from the store");
        }
    }

    /// The whole of one DELETE, as its own task so it completes even if the request is dropped.
    async fn release(self: &Arc<Self>, ip: Ipv4Addr) -> Result<Allocation, BackendError> {
        let (stored, saved) = {
            let mut book = self.shared.book();
            let id = book
                .find_by_ip(ip)
                .map(|e| e.stored.id.clone())
                .ok_or(BackendError::NotFound(ip))?;
            let stored = book
                .set_phase(&id, Phase::Releasing)
                .expect("found just now");
            let saved = self.shared.writer.save(stored.clone());
            (stored, saved)
        };
        self.shared.notify();
        // Recorded first: a crash from here on ends in a release at the next start.
        if let Err(problem) = written(saved).await {
            error!(id = %stored.id, %problem, "cannot record the release; releasing anyway");
        }
        let mut released = self
            .shared
            .book()
            .get(&stored.id)
            .map(to_api)
            .expect("only this task removes it");
        match self.manager.release(&stored.id).await {
            Ok(()) => {}
            Err(dhcpmanager_engine::Error::UnknownAddress(_)) => {
                // Not running (it could not be resumed at start): release from the record.
                if let Some(record) = stored.record.clone().filter(|r| r.is_valid_at(Utc::now()))
                    && let Err(error) = self
                        .manager
                        .release_recorded(self.spec(&stored), record)
                        .await
                {
                    error!(id = %stored.id, %error, "releasing from the record failed");
                }
            }
            Err(error) => error!(id = %stored.id, %error, "DHCPRELEASE failed"),
        }
        let removed = {
            let mut book = self.shared.book();
            book.remove(&stored.id);
            self.shared.writer.remove(&stored.id)
        };
        self.shared.notify();
        self.fill_spares();
        if let Err(problem) = written(removed).await {
            error!(id = %stored.id, %problem, "cannot remove the released allocation from the store");
        }
        released.state = AllocationState::Stopped;
        Ok(released)
    }

    async fn change_pool(
        self: &Arc<Self>,
        change: impl FnOnce(&mut Book) -> (bool, Vec<MacAddr>),
    ) -> Result<Vec<MacAddr>, BackendError> {
        let (saved, unchanged, ended_spares) = {
            let mut book = self.shared.book();
            let (changed, unchanged) = change(&mut book);
            let pool: BTreeSet<MacAddr> = book.pool().clone();
            let ended_spares = self.end_spares_outside_pool(&mut book);
            let saved = changed.then(|| self.shared.writer.save_pool(pool));
            (saved, unchanged, ended_spares)
        };
        self.discard_spares(ended_spares).await;
        self.fill_spares();
        if let Some(saved) = saved {
            self.shared.notify();
            written(saved).await.map_err(BackendError::Unavailable)?;
        }
        Ok(unchanged)
    }
}

impl Backend for StandaloneBackend {
    fn allocate(
        &self,
        service: &str,
        deadline: Instant,
    ) -> BoxFuture<'_, Result<Allocation, BackendError>> {
        let (answer, answered) = oneshot::channel();
        let core = self.core.clone();
        self.core
            .runtime
            .spawn(core.allocate(service.to_string(), deadline, answer));
        Box::pin(async move {
            answered.await.unwrap_or_else(|_| {
                Err(BackendError::Unavailable(
                    "the allocation task ended without an answer".into(),
                ))
            })
        })
    }

    /// Recorded in the background: the answer is out already, and a crash before this write
    /// lands leaves the allocation held and shown as unconfirmed, which is still true to what
    /// the store knows.
    fn answered(&self, id: &str) {
        let answered = self.core.shared.book().mark_answered(id);
        if let Some(stored) = answered {
            self.core.shared.writer.save_in_background(stored);
            self.core.shared.notify();
        }
    }

    fn release(&self, ip: Ipv4Addr) -> BoxFuture<'_, Result<Allocation, BackendError>> {
        let core = self.core.clone();
        let task = self
            .core
            .runtime
            .spawn(async move { core.release(ip).await });
        Box::pin(async move {
            task.await.unwrap_or_else(|error| {
                Err(BackendError::Unavailable(format!(
                    "the release task failed: {error}"
                )))
            })
        })
    }

    fn add_macs(&self, macs: Vec<MacAddr>) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            self.core
                .change_pool(|book| (book.add_macs(&macs), Vec::new()))
                .await
                .map(drop)
        })
    }

    fn remove_macs(&self, macs: Vec<MacAddr>) -> BoxFuture<'_, Result<Vec<MacAddr>, BackendError>> {
        Box::pin(async move {
            self.core
                .change_pool(|book| {
                    let before = book.pool().len();
                    let in_use = book.remove_macs(&macs);
                    (book.pool().len() != before, in_use)
                })
                .await
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<StatusSnapshot, BackendError>> {
        Box::pin(async move {
            let mut snapshot = self.core.shared.book().snapshot();
            for allocation in &mut snapshot.allocations {
                self.core.overlay_link(allocation);
            }
            Ok(snapshot)
        })
    }

    fn lease_cidrs(&self) -> BoxFuture<'_, Result<Vec<String>, BackendError>> {
        Box::pin(async move { Ok(self.core.shared.book().lease_cidrs()) })
    }

    /// Not ready while the parent interface is missing: no POST could make a link on it, and
    /// no held address can be renewed.
    fn ready(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let parent = &self.core.options.parent;
            let exists = self
                .core
                .manager
                .links()
                .has_link_named(parent)
                .await
                .map_err(|error| BackendError::Unavailable(error.to_string()))?;
            match exists {
                true => Ok(()),
                false => Err(BackendError::Unavailable(format!(
                    "the parent interface {parent} does not exist"
                ))),
            }
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<()> {
        self.core.shared.changes.subscribe()
    }

    fn engine_metrics(&self) -> Option<Arc<EngineMetrics>> {
        Some(self.engine_metrics.clone())
    }
}
