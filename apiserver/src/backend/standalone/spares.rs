//! Spare links: macvlans, with their packet sockets, made ahead of time on free MACs, so a POST
//! that takes one sends its DISCOVER at once instead of first creating a link (about half a
//! millisecond of rtnetlink work per POST; docs/benchmarks.md).
//!
//! Each spare is made under the allocation id that the POST taking it will carry, so its link
//! already has the right name and alias: taking it costs no netlink request. The book
//! ([`super::book::Book`]) decides which MACs are set aside; this file holds the links and
//! keeps their number up. A spare sends nothing (its client starts only when a POST takes it),
//! so to the network it is an idle MAC on the parent. After a restart the spares' ids belong to
//! no allocation and the orphan sweep deletes their links.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use dhcpmanager_engine::manager::PreparedLink;
use tokio::sync::{Notify, watch};
use tracing::{debug, warn};

use super::Core;
use super::writer::written;
use crate::MacAddr;

/// The ready spares' links, and a signal for POSTs waiting on a spare being prepared.
pub struct SpareLinks {
    ready: Mutex<HashMap<MacAddr, PreparedLink>>,
    pub changed: Notify,
    /// Preparations under way, so a shutdown can wait for them to end (each one whose
    /// reservation is gone deletes its own link).
    preparing: watch::Sender<usize>,
    /// Set at shutdown: no new spares.
    closed: AtomicBool,
}

impl Default for SpareLinks {
    fn default() -> Self {
        SpareLinks {
            ready: Mutex::default(),
            changed: Notify::new(),
            preparing: watch::channel(0).0,
            closed: AtomicBool::new(false),
        }
    }
}

impl SpareLinks {
    fn ready(&self) -> MutexGuard<'_, HashMap<MacAddr, PreparedLink>> {
        // Single inserts and removes: a poisoned lock is still consistent.
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn interfaces(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .ready()
            .values()
            .map(|link| link.interface().to_owned())
            .collect();
        names.sort();
        names
    }

    /// The link of a ready spare the book just handed to a POST. Call it with the book locked,
    /// as every change of a spare's readiness is made, so the link is always there.
    pub fn take(&self, mac: MacAddr) -> Option<PreparedLink> {
        self.ready().remove(&mac)
    }
}

impl Core {
    /// Sets free MACs aside until the wanted number of spares exists (or no MAC is free) and
    /// prepares their links in the background.
    pub(super) fn fill_spares(self: &Arc<Self>) {
        if !self.manager.needs_link(self.options.assign_interfaces) {
            // A linkless address has no link to make ahead of time: its start is already as
            // quick as a start on a spare.
            return;
        }
        loop {
            let reserved = {
                let mut book = self.shared.book();
                if book.spare_count() >= self.options.spare_links
                    || self.spares.closed.load(Ordering::SeqCst)
                {
                    return;
                }
                let id = uuid::Uuid::new_v4().to_string();
                book.reserve_spare(id.clone()).map(|mac| (id, mac))
            };
            let Some((id, mac)) = reserved else { return };
            self.spares.preparing.send_modify(|n| *n += 1);
            let core = self.clone();
            self.runtime
                .spawn(async move { core.prepare_spare(id, mac).await });
        }
    }

    async fn prepare_spare(self: Arc<Self>, id: String, mac: MacAddr) {
        // The record file too, so the POST that takes the spare confirms with one overwrite.
        let (prepared, reserved) = tokio::join!(
            self.manager.prepare(&id, &self.options.parent, mac),
            written(self.shared.writer.reserve(&id))
        );
        let link = match (prepared, reserved) {
            (Ok(link), Ok(())) => Ok(link),
            (Ok(link), Err(problem)) => {
                self.discard_spare_link(link).await;
                Err(problem)
            }
            (Err(error), _) => {
                drop(self.shared.writer.remove(&id));
                Err(error.to_string())
            }
        };
        let link = match link {
            Ok(link) => link,
            Err(error) => {
                // Not retried here: the next POST or pool change tries again, so a parent that
                // is gone costs one attempt per event, not a loop.
                warn!(%mac, %error, "cannot prepare a spare link; POSTs create their links meanwhile");
                self.shared.book().drop_spare(mac, &id);
                self.spares.changed.notify_waiters();
                self.spares.preparing.send_modify(|n| *n -= 1);
                return;
            }
        };
        let unwanted = {
            let mut book = self.shared.book();
            if book.spare_ready(mac, &id) {
                self.spares.ready().insert(mac, link);
                None
            } else {
                Some(link)
            }
        };
        self.spares.changed.notify_waiters();
        if let Some(link) = unwanted {
            debug!(%mac, "the spare is no longer wanted: deleting its link");
            self.discard_spare_link(link).await;
        }
        self.spares.preparing.send_modify(|n| *n -= 1);
    }

    /// The links of the spares whose `macs` the book just ended. Call it with the book still
    /// locked, so no POST can take one of them meanwhile.
    fn take_ended(&self, macs: Vec<MacAddr>) -> Vec<PreparedLink> {
        macs.into_iter()
            .filter_map(|mac| self.spares.take(mac))
            .collect()
    }

    /// Ends every spare and deletes its link, including those still being prepared; no new
    /// ones are made afterwards.
    pub(super) async fn close_spares(&self) {
        self.spares.closed.store(true, Ordering::SeqCst);
        let links = {
            let mut book = self.shared.book();
            self.take_ended(book.drop_all_spares())
        };
        self.discard_spares(links).await;
        let mut preparing = self.spares.preparing.subscribe();
        let _ = preparing.wait_for(|n| *n == 0).await;
    }

    /// Ends the spares whose MAC left the pool (call it with the book locked, right after the
    /// change) and returns their links for [`Core::discard_spares`].
    pub(super) fn end_spares_outside_pool(&self, book: &mut super::Book) -> Vec<PreparedLink> {
        self.take_ended(book.drop_spares_outside_pool())
    }

    pub(super) async fn discard_spares(&self, links: Vec<PreparedLink>) {
        for link in links {
            self.discard_spare_link(link).await;
        }
    }

    /// Deletes a spare's link and its reserved record file.
    async fn discard_spare_link(&self, link: PreparedLink) {
        drop(self.shared.writer.remove(link.key()));
        let interface = link.interface().to_owned();
        if let Err(error) = self.manager.discard(link).await {
            warn!(%interface, %error, "cannot delete a spare link; the next start sweeps it");
        }
    }
}
