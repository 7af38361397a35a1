//! The lease-engine benchmark: figures, no assertions.
//!
//! In one run against the same real DHCP server in a lab (Kea from Debian, with a /16 pool so
//! that 500 new leases fit; optionally dnsmasq and dhcpd from the lab's own configs):
//! - time to one new lease, per sample a fresh MAC, released afterwards, for the engine
//!   (`LeaseManager` start → Bound, split into link setup and DHCP exchange), busybox udhcpc
//!   (one process per lease) and the raw floor (DISCOVER→OFFER→REQUEST→ACK by hand over the
//!   engine's `DhcpSocket`, no state machine, no retries);
//! - wall time for 50 and 500 concurrent new leases through one `LeaseManager`;
//! - resident memory per held lease with 500 leases held (renewals running).
//!
//! Prints a table and writes the same figures as JSON (default `target/bench/engine.json`).
//! Run as root (network namespaces); `scripts/bench.sh` builds and runs it.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dhcpmanager_engine::dhcp::{ClientConfig, MacAddr};
use dhcpmanager_engine::manager::{
    AddressSpec, CounterSnapshot, LeaseManager, ManagerConfig, PersistFn, wait_bound,
};
use dhcpmanager_tests::bench::big_kea::{BigPoolKea, LeaseTimes};
use dhcpmanager_tests::bench::cli;
use dhcpmanager_tests::bench::error::BenchError;
use dhcpmanager_tests::bench::figures::{self, Latency};
use dhcpmanager_tests::bench::proc::own_status_field;
use dhcpmanager_tests::bench::raw_dora;
use dhcpmanager_tests::lab::{Lab, Server, ServerOpts};
use dhcpmanager_tests::netns::in_netns;
use dhcpmanager_tests::udhcpc::Udhcpc;
use serde::Serialize;

/// Safety net per lease; a sample that needs it is counted as failed, never as a figure.
const LEASE_TIMEOUT: Duration = Duration::from_secs(30);
/// Link group of the raw-floor macvlans: not the engine's, so the two never touch each other's.
const RAW_LINK_GROUP: u32 = 0x6265_6e63; // "benc"
/// Rate limit that is not the bottleneck for 500 leases (each lease sends DISCOVER + REQUEST).
const HIGH_RATE: f64 = 1_000_000.0;
const HIGH_BURST: u32 = 100_000;
/// Kea's lease: short enough that renewals (T1) run while the 500 leases are held.
const KEA_LEASE_SECS: u32 = 30;
const KEA_TIMES: LeaseTimes = LeaseTimes {
    lease_secs: KEA_LEASE_SECS,
    renew_secs: Some(3),
    rebind_secs: Some(20),
};

const TARGET_P50_VS_FLOOR: f64 = 2.0;
const TARGET_500_SECS: f64 = 1.0;
const TARGET_KIB_PER_LEASE: f64 = 20.0;

type Result<T> = std::result::Result<T, BenchError>;

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |e| BenchError::Io(what, e)
}

// --- arguments ---------------------------------------------------------------------------------

struct Args {
    samples: usize,
    servers: Vec<Server>,
    hold: Duration,
    out: PathBuf,
    /// The "500" of the concurrent runs (smaller for a quick try).
    big: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        samples: 200,
        servers: vec![Server::Kea],
        hold: Duration::from_secs(6),
        out: dhcpmanager_tests::repo_root().join("target/bench/engine.json"),
        big: 500,
    };
    for (flag, value) in cli::flag_values()? {
        match flag.as_str() {
            "--samples" => args.samples = value.parse().map_err(|_| BenchError::Usage)?,
            "--hold-secs" => {
                args.hold = Duration::from_secs(value.parse().map_err(|_| BenchError::Usage)?)
            }
            "--out" => args.out = value.into(),
            "--big" => args.big = value.parse().map_err(|_| BenchError::Usage)?,
            "--servers" => args.servers = cli::servers(&value)?,
            _ => return Err(BenchError::Usage),
        }
    }
    Ok(args)
}

// --- figures -----------------------------------------------------------------------------------

/// One-lease series of one server.
#[derive(Debug, Serialize)]
struct SingleLease {
    server: &'static str,
    /// LeaseManager::start → Bound, including macvlan creation and socket setup.
    engine_total: Latency,
    /// LeaseManager::start alone: macvlan creation (rtnetlink) and packet socket setup.
    engine_link_setup: Latency,
    /// start() returned → Bound: the engine's DHCP exchange with the link already there.
    engine_exchange: Latency,
    /// busybox udhcpc spawned (via `ip netns exec`) → its hook printed `bound`.
    udhcpc: Latency,
    /// `ip netns exec NS true`: the process-spawn share of the udhcpc figure.
    spawn_floor: Latency,
    /// DISCOVER→ACK by hand over DhcpSocket (link and socket made beforehand).
    raw_exchange: Latency,
    /// The same plus macvlan creation and socket open, for comparison with engine_total.
    raw_total: Latency,
}

/// Many new leases at once through one manager.
#[derive(Debug, Serialize)]
struct Concurrent {
    server: &'static str,
    leases: usize,
    rate_per_second: f64,
    burst: u32,
    bound: usize,
    failed: usize,
    /// First start() called → every start() returned (all macvlans and sockets made).
    links_ready_s: f64,
    /// First start() called → the last lease Bound.
    wall_s: f64,
    per_lease_latency: Latency,
    counters: CounterSnapshot,
    /// rx_dropped of the parent (macvlan broadcast queue overflows land there) during the run.
    parent_rx_dropped: u64,
    /// Replies the kernel dropped on the manager's rtnetlink socket (receive buffer full).
    rtnetlink_drops: u64,
}

#[derive(Debug, Serialize)]
struct Memory {
    /// False when some of the leases failed: hung tasks then count in the RSS while their leases
    /// do not count in the divisor, so the per-lease figure is not comparable.
    complete: bool,
    leases_held: usize,
    held_for_s: f64,
    rss_before_kib: u64,
    rss_after_kib: u64,
    kib_per_lease: f64,
    /// Packets during the hold: renewals that ran while the leases were held.
    hold_counters: CounterSnapshot,
}

#[derive(Debug, Serialize)]
struct Targets {
    engine_p50_vs_raw_floor_max: f64,
    new_500_leases_max_s: f64,
    kib_per_held_lease_max: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    date_utc: String,
    machine: String,
    kea_pool: String,
    kea_lease_secs: u32,
    high_rate: (f64, u32),
    targets: Targets,
    memory: Option<Memory>,
    concurrent: Vec<Concurrent>,
    single_lease: Vec<SingleLease>,
}

// --- helpers -----------------------------------------------------------------------------------

/// Locally administered, unique per (phase, server, sample).
fn mac_for(phase: u8, server: u8, i: usize) -> [u8; 6] {
    let i = i as u32;
    [
        0x02,
        phase,
        server,
        (i >> 16) as u8,
        (i >> 8) as u8,
        i as u8,
    ]
}

fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn server_code(server: Server) -> u8 {
    match server {
        Server::Kea => 1,
        Server::Dnsmasq => 2,
        Server::Dhcpd => 3,
    }
}

fn no_persist() -> PersistFn {
    Arc::new(|_, _| {})
}

/// rx_dropped of `parent` (macvlan broadcast-queue overflows are counted there). A child process
/// inherits the namespace of the thread that forks it, so this runs `ip` in the agent namespace
/// when called from inside `in_netns`.
fn rx_dropped(parent: &str) -> u64 {
    let Ok(out) = Command::new("ip")
        .args(["-s", "-j", "link", "show", "dev", parent])
        .output()
    else {
        return 0;
    };
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v[0]["stats64"]["rx"]["dropped"].as_u64())
        .unwrap_or(0)
}

/// Each NETLINK_ROUTE socket of this thread's namespace as (pid, rmem, drops). A reply the
/// kernel could not queue (receive buffer full) shows as a drop, and its request then waits
/// forever.
fn route_netlink_rows() -> Vec<(String, String, u64)> {
    let table = std::fs::read_to_string("/proc/thread-self/net/netlink").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
            (f.len() >= 10 && f[1] == "0").then(|| {
                (
                    f[2].to_string(),
                    f[4].to_string(),
                    f[8].parse().unwrap_or(0),
                )
            })
        })
        .collect()
}

fn route_netlink_sockets() -> String {
    route_netlink_rows()
        .iter()
        .map(|(pid, rmem, drops)| format!("pid {pid} rmem {rmem} drops {drops}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sum of the drop counters of the NETLINK_ROUTE sockets in this thread's namespace.
fn route_netlink_drops() -> u64 {
    route_netlink_rows().iter().map(|(_, _, drops)| drops).sum()
}

fn spec(key: String, parent: &str, mac: [u8; 6]) -> AddressSpec {
    AddressSpec {
        key,
        parent: parent.to_string(),
        client: ClientConfig::new(MacAddr(mac)),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// --- one lease at a time -----------------------------------------------------------------------

struct EngineSamples {
    total: Vec<Duration>,
    link_setup: Vec<Duration>,
    exchange: Vec<Duration>,
    failed: usize,
}

async fn engine_one_by_one(parent: &str, samples: usize, server: u8) -> Result<EngineSamples> {
    let manager = LeaseManager::new(bench_owner(), ManagerConfig::default(), no_persist())?;
    let mut out = EngineSamples {
        total: Vec::new(),
        link_setup: Vec::new(),
        exchange: Vec::new(),
        failed: 0,
    };
    for i in 0..samples {
        let key = format!("bench/one-{server}-{i}");
        let t0 = Instant::now();
        let mut status = manager
            .start(spec(key.clone(), parent, mac_for(0x10, server, i)), None)
            .await?;
        let t1 = Instant::now();
        match wait_bound(&mut status, LEASE_TIMEOUT).await {
            Ok(_) => {
                let t2 = Instant::now();
                out.total.push(t2 - t0);
                out.link_setup.push(t1 - t0);
                out.exchange.push(t2 - t1);
            }
            Err(e) => {
                eprintln!("engine sample {i}: {e}");
                out.failed += 1;
            }
        }
        manager.release(&key).await?;
    }
    manager.stop_all().await?;
    Ok(out)
}

/// udhcpc from spawn to its hook's `bound` line; it releases (-R) on its way out, untimed.
fn udhcpc_one_by_one(lab: &Lab, samples: usize, server: u8) -> Result<(Vec<Duration>, usize)> {
    let mut times = Vec::new();
    let mut failed = 0;
    for i in 0..samples {
        let iface = format!("bu{server}x{i}");
        lab.add_macvlan(&iface, &mac_string(mac_for(0x30, server, i)))?;
        let mut cmd = Udhcpc::new(&iface).command(lab);
        cmd.arg("-R").stdout(Stdio::piped()).stderr(Stdio::null());
        let t0 = Instant::now();
        let mut child = cmd.spawn().map_err(io_error("spawning udhcpc"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let bound = BufReader::new(stdout)
            .lines()
            .map_while(|l| l.ok())
            .find(|l| l.starts_with("udhcpc-event bound "))
            .map(|_| t0.elapsed());
        let _ = child.wait();
        match bound {
            Some(t) => times.push(t),
            None => {
                eprintln!("udhcpc sample {i}: no lease");
                failed += 1;
            }
        }
        let status = lab
            .run_in_agent("ip")
            .args(["link", "del", &iface])
            .status()
            .map_err(io_error("deleting udhcpc macvlan"))?;
        if !status.success() {
            return Err(BenchError::Protocol(format!("ip link del {iface} failed")));
        }
    }
    Ok((times, failed))
}

fn spawn_floor(lab: &Lab, samples: usize) -> Result<Vec<Duration>> {
    (0..samples)
        .map(|_| {
            let t0 = Instant::now();
            lab.run_in_agent("true")
                .status()
                .map_err(io_error("ip netns exec true"))?;
            Ok(t0.elapsed())
        })
        .collect()
}

fn single_lease(lab: &Lab, server: Server, samples: usize) -> Result<SingleLease> {
    let code = server_code(server);
    let parent = lab.parent().to_string();
    eprintln!("[{}] engine, one lease at a time x{samples}", server.name());
    let engine = in_netns(&lab.agent_ns(), || {
        runtime().block_on(engine_one_by_one(&parent, samples, code))
    })??;
    eprintln!("[{}] raw floor x{samples}", server.name());
    let raw = in_netns(&lab.agent_ns(), || {
        runtime().block_on(raw_dora::raw_one_by_one(
            &parent,
            samples,
            RAW_LINK_GROUP,
            LEASE_TIMEOUT,
            |i| mac_for(0x20, code, i),
        ))
    })??;
    eprintln!("[{}] busybox udhcpc x{samples}", server.name());
    let (udhcpc, udhcpc_failed) = udhcpc_one_by_one(lab, samples, code)?;
    let spawn = spawn_floor(lab, samples.min(50))?;
    Ok(SingleLease {
        server: server.name(),
        engine_total: Latency::of(engine.total, engine.failed),
        engine_link_setup: Latency::of(engine.link_setup, engine.failed),
        engine_exchange: Latency::of(engine.exchange, engine.failed),
        udhcpc: Latency::of(udhcpc, udhcpc_failed),
        spawn_floor: Latency::of(spawn, 0),
        raw_exchange: Latency::of(raw.exchange, raw.failed),
        raw_total: Latency::of(raw.total, raw.failed),
    })
}

// --- many at once ------------------------------------------------------------------------------

/// `n` new leases started at once through one manager; optionally holds them and reads RSS.
async fn concurrent_new(
    parent: &str,
    n: usize,
    phase: u8,
    config: ManagerConfig,
    hold: Option<Duration>,
) -> Result<(Concurrent, Option<Memory>)> {
    let rss_before = own_status_field("VmRSS");
    let (rate, burst) = (config.rate_per_second, config.burst);
    let manager = LeaseManager::new(bench_owner(), config, no_persist())?;
    let dropped_before = rx_dropped(parent);
    let netlink_drops_before = route_netlink_drops();
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let manager = manager.clone();
        let spec = spec(format!("bench/c{phase}-{i}"), parent, mac_for(phase, 1, i));
        tasks.spawn(async move {
            // A start() whose netlink reply was dropped never returns (see rtnetlink_drops):
            // the safety net turns it into a failed sample instead of a hung benchmark.
            let mut status = tokio::time::timeout(LEASE_TIMEOUT, manager.start(spec, None))
                .await
                .map_err(|_| {
                    BenchError::Protocol(format!("start() did not return within {LEASE_TIMEOUT:?}"))
                })??;
            let started = Instant::now();
            let bound = wait_bound(&mut status, LEASE_TIMEOUT)
                .await
                .map(|_| Instant::now());
            Ok::<_, BenchError>((started, bound))
        });
    }
    let progress = {
        let manager = manager.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let bound = manager
                    .keys()
                    .iter()
                    .filter(|k| {
                        manager
                            .status(k)
                            .is_some_and(|s| s.state == dhcpmanager_engine::dhcp::State::Bound)
                    })
                    .count();
                eprintln!(
                    "  after {:.0?}: {} running, {bound} bound, {:?}; rtnetlink sockets: {}",
                    t0.elapsed(),
                    manager.keys().len(),
                    manager.counters(),
                    route_netlink_sockets()
                );
            }
        })
    };
    let (mut last_started, mut last_bound) = (t0, t0);
    let mut latencies = Vec::new();
    let mut failed = 0;
    let mut errors = std::collections::BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("lease task panicked") {
            Ok((started, Ok(bound))) => {
                last_started = last_started.max(started);
                last_bound = last_bound.max(bound);
                latencies.push(bound - t0);
            }
            Ok((started, Err(e))) => {
                last_started = last_started.max(started);
                *errors.entry(e.to_string()).or_insert(0usize) += 1;
                failed += 1;
            }
            Err(e) => {
                *errors.entry(format!("start failed: {e}")).or_insert(0usize) += 1;
                failed += 1;
            }
        }
    }
    progress.abort();
    for (error, count) in &errors {
        eprintln!("  {n} concurrent: {count} x {error}");
    }
    let counters = manager.counters();
    let dropped = rx_dropped(parent) - dropped_before;
    let netlink_drops = route_netlink_drops().saturating_sub(netlink_drops_before);
    let memory = match hold {
        Some(hold) => {
            tokio::time::sleep(hold).await;
            let rss_after = own_status_field("VmRSS");
            let after = manager.counters();
            Some(Memory {
                complete: failed == 0,
                leases_held: latencies.len(),
                held_for_s: hold.as_secs_f64(),
                rss_before_kib: rss_before,
                rss_after_kib: rss_after,
                kib_per_lease: (rss_after as f64 - rss_before as f64) / latencies.len() as f64,
                hold_counters: CounterSnapshot {
                    packets_sent: after.packets_sent - counters.packets_sent,
                    packets_received: after.packets_received - counters.packets_received,
                    replies_rejected: after.replies_rejected - counters.replies_rejected,
                    send_errors: after.send_errors - counters.send_errors,
                },
            })
        }
        None => None,
    };
    manager.stop_all().await?;
    let bound = latencies.len();
    Ok((
        Concurrent {
            server: "kea",
            leases: n,
            rate_per_second: rate,
            burst,
            bound,
            failed,
            links_ready_s: (last_started - t0).as_secs_f64(),
            wall_s: (last_bound - t0).as_secs_f64(),
            per_lease_latency: Latency::of(latencies, failed),
            counters,
            parent_rx_dropped: dropped,
            rtnetlink_drops: netlink_drops,
        },
        memory,
    ))
}

fn high_rate() -> ManagerConfig {
    ManagerConfig {
        rate_per_second: HIGH_RATE,
        burst: HIGH_BURST,
        ..ManagerConfig::default()
    }
}

fn kea_phases(lab: &Lab, hold: Duration, big: usize) -> Result<(Vec<Concurrent>, Option<Memory>)> {
    let parent = lab.parent().to_string();
    in_netns(&lab.agent_ns(), || {
        let rt = runtime();
        rt.block_on(async {
            let mut runs = Vec::new();
            // First in the process, so that the RSS baseline is not memory freed by earlier runs.
            eprintln!("[kea] {big} concurrent, high rate, then held {hold:?} for RSS");
            let (run, memory) = concurrent_new(&parent, big, 0x40, high_rate(), Some(hold)).await?;
            runs.push(run);
            eprintln!("[kea] 50 concurrent, high rate");
            runs.push(
                concurrent_new(&parent, 50, 0x41, high_rate(), None)
                    .await?
                    .0,
            );
            eprintln!("[kea] {big} concurrent, default rate");
            runs.push(
                concurrent_new(&parent, big, 0x42, ManagerConfig::default(), None)
                    .await?
                    .0,
            );
            eprintln!("[kea] {big} concurrent, high rate (second run)");
            runs.push(
                concurrent_new(&parent, big, 0x43, high_rate(), None)
                    .await?
                    .0,
            );
            Ok::<_, BenchError>((runs, memory))
        })
    })?
}

// --- output ------------------------------------------------------------------------------------

fn table(report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\ndhcpmanager lease-engine benchmark — {} — {}",
        report.date_utc, report.machine
    );
    let _ = writeln!(
        s,
        "\nTime to one new lease (ms; fresh MAC per sample, released after each)"
    );
    let _ = writeln!(
        s,
        "{:<8} {:<44} {:>5} {:>4} {:>8} {:>8} {:>8}",
        "server", "what", "n", "fail", "p50", "p99", "max"
    );
    for one in &report.single_lease {
        let rows: [(&str, &Latency); 7] = [
            ("engine: start -> Bound (incl. link)", &one.engine_total),
            (
                "engine: link + socket setup (start())",
                &one.engine_link_setup,
            ),
            ("engine: DHCP exchange only", &one.engine_exchange),
            ("raw floor: DORA over DhcpSocket", &one.raw_exchange),
            ("raw floor + link + socket setup", &one.raw_total),
            ("busybox udhcpc -q -n -f (spawn -> bound)", &one.udhcpc),
            ("  of which `ip netns exec true`", &one.spawn_floor),
        ];
        for (what, l) in rows {
            let _ = writeln!(
                s,
                "{:<8} {:<44} {:>5} {:>4} {:>8.2} {:>8.2} {:>8.2}",
                one.server, what, l.samples, l.failed, l.p50_ms, l.p99_ms, l.max_ms
            );
        }
        let _ = writeln!(
            s,
            "{:<8} engine exchange p50 / raw floor p50 = {:.2}x; engine total p50 / raw total p50 = {:.2}x   (target: <= {TARGET_P50_VS_FLOOR}x)",
            one.server,
            one.engine_exchange.p50_ms / one.raw_exchange.p50_ms,
            one.engine_total.p50_ms / one.raw_total.p50_ms,
        );
    }
    let _ = writeln!(s, "\nConcurrent new leases through one LeaseManager");
    let _ = writeln!(
        s,
        "{:<6} {:>5} {:>16} {:>6} {:>5} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "server",
        "n",
        "rate/s, burst",
        "bound",
        "fail",
        "links s",
        "wall s",
        "sent",
        "recv",
        "rx_drop",
        "nl_drops"
    );
    for c in &report.concurrent {
        let _ = writeln!(
            s,
            "{:<6} {:>5} {:>16} {:>6} {:>5} {:>9.3} {:>8.3} {:>8} {:>8} {:>9} {:>9}",
            c.server,
            c.leases,
            format!("{}, {}", c.rate_per_second, c.burst),
            c.bound,
            c.failed,
            c.links_ready_s,
            c.wall_s,
            c.counters.packets_sent,
            c.counters.packets_received,
            c.parent_rx_dropped,
            c.rtnetlink_drops
        );
    }
    let _ = writeln!(
        s,
        "  (target: 500 new leases against Kea in < {TARGET_500_SECS} s)"
    );
    if let Some(m) = &report.memory {
        let _ = writeln!(
            s,
            "\nMemory{}: {} leases held {:.0} s: VmRSS {} KiB -> {} KiB = {:.1} KiB per lease (target: < {TARGET_KIB_PER_LEASE} KiB); during the hold sent {} received {}",
            if m.complete {
                ""
            } else {
                " (NOT comparable: some leases failed)"
            },
            m.leases_held,
            m.held_for_s,
            m.rss_before_kib,
            m.rss_after_kib,
            m.kib_per_lease,
            m.hold_counters.packets_sent,
            m.hold_counters.packets_received
        );
    }
    s
}

fn run(args: &Args) -> Result<Report> {
    let lab = Lab::up()?;
    let mut report = Report {
        date_utc: figures::date_utc(),
        machine: figures::machine(),
        kea_pool: "10.77.1.0 - 10.77.255.250 of 10.77.0.0/16".into(),
        kea_lease_secs: KEA_LEASE_SECS,
        high_rate: (HIGH_RATE, HIGH_BURST),
        targets: Targets {
            engine_p50_vs_raw_floor_max: TARGET_P50_VS_FLOOR,
            new_500_leases_max_s: TARGET_500_SECS,
            kib_per_held_lease_max: TARGET_KIB_PER_LEASE,
        },
        memory: None,
        concurrent: Vec::new(),
        single_lease: Vec::new(),
    };
    for &server in &args.servers {
        if server == Server::Kea {
            let kea = BigPoolKea::start(&lab, KEA_TIMES)?;
            let (runs, memory) = kea_phases(&lab, args.hold, args.big)?;
            report.concurrent = runs;
            report.memory = memory;
            report
                .single_lease
                .push(single_lease(&lab, server, args.samples)?);
            drop(kea);
        } else {
            // The lab's own config: a /24 pool, enough for one lease at a time.
            lab.start(server, ServerOpts::default())?;
            report
                .single_lease
                .push(single_lease(&lab, server, args.samples)?);
            lab.stop(server)?;
        }
    }
    lab.down()?;
    Ok(report)
}

fn main() {
    let args = cli::args_or_exit(parse_args());
    match run(&args) {
        Ok(report) => cli::publish(&table(&report), &args.out, &report),
        Err(e) => {
            eprintln!("bench_engine: {e}");
            std::process::exit(1);
        }
    }
}

/// The owner of the benchmark's links (one manager at a time, so one id serves).
fn bench_owner() -> dhcpmanager_engine::instance::InstanceId {
    dhcpmanager_engine::instance::InstanceId::derived("bench", "engine")
}
