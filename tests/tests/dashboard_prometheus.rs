//! The Grafana dashboard against a real Prometheus: every expression of
//! `dashboards/dhcpmanager.json`, with Grafana's variables filled in as the "All" choice does
//! (and as picking the one node does), returns data scraped from a real agent (real kube-apiserver, real Kea) and from a real
//! standalone REST apiserver.
//!
//! Two Prometheus servers, because two loopbacks: the agent serves its metrics on the root
//! namespace's loopback (it reaches the kube-apiserver there), while the standalone apiserver must
//! run on a lab "node" (it creates macvlans on that node's parent interface) and listens on that
//! namespace's loopback. Each Prometheus runs where its target's loopback is. The apiserver gets
//! a node of its own (not the agent's namespace): the agent sweeps every link of dhcpmanager's
//! link group in its namespace that it does not own, which would include the apiserver's.
//!
//! Queries are evaluated no later than 50 s after the events they show (see [`Anchor`]), so how
//! long the test takes between the events and the queries never decides the outcome.

use dhcpmanager_tests::repo_root;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dhcpmanager_tests::cluster::{AgentOpts, Cluster};
use dhcpmanager_tests::lab::{Server, ServerOpts};
use serde_json::Value;

/// Safety net for every wait; never a measurement.
const SAFETY_NET: Duration = Duration::from_secs(90);
/// Grafana's `$__rate_interval` as the test substitutes it.
const RATE_INTERVAL: &str = "1m";
/// How long after an event its one-off increase still lies inside a `[1m]` window together with
/// a sample from before the event (with 1 s scrapes, 10 s of slack either side).
const WINDOW_AFTER_EVENT: f64 = 50.0;
const ADDRESSES: usize = 4;
/// One MAC fewer than addresses: the last address cannot get one, so the agent counts real
/// `pool_exhausted` failures and the "Failures by error" panel has data.
const AGENT_MACS: usize = ADDRESSES - 1;
const APISERVER_PORT: u16 = 8000;
const APISERVER_PROMETHEUS_PORT: u16 = 9090;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on loopback")
}

/// A directory of this test's own, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(what: &str) -> ScratchDir {
        static MADE: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "dhcpmanager-{what}-{}-{}",
            std::process::id(),
            MADE.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        ScratchDir(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (by PID) and reaped on drop.
struct KilledOnDrop(Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `ip netns exec NS PROGRAM`, or PROGRAM itself in the root namespace. `ip netns exec` execs
/// the program, so the child's PID is the program's.
fn command_in(netns: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match netns {
        Some(ns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", ns]).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// curl on loopback (in `netns` if given): the answer's body, if it answered 2xx.
fn curl(netns: Option<&str>, args: &[&str]) -> Option<String> {
    let out = command_in(netns, "curl")
        .args(["-sS", "--fail", "--max-time", "60"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("curl runs");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A static scrape target and the labels Prometheus adds to its series.
struct Target {
    job: &'static str,
    address: String,
    labels: &'static [(&'static str, &'static str)],
    /// Sent as `Authorization: Bearer` (the agent's /metrics asks for a Kubernetes token).
    bearer: Option<String>,
}

/// A real Prometheus on 127.0.0.1 of `netns` (root namespace if None), scraping every second.
struct Prometheus {
    netns: Option<String>,
    port: u16,
    process: KilledOnDrop,
    dir: ScratchDir,
}

impl Prometheus {
    fn start(netns: Option<&str>, port: u16, targets: &[Target]) -> Prometheus {
        let dir = ScratchDir::new("prometheus");
        let jobs: Vec<String> = targets
            .iter()
            .map(|t| {
                let labels: Vec<String> = t
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}: {v:?}"))
                    .collect();
                let authorization = t
                    .bearer
                    .as_ref()
                    .map(|token| {
                        let file = dir.0.join(format!("{}.token", t.job));
                        std::fs::write(&file, token).unwrap();
                        format!(
                            "    authorization:\n      credentials_file: {:?}\n",
                            file.display().to_string()
                        )
                    })
                    .unwrap_or_default();
                format!(
                    "  - job_name: {:?}\n{authorization}    static_configs:\n      - targets: [{:?}]\n        labels: {{{}}}\n",
                    t.job,
                    t.address,
                    labels.join(", ")
                )
            })
            .collect();
        let config = dir.0.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{}",
                jobs.concat()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.0.join("prometheus.log")).unwrap();
        let child = command_in(netns, "prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("prometheus starts (scripts/install-deps.sh installs it)");
        let mut prometheus = Prometheus {
            netns: netns.map(str::to_string),
            port,
            process: KilledOnDrop(child),
            dir,
        };
        prometheus.wait_until("ready", |p| p.get("/-/ready", &[]).is_some());
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("prometheus.log")).unwrap_or_default()
    }

    fn get(&self, path: &str, params: &[(&str, &str)]) -> Option<String> {
        let mut args: Vec<String> = vec!["--get".into()];
        for (k, v) in params {
            args.push("--data-urlencode".into());
            args.push(format!("{k}={v}"));
        }
        args.push(format!("http://127.0.0.1:{}{path}", self.port));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(self.netns.as_deref(), &args)
    }

    /// `/api/v1/query` at `time` (Unix seconds): the whole answer.
    fn query(&self, expr: &str, time: f64) -> Value {
        let time = format!("{time:.3}");
        let body = self
            .get("/api/v1/query", &[("query", expr), ("time", &time)])
            .unwrap_or_else(|| panic!("query rejected: {expr}\n{}", self.log()));
        serde_json::from_str(&body).expect("Prometheus answers JSON")
    }

    fn wait_until(&mut self, what: &str, ok: impl Fn(&Prometheus) -> bool) {
        let deadline = std::time::Instant::now() + SAFETY_NET;
        while !ok(self) {
            if let Ok(Some(status)) = self.process.0.try_wait() {
                panic!("prometheus exited ({status}):\n{}", self.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "Prometheus: not {what} within {SAFETY_NET:?} (safety net)\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until every target of `job` has been scraped successfully.
    fn wait_scraped(&mut self, job: &str) {
        let expr = format!("up{{job=\"{job}\"}}");
        self.wait_until(&format!("scraping {job}"), |p| {
            let answer = p.query(&expr, unix_now());
            let result = answer["data"]["result"].as_array().cloned();
            result.is_some_and(|r| !r.is_empty() && r.iter().all(|s| value(s) == Some(1.0)))
        });
    }
}

/// The instant an expression is evaluated at: now, but never later than [`WINDOW_AFTER_EVENT`]
/// after the event whose effects it shows, so the `[1m]` window always still holds a sample from
/// before the event however slow the rest of the test is.
#[derive(Clone, Copy)]
struct Anchor {
    event: f64,
}

impl Anchor {
    fn now() -> Anchor {
        Anchor { event: unix_now() }
    }

    fn time(self) -> f64 {
        unix_now().min(self.event + WINDOW_AFTER_EVENT)
    }
}

/// A sample's value ("NaN", "+Inf" included).
fn value(sample: &Value) -> Option<f64> {
    sample["value"][1].as_str()?.parse().ok()
}

fn label<'a>(sample: &'a Value, name: &str) -> &'a str {
    sample["metric"][name].as_str().unwrap_or("")
}

/// Every `expr` in the dashboard, in panel order.
fn dashboard_expressions() -> Vec<String> {
    fn walk(node: &Value, found: &mut Vec<String>) {
        match node {
            Value::Object(map) => {
                if let Some(Value::String(expr)) = map.get("expr") {
                    found.push(expr.clone());
                }
                map.values().for_each(|v| walk(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, found)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(repo_root().join("dashboards/dhcpmanager.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut found = Vec::new();
    walk(&dashboard["panels"], &mut found);
    found
}

/// Grafana's substitution for node = `node`, `$__rate_interval` = [`RATE_INTERVAL`].
fn substitute(expr: &str, node: &str) -> String {
    let filled = expr
        .replace("$__rate_interval", RATE_INTERVAL)
        .replace("$node", node);
    assert!(
        !filled.contains('$'),
        "a variable the test does not know: {expr}"
    );
    filled
}

/// What a panel's query must show here beyond "succeeded and returned series".
#[derive(Debug, PartialEq)]
enum Expect {
    /// Series exist; their values may be 0 (counters of things that did not happen in this
    /// test: NAKs, expirations, IP changes, rejected replies — Kea answers every request here).
    Series,
    /// Every value is a finite number (a quantile of a histogram that observed something).
    Finite,
    /// The series whose `label` is `value` is a finite number.
    FiniteWhere {
        label: &'static str,
        value: &'static str,
    },
    /// A series whose `label` is `value` has a value >= `at_least` (and > 0).
    Where {
        label: &'static str,
        value: &'static str,
        at_least: f64,
    },
    /// Some series has a value > 0.
    Positive,
    /// The single series' value is >= this.
    AtLeast(f64),
}

fn expectation(expr: &str) -> Expect {
    let bound = AGENT_MACS as f64;
    if expr.starts_with("histogram_quantile") && expr.contains("by (le, outcome)") {
        // Every outcome's series exists from the start (so rate() sees the first of each);
        // the ones that never happened here (error, timeout) are NaN, success must be a number.
        Expect::FiniteWhere {
            label: "outcome",
            value: "success",
        }
    } else if expr.starts_with("histogram_quantile") {
        Expect::Finite
    } else if expr.starts_with("sum by (phase) (dhcpmanager_addresses") {
        Expect::Where {
            label: "phase",
            value: "Bound",
            at_least: bound,
        }
    } else if expr.starts_with("sum by (node) (dhcpmanager_addresses") {
        Expect::Where {
            label: "node",
            value: "node-a",
            at_least: bound,
        }
    } else if expr.starts_with("count(") {
        // Kea's 60 s leases all expire within the hour.
        Expect::AtLeast(bound)
    } else if expr.starts_with("sort(") {
        Expect::Series
    } else if expr.contains("dhcpmanager_failures_total") {
        Expect::Where {
            label: "error",
            value: "pool_exhausted",
            at_least: f64::MIN_POSITIVE,
        }
    } else if expr.contains("dhcpmanager_apiserver_http_requests_total") {
        // Prometheus's own scrapes count too (route /metrics): require the POSTs.
        Expect::Where {
            label: "route",
            value: "/v1/ip",
            at_least: f64::MIN_POSITIVE,
        }
    } else if ["renewals", "packets_sent", "packets_received"]
        .iter()
        .any(|m| expr.contains(&format!("dhcpmanager_{m}_total")))
    {
        Expect::Positive
    } else {
        Expect::Series
    }
}

fn satisfied(expect: &Expect, result: &[Value]) -> bool {
    if result.is_empty() {
        return false;
    }
    let values: Vec<f64> = result.iter().filter_map(value).collect();
    if values.len() != result.len() {
        return false;
    }
    match expect {
        Expect::Series => true,
        Expect::Finite => values.iter().all(|v| v.is_finite()),
        Expect::FiniteWhere {
            label: name,
            value: wanted,
        } => result
            .iter()
            .any(|s| label(s, name) == *wanted && value(s).is_some_and(f64::is_finite)),
        Expect::Positive => values.iter().any(|v| *v > 0.0),
        Expect::AtLeast(n) => result.len() == 1 && values[0] >= *n,
        Expect::Where {
            label: name,
            value: wanted,
            at_least,
        } => result
            .iter()
            .any(|s| label(s, name) == *wanted && value(s).is_some_and(|v| v >= *at_least)),
    }
}

/// Queries `expr` until its answer is a success meeting `expect` (safety-net deadline); the
/// last answer in the panic message otherwise.
fn assert_panel_data(prometheus: &Prometheus, anchor: Anchor, expr: &str) -> Vec<Value> {
    let expect = expectation(expr);
    let deadline = std::time::Instant::now() + SAFETY_NET;
    loop {
        let answer = prometheus.query(expr, anchor.time());
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        let result = answer["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("{expr}: an instant vector: {answer}"))
            .clone();
        if satisfied(&expect, &result) {
            let shown: Vec<String> = result
                .iter()
                .map(|s| format!("{} {}", s["metric"], s["value"][1]))
                .collect();
            eprintln!("{expr}\n    => {}", shown.join("; "));
            return result;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{expr}: not {expect:?} within {SAFETY_NET:?} (safety net); last answer {answer}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `dhcpmanager-apiserver --standalone` on lab node `netns`, with its own MACs and state dir.
fn start_standalone_apiserver(netns: &str, state: &ScratchDir) -> KilledOnDrop {
    let config = state.0.join("dhcpmanager.toml");
    std::fs::write(
        &config,
        format!(
            "interface = \"lab0\"\nmacs = [\"02:dd:00:00:00:01\", \"02:dd:00:00:00:02\", \"02:dd:00:00:00:03\"]\n\
             etcd = []\nrequest-timeout = \"20s\"\nstate-dir = \"{}\"\n",
            state.0.join("state").display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(state.0.join("apiserver.log")).unwrap();
    let mut child = KilledOnDrop(
        command_in(Some(netns), dhcpmanager_tests::binaries::apiserver())
            .args(["--standalone", "--config"])
            .arg(&config)
            .args(["--bind", "127.0.0.1", "--port", &APISERVER_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("the apiserver starts"),
    );
    let health = format!("http://127.0.0.1:{APISERVER_PORT}/healthz");
    let deadline = std::time::Instant::now() + SAFETY_NET;
    while curl(Some(netns), &[&health]).is_none() {
        let log = || std::fs::read_to_string(state.0.join("apiserver.log")).unwrap_or_default();
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "the apiserver exited:\n{}",
            log()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no /healthz within {SAFETY_NET:?} (safety net):\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

fn post_ip(netns: &str, service: &str) -> Value {
    let body = format!("{{\"service\":\"{service}\"}}");
    let url = format!("http://127.0.0.1:{APISERVER_PORT}/v1/ip");
    let answer = curl(
        Some(netns),
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
            &url,
        ],
    )
    .unwrap_or_else(|| panic!("POST /v1/ip {service} failed"));
    serde_json::from_str(&answer).expect("POST /v1/ip answers JSON")
}

fn bound_count(cluster: &Cluster, namespace: &str) -> usize {
    cluster
        .addresses(namespace)
        .iter()
        .filter(|(_, s)| s["phase"] == "Bound" && s["ip"].is_string())
        .count()
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let expressions = dashboard_expressions();
    assert!(
        expressions.len() >= 10,
        "the dashboard's queries were found: {expressions:?}"
    );
    let (api_exprs, agent_exprs): (Vec<&String>, Vec<&String>) = expressions
        .iter()
        .partition(|e| e.contains("dhcpmanager_apiserver_"));
    assert!(!api_exprs.is_empty() && !agent_exprs.is_empty());

    let mut cluster = Cluster::start();
    cluster
        .lab
        .start(Server::Kea, ServerOpts::default())
        .expect("Kea starts");
    let agent_ns = cluster.lab.agent_ns();
    let opts = AgentOpts {
        macs: AgentOpts::default().macs[..AGENT_MACS].to_vec(),
        ..AgentOpts::default()
    };
    let agent = cluster.start_agent("node-a", &agent_ns, &opts);
    let api_node = cluster.lab.add_node(2).expect("a second lab node");
    let api_state = ScratchDir::new("dashboard-apiserver");
    let _apiserver = start_standalone_apiserver(&api_node, &api_state);

    let mut agent_prometheus = Prometheus::start(
        None,
        free_port(),
        &[Target {
            job: "agent",
            address: cluster.agent(agent).metrics.to_string(),
            labels: &[("node", "node-a")],
            // The agent's /metrics takes a token the Kubernetes API vouches for (its default,
            // agent.metrics.auth=kubernetes): the reader the chart's ClusterRole is bound to.
            bearer: Some(cluster.metrics_token().to_string()),
        }],
    );
    let mut api_prometheus = Prometheus::start(
        Some(&api_node),
        APISERVER_PROMETHEUS_PORT,
        &[Target {
            job: "apiserver",
            address: format!("127.0.0.1:{APISERVER_PORT}"),
            labels: &[],
            bearer: None,
        }],
    );
    // Samples from before the events, so the one-off increases show in rate().
    agent_prometheus.wait_scraped("agent");
    api_prometheus.wait_scraped("apiserver");

    let agent_anchor = Anchor::now();
    cluster.create_addresses("apps", "svc", ADDRESSES);
    cluster.wait_for(
        "every address the pool has MACs for is Bound",
        SAFETY_NET,
        |c| bound_count(c, "apps") == AGENT_MACS,
    );
    // The apiserver's series by route and status are born at their first request, so rate()
    // cannot see that one: allocate once, let Prometheus scrape it, then allocate again in the
    // window the queries look at.
    let allocate = |service: &str| {
        let answer = post_ip(&api_node, service);
        assert_eq!(
            answer["status"], "success",
            "POST /v1/ip {service}: {answer}"
        );
    };
    allocate("shop/first");
    api_prometheus.wait_until("scraping the first allocation", |p| {
        let answer = p.query(
            "dhcpmanager_apiserver_allocation_duration_seconds_count{outcome=\"success\"}",
            unix_now(),
        );
        // The series exists from the start (at 0): wait until it counted the allocation.
        answer["data"]["result"]
            .as_array()
            .is_some_and(|r| r.iter().any(|s| value(s).is_some_and(|v| v >= 1.0)))
    });
    let api_anchor = Anchor::now();
    for service in ["shop/web", "shop/api"] {
        allocate(service);
    }

    // "All" (allValue ".*") and the one node picked: both show the same agent's data.
    for node in [".*", "node-a"] {
        for expr in &agent_exprs {
            let filled = substitute(expr, node);
            let result = assert_panel_data(&agent_prometheus, agent_anchor, &filled);
            if filled.starts_with("sort(") {
                let addresses: Vec<&str> = result.iter().map(|s| label(s, "name")).collect();
                assert_eq!(
                    result.len(),
                    AGENT_MACS,
                    "one row per held lease: {addresses:?}"
                );
            }
        }
    }
    // Grafana's $node variable, label_values(dhcpmanager_addresses, node); its series exist by
    // now (the panels above showed them).
    let nodes = agent_prometheus
        .get(
            "/api/v1/label/node/values",
            &[("match[]", "dhcpmanager_addresses")],
        )
        .expect("label values");
    let nodes: Value = serde_json::from_str(&nodes).unwrap();
    assert_eq!(
        nodes["data"],
        serde_json::json!(["node-a"]),
        "the node variable's choices"
    );

    for expr in &api_exprs {
        let filled = substitute(expr, ".*");
        let result = assert_panel_data(&api_prometheus, api_anchor, &filled);
        if filled.starts_with("histogram_quantile") {
            assert!(
                result.iter().any(|s| label(s, "outcome") == "success"),
                "the allocations' outcome: {result:?}"
            );
        }
    }
    // A node that does not exist selects nothing: the filter is really applied.
    let other = substitute(agent_exprs[0], "node-z");
    let answer = agent_prometheus.query(&other, agent_anchor.time());
    assert_eq!(answer["status"], "success");
    assert_eq!(answer["data"]["result"], serde_json::json!([]), "{other}");
}
