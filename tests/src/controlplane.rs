//! A real Kubernetes control plane (etcd + kube-apiserver on 127.0.0.1) for
//! end-to-end tests, driven through `tests/k8s/controlplane.sh`.
//!
//! There is no controller-manager or scheduler: owner references are never
//! garbage-collected, deleted namespaces stay `Terminating`, and no `default`
//! ServiceAccount appears in new namespaces. Tests create what they need
//! explicitly, each in its own namespace ([`ControlPlane::create_namespace`]).
//!
//! [`ControlPlane::shared`] gives one control plane per test binary;
//! [`ControlPlane::start`] gives a private one that stops on drop. Either way a
//! watchdog stops it once the test binary is gone, because statics are never
//! dropped and a killed test runs no destructors.

use crate::repo_root;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// What went wrong while driving the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("Kubernetes test tools missing ({missing}); build them with: {install}")]
    ToolsMissing { missing: String, install: String },
    #[error("could not run {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{command} failed ({status}):\n{stderr}")]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("control plane in {dir} is missing {file}: {source}")]
    State {
        dir: PathBuf,
        file: &'static str,
        source: std::io::Error,
    },
}

/// One etcd + kube-apiserver pair whose state lives in `dir`.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    server_url: String,
    admin_token: String,
    stopped: AtomicBool,
}

const TOOLS: [&str; 3] = ["etcd", "kube-apiserver", "kubectl"];

static SHARED: OnceLock<ControlPlane> = OnceLock::new();
static NEXT_INSTANCE: AtomicU32 = AtomicU32::new(0);

/// Where `scripts/install-k8s-tools.sh` puts its binaries.
pub fn tools_bin_dir() -> PathBuf {
    let root = std::env::var_os("DHCPMANAGER_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            Path::new(&home).join(".cache/dhcpmanager/tools")
        });
    root.join("bin")
}

fn controlplane_script() -> PathBuf {
    repo_root().join("tests/k8s/controlplane.sh")
}

fn install_command() -> String {
    repo_root()
        .join("scripts/install-k8s-tools.sh")
        .display()
        .to_string()
}

/// Fails, never skips: a missing tool is a broken test environment.
pub fn check_tools() -> Result<(), ControlPlaneError> {
    check_tools_in(&tools_bin_dir())
}

/// [`check_tools`] for the binaries in `bin`.
pub fn check_tools_in(bin: &Path) -> Result<(), ControlPlaneError> {
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|tool| !bin.join(tool).is_file())
        .map(|tool| bin.join(tool).display().to_string())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ControlPlaneError::ToolsMissing {
            missing: missing.join(", "),
            install: install_command(),
        })
    }
}

pub(crate) fn run(
    command: &mut Command,
    stdin: Option<&[u8]>,
) -> Result<Output, ControlPlaneError> {
    let description = format!("{command:?}");
    let describe = || description.clone();
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| ControlPlaneError::Spawn {
        command: describe(),
        source,
    })?;
    if let Some(input) = stdin {
        // Dropping the handle closes the pipe so the child sees end of input.
        let mut pipe = child.stdin.take().expect("stdin was piped");
        pipe.write_all(input)
            .map_err(|source| ControlPlaneError::Spawn {
                command: describe(),
                source,
            })?;
    }
    child
        .wait_with_output()
        .map_err(|source| ControlPlaneError::Spawn {
            command: describe(),
            source,
        })
}

pub(crate) fn succeeded(command: &Command, output: Output) -> Result<Output, ControlPlaneError> {
    if output.status.success() {
        Ok(output)
    } else {
        Err(ControlPlaneError::CommandFailed {
            command: format!("{command:?}"),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

fn read_state(dir: &Path, file: &'static str) -> Result<String, ControlPlaneError> {
    fs::read_to_string(dir.join(file))
        .map(|text| text.trim().to_string())
        .map_err(|source| ControlPlaneError::State {
            dir: dir.to_path_buf(),
            file,
            source,
        })
}

impl ControlPlane {
    /// Starts a private control plane in a fresh temporary directory; it stops
    /// (and its directory is removed) on [`stop`](Self::stop) or drop.
    /// Panics with the install command when the tools are missing.
    pub fn start() -> ControlPlane {
        Self::try_start().unwrap_or_else(|err| panic!("control plane did not start: {err}"))
    }

    /// The control plane of this test binary, started on first use and
    /// stopped by the watchdog once the process exits.
    pub fn shared() -> &'static ControlPlane {
        SHARED.get_or_init(|| {
            Self::try_start()
                .unwrap_or_else(|err| panic!("shared control plane did not start: {err}"))
        })
    }

    /// Starts a control plane in a fresh temporary directory.
    pub fn try_start() -> Result<ControlPlane, ControlPlaneError> {
        check_tools()?;
        let dir = std::env::temp_dir().join(format!(
            "dhcpmanager-cp-{}-{}",
            std::process::id(),
            NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed)
        ));
        let mut up = Command::new(controlplane_script());
        up.arg("up")
            .arg(&dir)
            .env("CP_PURGE", "1")
            .env("CP_OWNER_PID", std::process::id().to_string());
        let output = run(&mut up, None)?;
        if let Err(err) = succeeded(&up, output) {
            // Half-started processes must not outlive the failed start.
            let _ = run(
                Command::new(controlplane_script())
                    .arg("down")
                    .arg(&dir)
                    .env("CP_PURGE", "0"),
                None,
            );
            return Err(err);
        }
        let address = read_state(&dir, "apiserver.address")?;
        let admin_token = read_state(&dir, "admin.token")?;
        Ok(ControlPlane {
            server_url: format!("https://{address}"),
            dir,
            admin_token,
            stopped: AtomicBool::new(false),
        })
    }

    /// A control plane that someone else started in `dir` and will stop (e.g. the one of
    /// `tests/k8s/node.sh`): the same kubectl and helpers, but [`stop`](Self::stop) and drop
    /// leave it running.
    pub fn attach(dir: &Path) -> Result<ControlPlane, ControlPlaneError> {
        let address = read_state(dir, "apiserver.address")?;
        let admin_token = read_state(dir, "admin.token")?;
        Ok(ControlPlane {
            server_url: format!("https://{address}"),
            dir: dir.to_path_buf(),
            admin_token,
            stopped: AtomicBool::new(true),
        })
    }

    /// The directory holding certificates, kubeconfigs, PID files and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A kubeconfig for `admin` (group `system:masters`).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// `https://ADDRESS:PORT` of the kube-apiserver (127.0.0.1 unless started otherwise).
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The bearer token of `admin` (group `system:masters`).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The CA certificate (PEM) that signed the kube-apiserver's certificate.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join("pki/ca.crt")
    }

    fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(tools_bin_dir().join("kubectl"));
        command
            .arg("--kubeconfig")
            .arg(self.kubeconfig_path())
            .args(args);
        command
    }

    /// Runs kubectl as admin; the caller judges the exit status.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        let mut command = self.kubectl_command(args);
        run(&mut command, None).unwrap_or_else(|err| panic!("{err}"))
    }

    /// Runs kubectl as admin and returns its stdout, or the failure with stderr.
    pub fn try_kubectl(&self, args: &[&str]) -> Result<String, ControlPlaneError> {
        let mut command = self.kubectl_command(args);
        let output = run(&mut command, None)?;
        let output = succeeded(&command, output)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `kubectl apply -f -` of a YAML (possibly multi-document) as admin.
    pub fn apply_yaml(&self, yaml: &str) -> Result<String, ControlPlaneError> {
        let mut command = self.kubectl_command(&["apply", "-f", "-"]);
        let output = run(&mut command, Some(yaml.as_bytes()))?;
        let output = succeeded(&command, output)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Creates a namespace named `prefix-<pid>-<n>`, unique per process and
    /// call, so tests sharing a control plane stay apart.
    pub fn create_namespace(&self, prefix: &str) -> Result<String, ControlPlaneError> {
        static NEXT_NAMESPACE: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT_NAMESPACE.fetch_add(1, Ordering::Relaxed)
        );
        self.try_kubectl(&["create", "namespace", &name])?;
        Ok(name)
    }

    /// Writes a kubeconfig authenticating as ServiceAccount `namespace/sa`
    /// (created if missing) with a TokenRequest token, and returns its path.
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        sa: &str,
    ) -> Result<PathBuf, ControlPlaneError> {
        let out = self.dir.join(format!("sa-{namespace}-{sa}.kubeconfig"));
        let mut command = Command::new(repo_root().join("tests/k8s/sa-kubeconfig.sh"));
        command.arg(&self.dir).arg(namespace).arg(sa).arg(&out);
        let output = run(&mut command, None)?;
        succeeded(&command, output)?;
        Ok(out)
    }

    /// PIDs of live processes started for this control plane, found by their
    /// command line naming its directory (not by PID files, which could lie).
    pub fn running_processes(&self) -> Vec<u32> {
        processes_mentioning(&self.dir)
    }

    /// Stops only kube-apiserver (etcd keeps the data): an API outage for the clients.
    pub fn stop_apiserver(&self) {
        let pid_file = self.dir.join("kube-apiserver.pid");
        let pid: i32 = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .expect("kube-apiserver.pid");
        assert!(
            processes_mentioning(&self.dir).contains(&(pid as u32)),
            "pid {pid} is not this control plane's kube-apiserver"
        );
        // SAFETY: kill(2) on a PID we just checked runs our kube-apiserver.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        while processes_mentioning(&self.dir).contains(&(pid as u32)) {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Starts whatever is not running (after [`stop_apiserver`](Self::stop_apiserver)) on the
    /// same ports and data, and waits until it is ready.
    pub fn restart(&self) {
        let mut up = Command::new(controlplane_script());
        up.arg("up")
            .arg(&self.dir)
            .env("CP_PURGE", "1")
            .env("CP_OWNER_PID", std::process::id().to_string());
        let output = run(&mut up, None).expect("controlplane.sh up");
        succeeded(&up, output).expect("control plane restarted");
    }

    /// Stops kube-apiserver and etcd by their recorded PIDs and removes the
    /// directory. Idempotent.
    pub fn stop(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut down = Command::new(controlplane_script());
        down.arg("down").arg(&self.dir).env("CP_PURGE", "1");
        match run(&mut down, None).and_then(|output| succeeded(&down, output)) {
            Ok(_) => {}
            Err(err) => eprintln!("control plane stop failed: {err}"),
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn processes_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.windows(needle.len()).any(|window| window == needle))
        })
        .collect()
}
