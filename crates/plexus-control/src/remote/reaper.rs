//! The liveness reaper: one task per server replica following `liveness/` with a store watch.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use plexus_api::{Catalog, CatalogError, CheckStatus};
use tokio_util::sync::CancellationToken;

use super::{LIVE_PREFIX, OWNED_PREFIX, mark_critical};
use crate::catalog::StoreCatalog;
use crate::catalog::keys::unescape;
use crate::store::{Change, WatchEvent};

/// Follows liveness keys until `stop` fires: a node whose key vanishes is handled by
/// [`expire_node`]; a node whose key returns has its pending deregistrations cancelled.
/// Re-lists after compaction or a broken watch, so nothing is missed.
pub async fn run(catalog: Arc<StoreCatalog>, stop: CancellationToken) {
    let store = Arc::clone(catalog.store());
    let mut pending: BTreeMap<String, CancellationToken> = BTreeMap::new();
    'relist: loop {
        if stop.is_cancelled() {
            return;
        }
        // List: owned nodes without a live key have expired (also after a restart).
        let listed = async {
            let (owned, _) = store.range(OWNED_PREFIX).await?;
            let (live, revision) = store.range(LIVE_PREFIX).await?;
            Ok::<_, crate::StoreError>((owned, live, revision))
        }
        .await;
        let (owned, live, revision) = match listed {
            Ok(listed) => listed,
            Err(error) => {
                tracing::warn!(error = %crate::api::ErrorChain(&error), "liveness list failed; retrying");
                if !sleep(Duration::from_secs(1), &stop).await {
                    return;
                }
                continue;
            }
        };
        let live: BTreeSet<String> = live
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(LIVE_PREFIX).map(unescape))
            .collect();
        for kv in &owned {
            let Some(node) = kv.key.strip_prefix(OWNED_PREFIX).map(unescape) else {
                continue;
            };
            if live.contains(&node) {
                if let Some(token) = pending.remove(&node) {
                    token.cancel();
                }
            } else if !pending.contains_key(&node) {
                pending.insert(node.clone(), spawn_expiry(&catalog, &node, &stop));
            }
        }
        let mut watch = match store.watch(LIVE_PREFIX, revision).await {
            Ok(watch) => watch,
            Err(error) => {
                tracing::warn!(error = %crate::api::ErrorChain(&error), "liveness watch failed; retrying");
                if !sleep(Duration::from_secs(1), &stop).await {
                    return;
                }
                continue;
            }
        };
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                event = watch.recv() => event,
            };
            match event {
                Some(WatchEvent::Changes(changes)) => {
                    for change in changes {
                        let Some(node) = change.key().strip_prefix(LIVE_PREFIX).map(unescape)
                        else {
                            continue;
                        };
                        match change {
                            Change::Put(_) => {
                                if let Some(token) = pending.remove(&node) {
                                    tracing::info!(node, "agent lease back; keeping its services");
                                    token.cancel();
                                }
                            }
                            Change::Delete { .. } => {
                                if !pending.contains_key(&node) {
                                    pending
                                        .insert(node.clone(), spawn_expiry(&catalog, &node, &stop));
                                }
                            }
                        }
                    }
                }
                Some(WatchEvent::Compacted { .. }) | None => continue 'relist,
            }
        }
    }
}

async fn sleep(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

fn spawn_expiry(
    catalog: &Arc<StoreCatalog>,
    node: &str,
    stop: &CancellationToken,
) -> CancellationToken {
    let token = stop.child_token();
    tokio::spawn(expire_node(
        Arc::clone(catalog),
        node.to_owned(),
        token.clone(),
    ));
    token
}

/// A node's agent lease expired: its checks turn critical, and each service with
/// `deregister_critical_service_after` is deregistered once that has passed (unless `cancel`
/// fires first: the agent is back).
pub async fn expire_node(catalog: Arc<StoreCatalog>, node: String, cancel: CancellationToken) {
    tracing::warn!(
        node,
        "agent lease expired; marking the node's checks critical"
    );
    if let Err(error) = mark_critical(&catalog, &node).await {
        tracing::warn!(error = %crate::api::ErrorChain(&error), node, "cannot mark checks critical");
    }
    let checks = match catalog.node_checks(&node).await {
        Ok(checks) => checks.value,
        Err(error) => {
            tracing::warn!(error = %crate::api::ErrorChain(&error), node, "cannot read the node's checks");
            return;
        }
    };
    // The shortest deregister_critical_service_after of each service's checks.
    let mut due: BTreeMap<String, Duration> = BTreeMap::new();
    for check in checks {
        if check.service_id.is_empty() || check.status != CheckStatus::Critical {
            continue;
        }
        if let Some(after) = check.definition.deregister_critical_service_after {
            let entry = due.entry(check.service_id.clone()).or_insert(after.get());
            *entry = (*entry).min(after.get());
        }
    }
    let mut by_time: Vec<(Duration, String)> = due.into_iter().map(|(s, d)| (d, s)).collect();
    by_time.sort();
    let started = tokio::time::Instant::now();
    for (after, service_id) in by_time {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(started + after) => {}
        }
        match catalog.deregister_service(&node, &service_id).await {
            Ok(_) => tracing::info!(
                node,
                service_id,
                ?after,
                "deregistered: agent lease expired"
            ),
            Err(CatalogError::NotFound { .. }) => {}
            Err(error) => {
                tracing::warn!(error = %crate::api::ErrorChain(&error), node, service_id, "deregistration failed")
            }
        }
    }
}
