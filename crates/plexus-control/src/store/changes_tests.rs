#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::store::{EmbeddedStore, KeyValue, Op, Txn};

fn put(key: &str, revision: u64) -> Change {
    Change::Put(KeyValue {
        key: key.to_owned(),
        value: Vec::new(),
        create_revision: revision,
        mod_revision: revision,
    })
}

fn delete(key: &str, revision: u64) -> Change {
    Change::Delete {
        key: key.to_owned(),
        revision,
    }
}

#[test]
fn a_subscription_moves_only_for_its_own_keys() {
    let mut state = State::default();
    state.relist(Vec::new(), 10);
    let key = state.subscribe(Interest::Key("kv/a".to_owned()));
    let dir = state.subscribe(Interest::Prefix("kv/dir/".to_owned()));
    assert_eq!((*key.borrow(), *dir.borrow()), (10, 10));
    state.apply(&put("kv/b", 11));
    state.apply(&put("kv/dirx", 12));
    state.apply(&put("kv/a/child", 13));
    assert_eq!((*key.borrow(), *dir.borrow()), (10, 10));
    state.apply(&put("kv/a", 14));
    state.apply(&delete("kv/dir/x", 15));
    assert_eq!((*key.borrow(), *dir.borrow()), (14, 15));
    // A later subscriber to the same prefix starts where the first one is, and a new prefix
    // covering a deleted key starts at the delete.
    let again = state.subscribe(Interest::Prefix("kv/dir/".to_owned()));
    assert_eq!(*again.borrow(), 15);
    let parent = state.subscribe(Interest::Prefix("kv/".to_owned()));
    assert_eq!(*parent.borrow(), 15);
    let gone = state.subscribe(Interest::Key("kv/dir/x".to_owned()));
    assert_eq!(*gone.borrow(), 15);
}

#[test]
fn dropped_subscriptions_are_forgotten() {
    let mut state = State::default();
    state.relist(Vec::new(), 1);
    for i in 0..500 {
        drop(state.subscribe(Interest::Prefix(format!("kv/{i}/"))));
    }
    assert!(state.interests.len() < 200, "{}", state.interests.len());
    let kept = state.subscribe(Interest::Key("kv/kept".to_owned()));
    state.sweep();
    assert_eq!(state.interests.len(), 1);
    assert!(state.prefix_lengths.is_empty());
    state.apply(&put("kv/kept", 2));
    assert_eq!(*kept.borrow(), 2);
}

#[test]
fn old_tombstones_raise_the_floor_instead_of_growing() {
    let mut state = State::default();
    state.relist(Vec::new(), 0);
    let total = MAX_TOMBSTONES as u64 + 10;
    for revision in 1..=total {
        state.apply(&delete(&format!("kv/{revision}"), revision));
    }
    assert_eq!(state.tombstones.len(), MAX_TOMBSTONES);
    assert!(state.keys.len() <= MAX_TOMBSTONES);
    assert_eq!(state.floor, 10);
    // A forgotten delete still wakes a query older than it (baseline ≥ its revision).
    let forgotten = state.subscribe(Interest::Key("kv/3".to_owned()));
    assert!(*forgotten.borrow() >= 3);
}

#[test]
fn a_relist_moves_every_subscription() {
    let mut state = State::default();
    state.relist(Vec::new(), 5);
    let key = state.subscribe(Interest::Key("kv/a".to_owned()));
    state.relist(
        vec![KeyValue {
            key: "kv/a".to_owned(),
            value: Vec::new(),
            create_revision: 7,
            mod_revision: 7,
        }],
        20,
    );
    assert_eq!(*key.borrow(), 20);
    // Changes the listing already covers are not applied again.
    state.apply(&put("kv/a", 19));
    assert_eq!(*key.borrow(), 20);
}

/// Over a real store: a parked subscription sleeps through writes elsewhere (catalog, other KV
/// keys) and wakes for its own key's write, with that write's revision.
#[tokio::test]
async fn wakes_for_its_own_writes_only_over_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let changes = Changes::new(Arc::clone(&store), "kv/");
    let mut watched = changes
        .subscribe(Interest::Key("kv/watched".to_owned()))
        .await
        .unwrap();
    let start = *watched.borrow_and_update();
    let write = |key: &str| Txn {
        compares: Vec::new(),
        ops: vec![Op::Put {
            key: key.to_owned(),
            value: b"v".to_vec(),
        }],
    };
    for key in [
        "catalog/nodes/n1",
        "kv/other",
        "kv/watched/child",
        "config/index",
    ] {
        store.txn(write(key)).await.unwrap();
    }
    let own = store.txn(write("kv/watched")).await.unwrap().revision;
    tokio::time::timeout(Duration::from_secs(10), watched.changed())
        .await
        .expect("woke for its own write")
        .unwrap();
    assert_eq!(*watched.borrow_and_update(), own);
    assert!(own > start + 4);
}

/// A companion record (`K<suffix>`, the KV lock record) wakes `K`'s subscribers and counts in its
/// baseline; it does not wake a sibling key.
#[test]
fn a_companion_record_is_a_change_of_its_key() {
    let mut state = State {
        companion: Some("\0lock".to_owned()),
        ..State::default()
    };
    state.relist(vec![], 10);
    let mut key = state.subscribe(Interest::Key("kv/a".to_owned()));
    let mut sibling = state.subscribe(Interest::Key("kv/ab".to_owned()));
    key.borrow_and_update();
    sibling.borrow_and_update();
    state.apply(&put("kv/a\0lock", 11));
    assert!(key.has_changed().unwrap());
    assert_eq!(*key.borrow_and_update(), 11);
    assert!(!sibling.has_changed().unwrap());
    // A later subscriber starts from the companion's revision.
    drop(key);
    state.sweep();
    let fresh = state.subscribe(Interest::Key("kv/a".to_owned()));
    assert_eq!(*fresh.borrow(), 11);
}
