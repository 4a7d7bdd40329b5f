//! Check registration and maintenance mode through the agent's HTTP routes.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use http::{Method, StatusCode};
use plexus_api::acl::{Access, Authorizer, DefaultPolicy, Resource, Rules, SecretId};
use plexus_api::{CheckStatus, CheckType, Node};
use plexus_runtime::Shutdown;
use plexus_runtime::acl::{Resolve, ResolveError, Resolver};
use serde_json::{Value, json};

use crate::node_check::{DEFAULT_NODE_REASON, DEFAULT_SERVICE_REASON};
use crate::test_catalog::MemCatalog;
use crate::tests::{NODE, agent, call};
use crate::{Agent, AgentConfig};

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

/// An agent over `catalog` (already holding what the test registered) whose callers have `rules`.
async fn agent_with(rules: Rules, catalog: Arc<MemCatalog>) -> (Agent, Shutdown) {
    let shutdown = Shutdown::new();
    let config = AgentConfig {
        node: Node {
            node: NODE.into(),
            address: "10.0.0.7".into(),
            datacenter: "dc1".into(),
            ..Node::default()
        },
        server: false,
        acl: Resolver(Arc::new(Fixed(rules))),
        host_ports: None,
    };
    let agent = Agent::start(config, catalog, &shutdown).await.unwrap();
    (agent, shutdown)
}

async fn put(agent: &Agent, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    call(agent, Method::PUT, uri, body).await
}

async fn register_web(agent: &Agent) {
    let web = json!({"ID": "web1", "Name": "web", "Port": 8080});
    let (status, body) = put(agent, "/v1/agent/service/register", Some(web)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn checks_register_on_the_node_or_a_service_and_deregister() {
    let (agent, catalog, _shutdown) = agent().await;
    register_web(&agent).await;
    let node_check = json!({"Name": "mem", "TTL": "30s", "Notes": "memory", "Status": "passing"});
    let (status, body) = put(&agent, "/v1/agent/check/register", Some(node_check)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mem = catalog.check(NODE, "mem").unwrap();
    assert_eq!(mem.check_type, Some(CheckType::Ttl));
    assert_eq!(
        (mem.status, mem.notes.as_str()),
        (CheckStatus::Passing, "memory")
    );
    assert_eq!(mem.service_id, "");

    let on_web = json!({"ID": "web-ttl", "Name": "web ttl", "ServiceID": "web1", "TTL": "30s"});
    let (status, _) = put(&agent, "/v1/agent/check/register", Some(on_web)).await;
    assert_eq!(status, StatusCode::OK);
    let web_ttl = catalog.check(NODE, "web-ttl").unwrap();
    assert_eq!(
        (web_ttl.service_id.as_str(), web_ttl.service_name.as_str()),
        ("web1", "web")
    );
    // A registered TTL check takes TTL updates.
    let (status, _) = put(&agent, "/v1/agent/check/pass/web-ttl", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        catalog.check(NODE, "web-ttl").unwrap().status,
        CheckStatus::Passing
    );

    let (status, listed) = call(&agent, Method::GET, "/v1/agent/checks", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        listed.get("mem").is_some() && listed.get("web-ttl").is_some(),
        "{listed}"
    );

    let (status, _) = put(&agent, "/v1/agent/check/deregister/web-ttl", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(catalog.check(NODE, "web-ttl").is_none());
    assert!(catalog.has_service(NODE, "web1"), "the service stays");
    let (status, body) = put(&agent, "/v1/agent/check/deregister/web-ttl", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn bad_check_definitions_are_400_naming_the_field_and_store_nothing() {
    let (agent, catalog, _shutdown) = agent().await;
    let cases = [
        (json!({"TTL": "10s"}), "name"),
        (json!({"Name": "x"}), "check"),
        (
            json!({"Name": "x", "HTTP": "http://127.0.0.1:1/"}),
            "interval",
        ),
        (
            json!({"Name": "x", "TTL": "10s", "Status": "fine"}),
            "status",
        ),
        (
            json!({"Name": "x", "TTL": "10s", "ServiceID": "nope"}),
            "service_id",
        ),
        (json!({"Name": "x", "TTL": "soon"}), "TTL"),
    ];
    for (body, field) in cases {
        let (status, answer) = put(&agent, "/v1/agent/check/register", Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {answer}");
        assert_eq!(answer["error"]["field"], field, "{body} → {answer}");
    }
    assert!(catalog.check(NODE, "x").is_none());
}

#[tokio::test]
async fn maintenance_adds_and_removes_a_critical_check() {
    let (agent, catalog, _shutdown) = agent().await;
    register_web(&agent).await;
    let uri = "/v1/agent/service/maintenance/web1?enable=true&reason=deploying%20v2";
    let (status, body) = put(&agent, uri, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let maint = catalog.check(NODE, "_service_maintenance:web1").unwrap();
    assert_eq!(maint.status, CheckStatus::Critical);
    assert_eq!(maint.notes, "deploying v2");
    assert_eq!(
        (maint.service_id.as_str(), maint.service_name.as_str()),
        ("web1", "web")
    );
    let (status, _) = put(
        &agent,
        "/v1/agent/service/maintenance/web1?enable=false",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(catalog.check(NODE, "_service_maintenance:web1").is_none());

    let (status, _) = put(&agent, "/v1/agent/maintenance?enable=True", None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "Go's ParseBool spellings, as py-consul sends them"
    );
    let node_maint = catalog.check(NODE, "_node_maintenance").unwrap();
    assert_eq!(
        (node_maint.status, node_maint.notes.as_str()),
        (CheckStatus::Critical, DEFAULT_NODE_REASON)
    );
    let (status, _) = put(&agent, "/v1/agent/maintenance?enable=false", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(catalog.check(NODE, "_node_maintenance").is_none());
    // Disabling twice is fine.
    let (status, _) = put(&agent, "/v1/agent/maintenance?enable=false", None).await;
    assert_eq!(status, StatusCode::OK);

    let (status, _) = put(
        &agent,
        "/v1/agent/service/maintenance/web1?enable=true",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let notes = catalog
        .check(NODE, "_service_maintenance:web1")
        .unwrap()
        .notes;
    assert_eq!(notes, DEFAULT_SERVICE_REASON);
}

#[tokio::test]
async fn maintenance_needs_enable_and_a_known_service() {
    let (agent, _catalog, _shutdown) = agent().await;
    register_web(&agent).await;
    for uri in [
        "/v1/agent/maintenance",
        "/v1/agent/maintenance?enable=yes",
        "/v1/agent/service/maintenance/web1?reason=x",
    ] {
        let (status, body) = put(&agent, uri, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri} → {body}");
        assert_eq!(body["error"]["field"], "enable", "{uri} → {body}");
    }
    let (status, _) = put(
        &agent,
        "/v1/agent/service/maintenance/nope?enable=true",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn check_writes_and_maintenance_need_service_or_node_write() {
    let catalog = MemCatalog::new();
    let rules = Rules::default()
        .with(Resource::Service, "web", false, Access::Write)
        .with(Resource::Node, NODE, false, Access::Read);
    let (agent, _shutdown) = agent_with(rules, catalog.clone()).await;
    register_web(&agent).await;

    // service:write on web is enough for web's checks and maintenance …
    let on_web = json!({"ID": "web-ttl", "Name": "t", "ServiceID": "web1", "TTL": "30s"});
    let (status, _) = put(&agent, "/v1/agent/check/register", Some(on_web)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = put(
        &agent,
        "/v1/agent/service/maintenance/web1?enable=true",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = put(&agent, "/v1/agent/check/deregister/web-ttl", None).await;
    assert_eq!(status, StatusCode::OK);

    // … but node checks and node maintenance need node:write.
    let node_check = json!({"Name": "mem", "TTL": "30s"});
    let (status, body) = put(&agent, "/v1/agent/check/register", Some(node_check)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.to_string().contains("node:write"), "{body}");
    assert!(catalog.check(NODE, "mem").is_none());
    let (status, _) = put(&agent, "/v1/agent/maintenance?enable=true", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(catalog.check(NODE, "_node_maintenance").is_none());

    // Another service's checks need service:write on it.
    let open_catalog = catalog.clone();
    let (open, _open_shutdown) = agent_with(
        Rules::default()
            .with(Resource::Service, "", true, Access::Write)
            .with(Resource::Node, "", true, Access::Write),
        open_catalog,
    )
    .await;
    let db = json!({"ID": "db1", "Name": "db", "Port": 5432, "Check": {"TTL": "30s"}});
    let (status, _) = put(&open, "/v1/agent/service/register", Some(db)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = put(
        &agent,
        "/v1/agent/service/maintenance/db1?enable=true",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = put(&agent, "/v1/agent/check/deregister/service:db1", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Nor may a check of web take over db's check id.
    let takeover = json!({"ID": "service:db1", "Name": "t", "ServiceID": "web1", "TTL": "30s"});
    let (status, _) = put(&agent, "/v1/agent/check/register", Some(takeover)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        catalog.check(NODE, "service:db1").unwrap().service_id,
        "db1"
    );
    assert!(catalog.check(NODE, "service:db1").is_some());
}
