//! The generated schemas are structural and their CEL rules compile within the cost budget,
//! so the API server accepts the CRDs.

use dhcpmanager_crds::crds;
use serde_json::Value;

mod support;

const KINDS: [&str; 2] = ["DhcpAddress", "MacPool"];

/// Every rule of Kubernetes' "structural schema" that a derived schema could break.
fn structural_violations(schema: &Value, path: &str, violations: &mut Vec<String>) {
    let Some(node) = schema.as_object() else {
        violations.push(format!("{path}: schema is not an object"));
        return;
    };
    for forbidden in [
        "$ref",
        "$defs",
        "definitions",
        "anyOf",
        "oneOf",
        "allOf",
        "not",
    ] {
        if node.contains_key(forbidden) {
            violations.push(format!("{path}: has {forbidden}"));
        }
    }
    if node.contains_key("x-kubernetes-preserve-unknown-fields") {
        violations.push(format!("{path}: preserves unknown fields"));
    }
    if node.contains_key("x-kubernetes-int-or-string") {
        violations.push(format!("{path}: int-or-string (not expected in our types)"));
    }
    let ty = node.get("type").and_then(Value::as_str);
    match ty {
        Some("object") => {
            if node.contains_key("additionalProperties") {
                violations.push(format!(
                    "{path}: additionalProperties (no maps in our types)"
                ));
            }
            let properties = node.get("properties").and_then(Value::as_object);
            if properties.is_none_or(|p| p.is_empty()) {
                violations.push(format!("{path}: object without properties"));
            }
            for (name, property) in properties.into_iter().flatten() {
                structural_violations(property, &format!("{path}.{name}"), violations);
            }
            for required in node
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = required.as_str().unwrap_or_default();
                if !properties.is_some_and(|p| p.contains_key(name)) {
                    violations.push(format!("{path}: requires undeclared {name}"));
                }
            }
        }
        Some("array") => match node.get("items") {
            Some(items) => {
                structural_violations(items, &format!("{path}[]"), violations);
                check_list_type(node, items, path, violations);
            }
            None => violations.push(format!("{path}: array without items")),
        },
        Some("string" | "integer" | "boolean" | "number") => {}
        other => violations.push(format!("{path}: type {other:?}")),
    }
}

fn check_list_type(
    node: &serde_json::Map<String, Value>,
    items: &Value,
    path: &str,
    violations: &mut Vec<String>,
) {
    match node.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("map") => {
            let keys = node
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array);
            let required = items.get("required").and_then(Value::as_array);
            for key in keys.into_iter().flatten() {
                if !required.is_some_and(|r| r.contains(key)) {
                    violations.push(format!("{path}: list-map key {key} is not required"));
                }
            }
            if keys.is_none_or(|k| k.is_empty()) {
                violations.push(format!("{path}: list-map without keys"));
            }
        }
        Some("set") if items.get("type").and_then(Value::as_str) == Some("object") => {
            violations.push(format!("{path}: a set of objects"));
        }
        _ => {}
    }
}

/// Strings and lists under a CEL rule need bounds, or the API server's cost estimate of the
/// rule explodes; we bound every spec field so rules can be added anywhere later.
fn unbounded_spec_fields(schema: &Value, path: &str, found: &mut Vec<String>) {
    match schema.get("type").and_then(Value::as_str) {
        Some("string") if schema.get("maxLength").is_none() && schema.get("enum").is_none() => {
            found.push(path.to_string());
        }
        Some("array") => {
            if schema.get("maxItems").is_none() {
                found.push(path.to_string());
            }
            unbounded_spec_fields(&schema["items"], &format!("{path}[]"), found);
        }
        Some("object") => {
            for (name, property) in schema["properties"].as_object().into_iter().flatten() {
                unbounded_spec_fields(property, &format!("{path}.{name}"), found);
            }
        }
        _ => {}
    }
}

fn all_rules(schema: &Value, rules: &mut Vec<String>) {
    match schema {
        Value::Object(node) => {
            for rule in node
                .get("x-kubernetes-validations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                rules.push(rule["rule"].as_str().unwrap().to_string());
            }
            node.values().for_each(|child| all_rules(child, rules));
        }
        Value::Array(children) => children.iter().for_each(|child| all_rules(child, rules)),
        _ => {}
    }
}

#[test]
fn schemas_are_structural() {
    for kind in KINDS {
        let schema = support::schema_of(kind);
        let mut violations = Vec::new();
        structural_violations(&schema, kind, &mut violations);
        assert!(violations.is_empty(), "{kind}: {violations:#?}");
        let top: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
        assert_eq!(top, ["spec", "status"], "{kind}");
    }
}

#[test]
fn every_spec_field_is_bounded() {
    for kind in KINDS {
        let mut found = Vec::new();
        unbounded_spec_fields(
            &support::schema_of(kind)["properties"]["spec"],
            "spec",
            &mut found,
        );
        assert!(found.is_empty(), "{kind}: unbounded {found:?}");
    }
}

#[test]
fn cel_rules_compile_and_stay_in_scope_and_budget() {
    for kind in KINDS {
        let schema = support::schema_of(kind);
        let compiled = kube_cel::compile_schema(&schema);
        let mut rules = Vec::new();
        all_rules(&schema, &mut rules);
        assert!(!rules.is_empty(), "{kind} has no CEL rules");
        for rule in &rules {
            let program = kube_cel::cel::Program::compile(rule);
            assert!(
                program.is_ok(),
                "{kind}: {rule:?} does not compile: {:?}",
                program.err()
            );
            let warnings =
                kube_cel::analyze_rule(rule, &compiled, kube_cel::ScopeContext::CrdValidation);
            let serious: Vec<_> = warnings
                .iter()
                .filter(|w| !matches!(w.kind, kube_cel::WarningKind::MissingBounds))
                .collect();
            assert!(serious.is_empty(), "{kind}: {rule:?}: {serious:#?}");
        }
    }
}

#[test]
fn names_scope_columns_and_subresources() {
    let [address, pool] = <[_; 2]>::try_from(crds()).unwrap();

    assert_eq!(address.spec.group, "dhcpmanager.io");
    assert_eq!(address.spec.scope, "Namespaced");
    assert_eq!(
        address.spec.names.short_names,
        Some(vec!["dhcpaddr".into(), "da".into()])
    );
    assert_eq!(
        address.spec.names.categories,
        Some(vec!["dhcpmanager".into()])
    );
    let version = &address.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.subresources.as_ref().unwrap().status.is_some());
    let columns: Vec<_> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.json_path.as_str()))
        .collect();
    assert_eq!(
        columns,
        [
            ("IP", ".status.ip"),
            ("MAC", ".status.mac"),
            ("Phase", ".status.phase"),
            ("Node", ".status.node"),
            ("Expires", ".status.expiresAt"),
            ("Age", ".metadata.creationTimestamp"),
        ]
    );

    assert_eq!(pool.spec.scope, "Cluster");
    assert_eq!(
        pool.spec.names.short_names,
        Some(vec!["macpool".into(), "mp".into()])
    );
    assert_eq!(pool.spec.names.categories, Some(vec!["dhcpmanager".into()]));
    let columns: Vec<_> = pool.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Free", "Used", "Age"]);
}

#[test]
fn printer_column_and_selectable_paths_exist_in_the_schema() {
    for crd in crds() {
        let version = &crd.spec.versions[0];
        let schema =
            serde_json::to_value(version.schema.as_ref().unwrap().open_api_v3_schema.as_ref())
                .unwrap();
        let paths = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.json_path.clone())
            .chain(
                version
                    .selectable_fields
                    .iter()
                    .flatten()
                    .map(|f| f.json_path.clone()),
            )
            .filter(|p| !p.starts_with(".metadata."));
        for path in paths {
            let mut node = &schema;
            for part in path.trim_start_matches('.').split('.') {
                node = &node["properties"][part];
            }
            assert!(
                node.get("type").is_some(),
                "{}: {path} is not in the schema",
                crd.spec.names.kind
            );
        }
    }
}

#[test]
fn the_structural_check_catches_what_it_looks_for() {
    let bad = serde_json::json!({
        "type": "object",
        "properties": {
            "untyped": {"description": "no type"},
            "union": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            "loose": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "list": {
                "type": "array",
                "items": {"type": "object", "properties": {"k": {"type": "string"}}},
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["k"]
            }
        }
    });
    let mut violations = Vec::new();
    structural_violations(&bad, "bad", &mut violations);
    for expected in [
        "bad.untyped: type None",
        "bad.union: has anyOf",
        "bad.loose: preserves unknown fields",
        "bad.list: list-map key \"k\" is not required",
    ] {
        assert!(
            violations.iter().any(|v| v == expected),
            "{expected:?} not in {violations:#?}"
        );
    }
}
