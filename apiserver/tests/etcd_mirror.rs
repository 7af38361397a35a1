//! The etcd mirror against a real etcd 3.4 (/usr/bin/etcd) on 127.0.0.1 with free ports and a
//! temporary data directory, killed by PID.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use dhcpmanager_apiserver::backend::Backend;
use dhcpmanager_apiserver::backend::fake::{FakeBackend, FakeBehaviour};
use dhcpmanager_apiserver::config::ORIGINAL_ETCD_PREFIX;
use dhcpmanager_apiserver::etcd_mirror::{EtcdMirror, desired_keys};
use dhcpmanager_apiserver::original_json::GoAllocation;
use dhcpmanager_apiserver::{Config, MacAddr};
use etcd_client::{Client, GetOptions};

const PREFIX: &str = ORIGINAL_ETCD_PREFIX;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Etcd {
    child: Option<Child>,
    data_dir: PathBuf,
    client_port: u16,
    peer_port: u16,
}

impl Etcd {
    fn new() -> Etcd {
        let data_dir =
            std::env::temp_dir().join(format!("dhcpmanager-etcd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        Etcd {
            child: None,
            data_dir,
            client_port: free_port(),
            peer_port: free_port(),
        }
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    async fn start(&mut self) {
        let client_url = format!("http://127.0.0.1:{}", self.client_port);
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("/usr/bin/etcd")
            .args(["--name", "mirror-test", "--data-dir"])
            .arg(&self.data_dir)
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("mirror-test={peer_url}")])
            .args(["--log-level", "error", "--logger", "zap"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("/usr/bin/etcd starts");
        self.child = Some(child);
        // Safety net only: etcd is normally up in well under a second.
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut client) = Client::connect([self.endpoint()], None).await
                && client.status().await.is_ok()
            {
                return;
            }
            assert!(Instant::now() < give_up, "etcd did not become healthy");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

async fn keys_under_prefix(
    client: &mut Client,
) -> Result<BTreeMap<String, (String, i64)>, etcd_client::Error> {
    let answer = client
        .get(PREFIX, Some(GetOptions::new().with_prefix()))
        .await?;
    Ok(answer
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                (kv.value_str().unwrap().to_string(), kv.lease()),
            )
        })
        .collect())
}

/// Polls until etcd holds exactly what the backend's state demands; the timeout is a safety net.
async fn wait_until_mirrored(
    etcd: &Etcd,
    backend: &FakeBackend,
) -> BTreeMap<String, (String, i64)> {
    let give_up = Instant::now() + Duration::from_secs(60);
    let mut last = BTreeMap::new();
    while Instant::now() < give_up {
        let want = desired_keys(PREFIX, &backend.status().await.unwrap(), Utc::now());
        if let Ok(mut client) = Client::connect([etcd.endpoint()], None).await
            && let Ok(seen) = keys_under_prefix(&mut client).await
        {
            last = seen;
            let same = last.len() == want.len()
                && want.iter().all(|(key, desired)| {
                    last.get(key)
                        .is_some_and(|(value, _)| *value == desired.value)
                });
            if same {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("etcd never converged; last seen: {last:#?}");
}

fn mac(last: u8) -> MacAddr {
    MacAddr([0x02, 0x77, 0, 0, 0, last])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_writes_the_original_layout_and_rebuilds_after_an_etcd_restart() {
    let mut etcd = Etcd::new();
    etcd.start().await;
    let mut client = Client::connect([etcd.endpoint()], None).await.unwrap();
    // Left over from an earlier life: must go. Outside the prefix: must stay.
    client
        .put(format!("{PREFIX}allocations/stale-id"), "{}\n", None)
        .await
        .unwrap();
    client
        .put(
            format!("{PREFIX}macs/02:00:00:00:00:99"),
            "02:00:00:00:00:99",
            None,
        )
        .await
        .unwrap();
    client
        .put("/someone-else/key", "theirs", None)
        .await
        .unwrap();

    let backend = Arc::new(
        FakeBackend::new(FakeBehaviour::BindAfter(Duration::ZERO)).with_macs([
            mac(1),
            mac(2),
            mac(3),
        ]),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let bound = backend.allocate("default/web", deadline).await.unwrap();
    let ip = bound.ip.unwrap();

    let config = Config {
        etcd: vec![etcd.endpoint()],
        dial_timeout: Duration::from_secs(1),
        client_timeout: Duration::from_secs(2),
        ..Config::default()
    };
    let mirror = EtcdMirror::new(&config, backend.clone())
        .with_backoff(Duration::from_millis(50), Duration::from_millis(500));
    let task = tokio::spawn(mirror.run());

    let keys = wait_until_mirrored(&etcd, &backend).await;
    let names: Vec<&str> = keys.keys().map(String::as_str).collect();
    let allocation_key = format!("{PREFIX}allocations/{}", bound.id);
    let lookup_key = format!("{PREFIX}lookup/{ip}");
    assert_eq!(
        names,
        vec![
            allocation_key.as_str(),
            lookup_key.as_str(),
            "/kramergroup.science/dhcp-address-space-endpoint/macs/02:77:00:00:00:02",
            "/kramergroup.science/dhcp-address-space-endpoint/macs/02:77:00:00:00:03",
        ]
    );
    // Key by key, as the original wrote them.
    let (allocation_json, lease_id) = &keys[&allocation_key];
    let mut expected = serde_json::to_string(&GoAllocation::from(&bound)).unwrap();
    expected.push('\n');
    assert_eq!(allocation_json, &expected);
    let parsed: serde_json::Value = serde_json::from_str(allocation_json).unwrap();
    assert_eq!(parsed["ID"], bound.id.as_str());
    assert_eq!(parsed["Hostname"], "web.default");
    assert_eq!(parsed["State"], 1);
    assert_eq!(parsed["Lease"]["FixedAddress"], ip.to_string());
    assert_eq!(parsed["Interface"]["HardwareAddr"], "02:77:00:00:00:01");
    assert_ne!(*lease_id, 0, "allocation keys carry an etcd lease");
    let ttl = client
        .lease_time_to_live(*lease_id, None)
        .await
        .unwrap()
        .ttl();
    assert!(
        ttl > 3000 && ttl <= 3600,
        "TTL follows the DHCP lease (3600 s): {ttl}"
    );
    assert_eq!(keys[&lookup_key], (bound.id.clone(), 0));
    assert_eq!(
        keys[&format!("{PREFIX}macs/02:77:00:00:00:02")].0,
        "02:77:00:00:00:02"
    );
    let theirs = client.get("/someone-else/key", None).await.unwrap();
    assert_eq!(theirs.kvs()[0].value_str().unwrap(), "theirs");

    // etcd goes away; the state changes meanwhile; etcd comes back with its old data.
    etcd.kill();
    backend.release(ip).await.unwrap();
    let second = backend
        .allocate("other/api", deadline + Duration::from_secs(5))
        .await
        .unwrap();
    backend.add_macs(vec![mac(4)]).await.unwrap();
    etcd.start().await;

    let keys = wait_until_mirrored(&etcd, &backend).await;
    assert!(
        !keys.contains_key(&allocation_key),
        "released allocation removed"
    );
    assert!(!keys.contains_key(&lookup_key));
    let second_key = format!("{PREFIX}allocations/{}", second.id);
    assert!(keys.contains_key(&second_key));
    assert_eq!(
        keys[&format!("{PREFIX}lookup/{}", second.ip.unwrap())].0,
        second.id
    );
    assert!(keys.contains_key(&format!("{PREFIX}macs/02:77:00:00:00:04")));
    let mut client = Client::connect([etcd.endpoint()], None).await.unwrap();
    let theirs = client.get("/someone-else/key", None).await.unwrap();
    assert_eq!(
        theirs.kvs().len(),
        1,
        "keys outside the prefix are left alone"
    );

    task.abort();
}
