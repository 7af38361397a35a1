//! The standalone backend's in-memory truth: allocations by id and the MAC pool. Pure: every
//! method is a decision over the two, the caller persists and notifies.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use chrono::Utc;
use dhcpmanager_engine::dhcp::LeaseRecord;

use super::store::{Phase, StoredAllocation};
use crate::MacAddr;
use crate::backend::{
    Allocation, AllocationState, BackendError, InterfaceInfo, LeaseInfo, StatusSnapshot,
    hostname_for_service, lease_cidr,
};

/// Go's net.Flags of a macvlan that is up: up | broadcast | multicast (as the original stored).
const LINK_UP_FLAGS: u32 = 1 | 2 | 16;

#[derive(Debug, Clone)]
pub struct Entry {
    pub stored: StoredAllocation,
    /// The link the manager runs it on, once started.
    pub link: Option<(String, u32)>,
    /// The address last held (or handed out): a new lease elsewhere is a move, reported once.
    held_ip: Option<Ipv4Addr>,
}

#[derive(Debug, Default)]
pub struct Book {
    allocations: BTreeMap<String, Entry>,
    pool: BTreeSet<MacAddr>,
    /// Free MACs set aside for spare links (see `spares.rs`), with the allocation id each
    /// spare's link is named after. Still free as far as the API is concerned.
    spares: BTreeMap<MacAddr, Spare>,
    /// When each MAC was last given back (a running count): new allocations and spares take the
    /// free MAC given back longest ago, because the link of one given back just now is still
    /// being deleted, and a new link with its MAC would have to wait for that.
    freed: BTreeMap<MacAddr, u64>,
    frees: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Spare {
    id: String,
    /// Its link exists; until then it is being prepared.
    ready: bool,
}

/// How a POST's allocation begins.
#[derive(Debug, PartialEq)]
pub enum Begun {
    /// On a ready spare: the allocation carries the spare's id and MAC, and its link exists.
    OnSpare(StoredAllocation),
    /// On a free MAC without a link yet.
    Cold(StoredAllocation),
    /// The only free MACs are spares still being prepared: ask again once one is ready or gone.
    WaitForSpare,
}

/// What a new lease record meant for its allocation.
#[derive(Debug, PartialEq)]
pub enum RecordChange {
    /// No such allocation (already withdrawn): nothing to store.
    Unknown,
    Updated(StoredAllocation),
    /// The server moved a handed-out allocation to another address.
    IpChanged {
        stored: StoredAllocation,
        old: Ipv4Addr,
        new: Ipv4Addr,
    },
}

impl Book {
    pub fn new(pool: BTreeSet<MacAddr>) -> Self {
        Book {
            allocations: BTreeMap::new(),
            pool,
            spares: BTreeMap::new(),
            freed: BTreeMap::new(),
            frees: 0,
        }
    }

    pub fn pool(&self) -> &BTreeSet<MacAddr> {
        &self.pool
    }

    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.allocations.get(id)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.allocations.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.allocations.len()
    }

    fn used_macs(&self) -> BTreeSet<MacAddr> {
        self.allocations.values().map(|e| e.stored.mac).collect()
    }

    pub fn free_macs(&self) -> Vec<MacAddr> {
        let used = self.used_macs();
        self.pool.difference(&used).copied().collect()
    }

    /// Records a loaded allocation; its MAC joins the pool (a MAC in use is always a pool MAC).
    pub fn insert(&mut self, stored: StoredAllocation) {
        self.pool.insert(stored.mac);
        let held_ip = stored
            .record
            .as_ref()
            .map(|r| r.ip)
            .or(stored.handed_out_ip);
        self.allocations.insert(
            stored.id.clone(),
            Entry {
                stored,
                link: None,
                held_ip,
            },
        );
    }

    /// Takes a free MAC for a new Pending allocation of `service`: a ready spare's first (its id
    /// replaces `new_id`), else a MAC no spare holds. Reserving the MAC and recording the
    /// allocation happen in one step, so no MAC can serve two allocations.
    pub fn begin(&mut self, new_id: String, service: &str) -> Result<Begun, BackendError> {
        let ready = self
            .spares
            .iter()
            .find(|(_, spare)| spare.ready)
            .map(|(mac, spare)| (*mac, spare.id.clone()));
        if let Some((mac, id)) = ready {
            self.spares.remove(&mac);
            return Ok(Begun::OnSpare(self.insert_pending(id, service, mac)));
        }
        match self.unreserved_free_mac() {
            Some(mac) => Ok(Begun::Cold(self.insert_pending(new_id, service, mac))),
            None if self.spares.is_empty() => Err(BackendError::NoFreeMac),
            None => Ok(Begun::WaitForSpare),
        }
    }

    fn insert_pending(&mut self, id: String, service: &str, mac: MacAddr) -> StoredAllocation {
        let stored = StoredAllocation {
            id,
            service: service.to_string(),
            hostname: hostname_for_service(service),
            mac,
            phase: Phase::Pending,
            handed_out_ip: None,
            record: None,
            created_at: Utc::now(),
            answered: false,
        };
        self.insert(stored.clone());
        stored
    }

    /// The free MAC no spare holds that was given back longest ago (never: first).
    fn unreserved_free_mac(&self) -> Option<MacAddr> {
        self.free_macs()
            .into_iter()
            .filter(|mac| !self.spares.contains_key(mac))
            .min_by_key(|mac| (self.freed.get(mac).copied().unwrap_or(0), *mac))
    }

    fn note_freed(&mut self, mac: MacAddr) {
        self.frees += 1;
        self.freed.insert(mac, self.frees);
    }

    /// Spares ready or being prepared.
    pub fn spare_count(&self) -> usize {
        self.spares.len()
    }

    /// Sets a free MAC aside for a spare whose link will be named after `id`.
    pub fn reserve_spare(&mut self, id: String) -> Option<MacAddr> {
        let mac = self.unreserved_free_mac()?;
        self.spares.insert(mac, Spare { id, ready: false });
        Some(mac)
    }

    /// The spare's link exists. False when the reservation is gone meanwhile (its MAC left the
    /// pool): the link is not wanted.
    pub fn spare_ready(&mut self, mac: MacAddr, id: &str) -> bool {
        match self.spares.get_mut(&mac) {
            Some(spare) if spare.id == id => {
                spare.ready = true;
                true
            }
            _ => false,
        }
    }

    /// Gives up a spare that could not be prepared; its MAC is plainly free again.
    pub fn drop_spare(&mut self, mac: MacAddr, id: &str) {
        if self.spares.get(&mac).is_some_and(|spare| spare.id == id) {
            self.spares.remove(&mac);
            self.note_freed(mac);
        }
    }

    /// Ends the spares whose MAC left the pool; returns the MACs of those whose link exists.
    pub fn drop_spares_outside_pool(&mut self) -> Vec<MacAddr> {
        let outside: Vec<MacAddr> = self
            .spares
            .keys()
            .filter(|mac| !self.pool.contains(mac))
            .copied()
            .collect();
        outside
            .into_iter()
            .filter(|mac| self.spares.remove(mac).is_some_and(|spare| spare.ready))
            .collect()
    }

    /// Ends every spare; returns the MACs of those whose link exists.
    pub fn drop_all_spares(&mut self) -> Vec<MacAddr> {
        std::mem::take(&mut self.spares)
            .into_iter()
            .filter(|(_, spare)| spare.ready)
            .map(|(mac, _)| mac)
            .collect()
    }

    pub fn set_link(&mut self, id: &str, name: String, ifindex: u32) {
        if let Some(entry) = self.allocations.get_mut(id) {
            entry.link = Some((name, ifindex));
        }
    }

    /// The pending allocation got its lease: it is handed out with the record's address.
    pub fn confirm(&mut self, id: &str, record: LeaseRecord) -> Option<StoredAllocation> {
        let entry = self
            .allocations
            .get_mut(id)
            .filter(|e| e.stored.phase == Phase::Pending)?;
        entry.stored.phase = Phase::Confirmed;
        entry.stored.answered = false;
        entry.stored.handed_out_ip = Some(record.ip);
        entry.held_ip = Some(record.ip);
        entry.stored.record = Some(record);
        Some(entry.stored.clone())
    }

    /// The requester took the answer: the allocation is confirmed as known to its client.
    pub fn mark_answered(&mut self, id: &str) -> Option<StoredAllocation> {
        let entry = self
            .allocations
            .get_mut(id)
            .filter(|e| e.stored.phase == Phase::Confirmed && !e.stored.answered)?;
        entry.stored.answered = true;
        Some(entry.stored.clone())
    }

    /// Allocations handed out durably whose answer may not have reached the requester.
    pub fn unconfirmed(&self) -> usize {
        self.allocations
            .values()
            .filter(|e| e.stored.phase == Phase::Confirmed && !e.stored.answered)
            .count()
    }

    /// The handed-out allocation a DELETE of `ip` means: the address handed out or the one now
    /// leased. Pending allocations (nobody was given their address) and allocations being
    /// released are not found. Should a moved allocation and a newer one both claim `ip`, the
    /// one that was handed out `ip` and still holds it wins.
    pub fn find_by_ip(&self, ip: Ipv4Addr) -> Option<&Entry> {
        let holds = |e: &&Entry| e.stored.record.as_ref().is_some_and(|r| r.ip == ip);
        let given = |e: &&Entry| e.stored.handed_out_ip == Some(ip);
        let candidates = || {
            self.allocations
                .values()
                .filter(|e| e.stored.phase == Phase::Confirmed)
        };
        candidates()
            .find(|e| given(e) && holds(e))
            .or_else(|| candidates().find(|e| given(e) || holds(e)))
    }

    pub fn set_phase(&mut self, id: &str, phase: Phase) -> Option<StoredAllocation> {
        let entry = self.allocations.get_mut(id)?;
        entry.stored.phase = phase;
        Some(entry.stored.clone())
    }

    /// Forgets the allocation; its MAC is free again.
    pub fn remove(&mut self, id: &str) -> Option<Entry> {
        let removed = self.allocations.remove(id)?;
        self.note_freed(removed.stored.mac);
        Some(removed)
    }

    pub fn apply_record(&mut self, id: &str, record: Option<LeaseRecord>) -> RecordChange {
        let Some(entry) = self.allocations.get_mut(id) else {
            return RecordChange::Unknown;
        };
        let stored = &mut entry.stored;
        let moved = match (entry.held_ip, &record) {
            (Some(old), Some(new)) if old != new.ip && stored.phase == Phase::Confirmed => {
                Some((old, new.ip))
            }
            _ => None,
        };
        if let Some(record) = &record {
            entry.held_ip = Some(record.ip);
        }
        stored.record = record;
        match moved {
            Some((old, new)) => {
                // The client now holds `new`; the address it was given stays findable by DELETE.
                RecordChange::IpChanged {
                    stored: stored.clone(),
                    old,
                    new,
                }
            }
            None => RecordChange::Updated(stored.clone()),
        }
    }

    /// Adds MACs to the pool; true when the pool changed.
    pub fn add_macs(&mut self, macs: &[MacAddr]) -> bool {
        let before = self.pool.len();
        self.pool.extend(macs.iter().copied());
        self.pool.len() != before
    }

    /// Removes MACs from the pool except those in use, which are returned.
    pub fn remove_macs(&mut self, macs: &[MacAddr]) -> Vec<MacAddr> {
        let used = self.used_macs();
        let mut in_use = Vec::new();
        for mac in macs {
            if used.contains(mac) {
                in_use.push(*mac);
            } else {
                self.pool.remove(mac);
            }
        }
        in_use
    }

    pub fn snapshot(&self) -> StatusSnapshot {
        StatusSnapshot {
            allocations: self
                .allocations
                .values()
                .filter(|e| e.stored.phase != Phase::Releasing)
                .map(to_api)
                .collect(),
            available_macs: self.free_macs(),
        }
    }

    pub fn lease_cidrs(&self) -> Vec<String> {
        let mut cidrs: Vec<String> = self
            .allocations
            .values()
            .filter_map(|e| {
                let record = e.stored.record.as_ref()?;
                lease_cidr(record.ip, prefix_mask(record.prefix_len))
            })
            .collect();
        cidrs.sort();
        cidrs.dedup();
        cidrs
    }
}

fn prefix_mask(prefix_len: u8) -> Ipv4Addr {
    let bits = u32::MAX
        .checked_shl(32 - u32::from(prefix_len.min(32)))
        .unwrap_or(0);
    Ipv4Addr::from(bits)
}

/// The API's view of an allocation.
pub fn to_api(entry: &Entry) -> Allocation {
    let stored = &entry.stored;
    let record = stored.record.as_ref();
    let state = match (stored.phase, record) {
        (Phase::Releasing, _) => AllocationState::Stopped,
        (Phase::Confirmed, Some(_)) => AllocationState::Bound,
        _ => AllocationState::Pending,
    };
    let interface = match &entry.link {
        Some((name, index)) => InterfaceInfo {
            name: name.clone(),
            index: *index,
            // The manager does not report the MTU; 0 says "unknown" rather than guessing.
            mtu: 0,
            flags: LINK_UP_FLAGS,
        },
        None => InterfaceInfo::default(),
    };
    Allocation {
        id: stored.id.clone(),
        service: stored.service.clone(),
        hostname: stored.hostname.clone(),
        ip: record.map(|r| r.ip).or(stored.handed_out_ip),
        mac: Some(stored.mac),
        interface,
        state,
        lease: record.map(lease_info),
        unconfirmed: stored.phase == Phase::Confirmed && !stored.answered,
    }
}

fn lease_info(record: &LeaseRecord) -> LeaseInfo {
    LeaseInfo {
        server_id: record.server_id,
        subnet_mask: Some(prefix_mask(record.prefix_len)),
        routers: record.routers.clone(),
        dns_servers: record.dns.clone(),
        domain_name: record.domain_name.clone(),
        bound_at: record.obtained_at,
        renew_at: record.renew_at,
        rebind_at: record.rebind_at,
        expires_at: record.expires_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn mac(last: u8) -> MacAddr {
        MacAddr([2, 0x77, 0, 0, 0, last])
    }

    fn record(ip: [u8; 4], mac: MacAddr) -> LeaseRecord {
        let now = Utc::now();
        LeaseRecord {
            ip: Ipv4Addr::from(ip),
            prefix_len: 24,
            routers: vec![Ipv4Addr::new(10, 77, 0, 1)],
            dns: vec![],
            domain_name: None,
            mac,
            client_id: "ff".into(),
            hostname: Some("web.default".into()),
            server_id: Ipv4Addr::new(10, 77, 0, 1),
            server_mac: None,
            lease_seconds: 60,
            obtained_at: now,
            renew_at: now + TimeDelta::seconds(30),
            rebind_at: now + TimeDelta::seconds(52),
            expires_at: now + TimeDelta::seconds(60),
        }
    }

    fn begin(book: &mut Book, id: &str, service: &str) -> StoredAllocation {
        match book.begin(id.into(), service).unwrap() {
            Begun::OnSpare(stored) | Begun::Cold(stored) => stored,
            Begun::WaitForSpare => panic!("no spare was reserved"),
        }
    }

    #[test]
    fn a_post_takes_a_ready_spare_first_with_its_id_and_waits_for_one_being_prepared() {
        let mut book = Book::new([mac(1), mac(2), mac(3)].into());
        let spare = book.reserve_spare("spare-1".into()).unwrap();
        let preparing = book.reserve_spare("spare-2".into()).unwrap();
        assert_ne!(spare, preparing);
        assert_eq!(book.spare_count(), 2);
        // spares are free MACs to the API
        assert_eq!(book.free_macs().len(), 3);
        // not ready yet: a POST takes the MAC no spare holds
        let cold = book.begin("a".into(), "ns/web").unwrap();
        assert!(
            matches!(&cold, Begun::Cold(s) if s.id == "a" && s.mac == mac(3)),
            "{cold:?}"
        );
        // only spares being prepared left
        assert_eq!(book.begin("b".into(), "x"), Ok(Begun::WaitForSpare));
        assert!(book.spare_ready(spare, "spare-1"));
        let hot = book.begin("b".into(), "ns/api").unwrap();
        assert!(
            matches!(&hot, Begun::OnSpare(s) if s.id == "spare-1" && s.mac == spare && s.hostname == "api.ns"),
            "{hot:?}"
        );
        assert_eq!(book.spare_count(), 1);
        // a spare that could not be prepared frees its MAC for the next POST
        book.drop_spare(preparing, "spare-2");
        assert!(matches!(book.begin("c".into(), "x"), Ok(Begun::Cold(s)) if s.mac == preparing));
        assert_eq!(book.begin("d".into(), "x"), Err(BackendError::NoFreeMac));
        assert_eq!(book.reserve_spare("spare-3".into()), None, "no free MAC");
    }

    #[test]
    fn the_mac_given_back_longest_ago_is_taken_first() {
        let mut book = Book::new([mac(1), mac(2), mac(3)].into());
        let a = begin(&mut book, "a", "x");
        let b = begin(&mut book, "b", "x");
        assert_eq!((a.mac, b.mac), (mac(1), mac(2)), "never used: in order");
        book.remove("b");
        book.remove("a");
        // mac(3) was never given back, then b's (given back before a's)
        assert_eq!(begin(&mut book, "c", "x").mac, mac(3));
        assert_eq!(book.reserve_spare("s".into()), Some(mac(2)));
        assert_eq!(begin(&mut book, "d", "x").mac, mac(1));
    }

    #[test]
    fn spares_end_with_their_mac_leaving_the_pool() {
        let mut book = Book::new([mac(1), mac(2), mac(3)].into());
        let ready = book.reserve_spare("s1".into()).unwrap();
        let preparing = book.reserve_spare("s2".into()).unwrap();
        assert!(book.spare_ready(ready, "s1"));
        assert!(book.remove_macs(&[ready, preparing]).is_empty());
        // the ready one's link must be deleted; the one being prepared finds its place gone
        assert_eq!(book.drop_spares_outside_pool(), vec![ready]);
        assert!(!book.spare_ready(preparing, "s2"));
        assert_eq!(book.spare_count(), 0);
        // a stale id cannot end a newer reservation of the same MAC
        let again = book.reserve_spare("s3".into()).unwrap();
        book.drop_spare(again, "s1");
        assert!(!book.spare_ready(again, "s1"));
        assert!(book.spare_ready(again, "s3"));
        assert_eq!(book.drop_all_spares(), vec![again]);
    }

    #[test]
    fn a_mac_never_serves_two_allocations() {
        let mut book = Book::new([mac(1), mac(2)].into());
        let a = begin(&mut book, "a", "default/web");
        let b = begin(&mut book, "b", "default/web");
        assert_ne!(a.mac, b.mac);
        assert_eq!(a.hostname, "web.default");
        assert_eq!(a.phase, Phase::Pending);
        assert_eq!(book.begin("c".into(), "x"), Err(BackendError::NoFreeMac));
        book.remove("a");
        assert_eq!(book.free_macs(), vec![a.mac]);
        assert_eq!(begin(&mut book, "c", "x").mac, a.mac);
    }

    #[test]
    fn confirm_then_find_by_either_address() {
        let mut book = Book::new([mac(1)].into());
        let a = begin(&mut book, "a", "ns/web");
        // bound but not yet answered: no DELETE can mean it
        book.apply_record("a", Some(record([10, 77, 0, 20], a.mac)));
        assert!(book.find_by_ip(Ipv4Addr::new(10, 77, 0, 20)).is_none());
        book.confirm("a", record([10, 77, 0, 20], a.mac)).unwrap();
        assert!(
            book.confirm("a", record([10, 77, 0, 20], a.mac)).is_none(),
            "confirmed once"
        );
        assert_eq!(
            book.find_by_ip(Ipv4Addr::new(10, 77, 0, 20))
                .unwrap()
                .stored
                .id,
            "a"
        );
        let change = book.apply_record("a", Some(record([10, 77, 0, 30], a.mac)));
        assert!(matches!(
            change,
            RecordChange::IpChanged { old, new, .. }
                if old == Ipv4Addr::new(10, 77, 0, 20) && new == Ipv4Addr::new(10, 77, 0, 30)
        ));
        // renewing the new address, or losing it and getting it back, is not another move
        assert!(matches!(
            book.apply_record("a", Some(record([10, 77, 0, 30], a.mac))),
            RecordChange::Updated(_)
        ));
        assert!(matches!(
            book.apply_record("a", None),
            RecordChange::Updated(_)
        ));
        assert!(matches!(
            book.apply_record("a", Some(record([10, 77, 0, 30], a.mac))),
            RecordChange::Updated(_)
        ));
        // the client knows .20, the lease is now .30: both name the allocation
        assert!(book.find_by_ip(Ipv4Addr::new(10, 77, 0, 20)).is_some());
        assert!(book.find_by_ip(Ipv4Addr::new(10, 77, 0, 30)).is_some());
        let api = to_api(book.get("a").unwrap());
        assert_eq!(api.ip, Some(Ipv4Addr::new(10, 77, 0, 30)));
        assert_eq!(api.state, AllocationState::Bound);
        assert_eq!(
            api.lease.unwrap().subnet_mask,
            Some(Ipv4Addr::new(255, 255, 255, 0))
        );
        book.set_phase("a", Phase::Releasing);
        assert!(book.find_by_ip(Ipv4Addr::new(10, 77, 0, 30)).is_none());
        assert!(book.confirm("a", record([10, 77, 0, 30], a.mac)).is_none());
        assert!(book.snapshot().allocations.is_empty());
        assert!(
            book.free_macs().is_empty(),
            "the MAC stays taken until removed"
        );
    }

    #[test]
    fn delete_prefers_the_allocation_that_was_given_the_address_and_holds_it() {
        let mut book = Book::new([mac(1), mac(2)].into());
        let moved = begin(&mut book, "moved", "a");
        book.confirm("moved", record([10, 77, 0, 20], moved.mac));
        book.apply_record("moved", Some(record([10, 77, 0, 30], moved.mac)));
        let newer = begin(&mut book, "newer", "b");
        book.confirm("newer", record([10, 77, 0, 20], newer.mac));
        let found = book.find_by_ip(Ipv4Addr::new(10, 77, 0, 20)).unwrap();
        assert_eq!(found.stored.id, "newer");
    }

    #[test]
    fn records_for_unknown_allocations_change_nothing() {
        let mut book = Book::new([mac(1)].into());
        assert_eq!(
            book.apply_record("gone", Some(record([10, 77, 0, 20], mac(1)))),
            RecordChange::Unknown
        );
        assert!(book.snapshot().allocations.is_empty());
    }

    #[test]
    fn in_use_macs_stay_in_the_pool() {
        let mut book = Book::new([mac(1), mac(2)].into());
        let a = begin(&mut book, "a", "x");
        assert!(!book.add_macs(&[mac(1)]));
        assert!(book.add_macs(&[mac(3)]));
        assert_eq!(book.remove_macs(&[mac(1), mac(2), mac(9)]), vec![a.mac]);
        assert_eq!(book.pool(), &BTreeSet::from([mac(1), mac(3)]));
        assert_eq!(book.snapshot().available_macs, vec![mac(3)]);
    }

    #[test]
    fn cidrs_of_held_leases() {
        let mut book = Book::new([mac(1), mac(2)].into());
        let a = begin(&mut book, "a", "x");
        begin(&mut book, "b", "y");
        assert!(book.lease_cidrs().is_empty());
        book.confirm("a", record([10, 77, 0, 20], a.mac));
        assert_eq!(book.lease_cidrs(), vec!["10.77.0.0/24"]);
        assert_eq!(prefix_mask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(prefix_mask(32), Ipv4Addr::BROADCAST);
    }
}
