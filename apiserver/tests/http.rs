//! The /v1 API over real TCP on 127.0.0.1, spoken byte for byte like the MetalLB fork.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::*;
use dhcpmanager_apiserver::BackendError;
use dhcpmanager_apiserver::backend::Backend;
use dhcpmanager_apiserver::backend::fake::{FakeBackend, FakeBehaviour};
use serde_json::json;

async fn allocation_count(running: &Running) -> usize {
    running.backend.status().await.unwrap().allocations.len()
}

async fn free_macs(running: &Running) -> usize {
    running.backend.status().await.unwrap().available_macs.len()
}

#[tokio::test]
async fn fork_allocates_and_returns_an_address_with_a_token() {
    let config = dhcpmanager_apiserver::Config {
        auth_token: Some("s3cret-token".into()),
        ..test_config()
    };
    let running = start_binding(config, 2).await;

    let answer = fork_post(
        running.address,
        "/v1/ip",
        "default/web",
        Some("s3cret-token"),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let body = answer.assert_compact_json();
    assert_eq!(body["status"], "success");
    let ip: Ipv4Addr = body["ip"].as_str().unwrap().parse().unwrap();
    let id = body["id"].as_str().unwrap().to_string();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 4);
    assert_eq!(
        body.as_object().unwrap().len(),
        3,
        "exactly ip, id, status: {body}"
    );
    // Reported once the answer was written (just after the client could read it).
    let started = std::time::Instant::now();
    while running.backend.answered_ids().is_empty() {
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(running.backend.answered_ids(), vec![id.clone()]);

    let status = running.backend.status().await.unwrap();
    assert_eq!(status.allocations[0].hostname, "web.default");

    let answer = fork_delete(
        running.address,
        "/v1/ip",
        &ip.to_string(),
        Some("s3cret-token"),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.assert_compact_json(),
        json!({"ip": ip.to_string(), "id": id, "status": "success"})
    );
    assert_eq!(allocation_count(&running).await, 0);
    assert_eq!(free_macs(&running).await, 2);
    running.stop().await;
}

#[tokio::test]
async fn double_slash_v1_is_served_like_v1() {
    let running = start_binding(test_config(), 1).await;
    let answer = fork_post(running.address, "//v1/ip", "default/web", None).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let ip = answer.json()["ip"].as_str().unwrap().to_string();
    let answer = fork_delete(running.address, "//v1/ip", &ip, None).await;
    assert_eq!(answer.json()["status"], "success", "{answer:?}");
    assert_eq!(get(running.address, "//v1/config").await.status, 200);
    // Only that prefix is mapped.
    assert_eq!(get(running.address, "/v1//config").await.status, 404);
    assert_eq!(get(running.address, "///v1/config").await.status, 404);
    running.stop().await;
}

#[tokio::test]
async fn post_is_not_idempotent_per_service() {
    let running = start_binding(test_config(), 3).await;
    let first = fork_post(running.address, "/v1/ip", "default/web", None)
        .await
        .json();
    let second = fork_post(running.address, "/v1/ip", "default/web", None)
        .await
        .json();
    assert_eq!(first["status"], "success");
    assert_eq!(second["status"], "success");
    assert_ne!(first["ip"], second["ip"]);
    assert_ne!(first["id"], second["id"]);
    assert_eq!(allocation_count(&running).await, 2);
    running.stop().await;
}

#[tokio::test]
async fn a_backend_that_never_binds_times_out_and_leaves_nothing() {
    let timeout = Duration::from_secs(1);
    let config = dhcpmanager_apiserver::Config {
        request_timeout: timeout,
        ..test_config()
    };
    let backend = FakeBackend::new(FakeBehaviour::NeverBind).with_macs([mac(1)]);
    let running = start(config, backend).await;

    let started = Instant::now();
    let answer = fork_post(running.address, "/v1/ip", "default/web", None).await;
    let took = started.elapsed();
    assert_eq!(answer.status, 504, "{answer:?}");
    let body = answer.assert_compact_json();
    assert_eq!(body["status"], "timeout");
    assert_eq!(body["ip"], "");
    assert!(
        uuid::Uuid::parse_str(body["id"].as_str().unwrap()).is_ok(),
        "{body}"
    );
    assert!(
        body["error"].as_str().unwrap().contains("timeout"),
        "{body}"
    );
    // Bounded: the fork's client has no timeout of its own.
    assert!(
        took < timeout + Duration::from_secs(2),
        "answered after {took:?}"
    );

    let status = running.backend.status().await.unwrap();
    assert!(status.allocations.is_empty(), "{:?}", status.allocations);
    assert_eq!(status.available_macs, vec![mac(1)]);
    running.stop().await;
}

#[tokio::test]
async fn backend_failures_are_json_with_a_readable_error() {
    let backend = FakeBackend::new(FakeBehaviour::Fail(BackendError::NoFreeMac));
    let running = start(test_config(), backend).await;
    let answer = fork_post(running.address, "/v1/ip", "default/web", None).await;
    assert_eq!(answer.status, 503);
    let body = answer.assert_compact_json();
    assert_eq!(body["status"], "error");
    assert_eq!(body["ip"], "");
    assert!(body["error"].as_str().unwrap().contains("MAC"), "{body}");

    running
        .backend
        .set_behaviour(FakeBehaviour::Fail(BackendError::Refused("NAK".into())));
    let answer = fork_post(running.address, "/v1/ip", "default/web", None).await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.json()["status"], "error");
    running.stop().await;
}

#[tokio::test]
async fn delete_of_unknown_or_unparsable_ip_changes_nothing() {
    let running = start_binding(test_config(), 2).await;
    let kept = fork_post(running.address, "/v1/ip", "default/web", None)
        .await
        .json();
    assert_eq!(kept["status"], "success");

    let answer = fork_delete(running.address, "/v1/ip", "10.9.9.9", None).await;
    assert_eq!(answer.status, 404);
    let body = answer.assert_compact_json();
    assert_eq!(body["ip"], "10.9.9.9");
    assert_eq!(body["id"], "");
    assert_eq!(body["status"], "error");
    assert!(body["error"].as_str().unwrap().contains("10.9.9.9"));

    for bad in [
        r#"{"ip":"not-an-ip"}"#,
        r#"{"ip":"::1"}"#,
        r#"{"ip":5}"#,
        r#"{}"#,
        r#"["10.77.0.10"]"#,
        "",
        "{\"ip\":",
    ] {
        let answer = json_request(running.address, "DELETE", "/v1/ip", bad).await;
        assert_eq!(answer.status, 400, "{bad:?}: {answer:?}");
        let body = answer.assert_compact_json();
        assert_eq!(body["ip"], "invalid", "{bad:?}");
        assert_eq!(body["id"], "", "{bad:?}");
        assert_eq!(body["status"], "error", "{bad:?}");
        assert!(!body["error"].as_str().unwrap().is_empty());
    }
    assert_eq!(allocation_count(&running).await, 1);
    running.stop().await;
}

#[tokio::test]
async fn bad_post_bodies_are_4xx_json_and_change_nothing() {
    let config = dhcpmanager_apiserver::Config {
        max_body_bytes: 1024,
        ..test_config()
    };
    let running = start_binding(config, 2).await;
    let too_large = format!("{{\"service\":\"{}\"}}", "a".repeat(2048));
    let too_long = format!("{{\"service\":\"{}\"}}", "a".repeat(254));
    let cases: Vec<(&str, u16)> = vec![
        ("", 400),
        ("{", 400),
        ("not json", 400),
        ("[]", 400),
        ("null", 400),
        (r#"{"service":5}"#, 400),
        (r#"{"service":null}"#, 400),
        (r#"{"service":""}"#, 400),
        (r#"{"name":"default/web"}"#, 400),
        (&too_long, 400),
        // The CRD's rule for service names, in every backend: no NUL, newline or ';' reaches
        // option 12, no '?', '#' or '..' reaches a Kubernetes path.
        (r#"{"service":"ns/web\u0000"}"#, 400),
        (r#"{"service":"ns/web\nx"}"#, 400),
        (r#"{"service":"ns/web;reboot"}"#, 400),
        (r#"{"service":"?x=/y"}"#, 400),
        (r##"{"service":"#frag/y"}"##, 400),
        (r#"{"service":"../x"}"#, 400),
        (r#"{"service":"Default/Web"}"#, 400),
        (&too_large, 413),
    ];
    for (body, code) in cases {
        let answer = json_request(running.address, "POST", "/v1/ip", body).await;
        assert_eq!(answer.status, code, "{body:.40?}: {answer:?}");
        let json = answer.assert_compact_json();
        assert_eq!(json["status"], "error", "{body:.40?}");
        assert_eq!(json["ip"], "", "{body:.40?}");
        assert!(!json["error"].as_str().unwrap().is_empty());
    }
    assert_eq!(allocation_count(&running).await, 0);
    assert_eq!(free_macs(&running).await, 2);

    // Go matched keys case-insensitively; so do we.
    let answer = json_request(running.address, "POST", "/v1/ip", r#"{"Service":"a/b"}"#).await;
    assert_eq!(answer.json()["status"], "success", "{answer:?}");
    running.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_are_json() {
    let running = start_binding(test_config(), 1).await;
    for path in ["/", "/v2/ip", "/v1/nope", "/v1"] {
        let answer = get(running.address, path).await;
        assert_eq!(answer.status, 404, "{path}: {answer:?}");
        assert_eq!(answer.assert_compact_json()["status"], "error");
    }
    let answer = get(running.address, "/v1/ip").await;
    assert_eq!(answer.status, 405);
    assert_eq!(answer.header("allow"), Some("POST, DELETE"));
    assert_eq!(answer.assert_compact_json()["status"], "error");
    let answer = json_request(running.address, "PUT", "/v1/status", "{}").await;
    assert_eq!(answer.status, 405);
    assert_eq!(answer.header("allow"), Some("GET"));
    assert_eq!(answer.assert_compact_json()["status"], "error");
    assert_eq!(allocation_count(&running).await, 0);
    running.stop().await;
}

#[tokio::test]
async fn a_configured_token_guards_every_v1_route_but_not_probes() {
    let config = dhcpmanager_apiserver::Config {
        auth_token: Some("s3cret-token".into()),
        ..test_config()
    };
    let running = start_binding(config, 1).await;
    for token in [
        None,
        Some("wrong"),
        Some("s3cret-toke"),
        Some("s3cret-token2"),
    ] {
        let answer = fork_post(running.address, "/v1/ip", "default/web", token).await;
        assert_eq!(answer.status, 401, "{token:?}");
        let body = answer.assert_compact_json();
        assert_eq!(body["status"], "error");
        assert!(body["error"].as_str().unwrap().contains("X-Auth-Token"));
    }
    for path in [
        "/v1/status",
        "/v1/config",
        "/v1/openapi.json",
        "//v1/status",
        "/v1/unknown",
    ] {
        assert_eq!(get(running.address, path).await.status, 401, "{path}");
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(get(running.address, path).await.status, 200, "{path}");
    }
    assert_eq!(allocation_count(&running).await, 0);
    running.stop().await;
}

#[tokio::test]
async fn macs_are_added_and_removed_with_capitalised_answers() {
    let backend = FakeBackend::new(FakeBehaviour::BindAfter(Duration::ZERO));
    let running = start(test_config(), backend).await;
    let address = running.address;

    let answer = json_request(
        address,
        "POST",
        "/v1/mac",
        r#"{"MACS":["02:77:00:00:00:01","02-77-00-00-00-02","bad",7]}"#,
    )
    .await;
    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.body,
        "{\"Status\":\"error\",\"Rejected\":[\"bad\",\"7\"]}\n"
    );
    assert_eq!(
        free_macs(&running).await,
        2,
        "the valid ones are still added"
    );

    let answer = json_request(
        address,
        "POST",
        "/v1/mac",
        r#"{"macs":["02:77:00:00:00:03"]}"#,
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "{\"Status\":\"success\",\"Rejected\":null}\n");

    // MACs nobody may send from: refused, nothing added.
    let answer = json_request(
        address,
        "POST",
        "/v1/mac",
        r#"{"macs":["00:00:00:00:00:00","ff:ff:ff:ff:ff:ff","01:00:5e:00:00:01","03:77:00:00:00:09"]}"#,
    )
    .await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(
        answer.body,
        "{\"Status\":\"error\",\"Rejected\":[\"00:00:00:00:00:00\",\"ff:ff:ff:ff:ff:ff\",\"01:00:5e:00:00:01\",\"03:77:00:00:00:09\"]}\n"
    );
    assert_eq!(free_macs(&running).await, 3);

    let used = fork_post(address, "/v1/ip", "default/web", None)
        .await
        .json();
    assert_eq!(used["status"], "success");
    let in_use = running.backend.status().await.unwrap().allocations[0]
        .mac
        .unwrap();

    let body = format!(r#"{{"macs":["{in_use}","02:77:00:00:00:03"]}}"#);
    let answer = json_request(address, "DELETE", "/v1/mac", &body).await;
    assert_eq!(answer.status, 409);
    assert_eq!(
        answer.body,
        format!("{{\"Status\":\"error\",\"Unprocessed\":[\"{in_use}\"]}}\n")
    );

    let answer = json_request(
        address,
        "DELETE",
        "/v1/mac",
        r#"{"macs":["02:77:00:00:00:02"]}"#,
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body,
        "{\"Status\":\"success\",\"Unprocessed\":null}\n"
    );
    assert_eq!(free_macs(&running).await, 0);

    for bad in ["", "{}", r#"{"macs":"02:77:00:00:00:01"}"#, "[1]"] {
        let answer = json_request(address, "POST", "/v1/mac", bad).await;
        assert_eq!(answer.status, 400, "{bad:?}");
        let body = answer.assert_compact_json();
        assert_eq!(body["status"], "error");
    }
    running.stop().await;
}

#[tokio::test]
async fn status_and_config_show_allocations_in_the_original_shape() {
    let config = dhcpmanager_apiserver::Config {
        cidrs: vec!["172.58.52.0/24".into()],
        ..test_config()
    };
    let running = start_binding(config, 2).await;
    let bound = fork_post(running.address, "/v1/ip", "default/web", None)
        .await
        .json();

    let answer = get(running.address, "/v1/status").await;
    assert_eq!(answer.status, 200);
    let status = answer.assert_compact_json();
    let allocations = status["Allocations"].as_array().unwrap();
    assert_eq!(allocations.len(), 1);
    let allocation = &allocations[0];
    assert_eq!(allocation["ID"], bound["id"]);
    assert_eq!(allocation["Hostname"], "web.default");
    assert_eq!(allocation["State"], 1);
    assert_eq!(allocation["Lease"]["FixedAddress"], bound["ip"]);
    assert_eq!(allocation["Interface"]["HardwareAddr"], "02:77:00:00:00:01");
    assert_eq!(status["AvailableMACs"], json!(["02:77:00:00:00:02"]));
    let keys: Vec<&String> = allocation.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 5, "{keys:?}");

    let answer = get(running.address, "/v1/config").await;
    assert_eq!(
        answer.assert_compact_json(),
        json!({"cidrs": ["172.58.52.0/24", "10.77.0.0/16"]})
    );
    running.stop().await;
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_time_allocations() {
    let running = start_binding(test_config(), 1).await;
    fork_post(running.address, "/v1/ip", "default/web", None).await;
    get(running.address, "/nowhere").await;
    let answer = get(running.address, "/metrics").await;
    assert_eq!(answer.status, 200);
    assert!(
        answer
            .header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = answer.body;
    assert!(
        text.contains(r#"dhcpmanager_apiserver_http_requests_total{route="/v1/ip",method="POST",status="200"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"dhcpmanager_apiserver_http_requests_total{route="unmatched",method="GET",status="404"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"dhcpmanager_apiserver_allocation_duration_seconds_count{outcome="success"} 1"#
        ),
        "{text}"
    );
    running.stop().await;
}

#[tokio::test]
async fn openapi_document_is_served() {
    let running = start_binding(test_config(), 1).await;
    let answer = get(running.address, "/v1/openapi.json").await;
    assert_eq!(answer.status, 200);
    let document = answer.assert_compact_json();
    assert_eq!(document["openapi"], "3.0.3");
    assert!(document["paths"]["/v1/ip"]["delete"]["requestBody"].is_object());
    running.stop().await;
}

#[tokio::test]
async fn a_backend_that_ignores_its_deadline_is_cut_off_and_withdrawn() {
    let timeout = Duration::from_secs(1);
    let config = dhcpmanager_apiserver::Config {
        request_timeout: timeout,
        ..test_config()
    };
    let backend = FakeBackend::new(FakeBehaviour::Hang).with_macs([mac(1)]);
    let running = start(config, backend).await;

    let started = Instant::now();
    let answer = fork_post(running.address, "/v1/ip", "default/web", None).await;
    let took = started.elapsed();
    assert_eq!(answer.status, 504, "{answer:?}");
    let body = answer.assert_compact_json();
    assert_eq!(body["status"], "timeout");
    assert_eq!(body["ip"], "");
    assert!(
        took < timeout + Duration::from_secs(2),
        "answered after {took:?}"
    );
    // The route dropped the backend's future; dropping must have withdrawn the request.
    let status = running.backend.status().await.unwrap();
    assert!(status.allocations.is_empty(), "{:?}", status.allocations);
    assert_eq!(status.available_macs, vec![mac(1)]);
    running.stop().await;
}

/// A client POSTing in a loop (a MetalLB fork whose `cidrs` do not cover our leases) gets `burst`
/// addresses at once, then a JSON 429 with `Retry-After`, and takes no MAC for it.
#[tokio::test]
async fn allocation_rate_limit_answers_429() {
    let config = dhcpmanager_apiserver::Config {
        allocate_rate: 1,
        allocate_burst: 2,
        ..test_config()
    };
    let running = start_binding(config, 10).await;
    for n in 0..2 {
        let answer = fork_post(running.address, "/v1/ip", &format!("default/s{n}"), None).await;
        assert_eq!(answer.json()["status"], "success", "{answer:?}");
    }
    let answer = fork_post(running.address, "/v1/ip", "default/s2", None).await;
    assert_eq!(answer.status, 429, "{answer:?}");
    let body = answer.assert_compact_json();
    assert_eq!(body["status"], "error");
    assert_eq!(body["ip"], "");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("at most 1 per second"),
        "{body}"
    );
    let retry: u64 = answer.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(
        allocation_count(&running).await,
        2,
        "the refused POST took nothing"
    );
    assert_eq!(free_macs(&running).await, 8);
    running.stop().await;
}
