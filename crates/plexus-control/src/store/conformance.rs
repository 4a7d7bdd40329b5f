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

    // Kill the member b watches through: b fails over and keeps following.
    cluster.kill(1).unwrap();
    let written = a.txn(ops(vec![put("k", "3")])).await.unwrap();
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
