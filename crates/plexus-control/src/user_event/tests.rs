//! Tests: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use plexus_api::acl::{Access, Resource, Rules};
use serde_json::Value;
use tower::ServiceExt;

use crate::store::EmbeddedStore;

async fn call(
    router: &Router,
    method: Method,
    uri: &str,
    body: &str,
) -> (StatusCode, Option<u64>, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let index = response
        .headers()
        .get("x-consul-index")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        index,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

struct Fixed(Rules);

#[async_trait::async_trait]
impl plexus_runtime::acl::Resolve for Fixed {
    async fn resolve(
        &self,
        _token: Option<&plexus_api::acl::SecretId>,
    ) -> Result<plexus_api::acl::Authorizer, plexus_runtime::acl::ResolveError> {
        Ok(plexus_api::acl::Authorizer::from_rules(
            "tester",
            [&self.0],
            plexus_api::acl::DefaultPolicy::Deny,
        ))
    }
}

#[tokio::test]
async fn events_fire_list_by_name_and_wake_a_blocking_list() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn crate::store::Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let router = plexus_runtime::acl::layer(super::router(store), Default::default());
    let (status, _, fired) = call(
        &router,
        Method::PUT,
        "/v1/event/fire/deploy?service=web",
        "v2",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{fired}");
    assert_eq!(fired["Name"], "deploy");
    assert_eq!(fired["Payload"], "djI=");
    assert_eq!(fired["ServiceFilter"], "web");
    assert_eq!(fired["Version"], 1);
    let (_, index, listed) = call(&router, Method::GET, "/v1/event/list?name=deploy", "").await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["ID"], fired["ID"]);
    assert!(listed[0]["LTime"].as_u64().unwrap() > 0);
    let index = index.unwrap();
    let waiting = tokio::spawn({
        let router = router.clone();
        async move {
            call(
                &router,
                Method::GET,
                &format!("/v1/event/list?index={index}&wait=10s"),
                "",
            )
            .await
        }
    });
    call(&router, Method::PUT, "/v1/event/fire/restart", "").await;
    let (_, after, all) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert!(after.unwrap() > index);
    let names: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["deploy", "restart"], "in fire order");
    assert_eq!(all[1]["Payload"], Value::Null);
}

#[tokio::test]
async fn bad_events_are_refused_and_acls_apply() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn crate::store::Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let rules = Rules::default().with(Resource::Event, "ok", true, Access::Write);
    let router = plexus_runtime::acl::layer(
        super::router(Arc::clone(&store)),
        plexus_runtime::acl::Resolver(Arc::new(Fixed(rules))),
    );
    let big = "x".repeat(513);
    let (status, _, body) = call(&router, Method::PUT, "/v1/event/fire/ok", &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let (status, _, body) = call(&router, Method::PUT, "/v1/event/fire/ok?tag=v1", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["field"], "tag");
    let long = "n".repeat(129);
    let (status, _, _) = call(&router, Method::PUT, &format!("/v1/event/fire/{long}"), "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, body) = call(&router, Method::PUT, "/v1/event/fire/secret", "").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.to_string().contains("event:write"), "{body}");
    assert_eq!(
        call(&router, Method::PUT, "/v1/event/fire/ok-go", "")
            .await
            .0,
        StatusCode::OK
    );
    // Fired without ACLs: the token cannot read it.
    let open = plexus_runtime::acl::layer(super::router(store), Default::default());
    call(&open, Method::PUT, "/v1/event/fire/hidden", "").await;
    let (_, _, listed) = call(&router, Method::GET, "/v1/event/list", "").await;
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ok-go"], "only the valid, readable event");
}
