//! Acknowledging applied configuration: after each applied registration the proxy tells the
//! control plane which revision it runs, so `plexus operator` can show stale proxies, and where its
//! admin listener is, so the control plane can read its metrics for the UI. Best effort: a failed
//! report is logged and the next applied revision reports again.

use plexus_api::client::Client;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Reports `revision` for `sidecar_id` in the background (given up when `stop` fires).
pub(crate) fn report(
    tasks: &TaskTracker,
    stop: &CancellationToken,
    control: &Client,
    sidecar_id: &str,
    revision: u64,
    admin: std::net::SocketAddr,
) {
    let (control, sidecar_id, stop) = (control.clone(), sidecar_id.to_owned(), stop.clone());
    tasks.spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            sent = control.proxy_ack_with_admin(&sidecar_id, revision, admin) => {
                if let Err(error) = sent {
                    tracing::debug!(%error, sidecar_id, revision, "cannot acknowledge the applied revision");
                }
            }
        }
    });
}
