//! Publishes the agent's Kubernetes Events on one task, in the order they were queued, so that a
//! follower never waits for the API server: a slow one delays Events, not status or DHCP.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::Recorder;
use tokio::sync::mpsc;
use tracing::warn;

use super::events::Notice;

#[derive(Clone)]
pub struct EventWriter {
    tx: mpsc::UnboundedSender<(ObjectReference, Notice)>,
}

impl EventWriter {
    /// Starts the writer task on the current runtime.
    pub fn spawn(recorder: Recorder) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(ObjectReference, Notice)>();
        tokio::spawn(async move {
            while let Some((reference, notice)) = rx.recv().await {
                if let Err(error) = recorder.publish(&notice.into_event(), &reference).await {
                    let object = reference.name.as_deref().unwrap_or_default();
                    warn!(%object, %error, "could not publish an Event");
                }
            }
        });
        EventWriter { tx }
    }

    /// Queues `notice` for the object `reference` names.
    pub fn publish(&self, reference: ObjectReference, notice: Notice) {
        let _ = self.tx.send((reference, notice));
    }
}
