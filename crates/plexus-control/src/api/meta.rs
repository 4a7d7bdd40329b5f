//! Consul's query-meta headers on every read answer.
//!
//! Consul clients read `X-Consul-Index`, `X-Consul-KnownLeader` and `X-Consul-LastContact` from
//! every `GET` answer, errors and 404s included (some fail with "missing index header" on a 404
//! without them). Handlers that know their own index set it (`indexed_json`); this layer fills in
//! whatever a `/v1/` read answer still lacks: the store's current revision as the index, `true`
//! as the known leader (the store is the source of truth: an embedded store is its own leader,
//! an etcd cluster elects one itself) and `0` ms since the last contact with it.
//!
//! `?cached` (Consul's agent cache) is answered from the store like any read: the answer says
//! `X-Cache: MISS` and `Age: 0`, as a fresh fetch of Consul's cache does.

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderValue, Method};
use tokio::sync::watch;

/// Adds the query-meta headers to `GET`/`HEAD` answers under `/v1/` of `router`.
pub fn layer(router: Router, revisions: watch::Receiver<u64>) -> Router {
    router.layer(axum::middleware::from_fn_with_state(revisions, add_meta))
}

async fn add_meta(
    State(revisions): State<watch::Receiver<u64>>,
    request: Request,
    next: Next,
) -> Response {
    let read = matches!(*request.method(), Method::GET | Method::HEAD)
        && request.uri().path().starts_with("/v1/");
    let cached = read
        && request.uri().query().is_some_and(|q| {
            q.split('&')
                .any(|p| p == "cached" || p.starts_with("cached="))
        });
    let mut response = next.run(request).await;
    if read {
        let headers = response.headers_mut();
        if cached {
            headers.insert("x-cache", HeaderValue::from_static("MISS"));
            headers.insert("age", HeaderValue::from_static("0"));
        }
        if !headers.contains_key("x-consul-index") {
            let index = (*revisions.borrow()).max(1);
            headers.insert("x-consul-index", HeaderValue::from(index));
        }
        if !headers.contains_key("x-consul-knownleader") {
            headers.insert("x-consul-knownleader", HeaderValue::from_static("true"));
        }
        if !headers.contains_key("x-consul-lastcontact") {
            headers.insert("x-consul-lastcontact", HeaderValue::from_static("0"));
        }
    }
    response
}
