//! The Helm chart (`charts/dhcpmanager`), the Grafana dashboard and the shipped configs, checked
//! with the real tools: `helm lint`/`helm template` (helm 3.19), server-side apply to a real
//! kube-apiserver (every object validated by the server, CRDs included), RBAC probed with the
//! ServiceAccounts' own tokens, every dashboard expression parsed by `promtool`, and the
//! rendered TOML read by the agent's own configuration loader.

use dhcpmanager_tests::repo_root;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use dhcpmanager_tests::controlplane::{ControlPlane, tools_bin_dir};
use serde_json::Value;

/// The version of the test kube-apiserver. The locally built helm would otherwise assume v1.20
/// (no version stamped in), and `.Capabilities` should describe the server the tests apply to.
const KUBE_VERSION: &str = "1.34.4";

use dhcpmanager_tests::chart::SERVICE_MONITOR_CRD;

fn chart_dir() -> PathBuf {
    repo_root().join("charts/dhcpmanager")
}

fn tool(name: &str) -> PathBuf {
    let path = tools_bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} missing; build it with scripts/install-k8s-tools.sh --all",
        path.display()
    );
    path
}

fn run(command: &mut Command, stdin: Option<&str>) -> Output {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    if let Some(input) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin was piped");
        pipe.write_all(input.as_bytes()).expect("stdin written");
    }
    child.wait_with_output().expect("child waited for")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn must(command: &mut Command, stdin: Option<&str>) -> String {
    let output = run(command, stdin);
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

fn helm(args: &[&str]) -> Command {
    let mut command = Command::new(tool("helm"));
    // Keep helm away from the user's repositories, caches and plugins.
    let home = std::env::temp_dir().join(format!("dhcpmanager-helm-{}", std::process::id()));
    command
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .args(args);
    command
}

/// `helm template RELEASE charts/dhcpmanager -n NAMESPACE ARGS...`, as text.
fn template(release: &str, namespace: &str, args: &[&str]) -> Output {
    let chart = chart_dir();
    let mut all = vec![
        "template",
        release,
        chart.to_str().unwrap(),
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
    ];
    all.extend_from_slice(args);
    run(&mut helm(&all), None)
}

fn render(release: &str, namespace: &str, args: &[&str]) -> String {
    let output = template(release, namespace, args);
    assert!(
        output.status.success(),
        "helm template {args:?} failed:\n{}",
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// The rendered documents, parsed (empty documents dropped).
fn objects(yaml: &str) -> Vec<Value> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(yaml).expect("rendered YAML parses");
    documents.into_iter().filter(|d| !d.is_null()).collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| {
            let have: Vec<String> = objects
                .iter()
                .map(|o| format!("{}/{}", o["kind"], o["metadata"]["name"]))
                .collect();
            panic!("no {kind} {name} among {have:?}")
        })
}

fn kinds(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Lowercase kind (kubectl's resource prefix) and name of an object.
fn kind_and_name(object: &Value) -> (String, String) {
    (
        object["kind"].as_str().unwrap().to_lowercase(),
        object["metadata"]["name"].as_str().unwrap().to_string(),
    )
}

fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

// ---- helm lint / template ---------------------------------------------------------------

const ETCD_AUTH: &[&str] = &[
    "--set",
    "apiserver.etcd.enabled=true",
    "--set",
    "apiserver.etcd.endpoints={http://etcd-0.etcd:2379,http://etcd-1.etcd:2379}",
    "--set",
    "apiserver.auth.enabled=true",
    "--set",
    "apiserver.auth.token=0123456789abcdef-test-token",
    "--set",
    "serviceMonitor.enabled=false",
];

#[test]
fn helm_lint_passes_with_default_and_non_default_values() {
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    let mut variants: Vec<Vec<&str>> = vec![vec![]];
    variants.push(ETCD_AUTH.to_vec());
    variants.push(vec![
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "apiserver.enabled=false",
        "--set",
        "agent.macPool.create=false",
    ]);
    for extra in variants {
        let mut args = vec!["lint", "--strict", chart, "--kube-version", KUBE_VERSION];
        args.extend_from_slice(&extra);
        let out = must(&mut helm(&args), None);
        assert!(out.contains("0 chart(s) failed"), "{extra:?}: {out}");
    }
}

#[test]
fn default_values_render_least_privilege_agent_and_guarded_api() {
    let docs = objects(&render("dhcpmanager", "metallb-system", &[]));
    let kinds = kinds(&docs);
    assert!(
        !kinds.iter().any(|k| k == "ServiceMonitor"),
        "ServiceMonitor is off by default: {kinds:?}"
    );
    // Secure by default: a generated token, given to the apiserver from the Secret.
    let secret = find(&docs, "Secret", "dhcpmanager-auth");
    let token = secret["data"]["token"].as_str().expect("a token");
    let token = String::from_utf8(base64_decode(token)).unwrap();
    assert_eq!(token.len(), 48, "{token}");
    assert!(token.chars().all(|c| c.is_ascii_alphanumeric()), "{token}");
    let api = find(&docs, "Deployment", "dhcpmanager-apiserver");
    let env = api["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(
        env.contains("DHCP_AUTH_TOKEN") && env.contains("dhcpmanager-auth"),
        "{env}"
    );
    assert!(
        !kinds.iter().any(|k| k == "CustomResourceDefinition"),
        "CRDs come from crds/, not templates"
    );

    let agent = find(&docs, "DaemonSet", "dhcpmanager-agent");
    let pod = &agent["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    // DhcpAddresses may not pick their own interface, MAC or client id unless the admin says so.
    assert!(
        !pod["containers"][0]["args"]
            .to_string()
            .contains("--allow-custom-identity"),
        "{}",
        pod["containers"][0]["args"]
    );
    let allowed = objects(&render(
        "dhcpmanager",
        "metallb-system",
        &["--set", "agent.allowCustomIdentity=true"],
    ));
    let allowed = find(&allowed, "DaemonSet", "dhcpmanager-agent");
    assert!(
        allowed["spec"]["template"]["spec"]["containers"][0]["args"]
            .to_string()
            .contains("--allow-custom-identity")
    );
    assert_eq!(pod["serviceAccountName"], "dhcpmanager-agent");
    assert_eq!(pod["enableServiceLinks"], false);
    assert_eq!(
        pod["tolerations"][0]["key"],
        "node-role.kubernetes.io/control-plane"
    );
    assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "linux");
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        security["capabilities"]["add"],
        serde_json::json!(["NET_ADMIN", "NET_RAW"])
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["ports"][0]["containerPort"], 9342);
    let env = container["env"].as_array().unwrap();
    let field = |name: &str| {
        env.iter().find(|e| e["name"] == name).unwrap()["valueFrom"]["fieldRef"]["fieldPath"]
            .clone()
    };
    assert_eq!(field("NODE_NAME"), "spec.nodeName");
    assert_eq!(field("POD_NAMESPACE"), "metadata.namespace");
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "agent");
    assert!(args.contains(&"--config=/etc/dhcpmanager/dhcpmanager.toml"));
    assert!(args.contains(&"--default-pool=default"));
    assert!(
        !args
            .iter()
            .any(|a| a.contains("service-controller") || a.contains("load-balancer")),
        "the Service controller is off by default: {args:?}"
    );
    // Secure by default: /metrics asks the API server about its scrapers (the host network has
    // no NetworkPolicy), so the agent may ask, and a reader role is there to bind.
    assert!(args.contains(&"--metrics-auth=kubernetes"), "{args:?}");
    assert!(args.contains(&"--metrics-addr=0.0.0.0:9342"), "{args:?}");
    let agent_role = find(&docs, "ClusterRole", "dhcpmanager-agent");
    let rules = agent_role["rules"].as_array().unwrap();
    for (group, resource) in [
        ("authentication.k8s.io", "tokenreviews"),
        ("authorization.k8s.io", "subjectaccessreviews"),
    ] {
        let rule = rules
            .iter()
            .find(|r| r["resources"] == serde_json::json!([resource]))
            .unwrap_or_else(|| panic!("no rule for {resource}: {rules:?}"));
        assert_eq!(rule["apiGroups"], serde_json::json!([group]));
        assert_eq!(rule["verbs"], serde_json::json!(["create"]));
    }
    let reader = find(&docs, "ClusterRole", "dhcpmanager-metrics-reader");
    assert_eq!(
        reader["rules"],
        serde_json::json!([{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}])
    );
    assert!(
        !docs.iter().any(|o| o["kind"] == "ClusterRoleBinding"
            && o["metadata"]["name"] == "dhcpmanager-metrics-reader"),
        "nobody is bound to the reader role unless named"
    );

    // The fork's `url: http://dhcpmanager`: Service named after the release, 80 -> 8000.
    let service = find(&docs, "Service", "dhcpmanager");
    assert_eq!(service["spec"]["ports"][0]["port"], 80);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    let api = find(&docs, "Deployment", "dhcpmanager-apiserver");
    let api_container = &api["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(api_container["ports"][0]["containerPort"], 8000);
    assert_eq!(
        api["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
        true
    );
    assert_eq!(
        api["spec"]["template"]["spec"]["serviceAccountName"],
        "dhcpmanager-apiserver"
    );
    assert!(
        api_container["capabilities"].is_null()
            && api_container["securityContext"]["capabilities"]["add"].is_null(),
        "the REST shim needs no capability"
    );

    let policy = find(&docs, "NetworkPolicy", "dhcpmanager-apiserver");
    let from = &policy["spec"]["ingress"][0]["from"];
    assert_eq!(from.as_array().unwrap().len(), 1);
    assert_eq!(
        from[0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "metallb-system"
    );
    let pdb = find(&docs, "PodDisruptionBudget", "dhcpmanager-apiserver");
    assert_eq!(pdb["spec"]["minAvailable"], 1);

    let pool = find(&docs, "MacPool", "default");
    assert_eq!(pool["spec"]["interface"], "eth0");
    assert_eq!(pool["spec"]["ranges"][0]["count"], 256);
    assert_eq!(
        pool["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );

    let dashboard = find(&docs, "ConfigMap", "dhcpmanager-dashboard");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value =
        serde_json::from_str(dashboard["data"]["dhcpmanager.json"].as_str().unwrap())
            .expect("the dashboard in the ConfigMap is JSON");
    assert_eq!(shipped["uid"], "dhcpmanager");

    let ksm = find(&docs, "ConfigMap", "dhcpmanager-kube-state-metrics");
    let ksm_config = ksm["data"]["custom-resource-state.yaml"].as_str().unwrap();
    check_kube_state_metrics_config(ksm_config);
}

#[test]
fn etcd_and_auth_values_reach_the_apiserver() {
    let docs = objects(&render("dm", "dhcp", ETCD_AUTH));
    let secret = find(&docs, "Secret", "dm-dhcpmanager-auth");
    assert_eq!(
        secret["data"]["token"],
        "MDEyMzQ1Njc4OWFiY2RlZi10ZXN0LXRva2Vu"
    );
    let api = find(&docs, "Deployment", "dm-dhcpmanager-apiserver");
    let env = api["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    let token = env.iter().find(|e| e["name"] == "DHCP_AUTH_TOKEN").unwrap();
    assert_eq!(
        token["valueFrom"]["secretKeyRef"]["name"],
        "dm-dhcpmanager-auth"
    );
    let config = find(&docs, "ConfigMap", "dm-dhcpmanager-config");
    let toml = config["data"]["dhcpmanager.toml"].as_str().unwrap();
    let parsed = load_with_the_agents_loader(toml);
    assert_eq!(
        parsed.etcd,
        vec!["http://etcd-0.etcd:2379", "http://etcd-1.etcd:2379"]
    );
    assert_eq!(
        parsed.auth_token, None,
        "the token never goes into the ConfigMap"
    );
    assert!(!kinds(&docs).iter().any(|k| k == "ServiceMonitor"));
    // A release not named like the chart gets prefixed names; the Service is still the prefix.
    find(&docs, "Service", "dm-dhcpmanager");

    // An existing Secret replaces the generated one.
    let docs = objects(&render(
        "dm",
        "dhcp",
        &[
            "--set",
            "apiserver.auth.enabled=true",
            "--set",
            "apiserver.auth.existingSecret=site-token",
            "--set",
            "apiserver.auth.existingSecretKey=metallb",
        ],
    ));
    assert!(!kinds(&docs).iter().any(|k| k == "Secret"));
    let api = find(&docs, "Deployment", "dm-dhcpmanager-apiserver");
    let env = &api["spec"]["template"]["spec"]["containers"][0]["env"];
    let token = env
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "DHCP_AUTH_TOKEN")
        .unwrap();
    assert_eq!(token["valueFrom"]["secretKeyRef"]["name"], "site-token");
    assert_eq!(token["valueFrom"]["secretKeyRef"]["key"], "metallb");
}

#[test]
fn rendered_configuration_is_read_by_the_agents_loader() {
    let docs = objects(&render(
        "dhcpmanager",
        "metallb-system",
        &[
            "--set",
            "agent.interface=bond1",
            "--set",
            "agent.assignInterfaces=true",
            "--set",
            "agent.macPool.macs={02:aa:bb:cc:dd:01,02:aa:bb:cc:dd:02}",
            "--set",
            "apiserver.cidrs={172.58.52.0/24,172.58.53.0/24}",
            "--set",
            "apiserver.requestTimeout=7s",
            "--set",
            "agent.extraConfig.client-timeout=3s",
        ],
    ));
    let config = find(&docs, "ConfigMap", "dhcpmanager-config");
    let parsed = load_with_the_agents_loader(config["data"]["dhcpmanager.toml"].as_str().unwrap());
    assert_eq!(parsed.interface, "bond1");
    assert!(parsed.assign_interfaces);
    assert_eq!(
        parsed
            .macs
            .iter()
            .map(|m| m.to_string())
            .collect::<Vec<_>>(),
        vec!["02:aa:bb:cc:dd:01", "02:aa:bb:cc:dd:02"]
    );
    assert_eq!(parsed.cidrs, vec!["172.58.52.0/24", "172.58.53.0/24"]);
    assert_eq!(parsed.request_timeout, std::time::Duration::from_secs(7));
    assert_eq!(parsed.client_timeout, std::time::Duration::from_secs(3));
    assert!(parsed.etcd.is_empty(), "no etcd mirror by default");
    let pool = find(&docs, "MacPool", "default");
    assert_eq!(pool["spec"]["interface"], "bond1");
    assert_eq!(pool["spec"]["macs"][1], "02:aa:bb:cc:dd:02");
}

#[test]
fn schema_and_required_values_refuse_bad_input() {
    let refused = |args: &[&str], because: &str| {
        let output = template("dhcpmanager", "metallb-system", args);
        let stderr = text(&output.stderr);
        assert!(
            !output.status.success(),
            "{args:?} rendered although it should not"
        );
        assert!(
            stderr.contains(because),
            "{args:?}: expected {because:?} in:\n{stderr}"
        );
    };
    // MacPool MACs are lowercase (the CRD's pattern); the schema says so before the server does.
    refused(
        &["--set", "agent.macPool.macs={02:AA:BB:CC:DD:01}"],
        "/agent/macPool/macs/0",
    );
    // A token given by hand must not be guessable; empty means "generate one".
    refused(
        &["--set", "apiserver.auth.token=short"],
        "/apiserver/auth/token",
    );
    refused(&["--set", "agent.metricsPort=0"], "/agent/metricsPort");
    refused(&["--set", "agent.metrics.auth=open"], "/agent/metrics/auth");
    refused(
        &["--set", "agent.metrics.readers[0].name=prometheus"],
        "/agent/metrics/readers/0",
    );
    refused(&["--set", "agent.typo=1"], "typo");
    // A managed key in extraConfig would be a duplicate TOML key.
    refused(
        &["--set", "agent.extraConfig.interface=eth1"],
        "invalid propertyName 'interface'",
    );
    refused(
        &["--set", "apiserver.cidrs={192.168.0.0}"],
        "/apiserver/cidrs/0",
    );
}

#[test]
fn service_monitor_needs_its_api_and_the_value() {
    let on = ["--set", "serviceMonitor.enabled=true"];
    let without_api = render("dhcpmanager", "metallb-system", &on);
    assert!(!kinds(&objects(&without_api)).contains(&"ServiceMonitor".to_string()));
    let mut with_api = on.to_vec();
    with_api.extend_from_slice(&["--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"]);
    let docs = objects(&render("dhcpmanager", "metallb-system", &with_api));
    let monitor = find(&docs, "ServiceMonitor", "dhcpmanager-agent");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    find(&docs, "ServiceMonitor", "dhcpmanager-apiserver");
    let headless = find(&docs, "Service", "dhcpmanager-agent-metrics");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    // The agents' /metrics wants a token: the monitor sends one of a ServiceAccount that may
    // read /metrics and nothing else (it crosses the node network in plain HTTP).
    assert_eq!(
        monitor["spec"]["endpoints"][0]["authorization"],
        serde_json::json!({
            "type": "Bearer",
            "credentials": {"name": "dhcpmanager-metrics-scraper", "key": "token"}
        })
    );
    let token = find(&docs, "Secret", "dhcpmanager-metrics-scraper");
    assert_eq!(token["type"], "kubernetes.io/service-account-token");
    assert_eq!(
        token["metadata"]["annotations"]["kubernetes.io/service-account.name"],
        "dhcpmanager-metrics-scraper"
    );
    find(&docs, "ServiceAccount", "dhcpmanager-metrics-scraper");
    let binding = find(&docs, "ClusterRoleBinding", "dhcpmanager-metrics-reader");
    assert_eq!(binding["roleRef"]["name"], "dhcpmanager-metrics-reader");
    assert_eq!(
        binding["subjects"],
        serde_json::json!([{
            "kind": "ServiceAccount",
            "name": "dhcpmanager-metrics-scraper",
            "namespace": "metallb-system"
        }])
    );

    // agent.metrics.auth=none: an open endpoint, no token, no scraper, no review rights.
    let mut open = with_api.clone();
    open.extend_from_slice(&["--set", "agent.metrics.auth=none"]);
    let docs = objects(&render("dhcpmanager", "metallb-system", &open));
    let monitor = find(&docs, "ServiceMonitor", "dhcpmanager-agent");
    assert!(monitor["spec"]["endpoints"][0]["authorization"].is_null());
    for (kind, name) in [
        ("Secret", "dhcpmanager-metrics-scraper"),
        ("ServiceAccount", "dhcpmanager-metrics-scraper"),
        ("ClusterRole", "dhcpmanager-metrics-reader"),
        ("ClusterRoleBinding", "dhcpmanager-metrics-reader"),
    ] {
        assert!(
            !docs
                .iter()
                .any(|o| o["kind"] == kind && o["metadata"]["name"] == name),
            "{kind}/{name} rendered with agent.metrics.auth=none"
        );
    }
    let agent_role = find(&docs, "ClusterRole", "dhcpmanager-agent").to_string();
    assert!(!agent_role.contains("tokenreviews"), "{agent_role}");
    assert!(!agent_role.contains("subjectaccessreviews"), "{agent_role}");
    let args = container_args(find(&docs, "DaemonSet", "dhcpmanager-agent"));
    assert!(
        args.contains(&"--metrics-auth=none".to_string()),
        "{args:?}"
    );
}

#[test]
fn network_policy_follows_the_allowed_sources() {
    let render_policy = |args: &[&str]| {
        let docs = objects(&render("dhcpmanager", "metallb-system", args));
        find(&docs, "NetworkPolicy", "dhcpmanager-apiserver").clone()
    };
    let policy = render_policy(&[
        "--set",
        "apiserver.networkPolicy.allowedNamespaces={metallb-system,lb}",
        "--set",
        "apiserver.networkPolicy.allowedPodLabels.component=controller",
    ]);
    let from = policy["spec"]["ingress"][0]["from"].as_array().unwrap();
    assert_eq!(from.len(), 2);
    assert_eq!(
        from[1]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "lb"
    );
    assert_eq!(
        from[1]["podSelector"]["matchLabels"]["component"],
        "controller"
    );
    // Nobody allowed means nobody, not everybody (a rule without `from` admits all).
    let closed = render_policy(&["--set", "apiserver.networkPolicy.allowedNamespaces=null"]);
    assert_eq!(closed["spec"]["ingress"], serde_json::json!([]));
    assert_eq!(
        closed["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );
}

// ---- the real kube-apiserver ------------------------------------------------------------

fn kubectl(kubeconfig: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(tool("kubectl"));
    command.arg("--kubeconfig").arg(kubeconfig).args(args);
    command
}

fn apply_server_side(cp: &ControlPlane, yaml: &str) -> String {
    must(
        &mut kubectl(
            &cp.kubeconfig_path(),
            &[
                "apply",
                "--server-side",
                "--field-manager=chart-test",
                "-f",
                "-",
            ],
        ),
        Some(yaml),
    )
}

/// CRDs of the chart and the ServiceMonitor stand-in, established. Idempotent per binary.
fn install_crds(cp: &ControlPlane) {
    static ONCE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = ONCE.lock().unwrap_or_else(|p| p.into_inner());
    if *done {
        return;
    }
    let crds = std::fs::read_to_string(chart_dir().join("crds/dhcpmanager.io_crds.yaml"))
        .expect("the chart's CRDs exist");
    apply_server_side(cp, &crds);
    apply_server_side(cp, SERVICE_MONITOR_CRD);
    must(
        &mut kubectl(
            &cp.kubeconfig_path(),
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/dhcpaddresses.dhcpmanager.io",
                "crd/macpools.dhcpmanager.io",
                "crd/servicemonitors.monitoring.coreos.com",
            ],
        ),
        None,
    );
    *done = true;
}

/// Renders a release into a fresh namespace and applies it server-side; returns (namespace,
/// release, rendered objects).
fn install(cp: &ControlPlane, extra: &[&str]) -> (String, String, Vec<Value>) {
    install_crds(cp);
    let namespace = cp.create_namespace("chart").expect("namespace created");
    let release = unique("dm");
    let pool = unique("pool");
    let pool_value = format!("agent.defaultPool={pool}");
    let mut args = vec![
        "--api-versions",
        "monitoring.coreos.com/v1/ServiceMonitor",
        "--set",
        &pool_value,
    ];
    args.extend_from_slice(extra);
    let yaml = render(&release, &namespace, &args);
    let applied = apply_server_side(cp, &yaml);
    let docs = objects(&yaml);
    for object in &docs {
        let (kind, name) = kind_and_name(object);
        assert!(
            applied.lines().any(
                |l| l.starts_with(&kind) && l.ends_with(&format!("/{name} serverside-applied"))
            ),
            "{kind}/{name} missing from:\n{applied}"
        );
    }
    (namespace, release, docs)
}

#[test]
fn chart_applies_server_side_with_default_and_non_default_values() {
    let cp = ControlPlane::shared();
    for extra in [
        vec!["--set", "serviceMonitor.enabled=true"],
        ETCD_AUTH.to_vec(),
    ] {
        let (namespace, release, docs) = install(cp, &extra);
        // What the server stored is what was rendered (nothing pruned or defaulted away).
        let stored = must(
            &mut kubectl(
                &cp.kubeconfig_path(),
                &[
                    "-n",
                    &namespace,
                    "get",
                    "daemonset,deployment,service,configmap,serviceaccount,role,rolebinding,poddisruptionbudget,networkpolicy,servicemonitor,secret",
                    "-o",
                    "name",
                ],
            ),
            None,
        );
        for object in docs
            .iter()
            .filter(|o| o["metadata"]["namespace"].is_string())
        {
            let (kind, name) = kind_and_name(object);
            assert!(
                stored
                    .lines()
                    .any(|l| l.starts_with(&kind) && l.ends_with(&format!("/{name}"))),
                "{kind}/{name} not stored in {namespace} ({release}):\n{stored}"
            );
        }
        let pool = docs
            .iter()
            .find(|o| o["kind"] == "MacPool")
            .expect("a MacPool is rendered");
        let pool_name = pool["metadata"]["name"].as_str().unwrap();
        let free = must(
            &mut kubectl(
                &cp.kubeconfig_path(),
                &[
                    "get",
                    "macpool",
                    pool_name,
                    "-o",
                    "jsonpath={.spec.ranges[0].count}",
                ],
            ),
            None,
        );
        assert_eq!(free, "256");
    }
}

/// `kubectl auth can-i` as the ServiceAccount's own token (not impersonation). `resource` may
/// name a subresource as `resource/sub` (kubectl would read that as an object name), or a
/// non-resource URL as `/path`.
fn can_i(kubeconfig: &Path, namespace: &str, verb: &str, resource: &str) -> bool {
    let (resource, subresource) = match resource.split_once('/') {
        Some((resource, sub)) if !resource.is_empty() => {
            (resource, Some(format!("--subresource={sub}")))
        }
        _ => (resource, None),
    };
    let mut args = vec!["auth", "can-i", "-n", namespace, verb, resource];
    if let Some(sub) = &subresource {
        args.push(sub);
    }
    let output = run(&mut kubectl(kubeconfig, &args), None);
    let answer = text(&output.stdout);
    match answer.trim() {
        "yes" => true,
        "no" => false,
        other => panic!("can-i {args:?}: {other:?} {}", text(&output.stderr)),
    }
}

/// Asserts that `kubeconfig` may (or, with `allowed` false, may not) do each (namespace, verb,
/// resource); the message names `who`.
fn assert_access(kubeconfig: &Path, who: &str, allowed: bool, rules: &[(&String, &str, &str)]) {
    let must = if allowed { "must" } else { "must not" };
    for (ns, verb, resource) in rules {
        assert_eq!(
            can_i(kubeconfig, ns, verb, resource),
            allowed,
            "{who} {must} {verb} {resource} in {ns}"
        );
    }
}

#[test]
fn service_accounts_can_do_their_job_and_nothing_more() {
    let cp = ControlPlane::shared();
    let (namespace, release, _) =
        install(cp, &["--set", "kubeStateMetrics.serviceAccount.name=ksm"]);
    let elsewhere = cp.create_namespace("chart-other").unwrap();
    let agent = cp
        .service_account_kubeconfig(&namespace, &format!("{release}-dhcpmanager-agent"))
        .unwrap();
    let api = cp
        .service_account_kubeconfig(&namespace, &format!("{release}-dhcpmanager-apiserver"))
        .unwrap();

    let agent_may = [
        (&elsewhere, "get", "dhcpaddresses.dhcpmanager.io"),
        (&elsewhere, "list", "dhcpaddresses.dhcpmanager.io"),
        (&elsewhere, "watch", "dhcpaddresses.dhcpmanager.io"),
        (&elsewhere, "patch", "dhcpaddresses.dhcpmanager.io"),
        (&elsewhere, "update", "dhcpaddresses.dhcpmanager.io"),
        (&elsewhere, "patch", "dhcpaddresses.dhcpmanager.io/status"),
        (&elsewhere, "update", "dhcpaddresses.dhcpmanager.io/status"),
        (&namespace, "create", "macpools.dhcpmanager.io"),
        (&namespace, "watch", "macpools.dhcpmanager.io"),
        (&namespace, "update", "macpools.dhcpmanager.io/status"),
        (&elsewhere, "create", "events.events.k8s.io"),
        (&namespace, "create", "leases.coordination.k8s.io"),
        (&namespace, "update", "leases.coordination.k8s.io"),
        (&namespace, "watch", "leases.coordination.k8s.io"),
        // agent.metrics.auth=kubernetes (the default): who a /metrics scraper is, and whether
        // it may read.
        (&namespace, "create", "tokenreviews.authentication.k8s.io"),
        (
            &namespace,
            "create",
            "subjectaccessreviews.authorization.k8s.io",
        ),
    ];
    assert_access(&agent, "agent", true, &agent_may);
    let agent_must_not = [
        (&elsewhere, "delete", "dhcpaddresses.dhcpmanager.io"),
        (&elsewhere, "create", "dhcpaddresses.dhcpmanager.io"),
        (&namespace, "delete", "macpools.dhcpmanager.io"),
        (&namespace, "update", "macpools.dhcpmanager.io"),
        (&namespace, "get", "secrets"),
        (&namespace, "list", "configmaps"),
        (&elsewhere, "create", "leases.coordination.k8s.io"),
        (&namespace, "delete", "leases.coordination.k8s.io"),
        (&namespace, "create", "pods"),
    ];
    assert_access(&agent, "agent", false, &agent_must_not);

    let api_may = [
        (&elsewhere, "create", "dhcpaddresses.dhcpmanager.io"),
        (&elsewhere, "delete", "dhcpaddresses.dhcpmanager.io"),
        (&elsewhere, "watch", "dhcpaddresses.dhcpmanager.io"),
        (&namespace, "patch", "macpools.dhcpmanager.io"),
        (&namespace, "create", "macpools.dhcpmanager.io"),
    ];
    assert_access(&api, "apiserver", true, &api_may);
    let api_must_not = [
        (&elsewhere, "patch", "dhcpaddresses.dhcpmanager.io/status"),
        (&elsewhere, "update", "dhcpaddresses.dhcpmanager.io"),
        (&namespace, "update", "macpools.dhcpmanager.io/status"),
        (&namespace, "get", "secrets"),
        (&namespace, "create", "leases.coordination.k8s.io"),
        (&namespace, "create", "events.events.k8s.io"),
    ];
    assert_access(&api, "apiserver", false, &api_must_not);

    // kube-state-metrics, bound by the chart: reads DhcpAddresses and MacPools, nothing else.
    let ksm = cp.service_account_kubeconfig(&namespace, "ksm").unwrap();
    for resource in ["dhcpaddresses.dhcpmanager.io", "macpools.dhcpmanager.io"] {
        assert!(can_i(&ksm, &elsewhere, "list", resource));
        assert!(can_i(&ksm, &elsewhere, "watch", resource));
        assert!(!can_i(&ksm, &elsewhere, "update", resource));
    }
    assert!(!can_i(&ksm, &namespace, "list", "secrets"));

    // Real requests with the tokens, not only access reviews.
    let address = format!(
        "apiVersion: dhcpmanager.io/v1alpha1\nkind: DhcpAddress\nmetadata:\n  name: web\n  namespace: {elsewhere}\nspec:\n  service: {elsewhere}/web\n"
    );
    must(&mut kubectl(&api, &["create", "-f", "-"]), Some(&address));
    let refused = run(
        &mut kubectl(&agent, &["-n", &elsewhere, "delete", "dhcpaddress", "web"]),
        None,
    );
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("forbidden"),
        "{}",
        text(&refused.stderr)
    );
    let status_patch = run(
        &mut kubectl(
            &api,
            &[
                "-n",
                &elsewhere,
                "patch",
                "dhcpaddress",
                "web",
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status":{"phase":"Bound"}}"#,
            ],
        ),
        None,
    );
    assert!(!status_patch.status.success());
    assert!(text(&status_patch.stderr).contains("forbidden"));
    must(
        &mut kubectl(
            &agent,
            &[
                "-n",
                &elsewhere,
                "patch",
                "dhcpaddress",
                "web",
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status":{"phase":"Pending"}}"#,
            ],
        ),
        None,
    );
    let secrets = run(
        &mut kubectl(&agent, &["-n", &namespace, "get", "secrets"]),
        None,
    );
    assert!(text(&secrets.stderr).contains("forbidden"));
    let lease = format!(
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: node-a\n  namespace: {namespace}\nspec:\n  holderIdentity: node-a\n  leaseDurationSeconds: 40\n"
    );
    must(&mut kubectl(&agent, &["create", "-f", "-"]), Some(&lease));
    must(
        &mut kubectl(&api, &["-n", &elsewhere, "delete", "dhcpaddress", "web"]),
        None,
    );
}

/// `agent.metrics.readers` may get the agents' /metrics (and nothing more); the agent may ask the
/// API server about scrapers only while `agent.metrics.auth` is `kubernetes`.
#[test]
fn metrics_readers_are_bound_and_review_rights_follow_the_auth_mode() {
    let cp = ControlPlane::shared();
    let (namespace, _, docs) = install(
        cp,
        &[
            "--set",
            "agent.metrics.readers[0].kind=ServiceAccount",
            "--set",
            "agent.metrics.readers[0].name=prom",
        ],
    );
    assert!(
        docs.iter().any(|o| o["kind"] == "ClusterRoleBinding"
            && o["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("-metrics-reader"))),
        "the readers' binding is rendered"
    );
    let prom = cp.service_account_kubeconfig(&namespace, "prom").unwrap();
    assert!(can_i(&prom, &namespace, "get", "/metrics"));
    assert!(!can_i(&prom, &namespace, "list", "pods"));
    assert!(!can_i(&prom, &namespace, "get", "secrets"));
    let other = cp.service_account_kubeconfig(&namespace, "other").unwrap();
    assert!(!can_i(&other, &namespace, "get", "/metrics"));

    let (namespace, release, _) = install(cp, &["--set", "agent.metrics.auth=none"]);
    let agent = cp
        .service_account_kubeconfig(&namespace, &format!("{release}-dhcpmanager-agent"))
        .unwrap();
    assert_access(
        &agent,
        "agent with agent.metrics.auth=none",
        false,
        &[
            (&namespace, "create", "tokenreviews.authentication.k8s.io"),
            (
                &namespace,
                "create",
                "subjectaccessreviews.authorization.k8s.io",
            ),
        ],
    );
}

/// `agent.serviceController.enabled` adds exactly what the Service controller needs: read
/// Services, write their status, create and delete DhcpAddresses; never write a Service itself.
#[test]
fn the_service_controller_value_grows_the_agent_rbac_by_its_needs_only() {
    let cp = ControlPlane::shared();
    let (namespace, release, docs) =
        install(cp, &["--set", "agent.serviceController.enabled=true"]);
    let args = container_args(find(
        &docs,
        "DaemonSet",
        &format!("{release}-dhcpmanager-agent"),
    ));
    assert!(
        args.contains(&"--service-controller".to_string()),
        "{args:?}"
    );
    assert!(
        !args.contains(&"--default-load-balancer".to_string()),
        "{args:?}"
    );
    let elsewhere = cp.create_namespace("chart-svc").unwrap();
    let agent = cp
        .service_account_kubeconfig(&namespace, &format!("{release}-dhcpmanager-agent"))
        .unwrap();
    let may = [
        (&elsewhere, "get", "services"),
        (&elsewhere, "list", "services"),
        (&elsewhere, "watch", "services"),
        (&elsewhere, "patch", "services/status"),
        (&elsewhere, "update", "services/status"),
        (&elsewhere, "create", "dhcpaddresses.dhcpmanager.io"),
        (&elsewhere, "delete", "dhcpaddresses.dhcpmanager.io"),
        (&elsewhere, "create", "events.events.k8s.io"),
        (&elsewhere, "patch", "events.events.k8s.io"),
    ];
    assert_access(&agent, "agent with the Service controller", true, &may);
    let must_not = [
        (&elsewhere, "create", "services"),
        (&elsewhere, "update", "services"),
        (&elsewhere, "patch", "services"),
        (&elsewhere, "delete", "services"),
        (&elsewhere, "list", "endpointslices.discovery.k8s.io"),
        (&elsewhere, "list", "pods"),
        (&elsewhere, "get", "secrets"),
        (&namespace, "delete", "macpools.dhcpmanager.io"),
    ];
    assert_access(
        &agent,
        "agent with the Service controller",
        false,
        &must_not,
    );
}

// ---- dashboard, kube-state-metrics, examples --------------------------------------------

fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo_root().join("dashboards/dhcpmanager.json")).unwrap();
    serde_json::from_str(&text).expect("dashboards/dhcpmanager.json is JSON")
}

fn expressions(dashboard: &Value) -> Vec<String> {
    let mut found = Vec::new();
    fn walk(value: &Value, found: &mut Vec<String>) {
        match value {
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
    walk(dashboard, &mut found);
    found
}

/// Grafana interpolates its variables before Prometheus sees the query; do the same.
fn interpolate(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__range", "1h")
        .replace("$node", ".*")
}

#[test]
fn chart_ships_the_dashboard_unchanged() {
    let top = std::fs::read(repo_root().join("dashboards/dhcpmanager.json")).unwrap();
    let copy = std::fs::read(chart_dir().join("files/dhcpmanager.json")).unwrap();
    assert!(
        top == copy,
        "charts/dhcpmanager/files/dhcpmanager.json differs from dashboards/dhcpmanager.json: copy it over"
    );
}

#[test]
fn dashboard_uses_the_metric_names_the_binaries_export() {
    let exprs = expressions(&dashboard());
    assert!(exprs.len() >= 10, "{exprs:?}");
    // The agent registers its own metrics and the engine's (one set of names for both front
    // ends, also on the standalone apiserver).
    let agent = ["operator/src/agent/metrics.rs", "engine/src/metrics.rs"]
        .map(|path| std::fs::read_to_string(repo_root().join(path)).unwrap())
        .concat();
    let api = std::fs::read_to_string(repo_root().join("apiserver/src/http/metrics.rs")).unwrap();
    let counters = [
        "renewals",
        "naks",
        "lease_expirations",
        "ip_changes",
        "failures",
        "packets_sent",
        "packets_received",
        "replies_rejected",
    ];
    let mut used = std::collections::BTreeSet::new();
    for expr in &exprs {
        for (start, _) in expr.match_indices("dhcpmanager_") {
            let name: String = expr[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if let Some(base) = name.strip_prefix("dhcpmanager_apiserver_") {
                let registered = base
                    .strip_suffix("_total")
                    .or_else(|| base.strip_suffix("_bucket"))
                    .unwrap_or(base);
                assert!(
                    api.contains(&format!("\"{registered}\"")),
                    "{name}: {registered} is not registered in apiserver/src/http/metrics.rs"
                );
                continue;
            }
            let base = name.trim_start_matches("dhcpmanager_");
            // The text exposition's suffixes: _total on counters, _bucket on histograms.
            let registered = if let Some(counter) = base.strip_suffix("_total") {
                assert!(counters.contains(&counter), "{name} is not a counter");
                counter
            } else if let Some(histogram) = base.strip_suffix("_bucket") {
                histogram
            } else {
                assert!(
                    !counters.contains(&base),
                    "{name}: counters are exported with _total"
                );
                base
            };
            assert!(
                agent.contains(&format!("\"{registered}\"")),
                "{name}: {registered} is not registered in operator/src/agent/metrics.rs \
                 or engine/src/metrics.rs"
            );
            used.insert(registered.to_string());
        }
    }
    for wanted in [
        "addresses",
        "time_to_bound_seconds",
        "renewals",
        "failures",
        "naks",
        "lease_expiry_timestamp_seconds",
    ] {
        assert!(used.contains(wanted), "the dashboard shows no {wanted}");
    }
    assert!(exprs.iter().any(|e| e.contains("histogram_quantile")));
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("dhcpmanager_lease_expiry_timestamp_seconds")
                && e.contains("time()")
                && e.contains("3600"))
    );
    assert!(exprs.iter().any(|e| e.contains("by (node)")));
}

#[test]
fn every_dashboard_expression_parses_with_promtool() {
    let promtool = tool("promtool");
    let exprs = expressions(&dashboard());
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, expr)| serde_json::json!({"record": format!("dashboard:expr_{i}"), "expr": interpolate(expr)}))
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dhcpmanager-dashboard", "rules": rules}]});
    let path = std::env::temp_dir().join(format!("{}.rules.json", unique("dhcpmanager-dashboard")));
    std::fs::write(&path, serde_json::to_string_pretty(&file).unwrap()).unwrap();
    let output = run(
        Command::new(promtool).arg("check").arg("rules").arg(&path),
        None,
    );
    let _ = std::fs::remove_file(&path);
    let said = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "promtool refused:\n{said}");
    assert!(
        said.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{said}"
    );

    // The check has teeth: a broken expression is refused.
    let broken = serde_json::json!({"groups": [{"name": "broken", "rules": [{"record": "x:y", "expr": "sum by (le (rate(x[5m]))"}]}]});
    let path = std::env::temp_dir().join(format!("{}.rules.json", unique("dhcpmanager-broken")));
    std::fs::write(&path, broken.to_string()).unwrap();
    let output = run(
        Command::new(tool("promtool"))
            .arg("check")
            .arg("rules")
            .arg(&path),
        None,
    );
    let _ = std::fs::remove_file(&path);
    assert!(!output.status.success());
}

/// kube-state-metrics could not be built here (the Go module proxy refuses it), so its
/// CustomResourceState config is checked for shape against the CRDs it reads.
fn check_kube_state_metrics_config(yaml: &str) {
    let config: Value = serde_saphyr::from_str(yaml).expect("the KSM config is YAML");
    assert_eq!(config["kind"], "CustomResourceStateMetrics");
    let crds = std::fs::read_to_string(chart_dir().join("crds/dhcpmanager.io_crds.yaml")).unwrap();
    let crds: Vec<Value> = serde_saphyr::from_multiple(&crds).unwrap();
    let resources = config["spec"]["resources"].as_array().unwrap();
    let mut read = std::collections::BTreeMap::<String, Vec<String>>::new();
    for resource in resources {
        let gvk = &resource["groupVersionKind"];
        assert_eq!(gvk["group"], "dhcpmanager.io");
        let kind = gvk["kind"].as_str().unwrap();
        let crd = crds
            .iter()
            .find(|c| c["spec"]["names"]["kind"] == kind)
            .unwrap_or_else(|| panic!("no CRD of kind {kind}"));
        let served = crd["spec"]["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == gvk["version"] && v["served"] == true)
            .unwrap_or_else(|| panic!("{kind}: the KSM config names an unserved version"));
        let status = &served["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
        let mut paths = Vec::new();
        for metric in resource["metrics"].as_array().unwrap() {
            let each = &metric["each"];
            let type_ = each["type"].as_str().unwrap();
            assert!(["Gauge", "StateSet", "Info"].contains(&type_), "{type_}");
            let body = &each[type_[..1].to_lowercase() + &type_[1..]];
            assert!(body.is_object(), "{metric}: no {type_} body");
            if let Some(path) = body["path"].as_array() {
                paths.push(path.clone());
            }
            if let Some(labels) = body["labelsFromPath"].as_object() {
                paths.extend(labels.values().filter_map(|p| p.as_array().cloned()));
            }
            if type_ == "StateSet" {
                let field = body["path"][1].as_str().unwrap();
                assert_eq!(
                    body["list"], status[field]["enum"],
                    "{kind}: the StateSet lists exactly the CRD's values of status.{field}"
                );
            }
        }
        for path in &paths {
            assert_eq!(path[0], "status", "{path:?}");
            let field = path[1].as_str().unwrap();
            assert!(
                status[field].is_object(),
                "{kind}: status.{field} is not in the CRD"
            );
        }
        read.insert(
            kind.to_string(),
            paths
                .iter()
                .map(|p| p[1].as_str().unwrap().to_string())
                .collect(),
        );
    }
    let address = &read["DhcpAddress"];
    for field in ["phase", "expiresAt", "renewAt"] {
        assert!(
            address.iter().any(|f| f == field),
            "no metric from status.{field}"
        );
    }
}

#[test]
fn kube_state_metrics_config_reads_fields_the_crd_has() {
    let yaml = std::fs::read_to_string(chart_dir().join("files/kube-state-metrics.yaml")).unwrap();
    check_kube_state_metrics_config(&yaml);
}

fn load_with_the_agents_loader(toml: &str) -> dhcpmanager_engine::config::Config {
    let path = std::env::temp_dir().join(format!("{}.toml", unique("dhcpmanager-chart-config")));
    std::fs::write(&path, toml).unwrap();
    let loaded = dhcpmanager_engine::config::Config::load(
        dhcpmanager_engine::config::Source::Explicit(&path),
        std::iter::empty(),
        &[],
    );
    let _ = std::fs::remove_file(&path);
    loaded.unwrap_or_else(|e| panic!("{e}:\n{toml}"))
}

#[test]
fn examples_parse() {
    let standalone = std::fs::read_to_string(repo_root().join("examples/standalone.toml")).unwrap();
    let config = load_with_the_agents_loader(&standalone);
    assert!(config.standalone);
    assert!(!config.macs.is_empty());

    let fork: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo_root().join("examples/metallb-fork-config.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(fork["kind"], "ConfigMap");
    assert_eq!(fork["metadata"]["namespace"], "metallb-system");
    let inner: Value = serde_saphyr::from_str(fork["data"]["config"].as_str().unwrap()).unwrap();
    let service = &inner["address-services"][0];
    assert_eq!(service["url"], "http://dhcpmanager");
    assert_eq!(service["protocol"], "layer2");
    // The fork at its branch tip takes its CIDR list from `cidrs` alone: without it, nothing
    // we hand out is accepted. Each entry must parse as Go's net.ParseCIDR does.
    let cidrs = service["cidrs"].as_array().expect("cidrs set");
    assert!(!cidrs.is_empty());
    for cidr in cidrs {
        let (ip, len) = cidr.as_str().unwrap().split_once('/').expect("a CIDR");
        ip.parse::<std::net::Ipv4Addr>().expect("an IPv4 network");
        assert!(len.parse::<u8>().unwrap() <= 32, "{cidr}");
    }

    let service_example =
        std::fs::read_to_string(repo_root().join("examples/service-dhcpaddress.yaml")).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&service_example).unwrap();
    let service = docs.iter().find(|d| d["kind"] == "Service").unwrap();
    let address = docs.iter().find(|d| d["kind"] == "DhcpAddress").unwrap();
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    assert_eq!(
        address["spec"]["service"],
        format!(
            "{}/{}",
            service["metadata"]["namespace"].as_str().unwrap(),
            service["metadata"]["name"].as_str().unwrap()
        )
    );

    let compose: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo_root().join("deploy/docker-compose.yml")).unwrap(),
    )
    .unwrap();
    let dhcpmanager = &compose["services"]["dhcpmanager"];
    assert_eq!(dhcpmanager["network_mode"], "host");
    assert_eq!(
        dhcpmanager["cap_add"],
        serde_json::json!(["NET_ADMIN", "NET_RAW"])
    );

    for file in ["systemd-networkd.conf", "NetworkManager.conf"] {
        let text =
            std::fs::read_to_string(repo_root().join("examples/host-dhcp").join(file)).unwrap();
        assert!(text.contains("dm*"), "{file} must match our links by name");
    }
}

#[test]
fn service_example_applies_server_side() {
    let cp = ControlPlane::shared();
    install_crds(cp);
    let namespace = cp.create_namespace("chart-example").unwrap();
    let example =
        std::fs::read_to_string(repo_root().join("examples/service-dhcpaddress.yaml")).unwrap();
    // The example's namespace, renamed to this test's own.
    let docs: Vec<Value> = serde_saphyr::from_multiple(&example).unwrap();
    let original = docs[0]["metadata"]["namespace"]
        .as_str()
        .unwrap()
        .to_string();
    let renamed = example
        .replace(&format!("{original}/"), &format!("{namespace}/"))
        .replace(
            &format!("namespace: {original}"),
            &format!("namespace: {namespace}"),
        );
    let out = apply_server_side(cp, &renamed);
    assert!(out.contains("dhcpaddress.dhcpmanager.io/"), "{out}");
    assert!(out.contains("service/"), "{out}");
    // NOTES.txt points users at this example.
    let notes = std::fs::read_to_string(chart_dir().join("templates/NOTES.txt")).unwrap();
    assert!(notes.contains("examples/service-dhcpaddress.yaml"));
}

/// The Service controller's example: accepted by the API server, and its annotations are the
/// documented ones, read by the controller without complaint.
#[test]
fn load_balancer_example_applies_and_its_annotations_are_understood() {
    let cp = ControlPlane::shared();
    let namespace = cp.create_namespace("chart-lb-example").unwrap();
    let example =
        std::fs::read_to_string(repo_root().join("examples/service-loadbalancer.yaml")).unwrap();
    let renamed = example.replace("namespace: shop", &format!("namespace: {namespace}"));
    let out = apply_server_side(cp, &renamed);
    assert!(
        out.contains("service/storefront serverside-applied"),
        "{out}"
    );
    let stored: k8s_openapi::api::core::v1::Service = serde_json::from_str(
        &String::from_utf8(
            run(
                &mut kubectl(
                    &cp.kubeconfig_path(),
                    &[
                        "-n",
                        &namespace,
                        "get",
                        "service",
                        "storefront",
                        "-o",
                        "json",
                    ],
                ),
                None,
            )
            .stdout,
        )
        .unwrap(),
    )
    .unwrap();
    use dhcpmanager_operator::service::desired;
    assert_eq!(desired::classify(&stored, false), desired::Verdict::Serve);
    let address = desired::desired_address(&stored).expect("the example's annotations parse");
    assert_eq!(address.spec.mac_pool_ref.as_deref(), Some("default"));
    assert_eq!(
        address.spec.requested_ip,
        Some(std::net::Ipv4Addr::new(192, 168, 1, 80))
    );
    assert_eq!(address.hostname(), format!("storefront.{namespace}"));
}

/// The path users take: `helm install` (CRDs from crds/ first), `helm upgrade` with new values,
/// Standard base64 (as Kubernetes writes Secret data), for the tests' own reading.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {text}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut bytes = Vec::new();
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &d)| acc | (u32::from(d) << (18 - 6 * i)));
        bytes.extend(&n.to_be_bytes()[1..chunk.len()]);
    }
    bytes
}

/// Installed with the defaults, the chart generates a token, its NOTES tell how to read it for
/// the fork, and an upgrade keeps it (the fork's ConfigMap still holds the old one).
#[test]
fn generated_auth_token_survives_an_upgrade() {
    let cp = ControlPlane::shared();
    install_crds(cp);
    let namespace = cp.create_namespace("chart-token").unwrap();
    let release = unique("tok");
    let kubeconfig = cp.kubeconfig_path();
    let kubeconfig = kubeconfig.to_str().unwrap();
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    let pool_value = format!("agent.defaultPool={}", unique("pool"));
    let secret = format!("{release}-dhcpmanager-auth");
    let token = || {
        let encoded = must(
            &mut kubectl(
                &cp.kubeconfig_path(),
                &[
                    "-n",
                    &namespace,
                    "get",
                    "secret",
                    &secret,
                    "-o",
                    "jsonpath={.data.token}",
                ],
            ),
            None,
        );
        String::from_utf8(base64_decode(encoded.trim())).unwrap()
    };
    let installed = must(
        &mut helm(&[
            "install",
            &release,
            chart,
            "--kubeconfig",
            kubeconfig,
            "--namespace",
            &namespace,
            "--set",
            &pool_value,
        ]),
        None,
    );
    assert!(
        installed.contains(&format!(
            "get secret {secret} -o jsonpath='{{.data.token}}' | base64 -d"
        )),
        "{installed}"
    );
    assert!(installed.contains("X-Auth-Token"), "{installed}");
    let first = token();
    assert_eq!(first.len(), 48, "{first}");
    let upgraded = must(
        &mut helm(&[
            "upgrade",
            &release,
            chart,
            "--kubeconfig",
            kubeconfig,
            "--namespace",
            &namespace,
            "--reuse-values",
            "--set",
            "apiserver.replicas=2",
        ]),
        None,
    );
    assert!(upgraded.contains("REVISION: 2"), "{upgraded}");
    assert_eq!(
        token(),
        first,
        "an upgrade keeps the token the fork was given"
    );
    must(
        &mut helm(&[
            "uninstall",
            &release,
            "--kubeconfig",
            kubeconfig,
            "--namespace",
            &namespace,
        ]),
        None,
    );
}

/// `helm uninstall`, against the real kube-apiserver.
#[test]
fn helm_install_upgrade_and_uninstall() {
    let cp = ControlPlane::shared();
    install_crds(cp);
    let namespace = cp.create_namespace("chart-helm").unwrap();
    let release = unique("rel");
    let pool = unique("pool");
    let kubeconfig = cp.kubeconfig_path();
    let kubeconfig = kubeconfig.to_str().unwrap();
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    let pool_value = format!("agent.defaultPool={pool}");
    let installed = must(
        &mut helm(&[
            "install",
            &release,
            chart,
            "--kubeconfig",
            kubeconfig,
            "--namespace",
            &namespace,
            "--set",
            &pool_value,
            "--set",
            "apiserver.auth.enabled=true",
            "--set",
            "apiserver.auth.token=0123456789abcdef-install",
        ]),
        None,
    );
    assert!(installed.contains("STATUS: deployed"), "{installed}");
    // NOTES.txt: where MetalLB finds the API, and the CRD upgrade step.
    let service = format!("{release}-dhcpmanager");
    assert!(
        installed.contains(&format!("url: http://{service}.{namespace}.svc")),
        "{installed}"
    );
    assert!(
        installed.contains("kubectl apply --server-side"),
        "{installed}"
    );
    assert!(
        installed.contains("auth-token: <the token in Secret"),
        "{installed}"
    );
    assert!(
        installed.contains(&format!(
            "bind your scraper to ClusterRole {service}-metrics-reader"
        )),
        "{installed}"
    );

    let upgraded = must(
        &mut helm(&[
            "upgrade",
            &release,
            chart,
            "--kubeconfig",
            kubeconfig,
            "--namespace",
            &namespace,
            "--reuse-values",
            "--set",
            "agent.interface=bond1",
            "--set",
            "apiserver.replicas=3",
        ]),
        None,
    );
    assert!(upgraded.contains("REVISION: 2"), "{upgraded}");
    let get = |args: &[&str]| must(&mut kubectl(&cp.kubeconfig_path(), args), None);
    let replicas = get(&[
        "-n",
        &namespace,
        "get",
        "deployment",
        &format!("{release}-dhcpmanager-apiserver"),
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(replicas, "3");
    let config = get(&[
        "-n",
        &namespace,
        "get",
        "configmap",
        &format!("{release}-dhcpmanager-config"),
        "-o",
        "jsonpath={.data.dhcpmanager\\.toml}",
    ]);
    assert!(config.contains("interface = \"bond1\""), "{config}");
    let interface = get(&["get", "macpool", &pool, "-o", "jsonpath={.spec.interface}"]);
    assert_eq!(interface, "bond1");

    must(
        &mut helm(&[
            "uninstall",
            &release,
            "--kubeconfig",
            kubeconfig,
            "--namespace",
            &namespace,
        ]),
        None,
    );
    let left = get(&[
        "-n",
        &namespace,
        "get",
        "deployment,daemonset,secret",
        "-o",
        "name",
    ]);
    assert!(left.trim().is_empty(), "left behind: {left}");
    // The pool's status maps live leases to MACs: uninstall keeps it.
    get(&["get", "macpool", &pool]);
    get(&["delete", "macpool", &pool]);
}

/// Runs `binary` with a rendered container's args (config path swapped for `config`) until it
/// exits or `patience` passes (then it is killed by PID: it got past its flags and config).
/// Returns its stderr and whether it exited on its own.
fn run_rendered(
    binary: &Path,
    args: &[String],
    config: &Path,
    env: &[(&str, &str)],
    patience: std::time::Duration,
) -> (String, bool) {
    let args: Vec<String> = args
        .iter()
        .map(|a| match a.strip_prefix("--config=") {
            Some(_) => format!("--config={}", config.display()),
            None => a.clone(),
        })
        .collect();
    let stderr_path = config.with_extension("stderr");
    let mut command = Command::new(binary);
    command
        .args(&args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        // Nowhere to find a cluster: no kubeconfig, no in-cluster variables.
        .env("KUBECONFIG", config.with_extension("no-kubeconfig"))
        .env("HOME", config.with_extension("no-home"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    let mut child = command.spawn().expect("binary starts");
    let deadline = std::time::Instant::now() + patience;
    let exited = loop {
        if child.try_wait().unwrap().is_some() {
            break true;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let _ = std::fs::remove_file(&stderr_path);
    (stderr, exited)
}

fn container_args(workload: &Value) -> Vec<String> {
    workload["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// The flags and the configuration file the chart hands the binaries are the ones they accept.
#[test]
fn binaries_accept_the_rendered_flags_and_configuration() {
    let release = "dhcpmanager";
    let docs = objects(&render(
        release,
        "metallb-system",
        &[
            "--set",
            "agent.leaseDuration=30s",
            "--set",
            "agent.renewInterval=5s",
            "--set",
            "agent.takeoverGrace=5s",
            "--set",
            "agent.resync=2m",
            "--set",
            "agent.rate=50",
            "--set",
            "agent.burst=20",
            "--set",
            "agent.metricsPort=19342",
            "--set",
            "agent.metrics.bindHostIP=true",
            "--set",
            "agent.macPool.macs={02:aa:bb:cc:dd:01}",
            "--set",
            "agent.serviceController.enabled=true",
            "--set",
            "agent.serviceController.defaultLoadBalancer=true",
            "--set",
            "apiserver.etcd.enabled=true",
            "--set",
            "apiserver.auth.enabled=true",
            "--set",
            "apiserver.auth.token=0123456789abcdef-flags",
        ],
    ));
    let toml = find(&docs, "ConfigMap", "dhcpmanager-config")["data"]["dhcpmanager.toml"]
        .as_str()
        .unwrap()
        .to_string();
    let config = std::env::temp_dir().join(format!("{}.toml", unique("dhcpmanager-flags")));
    std::fs::write(&config, &toml).unwrap();
    let patience = std::time::Duration::from_secs(30);

    // The agent parses its flags, loads the file, then needs a cluster: it stops right there,
    // before any socket or link exists.
    let mut agent_args = container_args(find(&docs, "DaemonSet", "dhcpmanager-agent"));
    assert!(agent_args.contains(&"--lease-duration=30s".to_string()));
    assert!(agent_args.contains(&"--burst=20".to_string()));
    assert!(agent_args.contains(&"--service-controller".to_string()));
    assert!(agent_args.contains(&"--default-load-balancer".to_string()));
    assert!(agent_args.contains(&"--metrics-auth=kubernetes".to_string()));
    let agent_env =
        find(&docs, "DaemonSet", "dhcpmanager-agent")["spec"]["template"]["spec"]["containers"][0]
            ["env"]
            .as_array()
            .unwrap()
            .clone();
    assert!(
        agent_env.iter().any(|e| e["name"] == "HOST_IP"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"),
        "{agent_env:?}"
    );
    assert!(
        agent_args.contains(&"--metrics-addr=$(HOST_IP):19342".to_string()),
        "{agent_args:?}"
    );
    // What the kubelet makes of $(HOST_IP) on an IPv6 node (the agent stops before it binds).
    for arg in agent_args.iter_mut() {
        *arg = arg.replace("$(HOST_IP)", "fd00::7");
    }
    let (stderr, exited) = run_rendered(
        &dhcpmanager_tests::binaries::operator(),
        &agent_args,
        &config,
        &[("NODE_NAME", "node-a"), ("POD_NAMESPACE", "metallb-system")],
        patience,
    );
    assert!(
        exited,
        "the agent found no cluster yet kept running:\n{stderr}"
    );
    assert!(
        stderr.contains("connecting to the Kubernetes API"),
        "the agent stopped before reaching the cluster:\n{stderr}"
    );

    // The apiserver: flags and file accepted (it may then refuse for want of a backend, or
    // of a cluster, but not over its command line or configuration).
    let mut api_args = container_args(find(&docs, "Deployment", "dhcpmanager-apiserver"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    api_args.extend(["--bind=127.0.0.1".to_string(), format!("--port={port}")]);
    let (stderr, _) = run_rendered(
        &dhcpmanager_tests::binaries::apiserver(),
        &api_args,
        &config,
        &[("DHCP_AUTH_TOKEN", "0123456789abcdef-flags")],
        patience,
    );
    let _ = std::fs::remove_file(&config);
    for refusal in [
        "unexpected argument",
        "error: invalid value",
        "configuration",
        ".toml",
    ] {
        assert!(
            !stderr.contains(refusal),
            "the apiserver refused the chart's flags or file ({refusal}):\n{stderr}"
        );
    }
}

/// A directory removed when the test ends, also by a failed assertion.
struct RemovedOnDrop(PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (by its PID) when the test ends without having stopped it.
struct KilledOnDrop(std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// One HTTP/1.1 exchange with a JSON body, from inside the lab's agent namespace.
fn http_json(ns: &str, port: u16, method: &str, path: &str, body: &str) -> Option<Value> {
    use std::io::{Read, Write};
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: dhcpmanager\r\nContent-Type: application/json\r\n\
         Accept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    dhcpmanager_tests::netns::in_netns(ns, move || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        stream.write_all(request.as_bytes()).ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        let (_, body) = answer.split_once("\r\n\r\n")?;
        serde_json::from_str(body.trim()).ok()
    })
    .expect("the lab's agent namespace exists")
}

/// examples/standalone.toml is what deploy/docker-compose.yml mounts: run it as compose would
/// (`dhcpmanager-apiserver --standalone --config=...`, environment overrides for what differs
/// on this host), against a real dnsmasq in a lab namespace, and have it hand out an address
/// through the fork's two calls.
#[test]
fn standalone_example_serves_the_fork_from_a_real_dhcp_server() {
    use dhcpmanager_tests::lab::{Lab, Server, ServerOpts};
    let lab = Lab::up().expect("lab up");
    lab.start(
        Server::Dnsmasq,
        ServerOpts {
            lease: 120,
            ..Default::default()
        },
    )
    .expect("dnsmasq starts");
    let state = RemovedOnDrop(std::env::temp_dir().join(unique("dhcpmanager-standalone-example")));
    std::fs::create_dir_all(&state.0).unwrap();
    let example = repo_root().join("examples/standalone.toml");
    let mut server = KilledOnDrop(
        lab.run_in_agent(dhcpmanager_tests::binaries::apiserver())
            .args(["--standalone", "--config"])
            .arg(&example)
            // The example's eth0 and /var/lib are the compose host's; here: the lab's segment.
            .env("DHCP_INTERFACE", lab.parent())
            .env("DHCP_STATE_DIR", &state.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("apiserver starts"),
    );
    let ns = lab.agent_ns();
    let port = 8000;
    let ready = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while http_json(&ns, port, "GET", "/v1/config", "").is_none() {
        assert!(
            server.0.try_wait().unwrap().is_none(),
            "the apiserver exited before serving"
        );
        assert!(
            std::time::Instant::now() < ready,
            "no /v1/config within 30 s (safety net)"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let config = http_json(&ns, port, "GET", "/v1/config", "").unwrap();
    assert_eq!(config["cidrs"], serde_json::json!(["192.168.0.0/16"]));

    let allocated = http_json(&ns, port, "POST", "/v1/ip", "{\"service\":\"shop/web\"}\n")
        .expect("POST /v1/ip answers JSON");
    assert_eq!(allocated["status"], "success", "{allocated}");
    let ip: std::net::Ipv4Addr = allocated["ip"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        ip.octets()[..3],
        [10, 77, 0],
        "{ip} is not from the lab's server"
    );
    let leases = lab.leases(Server::Dnsmasq).unwrap();
    let lease = leases
        .iter()
        .find(|l| l.ip == ip)
        .expect("dnsmasq recorded it");
    assert!(
        lease
            .mac
            .as_deref()
            .is_some_and(|m| m.starts_with("02:d4:c9:00:00:0")),
        "a MAC from the example's pool: {lease:?}"
    );
    // Option 12 was "web.shop"; dnsmasq keeps the part before its first dot.
    assert_eq!(lease.hostname.as_deref(), Some("web"), "{lease:?}");

    let released = http_json(
        &ns,
        port,
        "DELETE",
        "/v1/ip",
        &format!("{{\"ip\":\"{ip}\"}}\n"),
    )
    .expect("DELETE /v1/ip answers JSON");
    assert_eq!(released["status"], "success", "{released}");

    // SIGTERM, as `docker compose down` sends.
    // SAFETY: signalling the child we spawned, by its PID.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
    let status = server.0.wait().unwrap();
    assert!(status.success(), "graceful stop: {status}");
    lab.down().expect("lab down");
}
