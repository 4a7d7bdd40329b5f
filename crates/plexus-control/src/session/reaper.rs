//! Ends sessions and their locks: every server runs one (idempotent compare-and-set writes, so
//! several replicas doing the same work change nothing more).
//!
//! - A session record that vanishes (destroyed, or its TTL lease expired) → the locks it held get
//!   its behavior (release or delete) and lock-delay.
//! - A node liveness key that vanishes (the agent's lease was lost) → the node's sessions are
//!   destroyed, which ends their locks as above.
//! - A check a session names (`NodeChecks`, `ServiceChecks`, on the session's node) turns
//!   critical → the session is destroyed, as Consul invalidates it.
//! - On start and after every re-list, locks whose holder no longer exists are ended too, so a
//!   session that expired while no reaper ran is not missed.

use std::collections::HashSet;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use plexus_api::{CheckStatus, HealthCheck};

use super::{PREFIX, Session, SessionError, Sessions};
use crate::catalog::keys::{self as catalog_keys, unescape};
use crate::remote::LIVE_PREFIX;
use crate::store::{Change, WatchEvent};

/// Runs until `stop` fires.
pub async fn run(sessions: Sessions, stop: CancellationToken) {
    let mut failures = 0u32;
    loop {
        match watch_once(&sessions, &stop).await {
            Ok(()) if stop.is_cancelled() => return,
            Ok(()) => failures = 0,
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %crate::api::ErrorChain(&error), failures, "session reaper failed; re-listing");
                // Bounded backoff before re-listing (not a synchronisation).
                let delay = Duration::from_millis(200 * u64::from(failures.min(10)));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Sweeps orphaned locks, then follows the watches until one ends (re-list) or `stop` fires.
async fn watch_once(sessions: &Sessions, stop: &CancellationToken) -> Result<(), SessionError> {
    let store = sessions.store.clone();
    let (live, revision) = sessions.list().await?;
    // Sessions whose checks are critical now (turned critical while no reaper ran).
    let (checks, _) = store.range(catalog_keys::CHECKS).await?;
    let critical: Vec<(String, String)> = checks.iter().filter_map(critical_check).collect();
    invalidate_for_checks(sessions, &live, &critical).await?;
    let live: HashSet<String> = live.into_iter().map(|s| s.id).collect();
    sessions
        .kv
        .invalidate_locks(|holder| !live.contains(holder))
        .await?;
    let mut session_events = store.watch(PREFIX, revision).await?;
    let mut node_events = store.watch(LIVE_PREFIX, revision).await?;
    let mut check_events = store.watch(catalog_keys::CHECKS, revision).await?;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            event = session_events.recv() => {
                let Some(WatchEvent::Changes(changes)) = event else {
                    return Ok(());
                };
                let ended: HashSet<String> = deleted(&changes, PREFIX).collect();
                if !ended.is_empty() {
                    sessions.kv.invalidate_locks(|holder| ended.contains(holder)).await?;
                }
            }
            event = node_events.recv() => {
                let Some(WatchEvent::Changes(changes)) = event else {
                    return Ok(());
                };
                let lost: HashSet<String> = deleted(&changes, LIVE_PREFIX).map(|n| unescape(&n)).collect();
                if lost.is_empty() {
                    continue;
                }
                let (all, _) = sessions.list().await?;
                for session in all.iter().filter(|s| lost.contains(&s.node)) {
                    tracing::info!(session = %session.id, node = %session.node, "session invalidated: its node's lease was lost");
                    sessions.destroy(&session.id).await?;
                }
            }
            event = check_events.recv() => {
                let Some(WatchEvent::Changes(changes)) = event else {
                    return Ok(());
                };
                let critical: Vec<(String, String)> = changes
                    .iter()
                    .filter_map(|change| match change {
                        Change::Put(kv) => critical_check(kv),
                        Change::Delete { .. } => None,
                    })
                    .collect();
                if critical.is_empty() {
                    continue;
                }
                let (all, _) = sessions.list().await?;
                invalidate_for_checks(sessions, &all, &critical).await?;
            }
        }
    }
}

fn deleted<'a>(changes: &'a [Change], prefix: &'a str) -> impl Iterator<Item = String> + 'a {
    changes.iter().filter_map(move |change| match change {
        Change::Delete { key, .. } => key.strip_prefix(prefix).map(str::to_owned),
        Change::Put(_) => None,
    })
}

/// `(node, check id)` of a stored check that is critical.
fn critical_check(kv: &crate::store::KeyValue) -> Option<(String, String)> {
    let node = catalog_keys::node_of(catalog_keys::CHECKS, &kv.key)?;
    let check: HealthCheck = serde_json::from_slice(&kv.value).ok()?;
    (check.status == CheckStatus::Critical).then_some((node, check.check_id))
}

/// Whether `session` names the check `id` on its node.
fn depends_on(session: &Session, node: &str, id: &str) -> bool {
    session.node == node
        && (session.node_checks.iter().any(|c| c == id)
            || session.service_checks.iter().any(|c| c.id == id))
}

/// Destroys the sessions of `all` that name one of the `critical` checks.
async fn invalidate_for_checks(
    sessions: &Sessions,
    all: &[Session],
    critical: &[(String, String)],
) -> Result<(), SessionError> {
    for session in all {
        if let Some((_, check)) = critical
            .iter()
            .find(|(node, id)| depends_on(session, node, id))
        {
            tracing::info!(session = %session.id, node = %session.node, check = %check, "session invalidated: a check it names is critical");
            sessions.destroy(&session.id).await?;
        }
    }
    Ok(())
}
