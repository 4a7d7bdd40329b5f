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

/// A store with one key holding `value`, closed; returns the data file.
async fn store_with(dir: &Path, value: &[u8]) -> PathBuf {
    let store = EmbeddedStore::open(dir).unwrap();
    store
        .txn(txn(vec![Op::Put {
            key: "kv/probe".to_owned(),
            value: value.to_vec(),
        }]))
        .await
        .unwrap();
    let path = store.path().to_owned();
    drop(store);
    path
}

fn refused(dir: &Path) -> String {
    match EmbeddedStore::open(dir) {
        Ok(_) => panic!("a damaged store opened"),
        Err(error) => {
            assert!(matches!(error, StoreError::Integrity(_)), "{error:?}");
            super::super::super::api::ErrorChain(&error).to_string()
        }
    }
}

#[tokio::test]
async fn an_empty_data_file_is_refused_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with(dir.path(), b"v").await;
    std::fs::File::create(&path).unwrap(); // truncates to 0 bytes
    let message = refused(dir.path());
    assert!(
        message.contains("plexus.redb") && message.contains("empty"),
        "{message}"
    );
    assert!(message.contains("plexus operator restore"), "{message}");
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        0,
        "the file was touched"
    );
}

#[tokio::test]
async fn a_truncated_data_file_is_refused_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with(dir.path(), b"v").await;
    let len = std::fs::metadata(&path).unwrap().len();
    for keep in [len / 2, 100, 1] {
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(keep).unwrap();
        let message = refused(dir.path());
        assert!(
            message.contains("damaged") && message.contains("plexus.redb"),
            "{keep}: {message}"
        );
    }
}

#[tokio::test]
async fn flipped_bytes_in_a_value_are_found_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let marker = b"integrity-probe-value-0123456789".repeat(8);
    let path = store_with(dir.path(), &marker).await;
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker.as_slice())
        .unwrap();
    bytes[at + 10] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let message = refused(dir.path());
    assert!(message.contains("damaged"), "{message}");
}

#[tokio::test]
async fn a_non_empty_directory_without_the_data_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with(dir.path(), b"v").await;
    std::fs::rename(&path, dir.path().join("moved.redb")).unwrap();
    let message = refused(dir.path());
    assert!(message.contains("no data file"), "{message}");
    // An empty directory, or a creation interrupted before its rename, starts a new store.
    let fresh = tempfile::tempdir().unwrap();
    std::fs::write(fresh.path().join("plexus.redb.creating"), b"").unwrap();
    let store = EmbeddedStore::open(fresh.path()).unwrap();
    assert_eq!(*store.revision_watch().borrow(), 0);
    assert!(!fresh.path().join("plexus.redb.creating").exists());
}

/// A record that went bad while serving (written behind the store's back here) is a 500 naming
/// the cause, counted in `plexus_store_errors_total{kind="damaged"}`; the process goes on and
/// the other keys are still served.
#[tokio::test]
async fn a_damaged_record_read_is_a_500_with_a_reason_and_a_metric() {
    use tower::ServiceExt as _;
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let kv = crate::kv::Kv::new(Arc::new(store.clone()));
    kv.put("good", b"v", 0, None).await.unwrap();
    {
        let tx = store.db.begin_write().unwrap();
        tx.open_table(KV)
            .unwrap()
            .insert("kv/bad", &[1_u8, 2, 3][..])
            .unwrap();
        tx.commit().unwrap();
    }
    let router = plexus_runtime::acl::layer(
        crate::kv::api::router(kv),
        plexus_runtime::acl::Resolver::default(),
    );
    let get = |uri: &str| {
        http::Request::builder()
            .uri(uri)
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let response = router.clone().oneshot(get("/v1/kv/bad")).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["code"], "store_damaged");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("kv/bad") && message.contains("malformed"),
        "{message}"
    );
    assert_eq!(store.metrics().errors("damaged"), 1);
    assert!(
        store
            .metrics_text()
            .contains("plexus_store_errors_total{kind=\"damaged\"} 1")
    );
    let response = router.oneshot(get("/v1/kv/good")).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
}
