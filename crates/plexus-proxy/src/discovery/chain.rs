//! The compiled discovery chain of one HTTP upstream, followed with a blocking query on
//! `/v1/discovery-chain/<upstream>`: a config entry change reaches the sidecar as soon as the
//! control plane commits it.

use std::sync::Arc;

use plexus_api::Indexed;
use plexus_api::client::{Client, ClientError};
use plexus_api::config_entry::chain::DiscoveryChain;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::watch::follow;
use crate::state::StateDir;
use plexus_runtime::ErrorChain;

/// Follows the chain of `service` until `stop` fires, publishing each new one on `tx`. While the
/// control plane cannot be reached the last chain stays in force.
pub(crate) async fn watch_chain(
    client: Client,
    service: String,
    tx: watch::Sender<Option<Arc<Indexed<DiscoveryChain>>>>,
    state: Option<Arc<StateDir>>,
    stop: CancellationToken,
) {
    let file = format!("chain/{service}");
    let fetch = |query| client.discovery_chain(&service, query);
    // Subscribers hear of a new chain, and of a newer index with the same chain (a config write
    // that did not touch this upstream, or one already seen), so that the policy's revision
    // always says which config index is in force.
    let on_update = |update: Indexed<DiscoveryChain>| {
        tx.send_if_modified(|current| {
            let (changed, advanced) = match current.as_deref() {
                None => (true, true),
                Some(current) => (current.value != update.value, update.index > current.index),
            };
            if changed {
                info!(upstream = %service, revision = update.index, routes = update.value.routes.len(), "discovery chain changed");
                if let Some(state) = &state {
                    state.save(&file, &update);
                }
            }
            if changed || advanced {
                *current = Some(Arc::new(update));
            }
            changed || advanced
        });
    };
    let on_error = |error: &ClientError| {
        warn!(error = %ErrorChain(error), upstream = %service, "discovery chain watch failed; keeping the last chain");
        // Never answered since start: the chain saved before a restart, if any.
        if tx.borrow().is_some() {
            return;
        }
        if let Some((saved, at)) = state
            .as_deref()
            .and_then(|s| s.load::<Indexed<DiscoveryChain>>(&file))
        {
            warn!(
                upstream = %service,
                saved_at = %crate::staleness::rfc3339(at),
                "no control-plane server answers; using the last good discovery chain (stale)"
            );
            tx.send_replace(Some(Arc::new(saved)));
        }
    };
    follow(0, &stop, fetch, on_update, on_error).await;
}
