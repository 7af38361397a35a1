//! Kea on the lab's segment with a /16 pool, for the benchmarks that need more than the lab's
//! /24 (hundreds to ten thousand leases at once).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::error::BenchError;
use crate::lab::{Lab, SERVER_ADDR_1};

type Result<T> = std::result::Result<T, BenchError>;

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |e| BenchError::Io(what, e)
}

/// The lease Kea gives and its T1/T2 (options 58/59); `None`: Kea sends none and the client
/// takes 0.5 / 0.875 of the lease.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTimes {
    pub lease_secs: u32,
    pub renew_secs: Option<u32>,
    pub rebind_secs: Option<u32>,
}

impl LeaseTimes {
    fn timers_json(&self) -> String {
        let mut json = String::new();
        if let Some(renew) = self.renew_secs {
            json.push_str(&format!("\n  \"renew-timer\": {renew},"));
        }
        if let Some(rebind) = self.rebind_secs {
            json.push_str(&format!("\n  \"rebind-timer\": {rebind},"));
        }
        json
    }
}

/// Kea on server address 1 of the lab with a pool of 10.77.1.0 - 10.77.255.250: the lab's own
/// config (lab.sh) allows only a /24 range, which 500 new leases would exhaust. Same raw socket,
/// memfile and logging as the lab's config. Killed by pid on drop; its pid file lies where
/// `lab.sh down` also looks, as a second safety net.
pub struct BigPoolKea {
    child: Child,
}

impl BigPoolKea {
    pub fn start(lab: &Lab, times: LeaseTimes) -> Result<BigPoolKea> {
        let dir = lab.dir().join("bench-kea");
        std::fs::create_dir_all(dir.join("run")).map_err(io_error("creating bench-kea dir"))?;
        let config = format!(
            r#"{{ "Dhcp4": {{
  "interfaces-config": {{ "interfaces": [ "lan" ], "dhcp-socket-type": "raw" }},
  "lease-database": {{ "type": "memfile", "persist": true, "name": "{dir}/leases", "lfc-interval": 0 }},
  "authoritative": false,
  "valid-lifetime": {lease}, "min-valid-lifetime": {lease}, "max-valid-lifetime": {lease},{timers}
  "subnet4": [ {{ "id": 1, "subnet": "10.77.0.0/16",
    "pools": [ {{ "pool": "10.77.1.0 - 10.77.255.250" }} ],
    "option-data": [ {{ "name": "routers", "data": "{SERVER_ADDR_1}" }} ] }} ],
  "loggers": [ {{ "name": "kea-dhcp4", "output_options": [ {{ "output": "stdout" }} ], "severity": "WARN" }} ]
}} }}"#,
            dir = dir.display(),
            lease = times.lease_secs,
            timers = times.timers_json(),
        );
        let conf = dir.join("server.conf");
        std::fs::write(&conf, config).map_err(io_error("writing kea config"))?;
        let log = std::fs::File::create(dir.join("log")).map_err(io_error("kea log"))?;
        let log2 = log.try_clone().map_err(io_error("kea log"))?;
        let ns = lab.server_ns(SERVER_ADDR_1);
        let run = dir.join("run");
        // `ip netns exec` and `env` exec in place: the child's pid is Kea's own.
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "env"])
            .arg(format!("KEA_PIDFILE_DIR={}", run.display()))
            .arg(format!("KEA_LOCKFILE_DIR={}", run.display()))
            .arg("KEA_LOGGER_DESTINATION=stdout")
            .args(["kea-dhcp4", "-c"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io_error("spawning kea-dhcp4"))?;
        let kea = BigPoolKea { child };
        std::fs::write(dir.join("pid"), kea.child.id().to_string())
            .map_err(io_error("kea pid file"))?;
        kea.wait_ready(&ns, &dir)?;
        Ok(kea)
    }

    /// Ready when Kea itself holds UDP port 67 in its namespace (as lab.sh decides it).
    fn wait_ready(&self, ns: &str, dir: &Path) -> Result<()> {
        let needle = format!("pid={},", self.child.id());
        for _ in 0..100 {
            let out = Command::new("ip")
                .args(["netns", "exec", ns, "ss", "-H", "-uanp", "sport = :67"])
                .output()
                .map_err(io_error("ss"))?;
            if String::from_utf8_lossy(&out.stdout).contains(&needle) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        Err(BenchError::Protocol(format!(
            "kea-dhcp4 did not bind port 67 within 10 s:\n{log}"
        )))
    }
}

impl Drop for BigPoolKea {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of the process we spawned and have not reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
