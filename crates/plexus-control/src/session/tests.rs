//! Tests: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use plexus_api::acl::{Access, Resource, Rules};
use plexus_api::{Catalog, CheckStatus};
use plexus_test::eventually;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::ControlPlane;
use crate::api::ServerInfo;
use crate::catalog::tests::fixtures::{check, registration};

struct Reply {
    status: StatusCode,
    index: Option<u64>,
    body: Value,
}

async fn call(router: &Router, method: Method, uri: &str, body: &str) -> Reply {
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
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        index,
        body,
    }
}

async fn put(router: &Router, uri: &str, body: &str) -> Reply {
    call(router, Method::PUT, uri, body).await
}

async fn get(router: &Router, uri: &str) -> Reply {
    call(router, Method::GET, uri, "").await
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
    plane
        .catalog()
        .register(registration(
            "n1",
            Vec::new(),
            vec![
                check("disk", "", CheckStatus::Passing),
                check("broken", "", CheckStatus::Critical),
            ],
        ))
        .await
        .unwrap();
    plane
}

async fn create(router: &Router, body: &str) -> String {
    let reply = put(router, "/v1/session/create", body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body["ID"].as_str().unwrap().to_owned()
}

async fn key(router: &Router, key: &str) -> Value {
    let reply = get(router, &format!("/v1/kv/{key}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body[0].clone()
}

#[tokio::test]
async fn sessions_are_created_read_renewed_and_destroyed_in_consul_shape() {
    let dir = tempfile::tempdir().unwrap();
    let router = plane(dir.path()).await.router();
    let id = create(&router, "").await;
    let other = create(
        &router,
        r#"{"Name":"lock","Node":"n1","Checks":["disk"],"LockDelay":"5s","Behavior":"delete","TTL":"30s"}"#,
    )
    .await;
    let info = get(&router, &format!("/v1/session/info/{id}")).await;
    assert_eq!(info.status, StatusCode::OK);
    let session = &info.body[0];
    assert_eq!(session["ID"], id);
    assert_eq!(session["Node"], "server-1");
    assert_eq!(session["Behavior"], "release");
    assert_eq!(session["LockDelay"], 15_000_000_000u64);
    assert_eq!(session["NodeChecks"], json!(["serfHealth"]));
    assert_eq!(session["TTL"], "");
    assert!(session.get("Lease").is_none(), "{session}");
    assert!(session["CreateIndex"].as_u64().unwrap() > 0);
    let other_info = get(&router, &format!("/v1/session/info/{other}")).await;
    let s = &other_info.body[0];
    assert_eq!(
        (&s["Name"], &s["Node"], &s["Behavior"], &s["TTL"]),
        (
            &json!("lock"),
            &json!("n1"),
            &json!("delete"),
            &json!("30s")
        )
    );
    assert_eq!(s["LockDelay"], 5_000_000_000u64);
    assert_eq!(s["NodeChecks"], json!(["disk"]));
    // Field names match case-insensitively, as Go's decoder does (py-consul sends lower case).
    let lower = create(
        &router,
        r#"{"lockdelay":"3s","ttl":"20s","behavior":"delete"}"#,
    )
    .await;
    let s = &get(&router, &format!("/v1/session/info/{lower}"))
        .await
        .body[0];
    assert_eq!(
        (&s["LockDelay"], &s["TTL"]),
        (&json!(3_000_000_000u64), &json!("20s"))
    );
    assert_eq!(s["Behavior"], "delete");
    put(&router, &format!("/v1/session/destroy/{lower}"), "").await;
    let list = get(&router, "/v1/session/list").await;
    assert_eq!(list.body.as_array().unwrap().len(), 2);
    assert!(list.index.unwrap() > 0);
    let on_n1 = get(&router, "/v1/session/node/n1").await;
    assert_eq!(on_n1.body.as_array().unwrap().len(), 1);
    assert_eq!(on_n1.body[0]["ID"], other);
    let renewed = put(&router, &format!("/v1/session/renew/{other}"), "").await;
    assert_eq!(renewed.status, StatusCode::OK);
    assert_eq!(renewed.body[0]["ID"], other);
    let destroyed = put(&router, &format!("/v1/session/destroy/{other}"), "").await;
    assert_eq!(destroyed.body, json!(true));
    let gone = get(&router, &format!("/v1/session/info/{other}")).await;
    assert_eq!(gone.status, StatusCode::OK);
    assert_eq!(gone.body, json!([]));
    assert!(gone.index.is_some());
    let renew_gone = put(&router, &format!("/v1/session/renew/{other}"), "").await;
    assert_eq!(renew_gone.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn one_holder_at_a_time_and_lock_delay_after_the_holder_ends() {
    let dir = tempfile::tempdir().unwrap();
    let router = plane(dir.path()).await.router();
    let s1 = create(&router, r#"{"LockDelay":"1s"}"#).await;
    let s2 = create(&router, r#"{"LockDelay":"1s"}"#).await;
    let acquire = |s: &str| format!("/v1/kv/leader?acquire={s}");
    let release = |s: &str| format!("/v1/kv/leader?release={s}");
    assert_eq!(put(&router, &acquire(&s1), "one").await.body, json!(true));
    let held = key(&router, "leader").await;
    assert_eq!(
        (&held["Session"], &held["LockIndex"]),
        (&json!(s1), &json!(1))
    );
    assert_eq!(put(&router, &acquire(&s2), "two").await.body, json!(false));
    // The holder acquiring again updates the value, not the lock index.
    assert_eq!(put(&router, &acquire(&s1), "uno").await.body, json!(true));
    let held = key(&router, "leader").await;
    assert_eq!(held["LockIndex"], 1);
    assert_eq!(held["Value"], "dW5v");
    assert_eq!(put(&router, &release(&s2), "").await.body, json!(false));
    assert_eq!(put(&router, &release(&s1), "free").await.body, json!(true));
    let free = key(&router, "leader").await;
    assert!(free.get("Session").is_none(), "{free}");
    // An explicit release starts no lock-delay.
    assert_eq!(put(&router, &acquire(&s2), "two").await.body, json!(true));
    assert_eq!(key(&router, "leader").await["LockIndex"], 2);
    // The holder ends: its lock is released and nobody may take it for the lock-delay.
    assert_eq!(
        put(&router, &format!("/v1/session/destroy/{s2}"), "")
            .await
            .body,
        json!(true)
    );
    let released = key(&router, "leader").await;
    assert!(released.get("Session").is_none(), "{released}");
    assert_eq!(
        released["Value"], "dHdv",
        "behavior release keeps the value"
    );
    assert_eq!(put(&router, &acquire(&s1), "one").await.body, json!(false));
    eventually!(
        put(&router, &acquire(&s1), "one").await.body == json!(true),
        Duration::from_secs(5)
    );
    // Deleting a locked key takes its lock along.
    let deleted = call(&router, Method::DELETE, "/v1/kv/leader", "").await;
    assert_eq!(deleted.body, json!(true));
    assert_eq!(
        get(&router, "/v1/kv/leader").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn node_lease_expiry_releases_or_deletes_locks_and_wakes_a_blocking_query() {
    let dir = tempfile::tempdir().unwrap();
    let plane = plane(dir.path()).await;
    let router = plane.router();
    let stop = CancellationToken::new();
    tokio::spawn({
        let (plane, stop) = (plane.clone(), stop.clone());
        async move { plane.run_sessions(stop).await }
    });
    crate::remote::grant(&plane.catalog(), "n1", Duration::from_secs(1))
        .await
        .unwrap();
    let release = create(&router, r#"{"Node":"n1","LockDelay":"0s"}"#).await;
    let delete = create(&router, r#"{"Node":"n1","Behavior":"delete"}"#).await;
    let survivor = create(&router, r#"{"Node":"server-1"}"#).await;
    let acquired = put(&router, &format!("/v1/kv/a?acquire={release}"), "x").await;
    assert_eq!(acquired.body, json!(true));
    assert_eq!(
        put(&router, &format!("/v1/kv/b?acquire={delete}"), "y")
            .await
            .body,
        json!(true)
    );
    assert_eq!(
        put(&router, &format!("/v1/kv/c?acquire={survivor}"), "z")
            .await
            .body,
        json!(true)
    );
    let index = get(&router, "/v1/kv/a").await.index.unwrap();
    let waiting = tokio::spawn({
        let router = router.clone();
        async move { get(&router, &format!("/v1/kv/a?index={index}&wait=30s")).await }
    });
    // The lease is never renewed: it expires, the node's sessions end with their locks.
    let woke = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(woke.status, StatusCode::OK);
    eventually!(
        get(&router, "/v1/kv/a").await.body[0]
            .get("Session")
            .is_none(),
        Duration::from_secs(10)
    );
    eventually!(
        get(&router, "/v1/kv/b").await.status == StatusCode::NOT_FOUND,
        Duration::from_secs(10)
    );
    assert_eq!(get(&router, "/v1/kv/a").await.body[0]["Value"], "eA==");
    let sessions = get(&router, "/v1/session/list").await.body;
    let ids: Vec<&str> = sessions
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["ID"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [survivor.as_str()]);
    assert_eq!(key(&router, "c").await["Session"], json!(survivor));
    stop.cancel();
}

#[tokio::test]
async fn bad_session_input_is_400_naming_the_field_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let router = plane(dir.path()).await.router();
    let id = create(&router, "").await;
    for (body, field) in [
        (r#"{"Behavior":"bogus"}"#, "Behavior"),
        (r#"{"TTL":"5s"}"#, "TTL"),
        (r#"{"TTL":"soon"}"#, "TTL"),
        (r#"{"LockDelay":"2m"}"#, "LockDelay"),
        (r#"{"LockDelay":true}"#, "LockDelay"),
        (r#"{"Node":"nowhere"}"#, "Node"),
        (r#"{"Node":"n1","Checks":["nope"]}"#, "Checks"),
        (r#"{"Node":"n1","Checks":["broken"]}"#, "Checks"),
        (r#"{"Name":7}"#, "Name"),
    ] {
        let reply = put(&router, "/v1/session/create", body).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            reply.body
        );
        assert_eq!(
            reply.body["error"]["field"], field,
            "{body}: {}",
            reply.body
        );
    }
    let reply = put(&router, "/v1/session/create", "{not json").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let unknown = put(&router, "/v1/kv/k?acquire=no-such-session", "v").await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.body["error"]["field"], "acquire");
    let both = put(&router, &format!("/v1/kv/k?acquire={id}&release={id}"), "v").await;
    assert_eq!(both.status, StatusCode::BAD_REQUEST);
    let empty = put(&router, "/v1/kv/k?release=", "v").await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    assert_eq!(empty.body["error"]["field"], "release");
    // Nothing was stored by the refused requests.
    assert_eq!(get(&router, "/v1/kv/k").await.status, StatusCode::NOT_FOUND);
    let list = get(&router, "/v1/session/list").await.body;
    assert_eq!(list.as_array().unwrap().len(), 1);
}

/// Every request is a token with these rules, default deny.
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
async fn sessions_need_session_write_on_their_node_and_reads_are_filtered() {
    let dir = tempfile::tempdir().unwrap();
    let mut plane = plane(dir.path()).await;
    let open = plane.router();
    let theirs = create(&open, r#"{"Node":"n1"}"#).await;
    let rules = Rules::default()
        .with(Resource::Session, "server-1", false, Access::Write)
        .with(Resource::Key, "mine/", true, Access::Write);
    plane.set_resolver(plexus_runtime::acl::Resolver(Arc::new(Fixed(rules))));
    let router = plane.router();
    let denied = put(&router, "/v1/session/create", r#"{"Node":"n1"}"#).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN, "{}", denied.body);
    assert!(
        denied.body.to_string().contains("session:write"),
        "{}",
        denied.body
    );
    let ours = create(&router, "").await;
    let destroy_theirs = put(&router, &format!("/v1/session/destroy/{theirs}"), "").await;
    assert_eq!(destroy_theirs.status, StatusCode::FORBIDDEN);
    let renew_theirs = put(&router, &format!("/v1/session/renew/{theirs}"), "").await;
    assert_eq!(renew_theirs.status, StatusCode::FORBIDDEN);
    let list = get(&router, "/v1/session/list").await;
    let ids: Vec<&str> = list
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["ID"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [ours.as_str()]);
    // Key rules still apply to acquire.
    let outside = put(&router, &format!("/v1/kv/other?acquire={ours}"), "v").await;
    assert_eq!(outside.status, StatusCode::FORBIDDEN);
    let inside = put(&router, &format!("/v1/kv/mine/lock?acquire={ours}"), "v").await;
    assert_eq!(inside.body, json!(true));
}

#[tokio::test]
async fn a_session_ends_when_a_check_it_names_turns_critical() {
    let dir = tempfile::tempdir().unwrap();
    let plane = plane(dir.path()).await;
    let router = plane.router();
    let stop = CancellationToken::new();
    tokio::spawn({
        let (plane, stop) = (plane.clone(), stop.clone());
        async move { plane.run_sessions(stop).await }
    });
    let watched = create(
        &router,
        r#"{"Node":"n1","NodeChecks":["disk"],"LockDelay":"0s"}"#,
    )
    .await;
    let other = create(&router, r#"{"Node":"n1","NodeChecks":[]}"#).await;
    for (key, session) in [("leader", &watched), ("other", &other)] {
        let acquired = put(&router, &format!("/v1/kv/{key}?acquire={session}"), "x").await;
        assert_eq!(acquired.body, json!(true));
    }
    // `disk` turns critical: the session naming it ends and its lock is released; the other
    // session keeps its lock.
    plane
        .catalog()
        .register(registration(
            "n1",
            Vec::new(),
            vec![
                check("disk", "", CheckStatus::Critical),
                check("broken", "", CheckStatus::Critical),
            ],
        ))
        .await
        .unwrap();
    eventually!(
        get(&router, &format!("/v1/session/info/{watched}"))
            .await
            .body
            == json!([]),
        Duration::from_secs(10)
    );
    eventually!(
        get(&router, "/v1/kv/leader").await.body[0]
            .get("Session")
            .is_none(),
        Duration::from_secs(10)
    );
    assert_eq!(key(&router, "other").await["Session"], json!(other));
    stop.cancel();
}
