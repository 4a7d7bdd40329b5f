//! Config entry storage over a real embedded store: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::store::EmbeddedStore;

fn entry(v: serde_json::Value) -> ConfigEntry {
    ConfigEntry::from_json(v).unwrap()
}

#[tokio::test]
async fn crud_cas_cross_checks_and_index() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let config = ConfigEntries::new(store);
    let resolver = entry(json!({"Kind": "service-resolver", "Name": "web",
        "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"Filter": "Service.Meta.version == v2"}}}));
    assert!(config.put(resolver.clone(), Some(0)).await.unwrap());
    // cas=0 on an existing entry refuses.
    assert!(!config.put(resolver.clone(), Some(0)).await.unwrap());
    let stored = config.get(Kind::ServiceResolver, "web").await.unwrap();
    let (create, modify) = stored.value.indexes();
    assert!(create > 0 && modify == create);
    assert_eq!(stored.index, modify);

    // A splitter naming an undefined subset is refused; the stored config is unchanged.
    let bad = entry(json!({"Kind": "service-splitter", "Name": "web",
        "Splits": [{"Weight": 50, "ServiceSubset": "v1"}, {"Weight": 50, "ServiceSubset": "v3"}]}));
    let err = config.put(bad, None).await.unwrap_err();
    let ConfigError::Invalid(errs) = err else {
        panic!("{err}")
    };
    assert_eq!(errs.0[0].field, "Splits[1].ServiceSubset");
    assert_eq!(config.index().await.unwrap(), modify);

    let good = entry(json!({"Kind": "service-splitter", "Name": "web",
        "Splits": [{"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 10, "ServiceSubset": "v2"}]}));
    assert!(config.put(good, None).await.unwrap());
    assert!(config.index().await.unwrap() > modify);
    let chain = config.chain("web").await.unwrap().value;
    assert_eq!(chain.routes[0].splits.len(), 2);

    // The resolver cannot be deleted while the splitter needs its subsets.
    assert!(matches!(
        config.delete(Kind::ServiceResolver, "web").await,
        Err(ConfigError::Invalid(_))
    ));
    config.delete(Kind::ServiceSplitter, "web").await.unwrap();
    config.delete(Kind::ServiceResolver, "web").await.unwrap();
    assert!(
        config
            .list(Kind::ServiceResolver)
            .await
            .unwrap()
            .value
            .is_empty()
    );
    assert!(matches!(
        config.get(Kind::ServiceResolver, "web").await,
        Err(ConfigError::NotFound { .. })
    ));
}

/// A blocking read of one entry wakes for that entry only; a read of a kind for entries of that
/// kind; a chain for any entry. Other writes (KV, other entries) leave them asleep.
#[tokio::test]
async fn blocking_reads_wake_for_their_own_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let config = ConfigEntries::new(Arc::clone(&store));
    let defaults =
        |name: &str| entry(json!({"Kind": "service-defaults", "Name": name, "Protocol": "http"}));
    config.put(defaults("web"), None).await.unwrap();
    let mut web = config
        .changes(Some(Kind::ServiceDefaults), Some("web"))
        .await;
    let mut resolvers = config.changes(Some(Kind::ServiceResolver), None).await;
    let mut all = config.changes(None, None).await;
    let (w0, r0, a0) = (
        *web.borrow_and_update(),
        *resolvers.borrow_and_update(),
        *all.borrow_and_update(),
    );
    // KV and another defaults entry.
    store
        .txn(Txn {
            compares: Vec::new(),
            ops: vec![Op::Put {
                key: "kv/x".to_owned(),
                value: b"\0\0\0\0\0\0\0\0v".to_vec(),
            }],
        })
        .await
        .unwrap();
    config.put(defaults("api"), None).await.unwrap();
    all.changed().await.unwrap();
    assert!(*all.borrow_and_update() > a0);
    assert_eq!((*web.borrow(), *resolvers.borrow()), (w0, r0));
    config.put(defaults("web"), None).await.unwrap();
    web.changed().await.unwrap();
    assert!(*web.borrow() > w0);
    assert_eq!(*resolvers.borrow(), r0);
}
