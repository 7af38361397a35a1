//! kube-controller-manager running only its garbage collector, for tests on the bare control
//! plane that need owner references honoured (a deleted Service takes its DhcpAddress along).
//! Stopped by PID on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::controlplane::{ControlPlane, tools_bin_dir};

pub struct GarbageCollector {
    child: Child,
    pub log: PathBuf,
}

impl GarbageCollector {
    pub fn start(cp: &ControlPlane) -> GarbageCollector {
        let log = cp.dir().join("kube-controller-manager-gc.log");
        let child = Command::new(tools_bin_dir().join("kube-controller-manager"))
            .arg("--kubeconfig")
            .arg(cp.kubeconfig_path())
            .args([
                "--controllers=garbagecollector",
                "--leader-elect=false",
                // No serving: nothing here needs its health or metrics endpoints.
                "--secure-port=0",
                "--use-service-account-credentials=false",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(&log).expect("the controller-manager log"),
            ))
            .spawn()
            .expect("run kube-controller-manager (scripts/install-k8s-tools.sh builds it)");
        GarbageCollector { child, log }
    }
}

impl Drop for GarbageCollector {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: SIGTERM to our own, not yet reaped child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}
