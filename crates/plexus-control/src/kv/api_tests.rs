//! Tests: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::router;
use crate::kv::Kv;
use crate::store::EmbeddedStore;

struct Reply {
    status: StatusCode,
    index: Option<u64>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

async fn call(router: &Router, method: Method, uri: &str, body: Vec<u8>) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let index = response
        .headers()
        .get("x-consul-index")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Reply {
        status,
        index,
        body,
    }
}

fn app(dir: &std::path::Path) -> Router {
    plexus_runtime::acl::layer(
        router(Kv::new(Arc::new(EmbeddedStore::open(dir).unwrap()))),
        plexus_runtime::acl::Resolver::default(),
    )
}

#[tokio::test]
async fn consul_shapes_for_get_put_recurse_keys_raw_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    let put = call(
        &app,
        Method::PUT,
        "/v1/kv/web/config?flags=42",
        b"hello".to_vec(),
    )
    .await;
    assert_eq!((put.status, put.json()), (StatusCode::OK, json!(true)));
    call(&app, Method::PUT, "/v1/kv/web/sub/x", b"2".to_vec()).await;
    let got = call(&app, Method::GET, "/v1/kv/web/config", Vec::new()).await;
    assert_eq!(got.status, StatusCode::OK);
    let pair = &got.json()[0];
    assert_eq!(pair["Key"], "web/config");
    assert_eq!(pair["Flags"], 42);
    assert_eq!(pair["Value"], "aGVsbG8=");
    assert_eq!(pair["LockIndex"], 0);
    assert_eq!(got.index, pair["ModifyIndex"].as_u64().map(|i| i + 1));
    let raw = call(&app, Method::GET, "/v1/kv/web/config?raw", Vec::new()).await;
    assert_eq!(raw.body, b"hello");
    let all = call(&app, Method::GET, "/v1/kv/web/?recurse", Vec::new()).await;
    assert_eq!(all.json().as_array().unwrap().len(), 2);
    let keys = call(
        &app,
        Method::GET,
        "/v1/kv/web/?keys&separator=/",
        Vec::new(),
    )
    .await;
    assert_eq!(keys.json(), json!(["web/config", "web/sub/"]));
    let root = call(&app, Method::GET, "/v1/kv/?keys", Vec::new()).await;
    assert_eq!(root.json(), json!(["web/config", "web/sub/x"]));
    let missing = call(&app, Method::GET, "/v1/kv/nope", Vec::new()).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.index.is_some(), "404 carries X-Consul-Index");
    let deleted = call(&app, Method::DELETE, "/v1/kv/web?recurse", Vec::new()).await;
    assert_eq!(deleted.json(), json!(true));
    let gone = call(&app, Method::GET, "/v1/kv/web/?recurse", Vec::new()).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn cas_create_only_and_stale_index_leave_the_value_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    let created = call(&app, Method::PUT, "/v1/kv/lock?cas=0", b"a".to_vec()).await;
    assert_eq!(created.json(), json!(true));
    let again = call(&app, Method::PUT, "/v1/kv/lock?cas=0", b"b".to_vec()).await;
    assert_eq!((again.status, again.json()), (StatusCode::OK, json!(false)));
    let modify = call(&app, Method::GET, "/v1/kv/lock", Vec::new())
        .await
        .json()[0]["ModifyIndex"]
        .as_u64()
        .unwrap();
    call(&app, Method::PUT, "/v1/kv/other", b"x".to_vec()).await;
    let stale = format!("/v1/kv/lock?cas={}", modify + 1);
    assert_eq!(
        call(&app, Method::PUT, &stale, b"c".to_vec()).await.json(),
        json!(false)
    );
    let raw = call(&app, Method::GET, "/v1/kv/lock?raw", Vec::new()).await;
    assert_eq!(raw.body, b"a");
    let fresh = format!("/v1/kv/lock?cas={modify}");
    assert_eq!(
        call(&app, Method::PUT, &fresh, b"d".to_vec()).await.json(),
        json!(true)
    );
    let stale_delete = format!("/v1/kv/lock?cas={modify}");
    assert_eq!(
        call(&app, Method::DELETE, &stale_delete, Vec::new())
            .await
            .json(),
        json!(false)
    );
    assert_eq!(
        call(&app, Method::GET, "/v1/kv/lock?raw", Vec::new())
            .await
            .body,
        b"d"
    );
}

#[tokio::test]
async fn bad_keys_values_and_parameters_are_refused_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    call(&app, Method::PUT, "/v1/kv/keep", b"safe".to_vec()).await;
    let long = format!("/v1/kv/{}", "k".repeat(513));
    let cases: [(&str, &str); 5] = [
        ("/v1/kv/a..b", ".."),
        ("/v1/kv/a%00b", "NUL"),
        (long.as_str(), "513 bytes"),
        ("/v1/kv/", "missing key"),
        ("/v1/kv/x?cas=-1", "cas"),
    ];
    for (uri, cause) in cases {
        let reply = call(&app, Method::PUT, uri, b"v".to_vec()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{uri}");
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains(cause), "{uri}: {message}");
    }
    let flags = call(&app, Method::PUT, "/v1/kv/x?flags=red", b"v".to_vec()).await;
    assert_eq!(flags.json()["error"]["field"], "flags");
    let get_nul = call(&app, Method::GET, "/v1/kv/a%00b", Vec::new()).await;
    assert_eq!(get_nul.status, StatusCode::BAD_REQUEST);
    let big = vec![b'x'; plexus_api::kv::MAX_VALUE_BYTES + 1];
    let too_big = call(&app, Method::PUT, "/v1/kv/big", big).await;
    assert_eq!(too_big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        too_big.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("524288")
    );
    let exact = vec![b'x'; plexus_api::kv::MAX_VALUE_BYTES];
    assert_eq!(
        call(&app, Method::PUT, "/v1/kv/big", exact).await.status,
        StatusCode::OK
    );
    let keys = call(&app, Method::GET, "/v1/kv/?keys", Vec::new()).await;
    assert_eq!(keys.json(), json!(["big", "keep"]));
    assert_eq!(
        call(&app, Method::GET, "/v1/kv/keep?raw", Vec::new())
            .await
            .body,
        b"safe"
    );
}

#[tokio::test]
async fn a_blocking_read_wakes_on_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    let put = call(&app, Method::PUT, "/v1/kv/k", b"1".to_vec()).await;
    let index = put.index.unwrap();
    let waiter = tokio::spawn({
        let app = app.clone();
        async move {
            let uri = format!("/v1/kv/k?index={index}&wait=10m");
            call(&app, Method::GET, &uri, Vec::new()).await
        }
    });
    // The read blocks: the index has not moved.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished());
    call(&app, Method::PUT, "/v1/kv/k", b"2".to_vec()).await;
    let woke = waiter.await.unwrap();
    assert!(woke.index.unwrap() > index);
    assert_eq!(woke.json()[0]["Value"], "Mg==");
}
