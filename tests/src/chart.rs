//! Rendering pieces of the Helm chart with the real `helm`, so tests run with exactly what the
//! chart grants (its RBAC above all).

use std::process::Command;

use crate::controlplane::tools_bin_dir;

/// A stand-in for the Prometheus Operator's CRD: enough for the server to accept (and so
/// validate the envelope of) the chart's ServiceMonitors.
pub const SERVICE_MONITOR_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {plural: servicemonitors, singular: servicemonitor, kind: ServiceMonitor}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-preserve-unknown-fields: true
"#;

/// The release name the tests install the chart as.
pub const RELEASE: &str = "dhcpmanager";
/// The agent's ServiceAccount in that release.
pub const AGENT_SERVICE_ACCOUNT: &str = "dhcpmanager-agent";
/// The apiserver's ServiceAccount in that release.
pub const APISERVER_SERVICE_ACCOUNT: &str = "dhcpmanager-apiserver";

/// `helm template` of one template file of the chart, for `namespace`, with `--set` values.
pub fn render_template_with(template: &str, namespace: &str, set: &[&str]) -> String {
    let chart = crate::repo_root().join("charts/dhcpmanager");
    let mut helm = Command::new(tools_bin_dir().join("helm"));
    helm.arg("template").arg(RELEASE).arg(&chart).args([
        "--namespace",
        namespace,
        "--show-only",
        template,
    ]);
    // helm assumes Kubernetes v1.20 without a cluster; the chart needs a current one.
    helm.args(["--kube-version", "1.34.4"]);
    for value in set {
        helm.args(["--set", value]);
    }
    let out = helm
        .output()
        .expect("run helm (scripts/install-k8s-tools.sh builds it)");
    assert!(
        out.status.success(),
        "helm template {template}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 YAML")
}

pub fn render_template(template: &str, namespace: &str) -> String {
    render_template_with(template, namespace, &[])
}
