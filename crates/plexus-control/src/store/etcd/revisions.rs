//! The store's revision: one watch on the namespace moves it forward ([`follow`]), and reads of
//! it are batched ([`read_revisions`]): callers arriving while one read is in flight share the
//! next one.

use std::sync::Weak;

use tokio::sync::{oneshot, watch as tokio_watch};

use super::error::{Cause, EtcdError};
use super::watch;
use super::{EtcdStore, Inner, WRITTEN_KEY, backend, unrev};
use crate::store::{StoreError, WATCH_BUFFER, WatchEvent};

/// One read of the store's revision and of the newest Plexus write in it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Revisions {
    pub(super) current: u64,
    pub(super) written: u64,
}

/// Moves `sender` to `revision` when that is newer.
pub(super) fn advance(sender: &tokio_watch::Sender<u64>, revision: u64) {
    sender.send_if_modified(|current| {
        let newer = revision > *current;
        if newer {
            *current = revision;
        }
        newer
    });
}

impl EtcdStore {
    /// The store's revision and the newest Plexus write in it, from a read shared with the
    /// callers that asked while another was in flight (see [`read_revisions`]).
    pub(super) async fn revisions(&self) -> Result<Revisions, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .revision_waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(tx);
        self.inner.revision_asked.notify_one();
        match rx.await {
            Ok(Ok(revisions)) => Ok(revisions),
            Ok(Err(source)) => Err(backend(EtcdError::Request {
                op: "range",
                source,
            })),
            Err(_) => Err(backend(EtcdError::Request {
                op: "range",
                source: Cause::of(&etcd_client::Error::Internal("the store is closing".into())),
            })),
        }
    }
}

/// Answers `current_revision` callers in batches: each batch's read starts after all its callers
/// asked, so it is linearizable for every one of them.
pub(super) async fn read_revisions(inner: Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let stop = strong.stop.clone();
        tokio::select! {
            _ = stop.cancelled() => return,
            () = strong.revision_asked.notified() => {}
        }
        let waiters = std::mem::take(
            &mut *strong
                .revision_waiters
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if waiters.is_empty() {
            continue;
        }
        let (at, client) = strong.client().await;
        let read = match client {
            Ok(client) => {
                client
                    .kv_client()
                    .get(strong.full_key(WRITTEN_KEY), None)
                    .await
            }
            Err(error) => Err(error),
        };
        if read.as_ref().is_err_and(|e| Cause::of(e).is_transient()) {
            strong.failed(at);
        }
        let answer = match read {
            Ok(response) => {
                let current = response.header().map_or(0, |h| unrev(h.revision()));
                let written = response
                    .kvs()
                    .first()
                    .map_or(0, |kv| unrev(kv.mod_revision()));
                advance(&strong.revision, current);
                Ok(Revisions { current, written })
            }
            Err(error) => Err(Cause::of(&error)),
        };
        for waiter in waiters {
            let _ = waiter.send(answer.clone());
        }
    }
}

/// Follows the namespace with one watch and moves the revision watch forward (a write through
/// any replica wakes blocking queries on all of them). After a compaction it re-reads the current
/// revision and carries on. Ends when the store is dropped.
pub(super) async fn follow(inner: Weak<Inner>, mut seen: u64) {
    loop {
        let (tx, mut rx) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        tokio::spawn(watch::run(inner.clone(), String::new(), seen, tx));
        while let Some(event) = rx.recv().await {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            match event {
                WatchEvent::Changes(changes) => {
                    if let Some(last) = changes.last().map(crate::store::Change::revision) {
                        seen = seen.max(last);
                        advance(&strong.revision, seen);
                    }
                }
                WatchEvent::Compacted { compact_revision } => {
                    tracing::info!(
                        from = seen + 1,
                        compact_revision,
                        "etcd watch revision compacted; re-reading"
                    );
                    // The events in between are gone: take the current revision, which wakes
                    // every blocked reader to re-read (the re-list).
                    let key = strong.options.prefix.as_bytes().to_vec();
                    let (at, client) = strong.client().await;
                    let read = match client {
                        Ok(client) => client.kv_client().get(key, None).await,
                        Err(error) => Err(error),
                    };
                    if read.is_err() {
                        strong.failed(at);
                    }
                    match read {
                        Ok(response) => {
                            let now = response.header().map_or(0, |h| unrev(h.revision()));
                            seen = seen.max(now).max(compact_revision);
                            advance(&strong.revision, seen);
                        }
                        Err(error) => {
                            tracing::warn!(error = %Cause::of(&error), "etcd re-read after compaction failed");
                            seen = seen.max(compact_revision);
                        }
                    }
                }
            }
        }
        // The watch ended: the store is gone (or stopping).
        match inner.upgrade() {
            Some(strong) if !strong.stop.is_cancelled() => {}
            _ => return,
        }
    }
}
