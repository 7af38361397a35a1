//! The etcd mirror against a real etcd 3.4 (/usr/bin/etcd) on 127.0.0.1 with free ports and a
//! temporary data directory, killed by PID.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::etcd::{Etcd, PREFIX, wait_until_mirrored};
use dhcpmanager_apiserver::backend::Backend;
use dhcpmanager_apiserver::backend::fake::{FakeBackend, FakeBehaviour};
use dhcpmanager_apiserver::etcd_mirror::EtcdMirror;
use dhcpmanager_apiserver::original_json::GoAllocation;
use dhcpmanager_apiserver::{Config, MacAddr};
use etcd_client::Client;

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

    let keys = wait_until_mirrored(&etcd, backend.as_ref()).await;
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

    let keys = wait_until_mirrored(&etcd, backend.as_ref()).await;
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
