//! busybox udhcpc as a reference DHCP client (functional checks and the benchmark baseline):
//! one process per lease, whose hook script only prints what it got.

use std::net::Ipv4Addr;
use std::process::Command;

use crate::lab::{LAB_SCRIPTS, Lab};
use crate::lab_error::LabError;

/// What udhcpc's hook reported for a `bound` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdhcpcLease {
    pub ip: Ipv4Addr,
    pub mask: Option<Ipv4Addr>,
    pub router: Option<Ipv4Addr>,
    pub lease_secs: Option<u32>,
    pub server: Option<Ipv4Addr>,
}

/// `busybox udhcpc -i IFACE -n -q -f -t 3 -T 1`: obtain one lease (or fail after 3 tries of 1 s),
/// don't configure the interface, exit.
#[derive(Debug, Clone)]
pub struct Udhcpc {
    iface: String,
    hostname: Option<String>,
    requested_ip: Option<Ipv4Addr>,
}

impl Udhcpc {
    pub fn new(iface: &str) -> Self {
        Self {
            iface: iface.to_string(),
            hostname: None,
            requested_ip: None,
        }
    }

    /// Sends option 12 (`-x hostname:NAME`).
    pub fn hostname(mut self, hostname: &str) -> Self {
        self.hostname = Some(hostname.to_string());
        self
    }

    /// Asks for this address in the DISCOVER (`-r IP`).
    pub fn requested_ip(mut self, ip: Ipv4Addr) -> Self {
        self.requested_ip = Some(ip);
        self
    }

    /// The command, run in the lab's agent namespace; spawn it yourself to time or parallelise it.
    pub fn command(&self, lab: &Lab) -> Command {
        let mut cmd = lab.run_in_agent("busybox");
        cmd.args([
            "udhcpc",
            "-i",
            &self.iface,
            "-n",
            "-q",
            "-f",
            "-t",
            "3",
            "-T",
            "1",
            "-s",
        ]);
        cmd.arg(LAB_SCRIPTS.join("udhcpc-event.sh"));
        if let Some(h) = &self.hostname {
            cmd.args(["-x", &format!("hostname:{h}")]);
        }
        if let Some(ip) = self.requested_ip {
            cmd.args(["-r", &ip.to_string()]);
        }
        cmd
    }

    /// Runs udhcpc to completion and returns the lease it was bound to.
    pub fn run(&self, lab: &Lab) -> Result<UdhcpcLease, LabError> {
        let output = self
            .command(lab)
            .output()
            .map_err(|source| LabError::Spawn {
                command: "busybox udhcpc".into(),
                source,
            })?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        parse_bound(&text).ok_or(LabError::NoLease {
            iface: self.iface.clone(),
            output: text,
        })
    }
}

/// Finds the hook's `udhcpc-event bound ...` line in udhcpc's output.
pub fn parse_bound(output: &str) -> Option<UdhcpcLease> {
    let line = output
        .lines()
        .find(|l| l.starts_with("udhcpc-event bound "))?;
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .filter(|v| !v.is_empty())
    };
    let ip = |key: &str| field(key).and_then(|v| v.parse().ok());
    Some(UdhcpcLease {
        ip: ip("ip")?,
        mask: ip("mask"),
        router: ip("router"),
        lease_secs: field("lease").and_then(|v| v.parse().ok()),
        server: ip("server"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_bound_event() {
        let out = "udhcpc: started\nudhcpc-event deconfig iface=mv0 ip= mask= router= lease= server=\n\
                   udhcpc-event bound iface=mv0 ip=10.77.0.10 mask=255.255.255.0 router=10.77.0.1 lease=60 server=10.77.0.1\n";
        let lease = parse_bound(out).unwrap();
        assert_eq!(lease.ip, Ipv4Addr::new(10, 77, 0, 10));
        assert_eq!(lease.mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(lease.router, Some(Ipv4Addr::new(10, 77, 0, 1)));
        assert_eq!(lease.lease_secs, Some(60));
        assert_eq!(lease.server, Some(Ipv4Addr::new(10, 77, 0, 1)));
    }

    #[test]
    fn no_bound_event_is_no_lease() {
        assert_eq!(
            parse_bound("udhcpc-event deconfig iface=mv0 ip= mask=\nudhcpc: no lease, failing\n"),
            None
        );
    }
}
