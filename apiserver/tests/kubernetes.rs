//! The real `dhcpmanager-apiserver` binary on the Kubernetes backend: a private kube-apiserver
//! with the CRDs, an agent with the chart's RBAC binding through a lab namespace, Kea from the
//! lab, and the apiserver with the chart's apiserver RBAC (ServiceAccount token) on a free
//! loopback port of the root namespace. Requests are the MetalLB fork's exact bytes.
//! Needs root, the lab's DHCP servers and the control-plane tools (scripts/install-deps.sh), and
//! `cargo build --workspace --bins` first.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{fork_delete, fork_post, get, json_request};
use dhcpmanager_apiserver::backend::Backend;
use dhcpmanager_tests::chart::{APISERVER_SERVICE_ACCOUNT, render_template};
use dhcpmanager_tests::cluster::{AGENT_NAMESPACE, AgentOpts, Cluster};
use dhcpmanager_tests::lab::{Server, ServerOpts};
use serde_json::Value;

/// Safety net for an agent binding or releasing against a server that answers at once.
const STEP: Duration = Duration::from_secs(60);
const OURS: &str = "app.kubernetes.io/managed-by=dhcpmanager-apiserver";

/// The apiserver process, killed by PID when dropped.
struct ApiServer {
    child: Child,
    address: SocketAddr,
    log: PathBuf,
}

impl ApiServer {
    /// Starts the binary with the apiserver ServiceAccount's kubeconfig and waits for /readyz
    /// (which lists through the backend, so the RBAC is exercised before the test starts).
    async fn start(cluster: &Cluster, request_timeout: &str) -> ApiServer {
        Self::start_with(cluster, request_timeout, "etcd = []\n").await
    }

    /// `config` is the rest of the TOML file (at least the `etcd` key).
    async fn start_with(cluster: &Cluster, request_timeout: &str, config: &str) -> ApiServer {
        let rbac = render_template("templates/rbac-apiserver.yaml", AGENT_NAMESPACE);
        cluster.apply(&rbac);
        let kubeconfig = cluster
            .cp
            .service_account_kubeconfig(AGENT_NAMESPACE, APISERVER_SERVICE_ACCOUNT)
            .expect("apiserver ServiceAccount kubeconfig");
        let dir = cluster.lab.dir();
        let text = format!("{config}request-timeout = \"{request_timeout}\"\n");
        let config = dir.join("apiserver.toml");
        std::fs::write(&config, text).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let log = dir.join(format!("apiserver-{port}.log"));
        let child = Command::new(dhcpmanager_tests::binaries::apiserver())
            .args(["--config", config.to_str().unwrap()])
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAMESPACE", AGENT_NAMESPACE)
            .env("RUST_LOG", "info,kube=warn")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::File::options().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .expect("spawn dhcpmanager-apiserver");
        let mut server = ApiServer {
            child,
            address: format!("127.0.0.1:{port}").parse().unwrap(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("apiserver exited ({status}):\n{}", server.logs());
            }
            if tokio::net::TcpStream::connect(server.address).await.is_ok()
                && get(server.address, "/readyz").await.status == 200
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "apiserver not ready:\n{}",
                server.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        server
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn start_cluster(with_kea: bool) -> Cluster {
    let mut cluster = Cluster::start();
    if with_kea {
        cluster
            .lab
            .start(Server::Kea, ServerOpts::default())
            .unwrap();
    }
    let agent_ns = cluster.lab.agent_ns();
    cluster.start_agent("node-a", &agent_ns, &AgentOpts::default());
    cluster.kubectl_ok(&["create", "namespace", "shop"]);
    cluster
}

/// (name, whole object) of the DhcpAddresses in `namespace`, optionally by label selector.
fn objects(cluster: &Cluster, namespace: &str, selector: Option<&str>) -> Vec<Value> {
    let mut args = vec!["get", "da", "-n", namespace];
    if let Some(selector) = selector {
        args.extend(["-l", selector]);
    }
    cluster.json(&args)["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn ip_of(object: &Value) -> Option<Ipv4Addr> {
    object["status"]["ip"].as_str().and_then(|s| s.parse().ok())
}

fn kea_active(cluster: &Cluster, ip: Ipv4Addr) -> bool {
    cluster
        .lab
        .leases(Server::Kea)
        .unwrap()
        .iter()
        .any(|l| l.ip == ip && l.state == "active")
}

/// The fork's POST; the answer must be success with an IP. Returns (ip, id).
async fn allocate(server: &ApiServer, service: &str) -> (Ipv4Addr, String) {
    let answer = fork_post(server.address, "/v1/ip", service, None).await;
    let body = answer.assert_compact_json();
    assert_eq!(body["status"], "success", "{answer:?}\n{}", server.logs());
    let ip: Ipv4Addr = body["ip"].as_str().unwrap().parse().unwrap();
    assert_eq!(ip.octets()[..3], [10, 77, 0], "from Kea's lab subnet");
    (ip, body["id"].as_str().unwrap().to_string())
}

fn pool(cluster: &Cluster) -> Value {
    cluster.json(&["get", "macpool", "default"])
}

/// The backend in this process, with the apiserver ServiceAccount's credentials.
async fn in_process_backend(
    cluster: &Cluster,
) -> std::sync::Arc<dhcpmanager_apiserver::backend::kubernetes::KubernetesBackend> {
    use dhcpmanager_apiserver::backend::kubernetes::{KubernetesBackend, KubernetesOptions};
    let path = cluster
        .cp
        .service_account_kubeconfig(AGENT_NAMESPACE, APISERVER_SERVICE_ACCOUNT)
        .unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    KubernetesBackend::with_client(
        kube::Client::try_from(config).unwrap(),
        KubernetesOptions {
            namespace: AGENT_NAMESPACE.into(),
            mac_pool: "default".into(),
            release_wait: Duration::from_secs(10),
        },
    )
}

#[tokio::test]
async fn kea_allocate_release_and_leave_foreign_addresses_alone() {
    let cluster = start_cluster(true);
    let server = ApiServer::start(&cluster, "30s").await;

    // POST -> a DhcpAddress in the service's namespace, Bound by the agent, leased from Kea.
    let (first_ip, first_id) = allocate(&server, "shop/web").await;
    let ours = objects(&cluster, "shop", Some(OURS));
    assert_eq!(ours.len(), 1, "{ours:?}");
    let object = &ours[0];
    assert_eq!(object["status"]["phase"], "Bound");
    assert_eq!(ip_of(object), Some(first_ip));
    assert_eq!(object["spec"]["service"], "shop/web");
    assert_eq!(
        object["metadata"]["annotations"]["dhcpmanager.io/allocation-id"],
        first_id.as_str()
    );
    assert_eq!(
        object["metadata"]["labels"]["dhcpmanager.io/service-name"],
        "web"
    );
    assert!(
        object["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("web-")
    );
    let table = cluster.kubectl_ok(&["get", "da", "-n", "shop"]);
    assert!(
        table.contains(&first_ip.to_string()) && table.contains("Bound"),
        "{table}"
    );
    assert!(kea_active(&cluster, first_ip));

    // Not idempotent per service: two more POSTs for the same service, at once.
    let ((second_ip, _), (third_ip, _)) =
        tokio::join!(allocate(&server, "shop/web"), allocate(&server, "shop/web"));
    let ips = [first_ip, second_ip, third_ip];
    assert!(
        second_ip != third_ip && !ips[1..].contains(&first_ip),
        "{ips:?}"
    );
    assert_eq!(objects(&cluster, "shop", Some(OURS)).len(), 3);

    // Both DELETEd (the fork unwinding) -> objects gone, Kea shows the addresses free.
    for ip in [second_ip, third_ip] {
        let answer = fork_delete(server.address, "/v1/ip", &ip.to_string(), None).await;
        let body = answer.assert_compact_json();
        assert_eq!(body["status"], "success", "{answer:?}");
        assert_eq!(body["ip"], ip.to_string());
    }
    cluster.wait_for("the two deleted addresses gone", STEP, |c| {
        let left = objects(c, "shop", Some(OURS));
        left.len() == 1 && ip_of(&left[0]) == Some(first_ip)
    });
    cluster.wait_for("Kea shows both free", STEP, |c| {
        !kea_active(c, second_ip) && !kea_active(c, third_ip)
    });
    assert!(kea_active(&cluster, first_ip), "the first one is untouched");

    // DELETE of an IP nobody was given: non-success, nothing changed.
    let unknown = fork_delete(server.address, "/v1/ip", "192.0.2.77", None).await;
    let body = unknown.assert_compact_json();
    assert_ne!(body["status"], "success", "{unknown:?}");
    assert_eq!(objects(&cluster, "shop", None).len(), 1);

    // A service in a namespace that does not exist: a fast error, nothing created anywhere.
    let nowhere = fork_post(server.address, "/v1/ip", "nowhere/web", None).await;
    let body = nowhere.assert_compact_json();
    assert_eq!(body["status"], "error", "{nowhere:?}");
    let everywhere = cluster.json(&["get", "da", "-A", "-l", OURS]);
    assert_eq!(everywhere["items"].as_array().unwrap().len(), 1);

    // A user's own DhcpAddress is never deleted through /v1.
    cluster.apply(
        "apiVersion: dhcpmanager.io/v1alpha1\nkind: DhcpAddress\nmetadata: {name: mine, namespace: shop}\nspec: {service: shop/mine}\n",
    );
    cluster.wait_for("shop/mine Bound", STEP, |c| {
        let mine = c.json(&["get", "da", "-n", "shop", "mine"]);
        mine["status"]["phase"] == "Bound" && ip_of(&mine).is_some()
    });
    let mine = cluster.json(&["get", "da", "-n", "shop", "mine"]);
    let mine_ip = ip_of(&mine).unwrap();
    let refused = fork_delete(server.address, "/v1/ip", &mine_ip.to_string(), None).await;
    assert_ne!(refused.assert_compact_json()["status"], "success");
    let still = cluster.json(&["get", "da", "-n", "shop", "mine"]);
    assert_eq!(still["metadata"]["uid"], mine["metadata"]["uid"]);
    assert!(still["metadata"]["deletionTimestamp"].is_null(), "{still}");
    assert!(kea_active(&cluster, mine_ip));

    // /v1/status: our allocation only, and the pool's free MACs (32 seeded, 2 in use).
    let status = get(server.address, "/v1/status")
        .await
        .assert_compact_json();
    let allocations = status["Allocations"].as_array().unwrap();
    assert_eq!(allocations.len(), 1, "{status}");
    assert_eq!(allocations[0]["ID"], first_id.as_str(), "{status}");
    assert_eq!(status["AvailableMACs"].as_array().unwrap().len(), 30);
    let cidrs = get(server.address, "/v1/config")
        .await
        .assert_compact_json();
    assert!(
        cidrs["cidrs"]
            .as_array()
            .unwrap()
            .contains(&Value::from("10.77.0.0/24")),
        "the bound lease's subnet: {cidrs}"
    );

    // /v1/mac edits the default MacPool; a MAC in use stays and is reported.
    let added = json_request(
        server.address,
        "POST",
        "/v1/mac",
        r#"{"macs":["02:DD:00:00:00:01","not-a-mac"]}"#,
    )
    .await
    .assert_compact_json();
    assert_eq!(
        added,
        serde_json::json!({"Status":"error","Rejected":["not-a-mac"]})
    );
    let spec_macs = |c: &Cluster| pool(c)["spec"]["macs"].clone();
    assert!(
        spec_macs(&cluster)
            .as_array()
            .unwrap()
            .contains(&Value::from("02:dd:00:00:00:01"))
    );
    let used_mac = objects(&cluster, "shop", Some(OURS))[0]["status"]["mac"]
        .as_str()
        .unwrap()
        .to_string();
    let removed = json_request(
        server.address,
        "DELETE",
        "/v1/mac",
        &format!(r#"{{"macs":["02:dd:00:00:00:01","{used_mac}"]}}"#),
    )
    .await
    .assert_compact_json();
    assert_eq!(
        removed,
        serde_json::json!({"Status":"error","Unprocessed":[used_mac]})
    );
    let macs = spec_macs(&cluster);
    let macs = macs.as_array().unwrap();
    assert!(
        !macs.contains(&Value::from("02:dd:00:00:00:01")),
        "{macs:?}"
    );
    assert!(macs.contains(&Value::from(used_mac.as_str())), "{macs:?}");

    // The last of ours released: gone, free at Kea; the user's address still Bound.
    let answer = fork_delete(server.address, "/v1/ip", &first_ip.to_string(), None).await;
    assert_eq!(answer.assert_compact_json()["id"], first_id.as_str());
    cluster.wait_for("ours all gone and free at Kea", STEP, |c| {
        objects(c, "shop", Some(OURS)).is_empty() && !kea_active(c, first_ip)
    });
    let remaining = objects(&cluster, "shop", None);
    assert_eq!(remaining.len(), 1);
    assert_eq!(remaining[0]["metadata"]["name"], "mine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_dhcp_server_post_times_out_and_leaves_nothing() {
    let cluster = start_cluster(true);
    cluster.lab.stop(Server::Kea).unwrap();
    let timeout = Duration::from_secs(4);
    let server = ApiServer::start(&cluster, "4s").await;

    let started = Instant::now();
    let answer = fork_post(server.address, "/v1/ip", "shop/lonely", None).await;
    let elapsed = started.elapsed();
    let body = answer.assert_compact_json();
    assert_eq!(body["status"], "timeout", "{answer:?}");
    assert_eq!(body["ip"], "");
    assert!(
        !body["id"].as_str().unwrap().is_empty(),
        "names the withdrawn id"
    );
    // The contract: a bounded answer (the fork's client has no timeout). Slack is generous: the
    // bound is what matters, not the speed.
    assert!(
        elapsed < timeout + Duration::from_secs(5),
        "answered after {elapsed:?}"
    );
    // Withdrawn: the object is deleted and its finalizer let go; the MAC is back in the pool.
    cluster.wait_for("no DhcpAddress left", STEP, |c| {
        objects(c, "shop", None).is_empty()
    });
    cluster.wait_for("the MAC back in the pool", STEP, |c| {
        let pool = pool(c);
        pool["status"]["used"] == 0
            && pool["status"]["allocations"]
                .as_array()
                .is_none_or(|a| a.is_empty())
    });
    // It really was taken (not just never allocated): the agent's log says both.
    let agent_log = std::fs::read_to_string(&cluster.agent(0).log).unwrap();
    assert!(agent_log.contains("allocated MAC"), "{agent_log}");
    assert!(agent_log.contains("returned MAC"), "{agent_log}");
    assert!(server.logs().contains("withdrew the allocation"));
    eprintln!("timeout answer after {elapsed:?} (request-timeout {timeout:?})");
    let status = get(server.address, "/v1/status")
        .await
        .assert_compact_json();
    assert_eq!(status["Allocations"], serde_json::json!([]), "{status}");
    assert_eq!(status["AvailableMACs"].as_array().unwrap().len(), 32);

    // A request abandoned midway (the route's own time limit, a client gone) is withdrawn
    // too: the pending future is dropped once its object exists and holds a MAC.
    let backend = in_process_backend(&cluster).await;
    let far = Instant::now() + Duration::from_secs(600);
    let mut pending = backend.allocate("shop/abandoned", far);
    let give_up = Instant::now() + STEP;
    let has_mac = |c: &Cluster| {
        objects(c, "shop", Some(OURS))
            .first()
            .is_some_and(|o| o["status"]["mac"].is_string())
    };
    while !has_mac(&cluster) {
        tokio::select! {
            outcome = &mut pending => panic!("no DHCP server, yet: {outcome:?}"),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        assert!(
            Instant::now() < give_up,
            "the pending object never appeared"
        );
    }
    drop(pending);
    cluster.wait_for("the abandoned object withdrawn", STEP, |c| {
        objects(c, "shop", None).is_empty()
    });
    cluster.wait_for("its MAC back in the pool", STEP, |c| {
        pool(c)["status"]["used"] == 0
    });
}

#[test]
fn without_cluster_configuration_the_binary_refuses_to_start() {
    let home = std::env::temp_dir().join(format!("dm-nokube-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let config = home.join("dhcpmanager.toml");
    std::fs::write(&config, "etcd = []\n").unwrap();
    let output = Command::new(dhcpmanager_tests::binaries::apiserver())
        .args(["--config", config.to_str().unwrap()])
        .args(["--bind", "127.0.0.1", "--port", "0"])
        .env("HOME", &home)
        .env("KUBECONFIG", home.join("missing.kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&home);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("no Kubernetes cluster found"), "{stderr}");
}

// --- the etcd mirror over the Kubernetes backend ----------------------------------------------

const ETCD_PREFIX: &str = dhcpmanager_apiserver::config::ORIGINAL_ETCD_PREFIX;

/// A real etcd 3.4 on free loopback ports with a temporary data directory, killed by PID.
struct Etcd {
    child: Child,
    data_dir: PathBuf,
    endpoint: String,
}

impl Etcd {
    async fn start() -> Etcd {
        let free = || {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
                .port()
        };
        let (client_port, peer_port) = (free(), free());
        let data_dir =
            std::env::temp_dir().join(format!("dm-k8s-etcd-{}-{client_port}", std::process::id()));
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new("/usr/bin/etcd")
            .args(["--name", "k8s-mirror", "--data-dir"])
            .arg(&data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("k8s-mirror={peer_url}")])
            .args(["--log-level", "error", "--logger", "zap"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("/usr/bin/etcd starts");
        let etcd = Etcd {
            child,
            data_dir,
            endpoint: format!("127.0.0.1:{client_port}"),
        };
        let give_up = Instant::now() + Duration::from_secs(30);
        while etcd.keys().await.is_none() {
            assert!(Instant::now() < give_up, "etcd did not become healthy");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        etcd
    }

    /// Every key under the original's prefix with its value; None while etcd is unreachable.
    async fn keys(&self) -> Option<std::collections::BTreeMap<String, String>> {
        let mut client = etcd_client::Client::connect([self.endpoint.as_str()], None)
            .await
            .ok()?;
        let options = etcd_client::GetOptions::new().with_prefix();
        let answer = client.get(ETCD_PREFIX, Some(options)).await.ok()?;
        Some(
            answer
                .kvs()
                .iter()
                .map(|kv| {
                    let key = kv.key_str().unwrap();
                    let key = key.strip_prefix(ETCD_PREFIX).unwrap_or(key).to_string();
                    (key, kv.value_str().unwrap().to_string())
                })
                .collect(),
        )
    }

    /// Polls until `check` holds for the keys; the timeout is a safety net.
    async fn wait_for(
        &self,
        what: &str,
        check: impl Fn(&std::collections::BTreeMap<String, String>) -> bool,
    ) -> std::collections::BTreeMap<String, String> {
        let give_up = Instant::now() + STEP;
        let mut last = Default::default();
        while Instant::now() < give_up {
            if let Some(keys) = self.keys().await {
                if check(&keys) {
                    return keys;
                }
                last = keys;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("etcd never showed {what}; last: {last:#?}");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_mirror_and_change_signal_follow_the_cluster() {
    let cluster = start_cluster(true);
    let etcd = Etcd::start().await;
    let config = format!("etcd = [\"{}\"]\n", etcd.endpoint);
    let server = ApiServer::start_with(&cluster, "30s", &config).await;

    // The free pool first: 32 seeded MACs, none used.
    etcd.wait_for("the 32 free MACs", |keys| {
        keys.keys().filter(|k| k.starts_with("macs/")).count() == 32
    })
    .await;

    let (ip, id) = allocate(&server, "shop/web").await;
    let allocation_key = format!("allocations/{id}");
    let lookup_key = format!("lookup/{ip}");
    let keys = etcd
        .wait_for("the allocation, its lookup and 31 free MACs", |keys| {
            keys.contains_key(&allocation_key)
                && keys.get(&lookup_key) == Some(&id)
                && keys.keys().filter(|k| k.starts_with("macs/")).count() == 31
        })
        .await;
    let allocation: Value = serde_json::from_str(&keys[&allocation_key]).unwrap();
    assert_eq!(allocation["ID"], id.as_str());
    assert_eq!(allocation["Hostname"], "web.shop");
    assert_eq!(allocation["State"], 1, "{allocation}");
    assert_eq!(allocation["Lease"]["FixedAddress"], ip.to_string());
    let mac = objects(&cluster, "shop", Some(OURS))[0]["status"]["mac"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(allocation["Interface"]["HardwareAddr"], mac.as_str());
    assert!(!keys.contains_key(&format!("macs/{mac}")), "the used MAC");

    let answer = fork_delete(server.address, "/v1/ip", &ip.to_string(), None).await;
    assert_eq!(answer.assert_compact_json()["status"], "success");
    etcd.wait_for("the allocation gone and its MAC free again", |keys| {
        !keys.contains_key(&allocation_key)
            && !keys.contains_key(&lookup_key)
            && keys.contains_key(&format!("macs/{mac}"))
    })
    .await;
    drop(server);

    // The change signal itself, in process: a MacPool edit by someone else fires it.
    let backend = in_process_backend(&cluster).await;
    let mut changes = backend.subscribe();
    cluster.kubectl_ok(&[
        "patch",
        "macpool",
        "default",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/macs/-","value":"02:ee:00:00:00:01"}]"#,
    ]);
    let new_mac: dhcpmanager_apiserver::MacAddr = "02:ee:00:00:00:01".parse().unwrap();
    let give_up = Instant::now() + STEP;
    loop {
        let signal = tokio::time::timeout_at(give_up.into(), changes.recv()).await;
        assert!(signal.is_ok(), "no change signal for the MacPool edit");
        let status = backend.status().await.unwrap();
        if status.available_macs.contains(&new_mac) {
            break;
        }
    }
}
