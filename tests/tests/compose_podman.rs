//! deploy/docker-compose.yml, the standalone quickstart, run as a user without Kubernetes would:
//! our image (scripts/build-image.sh) under podman + podman-compose (no Docker engine exists on
//! these machines), `network_mode: host` inside a lab namespace with Kea. An address through
//! `/v1/ip`, a container restart that keeps it (the state volume; no DISCOVER), the DELETE that
//! releases it, and `down -v` that leaves no container, volume or link.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dhcpmanager_tests::bootp::MessageType;
use dhcpmanager_tests::lab::{Lab, Server, ServerOpts, active_lease};
use dhcpmanager_tests::node::{self, IMAGE_REPOSITORY, IMAGE_TAG};
use dhcpmanager_tests::podman::Podman;
use dhcpmanager_tests::repo_root;
use serde_json::Value;

const STEP: Duration = Duration::from_secs(120);
/// The compose file refuses to start without DHCP_AUTH_TOKEN (`/v1` on every host interface).
const TOKEN: &str = "compose-test-token-0123456789abcdef";

/// curl inside the lab's agent namespace (where the container's host network is).
fn curl(lab: &Lab, method: &str, body: &str) -> Option<Value> {
    curl_with_token(lab, method, body, TOKEN)
}

fn curl_with_token(lab: &Lab, method: &str, body: &str, token: &str) -> Option<Value> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.agent_ns()))
        .args(["curl", "-sS", "--max-time", "30", "-X", method, "-d", body])
        .args(["-H", &format!("X-Auth-Token: {token}")])
        .arg("http://127.0.0.1:8000/v1/ip")
        .output()
        .expect("curl");
    serde_json::from_slice(&out.stdout).ok()
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as u64
}

#[test]
fn compose_quickstart_under_podman_leases_keeps_across_restart_and_releases() {
    let image = node::dhcpmanager_image();
    let lab = Lab::up().expect("lab");
    lab.start(
        Server::Kea,
        ServerOpts {
            lease: 600,
            ..ServerOpts::default()
        },
    )
    .expect("Kea");
    let podman = Podman::new(&lab.agent_ns());
    podman.podman(&["load", "--quiet", "--input", image.to_str().unwrap()]);
    // The shipped example, pointed at the lab's parent interface instead of eth0.
    let example = std::fs::read_to_string(repo_root().join("examples/standalone.toml")).unwrap();
    assert!(example.contains("interface = \"eth0\""));
    let config = podman.dir().join("standalone.toml");
    std::fs::write(
        &config,
        example.replace(
            "interface = \"eth0\"",
            &format!("interface = \"{}\"", lab.parent()),
        ),
    )
    .unwrap();
    let compose_file = repo_root().join("deploy/docker-compose.yml");
    let image_ref = format!("{IMAGE_REPOSITORY}:{IMAGE_TAG}");
    let env = [
        ("DHCPMANAGER_IMAGE", image_ref.as_str()),
        ("DHCPMANAGER_CONFIG", config.to_str().unwrap()),
        ("DHCP_AUTH_TOKEN", TOKEN),
    ];
    let capture = lab.capture(lab.parent()).expect("capture");

    podman.compose(&compose_file, &env, &["up", "-d"]);
    let started = Instant::now();
    let answer = loop {
        if let Some(answer) = curl(&lab, "POST", r#"{"service":"default/web"}"#) {
            break answer;
        }
        let logs = podman.podman(&["logs", "dhcpmanager_dhcpmanager_1"]);
        assert!(
            started.elapsed() < STEP,
            "the API never answered; logs:\n{logs}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(answer["status"], "success", "{answer}");
    let refused = curl_with_token(&lab, "POST", r#"{"service":"default/other"}"#, "wrong");
    assert_ne!(
        refused.as_ref().map(|a| &a["status"]),
        Some(&Value::from("success")),
        "a wrong token is refused: {refused:?}"
    );
    let ip: Ipv4Addr = answer["ip"].as_str().unwrap().parse().unwrap();
    let leases = lab.wait_for_leases(Server::Kea, "Kea records the lease", STEP, |l| {
        active_lease(l, ip).is_some()
    });
    let lease = active_lease(&leases, ip).unwrap().clone();
    assert_eq!(lease.hostname.as_deref(), Some("web.default"));

    // Restart: SIGTERM keeps the lease, the state volume brings it back (INIT-REBOOT). Kea
    // records expiry in whole seconds: the re-request must fall in a later second to be seen.
    std::thread::sleep(Duration::from_millis(1100));
    let restart_ns = now_ns();
    podman.compose(&compose_file, &env, &["restart"]);
    lab.wait_for_leases(
        Server::Kea,
        "the restarted container re-requests",
        STEP,
        |l| active_lease(l, ip).is_some_and(|l| l.expires > lease.expires),
    );

    let answer = curl(&lab, "DELETE", &format!(r#"{{"ip":"{ip}"}}"#)).expect("DELETE answer");
    assert_eq!(answer["status"], "success", "{answer}");
    lab.wait_for_leases(Server::Kea, "released", STEP, |l| {
        active_lease(l, ip).is_none()
    });
    podman.compose(&compose_file, &env, &["down", "--volumes"]);
    let frames = capture.stop().expect("capture");

    let mac: [u8; 6] = lease
        .mac
        .as_deref()
        .unwrap()
        .parse::<dhcpmanager_engine::dhcp::MacAddr>()
        .unwrap()
        .octets();
    let ours: Vec<_> = frames.iter().filter(|f| f.dhcp.chaddr == mac).collect();
    let after_restart = |kind| {
        ours.iter()
            .filter(|f| f.time_ns > restart_ns && f.message_type() == Some(kind))
            .count()
    };
    assert_eq!(after_restart(MessageType::Discover), 0, "{ours:#?}");
    assert!(after_restart(MessageType::Request) >= 1, "{ours:#?}");
    assert!(after_restart(MessageType::Release) >= 1, "{ours:#?}");
    assert_eq!(podman.podman(&["ps", "--all", "--quiet"]).trim(), "");
    assert_eq!(podman.podman(&["volume", "ls", "--quiet"]).trim(), "");
    let links = Command::new("ip")
        .args(["-n", &lab.agent_ns(), "-o", "link", "show"])
        .output()
        .expect("ip link");
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    let names: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or(""))
        .collect();
    assert_eq!(names, ["lo", lab.parent()], "no link left: {links}");
}
