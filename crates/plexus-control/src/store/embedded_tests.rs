//! Tests: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use super::*;

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
    }
}

fn txn(ops: Vec<Op>) -> Txn {
    Txn {
        compares: Vec::new(),
        ops,
    }
}

fn keys(kvs: &[KeyValue]) -> Vec<&str> {
    kvs.iter().map(|kv| kv.key.as_str()).collect()
}

#[tokio::test]
async fn one_revision_per_txn_and_create_revision_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let r1 = store
        .txn(txn(vec![put("a", "1"), put("b", "2")]))
        .await
        .unwrap();
    assert_eq!(
        r1,
        TxnResult {
            succeeded: true,
            revision: 1
        }
    );
    let r2 = store.txn(txn(vec![put("a", "3")])).await.unwrap();
    assert_eq!(r2.revision, 2);
    let a = store.get("a").await.unwrap().unwrap();
    assert_eq!(
        (a.value.as_slice(), a.create_revision, a.mod_revision),
        (&b"3"[..], 1, 2)
    );
    let b = store.get("b").await.unwrap().unwrap();
    assert_eq!((b.create_revision, b.mod_revision), (1, 1));
    assert_eq!(store.get("c").await.unwrap(), None);
    // Empty ops: nothing to commit, revision unchanged.
    let r3 = store.txn(txn(Vec::new())).await.unwrap();
    assert_eq!(
        r3,
        TxnResult {
            succeeded: true,
            revision: 2
        }
    );
}

#[tokio::test]
async fn compare_and_set_succeeds_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let must_not_exist = |key: &str| Compare::ModRevision {
        key: key.to_owned(),
        revision: 0,
    };
    let created = store
        .txn(Txn {
            compares: vec![must_not_exist("k")],
            ops: vec![put("k", "v1")],
        })
        .await
        .unwrap();
    assert!(created.succeeded);
    let again = store
        .txn(Txn {
            compares: vec![must_not_exist("k")],
            ops: vec![put("k", "v2"), put("other", "x")],
        })
        .await
        .unwrap();
    assert_eq!(
        again,
        TxnResult {
            succeeded: false,
            revision: 1
        }
    );
    assert_eq!(
        store.get("other").await.unwrap(),
        None,
        "failed txn wrote nothing"
    );
    let cas = |revision| Txn {
        compares: vec![Compare::ModRevision {
            key: "k".to_owned(),
            revision,
        }],
        ops: vec![put("k", "v3")],
    };
    assert!(!store.txn(cas(7)).await.unwrap().succeeded);
    assert_eq!(
        store.txn(cas(1)).await.unwrap(),
        TxnResult {
            succeeded: true,
            revision: 2
        }
    );
    assert_eq!(store.get("k").await.unwrap().unwrap().value, b"v3");
}

#[tokio::test]
async fn range_is_sorted_and_delete_prefix_removes_only_the_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    store
        .txn(txn(vec![
            put("p/c", ""),
            put("p/a", ""),
            put("q/a", ""),
            put("p/b", ""),
            put("p", ""),
        ]))
        .await
        .unwrap();
    let (kvs, revision) = store.range("p/").await.unwrap();
    assert_eq!(keys(&kvs), ["p/a", "p/b", "p/c"]);
    assert_eq!(revision, 1);
    let deleted = store
        .txn(txn(vec![Op::DeletePrefix {
            prefix: "p/".to_owned(),
        }]))
        .await
        .unwrap();
    assert_eq!(deleted.revision, 2);
    let (all, revision) = store.range("").await.unwrap();
    assert_eq!(keys(&all), ["p", "q/a"]);
    assert_eq!(revision, 2);
    store
        .txn(txn(vec![Op::Delete {
            key: "p".to_owned(),
        }]))
        .await
        .unwrap();
    assert_eq!(keys(&store.range("").await.unwrap().0), ["q/a"]);
}

#[tokio::test]
async fn watch_is_notified_on_commit_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let mut watch = store.revision_watch();
    assert_eq!(*watch.borrow_and_update(), 0);
    store.txn(txn(vec![put("a", "1")])).await.unwrap();
    assert!(watch.has_changed().unwrap());
    assert_eq!(*watch.borrow_and_update(), 1);
    let failed = Txn {
        compares: vec![Compare::ModRevision {
            key: "a".to_owned(),
            revision: 0,
        }],
        ops: vec![put("a", "2")],
    };
    store.txn(failed).await.unwrap();
    store.txn(txn(Vec::new())).await.unwrap();
    assert!(!watch.has_changed().unwrap());
}

#[tokio::test]
async fn data_and_revision_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.txn(txn(vec![put("a", "1")])).await.unwrap();
        store.txn(txn(vec![put("b", "2")])).await.unwrap();
        assert_eq!(store.path(), dir.path().join(FILE_NAME));
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(*store.revision_watch().borrow(), 2);
    let (kvs, revision) = store.range("").await.unwrap();
    assert_eq!(keys(&kvs), ["a", "b"]);
    assert_eq!(revision, 2);
    let next = store.txn(txn(vec![put("a", "3")])).await.unwrap();
    assert_eq!(next.revision, 3);
    let a = store.get("a").await.unwrap().unwrap();
    assert_eq!((a.create_revision, a.mod_revision), (1, 3));
}

#[test]
fn open_creates_the_directory_and_reports_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("x/y");
    let store = EmbeddedStore::open(&nested).unwrap();
    assert!(store.path().exists());
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let err = EmbeddedStore::open(&file.join("sub")).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn short_records_are_corrupt_not_panics() {
    assert!(matches!(
        decode("k", &[0; 15]),
        Err(StoreError::Corrupt { .. })
    ));
    let kv = decode("k", &encode(3, 4, b"v")).unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.value),
        (3, 4, b"v".to_vec())
    );
}
