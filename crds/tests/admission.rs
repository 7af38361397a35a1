//! Objects the API server must accept or reject under the CRDs' patterns, bounds and CEL
//! rules, checked with a local OpenAPI validator and kube-cel (see `support`), plus serde
//! round trips of the typed resources.

use std::net::Ipv4Addr;

use dhcpmanager_crds::{
    DhcpAddress, DhcpAddressStatus, LeaseRecordStatus, MacAllocation, MacPool, MacPoolStatus,
    Phase, condition_type,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::{Value, json};

mod support;
use support::{admit, assert_admitted, assert_rejected, example};

const ADDRESS: &str = "DhcpAddress";
const POOL: &str = "MacPool";

fn address(spec: Value) -> Value {
    json!({
        "apiVersion": "dhcpmanager.io/v1alpha1",
        "kind": "DhcpAddress",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": spec,
    })
}

fn pool(spec: Value) -> Value {
    json!({
        "apiVersion": "dhcpmanager.io/v1alpha1",
        "kind": "MacPool",
        "metadata": {"name": "pool"},
        "spec": spec,
    })
}

// ---- examples and round trips ----

#[test]
fn the_examples_are_admitted_and_round_trip_through_the_types() {
    let addresses = example("dhcpaddress.yaml");
    assert_eq!(addresses.len(), 2);
    for object in addresses {
        assert_admitted(ADDRESS, &object, None);
        let typed: DhcpAddress = serde_json::from_value(object.clone()).unwrap();
        assert_eq!(serde_json::to_value(&typed).unwrap(), object);
    }
    let pools = example("macpool.yaml");
    assert_eq!(pools.len(), 1);
    for object in pools {
        assert_admitted(POOL, &object, None);
        let typed: MacPool = serde_json::from_value(object.clone()).unwrap();
        assert_eq!(serde_json::to_value(&typed).unwrap(), object);
        assert_eq!(typed.all_macs().unwrap().len(), 258);
    }
}

#[test]
fn the_example_hostnames_follow_the_rule() {
    let names: Vec<String> = example("dhcpaddress.yaml")
        .into_iter()
        .map(|o| serde_json::from_value::<DhcpAddress>(o).unwrap().hostname())
        .collect();
    assert_eq!(names, ["web.shop", "printer-gw"]);
}

fn full_status() -> DhcpAddressStatus {
    let at = |s: &str| Time(s.parse().unwrap());
    DhcpAddressStatus {
        phase: Some(Phase::Bound),
        ip: Some(Ipv4Addr::new(192, 168, 1, 100)),
        prefix_length: Some(24),
        gateway: Some(Ipv4Addr::new(192, 168, 1, 1)),
        dns: vec![Ipv4Addr::new(192, 168, 1, 1), Ipv4Addr::new(9, 9, 9, 9)],
        mac: Some("02:d4:c9:00:00:07".into()),
        client_id: Some("ff0000000100020000ab11".into()),
        interface: Some("dm-3f2a9c".into()),
        node: Some("worker-1".into()),
        server_id: Some(Ipv4Addr::new(192, 168, 1, 1)),
        obtained_at: Some(at("2026-01-02T03:04:05Z")),
        renew_at: Some(at("2026-01-02T03:09:05Z")),
        rebind_at: Some(at("2026-01-02T03:12:50Z")),
        expires_at: Some(at("2026-01-02T03:14:05Z")),
        last_error: None,
        observed_generation: Some(3),
        conditions: vec![Condition {
            type_: condition_type::READY.into(),
            status: "True".into(),
            reason: "Bound".into(),
            message: "leased 192.168.1.100 from 192.168.1.1".into(),
            last_transition_time: at("2026-01-02T03:04:05Z"),
            observed_generation: Some(3),
        }],
        lease: Some(LeaseRecordStatus {
            ip: Ipv4Addr::new(192, 168, 1, 100),
            prefix_length: 24,
            routers: vec![Ipv4Addr::new(192, 168, 1, 1)],
            dns: vec![Ipv4Addr::new(9, 9, 9, 9)],
            domain_name: Some("lab.example".into()),
            mac: "02:d4:c9:00:00:07".into(),
            client_id: "ff0000000100020000ab11".into(),
            server_id: Ipv4Addr::new(192, 168, 1, 1),
            server_mac: Some("02:00:00:00:00:01".into()),
            lease_seconds: 600,
            obtained_at: at("2026-01-02T03:04:05Z"),
            renew_at: at("2026-01-02T03:09:05Z"),
            rebind_at: at("2026-01-02T03:12:50Z"),
            expires_at: at("2026-01-02T03:14:05Z"),
        }),
    }
}

#[test]
fn a_full_status_round_trips_and_is_admitted() {
    let mut object = address(json!({"service": "shop/web"}));
    object["status"] = serde_json::to_value(full_status()).unwrap();
    assert_eq!(
        object["status"]["lease"]["expiresAt"],
        "2026-01-02T03:14:05Z"
    );
    assert_eq!(object["status"]["phase"], "Bound");
    let typed: DhcpAddress = serde_json::from_value(object.clone()).unwrap();
    assert_eq!(typed.status, Some(full_status()));
    assert_admitted(ADDRESS, &object, None);
}

#[test]
fn a_pool_status_round_trips_and_duplicate_allocations_are_rejected() {
    let status = MacPoolStatus {
        free: 1,
        used: 1,
        allocations: vec![MacAllocation {
            mac: "02:00:00:00:00:01".into(),
            address: "shop/web".into(),
            node: Some("worker-1".into()),
        }],
    };
    let mut object = pool(json!({"ranges": [{"start": "02:00:00:00:00:00", "count": 2}]}));
    object["status"] = serde_json::to_value(&status).unwrap();
    let typed: MacPool = serde_json::from_value(object.clone()).unwrap();
    assert_eq!(typed.status.as_ref(), Some(&status));
    assert_eq!(typed.free_macs().unwrap().len(), 1);
    assert_admitted(POOL, &object, None);

    let taken_twice = json!({"mac": "02:00:00:00:00:01", "address": "shop/other"});
    object["status"]["allocations"]
        .as_array_mut()
        .unwrap()
        .push(taken_twice);
    assert_rejected(POOL, &object, None, "Duplicate value");
}

// ---- DhcpAddress spec: formats ----

#[test]
fn an_empty_spec_is_enough() {
    assert_admitted(ADDRESS, &address(json!({})), None);
}

#[test]
fn macs_are_lowercase_colon_separated() {
    assert_admitted(ADDRESS, &address(json!({"mac": "02:aa:bb:cc:dd:ee"})), None);
    for bad in [
        "02:AA:BB:CC:DD:EE",
        "02-aa-bb-cc-dd-ee",
        "02:aa:bb:cc:dd",
        "02aabbccddee",
    ] {
        assert_rejected(ADDRESS, &address(json!({"mac": bad})), None, "should match");
    }
}

#[test]
fn hostnames_are_dns_names() {
    for good in ["web", "web.shop", "a-1.b-2"] {
        assert_admitted(ADDRESS, &address(json!({"hostname": good})), None);
    }
    for bad in ["Web", "web_1", "-web", "web.", ""] {
        assert_rejected(
            ADDRESS,
            &address(json!({"hostname": bad})),
            None,
            "should match",
        );
    }
    let too_long = vec!["a".repeat(63); 4].join(".");
    assert_rejected(
        ADDRESS,
        &address(json!({"hostname": too_long})),
        None,
        "longer than 253",
    );
}

#[test]
fn services_are_namespace_slash_name() {
    assert_admitted(ADDRESS, &address(json!({"service": "shop/web"})), None);
    assert_admitted(ADDRESS, &address(json!({"service": "web"})), None);
    for bad in ["shop/web/x", "/web", "Shop/web"] {
        assert_rejected(
            ADDRESS,
            &address(json!({"service": bad})),
            None,
            "should match",
        );
    }
}

#[test]
fn interfaces_are_kernel_names() {
    assert_admitted(ADDRESS, &address(json!({"interface": "enp3s0.100"})), None);
    assert_rejected(
        ADDRESS,
        &address(json!({"interface": "eth/0"})),
        None,
        "should match",
    );
    assert_rejected(
        ADDRESS,
        &address(json!({"interface": "a234567890123456"})),
        None,
        "longer than 15",
    );
}

#[test]
fn unknown_fields_and_wrong_types_are_rejected() {
    assert_rejected(
        ADDRESS,
        &address(json!({"macAddress": "02:00:00:00:00:01"})),
        None,
        "not declared",
    );
    assert_rejected(
        ADDRESS,
        &address(json!({"assignToInterface": "yes"})),
        None,
        "must be a boolean",
    );
}

// ---- DhcpAddress spec: options and client id ----

fn with_option(code: i64, value: &str) -> Value {
    address(json!({"extraOptions": [{"code": code, "value": value}]}))
}

#[test]
fn extra_options_are_codes_1_to_254_with_hex_values() {
    assert_admitted(ADDRESS, &with_option(77, "6d6574616c6c62"), None);
    assert_admitted(ADDRESS, &with_option(80, ""), None);
    assert_admitted(ADDRESS, &with_option(1, "FFFFFF00"), None);
    assert_rejected(
        ADDRESS,
        &with_option(0, "00"),
        None,
        "greater than or equal to 1",
    );
    assert_rejected(
        ADDRESS,
        &with_option(255, "00"),
        None,
        "less than or equal to 254",
    );
    assert_rejected(ADDRESS, &with_option(77, "abc"), None, "should match");
    assert_rejected(ADDRESS, &with_option(77, "ab:cd"), None, "should match");
}

#[test]
fn options_dhcpmanager_writes_itself_are_refused() {
    for code in [12, 50, 51, 52, 53, 54, 55, 57, 60, 61] {
        assert_rejected(
            ADDRESS,
            &with_option(code, "00"),
            None,
            "managed by dhcpmanager",
        );
    }
    for code in [3, 43, 77, 81, 119, 121, 254] {
        assert_admitted(ADDRESS, &with_option(code, "00"), None);
    }
}

#[test]
fn an_option_code_appears_once() {
    let object = address(json!({"extraOptions": [
        {"code": 77, "value": "01"},
        {"code": 77, "value": "02"},
    ]}));
    assert_rejected(ADDRESS, &object, None, "Duplicate value");
}

#[test]
fn custom_client_id_needs_value() {
    assert_rejected(
        ADDRESS,
        &address(json!({"clientId": {"mode": "Custom"}})),
        None,
        "custom client id needs value",
    );
    assert_admitted(
        ADDRESS,
        &address(json!({"clientId": {"mode": "Custom", "value": "01020304"}})),
        None,
    );
    assert_rejected(
        ADDRESS,
        &address(json!({"clientId": {"mode": "Custom", "value": "01"}})),
        None,
        "at least 4 characters",
    );
}

#[test]
fn only_custom_client_ids_take_a_value() {
    for mode in ["Stable", "Mac"] {
        assert_admitted(ADDRESS, &address(json!({"clientId": {"mode": mode}})), None);
        assert_rejected(
            ADDRESS,
            &address(json!({"clientId": {"mode": mode, "value": "01020304"}})),
            None,
            "only used with mode Custom",
        );
    }
    assert_rejected(
        ADDRESS,
        &address(json!({"clientId": {"mode": "stable"}})),
        None,
        "unsupported value",
    );
    assert_rejected(
        ADDRESS,
        &address(json!({"clientId": {}})),
        None,
        "Required value",
    );
}

#[test]
fn a_fixed_mac_and_a_pool_exclude_each_other() {
    let both = address(json!({"mac": "02:00:00:00:00:01", "macPoolRef": "pool"}));
    assert_rejected(ADDRESS, &both, None, "not both");
}

// ---- DhcpAddress spec: immutability ----

#[test]
fn identity_fields_cannot_change_or_disappear_once_set() {
    let cases = [
        (
            "mac",
            json!("02:00:00:00:00:01"),
            json!("02:00:00:00:00:02"),
        ),
        ("macPoolRef", json!("pool-a"), json!("pool-b")),
        (
            "clientId",
            json!({"mode": "Stable"}),
            json!({"mode": "Mac"}),
        ),
        ("interface", json!("eth0"), json!("eth1")),
    ];
    for (field, before, after) in cases {
        let old = address(json!({ field: before.clone() }));
        let changed = address(json!({ field: after }));
        let removed = address(json!({}));
        let kept = address(json!({ field: before, "hostname": "renamed" }));
        let message = format!("{field} is immutable once set");
        assert_rejected(ADDRESS, &changed, Some(&old), &message);
        assert_rejected(ADDRESS, &removed, Some(&old), &message);
        assert_admitted(ADDRESS, &kept, Some(&old));
        // Unset before: the first value may be set later.
        assert_admitted(ADDRESS, &old, Some(&removed));
    }
}

#[test]
fn a_custom_client_id_value_is_immutable_too() {
    let old = address(json!({"clientId": {"mode": "Custom", "value": "01020304"}}));
    let new = address(json!({"clientId": {"mode": "Custom", "value": "01020305"}}));
    assert_rejected(ADDRESS, &new, Some(&old), "clientId is immutable once set");
}

#[test]
fn other_fields_may_change() {
    let old =
        address(json!({"service": "shop/web", "node": "worker-1", "assignToInterface": false}));
    let new =
        address(json!({"service": "shop/web2", "node": "worker-2", "assignToInterface": true}));
    assert_admitted(ADDRESS, &new, Some(&old));
}

// ---- MacPool ----

fn with_range(start: &str, count: i64) -> Value {
    pool(json!({"ranges": [{"start": start, "count": count}]}))
}

#[test]
fn ranges_start_at_local_unicast_macs() {
    for good in [
        "02:00:00:00:00:00",
        "06:11:22:00:00:00",
        "aa:00:00:00:00:00",
        "fe:00:00:00:00:00",
    ] {
        assert_admitted(POOL, &with_range(good, 10), None);
    }
    for bad in [
        "00:11:22:00:00:00",
        "01:00:5e:00:00:00",
        "03:00:00:00:00:00",
        "0c:00:00:00:00:00",
    ] {
        assert_rejected(
            POOL,
            &with_range(bad, 10),
            None,
            "locally administered unicast",
        );
    }
    assert_rejected(
        POOL,
        &with_range("02:00:00:00:00:0G", 10),
        None,
        "should match",
    );
}

#[test]
fn range_counts_are_1_to_65536() {
    assert_admitted(POOL, &with_range("02:00:00:00:00:00", 65536), None);
    assert_rejected(
        POOL,
        &with_range("02:00:00:00:00:00", 0),
        None,
        "greater than or equal to 1",
    );
    assert_rejected(
        POOL,
        &with_range("02:00:00:00:00:00", 65537),
        None,
        "less than or equal to 65536",
    );
}

#[test]
fn explicit_macs_are_a_set_of_lowercase_macs() {
    assert_admitted(
        POOL,
        &pool(json!({"macs": ["00:11:22:33:44:55", "02:00:00:00:00:01"]})),
        None,
    );
    assert_rejected(
        POOL,
        &pool(json!({"macs": ["00:11:22:33:44:5F"]})),
        None,
        "should match",
    );
    assert_rejected(
        POOL,
        &pool(json!({"macs": ["02:00:00:00:00:01", "02:00:00:00:00:01"]})),
        None,
        "Duplicate value",
    );
}

#[test]
fn every_rejection_in_this_file_is_real() {
    // Guards the helpers: a valid object gives no complaint at all, so the needles above are
    // matched against real rejections rather than noise.
    assert_eq!(
        admit(ADDRESS, &address(json!({"service": "shop/web"})), None),
        Ok(())
    );
    assert_eq!(
        admit(POOL, &with_range("02:00:00:00:00:00", 1), None),
        Ok(())
    );
}
