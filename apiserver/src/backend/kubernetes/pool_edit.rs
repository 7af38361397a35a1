//! Pure edits of a MacPool's `spec.macs` for /v1/mac. The caller writes the result with the
//! resourceVersion it read, so an agent allocating a MAC meanwhile makes the write conflict
//! (and the edit is recomputed) instead of removing a MAC that just became used.

use std::collections::BTreeSet;

use dhcpmanager_crds::{MacPool, MacPoolSpec};

use crate::MacAddr;

/// `spec.macs` with `macs` appended (those the pool does not already contain, explicitly or in
/// a range); `None` when nothing is new.
pub fn with_added(pool: &MacPool, macs: &[MacAddr]) -> Option<Vec<String>> {
    let mut known = known_macs(&pool.spec);
    let mut result = pool.spec.macs.clone();
    for mac in macs {
        let text = mac.to_string();
        if known.insert(text.clone()) {
            result.push(text);
        }
    }
    (result.len() != pool.spec.macs.len()).then_some(result)
}

pub struct Removal {
    /// The new `spec.macs`; `None` when it does not change.
    pub macs: Option<Vec<String>>,
    /// Requested MACs left in place: held by an allocation, or part of a generated range (a
    /// range cannot lose a single MAC without being rewritten into pieces).
    pub unprocessed: Vec<MacAddr>,
}

/// `spec.macs` without `macs`, except those in use. MACs the pool never had are ignored: after
/// the call the pool holds none of them, which is what was asked.
pub fn without(pool: &MacPool, macs: &[MacAddr]) -> Removal {
    let held: BTreeSet<String> = pool
        .status
        .iter()
        .flat_map(|status| &status.allocations)
        .map(|allocation| allocation.mac.to_ascii_lowercase())
        .collect();
    let in_ranges: BTreeSet<String> = pool
        .spec
        .ranges
        .iter()
        .filter_map(|range| range.macs().ok())
        .flatten()
        .map(|mac| mac.to_string())
        .collect();
    let mut remove = BTreeSet::new();
    let mut unprocessed = Vec::new();
    for mac in macs {
        let text = mac.to_string();
        if held.contains(&text) || in_ranges.contains(&text) {
            if !unprocessed.contains(mac) {
                unprocessed.push(*mac);
            }
        } else {
            remove.insert(text);
        }
    }
    let remaining: Vec<String> = pool
        .spec
        .macs
        .iter()
        .filter(|mac| !remove.contains(&mac.to_ascii_lowercase()))
        .cloned()
        .collect();
    Removal {
        macs: (remaining.len() != pool.spec.macs.len()).then_some(remaining),
        unprocessed,
    }
}

/// The pool's MACs as canonical text; a pool whose spec does not expand (an invalid range)
/// still counts its explicit MACs.
fn known_macs(spec: &MacPoolSpec) -> BTreeSet<String> {
    match spec.all_macs() {
        Ok(all) => all.iter().map(ToString::to_string).collect(),
        Err(_) => spec.macs.iter().map(|m| m.to_ascii_lowercase()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcpmanager_crds::{MacAllocation, MacPoolStatus, MacRange};

    fn mac(last: u8) -> MacAddr {
        MacAddr([0x02, 0x66, 0, 0, 0, last])
    }

    fn pool(macs: &[u8], held: &[u8]) -> MacPool {
        let mut pool = MacPool::new(
            "default",
            MacPoolSpec {
                macs: macs.iter().map(|n| mac(*n).to_string()).collect(),
                ranges: vec![MacRange {
                    start: "02:66:00:00:01:00".into(),
                    count: 4,
                }],
                interface: None,
            },
        );
        pool.status = Some(MacPoolStatus {
            allocations: held
                .iter()
                .map(|n| MacAllocation {
                    mac: mac(*n).to_string(),
                    address: "shop/web".into(),
                    node: None,
                })
                .collect(),
            ..Default::default()
        });
        pool
    }

    #[test]
    fn adding_appends_only_new_macs() {
        let pool = pool(&[1], &[]);
        let in_range = MacAddr([0x02, 0x66, 0, 0, 1, 2]);
        assert_eq!(with_added(&pool, &[mac(1), in_range]), None);
        assert_eq!(
            with_added(&pool, &[mac(2), mac(1), mac(2)]),
            Some(vec![mac(1).to_string(), mac(2).to_string()])
        );
    }

    #[test]
    fn removing_keeps_held_and_range_macs() {
        let pool = pool(&[1, 2, 3], &[2]);
        let in_range = MacAddr([0x02, 0x66, 0, 0, 1, 2]);
        let removal = without(&pool, &[mac(1), mac(2), in_range, mac(9)]);
        assert_eq!(
            removal.macs,
            Some(vec![mac(2).to_string(), mac(3).to_string()])
        );
        assert_eq!(removal.unprocessed, vec![mac(2), in_range]);
        let nothing = without(&pool, &[mac(9)]);
        assert_eq!(nothing.macs, None);
        assert!(nothing.unprocessed.is_empty());
    }
}
