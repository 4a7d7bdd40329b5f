//! Tests: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use base64::Engine;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use plexus_api::acl::{Access, Resource, Rules};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::store::EmbeddedStore;

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn unb64(value: &Value) -> String {
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(value.as_str().unwrap())
            .unwrap(),
    )
    .unwrap()
}

fn app(dir: &std::path::Path, resolver: plexus_runtime::acl::Resolver) -> Router {
    let store: Arc<dyn crate::store::Store> = Arc::new(EmbeddedStore::open(dir).unwrap());
    plexus_runtime::acl::layer(
        super::api::router(Arc::clone(&store))
            .merge(crate::kv::api::router(crate::kv::Kv::new(store))),
        resolver,
    )
}

async fn call(router: &Router, method: Method, uri: &str, body: String) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn txn(router: &Router, ops: Value) -> (StatusCode, Value) {
    call(router, Method::PUT, "/v1/txn", ops.to_string()).await
}

fn kv(verb: &str, key: &str, value: Option<&str>, index: u64) -> Value {
    json!({"KV": {"Verb": verb, "Key": key, "Value": value.map(b64), "Index": index}})
}

#[tokio::test]
async fn transactions_commit_all_or_nothing_in_consul_shape() {
    let dir = tempfile::tempdir().unwrap();
    let router = app(dir.path(), Default::default());
    let (status, body) = txn(
        &router,
        json!([
            kv("set", "a", Some("1"), 0),
            kv("set", "b", Some("2"), 0),
            kv("get", "a", None, 0)
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["Errors"], Value::Null);
    let results = body["Results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    let index = results[0]["KV"]["ModifyIndex"].as_u64().unwrap();
    assert_eq!(
        results[1]["KV"]["ModifyIndex"], index,
        "one revision for the whole txn"
    );
    assert_eq!(
        results[0]["KV"]["Value"],
        Value::Null,
        "writes answer without the value"
    );
    assert_eq!(unb64(&results[2]["KV"]["Value"]), "1");

    // A failed check in the middle: 409 naming it, and the set before it is not applied.
    let (status, body) = txn(
        &router,
        json!([
            kv("set", "a", Some("changed"), 0),
            kv("cas", "b", Some("x"), index + 100)
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["Results"], Value::Null);
    assert_eq!(body["Errors"][0]["OpIndex"], 1);
    assert!(
        body["Errors"][0]["What"]
            .as_str()
            .unwrap()
            .contains("index is stale")
    );
    let (_, a) = call(&router, Method::GET, "/v1/kv/a", String::new()).await;
    assert_eq!(unb64(&a[0]["Value"]), "1");

    for (ops, op_index) in [
        (json!([kv("check-not-exists", "a", None, 0)]), 0),
        (
            json!([
                kv("check-index", "a", None, 0),
                kv("set", "z", Some("z"), 0)
            ]),
            0,
        ),
        (
            json!([kv("set", "z", Some("z"), 0), kv("get", "missing", None, 0)]),
            1,
        ),
        (json!([kv("delete-cas", "b", None, index + 100)]), 0),
    ] {
        let (status, body) = txn(&router, ops.clone()).await;
        assert_eq!(status, StatusCode::CONFLICT, "{ops}: {body}");
        assert_eq!(body["Errors"][0]["OpIndex"], op_index, "{ops}: {body}");
    }
    let (status, _) = call(&router, Method::GET, "/v1/kv/z", String::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no failed txn wrote z");

    // check-index and cas with the right index, get-tree, delete-tree.
    let (status, body) = txn(
        &router,
        json!([
            kv("check-index", "a", None, index),
            kv("cas", "b", Some("3"), index),
            kv("set", "t/1", Some("x"), 0),
            kv("set", "t/2", Some("y"), 0),
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = txn(&router, json!([kv("get-tree", "t/", None, 0)])).await;
    assert_eq!(status, StatusCode::OK);
    let keys: Vec<&str> = body["Results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["KV"]["Key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["t/1", "t/2"]);
    let (status, _) = txn(&router, json!([kv("delete-tree", "t/", None, 0)])).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&router, Method::GET, "/v1/kv/t/?recurse", String::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_transactions_are_refused_naming_the_operation_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let router = app(dir.path(), Default::default());
    let too_many: Vec<Value> = (0..65)
        .map(|i| kv("set", &format!("k{i}"), Some("v"), 0))
        .collect();
    let (status, body) = txn(&router, Value::Array(too_many)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("65 > 64")
    );
    for (ops, field) in [
        (
            json!([kv("set", "a", Some("v"), 0), kv("frobnicate", "a", None, 0)]),
            "[1].KV.Verb",
        ),
        (
            json!([kv("set", "a", Some("v"), 0), {"KV": {"Verb": "set", "Key": "b", "Value": "%%%"}}]),
            "[1].KV.Value",
        ),
        (json!([kv("set", "a/../b", Some("v"), 0)]), "[0].KV.Key"),
        // The lock verbs need a session (they were refused as unsupported before they existed).
        (json!([kv("lock", "a", Some("v"), 0)]), "[0].KV.Session"),
        // Node operations exist now: one without its node names the missing record.
        (json!([{"Node": {"Verb": "set"}}]), "[0].Node.Node"),
        (
            json!([{"Node": {"Verb": "frob", "Node": {"Node": "n"}}}]),
            "[0].Node.Verb",
        ),
        (
            json!([{"Service": {"Verb": "set", "Node": "n", "Service": {"Port": 1}}}]),
            "[0].Service.Service.ID",
        ),
        (
            json!([{"Check": {"Verb": "set", "Check": {"Node": "n"}}}]),
            "[0].Check.Check.CheckID",
        ),
        (
            json!([{"Service": {"Verb": "set", "Node": "n", "Service": {"ID": "s", "Service": "s", "Port": "x"}}}]),
            "[0].Service.Service.Port",
        ),
        (json!([{}]), "[0]"),
    ] {
        let (status, body) = txn(&router, ops.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{ops}: {body}");
        assert_eq!(body["error"]["field"], field, "{ops}: {body}");
    }
    let (status, _) = call(
        &router,
        Method::PUT,
        "/v1/txn",
        "{\"not\": \"an array\"}".into(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(&router, Method::GET, "/v1/kv/?recurse", String::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was written");
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
async fn every_operation_is_checked_against_key_rules() {
    let dir = tempfile::tempdir().unwrap();
    let rules = Rules::default()
        .with(Resource::Key, "app/", true, Access::Write)
        .with(Resource::Key, "ro/", true, Access::Read);
    let router = app(
        dir.path(),
        plexus_runtime::acl::Resolver(Arc::new(Fixed(rules))),
    );
    let (status, body) = txn(
        &router,
        json!([
            kv("set", "app/x", Some("1"), 0),
            kv("set", "ro/x", Some("1"), 0)
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.to_string().contains("key:write"), "{body}");
    let (status, _) = txn(&router, json!([kv("get-tree", "app/", None, 0)])).await;
    assert_eq!(status, StatusCode::OK, "an empty tree");
    let (status, _) = txn(
        &router,
        json!([
            kv("set", "app/x", Some("1"), 0),
            kv("check-not-exists", "ro/y", None, 0)
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = txn(&router, json!([kv("get", "secret", None, 0)])).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// Eight writers move amounts between four accounts with conflicting transactions (each names
/// two accounts by their modify index plus a log key of its own). Whatever commits must be all
/// or nothing: the total never changes, every committed log entry's transfer is in the
/// balances, no rolled-back one is, and each committed answer is at one revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_conflicting_writers_keep_the_all_or_nothing_invariant() {
    const ACCOUNTS: usize = 4;
    const START: i64 = 100;
    let dir = tempfile::tempdir().unwrap();
    let router = app(dir.path(), Default::default());
    let init: Vec<Value> = (0..ACCOUNTS)
        .map(|i| kv("set", &format!("acct/{i}"), Some(&START.to_string()), 0))
        .collect();
    assert_eq!(txn(&router, Value::Array(init)).await.0, StatusCode::OK);
    let mut writers = Vec::new();
    for w in 0..8usize {
        let router = router.clone();
        writers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for n in 0..12usize {
                let (from, to) = ((w + n) % ACCOUNTS, (w + n + 1 + n % 2) % ACCOUNTS);
                let amount = (w * 7 + n * 3) as i64 % 20 + 1;
                let (_, read) = txn(
                    &router,
                    json!([
                        kv("get", &format!("acct/{from}"), None, 0),
                        kv("get", &format!("acct/{to}"), None, 0)
                    ]),
                )
                .await;
                let balance = |i: usize| -> (i64, u64) {
                    let kv = &read["Results"][i]["KV"];
                    (
                        unb64(&kv["Value"]).parse().unwrap(),
                        kv["ModifyIndex"].as_u64().unwrap(),
                    )
                };
                let ((from_balance, from_index), (to_balance, to_index)) = (balance(0), balance(1));
                let log = format!("log/{w}-{n}");
                let (status, body) = txn(
                    &router,
                    json!([
                        kv(
                            "cas",
                            &format!("acct/{from}"),
                            Some(&(from_balance - amount).to_string()),
                            from_index
                        ),
                        kv(
                            "cas",
                            &format!("acct/{to}"),
                            Some(&(to_balance + amount).to_string()),
                            to_index
                        ),
                        kv("set", &log, Some(&format!("{from},{to},{amount}")), 0),
                    ]),
                )
                .await;
                assert!(
                    status == StatusCode::OK || status == StatusCode::CONFLICT,
                    "{status}: {body}"
                );
                if status == StatusCode::OK {
                    let indexes: Vec<u64> = body["Results"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r["KV"]["ModifyIndex"].as_u64().unwrap())
                        .collect();
                    assert!(indexes.windows(2).all(|w| w[0] == w[1]), "{body}");
                }
                outcomes.push((log, status == StatusCode::OK, from, to, amount));
            }
            outcomes
        }));
    }
    let mut expected = [START; ACCOUNTS];
    let mut committed = 0;
    let mut outcomes = Vec::new();
    for writer in writers {
        outcomes.extend(writer.await.unwrap());
    }
    for (log, ok, from, to, amount) in &outcomes {
        let (status, _) = call(
            &router,
            Method::GET,
            &format!("/v1/kv/{log}"),
            String::new(),
        )
        .await;
        assert_eq!(
            status == StatusCode::OK,
            *ok,
            "{log}: log present iff its txn committed"
        );
        if *ok {
            committed += 1;
            expected[*from] -= amount;
            expected[*to] += amount;
        }
    }
    let mut total = 0;
    for (i, want) in expected.iter().enumerate() {
        let (_, body) = call(
            &router,
            Method::GET,
            &format!("/v1/kv/acct/{i}"),
            String::new(),
        )
        .await;
        let balance: i64 = unb64(&body[0]["Value"]).parse().unwrap();
        assert_eq!(balance, *want, "account {i}");
        total += balance;
    }
    assert_eq!(total, START * ACCOUNTS as i64);
    assert!(
        committed > 0 && committed < outcomes.len(),
        "the writers conflicted: {committed} of {}",
        outcomes.len()
    );
}

/// The whole control plane's router on an embedded store (sessions, catalog, KV, txn).
fn plane_router(dir: &std::path::Path) -> Router {
    crate::ControlPlane::open_embedded(
        dir,
        crate::ServerInfo {
            datacenter: "dc1".to_owned(),
            node_name: "server-1".to_owned(),
            leader_addr: "127.0.0.1:8300".to_owned(),
        },
    )
    .unwrap()
    .router()
}

fn locking(verb: &str, key: &str, value: Option<&str>, session: &str) -> Value {
    json!({"KV": {"Verb": verb, "Key": key, "Value": value.map(b64), "Session": session}})
}

#[tokio::test]
async fn lock_unlock_and_check_session_follow_acquire_and_release() {
    let dir = tempfile::tempdir().unwrap();
    let router = plane_router(dir.path());
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (status, body) = call(
            &router,
            Method::PUT,
            "/v1/session/create",
            r#"{"Node":"server-1","LockDelay":"0s"}"#.into(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        ids.push(body["ID"].as_str().unwrap().to_owned());
    }
    let (s1, s2) = (ids[0].as_str(), ids[1].as_str());

    // s1 locks `leader` and writes `config` in the same transaction.
    let (status, body) = txn(
        &router,
        json!([
            locking("lock", "leader", Some("me"), s1),
            kv("set", "config", Some("1"), 0)
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["Results"][0]["KV"]["Session"], s1);
    assert_eq!(body["Results"][0]["KV"]["LockIndex"], 1);
    // The KV API sees the holder.
    let (_, read) = call(&router, Method::GET, "/v1/kv/leader", String::new()).await;
    assert_eq!(read[0]["Session"], s1);

    // s2 cannot lock it; the whole transaction (with its set) fails, naming the operation.
    let (status, body) = txn(
        &router,
        json!([
            kv("set", "config", Some("2"), 0),
            locking("lock", "leader", Some("you"), s2)
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["Errors"][0]["OpIndex"], 1);
    assert!(
        body["Errors"][0]["What"]
            .as_str()
            .unwrap()
            .contains("already held")
    );
    let (_, config) = call(&router, Method::GET, "/v1/kv/config?raw", String::new()).await;
    assert_eq!(config, json!(1));

    // check-session guards a write on the holder; unlock by another session fails.
    let (status, body) = txn(
        &router,
        json!([
            locking("check-session", "leader", None, s1),
            kv("set", "config", Some("3"), 0)
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = txn(
        &router,
        json!([locking("check-session", "leader", None, s2)]),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = txn(&router, json!([locking("unlock", "leader", Some("x"), s2)])).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["Errors"][0]["What"]
            .as_str()
            .unwrap()
            .contains("isn't held")
    );

    // s1 unlocks; s2 may lock now (LockIndex 2). A destroyed session cannot lock.
    let (status, body) = txn(
        &router,
        json!([locking("unlock", "leader", Some("bye"), s1)]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, read) = call(&router, Method::GET, "/v1/kv/leader", String::new()).await;
    assert!(read[0].get("Session").is_none(), "{read}");
    let (status, body) = txn(&router, json!([locking("lock", "leader", Some("you"), s2)])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["Results"][0]["KV"]["LockIndex"], 2);
    let (status, _) = call(
        &router,
        Method::PUT,
        &format!("/v1/session/destroy/{s1}"),
        String::new(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = txn(&router, json!([locking("lock", "other", Some("v"), s1)])).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["Errors"][0]["What"]
            .as_str()
            .unwrap()
            .contains("invalid session")
    );
}

#[tokio::test]
async fn node_service_and_check_operations_commit_with_kv_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let router = plane_router(dir.path());
    let node = json!({"Node": {"Verb": "set", "Node": {"Node": "ext", "Address": "192.0.2.7", "Meta": {"rack": "r1"}}}});
    let service = json!({"Service": {"Verb": "set", "Node": "ext",
        "Service": {"ID": "db-1", "Service": "db", "Port": 5432, "Tags": ["primary"]}}});
    let check = json!({"Check": {"Verb": "set", "Check": {"Node": "ext", "CheckID": "db-alive",
        "Name": "db alive", "Status": "passing", "ServiceID": "db-1"}}});
    let (status, body) = txn(
        &router,
        json!([
            node,
            service,
            check,
            kv("set", "db/leader", Some("db-1"), 0)
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["Results"].as_array().unwrap();
    assert_eq!(results.len(), 4, "{body}");
    assert_eq!(results[0]["Node"]["Node"], "ext");
    assert_eq!(results[1]["Service"]["ID"], "db-1");
    assert_eq!(results[2]["Check"]["ServiceName"], "db");
    let index = results[0]["Node"]["ModifyIndex"].as_u64().unwrap();
    assert_eq!(results[3]["KV"]["ModifyIndex"].as_u64().unwrap(), index);
    // The catalog sees them (its index follows the store).
    plexus_test::eventually!(
        call(
            &router,
            Method::GET,
            "/v1/health/service/db?passing",
            String::new()
        )
        .await
        .1
        .as_array()
        .is_some_and(|rows| rows.len() == 1)
    );
    let (_, rows) = call(
        &router,
        Method::GET,
        "/v1/catalog/service/db",
        String::new(),
    )
    .await;
    assert_eq!(rows[0]["NodeMeta"]["rack"], "r1", "{rows}");

    // A service on a node that does not exist fails the whole transaction, KV write included.
    let (status, body) = txn(
        &router,
        json!([
            kv("set", "db/leader", Some("nobody"), 0),
            {"Service": {"Verb": "set", "Node": "ghost", "Service": {"ID": "x", "Service": "x"}}}
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["Errors"][0]["OpIndex"], 1);
    assert!(
        body["Errors"][0]["What"]
            .as_str()
            .unwrap()
            .contains("\"ghost\" doesn't exist")
    );
    let (_, leader) = call(&router, Method::GET, "/v1/kv/db/leader?raw", String::new()).await;
    assert_eq!(leader, Value::Null, "raw value is not JSON");
    let (_, leader) = call(&router, Method::GET, "/v1/kv/db/leader", String::new()).await;
    assert_eq!(unb64(&leader[0]["Value"]), "db-1");

    // cas on a stale index fails; get reads; deleting the node takes its service and check.
    let (status, body) = txn(
        &router,
        json!([{"Node": {"Verb": "cas", "Node": {"Node": "ext", "Address": "192.0.2.8", "ModifyIndex": 999}}}]),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["Errors"][0]["What"]
            .as_str()
            .unwrap()
            .contains("index is stale")
    );
    let (status, body) = txn(
        &router,
        json!([{"Service": {"Verb": "get", "Node": "ext", "Service": {"ID": "db-1"}}}]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["Results"][0]["Service"]["Port"], 5432);
    let (status, body) = txn(
        &router,
        json!([{"Node": {"Verb": "delete", "Node": {"Node": "ext"}}}]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    plexus_test::eventually!(
        call(
            &router,
            Method::GET,
            "/v1/catalog/service/db",
            String::new()
        )
        .await
        .1 == json!([])
    );
    let (_, checks) = call(&router, Method::GET, "/v1/health/checks/db", String::new()).await;
    assert_eq!(checks, json!([]));
}
