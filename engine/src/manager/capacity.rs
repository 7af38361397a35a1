//! How many addresses one manager takes on, and the seats that count them.
//!
//! Past its capacity a node does not degrade, it falls off a cliff (issue 13): in bridge mode a
//! broadcast sent by one macvlan is copied to every sibling macvlan through the per-CPU backlog
//! (`net.core.netdev_max_backlog`), and past about that many links the copies overflow it and
//! the real frame fails with `ENOBUFS` — new addresses' DISCOVERs and, worse, the existing
//! leases' renewals. So an address beyond capacity is refused up front with
//! [`crate::Error::Capacity`], before it creates a link or sends a frame, and the addresses
//! already held never notice it.
//!
//! Two limits: macvlans per parent (derived from the kernel's backlog and the open-file limit,
//! or configured), and addresses per manager in all (linkless ones share one socket per parent:
//! their limit is what was measured and what the rate limit can renew, see docs/engine.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Macvlans per parent allowed per slot of `net.core.netdev_max_backlog`: one broadcast from a
/// macvlan costs one backlog slot per sibling, and the backlog also carries everything else
/// the CPU receives meanwhile, so only half of it is ours.
const BACKLOG_SHARE: usize = 2;
/// File descriptors kept free for everything that is not a link's socket (rtnetlink, probes,
/// the front end's own connections and files).
const SPARE_DESCRIPTORS: usize = 256;
/// Addresses per manager when nothing else is configured: the most measured to hold without
/// loss on one node (docs/benchmarks.md, scale).
pub const DEFAULT_MAX_ADDRESSES: usize = 10_000;

/// The limits of one manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    /// Addresses on macvlans per parent interface; `None`: derived from the kernel
    /// ([`link_limit`]) when the manager starts.
    pub links_per_parent: Option<usize>,
    /// Addresses in all, on links or not.
    pub addresses: usize,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            links_per_parent: None,
            addresses: DEFAULT_MAX_ADDRESSES,
        }
    }
}

/// What the kernel allows, as read when the manager starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelLimits {
    pub netdev_max_backlog: usize,
    /// The soft `RLIMIT_NOFILE`: every macvlan's client holds one packet socket.
    pub open_files: usize,
}

impl KernelLimits {
    /// Reads `/proc/sys/net/core/netdev_max_backlog` and `/proc/self/limits`; a value that
    /// cannot be read is taken as the kernel's default (1000) and 1024 open files.
    pub fn read() -> Self {
        let backlog = std::fs::read_to_string("/proc/sys/net/core/netdev_max_backlog")
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(1000);
        let open_files = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|text| soft_open_files(&text))
            .unwrap_or(1024);
        KernelLimits {
            netdev_max_backlog: backlog,
            open_files,
        }
    }
}

/// The soft limit of "Max open files" in a `/proc/PID/limits` text (`unlimited`: no limit).
fn soft_open_files(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        return Some(usize::MAX);
    }
    soft.parse().ok()
}

/// Macvlans per parent that this kernel carries without the broadcast cliff.
pub fn link_limit(kernel: KernelLimits) -> usize {
    let by_backlog = kernel.netdev_max_backlog / BACKLOG_SHARE;
    let by_files = kernel.open_files.saturating_sub(SPARE_DESCRIPTORS);
    by_backlog.min(by_files).max(1)
}

/// Why an address was refused: the limit it would have passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Addresses { limit: usize },
    LinksOnParent { parent: String, limit: usize },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Addresses { limit } => write!(
                f,
                "this node already holds {limit} addresses, its configured capacity"
            ),
            Refusal::LinksOnParent { parent, limit } => write!(
                f,
                "{parent} already carries {limit} addresses on macvlans, its capacity (half of \
                 net.core.netdev_max_backlog, or the configured links per parent); addresses \
                 without assignToInterface need no macvlan"
            ),
        }
    }
}

/// The pure count of seats taken.
#[derive(Debug, Default)]
pub struct Ledger {
    addresses: usize,
    links: HashMap<String, usize>,
}

impl Ledger {
    /// Takes a seat for one address (on a macvlan of `parent` when `linked`), or says which
    /// limit it would pass.
    pub fn admit(
        &mut self,
        parent: &str,
        linked: bool,
        max_addresses: usize,
        links_per_parent: usize,
    ) -> Result<(), Refusal> {
        if self.addresses >= max_addresses {
            return Err(Refusal::Addresses {
                limit: max_addresses,
            });
        }
        if linked {
            let on_parent = self.links.get(parent).copied().unwrap_or(0);
            if on_parent >= links_per_parent {
                return Err(Refusal::LinksOnParent {
                    parent: parent.to_owned(),
                    limit: links_per_parent,
                });
            }
            self.links.insert(parent.to_owned(), on_parent + 1);
        }
        self.addresses += 1;
        Ok(())
    }

    /// Gives back a seat taken by [`Ledger::admit`].
    pub fn leave(&mut self, parent: &str, linked: bool) {
        self.addresses = self.addresses.saturating_sub(1);
        if linked && let Some(n) = self.links.get_mut(parent) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.links.remove(parent);
            }
        }
    }

    pub fn addresses(&self) -> usize {
        self.addresses
    }
}

/// The manager's seats: the ledger behind a lock and the limits in force.
#[derive(Debug, Clone)]
pub struct Seats {
    ledger: Arc<Mutex<Ledger>>,
    max_addresses: usize,
    links_per_parent: usize,
}

impl Seats {
    pub fn new(capacity: &Capacity, kernel: KernelLimits) -> Self {
        Seats {
            ledger: Arc::default(),
            max_addresses: capacity.addresses,
            links_per_parent: capacity
                .links_per_parent
                .unwrap_or_else(|| link_limit(kernel)),
        }
    }

    /// The limits in force: (addresses in all, macvlans per parent).
    pub fn limits(&self) -> (usize, usize) {
        (self.max_addresses, self.links_per_parent)
    }

    /// A seat for one address, held until the returned [`Seat`] is dropped.
    pub fn take(&self, parent: &str, linked: bool) -> Result<Seat, Refusal> {
        lock(&self.ledger).admit(parent, linked, self.max_addresses, self.links_per_parent)?;
        Ok(Seat {
            ledger: self.ledger.clone(),
            parent: parent.to_owned(),
            linked,
        })
    }

    /// Addresses seated now (running, starting and prepared).
    pub fn taken(&self) -> usize {
        lock(&self.ledger).addresses()
    }
}

/// One address's place in the capacity; given back when dropped.
#[derive(Debug)]
pub struct Seat {
    ledger: Arc<Mutex<Ledger>>,
    parent: String,
    linked: bool,
}

impl Drop for Seat {
    fn drop(&mut self) {
        lock(&self.ledger).leave(&self.parent, self.linked);
    }
}

fn lock(ledger: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    ledger
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str = "Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max open files            20000                524288               files     \n";

    #[test]
    fn reads_the_soft_open_file_limit() {
        assert_eq!(soft_open_files(LIMITS), Some(20_000));
        assert_eq!(
            soft_open_files(
                "Max open files            unlimited            unlimited            files"
            ),
            Some(usize::MAX)
        );
        assert_eq!(soft_open_files("nothing here"), None);
    }

    #[test]
    fn the_link_limit_is_half_the_backlog_or_the_descriptors_left() {
        let kernel = |backlog, files| KernelLimits {
            netdev_max_backlog: backlog,
            open_files: files,
        };
        assert_eq!(link_limit(kernel(1000, 20_000)), 500);
        assert_eq!(link_limit(kernel(10_000, 20_000)), 5_000);
        assert_eq!(link_limit(kernel(10_000, 1024)), 768);
        assert_eq!(link_limit(kernel(0, 0)), 1);
    }

    #[test]
    fn linked_addresses_count_per_parent_and_all_addresses_in_total() {
        let mut ledger = Ledger::default();
        assert!(ledger.admit("eth0", true, 5, 2).is_ok());
        assert!(ledger.admit("eth0", true, 5, 2).is_ok());
        assert_eq!(
            ledger.admit("eth0", true, 5, 2),
            Err(Refusal::LinksOnParent {
                parent: "eth0".into(),
                limit: 2
            })
        );
        // Another parent, and linkless addresses, are not held back by eth0's links.
        assert!(ledger.admit("eth1", true, 5, 2).is_ok());
        assert!(ledger.admit("eth0", false, 5, 2).is_ok());
        assert!(ledger.admit("eth0", false, 5, 2).is_ok());
        assert_eq!(
            ledger.admit("eth0", false, 5, 2),
            Err(Refusal::Addresses { limit: 5 })
        );
        ledger.leave("eth0", true);
        assert_eq!(ledger.addresses(), 4);
        assert!(ledger.admit("eth0", true, 5, 2).is_ok());
    }

    #[test]
    fn a_dropped_seat_is_given_back() {
        let seats = Seats::new(
            &Capacity {
                links_per_parent: Some(1),
                addresses: 10,
            },
            KernelLimits {
                netdev_max_backlog: 1000,
                open_files: 1024,
            },
        );
        let seat = seats.take("p", true).unwrap();
        let refused = seats.take("p", true).unwrap_err();
        assert!(
            refused.to_string().contains("p already carries 1"),
            "{refused}"
        );
        drop(seat);
        assert_eq!(seats.taken(), 0);
        assert!(seats.take("p", true).is_ok());
    }
}
