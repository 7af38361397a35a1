//! The scale benchmark (issue 13): figures, no assertions.
//!
//! Against Kea with a /16 pool in a lab (60 s leases, no options 58/59: the client renews at
//! T1 = 30 s), per number of addresses and per transport (linkless: the parent's shared socket;
//! links: a macvlan per address), each level in a fresh process of its own so that its memory
//! and CPU figures are its own:
//! - every address started at once with the rate limit lifted: time to all Bound;
//! - held for `--hold-secs` (default 60): anonymous RSS and live heap per held lease, CPU per
//!   renewal and % of a core, renewals, NAKs, expiries, IP changes;
//! - restart: the manager stopped without releasing and a new one started from the records at
//!   the default rate limit (500/s, burst 100): time until all are Bound again, DISCOVERs sent
//!   (must be none: INIT-REBOOT only) and the highest transmission rate seen.
//!
//! Beside them, the same run's raw exchange (`bench::raw_dora`) and, at `--peer-levels`
//! (default 100, 1,000), the CNI dhcp daemon as the peer (`bench::cni_peer`). Prints a table and
//! writes JSON (default `target/bench/scale.json`). Run as root; `scripts/bench.sh scale` builds
//! and runs it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dhcpmanager_engine::dhcp::{ClientConfig, ClientEvent, LeaseRecord, MacAddr, State};
use dhcpmanager_engine::instance::InstanceId;
use dhcpmanager_engine::manager::{
    AddressSpec, Capacity, LeaseManager, ManagerConfig, PersistFn, wait_bound,
};
use dhcpmanager_tests::bench::big_kea::{BigPoolKea, LeaseTimes};
use dhcpmanager_tests::bench::cli;
use dhcpmanager_tests::bench::cni_peer::{self, PeerLevel};
use dhcpmanager_tests::bench::error::BenchError;
use dhcpmanager_tests::bench::figures::{self, Latency};
use dhcpmanager_tests::bench::proc::{cpu_seconds, own_status_field};
use dhcpmanager_tests::bench::raw_dora;
use dhcpmanager_tests::bootp::MessageType;
use dhcpmanager_tests::lab::Lab;
use dhcpmanager_tests::netns::in_netns;
use dhcpmanager_tests::pcap;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

const LEASE: LeaseTimes = LeaseTimes {
    lease_secs: 60,
    renew_secs: None,
    rebind_secs: None,
};
/// What the lease is scaled against for the CPU target: a renewal per address per 30 min.
const TARGET_RENEWAL_INTERVAL_SECS: f64 = 1800.0;
const TARGET_CORE_PERCENT: f64 = 2.0;
const TARGET_KIB_PER_LEASE: f64 = 10.0;
const RAW_LINK_GROUP: u32 = 0x6265_6e73; // "bens"
const RAW_SAMPLES: usize = 30;
/// The rate limit of the first start of every level (`--start-rate`, `--start-burst`). Kea 2.2
/// in the lab answers about 2,000-3,700 packets/s; faster, its raw socket's receive buffer
/// overflows and the lost DISCOVERs cost a 4 s retransmission (measured: 1,000 leases with the
/// limit lifted, 1,000,000/s, took 5.1 s and 2,782 transmissions; at 2,000/s, 0.98 s and 2,000).
const START_RATE: f64 = 2_000.0;
const START_BURST: u32 = 50;
/// Safety net for one address to be Bound; a level that needs it counts a failure.
const BOUND_TIMEOUT: Duration = Duration::from_secs(120);

type Result<T> = std::result::Result<T, BenchError>;

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |e| BenchError::Io(what, e)
}

// --- arguments ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Linkless,
    Links,
}

impl Mode {
    fn parse(text: &str) -> Result<Mode> {
        match text {
            "linkless" => Ok(Mode::Linkless),
            "links" => Ok(Mode::Links),
            _ => Err(BenchError::Usage),
        }
    }
}

struct Args {
    levels: Vec<usize>,
    link_levels: Vec<usize>,
    /// Levels of the peer, the CNI dhcp daemon (see `bench::cni_peer`).
    peer_levels: Vec<usize>,
    hold: Duration,
    start_rate: f64,
    start_burst: u32,
    out: PathBuf,
    /// Set in a child process: run this one level and print its JSON.
    child: Option<ChildArgs>,
}

struct ChildArgs {
    netns: String,
    parent: String,
    mode: Mode,
    addresses: usize,
    /// Distinguishes the MACs of the levels of one run (Kea still holds the earlier ones).
    level_index: u8,
}

fn numbers(value: &str) -> Result<Vec<usize>> {
    value
        .split(',')
        .filter(|n| !n.is_empty())
        .map(|n| n.parse().map_err(|_| BenchError::Usage))
        .collect()
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        levels: vec![100, 1_000, 5_000, 10_000],
        link_levels: vec![100, 1_000],
        peer_levels: vec![100, 1_000],
        hold: Duration::from_secs(60),
        start_rate: START_RATE,
        start_burst: START_BURST,
        out: dhcpmanager_tests::repo_root().join("target/bench/scale.json"),
        child: None,
    };
    let mut child: HashMap<String, String> = HashMap::new();
    for (flag, value) in cli::flag_values()? {
        match flag.as_str() {
            "--levels" => args.levels = numbers(&value)?,
            "--link-levels" => args.link_levels = numbers(&value)?,
            "--peer-levels" => args.peer_levels = numbers(&value)?,
            "--hold-secs" => {
                args.hold = Duration::from_secs(value.parse().map_err(|_| BenchError::Usage)?)
            }
            "--out" => args.out = value.into(),
            "--start-rate" => args.start_rate = value.parse().map_err(|_| BenchError::Usage)?,
            "--start-burst" => args.start_burst = value.parse().map_err(|_| BenchError::Usage)?,
            "--child-netns" | "--child-parent" | "--child-mode" | "--child-addresses"
            | "--child-level" => {
                child.insert(flag, value);
            }
            _ => return Err(BenchError::Usage),
        }
    }
    if !child.is_empty() {
        let get = |k: &str| child.get(k).cloned().ok_or(BenchError::Usage);
        args.child = Some(ChildArgs {
            netns: get("--child-netns")?,
            parent: get("--child-parent")?,
            mode: Mode::parse(&get("--child-mode")?)?,
            addresses: get("--child-addresses")?
                .parse()
                .map_err(|_| BenchError::Usage)?,
            level_index: get("--child-level")?
                .parse()
                .map_err(|_| BenchError::Usage)?,
        });
    }
    Ok(args)
}

// --- figures -----------------------------------------------------------------------------------

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct EventCounts {
    bound_new: u64,
    renewals: u64,
    naks: u64,
    expiries: u64,
    ip_changes: u64,
    /// Clients that went to SELECTING, i.e. sent a DISCOVER.
    discovers: u64,
    /// Events the counter missed (it lagged behind the manager's event channel).
    lagged: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Level {
    mode: Mode,
    addresses: usize,
    /// The rate limit of the first start (transmissions/s, burst).
    start_rate: (f64, u32),
    /// Refused with the capacity error (links beyond the links-per-parent limit).
    refused: usize,
    /// The first refusal's text.
    refusal: Option<String>,
    bound: usize,
    failed: usize,
    /// First start() → last Bound, rate limit lifted.
    all_bound_s: f64,
    hold_s: f64,
    /// Whole resident set (`VmRSS`), before the manager and while holding.
    rss_before_kib: u64,
    rss_held_kib: u64,
    /// Anonymous resident memory (`RssAnon`: heap, stacks; not the binary's own pages, which
    /// are paged in as code is first used and are no lease's cost).
    anon_before_kib: u64,
    anon_held_kib: u64,
    /// Anonymous resident memory per held lease (after `malloc_trim`).
    kib_per_lease: f64,
    heap_before_kib: u64,
    heap_held_kib: u64,
    /// Live heap per held lease: the part of `kib_per_lease` that is allocated, not fragmentation.
    heap_kib_per_lease: f64,
    /// Process CPU during the hold.
    hold_cpu_s: f64,
    core_percent: f64,
    /// `core_percent` scaled from this lease's renewal rate to one per address per 30 min.
    core_percent_scaled: f64,
    cpu_ms_per_renewal: f64,
    /// Everything counted during start and hold.
    events: EventCounts,
    packets_sent: u64,
    packets_received: u64,
    /// Restart from the records at the default rate limit.
    restart: Option<Restart>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Restart {
    resumed: usize,
    same_ip: usize,
    all_bound_s: f64,
    rate_per_second: f64,
    burst: u32,
    /// Transmissions in the busiest second.
    max_sent_per_second: u64,
    events: EventCounts,
    /// When the restart began (before the new manager) and ended (all started), ns since the
    /// Unix epoch: the window of the capture that is the restart's.
    window_ns: (u64, u64),
    /// What a tcpdump on the parent saw in that window (filled in by the parent process).
    #[serde(default)]
    wire: Option<RestartOnTheWire>,
}

/// Client messages on the wire during a restart, from a capture on the parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RestartOnTheWire {
    discovers: usize,
    requests: usize,
    /// Distinct client MACs among the REQUESTs: every resumed address should be one.
    requesting_macs: usize,
    /// DISCOVER + REQUEST in the busiest whole second.
    max_per_second: usize,
    /// tcpdump's "packets dropped by kernel" for the whole level (0: the counts are complete).
    dropped_by_kernel: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Report {
    date_utc: String,
    machine: String,
    kea_pool: String,
    lease_secs: u32,
    hold_s: f64,
    raw_exchange: Latency,
    levels: Vec<Level>,
    /// The CNI dhcp daemon, same lab and server, after our levels.
    peers: Vec<PeerLevel>,
}

// --- one level, in its own process --------------------------------------------------------------

/// Bytes the allocator has handed out and not got back (glibc's `mallinfo2`, all arenas:
/// in-use chunks plus mmapped ones), in KiB. Beside the RSS it tells live heap from the pages
/// that free chunks between live ones keep resident.
fn heap_in_use_kib() -> u64 {
    // SAFETY: mallinfo2 has no preconditions; it only reads the allocator's statistics.
    let info = unsafe { libc::mallinfo2() };
    ((info.uordblks + info.hblkhd) / 1024) as u64
}

fn mac_for(level: u8, restart: bool, i: usize) -> [u8; 6] {
    let i = i as u32;
    [
        0x02,
        0x5c,
        level,
        (i >> 16) as u8 | if restart { 0x80 } else { 0 },
        (i >> 8) as u8,
        i as u8,
    ]
}

fn spec(key: String, parent: &str, mac: [u8; 6]) -> AddressSpec {
    AddressSpec {
        key,
        parent: parent.to_string(),
        client: ClientConfig::new(MacAddr(mac)),
    }
}

/// Counts the manager's events until `stop` is dropped.
fn count_events(manager: &LeaseManager) -> (Arc<Mutex<EventCounts>>, tokio::task::JoinHandle<()>) {
    let counts = Arc::new(Mutex::new(EventCounts::default()));
    let mut events = manager.subscribe();
    let task = tokio::spawn({
        let counts = counts.clone();
        async move {
            loop {
                let event = match events.recv().await {
                    Ok(event) => event,
                    Err(RecvError::Lagged(n)) => {
                        counts.lock().unwrap().lagged += n;
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                };
                let mut c = counts.lock().unwrap();
                match event.event {
                    ClientEvent::Bound { renewal: true, .. } => c.renewals += 1,
                    ClientEvent::Bound { .. } => c.bound_new += 1,
                    ClientEvent::Nak { .. } => c.naks += 1,
                    ClientEvent::Expired { .. } => c.expiries += 1,
                    ClientEvent::IpChanged { .. } => c.ip_changes += 1,
                    ClientEvent::StateChanged {
                        to: State::Selecting,
                        ..
                    } => c.discovers += 1,
                    _ => {}
                }
            }
        }
    });
    (counts, task)
}

type Records = Arc<Mutex<HashMap<String, LeaseRecord>>>;

fn persist_into(records: Records) -> PersistFn {
    Arc::new(move |key: &str, record: Option<&LeaseRecord>| {
        let mut records = records.lock().unwrap();
        match record {
            Some(record) => records.insert(key.to_owned(), record.clone()),
            None => records.remove(key),
        };
    })
}

fn config(mode: Mode, rate: f64, burst: u32, addresses: usize) -> ManagerConfig {
    ManagerConfig {
        rate_per_second: rate,
        burst,
        linkless: mode == Mode::Linkless,
        capacity: Capacity {
            addresses: addresses.max(dhcpmanager_engine::manager::DEFAULT_MAX_ADDRESSES),
            links_per_parent: None,
        },
        ..ManagerConfig::default()
    }
}

/// Starts every spec at once, each on its own task; returns (bound, failed, refused, first
/// refusal, first start → last Bound).
async fn start_all(
    manager: &LeaseManager,
    specs: impl IntoIterator<Item = (AddressSpec, Option<LeaseRecord>)>,
) -> (usize, usize, usize, Option<String>, Duration) {
    enum Outcome {
        Bound(Instant),
        Refused(String),
        Failed(String),
    }
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (spec, record) in specs {
        let manager = manager.clone();
        tasks.spawn(async move {
            match manager.start(spec, record).await {
                Ok(mut status) => match wait_bound(&mut status, BOUND_TIMEOUT).await {
                    Ok(_) => Outcome::Bound(Instant::now()),
                    Err(error) => Outcome::Failed(error.to_string()),
                },
                Err(error @ dhcpmanager_engine::Error::Capacity { .. }) => {
                    Outcome::Refused(error.to_string())
                }
                Err(error) => Outcome::Failed(error.to_string()),
            }
        });
    }
    let (mut bound, mut failed, mut refused, mut refusal, mut last) = (0, 0, 0, None, t0);
    let mut errors: HashMap<String, usize> = HashMap::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Outcome::Bound(at)) => {
                bound += 1;
                last = last.max(at);
            }
            Ok(Outcome::Refused(text)) => {
                refused += 1;
                refusal.get_or_insert(text);
            }
            Ok(Outcome::Failed(text)) => {
                failed += 1;
                *errors.entry(text).or_default() += 1;
            }
            Err(panic) => {
                failed += 1;
                *errors.entry(panic.to_string()).or_default() += 1;
            }
        }
    }
    for (error, count) in errors {
        eprintln!("  {count} x {error}");
    }
    (bound, failed, refused, refusal, last - t0)
}

/// Transmissions per second while `until` is not done: the busiest second.
async fn busiest_second(manager: LeaseManager, done: Arc<std::sync::atomic::AtomicBool>) -> u64 {
    let mut last = manager.counters().packets_sent;
    let mut max = 0;
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = manager.counters().packets_sent;
        max = max.max(now - last);
        last = now;
    }
    max
}

async fn level(child: &ChildArgs, hold: Duration, rate: f64, burst: u32) -> Result<Level> {
    let n = child.addresses;
    let records: Records = Arc::default();
    let owner = InstanceId::derived("bench", "scale");
    let rss_before = own_status_field("VmRSS");
    let anon_before = own_status_field("RssAnon");
    let heap_before = heap_in_use_kib();
    let manager = LeaseManager::new(
        owner.clone(),
        config(child.mode, rate, burst, n),
        persist_into(records.clone()),
    )?;
    let (counts, counter) = count_events(&manager);
    // Made one at a time as they start: a collected Vec of 10,000 specs is a 5 MiB block whose
    // release raises glibc's trim threshold and so leaves freed memory resident in the figure.
    let specs = (0..n).map(|i| {
        let key = format!("scale/{i}");
        (
            spec(key, &child.parent, mac_for(child.level_index, false, i)),
            None,
        )
    });
    eprintln!("  starting {n} ({:?})", child.mode);
    let (bound, failed, refused, refusal, wall) = start_all(&manager, specs).await;
    eprintln!(
        "  {bound} bound, {failed} failed, {refused} refused after {wall:.2?}; holding {hold:?}"
    );
    let renewals_before = counts.lock().unwrap().renewals;
    let cpu_before = cpu_seconds(std::process::id());
    tokio::time::sleep(hold).await;
    let hold_cpu = cpu_seconds(std::process::id()) - cpu_before;
    // Memory the benchmark's own start tasks freed goes back to the system first, so that what
    // stays is what holding the leases costs.
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
    let rss_held = own_status_field("VmRSS");
    let anon_held = own_status_field("RssAnon");
    let heap_held = heap_in_use_kib();
    let held_counts = counts.lock().unwrap().clone();
    let renewals = held_counts.renewals - renewals_before;
    let packets = manager.counters();
    let lease = f64::from(LEASE.lease_secs);
    // A renewal every T1 = lease / 2 per address; the target assumes one per 30 min.
    let core_percent = hold_cpu / hold.as_secs_f64() * 100.0;
    let scale_to_target = (lease / 2.0) / TARGET_RENEWAL_INTERVAL_SECS;

    // Restart: stop without releasing, start again from the records at the default rate.
    eprintln!("  restart from {} records", records.lock().unwrap().len());
    manager.stop_all().await?;
    counter.abort();
    drop(manager);
    let held: HashMap<String, LeaseRecord> = records.lock().unwrap().clone();
    let restart_began = unix_ns();
    let defaults = ManagerConfig::default();
    let restarted = LeaseManager::new(
        owner,
        config(child.mode, defaults.rate_per_second, defaults.burst, n),
        persist_into(records.clone()),
    )?;
    let (restart_counts, restart_counter) = count_events(&restarted);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = tokio::spawn(busiest_second(restarted.clone(), done.clone()));
    let resume_specs: Vec<_> = (0..n)
        .filter_map(|i| {
            let key = format!("scale/{i}");
            let record = held.get(&key)?.clone();
            Some((
                spec(key, &child.parent, mac_for(child.level_index, false, i)),
                Some(record),
            ))
        })
        .collect();
    let resumed = resume_specs.len();
    let (rebound, _, _, _, restart_wall) = start_all(&restarted, resume_specs).await;
    let restart_ended = unix_ns();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let max_sent = sampler.await.unwrap_or(0);
    let same_ip = records
        .lock()
        .unwrap()
        .iter()
        .filter(|(key, record)| held.get(*key).is_some_and(|old| old.ip == record.ip))
        .count();
    eprintln!("  restart: {rebound}/{resumed} bound again after {restart_wall:.2?}");
    restarted.stop_all().await?;
    restart_counter.abort();
    let restart_events = restart_counts.lock().unwrap().clone();
    let _ = rebound;

    Ok(Level {
        mode: child.mode,
        addresses: n,
        start_rate: (rate, burst),
        refused,
        refusal,
        bound,
        failed,
        all_bound_s: wall.as_secs_f64(),
        hold_s: hold.as_secs_f64(),
        rss_before_kib: rss_before,
        rss_held_kib: rss_held,
        anon_before_kib: anon_before,
        anon_held_kib: anon_held,
        kib_per_lease: (anon_held as f64 - anon_before as f64) / bound.max(1) as f64,
        heap_before_kib: heap_before,
        heap_held_kib: heap_held,
        heap_kib_per_lease: (heap_held as f64 - heap_before as f64) / bound.max(1) as f64,
        hold_cpu_s: hold_cpu,
        core_percent,
        core_percent_scaled: core_percent * scale_to_target,
        cpu_ms_per_renewal: if renewals > 0 {
            hold_cpu * 1000.0 / renewals as f64
        } else {
            0.0
        },
        events: held_counts,
        packets_sent: packets.packets_sent,
        packets_received: packets.packets_received,
        restart: Some(Restart {
            resumed,
            same_ip,
            all_bound_s: restart_wall.as_secs_f64(),
            rate_per_second: defaults.rate_per_second,
            burst: defaults.burst,
            max_sent_per_second: max_sent,
            events: restart_events,
            window_ns: (restart_began, restart_ended),
            wire: None,
        }),
    })
}

fn run_child(child: &ChildArgs, args: &Args) -> Result<Level> {
    in_netns(&child.netns, || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(level(child, args.hold, args.start_rate, args.start_burst))
    })?
}

// --- the parent: lab, Kea, raw floor, one child per level ---------------------------------------

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Counts the client messages of the restart window in a level's capture.
fn restart_on_the_wire(
    frames: &[pcap::DhcpFrame],
    (from, to): (u64, u64),
    dropped_by_kernel: Option<u64>,
) -> RestartOnTheWire {
    let in_window: Vec<_> = frames
        .iter()
        .filter(|f| (from..=to).contains(&f.time_ns))
        .filter(|f| {
            matches!(
                f.message_type(),
                Some(MessageType::Discover | MessageType::Request)
            )
        })
        .collect();
    let mut per_second: HashMap<u64, usize> = HashMap::new();
    for f in &in_window {
        *per_second.entry(f.time_ns / 1_000_000_000).or_default() += 1;
    }
    let requests: Vec<_> = in_window
        .iter()
        .filter(|f| f.message_type() == Some(MessageType::Request))
        .collect();
    RestartOnTheWire {
        discovers: in_window.len() - requests.len(),
        requests: requests.len(),
        requesting_macs: requests
            .iter()
            .map(|f| f.dhcp.chaddr)
            .collect::<std::collections::HashSet<_>>()
            .len(),
        max_per_second: per_second.values().copied().max().unwrap_or(0),
        dropped_by_kernel,
    }
}

fn spawn_level(lab: &Lab, mode: Mode, n: usize, index: u8, args: &Args) -> Result<Level> {
    eprintln!("[scale] {mode:?} x{n}");
    // The wire's own account of the restart (DISCOVERs, REQUESTs, the busiest second), beside
    // the clients' events.
    let capture = lab.capture(lab.parent())?;
    let out = Command::new(std::env::current_exe().map_err(io_error("current_exe"))?)
        .args(["--child-netns", &lab.agent_ns()])
        .args(["--child-parent", lab.parent()])
        .args([
            "--child-mode",
            match mode {
                Mode::Linkless => "linkless",
                Mode::Links => "links",
            },
        ])
        .args(["--child-addresses", &n.to_string()])
        .args(["--child-level", &index.to_string()])
        .args(["--hold-secs", &args.hold.as_secs().to_string()])
        .args(["--start-rate", &args.start_rate.to_string()])
        .args(["--start-burst", &args.start_burst.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(io_error("running a level"))?;
    if !out.status.success() {
        return Err(BenchError::Protocol(format!(
            "level {mode:?} x{n} failed: {}",
            out.status
        )));
    }
    let frames = capture.stop()?;
    let mut level: Level = serde_json::from_slice(&out.stdout)
        .map_err(|e| BenchError::Protocol(format!("level {mode:?} x{n}: bad output: {e}")))?;
    if let Some(restart) = level.restart.as_mut() {
        let wire = restart_on_the_wire(&frames, restart.window_ns, lab.capture_dropped_by_kernel());
        eprintln!(
            "  restart on the wire: {} DISCOVER, {} REQUEST from {} MACs, busiest second {}, dropped by kernel {:?}",
            wire.discovers,
            wire.requests,
            wire.requesting_macs,
            wire.max_per_second,
            wire.dropped_by_kernel
        );
        restart.wire = Some(wire);
    }
    Ok(level)
}

fn run(args: &Args) -> Result<Report> {
    let lab = Lab::up()?;
    let kea = BigPoolKea::start(&lab, LEASE)?;
    let parent = lab.parent().to_string();
    eprintln!("[scale] raw floor x{RAW_SAMPLES}");
    let raw = in_netns(&lab.agent_ns(), || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(raw_dora::raw_one_by_one(
                &parent,
                RAW_SAMPLES,
                RAW_LINK_GROUP,
                Duration::from_secs(10),
                |i| [0x02, 0x5d, 0, 0, (i >> 8) as u8, i as u8],
            ))
    })??;
    let mut levels = Vec::new();
    let mut index = 1u8;
    for (mode, sizes) in [
        (Mode::Linkless, &args.levels),
        (Mode::Links, &args.link_levels),
    ] {
        for &n in sizes {
            levels.push(spawn_level(&lab, mode, n, index, args)?);
            index += 1;
        }
    }
    let mut peers = Vec::new();
    for &n in &args.peer_levels {
        eprintln!("[scale] CNI dhcp daemon x{n}");
        peers.push(cni_peer::run_level(&lab, n, index, args.hold)?);
        index += 1;
    }
    drop(kea);
    lab.down()?;
    Ok(Report {
        date_utc: figures::date_utc(),
        machine: figures::machine(),
        kea_pool: "10.77.1.0 - 10.77.255.250 of 10.77.0.0/16".into(),
        lease_secs: LEASE.lease_secs,
        hold_s: args.hold.as_secs_f64(),
        raw_exchange: Latency::of(raw.exchange, raw.failed),
        levels,
        peers,
    })
}

fn table(report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\ndhcpmanager at scale — {} — {}\nKea, {}, {} s leases (T1 30 s), held {} s; first start at {} transmissions/s, burst {}; raw exchange p50 {:.2} ms (n {}, failed {})\n",
        report.date_utc,
        report.machine,
        report.kea_pool,
        report.lease_secs,
        report.hold_s,
        report.levels.first().map_or(0.0, |l| l.start_rate.0),
        report.levels.first().map_or(0, |l| l.start_rate.1),
        report.raw_exchange.p50_ms,
        report.raw_exchange.samples,
        report.raw_exchange.failed
    );
    let _ = writeln!(
        s,
        "{:<9} {:>6} {:>6} {:>5} {:>6} {:>9} {:>8} {:>8} {:>9} {:>8} {:>8} {:>5} {:>5} {:>5} {:>9} {:>8} {:>6} {:>6}",
        "mode",
        "N",
        "bound",
        "fail",
        "refuse",
        "all bnd s",
        "KiB/ls",
        "heap/ls",
        "renewals",
        "ms/renew",
        "% core",
        "NAK",
        "exp",
        "ipchg",
        "restart s",
        "max tx/s",
        "DISC",
        "sameIP"
    );
    for l in &report.levels {
        let r = l.restart.as_ref();
        let _ = writeln!(
            s,
            "{:<9} {:>6} {:>6} {:>5} {:>6} {:>9.3} {:>8.2} {:>8.2} {:>9} {:>8.3} {:>8.2} {:>5} {:>5} {:>5} {:>9.2} {:>8} {:>6} {:>6}",
            format!("{:?}", l.mode).to_lowercase(),
            l.addresses,
            l.bound,
            l.failed,
            l.refused,
            l.all_bound_s,
            l.kib_per_lease,
            l.heap_kib_per_lease,
            l.events.renewals,
            l.cpu_ms_per_renewal,
            l.core_percent,
            l.events.naks + r.map_or(0, |r| r.events.naks),
            l.events.expiries + r.map_or(0, |r| r.events.expiries),
            l.events.ip_changes + r.map_or(0, |r| r.events.ip_changes),
            r.map_or(0.0, |r| r.all_bound_s),
            r.map_or(0, |r| r.max_sent_per_second),
            r.map_or(0, |r| r.events.discovers),
            r.map_or(0, |r| r.same_ip),
        );
    }
    for p in &report.peers {
        let _ = writeln!(
            s,
            "{:<9} {:>6} {:>6} {:>5} {:>6} {:>9.3} {:>8.2} {:>8} {:>9} {:>8.3} {:>8.2} {:>5} {:>5} {:>5}   (not attempted {}, DEL failed {}, {} threads)",
            "cni-dhcp",
            p.addresses,
            p.leased,
            p.failed,
            0,
            p.all_leased_s,
            p.kib_per_lease,
            "-",
            p.renewals,
            p.cpu_ms_per_renewal,
            p.core_percent,
            "-",
            p.expiries,
            "-",
            p.not_attempted,
            p.del_failed,
            p.threads,
        );
    }
    let _ = writeln!(
        s,
        "\n% core scaled to one renewal per address per 30 min: {}   (target < {TARGET_CORE_PERCENT} %; KiB per lease target < {TARGET_KIB_PER_LEASE})",
        report
            .levels
            .iter()
            .map(|l| format!(
                "{:?} {}: {:.3} %",
                l.mode, l.addresses, l.core_percent_scaled
            )
            .to_lowercase())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for l in &report.levels {
        if let Some(w) = l.restart.as_ref().and_then(|r| r.wire.as_ref()) {
            let _ = writeln!(
                s,
                "restart on the wire, {:?} {}: {} DISCOVER, {} REQUEST from {} MACs, busiest second {} (tcpdump on the parent; dropped by kernel: {})",
                l.mode,
                l.addresses,
                w.discovers,
                w.requests,
                w.requesting_macs,
                w.max_per_second,
                w.dropped_by_kernel
                    .map_or("unknown".into(), |d| d.to_string())
            );
        }
    }
    for p in &report.peers {
        if let Some(error) = &p.first_error {
            let _ = writeln!(s, "cni-dhcp {}: first ADD failure: {error}", p.addresses);
        }
    }
    for l in &report.levels {
        if let Some(refusal) = &l.refusal {
            let _ = writeln!(
                s,
                "{:?} {}: {} refused: {refusal}",
                l.mode, l.addresses, l.refused
            );
        }
        if l.events.lagged > 0 {
            let _ = writeln!(
                s,
                "{:?} {}: the event counter missed {} events (lagged)",
                l.mode, l.addresses, l.events.lagged
            );
        }
    }
    s
}

fn main() {
    let args = cli::args_or_exit(parse_args());
    if let Some(child) = &args.child {
        match run_child(child, &args) {
            Ok(level) => println!("{}", serde_json::to_string(&level).expect("serializable")),
            Err(e) => {
                eprintln!("bench_scale level: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    match run(&args) {
        Ok(report) => cli::publish(&table(&report), &args.out, &report),
        Err(e) => {
            eprintln!("bench_scale: {e}");
            std::process::exit(1);
        }
    }
}
