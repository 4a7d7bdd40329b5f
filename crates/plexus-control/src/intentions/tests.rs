//! Intention storage over a real embedded store: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use plexus_api::connect::{DefaultPolicy, Intention, IntentionAction};

use super::*;
use crate::store::EmbeddedStore;

fn intention(source: &str, destination: &str, action: IntentionAction) -> Intention {
    serde_json::from_value(serde_json::json!({
        "SourceName": source, "DestinationName": destination, "Action": action,
    }))
    .unwrap()
}

#[tokio::test]
async fn crud_uniqueness_and_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let intentions = Intentions::new(store, DefaultPolicy::Deny);
    assert!(!intentions.check("web", "db").await.unwrap().allowed);

    let created = intentions
        .create(intention("web", "db", IntentionAction::Allow))
        .await
        .unwrap();
    assert_eq!(created.precedence, 9);
    assert!(intentions.check("web", "db").await.unwrap().allowed);
    let duplicate = intentions
        .create(intention("web", "db", IntentionAction::Deny))
        .await
        .unwrap_err();
    assert!(
        matches!(duplicate, IntentionError::Duplicate { .. }),
        "{duplicate}"
    );

    intentions
        .create(intention("*", "db", IntentionAction::Deny))
        .await
        .unwrap();
    assert!(!intentions.check("api", "db").await.unwrap().allowed);
    assert!(intentions.check("web", "db").await.unwrap().allowed);
    let list = intentions.list().await.unwrap().value;
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].id, created.id, "exact first");

    // Update flips the action; the pair may move to a free one only.
    let mut denied = intention("web", "db", IntentionAction::Deny);
    denied.id = created.id.clone();
    intentions.update(&created.id, denied).await.unwrap();
    assert!(!intentions.check("web", "db").await.unwrap().allowed);
    let clash = intentions
        .update(&created.id, intention("*", "db", IntentionAction::Deny))
        .await
        .unwrap_err();
    assert!(matches!(clash, IntentionError::Duplicate { .. }), "{clash}");

    assert_eq!(intentions.exact("web", "db").await.unwrap().id, created.id);
    intentions.delete(&created.id).await.unwrap();
    assert!(matches!(
        intentions.exact("web", "db").await.unwrap_err(),
        IntentionError::NotFound(_)
    ));
    // The pair is free again.
    intentions
        .create(intention("web", "db", IntentionAction::Allow))
        .await
        .unwrap();
}

#[tokio::test]
async fn invalid_intentions_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let intentions = Intentions::new(store, DefaultPolicy::Allow);
    for (source, destination, field) in [
        ("", "db", "SourceName"),
        ("web", "", "DestinationName"),
        ("we*", "db", "SourceName"),
        ("web", "d/b", "DestinationName"),
    ] {
        match intentions
            .create(intention(source, destination, IntentionAction::Allow))
            .await
        {
            Err(IntentionError::Invalid { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{source:?} {destination:?}: {other:?}"),
        }
    }
    assert!(intentions.list().await.unwrap().value.is_empty());
}

#[tokio::test]
async fn l7_intentions_are_stored_whole_and_a_check_without_a_request_denies() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let intentions = Intentions::new(store, DefaultPolicy::Allow);
    let l7: Intention = serde_json::from_value(serde_json::json!({
        "SourceName": "web", "DestinationName": "db", "Action": "",
        "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/v2", "Methods": ["GET"]}}],
    }))
    .unwrap();
    let created = intentions.create(l7.clone()).await.unwrap();
    let stored = intentions.get(&created.id).await.unwrap();
    assert_eq!(stored.action, None);
    assert_eq!(stored.permissions, l7.permissions);
    assert_eq!(stored.precedence, 9);
    let decision = intentions.check("web", "db").await.unwrap();
    assert!(!decision.allowed, "{}", decision.reason);
    assert_eq!(decision.matched.as_deref(), Some(created.id.as_str()));
    assert!(intentions.check("api", "db").await.unwrap().allowed);

    // A bad rule names its field and leaves the stored intention as it was.
    let mut bad = l7.clone();
    bad.permissions[0].http = None;
    match intentions.update(&created.id, bad).await {
        Err(IntentionError::Invalid { field, .. }) => assert_eq!(field, "Permissions[0].HTTP"),
        other => panic!("{other:?}"),
    }
    let mut both = l7;
    both.action = Some(IntentionAction::Allow);
    match intentions.update(&created.id, both).await {
        Err(IntentionError::Invalid { field, .. }) => assert_eq!(field, "Action"),
        other => panic!("{other:?}"),
    }
    assert_eq!(intentions.get(&created.id).await.unwrap(), stored);
}

#[tokio::test]
async fn a_service_intentions_entry_replaces_its_destinations_intentions_keeping_ids() {
    use plexus_api::config_entry::{ConfigEntry, ServiceIntentions};
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let intentions = Intentions::new(store, DefaultPolicy::Deny);
    // Written through the intentions API before: it shows up in the entry, and keeps its ID.
    let legacy = intentions
        .create(intention("web", "db", IntentionAction::Allow))
        .await
        .unwrap();
    let other = intentions
        .create(intention("web", "cache", IntentionAction::Allow))
        .await
        .unwrap();
    let entry = intentions.entry("db").await.unwrap().value.unwrap();
    assert_eq!(entry.sources.len(), 1);
    assert_eq!(entry.sources[0].legacy_id, legacy.id);
    let modify = entry.modify_index;

    let written = |sources: serde_json::Value| -> ServiceIntentions {
        match ConfigEntry::from_json(serde_json::json!({
            "Kind": "service-intentions", "Name": "db", "Sources": sources,
        }))
        .unwrap()
        {
            ConfigEntry::ServiceIntentions(e) => e,
            other => panic!("{other:?}"),
        }
    };
    // cas 0 means "only if there is none": refused.
    let two = written(serde_json::json!([
        {"Name": "web", "Action": "deny"},
        {"Name": "api", "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/v1"}}]},
    ]));
    assert!(!intentions.replace_destination(&two, Some(0)).await.unwrap());
    assert!(
        intentions
            .replace_destination(&two, Some(modify))
            .await
            .unwrap()
    );
    let entry = intentions.entry("db").await.unwrap().value.unwrap();
    let names: Vec<&str> = entry.sources.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["api", "web"]);
    let web = entry.sources.iter().find(|s| s.name == "web").unwrap();
    assert_eq!(web.legacy_id, legacy.id, "web keeps its intention");
    assert_eq!(web.action, Some(IntentionAction::Deny));
    assert!(!intentions.check("web", "db").await.unwrap().allowed);
    // The pair index follows: the API finds api → db, and a second create for it clashes.
    let api = intentions.exact("api", "db").await.unwrap();
    assert_eq!(api.permissions.len(), 1);
    assert!(matches!(
        intentions
            .create(intention("api", "db", IntentionAction::Allow))
            .await,
        Err(IntentionError::Duplicate { .. })
    ));

    // Dropping a source deletes its intention; other destinations are untouched.
    let one = written(serde_json::json!([{"Name": "api", "Action": "allow"}]));
    assert!(intentions.replace_destination(&one, None).await.unwrap());
    assert!(matches!(
        intentions.exact("web", "db").await,
        Err(IntentionError::NotFound(_))
    ));
    assert_eq!(intentions.exact("api", "db").await.unwrap().id, api.id);
    intentions.delete_destination("db").await.unwrap();
    assert!(intentions.entry("db").await.unwrap().value.is_none());
    assert_eq!(
        intentions.list().await.unwrap().value,
        vec![intentions.get(&other.id).await.unwrap()]
    );

    // A bad source names its place in the entry; nothing changes.
    let bad = written(
        serde_json::json!([{"Name": "web", "Action": "allow"}, {"Name": "x/y", "Action": "allow"}]),
    );
    match intentions.replace_destination(&bad, None).await {
        Err(IntentionError::Invalid { field, .. }) => assert_eq!(field, "Sources[1].Name"),
        other => panic!("{other:?}"),
    }
    assert!(intentions.entry("db").await.unwrap().value.is_none());
}
