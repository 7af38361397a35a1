//! A small cluster for end-to-end tests of the agent: a private real kube-apiserver (with the
//! CRDs applied), a DHCP lab, and agent processes — one per "node", each a lab namespace whose
//! links and DHCP sockets it manages through `--link-netns` while it talks to the API server on
//! loopback. Dropping it kills the agents (by PID), stops the control plane and takes the lab down.

use crate::repo_root;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::binaries;
use crate::controlplane::ControlPlane;
use crate::lab::Lab;

/// Namespace of the agents' coordination Leases (the chart's release namespace).
pub const AGENT_NAMESPACE: &str = "dhcpmanager";
/// The ServiceAccount (in [`AGENT_NAMESPACE`]) the tests scrape the agents' /metrics as: bound
/// to the chart's ClusterRole `dhcpmanager-metrics-reader` through `agent.metrics.readers`.
pub const METRICS_READER: &str = "prometheus";

pub struct Cluster {
    pub cp: ControlPlane,
    pub lab: Lab,
    agents: Vec<Agent>,
    agent_kubeconfig: PathBuf,
    metrics_token: Option<String>,
}

pub struct Agent {
    pub node: String,
    pub netns: String,
    pub metrics: SocketAddr,
    pub log: PathBuf,
    child: Child,
}

impl Agent {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Knobs of an agent start; the defaults suit fast tests (short agent Leases, `--time-scale`).
#[derive(Debug, Clone)]
pub struct AgentOpts {
    pub macs: Vec<String>,
    pub time_scale: f64,
    pub lease_duration: &'static str,
    pub renew_interval: &'static str,
    pub takeover_grace: &'static str,
    pub extra: Vec<String>,
}

impl Default for AgentOpts {
    fn default() -> Self {
        AgentOpts {
            macs: (1..=32)
                .map(|n| format!("02:cc:00:00:00:{n:02x}"))
                .collect(),
            time_scale: 10.0,
            lease_duration: "6s",
            renew_interval: "1s",
            takeover_grace: "2s",
            extra: Vec::new(),
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on loopback")
}

impl Cluster {
    /// A control plane with the CRDs and the agents' namespace, and a lab with no server yet.
    /// The agents run with the least-privilege RBAC of the Helm chart (ServiceAccount token).
    pub fn start() -> Cluster {
        Self::start_with(&[])
    }

    /// [`Cluster::start`] with the agents' RBAC rendered with these chart values (`--set`).
    pub fn start_with(chart_values: &[&str]) -> Cluster {
        let cp = ControlPlane::start();
        let crds = repo_root().join("charts/dhcpmanager/crds");
        cp.try_kubectl(&["apply", "--server-side", "-f", crds.to_str().unwrap()])
            .expect("CRDs applied");
        cp.try_kubectl(&["create", "namespace", AGENT_NAMESPACE])
            .expect("namespace");
        cp.try_kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/dhcpaddresses.dhcpmanager.io",
            "crd/macpools.dhcpmanager.io",
        ])
        .expect("CRDs established");
        let agent_kubeconfig = agent_rbac(&cp, chart_values);
        let metrics_token = metrics_reader_token(&cp, chart_values);
        let lab = Lab::up().expect("lab up");
        Cluster {
            cp,
            lab,
            agents: Vec::new(),
            agent_kubeconfig,
            metrics_token,
        }
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.cp.kubectl(args)
    }

    /// kubectl that must succeed; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        self.cp
            .try_kubectl(args)
            .unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
    }

    pub fn apply(&self, yaml: &str) {
        self.cp
            .apply_yaml(yaml)
            .unwrap_or_else(|e| panic!("apply failed: {e}\n{yaml}"));
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&all)).expect("kubectl JSON")
    }

    /// Starts an agent for `node` whose links live in network namespace `netns`.
    pub fn start_agent(&mut self, node: &str, netns: &str, opts: &AgentOpts) -> usize {
        let dir = self.lab.dir().to_path_buf();
        let config = dir.join(format!("agent-{node}.toml"));
        let macs: Vec<String> = opts.macs.iter().map(|m| format!("\"{m}\"")).collect();
        std::fs::write(
            &config,
            format!(
                "interface = \"{}\"\nmacs = [{}]\netcd = []\n",
                self.lab.parent(),
                macs.join(", ")
            ),
        )
        .unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.join(format!("agent-{node}-{}.log", self.agents.len()));
        let mut command = Command::new(binaries::operator());
        command
            .arg("agent")
            .args(["--config", config.to_str().unwrap()])
            .args(["--link-netns", &format!("/run/netns/{netns}")])
            .args(["--metrics-addr", &metrics.to_string()])
            .args(["--time-scale", &opts.time_scale.to_string()])
            .args(["--lease-duration", opts.lease_duration])
            .args(["--renew-interval", opts.renew_interval])
            .args(["--takeover-grace", opts.takeover_grace])
            .args(&opts.extra)
            .env("KUBECONFIG", &self.agent_kubeconfig)
            .env("NODE_NAME", node)
            .env("POD_NAMESPACE", AGENT_NAMESPACE)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::File::options().append(true).open(&log).unwrap(),
            ));
        let child = command.spawn().expect("spawn the agent");
        self.agents.push(Agent {
            node: node.to_string(),
            netns: netns.to_string(),
            metrics,
            log,
            child,
        });
        self.agents.len() - 1
    }

    /// A token of [`METRICS_READER`], which may read the agents' /metrics (chart values with
    /// `agent.metrics.auth=none` ship no reader role: then there is none).
    pub fn metrics_token(&self) -> &str {
        self.metrics_token
            .as_deref()
            .expect("the chart's metrics reader role (agent.metrics.auth=kubernetes)")
    }

    /// The text of agent `index`'s /metrics, read with [`Cluster::metrics_token`].
    pub fn scrape_metrics(&self, index: usize) -> String {
        let addr = self.agents[index].metrics;
        let answer = crate::prometheus::get(addr, "/metrics", Some(self.metrics_token()))
            .unwrap_or_else(|e| panic!("GET http://{addr}/metrics: {e}"));
        assert_eq!(answer.status, 200, "GET /metrics: {}", answer.body);
        answer.body
    }

    pub fn agent(&self, index: usize) -> &Agent {
        &self.agents[index]
    }

    /// Sends `signal` to agent `index` and waits for it to exit.
    pub fn signal_agent(&mut self, index: usize, signal: i32) {
        let agent = &mut self.agents[index];
        // SAFETY: kill(2) on our own, not yet reaped child.
        unsafe { libc::kill(agent.child.id() as i32, signal) };
        let _ = agent.child.wait();
    }

    /// Waits until `check` holds for the object (a safety-net deadline, not a measurement).
    pub fn wait_for(&self, what: &str, timeout: Duration, check: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !check(self) {
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .agents
                    .iter()
                    .map(|a| {
                        let text = std::fs::read_to_string(&a.log).unwrap_or_default();
                        let tail: Vec<&str> = text.lines().rev().take(30).collect();
                        format!(
                            "--- agent {} ---\n{}",
                            a.node,
                            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                        )
                    })
                    .collect();
                panic!("not within {timeout:?}: {what}\n{}", logs.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The DhcpAddresses of `namespace` as (name, status) pairs.
    pub fn addresses(&self, namespace: &str) -> Vec<(String, Value)> {
        self.json(&["get", "dhcpaddresses", "-n", namespace])["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|item| {
                (
                    item["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    item["status"].clone(),
                )
            })
            .collect()
    }

    /// Creates `count` DhcpAddresses `prefix-N` in `namespace` (created if missing).
    pub fn create_addresses(&self, namespace: &str, prefix: &str, count: usize) {
        let _ = self.kubectl(&["create", "namespace", namespace]);
        let yaml: Vec<String> = (0..count)
            .map(|n| {
                format!(
                    "apiVersion: dhcpmanager.io/v1alpha1\nkind: DhcpAddress\nmetadata:\n  name: {prefix}-{n}\n  namespace: {namespace}\nspec:\n  service: {namespace}/{prefix}-{n}\n"
                )
            })
            .collect();
        self.apply(&yaml.join("---\n"));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for agent in &mut self.agents {
            if let Ok(None) = agent.child.try_wait() {
                let _ = agent.child.kill();
                let _ = agent.child.wait();
            }
        }
    }
}

/// The agent's ServiceAccount with the chart's RBAC; returns a kubeconfig with its token.
fn agent_rbac(cp: &ControlPlane, chart_values: &[&str]) -> PathBuf {
    let rbac = repo_root().join("charts/dhcpmanager/templates/rbac-agent.yaml");
    if rbac.exists() {
        let rendered = crate::chart::render_template_with(
            "templates/rbac-agent.yaml",
            AGENT_NAMESPACE,
            chart_values,
        );
        cp.apply_yaml(&rendered).expect("agent RBAC applied");
        cp.service_account_kubeconfig(AGENT_NAMESPACE, crate::chart::AGENT_SERVICE_ACCOUNT)
            .expect("agent ServiceAccount kubeconfig")
    } else {
        panic!(
            "{} is missing: the agent tests run with the chart's RBAC",
            rbac.display()
        )
    }
}

/// [`METRICS_READER`] bound to the chart's metrics reader ClusterRole through the chart's own
/// `agent.metrics.readers`; returns a TokenRequest token of it. `None` when the chart values
/// turn /metrics authentication off.
fn metrics_reader_token(cp: &ControlPlane, chart_values: &[&str]) -> Option<String> {
    if chart_values.contains(&"agent.metrics.auth=none") {
        return None;
    }
    let kind = "agent.metrics.readers[0].kind=ServiceAccount".to_string();
    let name = format!("agent.metrics.readers[0].name={METRICS_READER}");
    let mut values = chart_values.to_vec();
    values.extend([kind.as_str(), name.as_str()]);
    let rendered = crate::chart::render_template_with(
        "templates/rbac-metrics-reader.yaml",
        AGENT_NAMESPACE,
        &values,
    );
    cp.apply_yaml(&rendered)
        .expect("metrics reader RBAC applied");
    Some(service_account_token(cp, AGENT_NAMESPACE, METRICS_READER))
}

/// A TokenRequest token of ServiceAccount `namespace/name`, created if missing.
pub fn service_account_token(cp: &ControlPlane, namespace: &str, name: &str) -> String {
    if cp
        .try_kubectl(&["-n", namespace, "get", "serviceaccount", name])
        .is_err()
    {
        cp.try_kubectl(&["-n", namespace, "create", "serviceaccount", name])
            .expect("ServiceAccount created");
    }
    cp.try_kubectl(&["-n", namespace, "create", "token", name])
        .expect("a TokenRequest token")
        .trim()
        .to_string()
}
