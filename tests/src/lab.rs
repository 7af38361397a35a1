//! The DHCP test lab from Rust: a thin, typed front to `tests/lab/lab.sh`, which owns the
//! namespaces, the servers and their state. One `Lab` per test; dropping it tears everything down,
//! also when the test panics.
//!
//! Topology (see `tests/lab/README.md`): the agent namespace holds the parent interface
//! [`Lab::parent`], on one L2 segment with server address 1 (10.77.0.1) and server address 2
//! (10.77.0.2), each in its own namespace so two servers can run at once.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::Deserialize;

use crate::capture::Capture;
use crate::lab_error::LabError;

/// Where lab.sh, its config templates and the udhcpc hook live.
pub static LAB_SCRIPTS: LazyLock<PathBuf> =
    LazyLock::new(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("lab"));

pub const SERVER_ADDR_1: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const SERVER_ADDR_2: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The servers' default pool: 10.77.0.10 - 10.77.0.250 of 10.77.0.0/24.
pub const DEFAULT_RANGE: (Ipv4Addr, Ipv4Addr) =
    (Ipv4Addr::new(10, 77, 0, 10), Ipv4Addr::new(10, 77, 0, 250));
/// dnsmasq will not lease for less (lab.sh raises shorter leases to this).
pub const DNSMASQ_MIN_LEASE_SECS: u32 = 120;
const PARENT: &str = "lab0";

static LABS_MADE: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Dnsmasq,
    Kea,
    Dhcpd,
}

impl Server {
    pub const ALL: [Server; 3] = [Server::Dnsmasq, Server::Kea, Server::Dhcpd];

    pub fn name(self) -> &'static str {
        match self {
            Server::Dnsmasq => "dnsmasq",
            Server::Kea => "kea",
            Server::Dhcpd => "dhcpd",
        }
    }
}

/// How to run a server. `Default`: 60 s leases, T1/T2 as the server does by default (dnsmasq
/// sends 0.5/0.875 of the lease, Kea and dhcpd send none), on 10.77.0.1, not authoritative,
/// pool 10.77.0.10-250.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOpts {
    pub lease: u32,
    pub t1: Option<u32>,
    pub t2: Option<u32>,
    pub addr: Ipv4Addr,
    /// Answer (ACK/NAK) REQUESTs for leases the server has no record of.
    pub authoritative: bool,
    pub range: (Ipv4Addr, Ipv4Addr),
}

impl Default for ServerOpts {
    fn default() -> Self {
        Self {
            lease: 60,
            t1: None,
            t2: None,
            addr: SERVER_ADDR_1,
            authoritative: false,
            range: DEFAULT_RANGE,
        }
    }
}

impl ServerOpts {
    fn args(&self) -> Vec<String> {
        let mut args = vec![
            format!("lease={}", self.lease),
            format!("addr={}", self.addr),
        ];
        args.extend(self.t1.map(|t| format!("t1={t}")));
        args.extend(self.t2.map(|t| format!("t2={t}")));
        args.push(format!("authoritative={}", u8::from(self.authoritative)));
        args.push(format!("range={}-{}", self.range.0, self.range.1));
        args
    }
}

/// One entry of a server's lease database, normalised by `lab.sh leases`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ServerLease {
    pub ip: Ipv4Addr,
    /// Lowercase, colon-separated.
    pub mac: Option<String>,
    pub hostname: Option<String>,
    /// Option 61 as lowercase hex without separators ("01" + MAC for busybox udhcpc).
    pub client_id: Option<String>,
    /// Unix seconds; 0 = never.
    pub expires: u64,
    /// "active", or what the server calls a lease it no longer hands out ("free", "expired", ...).
    pub state: String,
}

/// The active lease of `ip` in a lease database, if any.
pub fn active_lease(leases: &[ServerLease], ip: Ipv4Addr) -> Option<&ServerLease> {
    leases.iter().find(|l| l.ip == ip && l.state == "active")
}

/// A running lab; `Drop` takes it down.
#[derive(Debug)]
pub struct Lab {
    name: String,
    dir: PathBuf,
    is_up: bool,
}

impl Lab {
    /// Builds a lab with a name unique to this process and call (also fits an interface name).
    pub fn up() -> Result<Lab, LabError> {
        let n = LABS_MADE.fetch_add(1, Ordering::Relaxed);
        let name = format!("dl{}-{n}", std::process::id());
        // constructed before `up` so that a half-built lab is still torn down
        let mut lab = Lab {
            dir: PathBuf::new(),
            name,
            is_up: true,
        };
        lab.dir = PathBuf::from(lab.script("path", &[] as &[&str])?.trim());
        lab.script("up", &[] as &[&str])?;
        Ok(lab)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lab's state directory (server configs, logs, lease files, captures).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The parent interface for macvlans, in [`Lab::agent_ns`].
    pub fn parent(&self) -> &str {
        PARENT
    }

    /// The namespace where the code under test runs (the "node").
    pub fn agent_ns(&self) -> String {
        format!("{}-ag", self.name)
    }

    /// The namespace that holds server address `addr` (10.77.0.1 or 10.77.0.2).
    pub fn server_ns(&self, addr: Ipv4Addr) -> String {
        if addr == SERVER_ADDR_2 {
            format!("{}-srv2", self.name)
        } else {
            format!("{}-srv", self.name)
        }
    }

    /// Adds node `n` (2..=9): a namespace with its own parent interface (also [`Lab::parent`])
    /// on the same segment as the agent namespace and the servers. Returns its name.
    pub fn add_node(&self, n: u8) -> Result<String, LabError> {
        Ok(self.script("node", &[n.to_string()])?.trim().to_string())
    }

    /// Adds a "pod" behind [`Lab::agent_ns`]: a namespace whose `eth0` is 10.244.0.2/24, routed
    /// through its veth peer `v-pod` (10.244.0.1/24) in the agent namespace, which forwards.
    /// Returns its name; it goes with the lab.
    pub fn add_pod(&self) -> Result<String, LabError> {
        Ok(self.script::<&str>("pod", &[])?.trim().to_string())
    }

    /// Adds parent interface `lab<n>` (1..=9) to [`Lab::agent_ns`], on the same segment as
    /// [`Lab::parent`]: two parents on one host. Returns its name.
    pub fn add_parent(&self, n: u8) -> Result<String, LabError> {
        Ok(self.script("parent", &[n.to_string()])?.trim().to_string())
    }

    /// `ip netns exec <agent ns> PROGRAM`: add arguments and run it.
    pub fn run_in_agent(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec"])
            .arg(self.agent_ns())
            .arg(program);
        cmd
    }

    /// Adds a macvlan (mode bridge) on the parent and sets it up.
    pub fn add_macvlan(&self, ifname: &str, mac: &str) -> Result<(), LabError> {
        self.script("macvlan", &[ifname, mac]).map(drop)
    }

    /// Starts `server` (replacing that server on the same address); returns once it holds port 67.
    pub fn start(&self, server: Server, opts: ServerOpts) -> Result<(), LabError> {
        let mut args = vec![server.name().to_string()];
        args.extend(opts.args());
        self.script("start", &args).map(drop)
    }

    /// Stops `server` on every address.
    pub fn stop(&self, server: Server) -> Result<(), LabError> {
        self.script("stop", &[server.name()]).map(drop)
    }

    pub fn stop_at(&self, server: Server, addr: Ipv4Addr) -> Result<(), LabError> {
        self.script("stop", &[server.name(), &format!("addr={addr}")])
            .map(drop)
    }

    /// The lease database of `server` on 10.77.0.1, one entry per IP.
    pub fn leases(&self, server: Server) -> Result<Vec<ServerLease>, LabError> {
        self.leases_at(server, SERVER_ADDR_1)
    }

    /// Polls `server`'s lease database (on 10.77.0.1) until `done` holds — servers write it a
    /// moment after they answer, or after a RELEASE they never answer — and returns it. `limit`
    /// is a safety net, not a measurement.
    pub fn wait_for_leases(
        &self,
        server: Server,
        what: &str,
        limit: std::time::Duration,
        done: impl Fn(&[ServerLease]) -> bool,
    ) -> Vec<ServerLease> {
        let started = std::time::Instant::now();
        loop {
            let leases = self
                .leases(server)
                .expect("read the server's lease database");
            if done(&leases) {
                return leases;
            }
            assert!(
                started.elapsed() < limit,
                "{server:?}, not within {limit:?}: {what}; database: {leases:#?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    pub fn leases_at(&self, server: Server, addr: Ipv4Addr) -> Result<Vec<ServerLease>, LabError> {
        let out = self.script("leases", &[server.name(), &format!("addr={addr}")])?;
        out.lines()
            .map(|line| {
                serde_json::from_str(line).map_err(|source| LabError::LeaseLine {
                    line: line.to_string(),
                    source,
                })
            })
            .collect()
    }

    /// Starts tcpdump on `iface` in the agent namespace (DHCP ports only); one capture at a time.
    pub fn capture(&self, iface: &str) -> Result<Capture<'_>, LabError> {
        let file = self.dir.join(format!("capture-{iface}.pcap"));
        self.script("capture-start", &[iface, &file.to_string_lossy()])?;
        Ok(Capture::new(self, file))
    }

    /// tcpdump's own count of frames the kernel dropped before it read them, for the last
    /// capture (from its log, written when it stops); `None` when it said nothing.
    pub fn capture_dropped_by_kernel(&self) -> Option<u64> {
        let log = std::fs::read_to_string(self.dir.join("capture.log")).ok()?;
        log.lines()
            .find(|l| l.contains("dropped by kernel"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    pub(crate) fn stop_capture(&self) -> Result<(), LabError> {
        self.script("capture-stop", &[] as &[&str]).map(drop)
    }

    /// PIDs of every process lab.sh started and still has a pid file for (servers, tcpdump).
    pub fn pids(&self) -> Vec<u32> {
        let mut files: Vec<PathBuf> = vec![self.dir.join("capture.pid")];
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            files.extend(entries.flatten().map(|e| e.path().join("pid")));
        }
        files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok()?.trim().parse().ok())
            .collect()
    }

    /// Takes the lab down now and reports failure (`Drop` does the same but can only log).
    pub fn down(mut self) -> Result<(), LabError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), LabError> {
        if !std::mem::replace(&mut self.is_up, false) {
            return Ok(());
        }
        self.script("down", &[] as &[&str]).map(drop)
    }

    /// `lab.sh SUB NAME ARGS...` -> stdout.
    fn script<S: AsRef<OsStr>>(&self, sub: &str, args: &[S]) -> Result<String, LabError> {
        let mut cmd = Command::new("bash");
        cmd.arg(LAB_SCRIPTS.join("lab.sh"))
            .arg(sub)
            .arg(&self.name)
            .args(args);
        let args: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
        let command = format!("lab.sh {sub} {} {}", self.name, args.join(" "));
        let output = cmd.output().map_err(|source| LabError::Spawn {
            command: command.clone(),
            source,
        })?;
        if !output.status.success() {
            return Err(LabError::CommandFailed {
                command,
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("lab {}: teardown failed: {e}", self.name);
        }
    }
}
