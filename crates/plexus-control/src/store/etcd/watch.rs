//! Watches over etcd's gRPC watch streams: one stream per [`Store::watch`](crate::store::Store::watch),
//! resumed from the last delivered revision when it breaks (the balanced channel picks a member
//! that answers), ended with [`WatchEvent::Compacted`] when etcd no longer has the history.
//!
//! Responses without events (etcd's progress notifications) are skipped: etcd before
//! 3.4.25/3.5.8 could send one ahead of events it had not sent yet, so nothing here relies on
//! them (readers use [`Store::written_revision`](crate::store::Store::written_revision) instead).

use std::sync::Weak;
use std::time::Duration;

use etcd_client::WatchOptions;
use plexus_runtime::Backoff;
use tokio::sync::mpsc;

use super::{Inner, rev, unrev};
use crate::store::{Change, KeyValue, WatchEvent};

/// etcd's `mvccpb.Event.EventType` for a delete.
const DELETE: i32 = 1;
/// Largest watch response accepted (etcd batches up to 1,000 revisions in one).
const MAX_WATCH_MESSAGE: usize = 256 * 1024 * 1024;

/// How a stream ended.
enum End {
    /// The start revision is compacted: the oldest available one.
    Compacted(u64),
    /// The stream broke or was cancelled: resume.
    Broken,
    /// Nobody listens any more, or the store is gone.
    Stop,
}

/// One watch for a caller: streams the namespace's `prefix` from `cursor + 1`, reconnecting from
/// the last delivered revision when the stream breaks, until the receiver is dropped, the store
/// is dropped or the history is compacted.
pub(super) async fn run(
    inner: Weak<Inner>,
    prefix: String,
    mut cursor: u64,
    tx: mpsc::Sender<WatchEvent>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let stop = strong.stop.clone();
        let end = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tx.closed() => return,
            end = stream(&strong, &prefix, &mut cursor, &tx) => end,
        };
        drop(strong);
        match end {
            End::Compacted(compact_revision) => {
                let _ = tx.send(WatchEvent::Compacted { compact_revision }).await;
                return;
            }
            End::Stop => return,
            End::Broken => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tx.closed() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// One stream: creates the watch, forwards events until it ends.
async fn stream(
    inner: &Inner,
    prefix: &str,
    cursor: &mut u64,
    tx: &mpsc::Sender<WatchEvent>,
) -> End {
    let key = format!("{}{prefix}", inner.options.prefix).into_bytes();
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(rev(*cursor + 1));
    let (at, client) = inner.client().await;
    let started = match client {
        Ok(client) => {
            client
                .watch_client()
                .max_decoding_message_size(MAX_WATCH_MESSAGE)
                .watch(key, Some(options))
                .await
        }
        Err(error) => Err(error),
    };
    let watch = match started {
        Ok(watch) => watch,
        Err(error) => {
            tracing::debug!(error = %super::Cause::of(&error), prefix, "etcd watch cannot start; retrying");
            inner.failed(at);
            return End::Broken;
        }
    };
    // The request half stays alive with the stream (dropping it would end the watch).
    let (_requests, mut responses) = watch.split();
    loop {
        let response = match responses.message().await {
            Ok(Some(response)) => response,
            Ok(None) => {
                tracing::debug!(
                    prefix,
                    cursor = *cursor,
                    "etcd watch stream ended; resuming"
                );
                return End::Broken;
            }
            Err(error) => {
                tracing::debug!(error = %super::Cause::of(&error), prefix, cursor = *cursor, "etcd watch broke; resuming");
                inner.failed(at);
                return End::Broken;
            }
        };
        let response = response.0;
        if response.compact_revision > 0 {
            return End::Compacted(unrev(response.compact_revision));
        }
        if response.canceled {
            tracing::warn!(reason = %response.cancel_reason, prefix, "etcd cancelled the watch; resuming");
            return End::Broken;
        }
        if response.created {
            // The header names the revision at creation; events before it may still follow.
            continue;
        }
        if response.events.is_empty() {
            continue;
        }
        let mut changes = Vec::with_capacity(response.events.len());
        for event in response.events {
            let Some(kv) = event.kv else {
                continue;
            };
            let revision = unrev(kv.mod_revision);
            if revision <= *cursor {
                continue;
            }
            let Some(key) = inner.strip(&kv.key) else {
                tracing::warn!(key = %String::from_utf8_lossy(&kv.key), "etcd watch event outside the namespace; ignored");
                continue;
            };
            changes.push(if event.r#type == DELETE {
                Change::Delete { key, revision }
            } else {
                Change::Put(KeyValue {
                    key,
                    value: kv.value,
                    create_revision: unrev(kv.create_revision),
                    mod_revision: revision,
                })
            });
        }
        if let Some(last) = changes.last().map(Change::revision) {
            if tx.send(WatchEvent::Changes(changes)).await.is_err() {
                return End::Stop;
            }
            *cursor = last;
        }
    }
}
