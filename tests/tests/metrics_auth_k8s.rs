//! Who may read the agent's /metrics, on a real kube-apiserver with the chart's RBAC: the agent
//! asks the API server about each scraper's token (TokenReview, SubjectAccessReview) and only a
//! subject bound to the chart's `dhcpmanager-metrics-reader` ClusterRole reads the figures; the
//! probes stay open; an API outage makes unchecked scrapers wait (503), never the leases.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use dhcpmanager_tests::cluster::{AGENT_NAMESPACE, AgentOpts, Cluster, service_account_token};
use dhcpmanager_tests::lab::{Server, ServerOpts, active_lease};
use dhcpmanager_tests::prometheus::{Answer, get, get_with};

const STEP: Duration = Duration::from_secs(60);

fn get_ok(addr: SocketAddr, path: &str, bearer: Option<&str>) -> Answer {
    get(addr, path, bearer).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// Waits until the agent's HTTP server answers (a safety net, not a measurement).
fn wait_listening(cluster: &Cluster, agent: usize) {
    let addr = cluster.agent(agent).metrics;
    cluster.wait_for("the agent's HTTP server listens", STEP, |_| {
        get(addr, "/healthz", None).is_ok_and(|a| a.status == 200)
    });
}

#[test]
fn only_scrapers_the_api_server_allows_read_the_agents_metrics() {
    let mut cluster = Cluster::start();
    let agent_ns = cluster.lab.agent_ns();
    let agent = cluster.start_agent("node-a", &agent_ns, &AgentOpts::default());
    wait_listening(&cluster, agent);
    let addr = cluster.agent(agent).metrics;

    // The kubelet's probes carry no token.
    let health = get_ok(addr, "/healthz", None);
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    cluster.wait_for("/readyz answers 200 without a token", STEP, |_| {
        get(addr, "/readyz", None).is_ok_and(|a| a.status == 200)
    });

    // No token, or one the API server does not know: 401.
    let anonymous = get_ok(addr, "/metrics", None);
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert!(anonymous.body.contains("Bearer"), "{}", anonymous.body);
    assert!(
        !anonymous.body.contains("dhcpmanager_"),
        "{}",
        anonymous.body
    );
    let forged = get_ok(addr, "/metrics", Some("not-a-kubernetes-token"));
    assert_eq!(forged.status, 401, "{}", forged.body);
    // A password is no token.
    let basic = get_with(addr, "/metrics", Some("Basic dXNlcjpwdw=="))
        .expect("GET /metrics with Basic credentials");
    assert_eq!(basic.status, 401, "{}", basic.body);

    // A real ServiceAccount without the reader role: known, not allowed.
    let stranger = service_account_token(&cluster.cp, AGENT_NAMESPACE, "stranger");
    let refused = get_ok(addr, "/metrics", Some(&stranger));
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused
            .body
            .contains("system:serviceaccount:dhcpmanager:stranger"),
        "{}",
        refused.body
    );
    assert!(!refused.body.contains("dhcpmanager_"), "{}", refused.body);
    // The agent's own token is no reader either (its RBAC lets it ask, not read).
    let agent_token = service_account_token(
        &cluster.cp,
        AGENT_NAMESPACE,
        dhcpmanager_tests::chart::AGENT_SERVICE_ACCOUNT,
    );
    assert_eq!(
        get_ok(addr, "/metrics", Some(&agent_token)).status,
        403,
        "the agent's ServiceAccount"
    );

    // Bound to the chart's metrics reader ClusterRole: the figures.
    let allowed = get_ok(addr, "/metrics", Some(cluster.metrics_token()));
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert!(
        allowed.body.contains("dhcpmanager_addresses")
            || allowed.body.contains("dhcpmanager_packets_sent_total"),
        "{}",
        allowed.body
    );
    assert!(
        allowed.body.trim_end().ends_with("# EOF"),
        "{}",
        allowed.body
    );
    // Again (from the cache this time): the same answer.
    let again = get_ok(addr, "/metrics", Some(cluster.metrics_token()));
    assert_eq!(again.status, 200, "{}", again.body);

    // Binding the stranger lets it in once its refusal has left the cache (10 s).
    cluster.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        "stranger-reads-metrics",
        "--clusterrole=dhcpmanager-metrics-reader",
        "--serviceaccount=dhcpmanager:stranger",
    ]);
    cluster.wait_for("the stranger, now bound, reads /metrics", STEP, |_| {
        get(addr, "/metrics", Some(&stranger)).is_ok_and(|a| a.status == 200)
    });

    // --metrics-auth=none: the old open endpoint, for whoever asks for it.
    let open = cluster.start_agent(
        "node-b",
        &agent_ns,
        &AgentOpts {
            extra: vec!["--metrics-auth=none".into()],
            ..AgentOpts::default()
        },
    );
    wait_listening(&cluster, open);
    let answer = get_ok(cluster.agent(open).metrics, "/metrics", None);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.contains("dhcpmanager_"), "{}", answer.body);
    let log = std::fs::read_to_string(&cluster.agent(open).log).unwrap();
    assert!(log.contains("UNAUTHENTICATED /metrics"), "{log}");
}

#[test]
fn an_api_outage_makes_new_scrapers_wait_and_leaves_the_leases_alone() {
    let mut cluster = Cluster::start();
    cluster
        .lab
        .start(Server::Kea, ServerOpts::default())
        .expect("Kea starts");
    let agent_ns = cluster.lab.agent_ns();
    // An agent Lease longer than the outage: DHCP renewals go on while the API is away.
    let agent = cluster.start_agent(
        "node-a",
        &agent_ns,
        &AgentOpts {
            lease_duration: "60s",
            ..AgentOpts::default()
        },
    );
    cluster.create_addresses("apps", "web", 1);
    cluster.wait_for("Bound", STEP, |c| {
        c.addresses("apps")
            .iter()
            .any(|(_, s)| s["phase"] == "Bound" && s["ip"].is_string())
    });
    let (_, status) = cluster.addresses("apps").remove(0);
    let leased: Ipv4Addr = status["ip"].as_str().unwrap().parse().unwrap();
    let server_expiry =
        |c: &Cluster| active_lease(&c.lab.leases(Server::Kea).unwrap(), leased).map(|l| l.expires);
    let addr = cluster.agent(agent).metrics;
    // Prometheus scraped just before the outage: its verdict is cached.
    let before = get_ok(addr, "/metrics", Some(cluster.metrics_token()));
    assert_eq!(before.status, 200, "{}", before.body);
    // A token the agent has never seen (TokenRequest tokens differ each time).
    let unseen = service_account_token(
        &cluster.cp,
        AGENT_NAMESPACE,
        dhcpmanager_tests::cluster::METRICS_READER,
    );
    assert_ne!(unseen, cluster.metrics_token());
    let expiry_before = server_expiry(&cluster).expect("active at the server");

    // kube-apiserver closes its port soon after SIGTERM, then drains its watches for up to a
    // minute: the outage starts when the port refuses, inside the cached verdict's 60 s.
    let api: SocketAddr = cluster
        .cp
        .server_url()
        .trim_start_matches("https://")
        .parse()
        .expect("the API server's address");
    std::thread::scope(|scope| {
        let stopping = scope.spawn(|| cluster.cp.stop_apiserver());
        cluster.wait_for("the API server's port refuses connections", STEP, |_| {
            std::net::TcpStream::connect_timeout(&api, Duration::from_secs(1)).is_err()
        });
        let cached = get_ok(addr, "/metrics", Some(cluster.metrics_token()));
        assert_eq!(cached.status, 200, "the cached verdict: {}", cached.body);
        stopping.join().expect("kube-apiserver stopped");
    });
    let unchecked = get_ok(addr, "/metrics", Some(&unseen));
    assert_eq!(unchecked.status, 503, "{}", unchecked.body);
    assert!(
        unchecked.body.contains("cannot check the scraper's token"),
        "{}",
        unchecked.body
    );
    assert_eq!(get_ok(addr, "/healthz", None).status, 200);
    // Renewals go on (T1 is 3 s here: 60 s Kea lease, --time-scale 10).
    cluster.wait_for("a renewal during the outage", STEP, |c| {
        server_expiry(c).is_some_and(|e| e > expiry_before)
    });
    assert_eq!(
        get_ok(addr, "/metrics", Some(&unseen)).status,
        503,
        "errors are not cached as verdicts"
    );

    cluster.cp.restart();
    cluster.wait_for(
        "the unseen token is checked once the API is back",
        STEP,
        |_| get(addr, "/metrics", Some(&unseen)).is_ok_and(|a| a.status == 200),
    );
    let (_, status) = cluster.addresses("apps").remove(0);
    assert_eq!(status["phase"], "Bound", "{status}");
    assert_eq!(status["ip"].as_str(), Some(leased.to_string().as_str()));
}
