//! What the API server would do to an object on create or update, minus the server: the
//! OpenAPI checks our schemas use (a small validator) and the CEL rules (kube-cel).

#![allow(dead_code)] // each test binary uses its own subset

pub mod openapi;

use dhcpmanager_crds::crds;
use serde_json::Value;

/// The `openAPIV3Schema` of the CRD for `kind`, as JSON.
pub fn schema_of(kind: &str) -> Value {
    let crd = crds()
        .into_iter()
        .find(|crd| crd.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for kind {kind}"));
    let version = crd.spec.versions.into_iter().next().unwrap();
    serde_json::to_value(version.schema.unwrap().open_api_v3_schema.unwrap()).unwrap()
}

/// Validates `object` (and, on update, the transition from `old`) like the API server does.
/// Returns every complaint, OpenAPI ones first.
pub fn admit(kind: &str, object: &Value, old: Option<&Value>) -> Result<(), Vec<String>> {
    let schema = schema_of(kind);
    let mut errors = Vec::new();
    openapi::validate(&schema, object, "", &mut errors);
    if let Err(cel_errors) = kube_cel::Validator::new().validate(&schema, object, old) {
        errors.extend(cel_errors.iter().map(|e| e.to_string()));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Asserts that `admit` rejects the object and that some complaint mentions `needle`.
#[track_caller]
pub fn assert_rejected(kind: &str, object: &Value, old: Option<&Value>, needle: &str) {
    match admit(kind, object, old) {
        Ok(()) => panic!("admitted, expected a complaint about {needle:?}: {object}"),
        Err(errors) => assert!(
            errors.iter().any(|e| e.contains(needle)),
            "expected a complaint about {needle:?}, got {errors:#?}"
        ),
    }
}

#[track_caller]
pub fn assert_admitted(kind: &str, object: &Value, old: Option<&Value>) {
    if let Err(errors) = admit(kind, object, old) {
        panic!("rejected {object}: {errors:#?}");
    }
}

/// The YAML documents of a file under the workspace's `examples/`, as JSON values.
pub fn example(file: &str) -> Vec<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
