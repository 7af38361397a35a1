//! The agent benchmark: figures, no assertions.
//!
//! A private real kube-apiserver with the CRDs and the chart's RBAC, the lab's Kea, one agent
//! (`--time-scale 1`: real RFC timing) managing its links in the lab's agent namespace
//! (`dhcpmanager_tests::cluster::Cluster`). Measured in one run against the same server:
//! - `DhcpAddress` create → status phase Bound, one address at a time (each sample a new object,
//!   deleted and gone before the next);
//! - 100 addresses created at once: per-address create → Bound and the wall time for all;
//! - the raw DHCP exchange floor (`bench::raw_dora`) beside them.
//!
//! Bound and gone are seen through a kube watch in this process (no kubectl polling, whose
//! process spawns and poll interval would dominate the figures). Prints a table and writes JSON
//! (default `target/bench/agent.json`). Run as root; `scripts/bench.sh` builds and runs it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dhcpmanager_crds::{DhcpAddress, DhcpAddressSpec, Phase};
use dhcpmanager_tests::bench::cli;
use dhcpmanager_tests::bench::error::BenchError;
use dhcpmanager_tests::bench::figures::{self, Latency};
use dhcpmanager_tests::bench::raw_dora;
use dhcpmanager_tests::bench::services::kube_client;
use dhcpmanager_tests::cluster::{AgentOpts, Cluster};
use dhcpmanager_tests::lab::{Server, ServerOpts};
use dhcpmanager_tests::netns::in_netns;
use dhcpmanager_tests::prometheus;
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher;
use serde::Serialize;
use tokio::sync::watch;

/// Safety net per wait; an object that needs it counts as failed, never as a figure.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
const NAMESPACE: &str = "bench";
/// Link group of the raw-floor macvlans: not the agent's, so neither touches the other's links.
const RAW_LINK_GROUP: u32 = 0x6261_6761; // "baga"
/// Long enough that no renewal runs during the benchmark (renewals are not what is measured).
const LEASE_SECS: u32 = 600;
const AGENT_MACS: usize = 128;
const TARGET_P50_MS: f64 = 50.0;

type Result<T> = std::result::Result<T, BenchError>;

struct Args {
    samples: usize,
    many: usize,
    out: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        samples: 30,
        many: 100,
        out: dhcpmanager_tests::repo_root().join("target/bench/agent.json"),
    };
    for (flag, value) in cli::flag_values()? {
        match flag.as_str() {
            "--samples" => args.samples = value.parse().map_err(|_| BenchError::Usage)?,
            "--many" => args.many = value.parse().map_err(|_| BenchError::Usage)?,
            "--out" => args.out = value.into(),
            _ => return Err(BenchError::Usage),
        }
    }
    if args.many > AGENT_MACS {
        return Err(BenchError::Usage);
    }
    Ok(args)
}

// --- figures -----------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
struct OneAtATime {
    /// create call sent → the watch delivered status.phase Bound.
    create_to_bound: Latency,
    /// The create call alone (API server admission and storage).
    create_call: Latency,
    /// delete call sent → the watch delivered the deletion (release, link and MAC clean-up,
    /// finalizer removed).
    delete_to_gone: Latency,
    /// The very first address after the agent started, not in the series above.
    first_after_agent_start_ms: f64,
    /// The agent's own counters over this phase (first address included).
    agent: AgentCounters,
}

#[derive(Debug, Serialize)]
struct ManyAtOnce {
    addresses: usize,
    bound: usize,
    failed: usize,
    /// First create sent → every create answered.
    creates_answered_s: f64,
    /// First create sent → the last Bound seen.
    wall_s: f64,
    /// Each address: its own create sent → its Bound seen.
    create_to_bound: Latency,
    /// First delete sent → the last object gone.
    delete_all_gone_s: f64,
    /// The agent's own counters over this phase.
    agent: AgentCounters,
}

#[derive(Debug, Serialize)]
struct Report {
    date_utc: String,
    machine: String,
    server: &'static str,
    lease_secs: u32,
    agent: String,
    target_p50_ms: f64,
    one_at_a_time: OneAtATime,
    many_at_once: ManyAtOnce,
    raw_exchange: Latency,
    raw_total: Latency,
}

// --- what the watch has seen -------------------------------------------------------------------

/// When the watch first delivered each object as Bound, and which objects it saw deleted.
#[derive(Debug, Default)]
struct Seen {
    bound: HashMap<String, Instant>,
    gone: HashMap<String, Instant>,
}

/// Feeds `seen` from a watch on the benchmark's namespace. The instant is taken when the event
/// arrives in this process: what a controller watching the object would see.
async fn watch_addresses(api: Api<DhcpAddress>, seen: watch::Sender<Seen>) {
    let mut events = watcher(api, watcher::Config::default()).boxed();
    loop {
        let event = match events.try_next().await {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(e) => {
                // The watcher retries on the next poll; the pause keeps a dead connection from
                // turning this task into a busy loop that also never yields to an abort.
                eprintln!("watch: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let now = Instant::now();
        match event {
            watcher::Event::Apply(da) | watcher::Event::InitApply(da) => {
                let name = da.metadata.name.clone().unwrap_or_default();
                let bound = da
                    .status
                    .as_ref()
                    .is_some_and(|s| s.phase == Some(Phase::Bound));
                if bound {
                    seen.send_modify(|s| {
                        s.bound.entry(name).or_insert(now);
                    });
                }
            }
            watcher::Event::Delete(da) => {
                let name = da.metadata.name.clone().unwrap_or_default();
                seen.send_modify(|s| {
                    s.gone.entry(name).or_insert(now);
                });
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }
}

async fn wait_seen(
    seen: &watch::Receiver<Seen>,
    what: &str,
    check: impl Fn(&Seen) -> bool,
) -> Result<()> {
    let mut rx = seen.clone();
    tokio::time::timeout(STEP_TIMEOUT, rx.wait_for(|s| check(s)))
        .await
        .map_err(|_| BenchError::Timeout(format!("{what}: not within {STEP_TIMEOUT:?}")))?
        .map_err(|_| BenchError::Timeout(format!("{what}: the watch ended")))?;
    Ok(())
}

fn address(name: &str) -> DhcpAddress {
    let mut da = DhcpAddress::new(
        name,
        DhcpAddressSpec {
            service: Some(format!("{NAMESPACE}/{name}")),
            ..DhcpAddressSpec::default()
        },
    );
    da.metadata.namespace = Some(NAMESPACE.to_string());
    da
}

// --- the agent's own view --------------------------------------------------------------------

/// Counters from the agent's /metrics: how long its DHCP clients took (engine start → Bound, the
/// `time_to_bound_seconds` histogram), packets, failed reconciles. The difference to create →
/// Bound is the Kubernetes side: API round trips and watch/reconcile hops.
#[derive(Debug, Default, Clone, Serialize)]
struct AgentCounters {
    bound: f64,
    /// Mean engine start → Bound in ms (`time_to_bound_seconds` sum / count).
    mean_engine_time_to_bound_ms: f64,
    time_to_bound_sum_s: f64,
    packets_sent: f64,
    packets_received: f64,
    /// Failed reconciles (every `failures_total` series).
    failures: f64,
    /// The same by the error label: what made them fail.
    failures_by_error: std::collections::BTreeMap<String, f64>,
}

impl AgentCounters {
    fn scrape(addr: std::net::SocketAddr, token: &str) -> AgentCounters {
        let text = metrics_text(addr, token).unwrap_or_else(|error| {
            eprintln!("bench_agent: scraping the agent: {error}");
            String::new()
        });
        let sum_of = |name: &str| prometheus::sum_of(&text, name);
        AgentCounters {
            bound: sum_of("dhcpmanager_time_to_bound_seconds_count"),
            mean_engine_time_to_bound_ms: f64::NAN,
            time_to_bound_sum_s: sum_of("dhcpmanager_time_to_bound_seconds_sum"),
            packets_sent: sum_of("dhcpmanager_packets_sent_total"),
            packets_received: sum_of("dhcpmanager_packets_received_total"),
            failures: sum_of("dhcpmanager_failures_total"),
            failures_by_error: text
                .lines()
                .filter_map(|l| l.strip_prefix("dhcpmanager_failures_total{error=\""))
                .filter_map(|l| {
                    let (label, rest) = l.split_once('"')?;
                    Some((label.to_string(), rest.rsplit(' ').next()?.parse().ok()?))
                })
                .collect(),
        }
    }

    fn since(&self, before: &AgentCounters) -> AgentCounters {
        let bound = self.bound - before.bound;
        let sum = self.time_to_bound_sum_s - before.time_to_bound_sum_s;
        AgentCounters {
            bound,
            mean_engine_time_to_bound_ms: sum / bound * 1e3,
            time_to_bound_sum_s: sum,
            packets_sent: self.packets_sent - before.packets_sent,
            packets_received: self.packets_received - before.packets_received,
            failures: self.failures - before.failures,
            failures_by_error: self
                .failures_by_error
                .iter()
                .map(|(label, n)| {
                    (
                        label.clone(),
                        n - before.failures_by_error.get(label).unwrap_or(&0.0),
                    )
                })
                .filter(|(_, n)| *n > 0.0)
                .collect(),
        }
    }
}

fn metrics_text(addr: std::net::SocketAddr, token: &str) -> std::io::Result<String> {
    let answer = prometheus::get(addr, "/metrics", Some(token))?;
    if answer.status == 200 {
        Ok(answer.body)
    } else {
        Err(std::io::Error::other(format!(
            "/metrics answered {}: {}",
            answer.status, answer.body
        )))
    }
}

// --- the phases --------------------------------------------------------------------------------

/// Creates `name`, waits for Bound, deletes it, waits until it is gone. Returns
/// (create → Bound, create call, delete → gone); `None` for create → Bound if it never bound.
async fn one_address(
    api: &Api<DhcpAddress>,
    seen: &watch::Receiver<Seen>,
    name: &str,
) -> Result<(Option<Duration>, Duration, Duration)> {
    let t0 = Instant::now();
    api.create(&PostParams::default(), &address(name)).await?;
    let create_call = t0.elapsed();
    let bound = wait_seen(seen, &format!("{name} Bound"), |s| {
        s.bound.contains_key(name)
    })
    .await
    .map(|()| seen.borrow().bound[name] - t0);
    if let Err(e) = &bound {
        eprintln!("{e}");
    }
    let t1 = Instant::now();
    api.delete(name, &DeleteParams::default()).await?;
    wait_seen(seen, &format!("{name} gone"), |s| s.gone.contains_key(name)).await?;
    let gone = seen.borrow().gone[name] - t1;
    Ok((bound.ok(), create_call, gone))
}

async fn one_at_a_time(
    api: &Api<DhcpAddress>,
    seen: &watch::Receiver<Seen>,
    samples: usize,
) -> Result<OneAtATime> {
    eprintln!("[agent] first address after the agent started (not in the series)");
    let (first, _, _) = one_address(api, seen, "first").await?;
    eprintln!("[agent] one address at a time x{samples}");
    let (mut bound, mut calls, mut gone, mut failed) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for i in 0..samples {
        let (b, c, g) = one_address(api, seen, &format!("one-{i}")).await?;
        match b {
            Some(b) => bound.push(b),
            None => failed += 1,
        }
        calls.push(c);
        gone.push(g);
    }
    Ok(OneAtATime {
        create_to_bound: Latency::of(bound, failed),
        create_call: Latency::of(calls, 0),
        delete_to_gone: Latency::of(gone, 0),
        first_after_agent_start_ms: first.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
        agent: AgentCounters::default(),
    })
}

async fn many_at_once(
    api: &Api<DhcpAddress>,
    seen: &watch::Receiver<Seen>,
    n: usize,
) -> Result<ManyAtOnce> {
    eprintln!("[agent] {n} addresses created at once");
    let names: Vec<String> = (0..n).map(|i| format!("many-{i}")).collect();
    let t0 = Instant::now();
    let sent: Vec<(String, Instant)> = futures::future::try_join_all(names.iter().map(|name| {
        let api = api.clone();
        async move {
            let sent = Instant::now();
            api.create(&PostParams::default(), &address(name)).await?;
            Ok::<_, BenchError>((name.clone(), sent))
        }
    }))
    .await?;
    let creates_answered = t0.elapsed();
    let all_bound = wait_seen(seen, &format!("{n} Bound"), |s| {
        names.iter().all(|name| s.bound.contains_key(name))
    })
    .await;
    if let Err(e) = &all_bound {
        eprintln!("{e}");
    }
    let (latencies, last) = {
        let seen = seen.borrow();
        let latencies: Vec<Duration> = sent
            .iter()
            .filter_map(|(name, sent)| seen.bound.get(name).map(|b| *b - *sent))
            .collect();
        let last = names
            .iter()
            .filter_map(|name| seen.bound.get(name))
            .max()
            .copied();
        (latencies, last)
    };
    let bound = latencies.len();
    let t1 = Instant::now();
    futures::future::try_join_all(names.iter().map(|name| {
        let api = api.clone();
        async move {
            api.delete(name, &DeleteParams::default()).await?;
            Ok::<_, BenchError>(())
        }
    }))
    .await?;
    wait_seen(seen, &format!("{n} gone"), |s| {
        names.iter().all(|name| s.gone.contains_key(name))
    })
    .await?;
    let last_gone = {
        let seen = seen.borrow();
        names
            .iter()
            .filter_map(|name| seen.gone.get(name))
            .max()
            .copied()
    };
    Ok(ManyAtOnce {
        addresses: n,
        bound,
        failed: n - bound,
        creates_answered_s: creates_answered.as_secs_f64(),
        wall_s: last.map_or(f64::NAN, |last| (last - t0).as_secs_f64()),
        create_to_bound: Latency::of(latencies, n - bound),
        delete_all_gone_s: last_gone.map_or(f64::NAN, |last| (last - t1).as_secs_f64()),
        agent: AgentCounters::default(),
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn agent_macs() -> Vec<String> {
    (0..AGENT_MACS)
        .map(|n| format!("02:cc:00:00:{:02x}:{:02x}", n >> 8, n & 0xff))
        .collect()
}

fn raw_mac(i: usize) -> [u8; 6] {
    [0x02, 0xba, 0x9a, 0x00, (i >> 8) as u8, i as u8]
}

fn run(args: &Args) -> Result<Report> {
    let mut cluster = Cluster::start();
    cluster.lab.start(
        Server::Kea,
        ServerOpts {
            lease: LEASE_SECS,
            ..ServerOpts::default()
        },
    )?;
    let agent_ns = cluster.lab.agent_ns();
    let opts = AgentOpts {
        macs: agent_macs(),
        time_scale: 1.0,
        ..AgentOpts::default()
    };
    let agent_flags = format!(
        "--time-scale 1 --lease-duration {} --renew-interval {} --takeover-grace {}, {} MACs",
        opts.lease_duration, opts.renew_interval, opts.takeover_grace, AGENT_MACS
    );
    cluster.start_agent("node-a", &agent_ns, &opts);
    cluster.kubectl_ok(&["create", "namespace", NAMESPACE]);
    let kubeconfig = cluster.cp.kubeconfig_path();

    let metrics_addr = cluster.agent(0).metrics;
    let token = cluster.metrics_token().to_string();
    let rt = runtime();
    let (one, many) = rt.block_on(async {
        let client = kube_client(&kubeconfig).await?;
        let api: Api<DhcpAddress> = Api::namespaced(client, NAMESPACE);
        let (tx, seen) = watch::channel(Seen::default());
        let watching = tokio::spawn(watch_addresses(api.clone(), tx));
        let before = AgentCounters::scrape(metrics_addr, &token);
        let one = one_at_a_time(&api, &seen, args.samples).await;
        let between = AgentCounters::scrape(metrics_addr, &token);
        let many = match &one {
            Ok(_) => Some(many_at_once(&api, &seen, args.many).await),
            Err(_) => None,
        };
        let after = AgentCounters::scrape(metrics_addr, &token);
        watching.abort();
        let (mut one, mut many) = (one?, many.expect("ran after the single series")?);
        one.agent = between.since(&before);
        many.agent = after.since(&between);
        Ok::<_, BenchError>((one, many))
    })?;
    // Not a blocking drop: nothing of this runtime is needed any more.
    rt.shutdown_background();

    eprintln!("[raw] DORA over DhcpSocket x{}", args.samples);
    let parent = cluster.lab.parent().to_string();
    let samples = args.samples;
    let raw = in_netns(&agent_ns, || {
        runtime().block_on(raw_dora::raw_one_by_one(
            &parent,
            samples,
            RAW_LINK_GROUP,
            STEP_TIMEOUT,
            raw_mac,
        ))
    })??;
    cli::keep_log(&cluster.agent(0).log, &args.out, "agent-bench-agent.log");
    drop(cluster);
    Ok(Report {
        date_utc: figures::date_utc(),
        machine: figures::machine(),
        server: Server::Kea.name(),
        lease_secs: LEASE_SECS,
        agent: agent_flags,
        target_p50_ms: TARGET_P50_MS,
        one_at_a_time: one,
        many_at_once: many,
        raw_exchange: Latency::of(raw.exchange, raw.failed),
        raw_total: Latency::of(raw.total, raw.failed),
    })
}

fn table(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\ndhcpmanager agent benchmark — {} — {}\nserver: {} (lease {} s); agent: {}",
        r.date_utc, r.machine, r.server, r.lease_secs, r.agent
    );
    let _ = writeln!(
        s,
        "\n{:<52} {:>5} {:>4} {:>9} {:>9} {:>9}",
        "what (ms)", "n", "fail", "p50", "p99", "max"
    );
    let one = &r.one_at_a_time;
    let many = &r.many_at_once;
    let many_label = format!("{} at once: each create -> Bound", many.addresses);
    let rows: [(&str, &Latency); 6] = [
        (
            "one at a time: create -> Bound (watch)",
            &one.create_to_bound,
        ),
        ("  of which the create call", &one.create_call),
        ("one at a time: delete -> gone (watch)", &one.delete_to_gone),
        (&many_label, &many.create_to_bound),
        ("raw floor: DORA over DhcpSocket", &r.raw_exchange),
        ("raw floor + link + socket setup", &r.raw_total),
    ];
    for (what, l) in rows {
        let _ = writeln!(
            s,
            "{:<52} {:>5} {:>4} {:>9.2} {:>9.2} {:>9.2}",
            what, l.samples, l.failed, l.p50_ms, l.p99_ms, l.max_ms
        );
    }
    let _ = writeln!(
        s,
        "\nfirst address after the agent started: {:.1} ms",
        one.first_after_agent_start_ms
    );
    let _ = writeln!(
        s,
        "{} at once: {} bound, {} failed; all creates answered after {:.3} s; all Bound after {:.3} s; all gone {:.3} s after the deletes",
        many.addresses,
        many.bound,
        many.failed,
        many.creates_answered_s,
        many.wall_s,
        many.delete_all_gone_s
    );
    for (phase, a) in [("one at a time", &one.agent), ("many at once", &many.agent)] {
        let _ = writeln!(
            s,
            "agent's own counters, {phase}: {} bound, engine start -> Bound mean {:.2} ms, packets sent {} received {}, failed reconciles {} {:?}",
            a.bound,
            a.mean_engine_time_to_bound_ms,
            a.packets_sent,
            a.packets_received,
            a.failures,
            a.failures_by_error
        );
    }
    let _ = writeln!(
        s,
        "one at a time: p50 create -> Bound {:.1} ms = {:.1}x the raw exchange p50 (target: p50 < {} ms)",
        one.create_to_bound.p50_ms,
        one.create_to_bound.p50_ms / r.raw_exchange.p50_ms,
        r.target_p50_ms
    );
    s
}

fn main() {
    let args = cli::args_or_exit(parse_args());
    match run(&args) {
        Ok(report) => cli::publish(&table(&report), &args.out, &report),
        Err(e) => {
            eprintln!("bench_agent: {e}");
            std::process::exit(1);
        }
    }
}
