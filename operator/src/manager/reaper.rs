//! Deferred, batched deletion of retired links.
//!
//! Deleting one macvlan costs the kernel ~20 ms (unregistering a netdev waits for RCU, and every
//! deletion holds the rtnl lock), while deleting a whole link group in one request costs about
//! the same for 50 links. So a release only retires its link (one quick `RTM_NEWLINK`), and one
//! background task deletes the retired group whenever links were retired. Retirements that
//! arrive while a group delete runs are covered by the next one.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tracing::warn;

use crate::net::links::{LinkError, Links};

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
}

impl Default for Backlog {
    fn default() -> Self {
        Backlog {
            retired: 0,
            covered: 0,
            running: None,
            last_outcome: Ok(()),
        }
    }
}

impl Backlog {
    /// Notes one more retired link and returns its ticket.
    pub fn retire(&mut self) -> u64 {
        self.retired += 1;
        self.retired
    }

    /// The ticket a settle taken now waits for: every retirement so far.
    pub fn ticket(&self) -> u64 {
        self.retired
    }

    /// Whether retired links wait for a group delete that has not started.
    pub fn has_pending(&self) -> bool {
        self.running.is_none() && self.retired > self.covered
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

    /// Notes that a link was just retired.
    pub fn retired(&self) {
        self.backlog.send_modify(|backlog| {
            backlog.retire();
        });
    }

    /// Completes once every link retired before the call has been deleted.
    pub fn settled(&self) -> impl Future<Output = Result<(), LinkError>> + Send + 'static {
        let ticket = self.backlog.borrow().ticket();
        let mut changes = self.backlog.subscribe();
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
        let first = backlog.retire();
        let second = backlog.retire();
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
        let before = backlog.retire();
        assert_eq!(backlog.begin(), Some(before));
        let during = backlog.retire();
        let also_during = backlog.retire();
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
        let ticket = backlog.retire();
        backlog.begin();
        backlog.finish(Err("EBUSY".into()));
        assert_eq!(backlog.covers(ticket), Some(Err("EBUSY".into())));
        backlog.retire();
        backlog.begin();
        backlog.finish(Ok(()));
        // The later group delete took the earlier link too.
        assert_eq!(backlog.covers(ticket), Some(Ok(())));
    }

    #[test]
    fn finishing_without_a_running_delete_changes_nothing() {
        let mut backlog = Backlog::default();
        let ticket = backlog.retire();
        backlog.finish(Err("stray".into()));
        assert_eq!(backlog.covers(ticket), None);
        assert!(backlog.has_pending());
    }
}
