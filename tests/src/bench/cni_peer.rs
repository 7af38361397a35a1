//! The peer of the scale benchmark: the CNI dhcp daemon (`containernetworking/plugins`
//! `plugins/ipam/dhcp`, built by `scripts/install-cni-dhcp.sh`), driven the way a CNI runtime
//! drives it. Per address: a network namespace with a macvlan of the lab's parent moved into it
//! as `eth0`, then the plugin binary with `CNI_COMMAND=ADD` and the network config on stdin; the
//! daemon (one process, in the lab's agent namespace) gets and keeps the lease from inside that
//! namespace. Afterwards `CNI_COMMAND=DEL` for each, and everything made is removed: the
//! namespaces (their macvlans go with them) and the daemon, by its pid.
//!
//! Figures of the daemon's own process (`/proc/<pid>`): RSS per held lease, CPU per renewal
//! over the hold (renewals counted from its log: "lease renewed", "lease rebound").

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::error::BenchError;
use super::proc::{cpu_seconds, status_field};
use crate::lab::Lab;

type Result<T> = std::result::Result<T, BenchError>;

/// ADDs in flight at once, as a runtime starting many pods would run them.
const PARALLEL: usize = 16;
/// No new ADD is started after this; what is not leased by then did not complete.
const ADD_DEADLINE: Duration = Duration::from_secs(120);

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |e| BenchError::Io(what, e)
}

/// One level of the peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerLevel {
    pub addresses: usize,
    pub leased: usize,
    pub failed: usize,
    /// Not attempted: the ADD deadline passed first.
    pub not_attempted: usize,
    /// First ADD started → last successful ADD returned.
    pub all_leased_s: f64,
    pub rss_before_kib: u64,
    pub rss_held_kib: u64,
    pub kib_per_lease: f64,
    pub hold_s: f64,
    pub hold_cpu_s: f64,
    pub core_percent: f64,
    pub renewals: u64,
    pub cpu_ms_per_renewal: f64,
    pub expiries: u64,
    pub del_failed: usize,
    /// The daemon's threads while holding (Go locks one OS thread per lease).
    pub threads: u64,
    /// The first ADD failure, as the plugin reported it.
    pub first_error: Option<String>,
}

/// Paths of the installed plugin.
pub fn plugin_dir() -> PathBuf {
    let tools = std::env::var_os("DHCPMANAGER_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/dhcpmanager/tools")
        });
    tools.join("bin/cni")
}

/// Runs `ip [-n ns] -batch -` with `lines` on stdin.
fn ip_batch(netns: Option<&str>, lines: &[String]) -> Result<()> {
    let mut command = Command::new("ip");
    if let Some(ns) = netns {
        command.args(["-n", ns]);
    }
    // -force: carry on past a failing line (reported on stderr), like a runtime would per pod.
    let mut child = command
        .args(["-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_error("ip -batch"))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(lines.join("\n").as_bytes())
        .map_err(io_error("ip -batch stdin"))?;
    drop(stdin);
    let out = child.wait_with_output().map_err(io_error("ip -batch"))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        eprintln!(
            "  ip -batch: {} failed lines, first: {}",
            text.lines().count(),
            text.lines().next().unwrap_or("")
        );
    }
    Ok(())
}

/// The daemon and the namespaces of one level; dropping it removes them.
struct Peer {
    daemon: Child,
    namespaces: Vec<String>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let pid = self.daemon.id() as i32;
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.daemon.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let lines: Vec<String> = self
            .namespaces
            .iter()
            .map(|ns| format!("netns del {ns}"))
            .collect();
        let _ = ip_batch(None, &lines);
    }
}

fn count_lines(log: &Path, needles: &[&str]) -> u64 {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .count() as u64
}

/// What one CNI call returned: success, or the plugin's error text.
fn cni_call(
    plugin: &Path,
    command: &str,
    container: &str,
    netns: &str,
    config: &str,
) -> std::result::Result<(), String> {
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", format!("/run/netns/{netns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", plugin.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning the plugin: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(config.as_bytes())
        .map_err(|e| format!("plugin stdin: {e}"))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for the plugin: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let mut text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        text.push_str(String::from_utf8_lossy(&out.stderr).trim());
        Err(text)
    }
}

/// Runs `call(i)` for every index on `PARALLEL` threads; a `deadline` stops new calls.
/// Returns the outcome per index (`None`: not attempted) and when the last success returned.
fn run_all(
    n: usize,
    deadline: Option<Instant>,
    call: impl Fn(usize) -> std::result::Result<(), String> + Sync,
) -> (Vec<Option<std::result::Result<(), String>>>, Instant) {
    let next = AtomicUsize::new(0);
    let outcomes = Mutex::new(vec![None; n]);
    let last_success = Mutex::new(Instant::now());
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL.min(n.max(1)) {
            scope.spawn(|| {
                loop {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n {
                        return;
                    }
                    let outcome = call(i);
                    if outcome.is_ok() {
                        *last_success.lock().unwrap() = Instant::now();
                    }
                    outcomes.lock().unwrap()[i] = Some(outcome);
                }
            });
        }
    });
    (
        outcomes.into_inner().unwrap(),
        last_success.into_inner().unwrap(),
    )
}

/// One level: `n` addresses leased through the daemon, held for `hold`, then deleted.
pub fn run_level(lab: &Lab, n: usize, index: u8, hold: Duration) -> Result<PeerLevel> {
    let plugin = plugin_dir().join("dhcp");
    if !plugin.exists() {
        return Err(BenchError::Protocol(format!(
            "{} is missing: run scripts/install-cni-dhcp.sh",
            plugin.display()
        )));
    }
    let dir = lab.dir().join(format!("cni-dhcp-{index}"));
    std::fs::create_dir_all(&dir).map_err(io_error("cni dir"))?;
    let socket = dir.join("dhcp.sock");
    let log = dir.join("log");
    let namespaces: Vec<String> = (0..n)
        .map(|i| format!("{}-c{index}-{i}", lab.name()))
        .collect();
    // Listed with the lab's own, so that a killed benchmark's leftovers go with `lab.sh down/gc`.
    let mut listed = std::fs::OpenOptions::new()
        .append(true)
        .open(lab.dir().join("namespaces"))
        .map_err(io_error("lab namespaces file"))?;
    write!(listed, " {}", namespaces.join(" ")).map_err(io_error("lab namespaces file"))?;

    let log_file = std::fs::File::create(&log).map_err(io_error("cni log"))?;
    let log_err = log_file.try_clone().map_err(io_error("cni log"))?;
    // `ip netns exec` execs in place: the child's pid is the daemon's own.
    let daemon = Command::new("ip")
        .args(["netns", "exec", &lab.agent_ns()])
        .arg(&plugin)
        .args(["daemon", "-socketpath"])
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .spawn()
        .map_err(io_error("starting the cni dhcp daemon"))?;
    let pid = daemon.id();
    std::fs::write(dir.join("pid"), pid.to_string()).map_err(io_error("cni pid file"))?;
    let peer = Peer {
        daemon,
        namespaces: namespaces.clone(),
    };
    let until = Instant::now() + Duration::from_secs(10);
    while !socket.exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }

    eprintln!("  cni: {n} namespaces with a macvlan each");
    ip_batch(
        None,
        &namespaces
            .iter()
            .map(|ns| format!("netns add {ns}"))
            .collect::<Vec<_>>(),
    )?;
    let mut links = Vec::with_capacity(2 * n);
    for (i, ns) in namespaces.iter().enumerate() {
        links.push(format!(
            "link add cni{index}x{i} link {} type macvlan mode bridge",
            lab.parent()
        ));
        links.push(format!("link set cni{index}x{i} netns {ns} name eth0"));
    }
    ip_batch(Some(&lab.agent_ns()), &links)?;

    let config = format!(
        r#"{{"cniVersion":"1.0.0","name":"lab","type":"macvlan","master":"{}","ipam":{{"type":"dhcp","daemonSocketPath":"{}"}}}}"#,
        lab.parent(),
        socket.display()
    );
    let rss_before = status_field(pid, "VmRSS");
    eprintln!("  cni: ADD x{n}, {PARALLEL} at a time");
    let t0 = Instant::now();
    let (added, last) = run_all(n, Some(t0 + ADD_DEADLINE), |i| {
        cni_call(
            &plugin,
            "ADD",
            &format!("bench-{index}-{i}"),
            &namespaces[i],
            &config,
        )
    });
    let leased = added.iter().filter(|o| matches!(o, Some(Ok(())))).count();
    let failed = added.iter().filter(|o| matches!(o, Some(Err(_)))).count();
    let not_attempted = added.iter().filter(|o| o.is_none()).count();
    let first_error = added.iter().find_map(|o| match o {
        Some(Err(text)) => Some(text.chars().take(300).collect::<String>()),
        _ => None,
    });
    let all_leased = if leased > 0 { last - t0 } else { t0.elapsed() };
    eprintln!(
        "  cni: {leased} leased, {failed} failed, {not_attempted} not attempted after {all_leased:.2?}; holding {hold:?}"
    );
    let renewal_lines = ["lease renewed", "lease rebound"];
    let renewals_before = count_lines(&log, &renewal_lines);
    let expiries_before = count_lines(&log, &["lease expired"]);
    let cpu_before = cpu_seconds(pid);
    std::thread::sleep(hold);
    let hold_cpu = cpu_seconds(pid) - cpu_before;
    let rss_held = status_field(pid, "VmRSS");
    let threads = status_field(pid, "Threads");
    let renewals = count_lines(&log, &renewal_lines) - renewals_before;
    let expiries = count_lines(&log, &["lease expired"]) - expiries_before;

    eprintln!("  cni: DEL x{n}");
    let (deleted, _) = run_all(n, None, |i| {
        cni_call(
            &plugin,
            "DEL",
            &format!("bench-{index}-{i}"),
            &namespaces[i],
            &config,
        )
    });
    let del_failed = deleted.iter().filter(|o| matches!(o, Some(Err(_)))).count();
    drop(peer);
    Ok(PeerLevel {
        addresses: n,
        leased,
        failed,
        not_attempted,
        all_leased_s: all_leased.as_secs_f64(),
        rss_before_kib: rss_before,
        rss_held_kib: rss_held,
        kib_per_lease: (rss_held as f64 - rss_before as f64) / leased.max(1) as f64,
        hold_s: hold.as_secs_f64(),
        hold_cpu_s: hold_cpu,
        core_percent: hold_cpu / hold.as_secs_f64() * 100.0,
        renewals,
        cpu_ms_per_renewal: if renewals > 0 {
            hold_cpu * 1000.0 / renewals as f64
        } else {
            0.0
        },
        expiries,
        del_failed,
        threads,
        first_error,
    })
}
