//! Tests: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use axum::Router;
use axum::body::Body;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use plexus_api::{Catalog, CheckStatus};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::catalog::tests::fixtures::{check, registration, service};
use crate::{ControlPlane, ServerInfo};

async fn call(router: &Router, method: Method, uri: &str, body: &str) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn plane(dir: &std::path::Path) -> ControlPlane {
    let plane = ControlPlane::open_embedded(
        dir,
        ServerInfo {
            datacenter: "dc1".to_owned(),
            node_name: "server-1".to_owned(),
            leader_addr: "127.0.0.1:8300".to_owned(),
        },
    )
    .unwrap();
    let mut canary = service("web-2", "web", &["v2", "canary"]);
    canary.meta.insert("version".into(), "2".into());
    for (node, services, checks) in [
        (
            "n1",
            vec![service("web-1", "web", &["v1"])],
            vec![check("web-1-alive", "web-1", CheckStatus::Passing)],
        ),
        (
            "n2",
            vec![canary],
            vec![check("web-2-alive", "web-2", CheckStatus::Warning)],
        ),
        (
            "n3",
            vec![service("web-3", "web", &["v1"])],
            vec![check("web-3-alive", "web-3", CheckStatus::Critical)],
        ),
    ] {
        plane
            .catalog()
            .register(registration(node, services, checks))
            .await
            .unwrap();
    }
    plane
}

fn ids(executed: &Value) -> Vec<String> {
    let mut ids: Vec<String> = executed["Nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["Service"]["ID"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn queries_are_created_listed_executed_by_id_or_name_updated_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let router = plane(dir.path()).await.router();
    let (status, created) = call(
        &router,
        Method::POST,
        "/v1/query",
        r#"{"Name":"web-any","Token":"s3cret","Service":{"Service":"web"},"DNS":{"TTL":"10s"}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let id = created["ID"].as_str().unwrap().to_owned();

    // Not critical by default: web-1 (passing) and web-2 (warning).
    let (status, executed) = call(&router, Method::GET, "/v1/query/web-any/execute", "").await;
    assert_eq!(status, StatusCode::OK, "{executed}");
    assert_eq!(ids(&executed), ["web-1", "web-2"]);
    assert_eq!(executed["Service"], "web");
    assert_eq!(executed["Datacenter"], "dc1");
    assert_eq!(executed["DNS"]["TTL"], "10s");
    assert_eq!(executed["Failovers"], 0);
    let (_, by_id) = call(&router, Method::GET, &format!("/v1/query/{id}/execute"), "").await;
    assert_eq!(ids(&by_id), ["web-1", "web-2"]);

    // Reads hide the token.
    let (_, listed) = call(&router, Method::GET, "/v1/query", "").await;
    assert_eq!(listed[0]["ID"], id.as_str());
    assert_eq!(listed[0]["Token"], "<hidden>");
    let (_, one) = call(&router, Method::GET, &format!("/v1/query/{id}"), "").await;
    assert_eq!(one[0]["Name"], "web-any");
    assert!(!one.to_string().contains("s3cret"));

    // Update: only passing instances with tag v1 and not canary; the hidden token is kept.
    let (status, body) = call(
        &router,
        Method::PUT,
        &format!("/v1/query/{id}"),
        r#"{"Name":"web-any","Token":"<hidden>","Service":{"Service":"web","OnlyPassing":true,"Tags":["v1","!canary"]}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, executed) = call(&router, Method::GET, "/v1/query/web-any/execute", "").await;
    assert_eq!(ids(&executed), ["web-1"]);

    // Service meta, and ignoring a check.
    let (_, second) = call(
        &router,
        Method::POST,
        "/v1/query",
        r#"{"Name":"web-v2","Service":{"Service":"web","ServiceMeta":{"version":"2"},"OnlyPassing":true,"IgnoreCheckIDs":["web-2-alive"]}}"#,
    )
    .await;
    let (_, executed) = call(&router, Method::GET, "/v1/query/web-v2/execute", "").await;
    assert_eq!(ids(&executed), ["web-2"], "{second}");

    let (status, _) = call(&router, Method::DELETE, &format!("/v1/query/{id}"), "").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&router, Method::GET, "/v1/query/web-any/execute", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_queries_are_refused_naming_the_field_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let router = plane(dir.path()).await.router();
    let (status, _) = call(
        &router,
        Method::POST,
        "/v1/query",
        r#"{"Name":"q","Service":{"Service":"web"}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for (body, field) in [
        (r#"{"Name":"x"}"#, "Service.Service"),
        (r#"{"Name":"q","Service":{"Service":"web"}}"#, "Name"),
        (
            r#"{"Name":"y","Service":{"Service":"web","Tags":[""]}}"#,
            "Service.Tags",
        ),
        (
            r#"{"Name":"y","Service":{"Service":"web"},"DNS":{"TTL":"soon"}}"#,
            "DNS.TTL",
        ),
        (
            r#"{"Name":"y","Service":{"Service":"web","OnlyPassing":"yes"}}"#,
            "Service.OnlyPassing",
        ),
        (r#"{"Name":"y","Servce":{"Service":"web"}}"#, "Servce"),
        ("not json", ""),
    ] {
        let (status, answer) = call(&router, Method::POST, "/v1/query", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        let text = answer.to_string();
        assert!(text.contains(field), "{body}: {answer}");
    }
    let (_, listed) = call(&router, Method::GET, "/v1/query", "").await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["Name"], json!("q"));
    let (status, _) = call(&router, Method::GET, "/v1/query/nope/execute", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn templates_answer_names_they_prefix_and_lower_case_fields_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let router = plane(dir.path()).await.router();
    // As py-consul sends it: lower-case fields, a template on every query.
    let (status, created) = call(
        &router,
        Method::POST,
        "/v1/query",
        r#"{"name":"geo-","service":{"service":"${match(1)}","onlypassing":true,"tags":["${match(2)}"]},
            "template":{"type":"name_prefix_match","regexp":"^geo-([a-z]+)-(v[0-9])$"},"dns":{"ttl":"5s"}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let (status, executed) = call(&router, Method::GET, "/v1/query/geo-web-v1/execute", "").await;
    assert_eq!(status, StatusCode::OK, "{executed}");
    assert_eq!(executed["Service"], "web");
    assert_eq!(ids(&executed), ["web-1"]);
    let (_, executed) = call(&router, Method::GET, "/v1/query/geo-db-v1/execute", "").await;
    assert_eq!(ids(&executed), Vec::<String>::new());
    let (status, answer) = call(
        &router,
        Method::POST,
        "/v1/query",
        r#"{"Name":"t","Service":{"Service":"web"},"Template":{"Type":"prefix"}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(answer.to_string().contains("Template.Type"), "{answer}");
}
