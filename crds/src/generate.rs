//! The CRD objects and the YAML committed to the Helm chart.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{DhcpAddress, MacPool};

/// Where the generated YAML lives, relative to the workspace root.
pub const CRD_YAML_PATH: &str = "charts/dhcpmanager/crds/dhcpmanager.io_crds.yaml";

pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![DhcpAddress::crd(), MacPool::crd()]
}

/// Both CRDs as one multi-document YAML stream, ready for `kubectl apply -f -`.
pub fn crds_yaml() -> String {
    let mut yaml = String::new();
    for crd in crds() {
        yaml.push_str("---\n");
        // A CRD is plain data (strings, maps, lists, JSON values): serialising it cannot fail.
        yaml.push_str(&serde_saphyr::to_string(&crd).expect("a CRD serialises to YAML"));
    }
    yaml
}
