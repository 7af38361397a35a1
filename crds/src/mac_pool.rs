//! `MacPool`: the MACs agents may give to macvlans, and who holds which.

use std::collections::BTreeSet;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::{Error, patterns};
use dhcpmanager_dhcp_core::MacAddr;

/// The most MACs one range (and one whole pool) may expand to: far more than any site leases,
/// small enough that expanding a pool in memory is cheap.
pub const MAX_POOL_SIZE: u32 = 65536;

/// A set of MACs for macvlans. Cluster-scoped: pools are shared by all namespaces.
// Each printcolumn(...) repeats `type_ = ...`, which clippy mistakes for a duplicate attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "dhcpmanager.io",
    version = "v1alpha1",
    kind = "MacPool",
    plural = "macpools",
    status = "MacPoolStatus",
    derive = "PartialEq",
    shortname = "macpool",
    shortname = "mp",
    category = "dhcpmanager",
    doc = "MAC addresses that dhcpmanager agents give to the macvlans they lease addresses on",
    printcolumn(name = "Free", type_ = "integer", json_path = ".status.free"),
    printcolumn(name = "Used", type_ = "integer", json_path = ".status.used"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MacPoolSpec {
    /// Explicit MACs, `aa:bb:cc:dd:ee:ff` (lowercase).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = patterns::MAC), length(max = 17)), length(max = 4096))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    pub macs: Vec<String>,

    /// Generated blocks of locally administered MACs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["start".into()]))]
    pub ranges: Vec<MacRange>,

    /// The parent interface for macvlans with MACs from this pool, overriding the agent's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = patterns::INTERFACE), length(max = 15))]
    pub interface: Option<String>,
}

/// `count` consecutive MACs from `start` on, counting in the last three octets.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MacRange {
    /// First MAC of the block. Must be locally administered unicast (second hex digit 2, 6, a
    /// or e) so generated MACs never collide with vendor-assigned hardware.
    #[schemars(regex(pattern = patterns::MAC), length(max = 17))]
    #[x_kube(validation = kube::core::Rule::new(format!("self.matches('{}')", patterns::LOCAL_UNICAST_MAC))
        .message("start must be a locally administered unicast MAC: the second hex digit is 2, 6, a or e"))]
    pub start: String,

    #[schemars(range(min = 1, max = MAX_POOL_SIZE))]
    pub count: u32,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MacPoolStatus {
    #[serde(default)]
    pub free: u32,

    #[serde(default)]
    pub used: u32,

    /// Who holds which MAC: the source of truth. Agents add and remove entries with optimistic
    /// concurrency (resourceVersion), so a MAC is never handed out twice; one entry per MAC.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 65536))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["mac".into()]))]
    pub allocations: Vec<MacAllocation>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MacAllocation {
    #[schemars(regex(pattern = patterns::MAC), length(max = 17))]
    pub mac: String,

    /// The holder, a DhcpAddress as `namespace/name`.
    #[schemars(length(max = 317))]
    pub address: String,

    /// The node whose agent uses the MAC, once one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub node: Option<String>,
}

impl MacRange {
    /// The MACs of this range, after checking what the API server checks and that the range
    /// stays inside one 24-bit block (so the first octet's bits hold for every MAC).
    pub fn macs(&self) -> Result<impl Iterator<Item = MacAddr> + use<>, Error> {
        let start: MacAddr = self.start.parse()?;
        if start.is_multicast() {
            return Err(Error::MulticastRangeStart {
                start: start.to_string(),
            });
        }
        if !start.is_locally_administered() {
            return Err(Error::GloballyAdministeredRangeStart {
                start: start.to_string(),
            });
        }
        if self.count == 0 || self.count > MAX_POOL_SIZE {
            return Err(Error::InvalidRangeCount {
                start: start.to_string(),
                count: self.count,
                max: MAX_POOL_SIZE,
            });
        }
        let first = start.to_u64();
        let last = first + u64::from(self.count) - 1;
        if first >> 24 != last >> 24 {
            return Err(Error::RangeCrossesPrefix {
                start: start.to_string(),
                count: self.count,
            });
        }
        Ok((first..=last).map(MacAddr::from_u64))
    }
}

impl MacPoolSpec {
    /// Every MAC of the pool, explicit and generated, deduplicated, in ascending order.
    pub fn all_macs(&self) -> Result<BTreeSet<MacAddr>, Error> {
        let too_large = || Error::PoolTooLarge {
            max: MAX_POOL_SIZE as usize,
        };
        let mut all = BTreeSet::new();
        for text in &self.macs {
            all.insert(text.parse::<MacAddr>()?);
        }
        if all.len() > MAX_POOL_SIZE as usize {
            return Err(too_large());
        }
        for range in &self.ranges {
            for mac in range.macs()? {
                all.insert(mac);
                if all.len() > MAX_POOL_SIZE as usize {
                    return Err(too_large());
                }
            }
        }
        Ok(all)
    }
}

impl MacPool {
    /// Every MAC of the pool (see [`MacPoolSpec::all_macs`]).
    pub fn all_macs(&self) -> Result<BTreeSet<MacAddr>, Error> {
        self.spec.all_macs()
    }

    /// The MACs of the pool that no allocation in status holds, in ascending order.
    ///
    /// Allocations whose MAC does not parse hold nothing; allocations of MACs no longer in the
    /// spec are simply not in the pool.
    pub fn free_macs(&self) -> Result<BTreeSet<MacAddr>, Error> {
        let mut free = self.all_macs()?;
        for mac in self.allocated_macs() {
            free.remove(&mac);
        }
        Ok(free)
    }

    /// The MACs the status says are held.
    pub fn allocated_macs(&self) -> impl Iterator<Item = MacAddr> + '_ {
        self.status
            .iter()
            .flat_map(|status| &status.allocations)
            .filter_map(|allocation| allocation.mac.parse().ok())
    }

    /// The allocation held by the DhcpAddress `namespace/name`, if any.
    pub fn allocation_of(&self, address: &str) -> Option<&MacAllocation> {
        self.status
            .iter()
            .flat_map(|status| &status.allocations)
            .find(|allocation| allocation.address == address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: &str, count: u32) -> MacRange {
        MacRange {
            start: start.into(),
            count,
        }
    }

    fn pool(macs: &[&str], ranges: Vec<MacRange>, allocated: &[&str]) -> MacPool {
        let mut pool = MacPool::new(
            "pool",
            MacPoolSpec {
                macs: macs.iter().map(|m| m.to_string()).collect(),
                ranges,
                interface: None,
            },
        );
        pool.status = Some(MacPoolStatus {
            allocations: allocated
                .iter()
                .map(|mac| MacAllocation {
                    mac: mac.to_string(),
                    address: format!("ns/{mac}"),
                    node: None,
                })
                .collect(),
            ..Default::default()
        });
        pool
    }

    fn strings(macs: impl IntoIterator<Item = MacAddr>) -> Vec<String> {
        macs.into_iter().map(|m| m.to_string()).collect()
    }

    #[test]
    fn a_range_counts_up_through_the_low_octets() {
        let macs = strings(range("02:00:00:00:00:fe", 3).macs().unwrap());
        assert_eq!(
            macs,
            [
                "02:00:00:00:00:fe",
                "02:00:00:00:00:ff",
                "02:00:00:00:01:00"
            ]
        );
    }

    #[test]
    fn a_range_may_fill_its_24_bit_block_but_not_leave_it() {
        assert_eq!(range("02:00:00:ff:ff:ff", 1).macs().unwrap().count(), 1);
        assert_eq!(
            range("02:00:00:ff:ff:ff", 2).macs().err(),
            Some(Error::RangeCrossesPrefix {
                start: "02:00:00:ff:ff:ff".into(),
                count: 2
            })
        );
    }

    #[test]
    fn a_range_must_start_at_a_local_unicast_mac() {
        assert_eq!(
            range("00:11:22:00:00:00", 1).macs().err(),
            Some(Error::GloballyAdministeredRangeStart {
                start: "00:11:22:00:00:00".into()
            })
        );
        assert_eq!(
            range("03:00:00:00:00:00", 1).macs().err(),
            Some(Error::MulticastRangeStart {
                start: "03:00:00:00:00:00".into()
            })
        );
        assert!(matches!(
            range("nonsense", 1).macs().err(),
            Some(Error::InvalidMac(error)) if error.input == "nonsense"
        ));
    }

    #[test]
    fn a_range_count_is_between_one_and_the_cap() {
        assert!(matches!(
            range("02:00:00:00:00:00", 0).macs(),
            Err(Error::InvalidRangeCount { .. })
        ));
        assert_eq!(
            range("02:00:00:00:00:00", MAX_POOL_SIZE)
                .macs()
                .unwrap()
                .count(),
            65536
        );
        assert!(matches!(
            range("02:00:00:00:00:00", MAX_POOL_SIZE + 1).macs(),
            Err(Error::InvalidRangeCount { .. })
        ));
    }

    #[test]
    fn all_macs_merges_lists_and_ranges_sorted_without_duplicates() {
        let pool = pool(
            &[
                "02:00:00:00:00:05",
                "0A:00:00:00:00:00",
                "02:00:00:00:00:01",
            ],
            vec![range("02:00:00:00:00:00", 3)],
            &[],
        );
        assert_eq!(
            strings(pool.all_macs().unwrap()),
            [
                "02:00:00:00:00:00",
                "02:00:00:00:00:01",
                "02:00:00:00:00:02",
                "02:00:00:00:00:05",
                "0a:00:00:00:00:00"
            ]
        );
    }

    #[test]
    fn explicit_macs_are_not_held_to_the_range_rules() {
        // A site may hand us vendor MACs it reserved; only generated ones must be local.
        let pool = pool(&["00:11:22:33:44:55"], vec![], &[]);
        assert_eq!(strings(pool.all_macs().unwrap()), ["00:11:22:33:44:55"]);
    }

    #[test]
    fn all_macs_is_capped() {
        let at_cap = pool(&[], vec![range("02:00:00:00:00:00", MAX_POOL_SIZE)], &[]);
        assert_eq!(at_cap.all_macs().unwrap().len(), 65536);
        let overlapping = pool(
            &[],
            vec![
                range("02:00:00:00:00:00", MAX_POOL_SIZE),
                range("02:00:00:00:00:00", 1),
            ],
            &[],
        );
        assert_eq!(overlapping.all_macs().unwrap().len(), 65536);
        let over = pool(
            &["02:00:00:ff:ff:ff"],
            vec![range("02:00:00:00:00:00", MAX_POOL_SIZE)],
            &[],
        );
        assert_eq!(over.all_macs(), Err(Error::PoolTooLarge { max: 65536 }));
    }

    #[test]
    fn a_bad_explicit_mac_fails_the_expansion() {
        let pool = pool(&["02:00:00:00:00"], vec![], &[]);
        assert!(matches!(
            pool.all_macs(),
            Err(Error::InvalidMac(error)) if error.input == "02:00:00:00:00"
        ));
    }

    #[test]
    fn free_macs_are_those_without_an_allocation() {
        let pool = pool(
            &[],
            vec![range("02:00:00:00:00:00", 4)],
            &[
                "02:00:00:00:00:01",
                "02:00:00:00:00:03",
                "02:00:00:00:09:99",
                "garbage",
            ],
        );
        assert_eq!(
            strings(pool.free_macs().unwrap()),
            ["02:00:00:00:00:00", "02:00:00:00:00:02"]
        );
        assert_eq!(
            pool.allocation_of("ns/02:00:00:00:00:03")
                .map(|a| a.mac.as_str()),
            Some("02:00:00:00:00:03")
        );
        assert_eq!(pool.allocation_of("ns/other"), None);
    }

    #[test]
    fn a_pool_without_status_is_all_free() {
        let mut pool = pool(&["02:00:00:00:00:07"], vec![], &[]);
        pool.status = None;
        assert_eq!(strings(pool.free_macs().unwrap()), ["02:00:00:00:00:07"]);
    }
}
