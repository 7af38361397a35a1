//! The chart as users run it: our image (scripts/build-image.sh) imported into a real node's
//! containerd, `helm install` of charts/dhcpmanager, the agent DaemonSet pod on a real kubelet
//! (host network, uid 0 with NET_ADMIN + NET_RAW only, read-only root and /proc/sys), four
//! DhcpAddresses bound by Kea on the node's lab segment, a rolling restart that keeps every lease
//! (same IP and MAC, no DISCOVER), the REST API's pod reached through its Service (kube-proxy), and
//! `helm uninstall` that releases and leaves nothing behind. A capture of the segment checks
//! what our MACs sent.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dhcpmanager_tests::bootp::MessageType;
use dhcpmanager_tests::controlplane::tools_bin_dir;
use dhcpmanager_tests::lab::{Server, active_lease};
use dhcpmanager_tests::node::{self, NODE_NAME, Node, SegmentCapture};
use dhcpmanager_tests::pcap;
use dhcpmanager_tests::repo_root;
use serde_json::Value;

const NAMESPACE: &str = "dhcpmanager";
const RELEASE: &str = "dhcpmanager";
const STEP: Duration = Duration::from_secs(120);
const AGENT_SELECTOR: &str = "app.kubernetes.io/component=agent";
/// Held through the rolling update: every one must keep its IP without a DISCOVER.
const ADDRESSES: [&str; 4] = ["storefront", "web-1", "web-2", "web-3"];
const SHUTDOWN_LINE: &str = "shutting down: stopping every DHCP client without releasing";

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as u64
}

/// An address as bound before the rolling update.
struct Held {
    name: &'static str,
    ip: Ipv4Addr,
    mac: String,
    /// status.expiresAt (RFC 3339 in UTC: compares as text).
    expires: String,
}

fn mac_bytes(mac: &str) -> [u8; 6] {
    mac.parse::<dhcpmanager_engine::dhcp::MacAddr>()
        .expect("a MAC")
        .octets()
}

/// The agent pod on the node: (name, Ready).
fn agent_pod(node: &Node) -> Option<(String, bool)> {
    let pods = node.json(&["-n", NAMESPACE, "get", "pods", "-l", AGENT_SELECTOR]);
    let pod = pods["items"]
        .as_array()?
        .iter()
        .find(|p| p["metadata"]["deletionTimestamp"].is_null())?;
    let ready = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    Some((pod["metadata"]["name"].as_str()?.to_string(), ready))
}

fn address_status(node: &Node, namespace: &str, name: &str) -> Value {
    node.try_kubectl(&["-n", namespace, "get", "dhcpaddress", name, "-o", "json"])
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .map(|object| object["status"].clone())
        .unwrap_or(Value::Null)
}

fn bound_ip(status: &Value) -> Option<Ipv4Addr> {
    (status["phase"] == "Bound")
        .then(|| status["ip"].as_str()?.parse().ok())
        .flatten()
}

/// The node's macvlans (the agent makes them for assigned addresses, or for every address when
/// not linkless), as `ip -d -o link` prints them.
fn macvlans(node: &Node) -> Vec<String> {
    let out = node
        .in_node("ip")
        .args(["-d", "-o", "link", "show"])
        .output()
        .expect("ip link in the node");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" macvlan "))
        .map(str::to_string)
        .collect()
}

/// `kubectl logs -f` of a pod into a file: what the container wrote up to its very end, also
/// after the pod object is gone.
/// `base64 -d` of a Secret's value, as text.
fn base64_decode(encoded: &str) -> String {
    let decoded = std::process::Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(encoded.as_bytes())?;
            child.wait_with_output()
        })
        .expect("base64 -d");
    String::from_utf8_lossy(&decoded.stdout).into_owned()
}

fn follow_logs(node: &Node, pod: &str, file: &Path) -> Child {
    Command::new(tools_bin_dir().join("kubectl"))
        .arg("--kubeconfig")
        .arg(node.cp().kubeconfig_path())
        .args(["-n", NAMESPACE, "logs", "-f", pod])
        .stdout(Stdio::from(std::fs::File::create(file).expect("log file")))
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl logs -f")
}

#[test]
fn chart_on_a_real_node_binds_survives_a_rolling_restart_and_uninstalls_cleanly() {
    let node = node::node_with_our_image_and_kea();
    let lab = node.lab();
    let capture = SegmentCapture::start(&node, "segment");

    // --- helm install, as the chart's README says, with the image we built -------------------
    node.kubectl(&["create", "namespace", NAMESPACE]);
    // The Prometheus Operator's API (a stand-in CRD), so the chart ships its ServiceMonitor and
    // the scraper token it sends to the agents.
    node.apply(dhcpmanager_tests::chart::SERVICE_MONITOR_CRD);
    node.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/servicemonitors.monitoring.coreos.com",
    ]);
    let chart = repo_root().join("charts/dhcpmanager");
    let values = node::chart_values_for_the_node(16);
    let mut args = vec![
        "install",
        RELEASE,
        chart.to_str().unwrap(),
        "--namespace",
        NAMESPACE,
    ];
    args.extend(values.iter().map(String::as_str));
    args.extend([
        "--set",
        "apiserver.replicas=1",
        // The agents' /metrics asks the API server about its scrapers (the default): this
        // ServiceAccount may read it.
        "--set",
        "agent.metrics.readers[0].kind=ServiceAccount",
        "--set",
        "agent.metrics.readers[0].name=scraper",
        "--set",
        "agent.metrics.readers[0].namespace=monitoring",
        "--set",
        "serviceMonitor.enabled=true",
        "--wait",
        "--timeout",
        "180s",
    ]);
    node.helm(&args)
        .unwrap_or_else(|err| panic!("helm install: {err}"));
    node.wait_until("the agent pod Running and Ready", STEP, || {
        agent_pod(&node).is_some_and(|(_, ready)| ready)
    });
    let (first_pod, _) = agent_pod(&node).expect("agent pod");
    let pod = node.json(&["-n", NAMESPACE, "get", "pod", &first_pod]);
    assert_eq!(pod["spec"]["nodeName"], NODE_NAME);
    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(
        pod["status"]["containerStatuses"][0]["restartCount"], 0,
        "the agent never restarted: {pod:#}"
    );
    let logs = node.kubectl(&["-n", NAMESPACE, "logs", &first_pod]);
    assert!(
        !logs.contains('\u{1b}'),
        "no terminal escape codes in the pod's log:\n{logs}"
    );

    // --- /metrics on the node's network: only for a token the API server allows ------------
    // (the pod's in-cluster credentials make the TokenReview and SubjectAccessReview; the
    // kubelet's probes, which carry no token, made the pod Ready above).
    let metrics = |token: Option<&str>| {
        let mut curl = node.in_node("curl");
        curl.args(["-sS", "--max-time", "30", "-w", "\n%{http_code}"]);
        if let Some(token) = token {
            curl.args(["-H", &format!("Authorization: Bearer {token}")]);
        }
        let out = curl
            .arg("http://127.0.0.1:9342/metrics")
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        (code.trim().to_string(), body.to_string())
    };
    node.kubectl(&["create", "namespace", "monitoring"]);
    let token_of = |sa: &str| {
        node.kubectl(&["-n", "monitoring", "create", "serviceaccount", sa]);
        node.kubectl(&["-n", "monitoring", "create", "token", sa])
            .trim()
            .to_string()
    };
    let (code, body) = metrics(None);
    assert_eq!(code, "401", "{body}");
    let (code, body) = metrics(Some(&token_of("stranger")));
    assert_eq!(code, "403", "{body}");
    let (code, body) = metrics(Some(&token_of("scraper")));
    assert_eq!(code, "200", "{body}");
    // The ServiceMonitor's token: kube-controller-manager fills the chart's scraper Secret.
    let monitor = node.json(&[
        "-n",
        NAMESPACE,
        "get",
        "servicemonitor",
        "dhcpmanager-agent",
    ]);
    let credentials = &monitor["spec"]["endpoints"][0]["authorization"]["credentials"];
    assert_eq!(
        credentials["name"], "dhcpmanager-metrics-scraper",
        "{monitor}"
    );
    let secret_token = || {
        let encoded = node.kubectl(&[
            "-n",
            NAMESPACE,
            "get",
            "secret",
            "dhcpmanager-metrics-scraper",
            "-o",
            "jsonpath={.data.token}",
        ]);
        (!encoded.trim().is_empty()).then(|| base64_decode(encoded.trim()))
    };
    node.wait_until("the scraper's token Secret is filled in", STEP, || {
        secret_token().is_some()
    });
    let (code, body) = metrics(Some(&secret_token().unwrap()));
    assert_eq!(code, "200", "the ServiceMonitor's token: {body}");
    // No address yet: the figures that exist from the start.
    assert!(
        body.contains("dhcpmanager_time_to_bound_seconds_count 0"),
        "{body}"
    );

    // --- DhcpAddresses, bound from Kea with the right hostnames -----------------------------
    node.kubectl(&["create", "namespace", "shop"]);
    for name in ADDRESSES {
        node.apply(&format!(
            "apiVersion: dhcpmanager.io/v1alpha1\nkind: DhcpAddress\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n  service: shop/{name}\n"
        ));
    }
    node.wait_until("every address Bound", STEP, || {
        ADDRESSES
            .iter()
            .all(|name| bound_ip(&address_status(&node, "shop", name)).is_some())
    });
    let held: Vec<Held> = ADDRESSES
        .iter()
        .map(|name| {
            let status = address_status(&node, "shop", name);
            assert_eq!(status["node"], NODE_NAME);
            Held {
                name,
                ip: bound_ip(&status).unwrap(),
                mac: status["mac"].as_str().expect("status.mac").to_string(),
                expires: status["expiresAt"].as_str().unwrap_or_default().to_string(),
            }
        })
        .collect();
    let leases = lab.wait_for_leases(Server::Kea, "Kea records the leases", STEP, |l| {
        held.iter().all(|h| active_lease(l, h.ip).is_some())
    });
    for h in &held {
        let recorded = active_lease(&leases, h.ip).unwrap();
        assert_eq!(recorded.mac.as_deref(), Some(h.mac.as_str()));
        assert_eq!(
            recorded.hostname.as_deref(),
            Some(format!("{}.shop", h.name).as_str())
        );
    }

    // --- the REST API's pod through its Service, from the node (kube-proxy's DNAT) -----------
    let service = node.json(&["-n", NAMESPACE, "get", "service", RELEASE]);
    let cluster_ip = service["spec"]["clusterIP"]
        .as_str()
        .expect("clusterIP")
        .to_string();
    // The chart generates a token by default; read it as its NOTES say.
    let encoded = node.kubectl(&[
        "-n",
        NAMESPACE,
        "get",
        "secret",
        &format!("{RELEASE}-auth"),
        "-o",
        "jsonpath={.data.token}",
    ]);
    let token_header = format!("X-Auth-Token: {}", base64_decode(encoded.trim()));
    let post = node
        .in_node("curl")
        .args([
            "-sS",
            "--max-time",
            "30",
            "-H",
            "Content-Type: application/json",
            "-H",
            &token_header,
        ])
        .args(["-d", r#"{"service":"shop/checkout"}"#])
        .arg(format!("http://{cluster_ip}/v1/ip"))
        .output()
        .expect("curl");
    let answer: Value = serde_json::from_slice(&post.stdout).unwrap_or_else(|_| {
        panic!(
            "POST /v1/ip through {cluster_ip}: {} {}",
            String::from_utf8_lossy(&post.stdout),
            String::from_utf8_lossy(&post.stderr)
        )
    });
    assert_eq!(answer["status"], "success", "{answer}");
    let api_ip: Ipv4Addr = answer["ip"].as_str().unwrap().parse().unwrap();
    assert!(held.iter().all(|h| h.ip != api_ip));
    lab.wait_for_leases(Server::Kea, "Kea records the API's lease", STEP, |l| {
        active_lease(l, api_ip).is_some()
    });
    let delete = node
        .in_node("curl")
        .args(["-sS", "--max-time", "30", "-X", "DELETE"])
        .args(["-H", "Content-Type: application/json", "-H", &token_header])
        .args(["-d", &format!(r#"{{"ip":"{api_ip}"}}"#)])
        .arg(format!("http://{cluster_ip}/v1/ip"))
        .output()
        .expect("curl");
    let answer: Value = serde_json::from_slice(&delete.stdout).expect("DELETE answer");
    assert_eq!(answer["status"], "success", "{answer}");
    lab.wait_for_leases(Server::Kea, "the API's address released", STEP, |l| {
        active_lease(l, api_ip).is_none()
    });

    // --- a rolling update of the DaemonSet: the lease is kept, no DISCOVER ------------------
    let old_logs = node.dir().join("agent-before-restart.log");
    let mut follower = follow_logs(&node, &first_pod, &old_logs);
    let restart_ns = now_ns();
    node.kubectl(&[
        "-n",
        NAMESPACE,
        "rollout",
        "restart",
        "daemonset/dhcpmanager-agent",
    ]);
    node.kubectl(&[
        "-n",
        NAMESPACE,
        "rollout",
        "status",
        "daemonset/dhcpmanager-agent",
        "--timeout=180s",
    ]);
    node.wait_until("a new agent pod Ready", STEP, || {
        agent_pod(&node).is_some_and(|(name, ready)| ready && name != first_pod)
    });
    let _ = follower.wait();
    let old = std::fs::read_to_string(&old_logs).unwrap_or_default();
    assert!(
        old.contains(SHUTDOWN_LINE),
        "the old agent stopped on SIGTERM without releasing; its log:\n{old}"
    );
    node.wait_until(
        "every address resumed (lease extended, same IP)",
        STEP,
        || {
            held.iter().all(|h| {
                let status = address_status(&node, "shop", h.name);
                bound_ip(&status) == Some(h.ip)
                    && status["expiresAt"].as_str().unwrap_or_default() > h.expires.as_str()
            })
        },
    );
    for h in &held {
        let status = address_status(&node, "shop", h.name);
        assert_eq!(status["mac"].as_str(), Some(h.mac.as_str()), "same MAC");
    }

    // --- uninstall as the chart's README says: addresses first, then the release, the CRDs --
    node.kubectl(&["delete", "dhcpaddresses", "--all", "-A", "--timeout=120s"]);
    node.helm(&[
        "uninstall",
        RELEASE,
        "--namespace",
        NAMESPACE,
        "--wait",
        "--timeout",
        "180s",
    ])
    .unwrap_or_else(|err| panic!("helm uninstall: {err}"));
    let crds = repo_root().join("charts/dhcpmanager/crds/dhcpmanager.io_crds.yaml");
    node.kubectl(&["delete", "-f", crds.to_str().unwrap(), "--timeout=120s"]);
    node.wait_until("every pod of the release gone", STEP, || {
        node.json(&["-n", NAMESPACE, "get", "pods"])["items"]
            .as_array()
            .is_some_and(Vec::is_empty)
    });
    let file = capture.stop(&node);

    let leases = lab.leases(Server::Kea).expect("Kea's leases");
    assert!(
        held.iter().all(|h| active_lease(&leases, h.ip).is_none()),
        "released at the server: {leases:#?}"
    );
    assert_eq!(macvlans(&node), Vec::<String>::new(), "no macvlan left");
    let left = node.kubectl(&[
        "-n",
        NAMESPACE,
        "get",
        "all,configmaps,secrets,serviceaccounts,roles,rolebindings,leases.coordination.k8s.io,networkpolicies,poddisruptionbudgets",
        "-o",
        "name",
    ]);
    let left: Vec<&str> = left
        .lines()
        .filter(|l| *l != "configmap/kube-root-ca.crt" && *l != "serviceaccount/default")
        .collect();
    assert_eq!(left, Vec::<&str>::new(), "nothing left in the namespace");

    // --- what went over the wire, per address ------------------------------------------------
    let frames = pcap::read(&file).expect("the capture");
    let link_frames = pcap::read_ethernet(&file).expect("the capture");
    for h in &held {
        let ours = mac_bytes(&h.mac);
        let from_us: Vec<_> = frames.iter().filter(|f| f.dhcp.chaddr == ours).collect();
        let count = |after: u64, kind: MessageType| {
            from_us
                .iter()
                .filter(|f| f.time_ns > after && f.message_type() == Some(kind))
                .count()
        };
        assert_eq!(
            count(restart_ns, MessageType::Discover),
            0,
            "{}: no DISCOVER after the restart: {from_us:#?}",
            h.name
        );
        assert!(
            count(0, MessageType::Discover) >= 1,
            "{}: first bind",
            h.name
        );
        assert!(
            count(restart_ns, MessageType::Request) >= 1,
            "{}: the new agent re-requested the lease",
            h.name
        );
        assert!(
            count(0, MessageType::Release) >= 1,
            "{}: DHCPRELEASE on delete",
            h.name
        );
        let ipv6 = link_frames
            .iter()
            .filter(|f| f.ethertype == pcap::ETHERTYPE_IPV6 && f.src_mac == Some(ours))
            .count();
        assert_eq!(
            ipv6, 0,
            "{}: no IPv6 from the address's MAC (router solicitations, DAD)",
            h.name
        );
    }
    node.stop();
}
