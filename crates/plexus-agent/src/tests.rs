//! The agent through its HTTP routes, over the in-memory catalog.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use plexus_api::{CheckStatus, Node};
use plexus_runtime::Shutdown;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::test_catalog::MemCatalog;
use crate::{Agent, AgentConfig};

pub(crate) const NODE: &str = "node-1";

pub(crate) async fn agent() -> (Agent, Arc<MemCatalog>, Shutdown) {
    let catalog = MemCatalog::new();
    let shutdown = Shutdown::new();
    let config = AgentConfig {
        node: Node {
            id: "b5c6e1f2-0000-4000-8000-000000000001".into(),
            node: NODE.into(),
            address: "10.0.0.7".into(),
            datacenter: "dc1".into(),
            ..Node::default()
        },
        server: false,
        acl: Default::default(),
        host_ports: None,
    };
    let agent = Agent::start(config, catalog.clone(), &shutdown)
        .await
        .unwrap();
    (agent, catalog, shutdown)
}

pub(crate) async fn call(
    agent: &Agent,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(body)
        .unwrap();
    let response = agent.router().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, value)
}

fn web(id: &str, port: u16, upstream_port: u16) -> Value {
    json!({
        "ID": id,
        "Name": "web",
        "Port": port,
        "Check": { "TTL": "30s" },
        "Connect": { "SidecarService": { "Proxy": { "Upstreams": [
            { "DestinationName": "db", "LocalBindPort": upstream_port }
        ]}}}
    })
}

#[tokio::test]
async fn register_assigns_sidecar_ports_and_lists_services() {
    let (agent, _, _shutdown) = agent().await;
    let (status, body) = call(
        &agent,
        Method::PUT,
        "/v1/agent/service/register",
        Some(web("web1", 8080, 9191)),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, Value::Null));
    let (status, _) = call(
        &agent,
        Method::PUT,
        "/v1/agent/service/register?replace-existing-checks",
        Some(web("web2", 8081, 9192)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let (status, services) = call(&agent, Method::GET, "/v1/agent/services", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(services["web1-sidecar-proxy"]["Port"], 21000);
    assert_eq!(services["web2-sidecar-proxy"]["Port"], 21001);
    assert_eq!(services["web1-sidecar-proxy"]["Kind"], "connect-proxy");
    assert_eq!(
        services["web1-sidecar-proxy"]["Proxy"]["DestinationServiceID"],
        "web1"
    );
    assert!(services["web1"].get("CreateIndex").is_none());

    // Re-registering keeps the sidecar's port.
    let (status, _) = call(
        &agent,
        Method::PUT,
        "/v1/agent/service/register",
        Some(web("web1", 8080, 9191)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, one) = call(
        &agent,
        Method::GET,
        "/v1/agent/service/web1-sidecar-proxy",
        None,
    )
    .await;
    assert_eq!(one["Port"], 21000);

    let (status, checks) = call(&agent, Method::GET, "/v1/agent/checks", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(checks["service:web1-sidecar-proxy"]["Type"], "alias");
    assert_eq!(checks["service:web1"]["Type"], "ttl");
}

#[tokio::test]
async fn clashing_listeners_are_conflicts_naming_the_field() {
    let (agent, _, _shutdown) = agent().await;
    call(
        &agent,
        Method::PUT,
        "/v1/agent/service/register",
        Some(web("web1", 8080, 9191)),
    )
    .await;
    let (status, body) = call(
        &agent,
        Method::PUT,
        "/v1/agent/service/register",
        Some(web("web2", 8081, 9191)),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        body["error"]["field"],
        "connect.sidecar_service.proxy.upstreams[0].local_bind_port"
    );

    let mut taken = web("web3", 8082, 9300);
    taken["Connect"]["SidecarService"]["Port"] = json!(21000);
    let (status, body) = call(
        &agent,
        Method::PUT,
        "/v1/agent/service/register",
        Some(taken),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["field"], "connect.sidecar_service.port");
}

#[tokio::test]
async fn invalid_bodies_are_400_naming_the_field() {
    let (agent, _, _shutdown) = agent().await;
    let (status, body) = call(
        &agent,
        Method::PUT,
        "/v1/agent/service/register",
        Some(json!({"Name": "web", "Port": 70000})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["field"], "port");
    let (status, body) = call(
        &agent,
        Method::PUT,
        "/v1/agent/service/register",
        Some(json!({"Name": "web", "Bogus": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("Bogus"));
}

#[tokio::test]
async fn deregister_takes_the_sidecar_and_unknown_ids_are_404() {
    let (agent, catalog, _shutdown) = agent().await;
    call(
        &agent,
        Method::PUT,
        "/v1/agent/service/register",
        Some(web("web1", 8080, 9191)),
    )
    .await;
    let (status, _) = call(
        &agent,
        Method::PUT,
        "/v1/agent/service/deregister/web1",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!catalog.has_service(NODE, "web1-sidecar-proxy"));
    let (status, body) = call(
        &agent,
        Method::PUT,
        "/v1/agent/service/deregister/web1",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, _) = call(&agent, Method::GET, "/v1/agent/service/web1", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn ttl_updates_through_the_api() {
    let (agent, catalog, _shutdown) = agent().await;
    call(
        &agent,
        Method::PUT,
        "/v1/agent/service/register",
        Some(web("web1", 8080, 9191)),
    )
    .await;
    let (status, _) = call(
        &agent,
        Method::PUT,
        "/v1/agent/check/warn/service:web1?note=slow%20disk",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let check = catalog.check(NODE, "service:web1").unwrap();
    assert_eq!(
        (check.status, check.output.as_str()),
        (CheckStatus::Warning, "slow disk")
    );
    // The sidecar's alias check follows.
    let alias_warning = |c: &MemCatalog| {
        c.check(NODE, "service:web1-sidecar-proxy")
            .is_some_and(|c| c.status == CheckStatus::Warning)
    };
    catalog
        .eventually(Duration::from_secs(10), alias_warning)
        .await;

    let update = json!({"Status": "passing", "Output": "all good"});
    let (status, _) = call(
        &agent,
        Method::PUT,
        "/v1/agent/check/update/service:web1",
        Some(update),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        catalog.check(NODE, "service:web1").unwrap().status,
        CheckStatus::Passing
    );

    let bad = json!({"Status": "great"});
    let (status, body) = call(
        &agent,
        Method::PUT,
        "/v1/agent/check/update/service:web1",
        Some(bad),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (StatusCode::BAD_REQUEST, &json!("Status"))
    );
    let (status, _) = call(
        &agent,
        Method::PUT,
        "/v1/agent/check/pass/service:web1-sidecar-proxy",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(&agent, Method::PUT, "/v1/agent/check/fail/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn self_and_blocking_service_query() {
    let (agent, _, _shutdown) = agent().await;
    let (status, me) = call(&agent, Method::GET, "/v1/agent/self", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["Config"]["NodeName"], NODE);
    assert_eq!(me["Config"]["Datacenter"], "dc1");
    assert_eq!(me["Config"]["Version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        me["Member"],
        json!({"Name": NODE, "Addr": "10.0.0.7", "Status": 1})
    );

    call(
        &agent,
        Method::PUT,
        "/v1/agent/service/register",
        Some(json!({"Name": "api", "Port": 9000})),
    )
    .await;
    let request = Request::get("/v1/agent/service/api")
        .body(Body::empty())
        .unwrap();
    let response = agent.router().oneshot(request).await.unwrap();
    let index: u64 = response.headers()["x-consul-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();

    let blocked = {
        let agent = agent.clone();
        tokio::spawn(async move {
            let uri = format!("/v1/agent/service/api?index={index}&wait=30s");
            call(&agent, Method::GET, &uri, None).await
        })
    };
    tokio::task::yield_now().await;
    assert!(!blocked.is_finished());
    call(
        &agent,
        Method::PUT,
        "/v1/agent/service/register",
        Some(json!({"Name": "api", "Port": 9001})),
    )
    .await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), blocked)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((status, &body["Port"]), (StatusCode::OK, &json!(9001)));
}

#[tokio::test]
async fn deregister_all_removes_what_the_agent_registered() {
    let (agent, catalog, _shutdown) = agent().await;
    call(
        &agent,
        Method::PUT,
        "/v1/agent/service/register",
        Some(web("web1", 8080, 9191)),
    )
    .await;
    call(
        &agent,
        Method::PUT,
        "/v1/agent/service/register",
        Some(json!({"Name": "api", "Port": 9000})),
    )
    .await;
    agent.deregister_all().await;
    for id in ["web1", "web1-sidecar-proxy", "api"] {
        assert!(!catalog.has_service(NODE, id), "{id}");
    }
}

#[tokio::test]
async fn sidecar_under_a_new_id_replaces_the_old_one() {
    let (agent, catalog, _shutdown) = agent().await;
    call(
        &agent,
        Method::PUT,
        "/v1/agent/service/register",
        Some(web("web1", 21000, 9191)),
    )
    .await;
    let (_, services) = call(&agent, Method::GET, "/v1/agent/services", None).await;
    // Not the service's own port.
    assert_eq!(services["web1-sidecar-proxy"]["Port"], 21001);

    let mut renamed = web("web1", 21000, 9191);
    renamed["Connect"]["SidecarService"]["ID"] = json!("web1-proxy");
    let (status, body) = call(
        &agent,
        Method::PUT,
        "/v1/agent/service/register",
        Some(renamed),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!catalog.has_service(NODE, "web1-sidecar-proxy"));
    assert!(catalog.has_service(NODE, "web1-proxy"));
}

#[tokio::test]
async fn re_registering_an_unchanged_check_keeps_its_status() {
    let (agent, catalog, _shutdown) = agent().await;
    let register = |body: Value| {
        call(
            &agent,
            Method::PUT,
            "/v1/agent/service/register",
            Some(body),
        )
    };
    let (status, _) = register(web("web1", 8080, 9191)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        catalog.check(NODE, "service:web1").unwrap().status,
        CheckStatus::Critical
    );
    let (status, _) = call(
        &agent,
        Method::PUT,
        "/v1/agent/check/pass/service:web1?note=up",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // The same registration again (an agent restart re-reads its definitions): still passing.
    let (status, _) = register(web("web1", 8080, 9191)).await;
    assert_eq!(status, StatusCode::OK);
    let check = catalog.check(NODE, "service:web1").unwrap();
    assert_eq!(
        (check.status, check.output.as_str()),
        (CheckStatus::Passing, "up")
    );

    // A changed check definition starts over as critical.
    let mut changed = web("web1", 8080, 9191);
    changed["Check"] = json!({ "TTL": "45s" });
    let (status, _) = register(changed).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        catalog.check(NODE, "service:web1").unwrap().status,
        CheckStatus::Critical
    );
}

/// A job instance's restart: its services were deregistered (releasing the sidecar's host
/// reservation) and are registered again with the sidecar's port given; the port is reserved
/// on the host again, so another agent of the host skips it.
#[tokio::test]
async fn a_sidecar_registered_again_on_a_given_port_reserves_it_on_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = MemCatalog::new();
    let shutdown = Shutdown::new();
    let config = AgentConfig {
        node: Node {
            id: "b5c6e1f2-0000-4000-8000-000000000002".into(),
            node: NODE.into(),
            address: "10.0.0.7".into(),
            datacenter: "dc1".into(),
            ..Node::default()
        },
        server: false,
        acl: Default::default(),
        host_ports: Some(dir.path().to_path_buf()),
    };
    let agent = Agent::start(config, catalog.clone(), &shutdown)
        .await
        .unwrap();
    let other = crate::host_ports::HostPorts::new(Some(dir.path().to_path_buf()));
    let reg = |port: Option<u16>| -> plexus_api::ServiceRegistration {
        let mut sidecar = json!({});
        if let Some(port) = port {
            sidecar["Port"] = port.into();
        }
        serde_json::from_value(json!({
            "ID": "job-web-0-web", "Name": "web", "Port": 20000,
            "Connect": { "SidecarService": sidecar },
        }))
        .unwrap()
    };
    agent.register(&reg(None)).await.unwrap();
    let services = plexus_api::Catalog::node_services(catalog.as_ref(), NODE)
        .await
        .unwrap()
        .value;
    let port = services
        .iter()
        .find(|s| s.id == "job-web-0-web-sidecar-proxy")
        .unwrap()
        .port;
    assert!(
        other.claim(port, "x", false).is_err(),
        "reserved at assignment"
    );

    agent.deregister("job-web-0-web").await.unwrap();
    assert!(
        other.claim(port, "x", false).unwrap(),
        "released with the service"
    );
    other.release(port);

    agent.register(&reg(Some(port))).await.unwrap();
    let taken = other.claim(port, "x", false).unwrap_err();
    assert_eq!(
        taken.to_string(),
        format!("port {port} is reserved by another agent on this host")
    );
    // Deregistering releases it again.
    agent.deregister("job-web-0-web").await.unwrap();
    assert!(other.claim(port, "x", false).unwrap());
}
