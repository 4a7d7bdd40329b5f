//! One test suite for every [`Store`] backend: the embedded file and a real etcd cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use plexus_test::EtcdCluster;

use super::*;

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
    }
}

fn ops(ops: Vec<Op>) -> Txn {
    Txn {
        compares: Vec::new(),
        ops,
    }
}

fn absent(key: &str) -> Compare {
    Compare::ModRevision {
        key: key.to_owned(),
        revision: 0,
    }
}

/// The behaviour both backends share.
async fn suite(store: Arc<dyn Store>) {
    let mut revisions = store.revision_watch();
    let start = *revisions.borrow_and_update();
    let first = store
        .txn(ops(vec![put("a/1", "x"), put("a/2", "y"), put("b", "z")]))
        .await
        .unwrap();
    assert!(first.succeeded);
    assert!(first.revision > start);
    // The revision watch moved to (at least) the commit.
    assert!(*revisions.borrow_and_update() >= first.revision);

    let a1 = store.get("a/1").await.unwrap().unwrap();
    assert_eq!(a1.value, b"x");
    assert_eq!(
        (a1.create_revision, a1.mod_revision),
        (first.revision, first.revision)
    );
    let (got, at) = store.get_at("a/1").await.unwrap();
    assert_eq!(got.as_ref(), Some(&a1));
    assert!(at >= first.revision);
    // A read after the write sees at least its revision, without naming a key.
    assert!(store.current_revision().await.unwrap() >= first.revision);
    assert_eq!(store.get("missing").await.unwrap(), None);

    // Range: prefix only, sorted, with a revision at least the last write.
    let (kvs, at) = store.range("a/").await.unwrap();
    let keys: Vec<_> = kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["a/1", "a/2"]);
    assert!(at >= first.revision);

    // Compare-and-set: create-only fails on an existing key and writes nothing.
    let refused = store
        .txn(Txn {
            compares: vec![absent("a/1")],
            ops: vec![put("a/1", "no"), put("c", "no")],
        })
        .await
        .unwrap();
    assert!(!refused.succeeded);
    assert_eq!(refused.revision, first.revision);
    assert_eq!(store.get("c").await.unwrap(), None);
    // ... and a matching mod revision succeeds, keeping create_revision.
    let updated = store
        .txn(Txn {
            compares: vec![Compare::ModRevision {
                key: "a/1".to_owned(),
                revision: a1.mod_revision,
            }],
            ops: vec![put("a/1", "x2")],
        })
        .await
        .unwrap();
    assert!(updated.succeeded);
    assert!(updated.revision > first.revision);
    let a1 = store.get("a/1").await.unwrap().unwrap();
    assert_eq!(
        (a1.create_revision, a1.mod_revision),
        (first.revision, updated.revision)
    );

    // Delete one key, then a prefix.
    let deleted = store
        .txn(ops(vec![Op::Delete {
            key: "b".to_owned(),
        }]))
        .await
        .unwrap();
    assert!(deleted.revision > updated.revision);
    assert_eq!(store.get("b").await.unwrap(), None);
    store
        .txn(ops(vec![Op::DeletePrefix {
            prefix: "a/".to_owned(),
        }]))
        .await
        .unwrap();
    assert!(store.range("a/").await.unwrap().0.is_empty());

    // An empty transaction does not move the revision.
    let before = *store.revision_watch().borrow();
    let empty = store.txn(ops(Vec::new())).await.unwrap();
    assert!(empty.succeeded);
    assert_eq!(empty.revision, before);
}

#[tokio::test]
async fn embedded_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    suite(Arc::new(EmbeddedStore::open(dir.path()).unwrap())).await;
}

#[tokio::test]
async fn etcd_store_conforms() {
    let cluster = EtcdCluster::start(1).await.unwrap();
    let store = EtcdStore::connect(&cluster.endpoints(), "conformance/")
        .await
        .unwrap();
    suite(Arc::new(store)).await;
}

/// Concurrent guarded writes each get their own answer (etcd merges concurrent transactions on
/// disjoint keys into one; a compare that fails there must fail only its own transaction): of
/// 48 create-only writes on 12 keys, exactly 12 succeed, and each success's revision is its key's.
async fn concurrent_suite(store: Arc<dyn Store>) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..48 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let key = format!("c/{}", i % 12);
            let result = store
                .txn(Txn {
                    compares: vec![absent(&key)],
                    ops: vec![put(&key, &i.to_string()), put(&format!("c-own/{i}"), "x")],
                })
                .await
                .unwrap();
            (key, i, result)
        });
    }
    let mut winners = std::collections::BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        let (key, i, result) = done.unwrap();
        let own = store.get(&format!("c-own/{i}")).await.unwrap();
        if result.succeeded {
            assert!(winners.insert(key.clone(), (i, result.revision)).is_none());
            assert_eq!(own.map(|kv| kv.mod_revision), Some(result.revision));
        } else {
            assert_eq!(own, None, "a refused write wrote its other key");
        }
    }
    assert_eq!(winners.len(), 12);
    for (key, (i, revision)) in winners {
        let kv = store.get(&key).await.unwrap().unwrap();
        assert_eq!(
            (kv.value, kv.mod_revision),
            (i.to_string().into_bytes(), revision)
        );
    }
}

#[tokio::test]
async fn embedded_concurrent_writes_get_their_own_answers() {
    let dir = tempfile::tempdir().unwrap();
    concurrent_suite(Arc::new(EmbeddedStore::open(dir.path()).unwrap())).await;
}

#[tokio::test]
async fn etcd_concurrent_writes_get_their_own_answers() {
    let cluster = EtcdCluster::start(1).await.unwrap();
    let store = EtcdStore::connect(&cluster.endpoints(), "concurrent/")
        .await
        .unwrap();
    concurrent_suite(Arc::new(store)).await;
}

/// Two replicas over one cluster: a write through one moves the other's revision watch (the watch,
/// not a poll), also after the history under the watch was compacted, and with a member killed.
#[tokio::test]
async fn etcd_revision_watch_follows_writes_of_another_replica_through_compaction_and_member_loss()
{
    let mut cluster = EtcdCluster::start(3).await.unwrap();
    let endpoints = cluster.endpoints();
    let a = EtcdStore::connect(&endpoints, "ns/").await.unwrap();
    // b prefers another member.
    let rotated: Vec<String> = endpoints.iter().cycle().skip(1).take(3).cloned().collect();
    let b = EtcdStore::connect(&rotated, "ns/").await.unwrap();
    let mut seen = b.revision_watch();
    seen.borrow_and_update();
    let written = a.txn(ops(vec![put("k", "1")])).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        seen.wait_for(|r| *r >= written.revision),
    )
    .await
    .expect("b's watch moved for a's write")
    .unwrap();

    // Compact everything so far, then write again: b keeps following.
    let now = cluster.revision().await.unwrap();
    cluster.compact(now).await.unwrap();
    let written = a.txn(ops(vec![put("k", "2")])).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        seen.wait_for(|r| *r >= written.revision),
    )
    .await
    .expect("b's watch moved after compaction")
    .unwrap();

    // Kill the member b watches through: b fails over and keeps following. A write during the
    // election may be refused (503): the writer tries again, as a client of the API would.
    cluster.kill(1).unwrap();
    let mut written = None;
    for _ in 0..50 {
        match a.txn(ops(vec![put("k", "3")])).await {
            Ok(result) => {
                written = Some(result);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let written = written.expect("a write succeeds once a new leader is elected");
    tokio::time::timeout(
        Duration::from_secs(20),
        seen.wait_for(|r| *r >= written.revision),
    )
    .await
    .expect("b's watch moved after its member died")
    .unwrap();
    assert_eq!(b.get("k").await.unwrap().unwrap().value, b"3");
    cluster.restart(1).await.unwrap();
}

#[tokio::test]
async fn etcd_unreachable_is_a_clear_error() {
    let port = plexus_test::free_port();
    let error = EtcdStore::connect(&[format!("127.0.0.1:{port}")], "x/")
        .await
        .unwrap_err();
    let chain = crate::api::ErrorChain(&error).to_string();
    assert!(chain.contains("no etcd endpoint reachable"), "{chain}");
    assert!(chain.contains(&port.to_string()), "{chain}");
    let bad = EtcdStore::connect(&["not an endpoint".to_owned()], "x/")
        .await
        .unwrap_err();
    assert!(
        crate::api::ErrorChain(&bad)
            .to_string()
            .contains("invalid etcd endpoint")
    );
}

/// A watcher that keeps a copy of everything under a prefix: lists, then applies watch events;
/// re-lists when told the history is compacted. Counts what it saw.
struct Mirror {
    copy: std::collections::BTreeMap<String, Vec<u8>>,
    revision: u64,
    relists: usize,
    revisions_seen: std::collections::BTreeSet<u64>,
}

impl Mirror {
    async fn list(store: &dyn Store, prefix: &str) -> Self {
        let (kvs, revision) = store.range(prefix).await.unwrap();
        Self {
            copy: kvs.into_iter().map(|kv| (kv.key, kv.value)).collect(),
            revision,
            relists: 0,
            revisions_seen: Default::default(),
        }
    }

    fn apply(&mut self, changes: Vec<Change>) {
        for change in changes {
            assert!(
                change.revision() > self.revision
                    || self.revisions_seen.contains(&change.revision()),
                "change at {} after {}",
                change.revision(),
                self.revision
            );
            self.revisions_seen.insert(change.revision());
            self.revision = self.revision.max(change.revision());
            match change {
                Change::Put(kv) => {
                    self.copy.insert(kv.key, kv.value);
                }
                Change::Delete { key, .. } => {
                    self.copy.remove(&key);
                }
            }
        }
    }

    /// Follows the store until its copy reflects `until` (or later), re-listing on compaction.
    async fn follow(&mut self, store: &dyn Store, prefix: &str, until: u64) {
        let mut watch = store.watch(prefix, self.revision).await.unwrap();
        while self.revision < until {
            let event = tokio::time::timeout(Duration::from_secs(20), watch.recv())
                .await
                .expect("a watch event within the deadline")
                .expect("the watch stays open");
            match event {
                WatchEvent::Changes(changes) => self.apply(changes),
                WatchEvent::Compacted { .. } => {
                    let relists = self.relists + 1;
                    *self = Mirror {
                        relists,
                        ..Mirror::list(store, prefix).await
                    };
                    watch = store.watch(prefix, self.revision).await.unwrap();
                }
            }
        }
    }
}

/// Writes puts and deletes under `w/`; returns the revision of the last one.
async fn churn(store: &dyn Store, from: usize, count: usize) -> u64 {
    let mut last = 0;
    for i in from..from + count {
        let op = if i % 5 == 4 {
            Op::Delete {
                key: format!("w/{}", (i - 1) % 7),
            }
        } else {
            put(&format!("w/{}", i % 7), &format!("v{i}"))
        };
        last = store
            .txn(ops(vec![op, put("other", "x")]))
            .await
            .unwrap()
            .revision;
    }
    last
}

/// Every change is seen (in order, once) by a live watcher; a watcher resuming from a revision
/// the store no longer keeps is told so and re-lists. Either way its copy ends equal to the store.
async fn watch_suite(store: &dyn Store, compact: impl AsyncFnOnce(u64)) {
    let mut mirror = Mirror::list(store, "w/").await;
    let start = mirror.revision;
    let mut watch = store.watch("w/", start).await.unwrap();
    let last = churn(store, 0, 40).await;
    while mirror.revision < last {
        let event = tokio::time::timeout(Duration::from_secs(20), watch.recv())
            .await
            .unwrap()
            .unwrap();
        let WatchEvent::Changes(changes) = event else {
            panic!("unexpected {event:?}");
        };
        mirror.apply(changes);
    }
    drop(watch);
    // Live: every revision that touched w/ was seen (each write above did, except deletes of
    // absent keys), and the copy is exact.
    assert_eq!(mirror.relists, 0);
    assert!(
        mirror.revisions_seen.len() >= 30,
        "{:?}",
        mirror.revisions_seen.len()
    );
    assert_eq!(mirror.copy, Mirror::list(store, "w/").await.copy);

    // Away: more writes while not watching, then the history is compacted under the watcher.
    let last = churn(store, 40, 60).await;
    compact(last).await;
    mirror.follow(store, "w/", last).await;
    assert_eq!(
        mirror.relists, 1,
        "resuming from compacted history re-lists"
    );
    assert_eq!(mirror.copy, Mirror::list(store, "w/").await.copy);
}

#[tokio::test]
async fn embedded_watch_sees_every_change_or_relists() {
    let dir = tempfile::tempdir().unwrap();
    // Keeps 45 revisions: the live phase (40 writes) fits, the away phase (60) does not.
    let store = EmbeddedStore::open_keeping(dir.path(), 45).unwrap();
    watch_suite(&store, async |_| {}).await;
}

#[tokio::test]
async fn etcd_watch_sees_every_change_or_relists_after_compaction() {
    let cluster = EtcdCluster::start(1).await.unwrap();
    let store = EtcdStore::connect(&cluster.endpoints(), "watch/")
        .await
        .unwrap();
    watch_suite(&store, async |revision| {
        cluster.compact(revision).await.unwrap()
    })
    .await;
}

/// The written revision follows writes to the store's keys: not a revision that changed
/// nothing, and on etcd not another user's writes outside the namespace, which move the store's
/// revision. A watcher of every key reaches it with events (nothing to wait for that never comes).
async fn written_suite(store: &dyn Store, foreign_write: impl AsyncFn() -> u64) {
    let (_, start) = store.range("p/").await.unwrap();
    let mut watch = store.watch("", start).await.unwrap();
    let ours = store
        .txn(ops(vec![put("p/a", "1")]))
        .await
        .unwrap()
        .revision;
    assert!(store.written_revision().await.unwrap() >= ours);
    let foreign = foreign_write().await;
    assert!(foreign > ours);
    assert!(store.current_revision().await.unwrap() >= foreign);
    let written = store.written_revision().await.unwrap();
    assert!(
        written >= ours && written < foreign,
        "{ours} {written} {foreign}"
    );
    let mut seen = 0;
    while seen < written {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.recv())
            .await
            .expect("the written revision arrives as an event")
            .unwrap();
        let WatchEvent::Changes(changes) = event else {
            panic!("{event:?}")
        };
        seen = seen.max(changes.iter().map(Change::revision).max().unwrap_or(0));
    }
    assert_eq!(seen, written);
}

#[tokio::test]
async fn embedded_written_revision_skips_revisions_without_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    written_suite(&store, async || {
        let nothing = Op::Delete {
            key: "absent".to_owned(),
        };
        store.txn(ops(vec![nothing])).await.unwrap().revision
    })
    .await;
}

#[tokio::test]
async fn etcd_written_revision_skips_writes_outside_the_namespace() {
    let cluster = EtcdCluster::start(1).await.unwrap();
    let store = EtcdStore::connect(&cluster.endpoints(), "ours/")
        .await
        .unwrap();
    // Another etcd user, outside our prefix.
    let foreign = EtcdStore::connect(&cluster.endpoints(), "theirs/")
        .await
        .unwrap();
    written_suite(&store, async || {
        foreign
            .txn(ops(vec![put("k", "x")]))
            .await
            .unwrap()
            .revision
    })
    .await;
}

/// Leases: a bound key lives while the lease is kept alive, vanishes when it is not (the watch
/// shows the delete), and revocation deletes at once.
async fn lease_suite(store: &dyn Store) {
    let lease = store.lease_grant(Duration::from_secs(1)).await.unwrap();
    let written = store
        .txn(ops(vec![Op::PutLeased {
            key: "l/a".to_owned(),
            value: b"1".to_vec(),
            lease,
        }]))
        .await
        .unwrap();
    let mut watch = store.watch("l/", written.revision).await.unwrap();
    // Keep-alives renew the lease without a write: the revision (every blocking query's index)
    // does not move.
    let (_, before) = store.range("l/").await.unwrap();
    for _ in 0..3 {
        assert!(store.lease_keep_alive(lease).await.unwrap().is_some());
    }
    let (_, after) = store.range("l/").await.unwrap();
    assert_eq!(before, after, "a keep-alive moved the store revision");
    // Not renewed any more: the key is deleted by the store.
    let event = tokio::time::timeout(Duration::from_secs(20), watch.recv())
        .await
        .expect("expiry within the deadline")
        .unwrap();
    let WatchEvent::Changes(changes) = event else {
        panic!("{event:?}")
    };
    assert!(
        matches!(&changes[..], [Change::Delete { key, .. }] if key == "l/a"),
        "{changes:?}"
    );
    assert_eq!(store.get("l/a").await.unwrap(), None);
    assert_eq!(store.lease_keep_alive(lease).await.unwrap(), None);

    // Revoke: keys go at once; revoking again is fine.
    let lease = store.lease_grant(Duration::from_secs(60)).await.unwrap();
    store
        .txn(ops(vec![Op::PutLeased {
            key: "l/b".to_owned(),
            value: b"2".to_vec(),
            lease,
        }]))
        .await
        .unwrap();
    store.lease_revoke(lease).await.unwrap();
    assert_eq!(store.get("l/b").await.unwrap(), None);
    store.lease_revoke(lease).await.unwrap();
    // A put naming an unknown lease fails and writes nothing.
    let refused = store
        .txn(ops(vec![Op::PutLeased {
            key: "l/c".to_owned(),
            value: b"3".to_vec(),
            lease,
        }]))
        .await;
    assert!(refused.is_err());
    assert_eq!(store.get("l/c").await.unwrap(), None);
}

#[tokio::test]
async fn embedded_leases_expire_and_revoke() {
    let dir = tempfile::tempdir().unwrap();
    lease_suite(&EmbeddedStore::open(dir.path()).unwrap()).await;
}

#[tokio::test]
async fn etcd_leases_expire_and_revoke() {
    let cluster = EtcdCluster::start(1).await.unwrap();
    let store = EtcdStore::connect(&cluster.endpoints(), "lease/")
        .await
        .unwrap();
    lease_suite(&store).await;
}

/// Embedded restart rule: a stored lease gets a full TTL from the reopen, then expires if nobody
/// renews it; its keys are deleted then, not before.
#[tokio::test]
async fn embedded_leases_survive_a_restart_for_one_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let lease = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let lease = store.lease_grant(Duration::from_secs(1)).await.unwrap();
        store
            .txn(ops(vec![Op::PutLeased {
                key: "n/x".to_owned(),
                value: b"1".to_vec(),
                lease,
            }]))
            .await
            .unwrap();
        lease
    };
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert!(store.get("n/x").await.unwrap().is_some());
    assert!(store.lease_keep_alive(lease).await.unwrap().is_some());
    let mut revisions = store.revision_watch();
    let before = *revisions.borrow_and_update();
    tokio::time::timeout(Duration::from_secs(20), revisions.wait_for(|r| *r > before))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.get("n/x").await.unwrap(), None);
}
