//! Whether this server can reach a quorum of its store, and refusing requests at once while it
//! cannot.
//!
//! A replica cut off from the majority of its etcd cluster cannot commit a write nor serve a
//! linearizable read: left alone, each request would wait out the store's timeouts (tens of
//! seconds) and then fail with a vague error. [`monitor`] asks the store for its current
//! revision (a linearizable read on etcd, a memory read on the embedded store) every
//! [`PROBE_EVERY`], each bounded by [`PROBE_TIMEOUT`]; one failure marks the store lost, one
//! success marks it back. While it is lost, [`refuse_without_quorum`] answers every request with
//! 503 `no_quorum` saying since when and why, `X-Consul-KnownLeader: false` (what Consul clients
//! look at) and [`NO_QUORUM_HEADER`], on which the typed client tries its next server. Reads are
//! refused, not served stale: nothing this replica has could be told apart from the truth.
//!
//! ```text
//!  monitor ── current_revision (≤ 2 s) every 1 s ──► watch<Quorum> ──► refuse_without_quorum
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use plexus_api::error::NO_QUORUM_HEADER;
use plexus_runtime::http::ApiError;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::Store;
use crate::api::ErrorChain;

/// How often the store is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long one probe may take before the store counts as lost.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the last probe found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Quorum {
    /// The store answered.
    #[default]
    Reachable,
    /// The store did not answer (in time) since `since`.
    Lost {
        /// The first failed probe.
        since: SystemTime,
        /// Why, as a sentence.
        cause: String,
    },
}

/// Probes `store` until `stop` fires, publishing what it finds on `tx` (only changes).
pub async fn monitor(store: Arc<dyn Store>, tx: watch::Sender<Quorum>, stop: CancellationToken) {
    loop {
        let probe = tokio::time::timeout(PROBE_TIMEOUT, store.current_revision());
        let found = tokio::select! {
            _ = stop.cancelled() => return,
            found = probe => found,
        };
        let cause = match found {
            Ok(Ok(_)) => None,
            Ok(Err(error)) => Some(ErrorChain(&error).to_string()),
            Err(_) => Some(format!("the store did not answer within {PROBE_TIMEOUT:?}")),
        };
        tx.send_if_modified(|current| match (&cause, &*current) {
            (None, Quorum::Lost { .. }) => {
                tracing::info!("store reachable again; serving requests");
                *current = Quorum::Reachable;
                true
            }
            (Some(cause), Quorum::Reachable) => {
                tracing::warn!(%cause, "store unreachable (no quorum); refusing requests until it is back");
                *current = Quorum::Lost {
                    since: SystemTime::now(),
                    cause: cause.clone(),
                };
                true
            }
            _ => false,
        });
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PROBE_EVERY) => {}
        }
    }
}

/// Axum middleware: 503 `no_quorum` while the store is lost, else the request goes on.
pub async fn refuse_without_quorum(
    State(quorum): State<watch::Receiver<Quorum>>,
    request: Request,
    next: Next,
) -> Response {
    let refusal = match &*quorum.borrow() {
        Quorum::Reachable => None,
        Quorum::Lost { since, cause } => Some(refused(*since, cause)),
    };
    match refusal {
        Some(response) => response,
        None => next.run(request).await,
    }
}

fn refused(since: SystemTime, cause: &str) -> Response {
    let seconds = SystemTime::now()
        .duration_since(since)
        .unwrap_or_default()
        .as_secs();
    let mut response = ApiError::new(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "no_quorum",
        format!(
            "this server has not reached a quorum of its store for {seconds} s ({cause}); \
             nothing is read or written here until it has: use another server"
        ),
    )
    .into_response();
    let headers = response.headers_mut();
    headers.insert(NO_QUORUM_HEADER, http::HeaderValue::from_static("true"));
    headers.insert(
        "x-consul-knownleader",
        http::HeaderValue::from_static("false"),
    );
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::EmbeddedStore;
    use axum::routing::get;
    use tower::ServiceExt;

    #[tokio::test]
    async fn requests_are_refused_while_the_store_is_lost() {
        let (tx, rx) = watch::channel(Quorum::Reachable);
        let app = axum::Router::new()
            .route("/v1/kv/x", get(|| async { "value" }))
            .layer(axum::middleware::from_fn_with_state(
                rx,
                refuse_without_quorum,
            ));
        let get = |app: axum::Router| async move {
            let request = Request::builder()
                .uri("/v1/kv/x")
                .body(axum::body::Body::empty())
                .unwrap();
            app.oneshot(request).await.unwrap()
        };
        assert_eq!(get(app.clone()).await.status(), 200);
        tx.send_replace(Quorum::Lost {
            since: SystemTime::now(),
            cause: "etcd: request timed out".into(),
        });
        let refused = get(app.clone()).await;
        assert_eq!(refused.status(), 503);
        assert_eq!(refused.headers()[NO_QUORUM_HEADER], "true");
        assert_eq!(refused.headers()["x-consul-knownleader"], "false");
        let body = axum::body::to_bytes(refused.into_body(), 1 << 16)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["code"], "no_quorum");
        assert!(
            json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("etcd: request timed out"),
            "{json}"
        );
        tx.send_replace(Quorum::Reachable);
        assert_eq!(get(app).await.status(), 200);
    }

    #[tokio::test]
    async fn a_reachable_store_stays_reachable() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let (tx, mut rx) = watch::channel(Quorum::Lost {
            since: SystemTime::now(),
            cause: "start".into(),
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(monitor(store, tx, stop.clone()));
        rx.wait_for(|q| *q == Quorum::Reachable).await.unwrap();
        stop.cancel();
        task.await.unwrap();
    }
}
