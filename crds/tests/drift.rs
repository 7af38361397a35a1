//! The CRD YAML committed to the Helm chart must be exactly what the types generate.
//!
//! `UPDATE_CRDS=1 cargo test -p dhcpmanager-crds --test drift` rewrites the file instead.

use std::path::PathBuf;

use dhcpmanager_crds::{CRD_YAML_PATH, REGENERATE_COMMAND, crds, crds_yaml};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(CRD_YAML_PATH)
}

#[test]
fn committed_crd_yaml_matches_the_types() {
    let path = committed_path();
    let generated = crds_yaml();
    if std::env::var_os("UPDATE_CRDS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &generated).unwrap();
        eprintln!("wrote {}", path.display());
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|err| {
        panic!(
            "cannot read {}: {err}\nGenerate it with: {REGENERATE_COMMAND}",
            path.display()
        )
    });
    if committed != generated {
        let first_difference = committed
            .lines()
            .zip(generated.lines())
            .enumerate()
            .find(|(_, (old, new))| old != new)
            .map(|(n, (old, new))| {
                format!("line {}:\n  committed: {old}\n  generated: {new}", n + 1)
            })
            .unwrap_or_else(|| {
                format!(
                    "one is a prefix of the other ({} vs {} lines)",
                    committed.lines().count(),
                    generated.lines().count()
                )
            });
        panic!(
            "{} is out of date with the dhcpmanager-crds types.\nFirst difference at {first_difference}\n\
             Regenerate it with: {REGENERATE_COMMAND}\n(then review with `git diff -- {CRD_YAML_PATH}`)",
            path.display()
        );
    }
}

#[test]
fn the_yaml_reads_back_as_the_same_crds() {
    let parsed: Vec<CustomResourceDefinition> = serde_saphyr::from_multiple(&crds_yaml()).unwrap();
    assert_eq!(parsed, crds());
    let names: Vec<_> = parsed
        .iter()
        .map(|crd| crd.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        ["dhcpaddresses.dhcpmanager.io", "macpools.dhcpmanager.io"]
    );
}
