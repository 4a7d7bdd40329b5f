//! Lease truth and catalog hygiene of remote agents' nodes, over the embedded store with real
//! (short) lease expiry and the reaper running.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use plexus_api::remote::LEASE_CHECK_ID;
use plexus_api::{Catalog, CheckStatus, GoDuration};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::catalog::HealthFilter;
use crate::catalog::tests::fixtures::{catalog, check, proxy, registration, service};

const TTL: Duration = Duration::from_secs(1);

async fn lease_status(catalog: &StoreCatalog, node: &str) -> Option<CheckStatus> {
    let checks = catalog.node_checks(node).await.unwrap().value;
    checks
        .into_iter()
        .find(|c| c.check_id == LEASE_CHECK_ID)
        .map(|c| c.status)
}

async fn passing_web(catalog: &StoreCatalog) -> usize {
    let filter = HealthFilter {
        passing: true,
        ..HealthFilter::default()
    };
    let json = catalog
        .health_json(crate::catalog::Answer::Health, "web", &filter)
        .await
        .unwrap();
    serde_json::from_slice::<Vec<serde_json::Value>>(&json.value)
        .unwrap()
        .len()
}

/// From the moment a lease lapses until the next grant the node's lease check is critical and no
/// instance on it passes, even when a check write says passing; a new grant makes it pass.
#[tokio::test]
async fn a_node_without_its_lease_is_critical_whatever_its_checks_say() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Arc::new(catalog(dir.path()));
    let stop = CancellationToken::new();
    tokio::spawn(reaper::run(Arc::clone(&catalog), stop.clone()));
    catalog
        .register(registration(
            "n1",
            vec![service("web-1", "web", &[])],
            vec![check("web-1-tcp", "web-1", CheckStatus::Passing)],
        ))
        .await
        .unwrap();
    let lease = grant(&catalog, "n1", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        lease_status(&catalog, "n1").await,
        Some(CheckStatus::Passing)
    );
    assert_eq!(passing_web(&catalog).await, 1);

    // The lease ends (as when it lapses) and the reaper marks the node.
    catalog.store().lease_revoke(lease).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while lease_status(&catalog, "n1").await != Some(CheckStatus::Critical) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never marked critical"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(passing_web(&catalog).await, 0);
    // The agent's check write goes through, and changes nothing about the node's health.
    catalog
        .update_check("n1", "web-1-tcp", CheckStatus::Warning, "")
        .await
        .unwrap();
    catalog
        .update_check("n1", "web-1-tcp", CheckStatus::Passing, "")
        .await
        .unwrap();
    assert_eq!(passing_web(&catalog).await, 0);

    grant(&catalog, "n1", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        lease_status(&catalog, "n1").await,
        Some(CheckStatus::Passing)
    );
    assert_eq!(passing_web(&catalog).await, 1);
    stop.cancel();
}

/// A late "lease lapsed" never overwrites a newer grant; a new node waits critical for its
/// first lease, and registering again does not undo a grant.
#[tokio::test]
async fn marking_critical_needs_the_lease_to_be_gone() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Arc::new(catalog(dir.path()));
    await_lease(&catalog, "n1").await.unwrap();
    assert_eq!(
        lease_status(&catalog, "n1").await,
        Some(CheckStatus::Critical)
    );
    grant(&catalog, "n1", Duration::from_secs(30))
        .await
        .unwrap();
    await_lease(&catalog, "n1").await.unwrap();
    assert!(!mark_critical(&catalog, "n1").await.unwrap());
    assert_eq!(
        lease_status(&catalog, "n1").await,
        Some(CheckStatus::Passing)
    );
    assert!(mark_critical(&catalog, "n2").await.unwrap());
}

/// `deregister_critical_service_after` on a node whose lease lapsed removes the service and its
/// sidecar (no orphaned `*-sidecar-proxy`), and only that service.
#[tokio::test]
async fn an_expired_node_loses_its_services_with_their_sidecars() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Arc::new(catalog(dir.path()));
    let stop = CancellationToken::new();
    tokio::spawn(reaper::run(Arc::clone(&catalog), stop.clone()));
    let mut sidecar = proxy("web-1-sidecar-proxy", "web");
    if let Some(p) = sidecar.proxy.as_mut() {
        p.destination_service_id = "web-1".into();
    }
    let mut tcp = check("web-1-tcp", "web-1", CheckStatus::Passing);
    tcp.definition.deregister_critical_service_after = Some(GoDuration(Duration::from_millis(500)));
    catalog
        .register(registration(
            "n1",
            vec![
                service("web-1", "web", &[]),
                sidecar,
                service("db-1", "db", &[]),
            ],
            vec![
                tcp,
                check("web-1-alias", "web-1-sidecar-proxy", CheckStatus::Passing),
                check("db-1-tcp", "db-1", CheckStatus::Passing),
            ],
        ))
        .await
        .unwrap();
    grant(&catalog, "n1", TTL).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<String> = catalog
            .node_services("n1")
            .await
            .unwrap()
            .value
            .into_iter()
            .map(|s| s.id)
            .collect();
        if left == ["db-1"] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "left: {left:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let checks: Vec<String> = catalog
        .node_checks("n1")
        .await
        .unwrap()
        .value
        .into_iter()
        .map(|c| c.check_id)
        .collect();
    assert_eq!(checks, ["db-1-tcp", LEASE_CHECK_ID]);
    stop.cancel();
}
