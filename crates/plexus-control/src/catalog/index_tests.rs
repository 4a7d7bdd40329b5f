//! Tests of the in-memory catalog index: per-service modify indexes, shared answers, catching
//! up with writes it did not make.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use plexus_api::{Catalog, CheckStatus};

use super::Answer;
use crate::catalog::tests::fixtures::*;
use crate::catalog::{HealthFilter, StoreCatalog};
use crate::store::{EmbeddedStore, Op, Store, Txn};

/// The health and connect indexes of `name`, read after the index caught up with the store.
async fn indexes(catalog: &StoreCatalog, name: &str) -> (u64, u64) {
    let filter = HealthFilter::default();
    catalog.service_health(name, &filter).await.unwrap();
    let (_, health) = catalog.service_watch(Answer::Health, name).await.unwrap();
    let (_, connect) = catalog.service_watch(Answer::Connect, name).await.unwrap();
    (health(), connect())
}

#[tokio::test]
async fn a_service_index_moves_only_when_its_answer_may_change() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path());
    let web_check = check("web-1-alive", "web-1", CheckStatus::Passing);
    let first = catalog
        .register(registration(
            "n1",
            vec![service("web-1", "web", &[])],
            vec![web_check],
        ))
        .await
        .unwrap();
    let (web, web_connect) = indexes(&catalog, "web").await;
    assert!(web > 0 && web <= first, "{web} {first}");

    // Another service changing moves the store revision, not web's index.
    let api = catalog
        .register(registration(
            "n2",
            vec![service("api-1", "api", &[])],
            vec![],
        ))
        .await
        .unwrap();
    assert!(api > first);
    assert_eq!(indexes(&catalog, "web").await, (web, web_connect));
    assert_eq!(indexes(&catalog, "api").await.0, api);

    // Its check, its node, a proxy for it, its removal: each moves it.
    let checked = catalog
        .update_check("n1", "web-1-alive", CheckStatus::Critical, "down")
        .await
        .unwrap();
    assert_eq!(indexes(&catalog, "web").await.0, checked);
    let proxied = catalog
        .register(registration("n3", vec![proxy("web-proxy", "web")], vec![]))
        .await
        .unwrap();
    let (health, connect) = indexes(&catalog, "web").await;
    assert_eq!((health, connect), (checked, proxied));
    let gone = catalog.deregister_service("n1", "web-1").await.unwrap();
    assert_eq!(indexes(&catalog, "web").await.0, gone);
    let answer = catalog
        .service_health("web", &HealthFilter::default())
        .await
        .unwrap();
    assert!(answer.value.is_empty());
    // A service never seen waits for its first instance.
    assert_eq!(
        indexes(&catalog, "nothing").await.0,
        indexes(&catalog, "nothing").await.0
    );
}

#[tokio::test]
async fn one_serialised_answer_is_shared_until_the_service_changes() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path());
    catalog
        .register(registration(
            "n1",
            vec![service("web-1", "web", &[])],
            vec![],
        ))
        .await
        .unwrap();
    let filter = HealthFilter::default();
    let a = catalog
        .health_json(Answer::Health, "web", &filter)
        .await
        .unwrap();
    catalog
        .register(registration(
            "n2",
            vec![service("api-1", "api", &[])],
            vec![],
        ))
        .await
        .unwrap();
    let b = catalog
        .health_json(Answer::Health, "web", &filter)
        .await
        .unwrap();
    // The same bytes (not a copy), under the newer store revision.
    assert_eq!(a.value.as_ptr(), b.value.as_ptr());
    assert!(b.index > a.index);
    let decoded: Vec<plexus_api::ServiceEntry> = serde_json::from_slice(&b.value).unwrap();
    assert_eq!(decoded.len(), 1);
    catalog
        .register(registration(
            "n3",
            vec![service("web-3", "web", &[])],
            vec![],
        ))
        .await
        .unwrap();
    let c = catalog
        .health_json(Answer::Health, "web", &filter)
        .await
        .unwrap();
    let decoded: Vec<plexus_api::ServiceEntry> = serde_json::from_slice(&c.value).unwrap();
    let ids: Vec<&str> = decoded.iter().map(|e| e.service.id.as_str()).collect();
    assert_eq!(ids, ["web-1", "web-3"]);
}

/// Writes the index did not make (another server over the same store) are seen, and a revision
/// that carried no change (the watch has nothing to deliver) does not hold up a read: the watch's
/// progress answer says nothing is missing. The index stays the revision of the data.
#[tokio::test]
async fn reads_see_writes_of_another_catalog_and_revisions_without_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let ours = StoreCatalog::new(Arc::clone(&store), "dc1");
    let theirs = StoreCatalog::new(Arc::clone(&store), "dc1");
    let filter = HealthFilter::default();
    assert!(
        ours.service_health("web", &filter)
            .await
            .unwrap()
            .value
            .is_empty()
    );
    let index = theirs
        .register(registration(
            "n1",
            vec![service("web-1", "web", &[])],
            vec![],
        ))
        .await
        .unwrap();
    let read = ours.service_health("web", &filter).await.unwrap();
    assert_eq!((read.index, read.value.len()), (index, 1));

    let empty = store
        .txn(Txn {
            compares: vec![],
            ops: vec![Op::Delete {
                key: "absent".to_owned(),
            }],
        })
        .await
        .unwrap();
    assert!(empty.revision > index);
    assert!(ours.store().current_revision().await.unwrap() >= empty.revision);
    let read = ours.service_health("web", &filter).await.unwrap();
    assert_eq!((read.index, read.value.len()), (index, 1));
}

/// A registration takes the node's revision and checks from the index (no store read); when
/// the index lags a write another replica made, the compare fails and the next attempt reads
/// the store, so nothing the other replica wrote is lost or left behind.
#[tokio::test]
async fn a_registration_through_a_lagging_index_still_lands_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let ours = StoreCatalog::new(Arc::clone(&store), "dc1");
    let theirs = StoreCatalog::new(Arc::clone(&store), "dc1");
    let filter = HealthFilter::default();
    ours.service_health("a", &filter).await.unwrap();
    for round in 0..20 {
        let a = format!("a-{round}");
        theirs
            .register(registration(
                "n1",
                vec![service(&a, "a", &[])],
                vec![check(&format!("{a}-alive"), &a, CheckStatus::Passing)],
            ))
            .await
            .unwrap();
        // At once, before our index may have seen it: re-register a-{round} without its check
        // (which must delete it) and add b-{round}.
        ours.register(registration(
            "n1",
            vec![
                service(&a, "a", &[]),
                service(&format!("b-{round}"), "b", &[]),
            ],
            vec![],
        ))
        .await
        .unwrap();
        let a_now = ours.service_health("a", &filter).await.unwrap().value;
        let ids: Vec<&str> = a_now.iter().map(|e| e.service.id.as_str()).collect();
        assert!(ids.contains(&a.as_str()), "{ids:?}");
        let this = a_now.iter().find(|e| e.service.id == a).unwrap();
        assert!(this.checks.is_empty(), "{:?}", this.checks);
        assert_eq!(
            ours.service_health("b", &filter).await.unwrap().value.len(),
            round + 1
        );
    }
}

/// The catalog-wide topics move for their own kind of record: a check update moves the checks
/// and that service's health, not the service list, the node list or the catalog view of the
/// service; a new service moves the service list, not the checks.
#[tokio::test]
async fn catalog_topics_move_for_their_own_records() {
    use super::Topic;
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path());
    catalog
        .register(registration(
            "n1",
            vec![service("web-1", "web", &[])],
            vec![check("web-1-alive", "web-1", CheckStatus::Passing)],
        ))
        .await
        .unwrap();
    let topics = [
        Topic::Services,
        Topic::Nodes,
        Topic::Checks,
        Topic::Service("web".to_owned()),
        Topic::Health("web".to_owned()),
        Topic::Node("n1".to_owned()),
    ];
    let read = async || {
        catalog.nodes().await.unwrap();
        let mut indexes = Vec::new();
        for topic in &topics {
            let (_, index_of) = catalog.topic_watch(topic.clone()).await.unwrap();
            indexes.push(index_of());
        }
        indexes
    };
    let before = read().await;
    let checked = catalog
        .update_check("n1", "web-1-alive", CheckStatus::Critical, "down")
        .await
        .unwrap();
    let after = read().await;
    assert_eq!(
        after[..2],
        before[..2],
        "services or nodes moved for a check"
    );
    assert_eq!(after[3], before[3], "the catalog view moved for a check");
    assert_eq!((after[2], after[4], after[5]), (checked, checked, checked));

    let added = catalog
        .register(registration(
            "n2",
            vec![service("api-1", "api", &[])],
            vec![],
        ))
        .await
        .unwrap();
    let later = read().await;
    assert_eq!((later[0], later[1]), (added, added));
    assert_eq!(later[2], checked, "checks moved without a check");
    assert_eq!(
        (later[3], later[4], later[5]),
        (after[3], after[4], after[5])
    );
}

/// DNS's projection of an answer holds what the full entries say of each instance: node and
/// its address, own address, port, aggregated status (node checks included), weights; tags and
/// the mesh answer filter the same way.
#[tokio::test]
async fn dns_reads_the_same_instances_as_the_health_answer_without_their_definitions() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path());
    let mut own_address = service("web-2", "web", &["v2"]);
    own_address.address = "10.0.0.9".to_owned();
    own_address.port = 9090;
    own_address.weights.passing = 7;
    catalog
        .register(registration(
            "n1",
            vec![service("web-1", "web", &["v1"]), own_address],
            vec![
                check("web-1-alive", "web-1", CheckStatus::Passing),
                check("web-2-alive", "web-2", CheckStatus::Critical),
            ],
        ))
        .await
        .unwrap();
    let mut n2 = registration(
        "n2",
        vec![service("web-3", "web", &["v1"]), proxy("web-proxy", "web")],
        vec![check("n2-disk", "", CheckStatus::Warning)],
    );
    n2.node.address = "10.0.0.2".to_owned();
    catalog.register(n2).await.unwrap();

    for (answer, tag) in [
        (Answer::Health, None),
        (Answer::Health, Some("v1")),
        (Answer::Health, Some("none")),
        (Answer::Connect, None),
    ] {
        let filter = HealthFilter {
            tag: tag.map(str::to_owned),
            passing: false,
        };
        let full = match answer {
            Answer::Health => catalog.service_health("web", &filter).await,
            Answer::Connect => catalog.connect_health("web", &filter).await,
        }
        .unwrap()
        .value;
        let expected: Vec<super::Reachable> = full
            .iter()
            .map(|e| super::Reachable {
                node: e.node.node.clone(),
                node_address: e.node.address.clone(),
                address: e.service.address.clone(),
                port: e.service.port,
                status: e.aggregated_status(),
                weights: e.service.weights,
            })
            .collect();
        let reachable = catalog.instances_stale(answer, "web", tag).await.unwrap();
        assert_eq!(reachable, expected, "{answer:?} {tag:?}");
    }
    let all = catalog
        .instances_stale(Answer::Health, "web", None)
        .await
        .unwrap();
    let summary: Vec<(&str, u16, CheckStatus, i64)> = all
        .iter()
        .map(|r| (r.dial_address(), r.port, r.status, r.weights.passing))
        .collect();
    assert_eq!(
        summary,
        [
            ("10.0.0.1", 8080, CheckStatus::Passing, 1),
            ("10.0.0.9", 9090, CheckStatus::Critical, 7),
            ("10.0.0.2", 8080, CheckStatus::Warning, 1),
        ]
    );
}
