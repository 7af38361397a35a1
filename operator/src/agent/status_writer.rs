//! Writes `DhcpAddress` status by server-side apply, only when it changed, and keeps trying while
//! the API server is unreachable: the DHCP clients never wait for it, and the latest status of
//! every address is applied as soon as it is back.

use std::collections::HashMap;
use std::time::Duration;

use dhcpmanager_crds::{API_VERSION, DhcpAddress, DhcpAddressStatus};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Field manager of everything the agent applies.
pub const FIELD_MANAGER: &str = "dhcpmanager-agent";

/// namespace and name of a DhcpAddress.
pub type ObjectKey = (String, String);

#[derive(Clone)]
pub struct StatusWriter {
    tx: mpsc::UnboundedSender<(ObjectKey, DhcpAddressStatus)>,
}

impl StatusWriter {
    /// Starts the writer task on the current runtime.
    pub fn spawn(client: Client) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(client, rx));
        StatusWriter { tx }
    }

    /// Queues the desired status of an address; a newer one replaces an unwritten older one.
    pub fn set(&self, key: ObjectKey, status: DhcpAddressStatus) {
        let _ = self.tx.send((key, status));
    }
}

async fn run(client: Client, mut rx: mpsc::UnboundedReceiver<(ObjectKey, DhcpAddressStatus)>) {
    let mut pending: HashMap<ObjectKey, DhcpAddressStatus> = HashMap::new();
    let mut written: HashMap<ObjectKey, DhcpAddressStatus> = HashMap::new();
    let mut backoff = Duration::from_millis(250);
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some((key, status)) => {
                    pending.insert(key, status);
                }
                None => return,
            }
        }
        while let Ok((key, status)) = rx.try_recv() {
            pending.insert(key, status);
        }
        let mut failed = false;
        for (key, status) in std::mem::take(&mut pending) {
            if written.get(&key) == Some(&status) {
                continue;
            }
            match apply(&client, &key, &status).await {
                Ok(()) => {
                    written.insert(key, status);
                }
                Err(kube::Error::Api(error)) if error.code == 404 => {
                    // The object is gone: nothing to report on any more.
                    written.remove(&key);
                }
                Err(error) => {
                    debug!(namespace = %key.0, name = %key.1, %error, "status write failed; will retry");
                    failed = true;
                    pending.insert(key, status);
                }
            }
        }
        if failed {
            warn!(pending = pending.len(), retry_in = ?backoff, "status writes are failing (API server unreachable?)");
            // Wait, but take newer statuses meanwhile so the retry writes the latest.
            let deadline = tokio::time::Instant::now() + backoff;
            while let Ok(Some((key, status))) = tokio::time::timeout_at(deadline, rx.recv()).await {
                pending.insert(key, status);
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        } else {
            backoff = Duration::from_millis(250);
        }
    }
}

async fn apply(
    client: &Client,
    (namespace, name): &ObjectKey,
    status: &DhcpAddressStatus,
) -> Result<(), kube::Error> {
    let api: Api<DhcpAddress> = Api::namespaced(client.clone(), namespace);
    let patch = json!({
        "apiVersion": API_VERSION,
        "kind": "DhcpAddress",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
}
