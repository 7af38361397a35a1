//! What a (re)start does with each allocation found in the store. Pure.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::store::{Phase, StoredAllocation};
use crate::MacAddr;

#[derive(Debug, Default, PartialEq)]
pub struct RecoveryPlan {
    /// Handed out before the restart: keep renewing them (INIT-REBOOT while the lease is valid).
    pub resume: Vec<StoredAllocation>,
    /// Never handed out (a crash mid-POST) or being released (a crash mid-DELETE), with a lease
    /// the server may still hold: send DHCPRELEASE, then forget them.
    pub release: Vec<StoredAllocation>,
    /// Cut off by a crash during their POST's DHCP exchange, before any lease was recorded: the
    /// server may hold one for the MAC that nothing on disk names. Ask for it again (the server
    /// gives a client back the lease it holds), release it, then forget them.
    pub reclaim: Vec<StoredAllocation>,
    /// Forget without telling the server, with the reason.
    pub forget: Vec<(StoredAllocation, String)>,
}

pub fn plan(loaded: Vec<StoredAllocation>, now: DateTime<Utc>) -> RecoveryPlan {
    let mut plan = RecoveryPlan::default();
    let mut resumed_macs: BTreeMap<MacAddr, String> = BTreeMap::new();
    let (confirmed, unfinished): (Vec<_>, Vec<_>) = loaded
        .into_iter()
        .partition(|a| a.phase == Phase::Confirmed);
    for allocation in confirmed {
        match resumed_macs.get(&allocation.mac) {
            // Two allocations cannot share a MAC (same client id: the server sees one client);
            // the older one keeps it.
            Some(holder) => {
                let reason = format!("its MAC {} is already used by {holder}", allocation.mac);
                plan.forget.push((allocation, reason));
            }
            None => {
                resumed_macs.insert(allocation.mac, allocation.id.clone());
                plan.resume.push(allocation);
            }
        }
    }
    for allocation in unfinished {
        let valid_lease = allocation
            .record
            .as_ref()
            .is_some_and(|r| r.is_valid_at(now) && r.mac == allocation.mac);
        if let Some(holder) = resumed_macs.get(&allocation.mac) {
            // Releasing would end the lease of the allocation that holds this MAC now.
            let reason = format!("its MAC {} is used by {holder}", allocation.mac);
            plan.forget.push((allocation, reason));
        } else if valid_lease {
            plan.release.push(allocation);
        } else if allocation.phase == Phase::Pending {
            // One client per MAC: a second reclaim of it would fight the first.
            if plan.reclaim.iter().any(|r| r.mac == allocation.mac) {
                let reason = format!("its MAC {} is reclaimed already", allocation.mac);
                plan.forget.push((allocation, reason));
            } else {
                plan.reclaim.push(allocation);
            }
        } else {
            let reason = format!("{:?} without a valid lease", allocation.phase);
            plan.forget.push((allocation, reason));
        }
    }
    plan.resume.sort_by_key(|a| a.created_at);
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use dhcpmanager_engine::dhcp::LeaseRecord;
    use std::net::Ipv4Addr;

    fn allocation(id: &str, mac: u8, phase: Phase, expires_in: Option<i64>) -> StoredAllocation {
        let now = Utc::now();
        let mac = MacAddr([2, 0x77, 0, 0, 0, mac]);
        StoredAllocation {
            id: id.into(),
            service: "ns/s".into(),
            hostname: "s.ns".into(),
            mac,
            phase,
            handed_out_ip: None,
            record: expires_in.map(|secs| LeaseRecord {
                ip: Ipv4Addr::new(10, 77, 0, 20),
                prefix_len: 24,
                routers: vec![],
                dns: vec![],
                domain_name: None,
                mac,
                client_id: "ff".into(),
                hostname: None,
                server_id: Ipv4Addr::new(10, 77, 0, 1),
                server_mac: None,
                lease_seconds: 60,
                obtained_at: now - TimeDelta::seconds(10),
                renew_at: now,
                rebind_at: now,
                expires_at: now + TimeDelta::seconds(secs),
            }),
            created_at: now,
            answered: true,
        }
    }

    fn ids(list: &[StoredAllocation]) -> Vec<&str> {
        list.iter().map(|a| a.id.as_str()).collect()
    }

    #[test]
    fn confirmed_resume_unfinished_with_a_lease_are_released_pending_reclaimed_the_rest_forgotten()
    {
        let plan = plan(
            vec![
                allocation("confirmed", 1, Phase::Confirmed, Some(30)),
                allocation("confirmed-expired", 2, Phase::Confirmed, Some(-30)),
                allocation("pending-bound", 3, Phase::Pending, Some(30)),
                allocation("pending-unbound", 4, Phase::Pending, None),
                allocation("releasing", 5, Phase::Releasing, Some(30)),
                allocation("pending-expired", 6, Phase::Pending, Some(-1)),
                allocation("releasing-expired", 7, Phase::Releasing, Some(-1)),
            ],
            Utc::now(),
        );
        assert_eq!(ids(&plan.resume), ["confirmed", "confirmed-expired"]);
        assert_eq!(ids(&plan.release), ["pending-bound", "releasing"]);
        assert_eq!(ids(&plan.reclaim), ["pending-unbound", "pending-expired"]);
        let forgotten: Vec<&str> = plan.forget.iter().map(|(a, _)| a.id.as_str()).collect();
        assert_eq!(forgotten, ["releasing-expired"]);
    }

    #[test]
    fn a_mac_claimed_twice_is_kept_by_one_allocation_only() {
        let plan = plan(
            vec![
                allocation("first", 1, Phase::Confirmed, Some(30)),
                allocation("second", 1, Phase::Confirmed, Some(30)),
                allocation("pending", 1, Phase::Pending, Some(30)),
                allocation("pending-unbound", 1, Phase::Pending, None),
                allocation("cut-off", 2, Phase::Pending, None),
                allocation("cut-off-again", 2, Phase::Pending, None),
            ],
            Utc::now(),
        );
        assert_eq!(ids(&plan.resume), ["first"]);
        assert!(plan.release.is_empty(), "a release would end first's lease");
        assert_eq!(
            ids(&plan.reclaim),
            ["cut-off"],
            "a reclaim of MAC 1 would too"
        );
        assert_eq!(plan.forget.len(), 4);
        assert!(plan.forget[0].1.contains("first"), "{:?}", plan.forget);
    }
}
