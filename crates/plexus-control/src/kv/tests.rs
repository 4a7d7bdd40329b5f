//! Tests: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use super::*;
use crate::store::EmbeddedStore;

fn kv(dir: &std::path::Path) -> Kv {
    Kv::new(Arc::new(EmbeddedStore::open(dir).unwrap()))
}

#[tokio::test]
async fn put_get_cas_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let kv = kv(dir.path());
    let (done, index) = kv.put("app/a", b"1", 7, None).await.unwrap();
    assert!(done);
    let (entry, read_index) = kv.get("app/a").await.unwrap();
    let entry = entry.unwrap();
    assert_eq!((entry.value.as_slice(), entry.flags), (&b"1"[..], 7));
    assert_eq!(entry.modify_index, index);
    assert!(read_index >= index);
    // cas=0: create only.
    assert!(!kv.put("app/a", b"2", 0, Some(0)).await.unwrap().0);
    // Stale cas: refused, value unchanged.
    assert!(!kv.put("app/a", b"2", 0, Some(index + 100)).await.unwrap().0);
    assert_eq!(kv.get("app/a").await.unwrap().0.unwrap().value, b"1");
    assert!(kv.put("app/a", b"2", 0, Some(index)).await.unwrap().0);
    assert_eq!(kv.get("app/a").await.unwrap().0.unwrap().value, b"2");
    kv.put("app/b/c", b"", 0, None).await.unwrap();
    kv.put("other", b"x", 0, None).await.unwrap();
    let (entries, _) = kv.list("app/").await.unwrap();
    let keys: Vec<_> = entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["app/a", "app/b/c"]);
    let current = kv.get("app/a").await.unwrap().0.unwrap().modify_index;
    assert!(
        !kv.delete("app/a", false, Some(current + 1))
            .await
            .unwrap()
            .0
    );
    assert!(kv.delete("app/a", false, Some(current)).await.unwrap().0);
    assert!(kv.delete("app/", true, None).await.unwrap().0);
    assert!(kv.list("app/").await.unwrap().0.is_empty());
    assert!(kv.get("other").await.unwrap().0.is_some());
}

#[test]
fn keys_collapse_at_the_separator() {
    let keys: Vec<String> = ["web/a", "web/b/c", "web/b/d", "web/e/"]
        .iter()
        .map(|k| (*k).to_owned())
        .collect();
    assert_eq!(
        collapse_keys("web/", &keys, Some("/")),
        ["web/a", "web/b/", "web/e/"]
    );
    assert_eq!(collapse_keys("web/", &keys, None), keys);
    assert_eq!(collapse_keys("", &keys, Some("/")), ["web/"]);
}

#[test]
fn empty_values_show_as_null_and_others_as_base64() {
    let entry = Entry {
        key: "k".to_owned(),
        flags: 0,
        value: Vec::new(),
        create_index: 1,
        modify_index: 1,
        lock_index: 0,
        session: None,
    };
    assert_eq!(entry.to_pair().value, None);
    let entry = Entry {
        value: b"hello".to_vec(),
        ..entry
    };
    assert_eq!(entry.to_pair().value.as_deref(), Some("aGVsbG8="));
}
