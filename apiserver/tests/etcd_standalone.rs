//! The etcd mirror end to end with the standalone backend, real Kea and a real etcd: the API keeps
//! answering (allocate, release) while etcd is down, and etcd converges to the backend's state
//! once it is back. Everything runs inside the lab's agent namespace (its loopback).

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use common::etcd::{Etcd, PREFIX, keys_under_prefix, wait_until_mirrored};
use dhcpmanager_apiserver::backend::Backend;
use dhcpmanager_apiserver::backend::standalone::{StandaloneBackend, StandaloneOptions};
use dhcpmanager_apiserver::{Config, MacAddr, etcd_mirror, http};
use dhcpmanager_tests::lab::{Lab, Server, ServerOpts};
use dhcpmanager_tests::netns::in_netns;
use etcd_client::Client;

#[test]
fn the_api_answers_while_etcd_is_down_and_the_mirror_converges_after() {
    let lab = Lab::up().expect("lab up");
    lab.start(Server::Kea, ServerOpts::default()).expect("kea");
    let state_dir = lab.dir().join("state");
    let parent = lab.parent().to_string();
    in_netns(&lab.agent_ns(), move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut etcd = Etcd::new();
            etcd.start().await;
            let config = Config {
                interface: parent,
                state_dir,
                macs: (1..=4).map(|n| MacAddr([0x02, 0xee, 0, 0, 0, n])).collect(),
                etcd: vec![etcd.endpoint()],
                dial_timeout: Duration::from_secs(1),
                client_timeout: Duration::from_secs(2),
                request_timeout: Duration::from_secs(10),
                ..common::test_config()
            };
            let backend = StandaloneBackend::open(StandaloneOptions::from_config(&config))
                .await
                .expect("standalone backend");
            let mirror = etcd_mirror::spawn(&config, backend.clone() as Arc<dyn Backend>)
                .expect("mirror on");
            let (http, address) = http::bind(config, backend.clone()).expect("binds");
            let handle = http.handle();
            tokio::spawn(http);
            let post = || async {
                let answer = common::json_request(
                    address,
                    "POST",
                    "/v1/ip",
                    "{\"service\":\"default/web\"}\n",
                )
                .await;
                let json = answer.assert_compact_json();
                assert_eq!(json["status"], "success", "{answer:?}");
                (
                    json["ip"].as_str().unwrap().parse::<Ipv4Addr>().unwrap(),
                    json["id"].as_str().unwrap().to_string(),
                )
            };

            let (first_ip, first_id) = post().await;
            let keys = wait_until_mirrored(&etcd, backend.as_ref()).await;
            assert!(keys.contains_key(&format!("{PREFIX}allocations/{first_id}")));
            assert_eq!(keys[&format!("{PREFIX}lookup/{first_ip}")].0, first_id);

            // etcd dies: the API goes on answering, with real leases.
            etcd.kill();
            let (second_ip, second_id) = post().await;
            let answer = common::json_request(
                address,
                "DELETE",
                "/v1/ip",
                &format!("{{\"ip\":\"{first_ip}\"}}\n"),
            )
            .await;
            assert_eq!(
                answer.assert_compact_json()["status"],
                "success",
                "{answer:?}"
            );
            let status = common::get(address, "/v1/status")
                .await
                .assert_compact_json();
            assert_eq!(status["Allocations"].as_array().unwrap().len(), 1);

            // etcd comes back with its old data; the mirror makes it match the backend again.
            etcd.start().await;
            let keys = wait_until_mirrored(&etcd, backend.as_ref()).await;
            assert!(
                !keys.contains_key(&format!("{PREFIX}allocations/{first_id}")),
                "released: gone"
            );
            assert!(!keys.contains_key(&format!("{PREFIX}lookup/{first_ip}")));
            assert_eq!(keys[&format!("{PREFIX}lookup/{second_ip}")].0, second_id);
            let mut client = Client::connect([etcd.endpoint()], None).await.unwrap();
            let free_macs = keys_under_prefix(&mut client)
                .await
                .unwrap()
                .keys()
                .filter(|k| k.starts_with(&format!("{PREFIX}macs/")))
                .count();
            assert_eq!(free_macs, 3, "4 MACs, one in use");

            let answer = common::json_request(
                address,
                "DELETE",
                "/v1/ip",
                &format!("{{\"ip\":\"{second_ip}\"}}\n"),
            )
            .await;
            assert_eq!(answer.assert_compact_json()["status"], "success");
            handle.stop(true).await;
            mirror.abort();
            backend.shutdown().await;
        })
    })
    .expect("agent namespace");
}
