//! Acknowledging applied configuration: after each applied registration the proxy tells the
//! control plane which revision it runs, so `plexus operator` can show stale proxies. Best effort:
//! a failed report is logged and the next applied revision reports again.

use plexus_api::client::Client;
use tokio_util::task::TaskTracker;

/// Reports `revision` for `sidecar_id` in the background.
pub(crate) fn report(tasks: &TaskTracker, control: &Client, sidecar_id: &str, revision: u64) {
    let (control, sidecar_id) = (control.clone(), sidecar_id.to_owned());
    tasks.spawn(async move {
        if let Err(error) = control.proxy_ack(&sidecar_id, revision).await {
            tracing::debug!(%error, sidecar_id, revision, "cannot acknowledge the applied revision");
        }
    });
}
