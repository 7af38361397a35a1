//! A web Deployment behind LoadBalancer Services of class `dhcpmanager.io/dhcp` on the real
//! node ([`crate::node`]), and a client on the DHCP segment reaching it: what the node Service
//! test and the node Service benchmark share.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::node::{IMAGE_REPOSITORY, IMAGE_TAG, Node, chart_values_for_the_node};
use crate::repo_root;

/// The namespace of the chart's release.
pub const RELEASE_NAMESPACE: &str = "dhcpmanager";
/// The namespace of the web Deployment and its Services.
pub const WEB_NAMESPACE: &str = "shop";
/// The Services' port (the pod listens on 8080).
pub const HTTP_PORT: u16 = 80;

/// `helm install` of our chart from the image on the node, Service controller on, REST shim off,
/// a pool of `pool_size` MACs from 02:d4:c9:00:00:00; waits for the DaemonSet.
pub fn install_chart(node: &Node, pool_size: u32) {
    node.kubectl(&["create", "namespace", RELEASE_NAMESPACE]);
    let chart = repo_root().join("charts/dhcpmanager");
    let values = chart_values_for_the_node(pool_size);
    let mut args = vec![
        "install",
        "dhcpmanager",
        chart.to_str().expect("a UTF-8 path"),
        "--namespace",
        RELEASE_NAMESPACE,
    ];
    args.extend(values.iter().map(String::as_str));
    args.extend([
        "--set",
        "agent.serviceController.enabled=true",
        "--set",
        "apiserver.enabled=false",
        "--wait",
        "--timeout",
        "180s",
    ]);
    node.helm(&args)
        .unwrap_or_else(|err| panic!("helm install: {err}"));
}

/// `helm uninstall`, waiting for the agent's pods to go.
pub fn uninstall_chart(node: &Node) {
    node.helm(&[
        "uninstall",
        "dhcpmanager",
        "--namespace",
        RELEASE_NAMESPACE,
        "--wait",
        "--timeout",
        "180s",
    ])
    .unwrap_or_else(|err| panic!("helm uninstall: {err}"));
}

fn web_yaml() -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {WEB_NAMESPACE}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
        - name: web
          image: {IMAGE_REPOSITORY}:{IMAGE_TAG}
          imagePullPolicy: Never
          # Any HTTP server will do: the standalone REST shim answers /healthz.
          command: ["dhcpmanager-apiserver"]
          args: ["--standalone", "--bind", "0.0.0.0", "--port", "8080", "--state-dir", "/tmp"]
          # Its lease manager sweeps links at start (in the pod's own network namespace).
          securityContext: {{runAsUser: 0, capabilities: {{add: [NET_ADMIN]}}}}
          ports: [{{containerPort: 8080}}]
          readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}, periodSeconds: 1}}
"#
    )
}

/// Creates the web namespace and Deployment and waits until its pod is Ready; panics with the
/// pod's description and logs after `timeout`.
pub fn deploy_web(node: &Node, timeout: Duration) {
    node.kubectl(&["create", "namespace", WEB_NAMESPACE]);
    node.apply(&web_yaml());
    let ready = || {
        node.try_kubectl(&[
            "-n",
            WEB_NAMESPACE,
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ])
        .is_ok_and(|ready| ready.trim() == "1")
    };
    let started = Instant::now();
    while !ready() {
        if started.elapsed() > timeout {
            let describe = node.try_kubectl(&["-n", WEB_NAMESPACE, "describe", "pods"]);
            let logs =
                node.try_kubectl(&["-n", WEB_NAMESPACE, "logs", "deployment/web", "--tail=30"]);
            panic!("the web pod is not Ready:\n{describe:?}\n{logs:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A Service `name` of our class in front of the web Deployment (JSON, which is YAML too).
pub fn service_manifest(name: &str) -> Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": WEB_NAMESPACE},
        "spec": {
            "type": "LoadBalancer", "loadBalancerClass": "dhcpmanager.io/dhcp",
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": 8080, "protocol": "TCP"}],
        },
    })
}

/// The first `status.loadBalancer.ingress` IP of Service `name`, if any.
pub fn ingress(node: &Node, name: &str) -> Option<Ipv4Addr> {
    let service = node
        .try_kubectl(&["-n", WEB_NAMESPACE, "get", "service", name, "-o", "json"])
        .ok()?;
    let service: Value = serde_json::from_str(&service).ok()?;
    service["status"]["loadBalancer"]["ingress"][0]["ip"]
        .as_str()?
        .parse()
        .ok()
}

/// The node's links that carry our alias (the agent's macvlans).
pub fn agent_links(node: &Node) -> Vec<String> {
    let out = node
        .in_node("ip")
        .args(["-d", "-o", "link", "show"])
        .output()
        .expect("ip link in the node");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("alias dhcpmanager:"))
        .map(str::to_string)
        .collect()
}

/// `curl http://ip/healthz` from the client namespace, giving up on one attempt after
/// `max_time`: the body on success.
pub fn curl_from_client(client: &str, ip: Ipv4Addr, max_time: Duration) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", client, "curl", "-s", "--max-time"])
        .arg(format!("{:.2}", max_time.as_secs_f64()))
        .arg(format!("http://{ip}:{HTTP_PORT}/healthz"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
