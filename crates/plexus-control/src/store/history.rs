//! Recent changes of the embedded store, kept in memory so watches can resume from a revision.
//!
//! Revisions are dense (each committed write adds one), so the history is the contiguous run of
//! recorded revisions after `oldest`; a commit recorded out of order waits until the revisions
//! before it are in. Resuming from a revision at or before `oldest` (older than what is kept, or
//! from before a restart) is answered with "compacted": the watcher re-lists.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::Change;
use super::metrics::StoreMetrics;

/// How many revisions are kept for resuming watches, at most (`--history-max-revisions`).
pub const KEPT_REVISIONS: usize = 10_000;
/// How many bytes of keys and values the kept revisions may hold, at most
/// (`--history-max-bytes`): 64 MiB. Whichever bound is reached first evicts the oldest revisions.
pub const KEPT_BYTES: usize = 64 * 1024 * 1024;
/// What one change is counted as beyond its key and value (the record around them).
const CHANGE_OVERHEAD: usize = 64;

/// The bounds of a [`History`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Revisions kept at most (at least 1).
    pub revisions: usize,
    /// Bytes kept at most; the newest revision is dropped too when it alone is larger (a watcher
    /// behind it then re-lists).
    pub bytes: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self {
            revisions: KEPT_REVISIONS,
            bytes: KEPT_BYTES,
        }
    }
}

/// The bytes a revision's changes are counted as.
fn size_of(changes: &[Change]) -> usize {
    changes
        .iter()
        .map(|c| {
            CHANGE_OVERHEAD
                + c.key().len()
                + match c {
                    Change::Put(kv) => kv.value.len(),
                    Change::Delete { .. } => 0,
                }
        })
        .sum()
}

/// The change log.
#[derive(Debug)]
pub struct History {
    inner: Mutex<Inner>,
    /// The newest revision of the contiguous run (watches wait on it).
    contiguous: watch::Sender<u64>,
    /// The newest revision recorded with at least one change.
    written: std::sync::atomic::AtomicU64,
    metrics: Option<Arc<StoreMetrics>>,
}

#[derive(Debug)]
struct Inner {
    /// Revisions up to this one cannot be replayed.
    oldest: u64,
    /// The contiguous run after `oldest`.
    run: VecDeque<(u64, Vec<Change>)>,
    /// Revisions recorded ahead of a gap.
    pending: BTreeMap<u64, Vec<Change>>,
    limits: HistoryLimits,
    /// Bytes held by `run` (see [`size_of`]).
    bytes: usize,
}

/// A resume point that is no longer kept: re-list, then watch from the listed revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// The oldest revision that could be replayed from.
    pub compact_revision: u64,
}

impl History {
    /// An empty history starting after `revision` (the store's revision at open).
    pub fn new(revision: u64, capacity: usize) -> Self {
        Self::with_limits(
            revision,
            HistoryLimits {
                revisions: capacity,
                ..HistoryLimits::default()
            },
            None,
        )
    }

    /// An empty history within `limits`, reporting its size to `metrics`.
    pub fn with_limits(
        revision: u64,
        limits: HistoryLimits,
        metrics: Option<Arc<StoreMetrics>>,
    ) -> Self {
        Self {
            inner: Mutex::new(Inner {
                oldest: revision,
                run: VecDeque::new(),
                pending: BTreeMap::new(),
                limits: HistoryLimits {
                    revisions: limits.revisions.max(1),
                    bytes: limits.bytes,
                },
                bytes: 0,
            }),
            contiguous: watch::channel(revision).0,
            written: std::sync::atomic::AtomicU64::new(revision),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The data stays consistent even if a holder panicked: every mutation is one step.
        plexus_runtime::lock::lock(&self.inner)
    }

    /// Records the changes of one committed revision.
    pub fn record(&self, revision: u64, changes: Vec<Change>) {
        if !changes.is_empty() {
            self.written
                .fetch_max(revision, std::sync::atomic::Ordering::SeqCst);
        }
        let newest = {
            let mut inner = self.lock();
            inner.pending.insert(revision, changes);
            loop {
                let next = inner.run.back().map_or(inner.oldest, |(r, _)| *r) + 1;
                let Some(changes) = inner.pending.remove(&next) else {
                    break;
                };
                inner.bytes += size_of(&changes);
                inner.run.push_back((next, changes));
            }
            let mut evicted = 0_u64;
            while inner.run.len() > inner.limits.revisions || inner.bytes > inner.limits.bytes {
                let Some((dropped, changes)) = inner.run.pop_front() else {
                    break;
                };
                inner.bytes -= size_of(&changes);
                inner.oldest = dropped;
                evicted += 1;
            }
            if let Some(metrics) = &self.metrics {
                metrics.history_evicted.inc_by(evicted);
                metrics.history_revisions.set(inner.run.len() as i64);
                metrics.history_bytes.set(inner.bytes as i64);
            }
            inner.run.back().map_or(inner.oldest, |(r, _)| *r)
        };
        self.contiguous.send_if_modified(|current| {
            let newer = newest > *current;
            if newer {
                *current = newest;
            }
            newer
        });
    }

    /// The changes of keys starting with `prefix` after `after`, and the newest revision they
    /// cover; [`Compacted`] when revisions after `after` are no longer all kept.
    ///
    /// At most about `max_bytes` of changes are returned at once (whole revisions; at least one):
    /// the newest revision returned then says where to go on from.
    pub fn since(
        &self,
        prefix: &str,
        after: u64,
        max_bytes: usize,
    ) -> Result<(Vec<Change>, u64), Compacted> {
        let inner = self.lock();
        if after < inner.oldest {
            return Err(Compacted {
                compact_revision: inner.oldest + 1,
            });
        }
        let mut newest = inner.run.back().map_or(inner.oldest, |(r, _)| *r);
        let mut changes = Vec::new();
        let mut bytes = 0;
        for (revision, revision_changes) in inner.run.iter().filter(|(r, _)| *r > after) {
            if bytes > 0 && bytes >= max_bytes {
                newest = revision - 1;
                break;
            }
            for change in revision_changes
                .iter()
                .filter(|c| c.key().starts_with(prefix))
            {
                bytes += size_of(std::slice::from_ref(change));
                changes.push(change.clone());
            }
        }
        Ok((changes, newest.max(after)))
    }

    /// The newest revision recorded with a change (a revision that changed nothing does not
    /// count): what a watcher of every key must reach to reflect every commit so far.
    pub fn written(&self) -> u64 {
        self.written.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The newest contiguous revision, as a watch.
    pub fn contiguous(&self) -> watch::Receiver<u64> {
        self.contiguous.subscribe()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::KeyValue;
    use proptest::prelude::*;

    fn put(key: &str, revision: u64) -> Change {
        Change::Put(KeyValue {
            key: key.to_owned(),
            value: Vec::new(),
            create_revision: revision,
            mod_revision: revision,
        })
    }

    #[test]
    fn out_of_order_commits_wait_for_the_gap() {
        let history = History::new(4, 100);
        history.record(6, vec![put("a", 6)]);
        assert_eq!(history.since("", 4, usize::MAX).unwrap(), (Vec::new(), 4));
        history.record(5, vec![put("b", 5)]);
        let (changes, newest) = history.since("", 4, usize::MAX).unwrap();
        assert_eq!(newest, 6);
        assert_eq!(changes, vec![put("b", 5), put("a", 6)]);
        assert_eq!(*history.contiguous().borrow(), 6);
        assert_eq!(
            history.since("a", 4, usize::MAX).unwrap().0,
            vec![put("a", 6)]
        );
    }

    proptest! {
        /// For any order in which commits are recorded and any resume point, a watcher gets either
        /// exactly the revisions after its resume point, in order and contiguous, or "compacted".
        #[test]
        fn any_recording_order_yields_contiguous_changes_or_compacted(
            order in proptest::sample::subsequence((1u64..=40).collect::<Vec<_>>(), 40)
                .prop_shuffle(),
            capacity in 1usize..50,
            after in 0u64..45,
        ) {
            let history = History::new(0, capacity);
            for revision in &order {
                history.record(*revision, vec![put("k", *revision)]);
            }
            match history.since("", after, usize::MAX) {
                Ok((changes, newest)) => {
                    let revisions: Vec<u64> = changes.iter().map(Change::revision).collect();
                    let expected: Vec<u64> = (after + 1..=newest).collect();
                    prop_assert_eq!(revisions, expected);
                    prop_assert!(newest <= after.max(40));
                }
                Err(Compacted { compact_revision }) => {
                    prop_assert!(after + 1 < compact_revision);
                }
            }
        }
    }

    #[test]
    fn resuming_before_what_is_kept_is_compacted() {
        let history = History::new(0, 3);
        for r in 1..=5 {
            history.record(r, vec![put("k", r)]);
        }
        assert_eq!(
            history.since("", 1, usize::MAX),
            Err(Compacted {
                compact_revision: 3
            })
        );
        assert_eq!(history.since("", 2, usize::MAX).unwrap().0.len(), 3);
        // After a restart nothing older than the open revision can be replayed.
        let reopened = History::new(5, 3);
        assert!(reopened.since("", 4, usize::MAX).is_err());
        assert_eq!(reopened.since("", 5, usize::MAX).unwrap(), (Vec::new(), 5));
    }

    fn put_sized(key: &str, revision: u64, len: usize) -> Change {
        Change::Put(KeyValue {
            key: key.to_owned(),
            value: vec![0; len],
            create_revision: revision,
            mod_revision: revision,
        })
    }

    /// The KV flood: large values of one key. The history stays within its byte bound
    /// (the count bound alone would keep 10,000 of them), reports its size, and a watcher that
    /// fell behind what was evicted is told to re-list.
    #[test]
    fn large_values_are_bounded_by_bytes_and_counted() {
        let metrics = Arc::new(StoreMetrics::default());
        let limits = HistoryLimits {
            revisions: 10_000,
            bytes: 2_000_000,
        };
        let history = History::with_limits(0, limits, Some(Arc::clone(&metrics)));
        for r in 1..=100 {
            history.record(r, vec![put_sized("kv/same/key", r, 500_000)]);
        }
        let kept = metrics.history_revisions.get();
        let bytes = metrics.history_bytes.get();
        assert_eq!(kept, 3, "{kept} revisions kept");
        assert!(bytes <= 2_000_000 && bytes > 1_000_000, "{bytes}");
        assert_eq!(metrics.history_evicted.get(), 97);
        assert_eq!(
            history.since("", 96, usize::MAX),
            Err(Compacted {
                compact_revision: 98
            })
        );
        assert_eq!(history.since("", 97, usize::MAX).unwrap().0.len(), 3);
        // One revision larger than the whole bound is not kept either.
        history.record(101, vec![put_sized("kv/huge", 101, 3_000_000)]);
        assert_eq!(metrics.history_revisions.get(), 0);
        assert!(history.since("", 100, usize::MAX).is_err());
        assert_eq!(
            history.since("", 101, usize::MAX).unwrap(),
            (Vec::new(), 101)
        );
    }

    #[test]
    fn since_hands_out_bounded_batches_of_whole_revisions() {
        let history = History::new(0, 100);
        for r in 1..=10 {
            history.record(r, vec![put_sized("k", r, 1000), put_sized("k2", r, 1000)]);
        }
        let (changes, newest) = history.since("", 0, 3000).unwrap();
        assert_eq!((changes.len(), newest), (4, 2));
        let (changes, newest) = history.since("", newest, 1).unwrap();
        assert_eq!((changes.len(), newest), (2, 3));
        let (changes, newest) = history.since("", 3, usize::MAX).unwrap();
        assert_eq!((changes.len(), newest), (14, 10));
    }
}
