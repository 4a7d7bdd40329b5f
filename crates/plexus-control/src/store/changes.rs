//! Which keys changed when: the wake-up source of blocking queries outside the catalog (KV,
//! config entries, intentions, CA roots).
//!
//! A [`Changes`] follows one root of the store (`kv/`, `config/`, `connect/...`) with a store
//! watch and keeps, for every key under it, the revision of its last put or delete. A blocking
//! query subscribes to the key or prefix its answer is made of and gets a `watch::Receiver` whose
//! value is the last revision at which that answer may have changed: it wakes for writes to its
//! own keys only, never for the rest of the store (catalog registrations, other roots, or on a
//! shared etcd, other users' keys). Nothing is read from the store per query.
//!
//! - A key's revision survives its delete (a tombstone) so that a query on a deleted key or a
//!   prefix that lost a key still wakes; tombstones beyond [`MAX_TOMBSTONES`] are dropped, the
//!   oldest first, raising a floor every baseline starts from (a query older than the floor wakes
//!   once, spuriously, never late).
//! - After a compaction under the watch the root is re-listed and every subscription moves to the
//!   listing's revision (all wake once and re-read), as with the catalog index.
//! - Subscriptions are shared per key or prefix and dropped with their last receiver.
//! - Started on the first subscription; the watch task ends when the [`Changes`] is dropped.
//! - A root may name a companion suffix ([`Changes::with_companion`]): a write to `K<suffix>`
//!   (the KV store's lock record of `K`) is also a change of `K`, whose answer includes it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{OnceCell, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{Change, Store, StoreError, WatchEvent};

/// Deleted keys remembered before the oldest are folded into the floor.
pub const MAX_TOMBSTONES: usize = 10_000;
/// Pause before re-watching after the watch broke.
const REWATCH_PAUSE: Duration = Duration::from_millis(500);

/// What a blocking query's answer is made of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Interest {
    /// One key.
    Key(String),
    /// Every key starting with this.
    Prefix(String),
}

/// The changes under one root of a store, for blocking queries.
pub struct Changes {
    store: Arc<dyn Store>,
    root: String,
    companion: Option<String>,
    shared: OnceCell<Arc<Mutex<State>>>,
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// The newest revision applied.
    revision: u64,
    /// Changes at or before this are not known key by key (before the listing, or a dropped
    /// tombstone): every baseline is at least this.
    floor: u64,
    /// Last change per key: `(revision, still present)`.
    keys: BTreeMap<String, (u64, bool)>,
    /// Deletes in revision order, for dropping the oldest.
    tombstones: VecDeque<(u64, String)>,
    interests: HashMap<Interest, watch::Sender<u64>>,
    /// How many prefix interests of each length exist (a change looks up only those lengths).
    prefix_lengths: BTreeMap<usize, usize>,
    /// Interest count after the last sweep of unused ones.
    swept_at: usize,
    /// A key ending in this also changes the key without it.
    companion: Option<String>,
}

impl State {
    fn baseline(&self, interest: &Interest) -> u64 {
        let latest = match interest {
            Interest::Key(key) => {
                let own = self.keys.get(key).map_or(0, |(r, _)| *r);
                let companion = self.companion.as_ref().map_or(0, |suffix| {
                    self.keys
                        .get(&format!("{key}{suffix}"))
                        .map_or(0, |(r, _)| *r)
                });
                own.max(companion)
            }
            Interest::Prefix(prefix) => self
                .keys
                .range::<str, _>((
                    std::ops::Bound::Included(prefix.as_str()),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(k, _)| k.starts_with(prefix.as_str()))
                .map(|(_, (r, _))| *r)
                .max()
                .unwrap_or(0),
        };
        latest.max(self.floor)
    }

    fn subscribe(&mut self, interest: Interest) -> watch::Receiver<u64> {
        if let Some(sender) = self.interests.get(&interest) {
            return sender.subscribe();
        }
        if self.interests.len() >= 2 * self.swept_at.max(64) {
            self.sweep();
        }
        let (sender, receiver) = watch::channel(self.baseline(&interest));
        if let Interest::Prefix(prefix) = &interest {
            *self.prefix_lengths.entry(prefix.len()).or_default() += 1;
        }
        self.interests.insert(interest, sender);
        receiver
    }

    fn forget(&mut self, interest: &Interest) {
        if self.interests.remove(interest).is_some()
            && let Interest::Prefix(prefix) = interest
            && let Some(count) = self.prefix_lengths.get_mut(&prefix.len())
        {
            *count -= 1;
            if *count == 0 {
                self.prefix_lengths.remove(&prefix.len());
            }
        }
    }

    /// Drops subscriptions nobody holds any more.
    fn sweep(&mut self) {
        let unused: Vec<Interest> = self
            .interests
            .iter()
            .filter(|(_, s)| s.receiver_count() == 0)
            .map(|(i, _)| i.clone())
            .collect();
        for interest in &unused {
            self.forget(interest);
        }
        self.swept_at = self.interests.len();
    }

    /// Tells the subscribers of `interest` that it changed at `revision`.
    fn notify(&mut self, interest: &Interest, revision: u64) {
        let unused = match self.interests.get(interest) {
            Some(sender) => {
                sender.send_if_modified(|current| {
                    let newer = revision > *current;
                    if newer {
                        *current = revision;
                    }
                    newer
                });
                sender.receiver_count() == 0
            }
            None => false,
        };
        if unused {
            self.forget(interest);
        }
    }

    fn apply(&mut self, change: &Change) {
        let revision = change.revision();
        if revision <= self.revision {
            return;
        }
        let key = change.key();
        let present = matches!(change, Change::Put(_));
        self.keys.insert(key.to_owned(), (revision, present));
        if !present {
            self.tombstones.push_back((revision, key.to_owned()));
            while self.tombstones.len() > MAX_TOMBSTONES {
                let Some((dropped, old)) = self.tombstones.pop_front() else {
                    break;
                };
                if self.keys.get(&old) == Some(&(dropped, false)) {
                    self.keys.remove(&old);
                }
                self.floor = self.floor.max(dropped);
            }
        }
        if self.interests.is_empty() {
            return;
        }
        self.notify(&Interest::Key(key.to_owned()), revision);
        if let Some(owner) = self
            .companion
            .as_ref()
            .and_then(|suffix| key.strip_suffix(suffix.as_str()))
        {
            self.notify(&Interest::Key(owner.to_owned()), revision);
        }
        let lengths: Vec<usize> = self
            .prefix_lengths
            .keys()
            .copied()
            .take_while(|len| *len <= key.len())
            .collect();
        for len in lengths {
            if key.is_char_boundary(len) {
                self.notify(&Interest::Prefix(key[..len].to_owned()), revision);
            }
        }
    }

    /// Replaces what is known with a listing at `revision`; every subscription moves there.
    fn relist(&mut self, kvs: Vec<super::KeyValue>, revision: u64) {
        self.keys = kvs
            .into_iter()
            .map(|kv| (kv.key, (kv.mod_revision, true)))
            .collect();
        self.tombstones.clear();
        self.floor = revision;
        self.revision = revision;
        for sender in self.interests.values() {
            sender.send_if_modified(|current| {
                let newer = revision > *current;
                if newer {
                    *current = revision;
                }
                newer
            });
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every mutation leaves the state usable, so a panicked holder does not poison it.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Changes {
    /// The changes of keys under `root` (`kv/`, `config/`, ...) of `store`.
    pub fn new(store: Arc<dyn Store>, root: impl Into<String>) -> Self {
        Self::with_companion(store, root, None)
    }

    /// [`Changes::new`] where a write to `K<companion>` is also a change of `K`.
    pub fn with_companion(
        store: Arc<dyn Store>,
        root: impl Into<String>,
        companion: Option<String>,
    ) -> Self {
        let stop = CancellationToken::new();
        Self {
            store,
            root: root.into(),
            companion,
            shared: OnceCell::new(),
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
        }
    }

    async fn state(&self) -> Result<&Arc<Mutex<State>>, StoreError> {
        self.shared
            .get_or_try_init(|| async {
                let (kvs, revision) = self.store.range(&self.root).await?;
                let mut state = State {
                    companion: self.companion.clone(),
                    ..State::default()
                };
                state.relist(kvs, revision);
                let state = Arc::new(Mutex::new(state));
                tokio::spawn(follow(
                    Arc::downgrade(&state),
                    Arc::downgrade(&self.store),
                    self.root.clone(),
                    revision,
                    self.stop.clone(),
                ));
                Ok(state)
            })
            .await
    }

    /// The last revision at which `interest` (under the root) changed, as a watch that moves
    /// when it changes again.
    pub async fn subscribe(&self, interest: Interest) -> Result<watch::Receiver<u64>, StoreError> {
        debug_assert!(
            match &interest {
                Interest::Key(k) | Interest::Prefix(k) => k.starts_with(&self.root),
            },
            "interest outside the root"
        );
        let state = self.state().await?;
        Ok(lock(state).subscribe(interest))
    }

    /// [`Changes::subscribe`], or the store's revision watch (wakes on any write) when the root
    /// cannot be listed: a blocking query still answers, only less selectively.
    pub async fn watch(&self, interest: Interest) -> watch::Receiver<u64> {
        match self.subscribe(interest).await {
            Ok(receiver) => receiver,
            Err(error) => {
                tracing::warn!(error = %crate::api::ErrorChain(&error), root = %self.root, "cannot follow changes; waking on every write");
                self.store.revision_watch()
            }
        }
    }
}

/// Applies the store's watch of `root` until `stop` or until the [`Changes`] is gone; re-lists
/// after a compaction or a broken watch.
async fn follow(
    state: Weak<Mutex<State>>,
    store: Weak<dyn Store>,
    root: String,
    mut after: u64,
    stop: CancellationToken,
) {
    loop {
        let Some(strong) = store.upgrade() else {
            return;
        };
        let watch = strong.watch(&root, after).await;
        drop(strong);
        match watch {
            Ok(mut events) => loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => return,
                    event = events.recv() => event,
                };
                let Some(state) = state.upgrade() else {
                    return;
                };
                match event {
                    Some(WatchEvent::Changes(changes)) => {
                        let mut state = lock(&state);
                        for change in &changes {
                            state.apply(change);
                        }
                        let newest = changes.iter().map(Change::revision).max().unwrap_or(0);
                        state.revision = state.revision.max(newest);
                        after = state.revision;
                    }
                    Some(WatchEvent::Compacted { compact_revision }) => {
                        tracing::debug!(compact_revision, %root, "change watch compacted; re-listing");
                        break;
                    }
                    None if store.strong_count() == 0 => return,
                    None => {
                        tracing::warn!(%root, "change watch ended; re-listing");
                        break;
                    }
                }
            },
            Err(error) => {
                tracing::warn!(error = %crate::api::ErrorChain(&error), %root, "cannot watch changes");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(REWATCH_PAUSE) => {}
        }
        let (Some(state), Some(store)) = (state.upgrade(), store.upgrade()) else {
            return;
        };
        match store.range(&root).await {
            Ok((kvs, revision)) => {
                lock(&state).relist(kvs, revision);
                after = revision;
            }
            Err(error) => {
                tracing::warn!(error = %crate::api::ErrorChain(&error), %root, "cannot re-list changes");
            }
        }
    }
}

#[cfg(test)]
#[path = "changes_tests.rs"]
mod tests;
