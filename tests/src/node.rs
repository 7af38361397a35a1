//! A one-node Kubernetes cluster with a real kubelet (containerd + runc, kube-proxy, the
//! controller-manager and scheduler) whose node sits on a DHCP lab segment, for tests that run
//! our image and the Helm chart as users do. Driven through `tests/k8s/node.sh`; see
//! `tests/k8s/README.md` for the topology.
//!
//! One node at a time per machine (node.sh holds a machine-wide lock from `up` to `down`; a
//! second [`Node::start`] waits for it). Dropping the [`Node`] tears everything down, and a
//! watchdog does the same once the test process is gone (statics are never dropped, killed tests
//! run no destructors).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::controlplane::{self, ControlPlane, ControlPlaneError, tools_bin_dir};
use crate::lab::Lab;
use crate::repo_root;

/// The node's name in the cluster.
pub const NODE_NAME: &str = "dm-node";
/// The network namespace the kubelet, containerd, kube-proxy and every hostNetwork pod share.
pub const NODE_NETNS: &str = "dmnode";
/// The node's InternalIP (a veth to the machine, where kube-apiserver listens on 10.200.0.1).
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
/// The node's interface on the lab's DHCP segment: the parent of the agent's macvlans.
pub const LAB_PARENT: &str = "lab0";
/// Our image as the tests build and import it ([`dhcpmanager_image`]).
pub const IMAGE_REPOSITORY: &str = "localhost/dhcpmanager";
pub const IMAGE_TAG: &str = "test";

static NEXT_INSTANCE: AtomicU32 = AtomicU32::new(0);

/// A running node; drop takes it down.
pub struct Node {
    dir: PathBuf,
    cp: ControlPlane,
    // Dropped after the node: node.sh down unplugs the node from the lab first.
    lab: Lab,
    stopped: AtomicBool,
}

fn node_script() -> PathBuf {
    repo_root().join("tests/k8s/node.sh")
}

impl Node {
    /// A fresh DHCP lab (no server started yet) and a node on its segment, Ready, with the
    /// `default` ServiceAccount in place. Waits while another node runs on this machine.
    /// Panics with node.sh's output and the components' log tails when it does not come up.
    pub fn start() -> Node {
        controlplane::check_tools().unwrap_or_else(|err| panic!("{err}"));
        let lab = Lab::up().expect("lab up");
        let dir = std::env::temp_dir().join(format!(
            "dhcpmanager-node-{}-{}",
            std::process::id(),
            NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed)
        ));
        let mut up = Command::new(node_script());
        up.arg("up")
            .arg(&dir)
            .arg(lab.name())
            .env("NODE_PURGE", "1")
            .env("NODE_OWNER_PID", std::process::id().to_string());
        let result = controlplane::run(&mut up, None)
            .and_then(|output| controlplane::succeeded(&up, output));
        if let Err(err) = result {
            let logs = log_tails(&dir, 30);
            let _ = controlplane::run(
                Command::new(node_script())
                    .arg("down")
                    .arg(&dir)
                    .env("NODE_PURGE", "1"),
                None,
            );
            panic!("node did not start: {err}\n{logs}");
        }
        let cp = ControlPlane::attach(&dir.join("cp")).expect("the node's control plane");
        Node {
            dir,
            cp,
            lab,
            stopped: AtomicBool::new(false),
        }
    }

    /// The state directory: logs of every component (`*.log`, `cp/*.log`), configs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The control plane (admin kubectl, apply, namespaces, ServiceAccount kubeconfigs).
    pub fn cp(&self) -> &ControlPlane {
        &self.cp
    }

    /// The DHCP lab whose segment the node's [`LAB_PARENT`] is plugged into.
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// kubectl as admin that must succeed: its stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.cp
            .try_kubectl(args)
            .unwrap_or_else(|err| panic!("kubectl {args:?}: {err}"))
    }

    pub fn try_kubectl(&self, args: &[&str]) -> Result<String, ControlPlaneError> {
        self.cp.try_kubectl(args)
    }

    /// kubectl ... -o json, parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&all)).expect("kubectl JSON")
    }

    /// `kubectl apply -f -` that must succeed.
    pub fn apply(&self, yaml: &str) {
        self.cp
            .apply_yaml(yaml)
            .unwrap_or_else(|err| panic!("apply failed: {err}\n{yaml}"));
    }

    /// helm with the admin kubeconfig; its stdout.
    pub fn helm(&self, args: &[&str]) -> Result<String, ControlPlaneError> {
        let mut helm = Command::new(tools_bin_dir().join("helm"));
        helm.env("KUBECONFIG", self.cp.kubeconfig_path())
            // helm's caches and config stay out of the machine's home
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"))
            .args(args);
        let output = controlplane::run(&mut helm, None)?;
        let output = controlplane::succeeded(&helm, output)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Imports an image archive (docker-archive or OCI) into the node's containerd, where pods
    /// with `imagePullPolicy: Never` find it.
    pub fn import_image(&self, archive: &Path) {
        let mut import = Command::new(node_script());
        import.arg("import").arg(&self.dir).arg(archive);
        controlplane::run(&mut import, None)
            .and_then(|output| controlplane::succeeded(&import, output))
            .unwrap_or_else(|err| panic!("importing {}: {err}", archive.display()));
    }

    /// `PROGRAM` in the node's network namespace (what a hostNetwork pod sees): add arguments
    /// and run it. Only the network namespace is joined, so files are the machine's.
    pub fn in_node(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{NODE_NETNS}"))
            .arg(program);
        command
    }

    /// Polls `check` until it holds; on the deadline (a safety net, not a measurement) panics
    /// with the pods' state and the node components' log tails.
    pub fn wait_until(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !check() {
            if Instant::now() > deadline {
                let pods = self
                    .try_kubectl(&["get", "pods", "-A", "-o", "wide"])
                    .unwrap_or_else(|e| e.to_string());
                let events = self
                    .try_kubectl(&["get", "events", "-A", "--sort-by=.lastTimestamp"])
                    .unwrap_or_else(|e| e.to_string());
                panic!(
                    "not within {timeout:?}: {what}\n--- pods ---\n{pods}\n--- events ---\n{events}\n{}",
                    log_tails(&self.dir, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Takes the node down (and the lab's link to it); idempotent. Panics if `down` fails.
    pub fn stop(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut down = Command::new(node_script());
        down.arg("down").arg(&self.dir).env("NODE_PURGE", "1");
        if let Err(err) = controlplane::run(&mut down, None)
            .and_then(|output| controlplane::succeeded(&down, output))
        {
            eprintln!("node stop failed: {err}");
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `lines` lines of every component's log in `dir`.
fn log_tails(dir: &Path, lines: usize) -> String {
    let mut logs: Vec<PathBuf> = ["", "cp"]
        .iter()
        .filter_map(|sub| std::fs::read_dir(dir.join(sub)).ok())
        .flat_map(|entries| entries.flatten().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.iter()
        .map(|log| {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("--- {} ---\n{}", log.display(), tail.join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Our image (`IMAGE_REPOSITORY:IMAGE_TAG`), built once per test process by
/// `scripts/build-image.sh --debug` from the debug binaries the suite built (the Debian base is
/// cached across runs): the archive to [`Node::import_image`].
pub fn dhcpmanager_image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        // Panics with the build command when the binaries are missing.
        let bin_dir = crate::binaries::operator()
            .parent()
            .expect("binaries live in a directory")
            .to_path_buf();
        crate::binaries::apiserver();
        let output = repo_root().join(format!("target/image/dhcpmanager-{IMAGE_TAG}.tar"));
        let mut build = Command::new(repo_root().join("scripts/build-image.sh"));
        build
            .arg("--bin-dir")
            .arg(&bin_dir)
            .args(["--tag", &format!("{IMAGE_REPOSITORY}:{IMAGE_TAG}")])
            .arg("--output")
            .arg(&output)
            .stdin(Stdio::null());
        let status = build.status().expect("run scripts/build-image.sh");
        assert!(status.success(), "scripts/build-image.sh failed: {status}");
        output
    })
}

/// A node with our image imported and Kea (600 s leases: nothing renews during a test) on its
/// segment: where every test and benchmark of the chart on a real node starts.
pub fn node_with_our_image_and_kea() -> Node {
    // The image first: it takes longest and needs no node.
    let image = dhcpmanager_image();
    let node = Node::start();
    node.import_image(image);
    node.lab()
        .start(
            crate::lab::Server::Kea,
            crate::lab::ServerOpts {
                lease: 600,
                ..crate::lab::ServerOpts::default()
            },
        )
        .expect("Kea on the segment");
    node
}

/// The chart's `--set` arguments for the node: our image (never pulled), the agents on the
/// lab's segment with a pool of `pool_size` MACs from 02:d4:c9:00:00:00.
pub fn chart_values_for_the_node(pool_size: u32) -> Vec<String> {
    [
        format!("image.repository={IMAGE_REPOSITORY}"),
        format!("image.tag={IMAGE_TAG}"),
        "image.pullPolicy=Never".into(),
        format!("agent.interface={LAB_PARENT}"),
        "agent.macPool.ranges[0].start=02:d4:c9:00:00:00".into(),
        format!("agent.macPool.ranges[0].count={pool_size}"),
    ]
    .into_iter()
    .flat_map(|value| ["--set".to_string(), value])
    .collect()
}

/// tcpdump of everything on the node's [`LAB_PARENT`] (all protocols, the macvlans' frames
/// included), for assertions on what reached the segment. Dropping it kills tcpdump.
pub struct SegmentCapture {
    child: Child,
    file: PathBuf,
}

impl SegmentCapture {
    /// Starts the capture and returns once tcpdump listens.
    pub fn start(node: &Node, name: &str) -> SegmentCapture {
        let file = node.dir().join(format!("{name}.pcap"));
        let log = node.dir().join(format!("{name}.tcpdump.log"));
        // -Z root: Debian's tcpdump drops to user tcpdump, which may not write the directory.
        // --immediate-mode -U: every packet reaches the file at once.
        let child = node
            .in_node("tcpdump")
            .args([
                "-U",
                "--immediate-mode",
                "-n",
                "-Z",
                "root",
                "-i",
                LAB_PARENT,
                "-w",
            ])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(&log).expect("tcpdump log"),
            ))
            .spawn()
            .expect("run tcpdump");
        let started = Instant::now();
        while !std::fs::read_to_string(&log).is_ok_and(|text| text.contains("listening on")) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "tcpdump not listening: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        SegmentCapture { child, file }
    }

    /// Stops tcpdump once everything sent so far is in the file (a marker broadcast after it
    /// must have arrived: tcpdump writes in order) and returns the file.
    pub fn stop(mut self, node: &Node) -> PathBuf {
        let marker = format!("dm-capture-flush-{}", std::process::id());
        let sent = node
            .in_node("python3")
            .args([
                "-c",
                "import socket, sys\n\
                 s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                 s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)\n\
                 s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, sys.argv[1].encode())\n\
                 s.sendto(sys.argv[2].encode(), ('255.255.255.255', 9))",
                LAB_PARENT,
                &marker,
            ])
            .status()
            .is_ok_and(|s| s.success());
        if sent {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(5) {
                let bytes = std::fs::read(&self.file).unwrap_or_default();
                if bytes
                    .windows(marker.len())
                    .any(|window| window == marker.as_bytes())
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill();
        self.file.clone()
    }

    fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own, not yet reaped child (nsenter execs tcpdump in place).
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

impl Drop for SegmentCapture {
    fn drop(&mut self) {
        self.kill();
    }
}
