//! Deferred, batched deletion of retired links.
//!
//! Deleting one macvlan costs the kernel ~20 ms (unregistering a netdev waits for RCU, and every
//! deletion holds the rtnl lock), while deleting a whole link group in one request costs about
//! the same for 50 links. So a release only retires its link (one quick `RTM_NEWLINK`), and one
//! background task deletes the retired group: [`GATHER`] after the first retirement, so a
//! burst of releases costs one deletion, or at once when [`GATHER_LINKS`] are retired or somebody
//! waits for it (a settle, or a new link that needs a retired link's MAC). Retirements that arrive while a group delete runs
//! are covered by the next one. A retired link keeps its MAC until it is deleted, so the backlog
//! also knows which MACs are still held.
//!
//! Why gather: every group delete holds the rtnl lock for 20-30 ms, and any link operation
//! meanwhile (a new address's macvlan, the next retirement) waits for it. Deleting after every
//! release put that wait on the next request of a client that creates and deletes in turn.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tracing::warn;

use crate::net::links::{LinkError, Links};

/// How long retirements gather before their group delete, when nobody waits for it.
pub const GATHER: Duration = Duration::from_millis(200);
/// Retired links that end the gathering at once. A retired link is still up (setting it down
/// costs as much as deleting it), and macvlan copies every broadcast from the parent to every
/// macvlan that is up: hundreds of retired links made each DHCP exchange 4x slower (engine
/// benchmark, one release every ~3.5 ms, 1 s gathering).
pub const GATHER_LINKS: u64 = 8;
/// Attempts of one group delete before its links are left to the next sweep.
const ATTEMPTS: u32 = 3;
/// Pause between attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// How far group deletes have caught up with retirements: the pure core of the reaper.
///
/// Every retirement takes a ticket (a running count); a group delete that starts after ticket
/// `t` was taken deletes that link, so finishing it covers every ticket up to the count it
/// started at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    retired: u64,
    covered: u64,
    running: Option<u64>,
    /// The outcome of the last finished group delete (an error as text: it goes to every
    /// waiter).
    last_outcome: Result<(), String>,
    /// MACs of retired links not yet covered, with their tickets.
    held_macs: Vec<([u8; 6], u64)>,
    /// The highest ticket somebody waits for: no gathering until it is covered.
    awaited: u64,
}

impl Default for Backlog {
    fn default() -> Self {
        Backlog {
            retired: 0,
            covered: 0,
            running: None,
            last_outcome: Ok(()),
            held_macs: Vec::new(),
            awaited: 0,
        }
    }
}

impl Backlog {
    /// Notes one more retired link, which holds `mac` until it is deleted, and returns its
    /// ticket.
    pub fn retire(&mut self, mac: [u8; 6]) -> u64 {
        self.retired += 1;
        self.held_macs.push((mac, self.retired));
        self.retired
    }

    /// The ticket after which no retired link holds `mac` any more, if one still does.
    pub fn holding(&self, mac: [u8; 6]) -> Option<u64> {
        self.held_macs
            .iter()
            .filter(|(held, _)| *held == mac)
            .map(|(_, ticket)| *ticket)
            .max()
    }

    /// The ticket a settle taken now waits for: every retirement so far.
    pub fn ticket(&self) -> u64 {
        self.retired
    }

    /// Whether retired links wait for a group delete that has not started.
    pub fn has_pending(&self) -> bool {
        self.running.is_none() && self.retired > self.covered
    }

    /// Somebody waits until `ticket` is covered.
    pub fn await_ticket(&mut self, ticket: u64) {
        self.awaited = self.awaited.max(ticket);
    }

    /// Whether a group delete should start now rather than after gathering: somebody waits
    /// for it, or enough links are retired.
    pub fn is_awaited(&self) -> bool {
        self.has_pending()
            && (self.awaited > self.covered || self.retired - self.covered >= GATHER_LINKS)
    }

    /// Starts a group delete covering every retirement so far, unless one runs already or
    /// nothing waits.
    pub fn begin(&mut self) -> Option<u64> {
        if !self.has_pending() {
            return None;
        }
        self.running = Some(self.retired);
        self.running
    }

    /// The running group delete finished with `outcome`.
    pub fn finish(&mut self, outcome: Result<(), String>) {
        if let Some(target) = self.running.take() {
            self.covered = target;
            self.last_outcome = outcome;
            self.held_macs.retain(|(_, ticket)| *ticket > target);
        }
    }

    /// Whether the link of `ticket` has been through a finished group delete. The last group
    /// delete covers every earlier one (it deletes the whole group), so its outcome is theirs.
    pub fn covers(&self, ticket: u64) -> Option<Result<(), String>> {
        (self.covered >= ticket).then(|| self.last_outcome.clone())
    }
}

/// The manager's end of the reaper. Dropping it lets the task delete what is still pending and
/// end.
pub struct Reaper {
    backlog: Arc<watch::Sender<Backlog>>,
}

impl Reaper {
    /// Spawns the reaper task on the current runtime.
    pub fn spawn(links: Links) -> Self {
        let backlog = Arc::new(watch::Sender::new(Backlog::default()));
        let task = ReaperTask {
            links,
            changes: backlog.subscribe(),
            backlog: Arc::downgrade(&backlog),
        };
        tokio::spawn(task.run());
        Reaper { backlog }
    }

    /// Notes that a link holding `mac` was just retired.
    pub fn retired(&self, mac: [u8; 6]) {
        self.backlog.send_modify(|backlog| {
            backlog.retire(mac);
        });
    }

    /// Completes once every link retired before the call has been deleted.
    pub fn settled(&self) -> impl Future<Output = Result<(), LinkError>> + Send + 'static {
        // Bound first: a borrow alive across `settled_through` would deadlock its update.
        let ticket = self.backlog.borrow().ticket();
        self.settled_through(ticket)
    }

    /// Whether a retired link, not deleted yet, holds `mac`.
    pub fn holds(&self, mac: [u8; 6]) -> bool {
        self.backlog.borrow().holding(mac).is_some()
    }

    /// Completes once no retired link holds `mac` (at once when none does).
    pub fn released(
        &self,
        mac: [u8; 6],
    ) -> impl Future<Output = Result<(), LinkError>> + Send + 'static {
        let ticket = self.backlog.borrow().holding(mac).unwrap_or(0);
        self.settled_through(ticket)
    }

    fn settled_through(
        &self,
        ticket: u64,
    ) -> impl Future<Output = Result<(), LinkError>> + Send + 'static {
        let mut changes = self.backlog.subscribe();
        if ticket > 0 {
            self.backlog
                .send_if_modified(|backlog| match backlog.covers(ticket) {
                    Some(_) => false,
                    None => {
                        backlog.await_ticket(ticket);
                        true
                    }
                });
        }
        async move {
            let outcome = changes
                .wait_for(|backlog| backlog.covers(ticket).is_some())
                .await
                .map_err(|_| LinkError::NotReaped("the manager is gone".into()))?
                .covers(ticket)
                .expect("waited for it");
            outcome.map_err(LinkError::NotReaped)
        }
    }
}

struct ReaperTask {
    links: Links,
    changes: watch::Receiver<Backlog>,
    /// Weak: the manager's [`Reaper`] owns the backlog, and its end is the task's.
    backlog: Weak<watch::Sender<Backlog>>,
}

impl ReaperTask {
    async fn run(mut self) {
        // A closed channel still yields a value that is pending (wait_for looks first).
        while self.changes.wait_for(Backlog::has_pending).await.is_ok() {
            // Gather more retirements into this delete, unless somebody waits for it. A closed
            // channel (the manager is gone) ends the wait at once.
            let awaited = self.changes.wait_for(Backlog::is_awaited);
            let _ = tokio::time::timeout(GATHER, awaited).await;
            let Some(backlog) = self.backlog.upgrade() else {
                // The manager is gone with links retired: delete them, nobody waits.
                let _ = self.delete().await;
                return;
            };
            let mut started = None;
            backlog.send_modify(|b| started = b.begin());
            drop(backlog);
            if started.is_none() {
                continue;
            }
            let outcome = self.delete().await.map_err(|error| error.to_string());
            match self.backlog.upgrade() {
                Some(backlog) => backlog.send_modify(|b| b.finish(outcome)),
                None => return,
            }
        }
    }

    async fn delete(&self) -> Result<(), LinkError> {
        let mut attempt = 1;
        loop {
            match self.links.delete_retired().await {
                Ok(()) => return Ok(()),
                Err(error) if attempt < ATTEMPTS => {
                    warn!(%error, attempt, "deleting retired links failed; trying again");
                }
                Err(error) => {
                    warn!(%error, "deleting retired links failed; the next sweep takes them");
                    return Err(error);
                }
            }
            attempt += 1;
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const OTHER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

    #[test]
    fn a_mac_is_held_until_the_delete_covering_its_last_retirement() {
        let mut backlog = Backlog::default();
        assert_eq!(backlog.holding(MAC), None);
        let first = backlog.retire(MAC);
        backlog.retire(OTHER_MAC);
        assert_eq!(backlog.holding(MAC), Some(first));
        backlog.begin();
        // Retired again (another link, same MAC) while the delete runs: held until the next.
        let again = backlog.retire(MAC);
        assert_eq!(backlog.holding(MAC), Some(again));
        backlog.finish(Ok(()));
        assert_eq!(backlog.holding(OTHER_MAC), None);
        assert_eq!(backlog.holding(MAC), Some(again));
        backlog.begin();
        backlog.finish(Ok(()));
        assert_eq!(backlog.holding(MAC), None);
    }

    #[test]
    fn a_waiter_ends_the_gathering_until_its_ticket_is_covered() {
        let mut backlog = Backlog::default();
        let first = backlog.retire(MAC);
        assert!(backlog.has_pending());
        assert!(!backlog.is_awaited(), "nobody waits: gather");
        backlog.await_ticket(first);
        assert!(backlog.is_awaited());
        backlog.begin();
        assert!(!backlog.is_awaited(), "running");
        backlog.finish(Ok(()));
        backlog.retire(OTHER_MAC);
        assert!(!backlog.is_awaited(), "the waiter was served: gather again");
    }

    #[test]
    fn enough_retired_links_end_the_gathering() {
        let mut backlog = Backlog::default();
        for _ in 1..GATHER_LINKS {
            backlog.retire(MAC);
        }
        assert!(!backlog.is_awaited());
        backlog.retire(MAC);
        assert!(backlog.is_awaited());
    }

    #[test]
    fn nothing_retired_nothing_to_delete() {
        let mut backlog = Backlog::default();
        assert!(!backlog.has_pending());
        assert_eq!(backlog.begin(), None);
        assert_eq!(backlog.covers(backlog.ticket()), Some(Ok(())));
    }

    #[test]
    fn one_delete_covers_every_retirement_before_it() {
        let mut backlog = Backlog::default();
        let first = backlog.retire(MAC);
        let second = backlog.retire(MAC);
        assert!(backlog.has_pending());
        assert_eq!(backlog.covers(first), None);
        assert_eq!(backlog.begin(), Some(second));
        backlog.finish(Ok(()));
        assert_eq!(backlog.covers(first), Some(Ok(())));
        assert_eq!(backlog.covers(second), Some(Ok(())));
        assert!(!backlog.has_pending());
    }

    #[test]
    fn retirements_during_a_delete_wait_for_the_next_one() {
        let mut backlog = Backlog::default();
        let before = backlog.retire(MAC);
        assert_eq!(backlog.begin(), Some(before));
        let during = backlog.retire(MAC);
        let also_during = backlog.retire(MAC);
        assert!(!backlog.has_pending(), "one delete at a time");
        assert_eq!(backlog.begin(), None);
        backlog.finish(Ok(()));
        assert_eq!(backlog.covers(before), Some(Ok(())));
        assert_eq!(backlog.covers(during), None);
        // Both late ones in a single next delete.
        assert_eq!(backlog.begin(), Some(also_during));
        backlog.finish(Ok(()));
        assert_eq!(backlog.covers(during), Some(Ok(())));
        assert_eq!(backlog.covers(also_during), Some(Ok(())));
    }

    #[test]
    fn a_failed_delete_is_reported_until_a_later_one_succeeds() {
        let mut backlog = Backlog::default();
        let ticket = backlog.retire(MAC);
        backlog.begin();
        backlog.finish(Err("EBUSY".into()));
        assert_eq!(backlog.covers(ticket), Some(Err("EBUSY".into())));
        backlog.retire(MAC);
        backlog.begin();
        backlog.finish(Ok(()));
        // The later group delete took the earlier link too.
        assert_eq!(backlog.covers(ticket), Some(Ok(())));
    }

    #[test]
    fn finishing_without_a_running_delete_changes_nothing() {
        let mut backlog = Backlog::default();
        let ticket = backlog.retire(MAC);
        backlog.finish(Err("stray".into()));
        assert_eq!(backlog.covers(ticket), None);
        assert!(backlog.has_pending());
    }
}
