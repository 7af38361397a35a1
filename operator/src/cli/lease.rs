//! `dhcpmanager-operator lease`: one lease on one macvlan, for operators and tests.
//!
//! - default: acquire, print the lease as one JSON object, release, remove the link;
//! - `--hold`: keep renewing, print every event as a JSON line, write the record to `--state` on
//!   every change; SIGTERM/SIGINT stop without releasing (the next start with the same `--state`
//!   resumes the same IP with INIT-REBOOT, never a DISCOVER);
//! - `--release --state FILE`: release the recorded lease, remove the link, delete the file.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use serde_json::json;

use dhcpmanager_crds::hostname_for_service;

use super::Error;
use dhcpmanager_dhcp_core::{RESERVED_OPTION_CODES, is_user_settable};
use dhcpmanager_engine::dhcp::{ClientConfig, ClientIdMode, LeaseRecord, MacAddr};
use dhcpmanager_engine::instance::InstanceId;
use dhcpmanager_engine::manager::{
    AddressSpec, LeaseManager, ManagerConfig, PersistFn, wait_bound,
};
use dhcpmanager_engine::state_file;

#[derive(Debug, Args)]
pub struct LeaseArgs {
    /// Parent interface of the macvlan.
    #[arg(long)]
    pub parent: String,
    /// MAC of the macvlan (and chaddr); with --release, defaults to the recorded one.
    #[arg(long)]
    pub mac: Option<MacAddr>,
    /// Hostname to send (option 12).
    #[arg(long, conflicts_with = "service")]
    pub hostname: Option<String>,
    /// A Kubernetes service "namespace/name": sent as hostname "name.namespace" like the original.
    #[arg(long)]
    pub service: Option<String>,
    /// Where the lease record lives (written on every change).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Keep the lease, renewing, until SIGTERM/SIGINT (which do not release it).
    #[arg(long, conflicts_with = "release")]
    pub hold: bool,
    /// Release the lease recorded in --state and exit.
    #[arg(long, requires = "state")]
    pub release: bool,
    /// Client identifier: "stable" (RFC 4361, default), "mac" (type 1 + MAC) or hex bytes.
    #[arg(long, default_value = "stable", value_parser = parse_client_id)]
    pub client_id: ClientIdMode,
    /// Vendor class identifier (option 60).
    #[arg(long)]
    pub vendor_class: Option<String>,
    /// FQDN to send in option 81 (the server updates DNS).
    #[arg(long)]
    pub fqdn: Option<String>,
    /// Extra option CODE=HEX, repeatable (e.g. 77=6b38732d6c62).
    #[arg(long = "option", value_parser = parse_option)]
    pub options: Vec<(u8, Vec<u8>)>,
    /// Configure the leased IP on the macvlan (and use the RFC unicast RENEW/RELEASE forms).
    #[arg(long)]
    pub assign: bool,
    /// Do not set the BOOTP broadcast flag (replies are received on a packet socket either way).
    #[arg(long)]
    pub no_broadcast_flag: bool,
    /// ARP-probe the offered address before using it (RFC 5227), DHCPDECLINE on conflict.
    #[arg(long)]
    pub arp_probe: bool,
    /// How long to wait for the first lease.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Divide every protocol wait (retransmissions, T1, T2, expiry) by this factor; for tests.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Identity of the address (link name and alias derive from it); default: lease/<mac>.
    #[arg(long)]
    pub key: Option<String>,
}

fn parse_client_id(text: &str) -> Result<ClientIdMode, String> {
    match text {
        "stable" => Ok(ClientIdMode::Stable),
        "mac" => Ok(ClientIdMode::Mac),
        hex_text => hex::decode(hex_text.trim_start_matches("hex:"))
            .ok()
            .filter(|bytes| !bytes.is_empty())
            .map(ClientIdMode::Custom)
            .ok_or_else(|| format!("{text:?} is not \"stable\", \"mac\" or non-empty hex bytes")),
    }
}

fn parse_option(text: &str) -> Result<(u8, Vec<u8>), String> {
    let (code, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected CODE=HEX"))?;
    let code: u8 = code
        .parse()
        .ok()
        .filter(|c| (1..=254).contains(c))
        .ok_or_else(|| format!("{code:?}: option code must be 1..254"))?;
    if !is_user_settable(code) {
        let reserved = RESERVED_OPTION_CODES.map(|c| c.to_string()).join(", ");
        return Err(format!(
            "option {code} is written by dhcpmanager itself (reserved: {reserved}); \
             use --hostname, --vendor-class or --client-id where one applies"
        ));
    }
    let value = hex::decode(value).map_err(|e| format!("{value:?}: {e}"))?;
    Ok((code, value))
}

/// What the default mode prints: the lease as one flat JSON object.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseSummary<'a> {
    pub ip: std::net::Ipv4Addr,
    pub prefix_len: u8,
    pub mac: MacAddr,
    pub server: std::net::Ipv4Addr,
    pub expires: chrono::DateTime<chrono::Utc>,
    pub renew: chrono::DateTime<chrono::Utc>,
    pub rebind: chrono::DateTime<chrono::Utc>,
    pub lease_seconds: u32,
    pub routers: &'a [std::net::Ipv4Addr],
    pub dns: &'a [std::net::Ipv4Addr],
    pub hostname: Option<&'a str>,
    pub client_id: &'a str,
    pub interface: &'a str,
}

impl<'a> LeaseSummary<'a> {
    pub fn new(record: &'a LeaseRecord, interface: &'a str) -> Self {
        LeaseSummary {
            ip: record.ip,
            prefix_len: record.prefix_len,
            mac: record.mac,
            server: record.server_id,
            expires: record.expires_at,
            renew: record.renew_at,
            rebind: record.rebind_at,
            lease_seconds: record.lease_seconds,
            routers: &record.routers,
            dns: &record.dns,
            hostname: record.hostname.as_deref(),
            client_id: &record.client_id,
            interface,
        }
    }
}

pub async fn run(args: LeaseArgs) -> Result<(), Error> {
    let recorded = match &args.state {
        Some(path) => state_file::read(path)?,
        None => None,
    };
    if args.release {
        return release_recorded(&args, recorded).await;
    }
    let mac = args
        .mac
        .or(recorded.as_ref().map(|r| r.mac))
        .ok_or(Error::Usage(
            "--mac is required (no recorded lease to take it from)",
        ))?;
    let spec = spec_for(&args, mac);
    let manager = LeaseManager::new(
        owner_for(mac),
        ManagerConfig::default(),
        persist_to(args.state.clone()),
    )?;
    let key = spec.key.clone();
    // Subscribed before the start, so that --hold prints the very first events too.
    let events = manager.subscribe();
    let mut status = manager.start(spec, recorded).await?;
    if args.hold {
        return hold(&manager, &key, events).await;
    }
    let outcome = wait_bound(&mut status, args.timeout).await;
    let interface = status.borrow().interface.clone();
    match outcome {
        Ok(record) => {
            println!(
                "{}",
                serde_json::to_string(&LeaseSummary::new(&record, &interface)).expect("plain data")
            );
            manager.release(&key).await?;
            if let Some(path) = &args.state {
                state_file::remove(path)?;
            }
            // The link's deletion is deferred: wait for it, the process leaves nothing behind.
            Ok(manager.settle_links().await?)
        }
        Err(error) => {
            manager.stop(&key, true).await?;
            manager.settle_links().await?;
            Err(error.into())
        }
    }
}

/// `--hold`: print events until a signal, then stop without releasing.
async fn hold(
    manager: &LeaseManager,
    key: &str,
    mut events: tokio::sync::broadcast::Receiver<
        std::sync::Arc<dhcpmanager_engine::manager::KeyedEvent>,
    >,
) -> Result<(), Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).map_err(Error::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(Error::Signal)?;
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            event = events.recv() => match event {
                Ok(keyed) => {
                    let mut line = serde_json::to_value(&keyed.event).expect("plain data");
                    if let Some(object) = line.as_object_mut() {
                        object.insert("time".into(), json!(chrono::Utc::now()));
                    }
                    println!("{line}");
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    println!("{}", json!({"event": "lagged", "missed": missed}));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    // Not a release: the lease stays valid at the server for the next start to resume.
    manager.stop(key, true).await?;
    Ok(manager.settle_links().await?)
}

async fn release_recorded(args: &LeaseArgs, recorded: Option<LeaseRecord>) -> Result<(), Error> {
    let path = args
        .state
        .as_deref()
        .expect("clap: --release requires --state");
    let record = recorded.ok_or_else(|| Error::NothingToRelease(path.display().to_string()))?;
    let mac = args.mac.unwrap_or(record.mac);
    let spec = spec_for(args, mac);
    let manager = LeaseManager::new(owner_for(mac), ManagerConfig::default(), persist_to(None))?;
    let ip = record.ip;
    manager.release_recorded(spec, record).await?;
    manager.settle_links().await?;
    state_file::remove(path)?;
    println!("{}", json!({"event": "released", "ip": ip}));
    Ok(())
}

/// The owner of the link: one `lease` per MAC (a MAC can be on only one link of a parent at a
/// time), the same for `--hold`, its restart with `--state` and `--release`, and never the same
/// as an agent's or a standalone apiserver's.
fn owner_for(mac: MacAddr) -> InstanceId {
    InstanceId::derived("lease", &hex::encode(mac.octets()))
}

fn spec_for(args: &LeaseArgs, mac: MacAddr) -> AddressSpec {
    let mut client = ClientConfig::new(mac);
    client.hostname = args
        .hostname
        .clone()
        .or_else(|| args.service.as_deref().map(hostname_for_service));
    client.fqdn = args.fqdn.clone();
    client.client_id = args.client_id.clone();
    client.vendor_class = args.vendor_class.clone();
    client.extra_options = args.options.clone();
    client.ip_assigned = args.assign;
    client.broadcast_flag = !args.no_broadcast_flag;
    client.arp_probe = args.arp_probe;
    client.timing.scale = args.time_scale;
    AddressSpec {
        key: args.key.clone().unwrap_or_else(|| format!("lease/{mac}")),
        parent: args.parent.clone(),
        client,
    }
}

fn persist_to(path: Option<PathBuf>) -> PersistFn {
    Arc::new(move |_key: &str, record: Option<&LeaseRecord>| {
        let Some(path) = &path else { return };
        let result = match record {
            Some(record) => state_file::write(path, record),
            None => state_file::remove(path),
        };
        if let Err(error) = result {
            tracing::error!(%error, "could not persist the lease record");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::parse_option;

    #[test]
    fn an_extra_option_is_a_settable_code_and_hex() {
        assert_eq!(parse_option("77=6b38"), Ok((77, b"k8".to_vec())));
        assert_eq!(parse_option("81=050000"), Ok((81, vec![5, 0, 0])));
        for refused in ["0=00", "255=00", "x=00", "77", "77=zz"] {
            assert!(parse_option(refused).is_err(), "{refused}");
        }
        let reserved = parse_option("60=6b38").unwrap_err();
        assert!(
            reserved.contains("option 60 is written by dhcpmanager"),
            "{reserved}"
        );
    }
}
