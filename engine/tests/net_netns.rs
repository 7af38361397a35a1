//! The `net` module against the real kernel and a real dnsmasq, inside network namespaces each
//! test creates for itself (needs root). Namespace `a` holds the veth parent `va` and the
//! macvlans; namespace `b` holds `vb` with 10.77.0.1/24 and, where needed, dnsmasq.

use std::fs;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dhcpmanager_engine::Error;
use dhcpmanager_engine::dhcp::{LeaseRecord, MacAddr};
use dhcpmanager_engine::instance::InstanceId;
use dhcpmanager_engine::manager::{LeaseManager, ManagerConfig};
use dhcpmanager_engine::net::links::DEFAULT_RETIRED_LINK_GROUP;
use dhcpmanager_engine::net::{
    DEFAULT_LINK_GROUP, DhcpSocket, LinkError, Links, ProbeTiming, link_alias, link_name, probe,
};
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// Safety net for a whole in-namespace test body; never a measurement.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Safety net for waiting on an external process to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// The instance the tests' links belong to.
fn test_owner() -> InstanceId {
    InstanceId::derived("test", "net-netns")
}

/// The alias of `key`'s link for [`test_owner`].
fn alias(key: &str) -> String {
    link_alias(&test_owner(), key)
}

fn mac_of(i: u16) -> [u8; 6] {
    let [hi, lo] = i.to_be_bytes();
    [0x02, 0x77, 0x00, 0x00, hi, lo]
}

fn run(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces joined by a veth pair, deleted (with everything in them) on drop.
struct NetnsPair {
    a: String,
    b: String,
    dir: PathBuf,
}

impl NetnsPair {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "these tests need root (netns, links, raw sockets)"
        );
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let base = format!("dmnet-{}-{n}", std::process::id());
        let pair = Self {
            a: format!("{base}-a"),
            b: format!("{base}-b"),
            dir: std::env::temp_dir().join(&base),
        };
        fs::create_dir_all(&pair.dir).unwrap();
        run(&["ip", "netns", "add", &pair.a]);
        run(&["ip", "netns", "add", &pair.b]);
        run(&[
            "ip", "link", "add", "va", "netns", &pair.a, "type", "veth", "peer", "name", "vb",
            "netns", &pair.b,
        ]);
        for (ns, dev) in [(&pair.a, "va"), (&pair.b, "vb")] {
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        run(&[
            "ip",
            "-n",
            &pair.b,
            "addr",
            "add",
            "10.77.0.1/24",
            "dev",
            "vb",
        ]);
        pair
    }

    fn mac_in_b(&self) -> [u8; 6] {
        let out = run(&["ip", "-n", &self.b, "-o", "link", "show", "vb"]);
        let mac = out
            .split("link/ether ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        parse_mac(mac)
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn parse_mac(text: &str) -> [u8; 6] {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

/// A process we started, killed by its PID on drop.
struct ChildGuard(Child);

impl ChildGuard {
    fn stop(&mut self) {
        let pid = self.0.id() as i32;
        // SIGTERM first so tcpdump flushes its file and dnsmasq exits cleanly.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

/// dnsmasq in namespace `b` on `vb`, configured like the reference lab.
fn start_dnsmasq(pair: &NetnsPair) -> ChildGuard {
    let dir = pair.dir.display();
    let conf = pair.dir.join("dnsmasq.conf");
    fs::write(
        &conf,
        format!(
            "port=0\ninterface=vb\nbind-interfaces\nexcept-interface=lo\n\
             dhcp-range=10.77.0.10,10.77.0.250,255.255.255.0,2m\ndhcp-authoritative\nno-ping\n\
             dhcp-leasefile={dir}/dnsmasq.leases\npid-file={dir}/dnsmasq.pid\nlog-dhcp\n\
             log-facility=-\n"
        ),
    )
    .unwrap();
    let log = fs::File::create(pair.dir.join("dnsmasq.log")).unwrap();
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.b,
            "dnsmasq",
            "--keep-in-foreground",
            "--user=root",
        ])
        .args(["--group=root", &format!("--conf-file={}", conf.display())])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start dnsmasq");
    let mut guard = ChildGuard(child);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let bound = run(&[
            "ip",
            "netns",
            "exec",
            &pair.b,
            "ss",
            "-H",
            "-uan",
            "sport = :67",
        ]);
        if !bound.trim().is_empty() {
            return guard;
        }
        if let Ok(Some(status)) = guard.0.try_wait() {
            let log = fs::read_to_string(pair.dir.join("dnsmasq.log")).unwrap_or_default();
            panic!("dnsmasq exited with {status}: {log}");
        }
        assert!(Instant::now() < deadline, "dnsmasq did not bind port 67");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `body` on a fresh thread that has entered namespace `ns`, on a current-thread runtime:
/// sockets and the rtnetlink connection bind to the namespace of the thread that creates them.
fn in_netns<T, F, Fut>(ns: &str, body: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::time::timeout(BODY_TIMEOUT, body())
                .await
                .expect("test body timed out")
        })
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn discover(mac: [u8; 6], xid: u32, broadcast: bool) -> Vec<u8> {
    let unspecified = Ipv4Addr::UNSPECIFIED;
    let mut msg = Message::new_with_id(
        xid,
        unspecified,
        unspecified,
        unspecified,
        unspecified,
        &mac,
    );
    if broadcast {
        msg.set_flags(Flags::default().set_broadcast());
    }
    msg.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Discover));
    msg.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
    ]));
    let mut buf = Vec::new();
    msg.encode(&mut Encoder::new(&mut buf)).unwrap();
    buf
}

fn decode(payload: &[u8]) -> Message {
    Message::decode(&mut Decoder::new(payload)).expect("a valid DHCP message")
}

#[test]
fn fifty_macvlans_in_a_group_are_listed_and_deleted_in_one_request() {
    let pair = NetnsPair::new();
    let (created, listed, listed_after, create_time, delete_time) = in_netns(&pair.a, || async {
        let links = Links::connect().unwrap();
        let start = Instant::now();
        let mut created = Vec::new();
        for i in 0..50u16 {
            let identity = format!("test/svc-{i}");
            let name = link_name(&identity);
            let index = links
                .create_macvlan(
                    "va",
                    &name,
                    mac_of(i),
                    DEFAULT_LINK_GROUP,
                    &alias(&identity),
                )
                .await
                .unwrap();
            created.push((name, index, mac_of(i), identity));
        }
        let create_time = start.elapsed();
        let listed = links.list_ours(DEFAULT_LINK_GROUP).await.unwrap();
        let start = Instant::now();
        links.delete_group(DEFAULT_LINK_GROUP).await.unwrap();
        let delete_time = start.elapsed();
        let listed_after = links.list_ours(DEFAULT_LINK_GROUP).await.unwrap();
        (created, listed, listed_after, create_time, delete_time)
    });
    println!("create 50 macvlans: {create_time:?}; delete_group of 50: {delete_time:?}");

    assert_eq!(listed.len(), 50);
    let parent_index: u32 = run(&[
        "ip",
        "netns",
        "exec",
        &pair.a,
        "cat",
        "/sys/class/net/va/ifindex",
    ])
    .trim()
    .parse()
    .unwrap();
    for (name, index, mac, identity) in &created {
        let link = listed
            .iter()
            .find(|l| l.ifindex == *index)
            .expect("created link is listed");
        assert_eq!(&link.name, name);
        assert_eq!(&link.mac, mac);
        assert_eq!(link.alias.as_deref(), Some(alias(identity).as_str()));
        assert_eq!(link.parent_ifindex, Some(parent_index));
    }
    assert!(listed_after.is_empty());
    // Independent check with iproute2: only the parent and lo are left.
    let remaining = run(&["ip", "-n", &pair.a, "-o", "link", "show"]);
    assert_eq!(remaining.lines().count(), 2, "{remaining}");
    assert!(
        remaining.contains("va@"),
        "delete_group must not touch the parent: {remaining}"
    );
}

#[test]
fn create_macvlan_adopts_an_identical_link_replaces_a_different_one_and_leaves_others_alone() {
    let pair = NetnsPair::new();
    let ns = pair.a.clone();
    in_netns(&pair.a, move || async move {
        let links = Links::connect().unwrap();
        let alias = alias("test/adopt");
        let name = link_name("test/adopt");
        let first = links
            .create_macvlan("va", &name, mac_of(1), DEFAULT_LINK_GROUP, &alias)
            .await
            .unwrap();
        let again = links
            .create_macvlan("va", &name, mac_of(1), DEFAULT_LINK_GROUP, &alias)
            .await
            .unwrap();
        assert_eq!(first, again, "an identical link is adopted, not recreated");

        // A restarted instance adopts its link whose group got lost, and restores it.
        run(&["ip", "-n", &ns, "link", "set", &name, "group", "default"]);
        let adopted = links
            .create_macvlan("va", &name, mac_of(1), DEFAULT_LINK_GROUP, &alias)
            .await
            .unwrap();
        assert_eq!(adopted, first);
        let ours = links.list_ours(DEFAULT_LINK_GROUP).await.unwrap();
        assert_eq!(ours.len(), 1);
        assert_eq!(ours[0].alias.as_deref(), Some(alias.as_str()));

        let replaced = links
            .create_macvlan("va", &name, mac_of(2), DEFAULT_LINK_GROUP, &alias)
            .await
            .unwrap();
        assert_ne!(first, replaced, "a link with another MAC is replaced");
        let ours = links.list_ours(DEFAULT_LINK_GROUP).await.unwrap();
        assert_eq!(ours.len(), 1);
        assert_eq!(ours[0].mac, mac_of(2));

        // A link of that name that does not say it is ours (here: its alias was changed) is
        // neither adopted nor replaced.
        run(&["ip", "-n", &ns, "link", "set", &name, "alias", "x"]);
        match links
            .create_macvlan("va", &name, mac_of(2), DEFAULT_LINK_GROUP, &alias)
            .await
        {
            Err(LinkError::NotOurs { alias, .. }) => assert_eq!(alias.as_deref(), Some("x")),
            other => panic!("expected NotOurs, got {other:?}"),
        }
        let another_owner = link_alias(&InstanceId::derived("test", "other"), "test/adopt");
        run(&[
            "ip",
            "-n",
            &ns,
            "link",
            "set",
            &name,
            "alias",
            &another_owner,
        ]);
        assert!(matches!(
            links
                .create_macvlan("va", &name, mac_of(2), DEFAULT_LINK_GROUP, &alias)
                .await,
            Err(LinkError::NotOurs { .. })
        ));
        // The link of a dhcpmanager from before owner ids, for the same address: taken over.
        run(&[
            "ip",
            "-n",
            &ns,
            "link",
            "set",
            &name,
            "alias",
            "dhcpmanager:test/adopt",
        ]);
        let upgraded = links
            .create_macvlan("va", &name, mac_of(2), DEFAULT_LINK_GROUP, &alias)
            .await
            .unwrap();
        assert_eq!(upgraded, replaced);
        let ours = links.list_ours(DEFAULT_LINK_GROUP).await.unwrap();
        assert_eq!(ours[0].alias.as_deref(), Some(alias.as_str()));

        // Not ours at all (a veth of the same name, no alias): left alone.
        let other_name = link_name("test/not-macvlan");
        run(&[
            "ip",
            "-n",
            &ns,
            "link",
            "add",
            &other_name,
            "type",
            "veth",
            "peer",
            "name",
            "vpeer",
        ]);
        assert!(matches!(
            links
                .create_macvlan("va", &other_name, mac_of(4), DEFAULT_LINK_GROUP, &alias)
                .await,
            Err(LinkError::NotOurs { alias: None, .. })
        ));
        let details = run(&["ip", "-n", &ns, "-d", "-o", "link", "show", &other_name]);
        assert!(details.contains("veth"), "{details}");
        assert_eq!(links.list_ours(DEFAULT_LINK_GROUP).await.unwrap().len(), 1);

        let shown = run(&["ip", "-n", &ns, "-o", "link", "show", &name]);
        assert!(
            shown.contains("state UP") || shown.contains(",UP"),
            "link is up: {shown}"
        );

        match links
            .create_macvlan("eth9", "dmx", mac_of(3), DEFAULT_LINK_GROUP, &alias)
            .await
        {
            Err(e @ LinkError::ParentNotFound(_)) => {
                assert_eq!(e.to_string(), "parent interface eth9 not found")
            }
            other => panic!("expected ParentNotFound, got {other:?}"),
        }
        assert!(matches!(
            links
                .create_macvlan(
                    "va",
                    "a-name-of-16-chr",
                    mac_of(3),
                    DEFAULT_LINK_GROUP,
                    &alias
                )
                .await,
            Err(LinkError::NameTooLong(_))
        ));

        let ip = Ipv4Addr::new(10, 77, 0, 200);
        links.assign_ip(replaced, ip, 24).await.unwrap();
        links.assign_ip(replaced, ip, 24).await.unwrap();
        let addrs = run(&["ip", "-n", &ns, "-o", "-4", "addr", "show", "dev", &name]);
        assert!(addrs.contains("10.77.0.200/24"), "{addrs}");
        links.remove_ip(replaced, ip, 24).await.unwrap();
        links.remove_ip(replaced, ip, 24).await.unwrap();
        let addrs = run(&["ip", "-n", &ns, "-o", "-4", "addr", "show", "dev", &name]);
        assert!(!addrs.contains("10.77.0.200"), "{addrs}");

        links.delete(replaced).await.unwrap();
        links.delete(replaced).await.unwrap();
        assert!(
            links
                .list_ours(DEFAULT_LINK_GROUP)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            links.delete_group(0).await,
            Err(LinkError::DefaultGroup)
        ));
        links.delete_group(DEFAULT_LINK_GROUP).await.unwrap();
    });
}

/// The `ip -d -o link show` line of `name` in `ns`, or None when there is no such link.
fn link_details(ns: &str, name: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["-n", ns, "-d", "-o", "link", "show", name])
        .output()
        .expect("ip link");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The flags of an `ip -o link` line, e.g. "BROADCAST,MULTICAST,UP,LOWER_UP".
fn link_flags(details: &str) -> Vec<String> {
    let flags = details
        .split('<')
        .nth(1)
        .unwrap()
        .split('>')
        .next()
        .unwrap();
    flags.split(',').map(str::to_owned).collect()
}

fn has_flag(details: &str, flag: &str) -> bool {
    link_flags(details).iter().any(|f| f == flag)
}

fn is_up(details: &str) -> bool {
    has_flag(details, "UP")
}

fn in_group(details: &str, group: u32) -> bool {
    details.contains(&format!(" group {group:#x} "))
        || details.contains(&format!(" group {group} "))
}

#[test]
fn a_retired_link_is_silent_in_the_retired_group_and_holds_its_mac_until_deleted() {
    let pair = NetnsPair::new();
    let ns = pair.a.clone();
    in_netns(&pair.a, move || async move {
        let links = Links::connect().unwrap();
        let retired_group = links.retired_group();
        assert_eq!(retired_group, DEFAULT_RETIRED_LINK_GROUP);
        let old = link_name("test/retire-old");
        let old_index = links
            .create_macvlan("va", &old, mac_of(1), DEFAULT_LINK_GROUP, &alias("a"))
            .await
            .unwrap();
        let details = link_details(&ns, &old).unwrap();
        assert!(is_up(&details) && !has_flag(&details, "NOARP"), "{details}");

        let start = Instant::now();
        links.retire(old_index).await.unwrap();
        let retire_time = start.elapsed();
        let details = link_details(&ns, &old).expect("a retired link still exists");
        assert!(
            has_flag(&details, "NOARP"),
            "retired means no ARP: {details}"
        );
        assert!(in_group(&details, retired_group), "{details}");
        assert!(
            links
                .list_ours(DEFAULT_LINK_GROUP)
                .await
                .unwrap()
                .is_empty(),
            "no longer listed as ours"
        );
        assert_eq!(links.list_ours(retired_group).await.unwrap().len(), 1);
        // Retiring twice, or a link already gone, is not an error.
        links.retire(old_index).await.unwrap();
        links.retire(999_999).await.unwrap();

        // Still up, it holds its MAC on the parent: why the manager waits for the reaper
        // before it reuses a MAC.
        let new = link_name("test/retire-new");
        let busy = links
            .create_macvlan("va", &new, mac_of(1), DEFAULT_LINK_GROUP, &alias("b"))
            .await;
        assert!(busy.is_err(), "{busy:?}");
        assert_eq!(
            link_details(&ns, &new),
            None,
            "a failed create leaves nothing"
        );

        let start = Instant::now();
        links.delete_retired().await.unwrap();
        let delete_time = start.elapsed();
        assert_eq!(link_details(&ns, &old), None, "the retired link is deleted");
        let new_index = links
            .create_macvlan("va", &new, mac_of(1), DEFAULT_LINK_GROUP, &alias("b"))
            .await
            .expect("the MAC is free once the retired link is deleted");
        let ours = links.list_ours(DEFAULT_LINK_GROUP).await.unwrap();
        assert_eq!(ours.len(), 1);
        assert_eq!(ours[0].ifindex, new_index);
        // Nothing retired: deleting the group is a no-op, not an error.
        links.delete_retired().await.unwrap();
        println!("retire one macvlan: {retire_time:?}; delete the retired group: {delete_time:?}");
    });
}

/// A lease manager that persists nothing.
fn manager(config: ManagerConfig) -> Result<LeaseManager, Error> {
    LeaseManager::new(
        test_owner(),
        config,
        Arc::new(|_: &str, _: Option<&LeaseRecord>| {}),
    )
}

#[test]
fn the_manager_reuses_the_mac_of_a_link_it_just_retired() {
    let pair = NetnsPair::new();
    let ns = pair.a.clone();
    in_netns(&pair.a, move || async move {
        let manager = manager(ManagerConfig::default()).unwrap();
        let mac = MacAddr(mac_of(400));
        for round in 0..5 {
            let old = manager.prepare("test/old", "va", mac).await.unwrap();
            let old_name = old.interface().to_owned();
            manager.discard(old).await.unwrap();
            // No settle: the manager knows the MAC is held and waits for its deletion.
            let new = manager.prepare("test/new", "va", mac).await.unwrap();
            let details = link_details(&ns, new.interface()).unwrap();
            assert!(is_up(&details), "round {round}: {details}");
            assert!(details.contains("02:77:00:00:01:90"), "{details}");
            assert_eq!(link_details(&ns, &old_name), None, "round {round}");
            manager.discard(new).await.unwrap();
        }
        manager.settle_links().await.unwrap();
    });
    let remaining = run(&["ip", "-n", &pair.a, "-o", "link", "show"]);
    assert_eq!(remaining.lines().count(), 2, "only lo and va: {remaining}");
}

#[test]
fn retiring_takes_one_request_and_deleting_retired_links_one_more() {
    let pair = NetnsPair::new();
    let ns = pair.a.clone();
    let (per_retire, per_delete, group_delete) = in_netns(&pair.a, move || async move {
        let links = Links::connect().unwrap();
        let mut indexes = Vec::new();
        for i in 0..40u16 {
            let identity = format!("test/retire-{i}");
            let index = links
                .create_macvlan(
                    "va",
                    &link_name(&identity),
                    mac_of(100 + i),
                    DEFAULT_LINK_GROUP,
                    &alias(&identity),
                )
                .await
                .unwrap();
            indexes.push(index);
        }
        let (to_retire, to_delete) = indexes.split_at(20);
        let start = Instant::now();
        for index in to_retire {
            links.retire(*index).await.unwrap();
        }
        let per_retire = start.elapsed() / 20;
        let start = Instant::now();
        for index in to_delete {
            links.delete(*index).await.unwrap();
        }
        let per_delete = start.elapsed() / 20;
        let start = Instant::now();
        links.delete_retired().await.unwrap();
        let group_delete = start.elapsed();
        assert!(
            links
                .list_ours(links.retired_group())
                .await
                .unwrap()
                .is_empty()
        );
        (per_retire, per_delete, group_delete)
    });
    let remaining = run(&["ip", "-n", &ns, "-o", "link", "show"]);
    assert_eq!(remaining.lines().count(), 2, "only lo and va: {remaining}");
    println!(
        "retire: {per_retire:?} per link; delete: {per_delete:?} per link; \
         delete of 20 retired: {group_delete:?}"
    );
}

#[test]
fn create_macvlan_replaces_a_retired_link_of_the_same_name() {
    let pair = NetnsPair::new();
    let ns = pair.a.clone();
    in_netns(&pair.a, move || async move {
        let links = Links::connect().unwrap();
        let name = link_name("test/comeback");
        let alias = alias("test/comeback");
        let first = links
            .create_macvlan("va", &name, mac_of(5), DEFAULT_LINK_GROUP, &alias)
            .await
            .unwrap();
        links.retire(first).await.unwrap();
        // Same name, MAC, parent: adoptable but for the group it is in.
        let second = links
            .create_macvlan("va", &name, mac_of(5), DEFAULT_LINK_GROUP, &alias)
            .await
            .unwrap();
        assert_ne!(first, second, "a retired link is never adopted");
        let details = link_details(&ns, &name).unwrap();
        assert!(is_up(&details), "{details}");
        assert!(in_group(&details, DEFAULT_LINK_GROUP), "{details}");
        // The reaper's next group delete cannot take the fresh link.
        links.delete_retired().await.unwrap();
        let ours = links.list_ours(DEFAULT_LINK_GROUP).await.unwrap();
        assert_eq!(ours.len(), 1);
        assert_eq!(ours[0].ifindex, second);
    });
}

#[test]
fn the_manager_retires_discarded_links_and_settles_by_deleting_them() {
    let pair = NetnsPair::new();
    let ns = pair.a.clone();
    in_netns(&pair.a, move || async move {
        let manager = manager(ManagerConfig::default()).unwrap();
        let mut names = Vec::new();
        for i in 0..5u16 {
            let link = manager
                .prepare(&format!("test/settle-{i}"), "va", MacAddr(mac_of(200 + i)))
                .await
                .unwrap();
            names.push(link.interface().to_owned());
            manager.discard(link).await.unwrap();
        }
        manager.settle_links().await.unwrap();
        for name in &names {
            assert_eq!(
                link_details(&ns, name),
                None,
                "{name} is deleted once settled"
            );
        }
        // Nothing retired since: settling again completes at once.
        manager.settle_links().await.unwrap();

        // Retired links nobody will reap (a crash) are swept by the orphan sweep...
        let links = manager.links();
        let stray = links
            .create_macvlan("va", "dmstray1", mac_of(300), 0x1234, "x")
            .await
            .unwrap();
        let kept = manager
            .prepare("test/kept", "va", MacAddr(mac_of(301)))
            .await
            .unwrap();
        links.retire(stray).await.unwrap();
        assert_eq!(manager.remove_orphan_links(|_| false).await.unwrap(), 0);
        assert_eq!(link_details(&ns, "dmstray1"), None);
        assert!(
            link_details(&ns, kept.interface()).is_some(),
            "a prepared link stays"
        );

        // ... and by stop_all.
        let stray = links
            .create_macvlan("va", "dmstray2", mac_of(302), 0x1234, "x")
            .await
            .unwrap();
        links.retire(stray).await.unwrap();
        let kept_name = kept.interface().to_owned();
        drop(kept);
        manager.stop_all().await.unwrap();
        assert_eq!(link_details(&ns, "dmstray2"), None);
        assert_eq!(link_details(&ns, &kept_name), None);
    });
    let remaining = run(&["ip", "-n", &pair.a, "-o", "link", "show"]);
    assert_eq!(remaining.lines().count(), 2, "only lo and va: {remaining}");
}

#[test]
fn a_manager_refuses_a_retired_group_that_is_its_link_group() {
    let pair = NetnsPair::new();
    in_netns(&pair.a, || async {
        let config = ManagerConfig {
            retired_link_group: DEFAULT_LINK_GROUP,
            ..ManagerConfig::default()
        };
        let outcome = manager(config);
        assert!(matches!(
            outcome.err(),
            Some(Error::Link(LinkError::RetiredGroup { .. }))
        ));
    });
}

#[test]
fn discover_through_the_packet_socket_gets_an_offer_with_and_without_broadcast_flag() {
    let pair = NetnsPair::new();
    let _dnsmasq = start_dnsmasq(&pair);
    let server_mac = pair.mac_in_b();
    in_netns(&pair.a, move || async move {
        let links = Links::connect().unwrap();
        let mac = mac_of(7);
        let index = links
            .create_macvlan("va", "dmoffer", mac, DEFAULT_LINK_GROUP, &alias("offer"))
            .await
            .unwrap();
        let socket = DhcpSocket::open(index, mac).unwrap();
        for (xid, broadcast) in [(0x1111_0001, true), (0x1111_0002, false)] {
            socket
                .send(
                    None,
                    Ipv4Addr::UNSPECIFIED,
                    Ipv4Addr::BROADCAST,
                    &discover(mac, xid, broadcast),
                )
                .unwrap();
            let received = socket.recv().await.unwrap();
            let offer = decode(&received.payload);
            assert_eq!(offer.xid(), xid);
            assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
            assert_eq!(offer.chaddr(), &mac);
            let offered = offer.yiaddr();
            assert!(
                offered > Ipv4Addr::new(10, 77, 0, 9) && offered < Ipv4Addr::new(10, 77, 0, 251)
            );
            assert_eq!(received.src_ip, SERVER_IP);
            assert_eq!(received.src_mac, server_mac);
            let expected_dst = if broadcast {
                Ipv4Addr::BROADCAST
            } else {
                offered
            };
            assert_eq!(received.dst_ip, expected_dst, "broadcast flag {broadcast}");
        }
    });
}

#[test]
fn a_socket_never_sees_replies_for_another_mac() {
    let pair = NetnsPair::new();
    let _dnsmasq = start_dnsmasq(&pair);
    in_netns(&pair.a, || async {
        let links = Links::connect().unwrap();
        let (mac_a, mac_b) = (mac_of(10), mac_of(11));
        let group = DEFAULT_LINK_GROUP;
        let index_a = links
            .create_macvlan("va", "dmA", mac_a, group, "dhcpmanager:a")
            .await
            .unwrap();
        let index_b = links
            .create_macvlan("va", "dmB", mac_b, group, "dhcpmanager:b")
            .await
            .unwrap();
        let socket_a = DhcpSocket::open(index_a, mac_a).unwrap();
        let socket_b = DhcpSocket::open(index_b, mac_b).unwrap();
        // Sees every IPv4 frame on A, to prove B's broadcast reply did reach A's interface.
        let witness = UnfilteredWitness::open(index_a);

        // The broadcast flag makes dnsmasq broadcast the OFFER, so it reaches both macvlans.
        let payload = discover(mac_b, 0x2222_0001, true);
        socket_b
            .send(None, Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, &payload)
            .unwrap();
        let offer_b = decode(&socket_b.recv().await.unwrap().payload);
        assert_eq!(offer_b.xid(), 0x2222_0001);
        while !witness.next_is_offer_for(0x2222_0001) {}

        // B's OFFER was queued on A's interface before A's own exchange started; if the filter let
        // it through, A would read it first.
        socket_a
            .send(
                None,
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::BROADCAST,
                &discover(mac_a, 0x2222_0002, true),
            )
            .unwrap();
        let first_for_a = decode(&socket_a.recv().await.unwrap().payload);
        assert_eq!(first_for_a.xid(), 0x2222_0002);
        assert_eq!(first_for_a.chaddr(), &mac_a);
    });
}

#[test]
fn arp_probe_finds_a_conflict_for_a_used_address_and_none_for_a_free_one() {
    let pair = NetnsPair::new();
    in_netns(&pair.a, || async {
        let links = Links::connect().unwrap();
        let mac = mac_of(20);
        let index = links
            .create_macvlan("va", "dmarp", mac, DEFAULT_LINK_GROUP, "dhcpmanager:arp")
            .await
            .unwrap();
        let timing = ProbeTiming::scaled(0.02);
        assert!(
            probe(index, mac, SERVER_IP, timing).await.unwrap(),
            "10.77.0.1 is on the peer"
        );
        assert!(
            !probe(index, mac, Ipv4Addr::new(10, 77, 0, 99), timing)
                .await
                .unwrap()
        );
    });
}

#[test]
fn frames_leave_with_the_macvlan_mac_as_ethernet_source() {
    let pair = NetnsPair::new();
    let _dnsmasq = start_dnsmasq(&pair);
    let server_mac = pair.mac_in_b();
    let mac = mac_of(30);
    let ns = pair.a.clone();
    let index = in_netns(&pair.a, move || async move {
        Links::connect()
            .unwrap()
            .create_macvlan("va", "dmcap", mac, DEFAULT_LINK_GROUP, "dhcpmanager:cap")
            .await
            .unwrap()
    });
    let capture_file = pair.dir.join("cap.pcap");
    let mut tcpdump = start_tcpdump(&ns, "dmcap", &capture_file);

    in_netns(&pair.a, move || async move {
        let socket = DhcpSocket::open(index, mac).unwrap();
        let payload = discover(mac, 0x3333_0001, true);
        socket
            .send(None, Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, &payload)
            .unwrap();
        assert_eq!(
            decode(&socket.recv().await.unwrap().payload).xid(),
            0x3333_0001
        );
        // Unicast at layer 2 and 3 to the server, as a client in RENEWING would. The server's
        // kernel drops unicast from 0.0.0.0, so no reply is awaited: only the frame matters here.
        let payload = discover(mac, 0x3333_0002, true);
        socket
            .send(Some(server_mac), Ipv4Addr::UNSPECIFIED, SERVER_IP, &payload)
            .unwrap();
    });

    // tcpdump -U writes each packet as it is captured; wait for both requests, then stop it.
    let deadline = Instant::now() + READY_TIMEOUT;
    let requests = loop {
        let requests: Vec<Vec<u8>> = pcap_frames(&capture_file)
            .into_iter()
            .filter(|f| udp_dst_port(f) == Some(67))
            .collect();
        if requests.len() >= 2 {
            break requests;
        }
        assert!(
            Instant::now() < deadline,
            "tcpdump did not record both requests"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    tcpdump.stop();
    assert_eq!(requests.len(), 2);
    for frame in &requests {
        assert_eq!(&frame[6..12], &mac, "Ethernet source is the macvlan's MAC");
    }
    assert_eq!(&requests[0][0..6], &[0xff; 6], "None sends to broadcast");
    assert_eq!(
        &requests[1][0..6],
        &server_mac,
        "Some(mac) sends to that MAC"
    );
}

/// A blocking packet socket on an interface without any filter: every IPv4 packet it sees.
struct UnfilteredWitness(std::os::fd::OwnedFd);

impl UnfilteredWitness {
    fn open(ifindex: u32) -> Self {
        use std::os::fd::FromRawFd;
        let protocol = (libc::ETH_P_IP as u16).to_be();
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(protocol)) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = ifindex as i32;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        // A safety net so a missing packet fails the test instead of hanging it.
        let timeout = libc::timeval {
            tv_sec: 10,
            tv_usec: 0,
        };
        let size = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size,
            )
        };
        assert_eq!(rc, 0);
        Self(fd)
    }

    /// Reads the next IPv4 packet; whether it is a DHCP OFFER with this xid.
    fn next_is_offer_for(&self, xid: u32) -> bool {
        let mut buf = [0u8; 2048];
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(
            n >= 0,
            "witness saw nothing: {}",
            std::io::Error::last_os_error()
        );
        let Some(payload) = buf.get(28..n as usize) else {
            return false;
        };
        if buf[9] != 17 || u16::from_be_bytes([buf[22], buf[23]]) != 68 {
            return false;
        }
        let msg = decode(payload);
        msg.xid() == xid && msg.opts().msg_type() == Some(MessageType::Offer)
    }
}

fn start_tcpdump(ns: &str, interface: &str, file: &Path) -> ChildGuard {
    let child = Command::new("ip")
        .args([
            "netns", "exec", ns, "tcpdump", "-i", interface, "-n", "-U", "-w",
        ])
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tcpdump");
    let mut guard = ChildGuard(child);
    let stderr = guard.0.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    // tcpdump says "listening on IF" once its capture is open: from then on nothing is missed.
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("listening on") => break,
            Some(Ok(_)) => continue,
            other => panic!("tcpdump did not start: {other:?}"),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    guard
}

/// The Ethernet frames of a little-endian, microsecond pcap file (what tcpdump writes).
fn pcap_frames(file: &Path) -> Vec<Vec<u8>> {
    let Ok(bytes) = fs::read(file) else {
        return Vec::new();
    };
    if bytes.len() < 24 {
        return Vec::new();
    }
    assert_eq!(&bytes[..4], &[0xd4, 0xc3, 0xb2, 0xa1], "little-endian pcap");
    assert_eq!(
        u32::from_le_bytes(bytes[20..24].try_into().unwrap()),
        1,
        "Ethernet link type"
    );
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let captured = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        let Some(frame) = bytes.get(at + 16..at + 16 + captured) else {
            break;
        };
        frames.push(frame.to_vec());
        at += 16 + captured;
    }
    frames
}

fn udp_dst_port(frame: &[u8]) -> Option<u16> {
    if frame.get(12..14)? != [0x08, 0x00] || *frame.get(23)? != 17 {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let udp = frame.get(14 + ihl..14 + ihl + 8)?;
    Some(u16::from_be_bytes([udp[2], udp[3]]))
}

/// Runs `body` like [`in_netns`], on a thread that first moved into a private mount namespace
/// where `/proc/sys` is read-only, as in an unprivileged container.
fn in_netns_with_read_only_proc_sys<T, F, Fut>(ns: &str, body: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        use std::ffi::CString;
        let call = |rc: i32, what: &str| {
            assert_eq!(rc, 0, "{what}: {}", std::io::Error::last_os_error());
        };
        // CLONE_NEWNS copies only this thread's view (it implies CLONE_FS, unshared here).
        call(unsafe { libc::unshare(libc::CLONE_NEWNS) }, "unshare");
        let root = CString::new("/").unwrap();
        let sys = CString::new("/proc/sys").unwrap();
        let none = std::ptr::null();
        call(
            unsafe {
                libc::mount(
                    none,
                    root.as_ptr(),
                    none,
                    libc::MS_REC | libc::MS_PRIVATE,
                    none.cast(),
                )
            },
            "make / private",
        );
        call(
            unsafe { libc::mount(sys.as_ptr(), sys.as_ptr(), none, libc::MS_BIND, none.cast()) },
            "bind /proc/sys",
        );
        call(
            unsafe {
                libc::mount(
                    none,
                    sys.as_ptr(),
                    none,
                    libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                    none.cast(),
                )
            },
            "remount /proc/sys read-only",
        );
        in_netns(&ns, body)
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Whether a captured frame is IPv6 and, if so, whether it is a router solicitation.
fn ipv6_kind(frame: &[u8]) -> Option<bool> {
    if frame.get(12..14)? != [0x86, 0xdd] {
        return None;
    }
    // Next header ICMPv6 (58), type 133; hop-by-hop headers (MLD) are not solicitations.
    Some(frame.get(20) == Some(&58) && frame.get(54) == Some(&133))
}

#[test]
fn a_created_link_sends_no_ipv6_and_needs_no_writable_proc_sys() {
    let pair = NetnsPair::new();
    let capture_file = pair.dir.join("ipv6.pcap");
    // On the server's side of the segment: everything any macvlan on `va` puts on the wire.
    let mut tcpdump = start_tcpdump(&pair.b, "vb", &capture_file);
    let ours = mac_of(40);
    let name = "dmnov6";
    let proc_sys_was_read_only = in_netns_with_read_only_proc_sys(&pair.a, move || async move {
        Links::connect()
            .unwrap()
            .create_macvlan("va", name, ours, DEFAULT_LINK_GROUP, "dhcpmanager:t:nov6")
            .await
            .unwrap();
        let knob = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
        fs::write(&knob, "1").map_err(|e| e.raw_os_error())
    });
    assert_eq!(
        proc_sys_was_read_only,
        Err(Some(libc::EROFS)),
        "the link was created with /proc/sys read-only"
    );
    let details = link_details(&pair.a, name).expect("the link exists");
    assert!(details.contains("addrgenmode none"), "{details}");
    assert!(is_up(&details), "{details}");

    // The positive control: a macvlan made the ordinary way on the same parent, after ours.
    // Its router solicitation follows DAD of its link-local address, so once it is on the wire
    // ours had as long to send the same.
    let control = "02:77:00:00:00:41";
    run(&[
        "ip", "-n", &pair.a, "link", "add", "dmctl", "link", "va", "address", control, "type",
        "macvlan", "mode", "bridge",
    ]);
    run(&["ip", "-n", &pair.a, "link", "set", "dmctl", "up"]);
    let control = parse_mac(control);
    let deadline = Instant::now() + BODY_TIMEOUT;
    let frames = loop {
        let frames = pcap_frames(&capture_file);
        let solicited = frames
            .iter()
            .any(|f| f[6..12] == control && ipv6_kind(f) == Some(true));
        if solicited {
            break frames;
        }
        assert!(
            Instant::now() < deadline,
            "the control link sent no router solicitation"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    tcpdump.stop();
    let from_ours: Vec<&Vec<u8>> = frames
        .iter()
        .filter(|f| f[6..12] == ours && ipv6_kind(f).is_some())
        .collect();
    assert!(
        from_ours.is_empty(),
        "{} IPv6 frames left with our MAC",
        from_ours.len()
    );
}

#[test]
fn managers_of_different_instances_never_remove_each_others_links() {
    let pair = NetnsPair::new();
    let ns = pair.a.clone();
    // A second parent next to `va` (a veth pair: the test kernel has no dummy driver).
    run(&[
        "ip", "-n", &ns, "link", "add", "p2", "type", "veth", "peer", "name", "p2peer",
    ]);
    run(&["ip", "-n", &ns, "link", "set", "p2", "up"]);
    in_netns(&pair.a, move || async move {
        let owner = |name| InstanceId::derived("test", name);
        let persist = || Arc::new(|_: &str, _: Option<&LeaseRecord>| {});
        let a = LeaseManager::new(owner("a"), ManagerConfig::default(), persist()).unwrap();
        let b = LeaseManager::new(owner("b"), ManagerConfig::default(), persist()).unwrap();
        let a_link = a.prepare("a/1", "va", MacAddr(mac_of(500))).await.unwrap();
        let b_on_va = b.prepare("b/1", "va", MacAddr(mac_of(501))).await.unwrap();
        let b_on_p2 = b.prepare("b/2", "p2", MacAddr(mac_of(502))).await.unwrap();
        // A link of a dhcpmanager from before owner ids, in the same group.
        let legacy = link_name("legacy/1");
        a.links()
            .create_macvlan(
                "va",
                &legacy,
                mac_of(503),
                DEFAULT_LINK_GROUP,
                "dhcpmanager:legacy/1",
            )
            .await
            .unwrap();
        let b_names = [
            b_on_va.interface().to_owned(),
            b_on_p2.interface().to_owned(),
        ];
        let a_name = a_link.interface().to_owned();
        let exists = |name: &str| link_details(&ns, name).is_some();

        // B's prepared links are claimed; A sees them as not its own either way.
        assert_eq!(a.remove_orphan_links(|_| false).await.unwrap(), 0);
        assert_eq!(b.remove_orphan_links(|_| false).await.unwrap(), 0);
        // B "crashes": its links stay, unclaimed.
        drop(b_on_va);
        drop(b_on_p2);
        assert_eq!(a.remove_orphan_links(|_| false).await.unwrap(), 0);
        assert!(
            b_names.iter().all(|n| exists(n)),
            "A's sweep left B's links"
        );
        // A stops everything: only its own link goes.
        drop(a_link);
        a.stop_all().await.unwrap();
        assert!(!exists(&a_name), "A's own link is removed by its stop_all");
        assert!(
            b_names.iter().all(|n| exists(n)),
            "A's stop_all left B's links"
        );
        assert!(exists(&legacy), "an unowned link is nobody's to remove");
        // B, restarted with the same id, finds its leftovers on both parents and sweeps them.
        assert_eq!(b.remove_orphan_links(|_| false).await.unwrap(), 2);
        assert!(b_names.iter().all(|n| !exists(n)));
        assert!(exists(&legacy));
        // The same key under another owner is refused, not taken over.
        let taken = a.prepare("legacy/1", "va", MacAddr(mac_of(503))).await;
        assert!(
            taken.is_ok(),
            "an unowned link of the same key is taken over: {taken:?}"
        );
        let b_key = b
            .prepare("shared/1", "va", MacAddr(mac_of(504)))
            .await
            .unwrap();
        match a.prepare("shared/1", "va", MacAddr(mac_of(504))).await {
            Err(Error::Link(LinkError::NotOurs { .. })) => {}
            other => panic!("expected NotOurs, got {other:?}"),
        }
        assert!(exists(b_key.interface()), "the refusal changed nothing");
    });
}

// --- linkless addresses: the parent's shared socket --------------------------------------------

#[test]
fn the_parent_socket_sends_from_each_address_mac_and_receives_replies_for_each() {
    use dhcpmanager_engine::net::ParentSocket;
    use dhcpmanager_engine::net::parent_socket::interface_index;
    let pair = NetnsPair::new();
    let _dnsmasq = start_dnsmasq(&pair);
    let capture_file = pair.dir.join("parent.pcap");
    let mut tcpdump = start_tcpdump(&pair.a, "va", &capture_file);
    let (first, second) = (mac_of(40), mac_of(41));
    in_netns(&pair.a, move || async move {
        let socket = ParentSocket::open(interface_index("va").unwrap()).unwrap();
        socket.add_mac(first).unwrap();
        socket.add_mac(second).unwrap();
        // Broadcast flag on (broadcast reply) for one, off (unicast to its MAC) for the other.
        for (mac, xid, broadcast) in [(first, 0x4444_0001, true), (second, 0x4444_0002, false)] {
            socket
                .send(
                    mac,
                    None,
                    Ipv4Addr::UNSPECIFIED,
                    Ipv4Addr::BROADCAST,
                    &discover(mac, xid, broadcast),
                )
                .unwrap();
            let reply = loop {
                let reply = socket.recv().await.unwrap();
                if decode(&reply.received.payload).xid() == xid {
                    break reply;
                }
            };
            assert_eq!(reply.chaddr, mac, "handed out by chaddr");
            let offer = decode(&reply.received.payload);
            assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
            assert_eq!(reply.received.src_ip, SERVER_IP);
            let expected_dst = if broadcast {
                Ipv4Addr::BROADCAST
            } else {
                offer.yiaddr()
            };
            assert_eq!(
                reply.received.dst_ip, expected_dst,
                "broadcast flag {broadcast}"
            );
        }
        socket.drop_mac(first).unwrap();
        socket.drop_mac(second).unwrap();
    });
    let deadline = Instant::now() + READY_TIMEOUT;
    let requests = loop {
        let requests: Vec<Vec<u8>> = pcap_frames(&capture_file)
            .into_iter()
            .filter(|f| udp_dst_port(f) == Some(67))
            .collect();
        if requests.len() >= 2 {
            break requests;
        }
        assert!(
            Instant::now() < deadline,
            "tcpdump did not record both requests"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    tcpdump.stop();
    assert_eq!(
        &requests[0][6..12],
        &first,
        "Ethernet source is the address's MAC"
    );
    assert_eq!(
        &requests[1][6..12],
        &second,
        "Ethernet source is the address's MAC"
    );
    // The BOOTP chaddr (14 Ethernet + 20 IP + 8 UDP + 28) matches the source.
    assert_eq!(&requests[0][70..76], &first);
    assert_eq!(&requests[1][70..76], &second);
}

#[test]
fn arp_probe_from_the_parent_uses_the_address_mac_and_finds_a_conflict() {
    use dhcpmanager_engine::net::arp::{parent_arp_socket, probe_on_raw};
    use dhcpmanager_engine::net::parent_socket::interface_index;
    let pair = NetnsPair::new();
    let capture_file = pair.dir.join("arp.pcap");
    let mut tcpdump = start_tcpdump(&pair.a, "va", &capture_file);
    let mac = mac_of(42);
    in_netns(&pair.a, move || async move {
        let parent = interface_index("va").unwrap();
        let timing = ProbeTiming::scaled(0.02);
        let probe = |ip| async move {
            probe_on_raw(parent_arp_socket(parent).unwrap(), parent, mac, ip, timing)
                .await
                .unwrap()
        };
        assert!(probe(SERVER_IP).await, "10.77.0.1 is on the peer");
        assert!(!probe(Ipv4Addr::new(10, 77, 0, 99)).await);
    });
    let deadline = Instant::now() + READY_TIMEOUT;
    let probes = loop {
        let probes: Vec<Vec<u8>> = pcap_frames(&capture_file)
            .into_iter()
            .filter(|f| f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[6..12] == mac)
            .collect();
        if probes.len() >= 4 {
            break probes;
        }
        assert!(
            Instant::now() < deadline,
            "tcpdump did not record the probes"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    tcpdump.stop();
    for frame in &probes {
        assert_eq!(&frame[0..6], &[0xff; 6], "probes are broadcast");
        assert_eq!(
            &frame[22..28],
            &mac,
            "sender hardware address is the address's MAC"
        );
        assert_eq!(
            &frame[28..32],
            &[0, 0, 0, 0],
            "an RFC 5227 probe: sender IP 0"
        );
    }
}
