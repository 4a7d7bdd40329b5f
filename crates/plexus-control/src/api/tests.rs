//! Tests: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use plexus_api::{Catalog, CheckStatus};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::ControlPlane;
use crate::catalog::tests::fixtures::{check, proxy, registration, service};

use super::ServerInfo;

fn info() -> ServerInfo {
    ServerInfo {
        datacenter: "dc1".to_owned(),
        node_name: "server-1".to_owned(),
        leader_addr: "127.0.0.1:8300".to_owned(),
    }
}

struct Reply {
    status: StatusCode,
    index: Option<u64>,
    body: Value,
}

async fn get(router: &Router, uri: &str) -> Reply {
    let request = Request::get(uri).body(Body::empty()).unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let index = response
        .headers()
        .get("x-consul-index")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap();
    Reply {
        status,
        index,
        body,
    }
}

async fn plane_with_web(dir: &std::path::Path) -> ControlPlane {
    let plane = ControlPlane::open_embedded(dir, info()).unwrap();
    plane
        .catalog()
        .register(registration(
            "n1",
            vec![
                service("web-1", "web", &["v1", "a"]),
                proxy("web-1-sidecar-proxy", "web"),
            ],
            vec![
                check("web-alive", "web-1", CheckStatus::Passing),
                check("serf", "", CheckStatus::Passing),
            ],
        ))
        .await
        .unwrap();
    plane
        .catalog()
        .register(registration(
            "n2",
            vec![service("web-2", "web", &["v2", "a"])],
            vec![check("web-alive", "web-2", CheckStatus::Critical)],
        ))
        .await
        .unwrap();
    plane
}

#[tokio::test]
async fn catalog_endpoints_answer_in_consul_shape_with_index() {
    let dir = tempfile::tempdir().unwrap();
    let router = plane_with_web(dir.path()).await.router();
    let services = get(&router, "/v1/catalog/services").await;
    assert_eq!(services.status, StatusCode::OK);
    assert_eq!(services.index, Some(2));
    assert_eq!(
        services.body,
        json!({"web": ["a", "v1", "v2"], "web-sidecar-proxy": []})
    );
    let rows = get(&router, "/v1/catalog/service/web?tag=v2").await;
    assert_eq!(rows.index, Some(2));
    assert_eq!(rows.body.as_array().unwrap().len(), 1);
    assert_eq!(rows.body[0]["Node"], "n2");
    assert_eq!(rows.body[0]["ServiceID"], "web-2");
    assert_eq!(rows.body[0]["Datacenter"], "dc1");
    assert_eq!(rows.body[0]["CreateIndex"], 2);
    let nodes = get(&router, "/v1/catalog/nodes").await;
    let names: Vec<&str> = nodes
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["Node"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["n1", "n2"]);
}

#[tokio::test]
async fn health_endpoints_filter_and_sort() {
    let dir = tempfile::tempdir().unwrap();
    let router = plane_with_web(dir.path()).await.router();
    let all = get(&router, "/v1/health/service/web").await;
    assert_eq!(all.index, Some(2));
    assert_eq!(all.body.as_array().unwrap().len(), 2);
    assert_eq!(all.body[0]["Service"]["ID"], "web-1");
    assert_eq!(all.body[0]["Service"]["ModifyIndex"], 1);
    assert_eq!(all.body[0]["Checks"].as_array().unwrap().len(), 2);
    let passing = get(&router, "/v1/health/service/web?passing").await;
    assert_eq!(passing.body.as_array().unwrap().len(), 1);
    assert_eq!(passing.body[0]["Node"]["Node"], "n1");
    let connect = get(&router, "/v1/health/connect/web").await;
    assert_eq!(connect.body.as_array().unwrap().len(), 1);
    assert_eq!(connect.body[0]["Service"]["Kind"], "connect-proxy");
    assert_eq!(connect.body[0]["Checks"][0]["CheckID"], "serf");
    let checks = get(&router, "/v1/health/checks/web").await;
    assert_eq!(checks.body.as_array().unwrap().len(), 2);
    let critical = get(&router, "/v1/health/state/critical").await;
    assert_eq!(critical.index, Some(2));
    assert_eq!(critical.body.as_array().unwrap().len(), 1);
    assert_eq!(critical.body[0]["Node"], "n2");
    let any = get(&router, "/v1/health/state/any").await;
    assert_eq!(any.body.as_array().unwrap().len(), 3);
    let bad = get(&router, "/v1/health/state/maybe").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["error"]["field"], "state");
}

#[tokio::test]
async fn blocking_query_returns_early_when_the_catalog_changes() {
    let dir = tempfile::tempdir().unwrap();
    let plane = plane_with_web(dir.path()).await;
    let router = plane.router();
    let started = Instant::now();
    let waiting =
        tokio::spawn(async move { get(&router, "/v1/health/service/web?index=2&wait=30s").await });
    // Current-thread runtime: one yield runs the request until it parks in the blocking query.
    tokio::task::yield_now().await;
    assert!(
        !waiting.is_finished(),
        "the query blocks until the index moves"
    );
    plane
        .catalog()
        .update_check("n2", "web-alive", CheckStatus::Passing, "ok")
        .await
        .unwrap();
    let reply = waiting.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.index, Some(3));
    assert_eq!(reply.body[1]["Checks"][0]["Status"], "passing");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn blocking_query_returns_after_wait_without_changes() {
    let dir = tempfile::tempdir().unwrap();
    let router = plane_with_web(dir.path()).await.router();
    let started = Instant::now();
    let reply = get(&router, "/v1/catalog/nodes?index=2&wait=200ms").await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.index, Some(2));
}

/// With no config entries yet (the catalog's writes have moved the store's revision past the
/// config index), the index a config answer carries is one its next blocking query waits on:
/// each of these waits out its `wait` (tokio's paused clock) instead of answering at once, which
/// had every sidecar re-reading its discovery chain in a loop.
#[tokio::test(start_paused = true)]
async fn config_answers_carry_an_index_their_next_blocking_query_waits_on() {
    let dir = tempfile::tempdir().unwrap();
    let router = plane_with_web(dir.path()).await.router();
    for path in [
        "/v1/discovery-chain/web",
        "/v1/config/service-defaults",
        "/v1/config/service-defaults/web",
    ] {
        let first = get(&router, path).await;
        let index = first.index.unwrap();
        let started = tokio::time::Instant::now();
        let again = get(&router, &format!("{path}?index={index}&wait=30s")).await;
        assert!(
            started.elapsed() >= Duration::from_secs(30),
            "{path}?index={index} answered at once"
        );
        assert_eq!(
            (again.status, again.index),
            (first.status, Some(index)),
            "{path}"
        );
    }
}

#[tokio::test]
async fn bad_parameters_and_unknown_paths_answer_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let router = plane_with_web(dir.path()).await.router();
    let bad_wait = get(&router, "/v1/catalog/services?index=1&wait=soon").await;
    assert_eq!(bad_wait.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_wait.body["error"]["field"], "wait");
    let bad_index = get(&router, "/v1/health/service/web?index=x").await;
    assert_eq!(bad_index.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_index.body["error"]["field"], "index");
    let unknown = get(&router, "/v1/catalog/nope").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.body["error"]["code"], "not_found");
    let request = Request::delete("/v1/catalog/nodes")
        .body(Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn status_names_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let router = ControlPlane::open_embedded(dir.path(), info())
        .unwrap()
        .router();
    let leader = get(&router, "/v1/status/leader").await;
    assert_eq!(leader.body, json!("127.0.0.1:8300"));
    let peers = get(&router, "/v1/status/peers").await;
    assert_eq!(peers.body, json!(["127.0.0.1:8300"]));
    // An empty catalog still answers with an index header (at least 1, as Consul does).
    let services = get(&router, "/v1/catalog/services").await;
    assert_eq!((services.index, services.body), (Some(1), json!({})));
}

#[tokio::test]
async fn catalog_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let router = plane_with_web(dir.path()).await.router();
        get(&router, "/v1/health/service/web").await
    };
    let plane = ControlPlane::open_embedded(dir.path(), info()).unwrap();
    let catalog: std::sync::Arc<dyn Catalog> = plane.catalog();
    assert_eq!(*catalog.index_watch().borrow(), 2);
    let after = get(&plane.router(), "/v1/health/service/web").await;
    assert_eq!(after.index, before.index);
    assert_eq!(after.body, before.body);
}

#[tokio::test]
async fn every_read_answer_carries_query_meta_headers_404s_included() {
    let dir = tempfile::tempdir().unwrap();
    let plane = plane_with_web(dir.path()).await;
    let router = plane.router();
    let revision = *plane.store().revision_watch().borrow();
    for (uri, status) in [
        ("/v1/catalog/services", StatusCode::OK),
        ("/v1/kv/missing", StatusCode::NOT_FOUND),
        ("/v1/kv/missing?recurse", StatusCode::NOT_FOUND),
        ("/v1/no/such/endpoint", StatusCode::NOT_FOUND),
        ("/v1/health/state/bogus", StatusCode::BAD_REQUEST),
        ("/v1/acl/token/self", StatusCode::UNAUTHORIZED),
    ] {
        let request = Request::get(uri).body(Body::empty()).unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), status, "{uri}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .unwrap_or_else(|| panic!("{uri} lacks {name}"))
                .to_str()
                .unwrap()
                .to_owned()
        };
        let index: u64 = header("x-consul-index").parse().unwrap();
        assert!(
            index >= revision.max(1),
            "{uri}: index {index} < {revision}"
        );
        assert_eq!(header("x-consul-knownleader"), "true", "{uri}");
        assert_eq!(header("x-consul-lastcontact"), "0", "{uri}");
    }
}

#[tokio::test]
async fn node_reads_show_a_node_with_its_services_and_checks() {
    let dir = tempfile::tempdir().unwrap();
    let router = plane_with_web(dir.path()).await.router();
    let node = get(&router, "/v1/catalog/node/n1").await;
    assert_eq!(node.status, StatusCode::OK);
    assert!(node.index.unwrap() > 0);
    assert_eq!(node.body["Node"]["Node"], "n1");
    let services = node.body["Services"].as_object().unwrap();
    let mut ids: Vec<&String> = services.keys().collect();
    ids.sort();
    assert_eq!(ids, ["web-1", "web-1-sidecar-proxy"]);
    assert_eq!(services["web-1"]["Service"], "web");
    let listed = get(&router, "/v1/catalog/node-services/n1").await;
    assert_eq!(listed.body["Node"]["Node"], "n1");
    assert_eq!(listed.body["Services"].as_array().unwrap().len(), 2);
    let checks = get(&router, "/v1/health/node/n1").await;
    let mut names: Vec<&str> = checks
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["CheckID"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["serf", "web-alive"]);
    // Unknown nodes: null / [] with the index, as Consul answers.
    let unknown = get(&router, "/v1/catalog/node/nowhere").await;
    assert_eq!(
        (unknown.status, &unknown.body),
        (StatusCode::OK, &Value::Null)
    );
    assert!(unknown.index.is_some());
    let unknown = get(&router, "/v1/health/node/nowhere").await;
    assert_eq!(unknown.body, json!([]));
    let connect = get(&router, "/v1/catalog/connect/web").await;
    let ids: Vec<&str> = connect
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ServiceID"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["web-1-sidecar-proxy"], "{}", connect.body);
    assert_eq!(connect.body[0]["Node"], "n1");
    let dcs = get(&router, "/v1/catalog/datacenters").await;
    assert_eq!(dcs.body, json!(["dc1"]));
}
