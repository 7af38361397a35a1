//! podman and podman-compose with a storage and configuration of their own (a temporary
//! directory), so the machine's containers storage and `/etc/cni` are never touched, and the
//! containers run inside a lab's network namespace (`network_mode: host` there means the lab's
//! agent namespace, never the machine's interfaces). Dropping it removes every container and
//! volume it made, then the directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::repo_root;

/// podman-compose from PyPI (`scripts/install-podman-compose.sh`): Debian's 1.0.3 cannot run
/// deploy/docker-compose.yml (see the script).
pub fn podman_compose() -> PathBuf {
    let venv = std::env::var_os("PODMAN_COMPOSE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/podman-compose-venv"));
    let bin = venv.join("bin/podman-compose");
    assert!(
        bin.is_file(),
        "{} is missing: run scripts/install-podman-compose.sh",
        bin.display()
    );
    bin
}

pub struct Podman {
    dir: PathBuf,
    netns: String,
}

impl Podman {
    /// A podman whose containers share network namespace `netns` (`/run/netns/NETNS`).
    pub fn new(netns: &str) -> Podman {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "dhcpmanager-podman-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(dir.join("cni")).expect("podman dir");
        std::fs::create_dir_all(dir.join("tmp")).expect("podman dir");
        let d = dir.display();
        // cgroupfs: no systemd here. runc: crun refuses this machine's hybrid cgroups. Limits
        // below the machine's: root lacks CAP_SYS_RESOURCE, and podman's defaults (raise
        // nofile/nproc) make the runtime fail with EPERM.
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{d}/events.log\"\ntmp_dir = \"{d}/tmp\"\n\
                 [network]\nnetwork_config_dir = \"{d}/cni\"\n\
                 [containers]\ndefault_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n"
            ),
        )
        .expect("containers.conf");
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{d}/graph\"\nrunroot = \"{d}/run\"\n"
            ),
        )
        .expect("storage.conf");
        Podman {
            dir,
            netns: netns.to_string(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `PROGRAM` in the namespace with this podman's configuration: add arguments and run it.
    /// `nsenter --net` only: `ip netns exec` would remount /sys and hide the cgroups from podman.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg(program)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"));
        command
    }

    /// podman ARGS that must succeed: stdout.
    pub fn podman(&self, args: &[&str]) -> String {
        let output = self.command("podman").args(args).output().expect("podman");
        ok(&format!("podman {args:?}"), output)
    }

    /// podman-compose -f FILE ARGS with `env` set, that must succeed: stdout.
    pub fn compose(&self, file: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
        let mut command = self.command(podman_compose());
        command.arg("-f").arg(file).args(args);
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().expect("podman-compose");
        ok(&format!("podman-compose {args:?}"), output)
    }
}

fn ok(what: &str, output: Output) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl Drop for Podman {
    fn drop(&mut self) {
        for args in [
            &["rm", "--all", "--force", "--time", "5"][..],
            &["volume", "rm", "--all", "--force"][..],
            &["rmi", "--all", "--force"][..],
        ] {
            let _ = self.command("podman").args(args).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
