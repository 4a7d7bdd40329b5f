//! Tests: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use plexus_api::{AgentProxy, Node};

use super::*;
use crate::store::EmbeddedStore;

/// Test fixtures shared with the HTTP API tests.
pub(crate) mod fixtures {
    use super::*;

    pub fn catalog(dir: &Path) -> StoreCatalog {
        let store = EmbeddedStore::open(dir).unwrap();
        StoreCatalog::new(Arc::new(store), "dc1")
    }

    pub fn node(name: &str) -> Node {
        Node {
            id: format!("{name}-id"),
            node: name.to_owned(),
            address: "10.0.0.1".to_owned(),
            ..Node::default()
        }
    }

    pub fn service(id: &str, name: &str, tags: &[&str]) -> AgentService {
        AgentService {
            id: id.to_owned(),
            service: name.to_owned(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            port: 8080,
            ..AgentService::default()
        }
    }

    pub fn proxy(id: &str, destination: &str) -> AgentService {
        AgentService {
            kind: ServiceKind::ConnectProxy,
            proxy: Some(AgentProxy {
                destination_service_name: destination.to_owned(),
                ..AgentProxy::default()
            }),
            ..service(id, &format!("{destination}-sidecar-proxy"), &[])
        }
    }

    pub fn check(id: &str, service_id: &str, status: CheckStatus) -> HealthCheck {
        HealthCheck {
            check_id: id.to_owned(),
            name: id.to_owned(),
            service_id: service_id.to_owned(),
            status,
            ..HealthCheck::default()
        }
    }

    pub fn registration(
        node_name: &str,
        services: Vec<AgentService>,
        checks: Vec<HealthCheck>,
    ) -> Registration {
        Registration {
            node: node(node_name),
            services,
            checks,
        }
    }
}

use fixtures::*;
use plexus_api::ServiceKind;

fn ids(checks: &[HealthCheck]) -> Vec<&str> {
    checks.iter().map(|c| c.check_id.as_str()).collect()
}

#[tokio::test]
async fn register_reads_back_with_indexes_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path());
    let mut web = service("web-1", "web", &["v1"]);
    web.create_index = Some(999); // never trusted
    let index = catalog
        .register(registration(
            "n1",
            vec![web],
            vec![check("web-alive", "web-1", CheckStatus::Passing)],
        ))
        .await
        .unwrap();
    assert_eq!(index, 1);
    assert_eq!(*catalog.index_watch().borrow(), 1);
    let services = catalog.node_services("n1").await.unwrap();
    assert_eq!(services.index, 1);
    assert_eq!(services.value.len(), 1);
    let web = &services.value[0];
    assert_eq!((web.create_index, web.modify_index), (Some(1), Some(1)));
    assert_eq!(web.datacenter, "dc1");
    let checks = catalog.node_checks("n1").await.unwrap().value;
    assert_eq!(checks[0].node, "n1");
    assert_eq!(checks[0].service_name, "web");
    assert_eq!(checks[0].service_tags, ["v1"]);
    assert!(catalog.node_services("n10").await.unwrap().value.is_empty());
}

#[tokio::test]
async fn re_register_replaces_the_service_checks_only() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path());
    catalog
        .register(registration(
            "n1",
            vec![service("web-1", "web", &[]), service("db-1", "db", &[])],
            vec![
                check("web-a", "web-1", CheckStatus::Passing),
                check("web-b", "web-1", CheckStatus::Passing),
                check("db-a", "db-1", CheckStatus::Passing),
                check("serf", "", CheckStatus::Passing),
            ],
        ))
        .await
        .unwrap();
    catalog
        .register(registration(
            "n1",
            vec![service("web-1", "web", &["v2"])],
            vec![check("web-c", "web-1", CheckStatus::Critical)],
        ))
        .await
        .unwrap();
    let checks = catalog.node_checks("n1").await.unwrap().value;
    assert_eq!(ids(&checks), ["db-a", "serf", "web-c"]);
    // A check may name a service stored by an earlier registration, but not an unknown one.
    catalog
        .register(registration(
            "n1",
            vec![],
            vec![check("db-b", "db-1", CheckStatus::Passing)],
        ))
        .await
        .unwrap();
    let err = catalog
        .register(registration(
            "n1",
            vec![],
            vec![check("x", "nope", CheckStatus::Passing)],
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CatalogError::NotFound {
                kind: "service",
                ..
            }
        ),
        "{err:?}"
    );
}

/// Catalog hygiene: a service leaves with its sidecar (and the sidecar's checks) in one write,
/// whoever deregisters it; a proxy fronting another instance, or another node's, stays.
#[tokio::test]
async fn deregister_service_takes_its_sidecar_along() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path());
    let fronting = |id: &str, instance: &str, name: &str| {
        let mut proxy = proxy(id, name);
        if let Some(p) = proxy.proxy.as_mut() {
            p.destination_service_id = instance.to_owned();
        }
        proxy
    };
    for node in ["n1", "n2"] {
        catalog
            .register(registration(
                node,
                vec![
                    service("web-1", "web", &[]),
                    service("web-2", "web", &[]),
                    fronting("web-1-sidecar-proxy", "web-1", "web"),
                    fronting("web-2-sidecar-proxy", "web-2", "web"),
                ],
                vec![
                    check("web-1-tcp", "web-1", CheckStatus::Passing),
                    check("web-1-alias", "web-1-sidecar-proxy", CheckStatus::Passing),
                    check("web-2-alias", "web-2-sidecar-proxy", CheckStatus::Passing),
                ],
            ))
            .await
            .unwrap();
    }
    let before = catalog.node_services("n1").await.unwrap().index;
    let index = catalog.deregister_service("n1", "web-1").await.unwrap();
    assert_eq!(index, before + 1, "one write");
    let left: Vec<String> = catalog
        .node_services("n1")
        .await
        .unwrap()
        .value
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(left, ["web-2", "web-2-sidecar-proxy"]);
    assert_eq!(
        ids(&catalog.node_checks("n1").await.unwrap().value),
        ["web-2-alias"]
    );
    assert_eq!(catalog.node_services("n2").await.unwrap().value.len(), 4);
}

#[tokio::test]
async fn deregister_service_removes_its_checks_and_reports_absence() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path());
    catalog
        .register(registration(
            "n1",
            vec![service("web/1", "web", &[]), service("db-1", "db", &[])],
            vec![
                check("web-a", "web/1", CheckStatus::Passing),
                check("db-a", "db-1", CheckStatus::Passing),
            ],
        ))
        .await
        .unwrap();
    let index = catalog.deregister_service("n1", "web/1").await.unwrap();
    assert_eq!(index, 2);
    let services = catalog.node_services("n1").await.unwrap().value;
    assert_eq!(
        services.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["db-1"]
    );
    assert_eq!(
        ids(&catalog.node_checks("n1").await.unwrap().value),
        ["db-a"]
    );
    let err = catalog.deregister_service("n1", "web/1").await.unwrap_err();
    assert!(matches!(
        err,
        CatalogError::NotFound {
            kind: "service",
            ..
        }
    ));

    assert_eq!(catalog.deregister_check("n1", "db-a").await.unwrap(), 3);
    let err = catalog.deregister_check("n1", "db-a").await.unwrap_err();
    assert!(matches!(err, CatalogError::NotFound { kind: "check", .. }));
}

#[tokio::test]
async fn deregister_node_removes_it_with_its_records_and_leaves_others() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path());
    catalog
        .register(registration(
            "n/1",
            vec![service("web-1", "web", &[])],
            vec![
                check("web-a", "web-1", CheckStatus::Passing),
                check("serf", "", CheckStatus::Passing),
            ],
        ))
        .await
        .unwrap();
    catalog
        .register(registration(
            "n2",
            vec![service("web-2", "web", &[])],
            Vec::new(),
        ))
        .await
        .unwrap();
    let index = catalog.deregister_node("n/1").await.unwrap();
    assert_eq!(index, Some(3), "one transaction");
    assert!(catalog.node_services("n/1").await.unwrap().value.is_empty());
    assert!(catalog.node_checks("n/1").await.unwrap().value.is_empty());
    let nodes = catalog.nodes().await.unwrap().value;
    assert_eq!(
        nodes.iter().map(|n| n.node.as_str()).collect::<Vec<_>>(),
        ["n2"]
    );
    assert_eq!(catalog.node_services("n2").await.unwrap().value.len(), 1);
    assert_eq!(catalog.deregister_node("n/1").await.unwrap(), None);
}

#[tokio::test]
async fn update_check_writes_only_when_something_changed() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path());
    catalog
        .register(registration(
            "n1",
            vec![service("web-1", "web", &[])],
            vec![check("web-a", "web-1", CheckStatus::Critical)],
        ))
        .await
        .unwrap();
    let mut watch = catalog.index_watch();
    watch.borrow_and_update();
    let index = catalog
        .update_check("n1", "web-a", CheckStatus::Passing, "ok")
        .await
        .unwrap();
    assert_eq!(index, 2);
    assert!(watch.has_changed().unwrap());
    watch.borrow_and_update();
    let same = catalog
        .update_check("n1", "web-a", CheckStatus::Passing, "ok")
        .await
        .unwrap();
    assert_eq!(same, 2, "no write, index does not move");
    assert!(!watch.has_changed().unwrap());
    let check = &catalog.node_checks("n1").await.unwrap().value[0];
    assert_eq!(
        (check.status, check.output.as_str()),
        (CheckStatus::Passing, "ok")
    );
    assert_eq!((check.create_index, check.modify_index), (1, 2));
    let err = catalog
        .update_check("n1", "nope", CheckStatus::Passing, "")
        .await
        .unwrap_err();
    assert!(matches!(err, CatalogError::NotFound { kind: "check", .. }));
}

#[tokio::test]
async fn health_includes_node_checks_and_filters_passing_and_tag() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path());
    catalog
        .register(registration(
            "n1",
            vec![service("web-1", "web", &["v1"])],
            vec![
                check("web-a", "web-1", CheckStatus::Passing),
                check("serf", "", CheckStatus::Passing),
            ],
        ))
        .await
        .unwrap();
    catalog
        .register(registration(
            "n2",
            vec![service("web-2", "web", &["v2"])],
            vec![check("web-a", "web-2", CheckStatus::Warning)],
        ))
        .await
        .unwrap();
    let all = catalog
        .service_health("web", &HealthFilter::default())
        .await
        .unwrap();
    assert_eq!(all.index, 2);
    assert_eq!(all.value.len(), 2);
    assert_eq!(ids(&all.value[0].checks), ["serf", "web-a"]);
    assert_eq!(all.value[0].node.node, "n1");
    assert_eq!(all.value[1].node.node, "n2");
    let passing = HealthFilter {
        passing: true,
        ..HealthFilter::default()
    };
    let healthy = catalog.service_health("web", &passing).await.unwrap().value;
    assert_eq!(healthy.len(), 1);
    assert_eq!(healthy[0].service.id, "web-1");
    let tagged = HealthFilter {
        tag: Some("v2".to_owned()),
        passing: false,
    };
    let v2 = catalog.service_health("web", &tagged).await.unwrap().value;
    assert_eq!(v2.len(), 1);
    assert_eq!(v2[0].service.id, "web-2");

    let warning = catalog
        .checks_in_state(Some(CheckStatus::Warning))
        .await
        .unwrap();
    assert_eq!(warning.value.len(), 1);
    assert_eq!(warning.value[0].node, "n2");
    assert_eq!(catalog.checks_in_state(None).await.unwrap().value.len(), 3);
    assert_eq!(
        ids(&catalog.service_checks("web").await.unwrap().value),
        ["web-a", "web-a"]
    );
    let names = catalog.service_names().await.unwrap().value;
    assert_eq!(names["web"], ["v1", "v2"]);
    let rows = catalog
        .service_nodes("web", Some("v1"))
        .await
        .unwrap()
        .value;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].node.as_str(), rows[0].datacenter.as_str()),
        ("n1", "dc1")
    );
    assert_eq!(catalog.nodes().await.unwrap().value.len(), 2);
}

#[tokio::test]
async fn connect_finds_proxies_and_native_instances() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path());
    let mut native = service("api-1", "api", &[]);
    native.connect = Some(serde_json::json!({"Native": true}));
    catalog
        .register(registration(
            "n1",
            vec![
                service("web-1", "web", &[]),
                proxy("web-1-sidecar-proxy", "web"),
                proxy("db-1-sidecar-proxy", "db"),
                native,
            ],
            vec![],
        ))
        .await
        .unwrap();
    let web = catalog
        .connect_health("web", &HealthFilter::default())
        .await
        .unwrap()
        .value;
    assert_eq!(web.len(), 1);
    assert_eq!(web[0].service.id, "web-1-sidecar-proxy");
    let api = catalog
        .connect_health("api", &HealthFilter::default())
        .await
        .unwrap()
        .value;
    assert_eq!(api.len(), 1);
    assert_eq!(api[0].service.id, "api-1");
}

#[test]
fn keys_escape_separators() {
    assert_eq!(
        keys::service("n/1", "a%b/c"),
        "catalog/services/n%2F1/a%25b%2Fc"
    );
    assert_eq!(
        keys::node_of(keys::SERVICES, "catalog/services/n%2F1/x").as_deref(),
        Some("n/1")
    );
    assert_eq!(keys::unescape(&keys::escape("%2F/%")), "%2F/%");
}

/// Reads come from the in-memory index; a write moves the revision, and the next read waits for
/// the index to apply it, so it shows the write (and reads at an unchanged revision keep showing
/// the same data).
#[tokio::test]
async fn a_read_after_a_write_sees_it_despite_the_in_memory_index() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path());
    let filter = HealthFilter::default();
    let first = catalog
        .register(registration(
            "n1",
            vec![service("web-1", "web", &[])],
            vec![],
        ))
        .await
        .unwrap();
    let before = catalog.service_health("web", &filter).await.unwrap();
    let again = catalog.service_health("web", &filter).await.unwrap();
    assert_eq!((before.index, before.value.len()), (first, 1));
    assert_eq!((again.index, again.value.len()), (first, 1));
    for i in 2..=5 {
        let index = catalog
            .register(registration(
                &format!("n{i}"),
                vec![service(&format!("web-{i}"), "web", &[])],
                vec![],
            ))
            .await
            .unwrap();
        let after = catalog.service_health("web", &filter).await.unwrap();
        assert_eq!((after.index, after.value.len()), (index, i));
    }
    catalog.deregister_service("n1", "web-1").await.unwrap();
    let gone = catalog.service_health("web", &filter).await.unwrap();
    assert!(gone.value.iter().all(|e| e.service.id != "web-1"));
    assert_eq!(gone.value.len(), 4);
}
