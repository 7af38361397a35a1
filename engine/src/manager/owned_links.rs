//! The life of the links one instance owns, behind one interface: create (or adopt), claim,
//! retire, restore, sweep, remove all. The lease manager and its drivers ask only this; the
//! rtnetlink calls are [`crate::net::links`], the batched deletion of retired links is [`reaper`].
//!
//! Ownership: every link carries the alias `dhcpmanager:<instance id>:<address key>`
//! ([`links::link_alias`]). Only links with this instance's id are ever adopted, swept or removed
//! here; links of other instances, of older dhcpmanagers without an owner id, or of anybody else
//! are left alone, whatever their group or parent. The one exception is the retired group: a
//! retired link is silent garbage its owner asked to delete, so whoever deletes the group first
//! does its owner's work (its MAC is free sooner, nothing is lost).
//!
//! Claims: a link is *claimed* from its creation until its address stops (a prepared spare, a
//! running client). The orphan sweep never takes a claimed link, so the manager need not tell it
//! which addresses are starting or running.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use super::reaper::Reaper;
use crate::dhcp::MacAddr;
use crate::error::Error;
use crate::instance::InstanceId;
use crate::net::links::{self, AliasOwner, LinkError, Links, OwnedLink};
use crate::net::reply_mark::ReplyMarks;

/// The links of one instance. Cheap to clone; clones share claims and the reaper.
#[derive(Clone)]
pub struct OwnedLinks {
    inner: Arc<Inner>,
}

struct Inner {
    links: Links,
    owner: InstanceId,
    group: u32,
    reaper: Reaper,
    /// Links re-created after they vanished.
    restored: prometheus_client::metrics::counter::Counter,
    /// The connection marks of announced addresses (our nftables table).
    marks: ReplyMarks,
    /// Announcements that failed in part (ARP settings, rules, marks): the lease was kept.
    announce_failures: prometheus_client::metrics::counter::Counter,
    /// Names of the links in use (prepared or running), with how many claims each has.
    claimed: Mutex<HashMap<String, usize>>,
}

/// Keeps the sweep away from one link for as long as it lives.
pub struct Claim {
    inner: Arc<Inner>,
    name: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut claimed = lock(&self.inner.claimed);
        if let Some(count) = claimed.get_mut(&self.name) {
            *count -= 1;
            if *count == 0 {
                claimed.remove(&self.name);
            }
        }
    }
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Claim").field(&self.name).finish()
    }
}

/// A link made (or adopted) for one address.
#[derive(Debug)]
pub struct CreatedLink {
    pub name: String,
    pub ifindex: u32,
    pub claim: Claim,
}

impl OwnedLinks {
    /// The links `owner` keeps in `group`, over `links`, with the reply marks of their
    /// announced addresses in `marks`; spawns the reaper on the current runtime.
    pub fn new(links: Links, owner: InstanceId, group: u32, marks: ReplyMarks) -> Self {
        OwnedLinks {
            inner: Arc::new(Inner {
                reaper: Reaper::spawn(links.clone()),
                links,
                owner,
                group,
                restored: Default::default(),
                marks,
                announce_failures: Default::default(),
                claimed: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn owner(&self) -> &InstanceId {
        &self.inner.owner
    }

    /// The rtnetlink connection underneath (tests and benchmarks look at the links with it).
    pub fn netlink(&self) -> &Links {
        &self.inner.links
    }

    /// Claims `key`'s link, then creates it on `parent` with `mac`, or adopts it when a link of
    /// ours with that name, MAC and parent survived (a restart). A link of that name that belongs
    /// to someone else is refused ([`LinkError::NotOurs`]). A MAC still held by one of our retired
    /// links is waited for first.
    pub async fn create(
        &self,
        key: &str,
        parent: &str,
        mac: MacAddr,
    ) -> Result<CreatedLink, Error> {
        let name = links::link_name(key);
        let claim = self.claim(&name);
        // A retired link keeps its MAC on the parent until the reaper deletes it (rare: a MAC
        // reused within milliseconds); if that fails, the create below says why.
        if let Err(error) = self.inner.reaper.released(mac.octets()).await {
            warn!(%mac, %error, "a retired link may still hold the MAC");
        }
        let ifindex = self
            .inner
            .links
            .create_macvlan(
                parent,
                &name,
                mac.octets(),
                self.inner.group,
                &links::link_alias(&self.inner.owner, key),
            )
            .await?;
        Ok(CreatedLink {
            name,
            ifindex,
            claim,
        })
    }

    /// Marks a link name as in use until the claim is dropped (counted: two claims on one name,
    /// e.g. a prepare racing a start, keep it until both end).
    fn claim(&self, name: &str) -> Claim {
        *lock(&self.inner.claimed)
            .entry(name.to_owned())
            .or_default() += 1;
        Claim {
            inner: self.inner.clone(),
            name: name.to_owned(),
        }
    }

    /// Silences the link and leaves its deletion to the reaper, which deletes every retired link
    /// with one request; a link that cannot be retired is deleted at once.
    pub async fn retire(&self, ifindex: u32, mac: MacAddr) -> Result<(), Error> {
        match self.inner.links.retire(ifindex).await {
            Ok(()) => {
                self.inner.reaper.retired(mac.octets());
                Ok(())
            }
            Err(error) => {
                warn!(ifindex, %error, "retiring the link failed; deleting it now");
                self.inner.links.delete(ifindex).await?;
                Ok(())
            }
        }
    }

    /// Whether the link `ifindex` still exists (it may have been deleted behind our back).
    pub async fn exists(&self, ifindex: u32) -> Result<bool, Error> {
        Ok(self.inner.links.exists(ifindex).await?)
    }

    /// Counts one link re-created after it vanished (`dhcpmanager_links_restored_total`).
    pub fn count_restored(&self) {
        self.inner.restored.inc();
    }

    /// The connection marks of this instance's announced addresses.
    pub fn reply_marks(&self) -> &ReplyMarks {
        &self.inner.marks
    }

    /// Counts one announcement that failed in part (`dhcpmanager_announce_failures_total`).
    pub fn count_announce_failure(&self) {
        self.inner.announce_failures.inc();
    }

    /// The announcements that failed in part so far, for the metrics.
    pub fn announce_failures(&self) -> &prometheus_client::metrics::counter::Counter {
        &self.inner.announce_failures
    }

    /// The links re-created so far, for the metrics.
    pub fn restored(&self) -> &prometheus_client::metrics::counter::Counter {
        &self.inner.restored
    }

    /// Whether a retired link, not deleted yet, holds `mac`: a new link with it would wait.
    pub fn mac_in_retired_link(&self, mac: MacAddr) -> bool {
        self.inner.reaper.holds(mac.octets())
    }

    /// Completes once every link retired before the call has been deleted.
    pub fn settled(&self) -> impl Future<Output = Result<(), LinkError>> + Send + 'static {
        self.inner.reaper.settled()
    }

    /// Adds `ip/prefix` to the link (already there: not an error).
    pub async fn assign_ip(
        &self,
        ifindex: u32,
        ip: std::net::Ipv4Addr,
        prefix: u8,
    ) -> Result<(), Error> {
        Ok(self.inner.links.assign_ip(ifindex, ip, prefix).await?)
    }

    /// Removes `ip/prefix` from the link (already gone: not an error).
    pub async fn remove_ip(
        &self,
        ifindex: u32,
        ip: std::net::Ipv4Addr,
        prefix: u8,
    ) -> Result<(), Error> {
        Ok(self.inner.links.remove_ip(ifindex, ip, prefix).await?)
    }

    /// Our links in our group, with the address key of each.
    async fn ours(&self) -> Result<Vec<(OwnedLink, String)>, Error> {
        let listed = self.inner.links.list_ours(self.inner.group).await?;
        let mut ours = Vec::new();
        let mut unowned = 0;
        for link in listed {
            match links::alias_owner(link.alias.as_deref()) {
                AliasOwner::Instance { owner, key } if owner == self.inner.owner.as_str() => {
                    let key = key.to_owned();
                    ours.push((link, key));
                }
                AliasOwner::Unowned { .. } => unowned += 1,
                AliasOwner::Instance { .. } | AliasOwner::Foreign => {}
            }
        }
        if unowned > 0 {
            info!(
                links = unowned,
                "links of a dhcpmanager without owner ids are left alone (see docs/troubleshooting.md)"
            );
        }
        Ok(ours)
    }

    /// Deletes our links that are not claimed and whose address key `keep` does not want, and
    /// every retired link: the leftovers of a crash or of addresses deleted meanwhile. Returns how
    /// many of our links it removed (retired first, so that one group delete takes them all).
    pub async fn sweep(&self, keep: impl Fn(&str) -> bool) -> Result<usize, Error> {
        let mut removed = 0;
        for (link, key) in self.ours().await? {
            let claimed = lock(&self.inner.claimed).contains_key(&link.name);
            if claimed || keep(&key) {
                continue;
            }
            info!(link = %link.name, %key, "removing orphaned link");
            self.retire_or_delete(&link).await?;
            removed += 1;
        }
        self.inner.links.delete_retired().await?;
        match crate::net::announce::remove_stale_rules(&self.inner.links).await {
            Ok(0) => {}
            Ok(n) => info!(
                rules = n,
                "removed announcement rules of links that are gone"
            ),
            Err(error) => warn!(%error, "removing stale announcement rules failed"),
        }
        Ok(removed)
    }

    /// Deletes every link this instance owns (claimed or not: the caller stopped their
    /// addresses), the retired group, and our nftables table.
    pub async fn remove_all(&self) -> Result<(), Error> {
        for (link, _) in self.ours().await? {
            self.retire_or_delete(&link).await?;
        }
        self.inner.links.delete_retired().await?;
        self.remove_reply_marks();
        Ok(())
    }

    /// Deletes our nftables table if it exists (a failure is logged: no lease depends on it).
    pub fn remove_reply_marks(&self) {
        let marks = &self.inner.marks;
        match marks.remove_table() {
            Ok(true) => info!(table = marks.table(), "removed our nftables table"),
            Ok(false) => {}
            Err(error) => {
                warn!(table = marks.table(), %error, "removing our nftables table failed")
            }
        }
    }

    async fn retire_or_delete(&self, link: &OwnedLink) -> Result<(), Error> {
        if let Err(error) = self.inner.links.retire(link.ifindex).await {
            warn!(link = %link.name, %error, "retiring the link failed; deleting it");
            self.inner.links.delete(link.ifindex).await?;
        }
        Ok(())
    }
}

/// A panic while the claims are locked cannot leave the set inconsistent (single inserts and
/// removes), so a poisoned lock is still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
