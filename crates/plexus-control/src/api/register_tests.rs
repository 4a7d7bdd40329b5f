//! `PUT /v1/catalog/register`, `/v1/catalog/deregister` and `GET /v1/agent/members` through
//! the control plane's router.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use plexus_api::acl::{Access, Authorizer, DefaultPolicy, Resource, Rules, SecretId};
use plexus_runtime::acl::{Resolve, ResolveError, Resolver};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::ServerInfo;
use crate::ControlPlane;

fn plane(dir: &std::path::Path) -> ControlPlane {
    let info = ServerInfo {
        datacenter: "dc1".to_owned(),
        node_name: "server-1".to_owned(),
        leader_addr: "127.0.0.1:8300".to_owned(),
    };
    ControlPlane::open_embedded(dir, info).unwrap()
}

async fn call(router: &Router, method: Method, uri: &str, body: &Value) -> (StatusCode, Value) {
    let body = if body.is_null() {
        Body::empty()
    } else {
        Body::from(body.to_string())
    };
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(body)
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn put(router: &Router, uri: &str, body: Value) -> (StatusCode, Value) {
    call(router, Method::PUT, uri, &body).await
}

async fn get(router: &Router, uri: &str) -> Value {
    let (status, body) = call(router, Method::GET, uri, &Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    body
}

fn external_redis() -> Value {
    json!({
        "Node": "ext-1",
        "Address": "192.0.2.10",
        "Datacenter": "dc1",
        "TaggedAddresses": {"wan": "198.51.100.10"},
        "NodeMeta": {"external-node": "true"},
        "Service": {"ID": "redis-1", "Service": "redis", "Tags": ["primary"], "Port": 6379,
                    "Meta": {"version": "7"}},
        "Check": {"CheckID": "redis-alive", "Name": "Redis alive", "Status": "passing",
                  "ServiceID": "redis-1", "Definition": {"TCP": "192.0.2.10:6379", "Interval": "5s"}},
        "Checks": [{"Name": "ext-ping", "Status": "warning", "Notes": "from the ESM"}]
    })
}

#[tokio::test]
async fn register_and_deregister_external_nodes_services_and_checks() {
    let dir = tempfile::tempdir().unwrap();
    let router = plane(dir.path()).router();
    let (status, body) = put(&router, "/v1/catalog/register", external_redis()).await;
    assert_eq!((status, &body), (StatusCode::OK, &json!(true)));

    let rows = get(&router, "/v1/catalog/service/redis").await;
    let row = &rows[0];
    assert_eq!(row["Node"], "ext-1");
    assert_eq!(row["Address"], "192.0.2.10");
    assert_eq!(row["ServiceID"], "redis-1");
    assert_eq!(row["ServicePort"], 6379);
    assert_eq!(row["ServiceTags"], json!(["primary"]));
    assert_eq!(row["NodeMeta"]["external-node"], "true");
    assert_eq!(row["TaggedAddresses"]["wan"], "198.51.100.10");
    let checks = get(&router, "/v1/health/node/ext-1").await;
    let by_id = |id: &str| {
        checks
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["CheckID"] == id)
            .cloned()
            .unwrap()
    };
    let alive = by_id("redis-alive");
    assert_eq!(
        (&alive["Status"], &alive["ServiceName"]),
        (&json!("passing"), &json!("redis"))
    );
    let ping = by_id("ext-ping");
    assert_eq!(
        (&ping["Status"], &ping["Notes"]),
        (&json!("warning"), &json!("from the ESM"))
    );

    // Lower-case keys, as py-consul sends them; a service ID defaults to its name.
    let lower = json!({"node": "ext-2", "address": "192.0.2.11",
                       "service": {"Service": "memcached", "Port": 11211}});
    let (status, _) = put(&router, "/v1/catalog/register", lower).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        get(&router, "/v1/catalog/service/memcached").await[0]["ServiceID"],
        "memcached"
    );

    // Deregister a check, then the service, then a whole node.
    let (status, body) = put(
        &router,
        "/v1/catalog/deregister",
        json!({"Node": "ext-1", "CheckID": "ext-ping"}),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!(true)));
    assert_eq!(
        get(&router, "/v1/health/node/ext-1")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (status, _) = put(
        &router,
        "/v1/catalog/deregister",
        json!({"node": "ext-1", "serviceid": "redis-1"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(get(&router, "/v1/catalog/service/redis").await, json!([]));
    assert_eq!(
        get(&router, "/v1/health/node/ext-1").await,
        json!([]),
        "its check went with it"
    );
    let (status, _) = put(&router, "/v1/catalog/deregister", json!({"Node": "ext-2"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(get(&router, "/v1/catalog/node/ext-2").await, Value::Null);
    assert_eq!(
        get(&router, "/v1/catalog/service/memcached").await,
        json!([])
    );
    // Deregistering what is not there is still true.
    let (status, body) = put(&router, "/v1/catalog/deregister", json!({"Node": "ext-2"})).await;
    assert_eq!((status, body), (StatusCode::OK, json!(true)));
}

#[tokio::test]
async fn bad_registrations_are_400_naming_the_field_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let router = plane(dir.path()).router();
    let with = |patch: Value| {
        let mut body = external_redis();
        for (key, value) in patch.as_object().unwrap() {
            if value.is_null() {
                body.as_object_mut().unwrap().remove(key);
            } else {
                body[key] = value.clone();
            }
        }
        body
    };
    let cases = [
        (with(json!({"Node": null})), "Node"),
        (with(json!({"Address": ""})), "Address"),
        (with(json!({"Datacenter": "dc9"})), "Datacenter"),
        (with(json!({"ID": "not-a-uuid"})), "ID"),
        (
            with(json!({"Service": {"ID": "r", "Port": 1}})),
            "Service.Service",
        ),
        (
            with(json!({"Service": {"Service": "redis", "Port": 70000}})),
            "Service.Port",
        ),
        (
            with(json!({"Check": {"CheckID": "c", "Status": "fine"}})),
            "Check.Status",
        ),
        (
            with(json!({"Check": {"CheckID": "c", "ServiceID": "nope"}})),
            "Check.ServiceID",
        ),
        (
            with(json!({"Checks": [{"Name": "ok"}, {"Notes": "no id"}]})),
            "Checks[1].CheckID",
        ),
        (
            with(json!({"Checks": [{"Name": "x", "Node": "elsewhere"}]})),
            "Checks[0].Node",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = put(&router, "/v1/catalog/register", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {answer}");
        assert_eq!(answer["error"]["field"], field, "{body} → {answer}");
    }
    let (status, answer) = put(&router, "/v1/catalog/deregister", json!({"ServiceID": "x"})).await;
    assert_eq!(
        (status, &answer["error"]["field"]),
        (StatusCode::BAD_REQUEST, &json!("Node"))
    );
    assert_eq!(get(&router, "/v1/catalog/node/ext-1").await, Value::Null);
    assert_eq!(
        get(&router, "/v1/catalog/services").await.get("redis"),
        None
    );
}

/// Every request is a token with these rules, default deny.
struct Fixed(Rules);

#[async_trait::async_trait]
impl Resolve for Fixed {
    async fn resolve(&self, _token: Option<&SecretId>) -> Result<Authorizer, ResolveError> {
        Ok(Authorizer::from_rules(
            "tester",
            [&self.0],
            DefaultPolicy::Deny,
        ))
    }
}

#[tokio::test]
async fn register_needs_node_write_and_service_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut plane = plane(dir.path());
    let open = plane.router();
    let rules = Rules::default()
        .with(Resource::Node, "ext-", true, Access::Write)
        .with(Resource::Service, "redis", false, Access::Write);
    plane.set_resolver(Resolver(Arc::new(Fixed(rules))));
    let router = plane.router();

    let (status, body) = put(&router, "/v1/catalog/register", external_redis()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Another node, or another service, is refused and nothing is written.
    let mut other_node = external_redis();
    other_node["Node"] = json!("db-host");
    let (status, body) = put(&router, "/v1/catalog/register", other_node).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.to_string().contains("node:write"), "{body}");
    assert_eq!(get(&open, "/v1/catalog/node/db-host").await, Value::Null);
    let mut other_service = external_redis();
    other_service["Service"] = json!({"Service": "postgres", "Port": 5432});
    other_service.as_object_mut().unwrap().remove("Check");
    let (status, body) = put(&router, "/v1/catalog/register", other_service).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.to_string().contains("service:write"), "{body}");
    assert_eq!(get(&open, "/v1/catalog/service/postgres").await, json!([]));

    // Overwriting another service's instance id needs write on that service too.
    let (status, _) = put(
        &open,
        "/v1/catalog/register",
        json!({"Node": "ext-1", "Address": "192.0.2.10",
               "Service": {"ID": "pg-1", "Service": "postgres"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = put(
        &router,
        "/v1/catalog/register",
        json!({"Node": "ext-1", "Address": "192.0.2.10",
               "Service": {"ID": "pg-1", "Service": "redis"}}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        get(&open, "/v1/catalog/service/postgres").await[0]["ServiceID"],
        "pg-1"
    );

    // Deregistering: the service needs service:write on it, a whole node node:write.
    let pg = json!({"Node": "ext-9", "Address": "192.0.2.9", "Service": {"Service": "postgres"}});
    let (status, _) = put(&open, "/v1/catalog/register", pg).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = put(
        &router,
        "/v1/catalog/deregister",
        json!({"Node": "ext-9", "ServiceID": "postgres"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let pg = get(&open, "/v1/catalog/service/postgres").await;
    assert!(
        pg.as_array().unwrap().iter().any(|r| r["Node"] == "ext-9"),
        "{pg}"
    );
    let (status, _) = put(&router, "/v1/catalog/deregister", json!({"Node": "ext-9"})).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "node:write on ext- covers the whole node"
    );
    let (status, _) = put(
        &router,
        "/v1/catalog/deregister",
        json!({"Node": "server-1"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn members_are_the_nodes_in_serf_shape_filtered_by_node_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut plane = plane(dir.path());
    let open = plane.router();
    for (node, address) in [("server-1", "10.0.0.1"), ("ext-1", "192.0.2.10")] {
        let id = format!("{:08}-0000-4000-8000-000000000001", node.len());
        let body = json!({"Node": node, "Address": address, "ID": id});
        let (status, _) = put(&open, "/v1/catalog/register", body).await;
        assert_eq!(status, StatusCode::OK);
    }
    // A remote agent whose lease lapsed: its lease check is critical.
    let lapsed = json!({"Node": "gone", "Address": "10.0.0.9",
        "Check": {"CheckID": plexus_api::remote::LEASE_CHECK_ID, "Status": "critical"}});
    let (status, _) = put(&open, "/v1/catalog/register", lapsed).await;
    assert_eq!(status, StatusCode::OK);

    let members = get(&open, "/v1/agent/members").await;
    let by_name = |name: &str| {
        members
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["Name"] == name)
            .cloned()
            .unwrap()
    };
    let server = by_name("server-1");
    assert_eq!(server["Addr"], "10.0.0.1");
    assert_eq!(server["Port"], 8301);
    assert_eq!(server["Status"], 1);
    assert_eq!(server["Tags"]["role"], "consul");
    assert_eq!(server["Tags"]["dc"], "dc1");
    assert_eq!(server["Tags"]["id"], "00000008-0000-4000-8000-000000000001");
    for (field, value) in [
        ("ProtocolMin", 1),
        ("ProtocolMax", 5),
        ("ProtocolCur", 2),
        ("DelegateMin", 2),
        ("DelegateMax", 5),
        ("DelegateCur", 4),
    ] {
        assert_eq!(server[field], value, "{field}");
    }
    assert_eq!(by_name("ext-1")["Tags"]["role"], "node");
    assert_eq!(by_name("gone")["Status"], 4);

    let rules = Rules::default().with(Resource::Node, "ext-", true, Access::Read);
    plane.set_resolver(Resolver(Arc::new(Fixed(rules))));
    let request = Request::get("/v1/agent/members")
        .body(Body::empty())
        .unwrap();
    let response = plane.router().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let filtered = response.headers()["x-consul-results-filtered-by-acls"].clone();
    assert_eq!(filtered, "true");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let visible: Value = serde_json::from_slice(&bytes).unwrap();
    let names: Vec<&str> = visible
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ext-1"]);
}
