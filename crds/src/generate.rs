//! The CRD objects and the YAML committed to the Helm chart.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{DhcpAddress, MacPool};

/// Where the generated YAML lives, relative to the workspace root.
pub const CRD_YAML_PATH: &str = "charts/dhcpmanager/crds/dhcpmanager.io_crds.yaml";

/// How to rewrite [`CRD_YAML_PATH`] after changing the types.
pub const REGENERATE_COMMAND: &str = "UPDATE_CRDS=1 cargo test -p dhcpmanager-crds --test drift";

pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![DhcpAddress::crd(), MacPool::crd()]
}

/// Both CRDs as one multi-document YAML stream, ready for `kubectl apply -f -`.
pub fn crds_yaml() -> String {
    let mut yaml = format!(
        "# Generated from the dhcpmanager-crds types; do not edit by hand.\n# Regenerate: {REGENERATE_COMMAND}\n"
    );
    for crd in crds() {
        yaml.push_str("---\n");
        // A CRD is plain data (strings, maps, lists, JSON values): serialising it cannot fail.
        yaml.push_str(&serde_saphyr::to_string(&crd).expect("a CRD serialises to YAML"));
    }
    yaml
}
