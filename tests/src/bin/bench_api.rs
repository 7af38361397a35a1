//! The REST API benchmark: figures, no assertions.
//!
//! `POST /v1/ip` (as the MetalLB fork sends it) latency and throughput at 1, 10 and 100 concurrent
//! clients, each POST followed, once its round is answered, by the DELETE of its IP (timed
//! separately), beside the raw DHCP exchange floor (`bench::raw_dora`) measured in the same run
//! against the same server (the lab's Kea; `--servers kea,dnsmasq,dhcpd` for the standalone
//! backends behind each of them):
//! - standalone backend: `dhcpmanager-apiserver --standalone` in the lab's agent namespace, the
//!   clients in that namespace too (as on a node); with its default spare links, and again with
//!   `spare-links = 0` (every POST creates its macvlan: what a burst beyond the spares gets);
//! - Kubernetes backend: the apiserver in the root namespace on loopback with a kubeconfig for a
//!   private real kube-apiserver, one agent as in `bench_agent` (`--time-scale 1`);
//! - renewal load (with the standalone backend): 100 addresses on 10 s Kea leases held 30 s; the
//!   renewals the apiserver's /metrics counts, and its CPU time and RSS over the hold.
//!
//! A round is `c` clients each sending one POST at once (one TCP connection per request, as a
//! client without keep-alive would); throughput is answered POSTs over the rounds' wall time.
//! Every request is counted: answered with success, answered otherwise, or lost (no answer).
//! Prints tables and writes JSON (default `target/bench/api.json`). Run as root.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dhcpmanager_tests::bench::cli;
use dhcpmanager_tests::bench::error::BenchError;
use dhcpmanager_tests::bench::figures::{self, Latency};
use dhcpmanager_tests::bench::proc::{cpu_seconds, status_field};
use dhcpmanager_tests::bench::raw_dora::{self, RawSamples};
use dhcpmanager_tests::binaries;
use dhcpmanager_tests::cluster::{AgentOpts, Cluster};
use dhcpmanager_tests::lab::{Lab, Server, ServerOpts};
use dhcpmanager_tests::netns::in_netns;
use dhcpmanager_tests::prometheus;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Safety net per request: longer than the apiserver's own request-timeout, so that a request
/// it would answer is never counted as lost by us.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const SERVER_REQUEST_TIMEOUT: &str = "10s";
const RAW_LINK_GROUP: u32 = 0x6261_7069; // "bapi"
const LEASE_SECS: u32 = 600;
const MACS: usize = 128;
const CONCURRENCY: [usize; 3] = [1, 10, 100];
const TARGET_P50_VS_RAW: f64 = 3.0;
/// Port of the standalone apiserver inside the lab's own namespace (nothing else listens there).
const STANDALONE_PORT: u16 = 8000;

type Result<T> = std::result::Result<T, BenchError>;

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |e| BenchError::Io(what, e)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BackendKind {
    Standalone,
    StandaloneNoSpares,
    Kubernetes,
}

impl BackendKind {
    const ALL: [BackendKind; 3] = [
        BackendKind::Standalone,
        BackendKind::StandaloneNoSpares,
        BackendKind::Kubernetes,
    ];

    fn name(self) -> &'static str {
        match self {
            BackendKind::Standalone => "standalone",
            BackendKind::StandaloneNoSpares => "standalone-no-spares",
            BackendKind::Kubernetes => "kubernetes",
        }
    }
}

struct Args {
    /// POSTs per concurrency level at least (rounds of `c` are repeated until reached, min 2).
    samples: usize,
    backends: Vec<BackendKind>,
    /// The DHCP servers behind the standalone backends (the Kubernetes run uses Kea).
    servers: Vec<Server>,
    /// The renewal load (with the standalone backend): addresses held, and for how long.
    renewal_addresses: usize,
    renewal_hold: Duration,
    out: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        samples: 30,
        backends: BackendKind::ALL.to_vec(),
        servers: vec![Server::Kea],
        renewal_addresses: 100,
        renewal_hold: Duration::from_secs(30),
        out: dhcpmanager_tests::repo_root().join("target/bench/api.json"),
    };
    for (flag, value) in cli::flag_values()? {
        match flag.as_str() {
            "--samples" => args.samples = value.parse().map_err(|_| BenchError::Usage)?,
            "--out" => args.out = value.into(),
            "--servers" => args.servers = cli::servers(&value)?,
            "--renewal-addresses" => {
                args.renewal_addresses = value.parse().map_err(|_| BenchError::Usage)?
            }
            "--renewal-hold-secs" => {
                args.renewal_hold =
                    Duration::from_secs(value.parse().map_err(|_| BenchError::Usage)?)
            }
            "--backends" => {
                args.backends = value
                    .split(',')
                    .map(|name| {
                        BackendKind::ALL
                            .into_iter()
                            .find(|kind| kind.name() == name)
                            .ok_or(BenchError::Usage)
                    })
                    .collect::<Result<_>>()?
            }
            _ => return Err(BenchError::Usage),
        }
    }
    Ok(args)
}

// --- figures -----------------------------------------------------------------------------------

#[derive(Debug, Default, Serialize)]
struct Outcomes {
    sent: usize,
    /// Answered with `"status":"success"`.
    succeeded: usize,
    /// Answered, but not with success (timeout, no MAC, error): the body's status, counted.
    answered_otherwise: Vec<(String, usize)>,
    /// No answer at all (connection refused/reset, or our safety net).
    lost: usize,
}

impl Outcomes {
    fn answered(&self) -> usize {
        self.succeeded
            + self
                .answered_otherwise
                .iter()
                .map(|(_, n)| n)
                .sum::<usize>()
    }

    fn count_other(&mut self, status: String) {
        match self
            .answered_otherwise
            .iter_mut()
            .find(|(s, _)| *s == status)
        {
            Some((_, n)) => *n += 1,
            None => self.answered_otherwise.push((status, 1)),
        }
    }
}

#[derive(Debug, Serialize)]
struct Level {
    clients: usize,
    rounds: usize,
    post: Latency,
    post_outcomes: Outcomes,
    /// Answered POSTs per second of the rounds' POST wall time.
    post_per_second: f64,
    delete: Latency,
    delete_outcomes: Outcomes,
    delete_per_second: f64,
}

#[derive(Debug, Serialize)]
struct BackendRun {
    backend: &'static str,
    server: &'static str,
    setup: String,
    /// The first POST after the apiserver answered /healthz, outside the levels: with the
    /// Kubernetes backend it carries the kube-apiserver's delay of the first create of a
    /// just-established CRD (kubernetes/kubernetes#99199), which no later POST pays.
    first_post_ms: f64,
    raw_exchange: Latency,
    raw_total: Latency,
    levels: Vec<Level>,
}

#[derive(Debug, Serialize)]
struct Report {
    date_utc: String,
    machine: String,
    lease_secs: u32,
    target_post_p50_vs_raw_max: f64,
    runs: Vec<BackendRun>,
    renewals: Option<RenewalRun>,
}

// --- HTTP as the fork sends it -----------------------------------------------------------------

enum Answer {
    Json(serde_json::Value),
    Lost(String),
}

/// One request on a fresh connection; the answer's JSON body (the fork reads nothing else).
async fn request(addr: SocketAddr, method: &str, body: &str) -> Answer {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let body = format!("{body}\n");
        let head = format!(
            "{method} /v1/ip HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all((head + &body).as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Err(_) => Answer::Lost(format!("no answer within {REQUEST_TIMEOUT:?}")),
        Ok(Err(e)) => Answer::Lost(e.to_string()),
        Ok(Ok(bytes)) => {
            let text = String::from_utf8_lossy(&bytes);
            match text.split_once("\r\n\r\n") {
                Some((_, body)) => match serde_json::from_str(body.trim()) {
                    Ok(json) => Answer::Json(json),
                    Err(_) => Answer::Json(serde_json::json!({ "status": "<not JSON>" })),
                },
                None => Answer::Lost(format!("not an HTTP answer: {text:?}")),
            }
        }
    }
}

/// What a POST or DELETE came to: its latency, and the IP when it succeeded.
struct Outcome {
    took: Duration,
    status: std::result::Result<String, String>,
    ip: Option<Ipv4Addr>,
}

async fn timed(addr: SocketAddr, method: &str, body: String) -> Outcome {
    let t0 = Instant::now();
    let answer = request(addr, method, &body).await;
    let took = t0.elapsed();
    match answer {
        Answer::Lost(why) => Outcome {
            took,
            status: Err(why),
            ip: None,
        },
        Answer::Json(json) => Outcome {
            took,
            status: Ok(json["status"].as_str().unwrap_or("<no status>").to_string()),
            ip: json["ip"].as_str().and_then(|ip| ip.parse().ok()),
        },
    }
}

/// Folds outcomes into latencies (answered with success only) and counts.
fn tally(outcomes: &[Outcome], into: &mut (Vec<Duration>, Outcomes)) {
    for o in outcomes {
        into.1.sent += 1;
        match &o.status {
            Ok(s) if s == "success" => {
                into.1.succeeded += 1;
                into.0.push(o.took);
            }
            Ok(other) => into.1.count_other(other.clone()),
            Err(why) => {
                eprintln!("  lost: {why}");
                into.1.lost += 1;
            }
        }
    }
}

async fn level(addr: SocketAddr, clients: usize, samples: usize, tag: &str) -> Level {
    let rounds = samples.div_ceil(clients).max(2);
    let (mut posts, mut deletes) = (
        (Vec::new(), Outcomes::default()),
        (Vec::new(), Outcomes::default()),
    );
    let (mut post_wall, mut delete_wall) = (Duration::ZERO, Duration::ZERO);
    for round in 0..rounds {
        let t0 = Instant::now();
        let answered = futures::future::join_all((0..clients).map(|i| {
            let body = format!(r#"{{"service":"bench/{tag}-c{clients}-r{round}-{i}"}}"#);
            timed(addr, "POST", body)
        }))
        .await;
        post_wall += t0.elapsed();
        tally(&answered, &mut posts);
        let ips: Vec<Ipv4Addr> = answered.iter().filter_map(|o| o.ip).collect();
        let t1 = Instant::now();
        let released = futures::future::join_all(
            ips.iter()
                .map(|ip| timed(addr, "DELETE", format!(r#"{{"ip":"{ip}"}}"#))),
        )
        .await;
        delete_wall += t1.elapsed();
        tally(&released, &mut deletes);
    }
    let per_second = |n: usize, wall: Duration| n as f64 / wall.as_secs_f64();
    Level {
        clients,
        rounds,
        post_per_second: per_second(posts.1.answered(), post_wall),
        delete_per_second: per_second(deletes.1.answered(), delete_wall),
        post: Latency::of(posts.0, posts.1.sent - posts.1.succeeded),
        post_outcomes: posts.1,
        delete: Latency::of(deletes.0, deletes.1.sent - deletes.1.succeeded),
        delete_outcomes: deletes.1,
    }
}

/// One POST and its DELETE before the levels; the POST's milliseconds. Anything but success is
/// an error: the levels would measure a broken setup.
async fn first_post(addr: SocketAddr, tag: &str) -> Result<f64> {
    let body = format!(r#"{{"service":"bench/{tag}-first"}}"#);
    let posted = timed(addr, "POST", body).await;
    let (Ok("success"), Some(ip)) = (posted.status.as_deref(), posted.ip) else {
        return Err(BenchError::Protocol(format!(
            "the first POST did not succeed: {:?}",
            posted.status
        )));
    };
    let deleted = timed(addr, "DELETE", format!(r#"{{"ip":"{ip}"}}"#)).await;
    if deleted.status.as_deref() != Ok("success") {
        return Err(BenchError::Protocol(format!(
            "the first DELETE did not succeed: {:?}",
            deleted.status
        )));
    }
    Ok(posted.took.as_secs_f64() * 1e3)
}

async fn levels(addr: SocketAddr, samples: usize, tag: &str) -> Vec<Level> {
    let mut out = Vec::new();
    for clients in CONCURRENCY {
        eprintln!("[{tag}] {clients} concurrent clients");
        out.push(level(addr, clients, samples, tag).await);
    }
    out
}

/// GET `path` on a fresh connection: the body of a 200 answer.
async fn get_text(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.ok()?;
    let text = String::from_utf8_lossy(&answer);
    let (status, body) = text.split_once("\r\n\r\n")?;
    status.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

async fn wait_healthy(addr: SocketAddr, log: &Path) -> Result<()> {
    for _ in 0..300 {
        if get_text(addr, "/healthz").await.is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(BenchError::NotReady(format!(
        "the apiserver did not answer /healthz on {addr} within 30 s; its log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    )))
}

// --- the apiserver process ---------------------------------------------------------------------

/// The apiserver, killed by pid on drop.
struct ApiServer {
    child: Child,
    log: PathBuf,
}

impl ApiServer {
    fn spawn(mut command: Command, log: PathBuf) -> Result<ApiServer> {
        let file = std::fs::File::create(&log).map_err(io_error("apiserver log"))?;
        let file2 = file.try_clone().map_err(io_error("apiserver log"))?;
        let child = command
            // RUST_LOG=info (or debug) in the benchmark's environment for a breakdown.
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .spawn()
            .map_err(io_error("spawning dhcpmanager-apiserver"))?;
        Ok(ApiServer { child, log })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // SAFETY: kill(2) of our own child, not reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn macs(prefix: &str) -> Vec<String> {
    (0..MACS)
        .map(|n| format!("{prefix}:{:02x}:{:02x}", n >> 8, n & 0xff))
        .collect()
}

fn raw_mac(i: usize) -> [u8; 6] {
    [0x02, 0xba, 0x91, 0x00, (i >> 8) as u8, i as u8]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn server_opts() -> ServerOpts {
    ServerOpts {
        lease: LEASE_SECS,
        ..ServerOpts::default()
    }
}

/// The raw floor in the lab's agent namespace (where the agent or apiserver makes its links).
fn raw_floor(lab: &Lab, samples: usize) -> Result<RawSamples> {
    eprintln!("[raw] DORA over DhcpSocket x{samples}");
    let parent = lab.parent().to_string();
    Ok(in_netns(&lab.agent_ns(), || {
        runtime().block_on(raw_dora::raw_one_by_one(
            &parent,
            samples,
            RAW_LINK_GROUP,
            REQUEST_TIMEOUT,
            raw_mac,
        ))
    })??)
}

/// The default of the apiserver's `spare-links`.
const DEFAULT_SPARE_LINKS: usize = 4;

/// `dhcpmanager-apiserver --standalone` in the lab's agent namespace on [`STANDALONE_PORT`].
fn standalone_apiserver(lab: &Lab, spare_links: usize) -> Result<ApiServer> {
    let quoted: Vec<String> = macs("02:ab:00:00")
        .iter()
        .map(|m| format!("\"{m}\""))
        .collect();
    let config = lab.dir().join("bench-api.toml");
    std::fs::write(
        &config,
        format!(
            "interface = \"{}\"\nmacs = [{}]\netcd = []\nrequest-timeout = \"{SERVER_REQUEST_TIMEOUT}\"\nstate-dir = \"{}\"\nspare-links = {spare_links}\nallocate-rate = 0\n",
            lab.parent(),
            quoted.join(", "),
            lab.dir().join("bench-api-state").display()
        ),
    )
    .map_err(io_error("writing the apiserver config"))?;
    let mut command = lab.run_in_agent(binaries::apiserver());
    command
        .arg("--standalone")
        .arg("--config")
        .arg(&config)
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &STANDALONE_PORT.to_string(),
        ]);
    ApiServer::spawn(command, lab.dir().join("bench-apiserver.log"))
}

fn standalone(samples: usize, kind: BackendKind, dhcp: Server) -> Result<BackendRun> {
    let spare_links = match kind {
        BackendKind::StandaloneNoSpares => 0,
        _ => DEFAULT_SPARE_LINKS,
    };
    let lab = Lab::up()?;
    lab.start(dhcp, server_opts())?;
    let server = standalone_apiserver(&lab, spare_links)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], STANDALONE_PORT));
    let raw = raw_floor(&lab, samples)?;
    let log = server.log.clone();
    let (first_post_ms, levels) = in_netns(&lab.agent_ns(), || {
        runtime().block_on(async {
            wait_healthy(addr, &log).await?;
            let first = first_post(addr, kind.name()).await?;
            Ok::<_, BenchError>((first, levels(addr, samples, kind.name()).await))
        })
    })??;
    drop(server);
    lab.down()?;
    Ok(BackendRun {
        backend: kind.name(),
        server: dhcp.name(),
        setup: format!(
            "dhcpmanager-apiserver --standalone in the lab's agent namespace, {MACS} MACs, spare-links {spare_links}, request-timeout {SERVER_REQUEST_TIMEOUT}; clients in the same namespace"
        ),
        first_post_ms,
        raw_exchange: Latency::of(raw.exchange, raw.failed),
        raw_total: Latency::of(raw.total, raw.failed),
        levels,
    })
}

fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io_error("a free port on loopback"))
}

fn kubernetes(samples: usize, out: &Path) -> Result<BackendRun> {
    let mut cluster = Cluster::start();
    cluster.lab.start(Server::Kea, server_opts())?;
    let agent_ns = cluster.lab.agent_ns();
    let opts = AgentOpts {
        macs: macs("02:cc:00:00"),
        time_scale: 1.0,
        ..AgentOpts::default()
    };
    cluster.start_agent("node-a", &agent_ns, &opts);
    cluster.kubectl_ok(&["create", "namespace", "bench"]);
    let config = cluster.lab.dir().join("bench-api-k8s.toml");
    std::fs::write(
        &config,
        format!("etcd = []\nrequest-timeout = \"{SERVER_REQUEST_TIMEOUT}\"\n# measures the backend, not the POST limit\nallocate-rate = 0\n"),
    )
    .map_err(io_error("writing the apiserver config"))?;
    let port = free_port()?;
    let mut command = Command::new(binaries::apiserver());
    command
        .arg("--config")
        .arg(&config)
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .env("KUBECONFIG", cluster.cp.kubeconfig_path())
        .env("POD_NAMESPACE", "bench");
    let server = ApiServer::spawn(command, cluster.lab.dir().join("bench-apiserver-k8s.log"))?;
    let log = server.log.clone();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let raw = raw_floor(&cluster.lab, samples)?;
    let (first_post_ms, levels) = runtime().block_on(async {
        wait_healthy(addr, &server.log).await?;
        let first = first_post(addr, "kubernetes").await?;
        Ok::<_, BenchError>((first, levels(addr, samples, "kubernetes").await))
    })?;
    drop(server);
    cli::keep_log(&log, out, "api-bench-apiserver-k8s.log");
    cli::keep_log(&cluster.agent(0).log, out, "api-bench-agent.log");
    drop(cluster);
    Ok(BackendRun {
        backend: BackendKind::Kubernetes.name(),
        server: Server::Kea.name(),
        setup: format!(
            "dhcpmanager-apiserver (Kubernetes backend, admin kubeconfig) in the root namespace on loopback; one agent --time-scale 1 with {MACS} MACs; private kube-apiserver + etcd"
        ),
        first_post_ms,
        raw_exchange: Latency::of(raw.exchange, raw.failed),
        raw_total: Latency::of(raw.total, raw.failed),
        levels,
    })
}

// --- renewal load ------------------------------------------------------------------------------

/// Kea's lease in the renewal load: the engine renews at T1 = half of it (Kea sends no T1).
const RENEWAL_LEASE_SECS: u32 = 10;

/// Addresses held by the standalone backend on short leases: what renewing them costs.
#[derive(Debug, Serialize)]
struct RenewalRun {
    server: &'static str,
    addresses: usize,
    lease_secs: u32,
    hold_secs: f64,
    /// Counted by the apiserver's own `renewals_total` over the hold.
    renewals: f64,
    /// addresses × hold / T1.
    renewals_expected: f64,
    naks: f64,
    expirations: f64,
    ip_changes: f64,
    packets_sent: f64,
    packets_received: f64,
    /// CPU time of the apiserver process over the hold (user + system).
    cpu_ms: f64,
    cpu_ms_per_renewal: f64,
    /// Share of one core over the hold.
    cpu_percent: f64,
    rss_kib: u64,
    /// Addresses that still had the IP their POST answered at the end of the hold.
    kept: usize,
}

fn renewal_load(addresses: usize, hold: Duration) -> Result<RenewalRun> {
    let lab = Lab::up()?;
    lab.start(
        Server::Kea,
        ServerOpts {
            lease: RENEWAL_LEASE_SECS,
            ..ServerOpts::default()
        },
    )?;
    let server = standalone_apiserver(&lab, DEFAULT_SPARE_LINKS)?;
    let pid = server.child.id();
    let addr = SocketAddr::from(([127, 0, 0, 1], STANDALONE_PORT));
    let log = server.log.clone();
    eprintln!("[renewals] {addresses} addresses on {RENEWAL_LEASE_SECS} s leases, held {hold:?}");
    let run = in_netns(&lab.agent_ns(), || {
        runtime().block_on(async {
            wait_healthy(addr, &log).await?;
            let mut held = Vec::new();
            for round in 0..addresses.div_ceil(10) {
                let posts = (0..10.min(addresses - round * 10)).map(|i| {
                    timed(
                        addr,
                        "POST",
                        format!(r#"{{"service":"bench/renew-{round}-{i}"}}"#),
                    )
                });
                held.extend(
                    futures::future::join_all(posts)
                        .await
                        .into_iter()
                        .filter_map(|o| o.ip),
                );
            }
            if held.len() != addresses {
                return Err(BenchError::Protocol(format!(
                    "only {} of {addresses} POSTs succeeded",
                    held.len()
                )));
            }
            let scrape = || async { get_text(addr, "/metrics").await.unwrap_or_default() };
            let (before, cpu_before, t0) = (scrape().await, cpu_seconds(pid), Instant::now());
            tokio::time::sleep(hold).await;
            let (after, cpu_after, took) = (scrape().await, cpu_seconds(pid), t0.elapsed());
            let rss = status_field(pid, "VmRSS");
            let status = get_text(addr, "/v1/status").await.unwrap_or_default();
            let kept = held
                .iter()
                .filter(|ip| status.contains(&format!("\"{ip}\"")))
                .count();
            for ip in &held {
                timed(addr, "DELETE", format!(r#"{{"ip":"{ip}"}}"#)).await;
            }
            let grew = |name: &str| {
                let name = format!("dhcpmanager_{name}");
                prometheus::sum_of(&after, &name) - prometheus::sum_of(&before, &name)
            };
            let renewals = grew("renewals_total");
            let cpu = (cpu_after - cpu_before) * 1e3;
            let hold_secs = took.as_secs_f64();
            Ok::<_, BenchError>(RenewalRun {
                server: Server::Kea.name(),
                addresses,
                lease_secs: RENEWAL_LEASE_SECS,
                hold_secs,
                renewals,
                renewals_expected: addresses as f64 * hold_secs / (RENEWAL_LEASE_SECS as f64 / 2.0),
                naks: grew("naks_total"),
                expirations: grew("lease_expirations_total"),
                ip_changes: grew("ip_changes_total"),
                packets_sent: grew("packets_sent_total"),
                packets_received: grew("packets_received_total"),
                cpu_ms: cpu,
                cpu_ms_per_renewal: cpu / renewals,
                cpu_percent: cpu / (hold_secs * 1e3) * 100.0,
                rss_kib: rss,
                kept,
            })
        })
    })??;
    drop(server);
    lab.down()?;
    Ok(run)
}

fn renewal_text(r: &RenewalRun) -> String {
    format!(
        "\n[renewals, {}] {} addresses on {} s leases (T1 {} s) held {:.1} s by the standalone apiserver\n\
         renewals {} (expected ~{:.0}), NAKs {}, expiries {}, IP changes {}; packets sent {} received {}\n\
         apiserver CPU {:.0} ms = {:.1}% of a core = {:.3} ms per renewal; RSS {} KiB; {}/{} kept their IP\n",
        r.server,
        r.addresses,
        r.lease_secs,
        r.lease_secs / 2,
        r.hold_secs,
        r.renewals,
        r.renewals_expected,
        r.naks,
        r.expirations,
        r.ip_changes,
        r.packets_sent,
        r.packets_received,
        r.cpu_ms,
        r.cpu_percent,
        r.cpu_ms_per_renewal,
        r.rss_kib,
        r.kept,
        r.addresses
    )
}

// --- output ------------------------------------------------------------------------------------

fn outcome_text(o: &Outcomes) -> String {
    let mut s = format!(
        "{}/{} answered, {} lost, {} success",
        o.answered(),
        o.sent,
        o.lost,
        o.succeeded
    );
    for (status, n) in &o.answered_otherwise {
        let _ = write!(s, ", {n} {status}");
    }
    s
}

fn table(report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\ndhcpmanager REST API benchmark — {} — {}\nleases of {} s",
        report.date_utc, report.machine, report.lease_secs
    );
    for run in &report.runs {
        let _ = writeln!(s, "\n[{}, {}] {}", run.backend, run.server, run.setup);
        let _ = writeln!(
            s,
            "{:<7} {:<7} {:>5} {:>9} {:>9} {:>9} {:>8}  outcomes",
            "clients", "call", "n", "p50 ms", "p99 ms", "max ms", "per s"
        );
        for l in &run.levels {
            for (call, lat, outcomes, rate) in [
                ("POST", &l.post, &l.post_outcomes, l.post_per_second),
                ("DELETE", &l.delete, &l.delete_outcomes, l.delete_per_second),
            ] {
                let _ = writeln!(
                    s,
                    "{:<7} {:<7} {:>5} {:>9.2} {:>9.2} {:>9.2} {:>8.1}  {}",
                    l.clients,
                    call,
                    lat.samples,
                    lat.p50_ms,
                    lat.p99_ms,
                    lat.max_ms,
                    rate,
                    outcome_text(outcomes)
                );
            }
        }
        let _ = writeln!(
            s,
            "raw floor: DORA over DhcpSocket p50 {:.2} ms p99 {:.2} ms (n {}, fail {}); with link + socket setup p50 {:.2} ms",
            run.raw_exchange.p50_ms,
            run.raw_exchange.p99_ms,
            run.raw_exchange.samples,
            run.raw_exchange.failed,
            run.raw_total.p50_ms
        );
        let _ = writeln!(
            s,
            "first POST after start, not in the levels: {:.2} ms",
            run.first_post_ms
        );
        if let Some(one) = run.levels.first() {
            // The target is the standalone backend's; the Kubernetes one adds the API server.
            let target = if run.backend == BackendKind::Kubernetes.name() {
                String::new()
            } else {
                format!(" (target: <= {TARGET_P50_VS_RAW}x)")
            };
            let _ = writeln!(
                s,
                "POST p50 at 1 client / raw exchange p50 = {:.2}x{target}",
                one.post.p50_ms / run.raw_exchange.p50_ms
            );
        }
    }
    if let Some(renewals) = &report.renewals {
        s.push_str(&renewal_text(renewals));
    }
    s
}

fn main() {
    let args = cli::args_or_exit(parse_args());
    let mut report = Report {
        date_utc: figures::date_utc(),
        machine: figures::machine(),
        lease_secs: LEASE_SECS,
        target_post_p50_vs_raw_max: TARGET_P50_VS_RAW,
        runs: Vec::new(),
        renewals: None,
    };
    let mut failed = false;
    for &backend in &args.backends {
        let servers = match backend {
            BackendKind::Kubernetes => vec![Server::Kea],
            _ => args.servers.clone(),
        };
        for server in servers {
            let run = match backend {
                BackendKind::Standalone | BackendKind::StandaloneNoSpares => {
                    standalone(args.samples, backend, server)
                }
                BackendKind::Kubernetes => kubernetes(args.samples, &args.out),
            };
            match run {
                Ok(run) => report.runs.push(run),
                Err(e) => {
                    eprintln!("bench_api [{}, {}]: {e}", backend.name(), server.name());
                    failed = true;
                }
            }
        }
    }
    if args.backends.contains(&BackendKind::Standalone) && args.renewal_addresses > 0 {
        match renewal_load(args.renewal_addresses, args.renewal_hold) {
            Ok(run) => report.renewals = Some(run),
            Err(e) => {
                eprintln!("bench_api [renewals]: {e}");
                failed = true;
            }
        }
    }
    cli::publish(&table(&report), &args.out, &report);
    if failed {
        std::process::exit(1);
    }
}
