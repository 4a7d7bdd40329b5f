//! Tests: the UI's routes answer what the browser needs; the summary counts health per service;
//! the topology shows declared edges. The pages themselves are tested in a real browser
//! (`crates/plexus/tests/e2e/ui.rs`).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use plexus_api::{AgentUpstream, Catalog, CheckStatus};
use serde_json::Value;
use tower::ServiceExt;

use crate::catalog::tests::fixtures::{catalog, check, proxy, registration, service};

async fn get(router: &Router, uri: &str) -> (StatusCode, http::HeaderMap, Vec<u8>) {
    let request = Request::get(uri).body(Body::empty()).unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes().to_vec();
    (parts.status, parts.headers, bytes)
}

async fn router_with_mesh(dir: &std::path::Path) -> Router {
    let catalog = Arc::new(catalog(dir));
    let mut client_proxy = proxy("client-1-sidecar-proxy", "client");
    if let Some(p) = client_proxy.proxy.as_mut() {
        p.destination_service_id = "client-1".to_owned();
        p.upstreams.push(AgentUpstream {
            destination_name: "web".to_owned(),
            local_bind_port: 9191,
            ..AgentUpstream::default()
        });
    }
    catalog
        .register(registration(
            "n1",
            vec![
                service("web-1", "web", &["v1"]),
                service("web-2", "web", &["v2"]),
                service("client-1", "client", &[]),
                client_proxy,
            ],
            vec![
                check("c1", "web-1", CheckStatus::Passing),
                check("c2", "web-2", CheckStatus::Critical),
            ],
        ))
        .await
        .unwrap();
    let store = Arc::clone(catalog.store());
    plexus_runtime::acl::layer(super::router(catalog, store), Default::default())
}

/// Every request is the token with these rules, default deny.
struct Fixed(plexus_api::acl::Rules);

#[async_trait::async_trait]
impl plexus_runtime::acl::Resolve for Fixed {
    async fn resolve(
        &self,
        _token: Option<&plexus_api::acl::SecretId>,
    ) -> Result<plexus_api::acl::Authorizer, plexus_runtime::acl::ResolveError> {
        Ok(plexus_api::acl::Authorizer::from_rules(
            "reader",
            [&self.0],
            plexus_api::acl::DefaultPolicy::Deny,
        ))
    }
}

#[tokio::test]
async fn mesh_endpoints_list_only_services_the_token_may_read() {
    use plexus_api::acl::{Access, Resource, Rules};
    let dir = tempfile::tempdir().unwrap();
    let catalog = Arc::new(catalog(dir.path()));
    catalog
        .register(registration(
            "n1",
            vec![
                service("web-1", "web", &[]),
                service("client-1", "client", &[]),
            ],
            Vec::new(),
        ))
        .await
        .unwrap();
    let store = Arc::clone(catalog.store());
    let rules = Rules::default().with(Resource::Service, "web", false, Access::Read);
    let router = plexus_runtime::acl::layer(
        super::router(catalog, store),
        plexus_runtime::acl::Resolver(Arc::new(Fixed(rules))),
    );
    let (status, headers, body) = get(&router, "/v1/mesh/services").await;
    assert_eq!(status, StatusCode::OK);
    let rows: Value = serde_json::from_slice(&body).unwrap();
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web"], "{rows}");
    assert_eq!(headers[plexus_api::acl::FILTERED_HEADER], "true");
    let (status, headers, body) = get(&router, "/v1/mesh/topology").await;
    assert_eq!(status, StatusCode::OK);
    let view: Value = serde_json::from_slice(&body).unwrap();
    let services: Vec<&String> = view["Services"].as_object().unwrap().keys().collect();
    assert_eq!(services, ["web"], "{view}");
    assert_eq!(headers[plexus_api::acl::FILTERED_HEADER], "true");
    // The assets hold no data and stay public.
    let (status, _, _) = get(&router, "/ui/app.js").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn root_redirects_and_assets_are_served_with_a_strict_policy() {
    let dir = tempfile::tempdir().unwrap();
    let router = router_with_mesh(dir.path()).await;
    for path in ["/", "/ui"] {
        let (status, headers, _) = get(&router, path).await;
        assert_eq!(status, StatusCode::TEMPORARY_REDIRECT, "{path}");
        assert_eq!(headers[header::LOCATION], "/ui/");
    }
    let (status, headers, body) = get(&router, "/ui/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    let html = String::from_utf8(body).unwrap();
    assert!(html.contains(r#"<script type="module" src="app.js">"#));
    // Every file the page and its modules name is served.
    for file in [
        "app.js",
        "api.js",
        "dom.js",
        "services.js",
        "kv.js",
        "connect.js",
        "graph.js",
        "style.css",
        "favicon.svg",
    ] {
        let (status, headers, body) = get(&router, &format!("/ui/{file}")).await;
        assert_eq!(status, StatusCode::OK, "{file}");
        assert!(!body.is_empty(), "{file}");
        assert!(headers.contains_key(header::CONTENT_TYPE), "{file}");
    }
    let (status, _, body) = get(&router, "/ui/../Cargo.toml").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (status, _, body) = get(&router, "/ui/nope.js").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["code"], "not_found");
}

#[tokio::test]
async fn services_summary_counts_health_and_sidecars() {
    let dir = tempfile::tempdir().unwrap();
    let router = router_with_mesh(dir.path()).await;
    let (status, headers, body) = get(&router, "/v1/mesh/services").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.contains_key("x-consul-index"));
    let rows: Value = serde_json::from_slice(&body).unwrap();
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["client", "web"], "sidecars are not listed");
    let web = &rows[1];
    assert_eq!(web["Instances"], 2);
    assert_eq!(web["Passing"], 1);
    assert_eq!(web["Critical"], 1);
    assert_eq!(web["Tags"], serde_json::json!(["v1", "v2"]));
    assert_eq!(rows[0]["WithSidecar"], 1);
    let (status, _, body) = get(&router, "/v1/mesh/services?index=x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["field"], "index");
}

#[tokio::test]
async fn topology_lists_services_and_declared_edges_without_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let router = router_with_mesh(dir.path()).await;
    let (status, headers, body) = get(&router, "/v1/mesh/topology").await;
    assert_eq!(status, StatusCode::OK);
    let index: u64 = headers["x-consul-index"].to_str().unwrap().parse().unwrap();
    assert!(index >= 1);
    let view: Value = serde_json::from_slice(&body).unwrap();
    assert!(view["Services"]["web"].is_object(), "{view}");
    assert_eq!(view["Services"]["client"]["Sidecars"], 1);
    let edges = view["Edges"].as_array().unwrap();
    assert_eq!(edges.len(), 1, "{view}");
    assert_eq!(edges[0]["Source"], "client");
    assert_eq!(edges[0]["Destination"], "web");
    assert_eq!(edges[0]["Declared"], true);
    assert_eq!(edges[0]["Golden"]["RequestsTotal"], 0.0);
    // The sidecar never reported an admin address: said so, not hidden.
    assert_eq!(
        view["Sidecars"][0]["Error"],
        "no admin address reported yet"
    );
}

#[tokio::test]
async fn acknowledgements_carry_the_admin_address_and_a_bad_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Arc::new(catalog(dir.path()));
    let mut side = proxy("client-1-sidecar-proxy", "client");
    side.port = 21000;
    catalog
        .register(registration(
            "n1",
            vec![service("client-1", "client", &[]), side],
            Vec::new(),
        ))
        .await
        .unwrap();
    let store = Arc::clone(catalog.store());
    let router = plexus_runtime::acl::layer(
        crate::operator::router(Arc::clone(&store), "n1".to_owned())
            .merge(super::router(catalog, store)),
        Default::default(),
    );
    let put = |uri: &str| {
        let request = Request::put(uri).body(Body::empty()).unwrap();
        router.clone().oneshot(request)
    };
    let refused = put("/v1/internal/proxy/client-1-sidecar-proxy/ack?revision=3&admin=nope")
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["field"], "admin", "{error}");
    // Port 1 on loopback: nothing listens, so the scrape fails fast and says why.
    let accepted =
        put("/v1/internal/proxy/client-1-sidecar-proxy/ack?revision=3&admin=127.0.0.1:1")
            .await
            .unwrap();
    assert_eq!(accepted.status(), StatusCode::OK);
    let (_, _, body) = get(&router, "/v1/mesh/topology").await;
    let view: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(view["Sidecars"][0]["Admin"], "127.0.0.1:1", "{view}");
    let error = view["Sidecars"][0]["Error"].as_str().unwrap();
    assert!(error.contains("cannot reach 127.0.0.1:1"), "{error}");
}
