//! Recent changes of the embedded store, kept in memory so watches can resume from a revision.
//!
//! Revisions are dense (each committed write adds one), so the history is the contiguous run of
//! recorded revisions after `oldest`; a commit recorded out of order waits until the revisions
//! before it are in. Resuming from a revision at or before `oldest` (older than what is kept, or
//! from before a restart) is answered with "compacted": the watcher re-lists.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::watch;

use super::Change;

/// How many revisions are kept for resuming watches.
pub const KEPT_REVISIONS: usize = 10_000;

/// The change log.
#[derive(Debug)]
pub struct History {
    inner: Mutex<Inner>,
    /// The newest revision of the contiguous run (watches wait on it).
    contiguous: watch::Sender<u64>,
    /// The newest revision recorded with at least one change.
    written: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct Inner {
    /// Revisions up to this one cannot be replayed.
    oldest: u64,
    /// The contiguous run after `oldest`.
    run: VecDeque<(u64, Vec<Change>)>,
    /// Revisions recorded ahead of a gap.
    pending: BTreeMap<u64, Vec<Change>>,
    capacity: usize,
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
        Self {
            inner: Mutex::new(Inner {
                oldest: revision,
                run: VecDeque::new(),
                pending: BTreeMap::new(),
                capacity: capacity.max(1),
            }),
            contiguous: watch::channel(revision).0,
            written: std::sync::atomic::AtomicU64::new(revision),
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
                inner.run.push_back((next, changes));
            }
            while inner.run.len() > inner.capacity {
                if let Some((dropped, _)) = inner.run.pop_front() {
                    inner.oldest = dropped;
                }
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
    pub fn since(&self, prefix: &str, after: u64) -> Result<(Vec<Change>, u64), Compacted> {
        let inner = self.lock();
        if after < inner.oldest {
            return Err(Compacted {
                compact_revision: inner.oldest + 1,
            });
        }
        let newest = inner.run.back().map_or(inner.oldest, |(r, _)| *r);
        let changes = inner
            .run
            .iter()
            .filter(|(r, _)| *r > after)
            .flat_map(|(_, changes)| changes.iter())
            .filter(|c| c.key().starts_with(prefix))
            .cloned()
            .collect();
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
        assert_eq!(history.since("", 4).unwrap(), (Vec::new(), 4));
        history.record(5, vec![put("b", 5)]);
        let (changes, newest) = history.since("", 4).unwrap();
        assert_eq!(newest, 6);
        assert_eq!(changes, vec![put("b", 5), put("a", 6)]);
        assert_eq!(*history.contiguous().borrow(), 6);
        assert_eq!(history.since("a", 4).unwrap().0, vec![put("a", 6)]);
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
            match history.since("", after) {
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
            history.since("", 1),
            Err(Compacted {
                compact_revision: 3
            })
        );
        assert_eq!(history.since("", 2).unwrap().0.len(), 3);
        // After a restart nothing older than the open revision can be replayed.
        let reopened = History::new(5, 3);
        assert!(reopened.since("", 4).is_err());
        assert_eq!(reopened.since("", 5).unwrap(), (Vec::new(), 5));
    }
}
