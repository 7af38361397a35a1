//! The test control plane itself: it serves core objects and CRDs, enforces
//! RBAC on ServiceAccount tokens, and leaves no process behind.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use dhcpmanager_tests::controlplane::{
    ControlPlane, ControlPlaneError, check_tools_in, tools_bin_dir,
};

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.selftest.dhcpmanager.io
spec:
  group: selftest.dhcpmanager.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
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
            properties:
              size: {type: integer}
"#;

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn kubectl_as(kubeconfig: &Path, args: &[&str]) -> Output {
    std::process::Command::new(tools_bin_dir().join("kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl runs")
}

#[test]
fn missing_tools_fail_with_the_install_command() {
    let empty = std::env::temp_dir().join(format!("dhcpmanager-no-tools-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let err = check_tools_in(&empty).expect_err("an empty bin dir has no tools");
    std::fs::remove_dir(&empty).unwrap();
    assert!(matches!(err, ControlPlaneError::ToolsMissing { .. }));
    let message = err.to_string();
    assert!(
        message.contains("scripts/install-k8s-tools.sh"),
        "{message}"
    );
    assert!(message.contains("kube-apiserver"), "{message}");
}

#[test]
fn control_plane_serves_objects_enforces_rbac_and_stops_cleanly() {
    let started = Instant::now();
    let cp = ControlPlane::start();
    eprintln!(
        "control plane ready in {:?} at {}",
        started.elapsed(),
        cp.server_url()
    );
    let dir = cp.dir().to_path_buf();
    let processes = cp.running_processes();
    assert!(
        processes.len() >= 2,
        "etcd and kube-apiserver run: {processes:?}"
    );

    let namespaces = cp.kubectl(&["get", "ns", "-o", "name"]);
    assert!(namespaces.status.success(), "{}", stderr(&namespaces));
    assert!(
        stdout(&namespaces).contains("namespace/kube-system"),
        "{}",
        stdout(&namespaces)
    );

    let ns = cp.create_namespace("selftest").unwrap();
    cp.apply_yaml(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: greeting, namespace: {ns}}}\ndata: {{hello: world}}\n"
    ))
    .unwrap();
    let value = cp
        .try_kubectl(&[
            "-n",
            &ns,
            "get",
            "configmap",
            "greeting",
            "-o",
            "jsonpath={.data.hello}",
        ])
        .unwrap();
    assert_eq!(value, "world");

    cp.apply_yaml(CRD).unwrap();
    cp.try_kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/widgets.selftest.dhcpmanager.io",
    ])
    .unwrap();
    cp.apply_yaml(&format!(
        "apiVersion: selftest.dhcpmanager.io/v1\nkind: Widget\nmetadata: {{name: w1, namespace: {ns}}}\nspec: {{size: 3}}\n"
    ))
    .unwrap();
    let size = cp
        .try_kubectl(&[
            "-n",
            &ns,
            "get",
            "widgets",
            "w1",
            "-o",
            "jsonpath={.spec.size}",
        ])
        .unwrap();
    assert_eq!(size, "3");

    let sa_kubeconfig = cp.service_account_kubeconfig(&ns, "agent").unwrap();
    let pods_path = format!("/api/v1/namespaces/{ns}/pods");
    let denied = kubectl_as(&sa_kubeconfig, &["get", "--raw", &pods_path]);
    assert!(
        !denied.status.success(),
        "listing pods without RBAC: {}",
        stdout(&denied)
    );
    // Forbidden (403) naming the ServiceAccount: the token authenticated, RBAC refused.
    let message = stderr(&denied);
    assert!(message.contains("Forbidden"), "{message}");
    assert!(
        message.contains(&format!("system:serviceaccount:{ns}:agent")),
        "{message}"
    );

    cp.apply_yaml(&format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: pod-reader, namespace: {ns}}}
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: agent-reads-pods, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}}
subjects:
- {{kind: ServiceAccount, name: agent, namespace: {ns}}}
"#
    ))
    .unwrap();
    // The RBAC authorizer learns of new bindings through an informer: poll,
    // with a deadline only as a safety net.
    let deadline = Instant::now() + Duration::from_secs(60);
    let allowed = loop {
        let attempt = kubectl_as(&sa_kubeconfig, &["get", "--raw", &pods_path]);
        if attempt.status.success() || Instant::now() > deadline {
            break attempt;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        allowed.status.success(),
        "with Role+RoleBinding: {}",
        stderr(&allowed)
    );
    let list: serde_json::Value = serde_json::from_slice(&allowed.stdout).unwrap();
    assert_eq!(list["kind"], "PodList");

    cp.stop();
    assert_eq!(cp.running_processes(), Vec::<u32>::new());
    for pid in processes {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} still exists"
        );
    }
    assert!(!dir.exists(), "{} removed", dir.display());
}

#[test]
fn shared_control_plane_is_started_once() {
    let first = ControlPlane::shared();
    let second = ControlPlane::shared();
    assert!(std::ptr::eq(first, second));
    let ns = first.create_namespace("shared").unwrap();
    let listed = second
        .try_kubectl(&["get", "ns", &ns, "-o", "name"])
        .unwrap();
    assert_eq!(listed.trim(), format!("namespace/{ns}"));
    assert!(!first.admin_token().is_empty());
    assert!(first.kubeconfig_path().is_file());
}
