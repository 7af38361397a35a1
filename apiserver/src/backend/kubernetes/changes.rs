//! Turns watch events on our DhcpAddresses and on MacPools into the backend's change signal,
//! so the etcd mirror follows the cluster without polling it.

use dhcpmanager_crds::{DhcpAddress, MacPool};
use futures::{Stream, StreamExt};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::objects::ours_selector;

pub fn spawn(client: Client, changed: broadcast::Sender<()>) -> JoinHandle<()> {
    let addresses = changes(
        Api::<DhcpAddress>::all(client.clone()),
        watcher::Config::default().labels(&ours_selector()),
    );
    let pools = changes(Api::<MacPool>::all(client), watcher::Config::default());
    tokio::spawn(async move {
        let mut events = futures::stream::select(addresses.boxed(), pools.boxed());
        while let Some(event) = events.next().await {
            match event {
                // Nobody listening is fine: the mirror may be disabled.
                Ok(true) => drop(changed.send(())),
                Ok(false) => {}
                // The watcher retries with backoff by itself; a gap is covered by the
                // mirror's periodic resync.
                Err(error) => tracing::warn!(%error, "watching DhcpAddresses/MacPools"),
            }
        }
    })
}

/// `true` for events that change what the API shows: an object applied or deleted, or a
/// (re)list completed.
fn changes<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<bool, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher(api, config).default_backoff().map(|event| {
        event.map(|event| {
            matches!(
                event,
                watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone
            )
        })
    })
}
