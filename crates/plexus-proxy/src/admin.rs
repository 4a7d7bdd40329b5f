//! The admin HTTP server: readiness, metrics and the applied configuration.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /ready` | 200 `ready` once the first configuration is applied with all its listeners bound, else 503 |
//! | `GET /metrics`, `GET /stats` | Prometheus text (OpenMetrics) of the proxy's registry |
//! | `GET /config` | JSON: sidecar id, app id, applied revision, inbound and upstream listeners with their endpoints, `stale_since` (503 before the first configuration) |
//!
//! While no control-plane server answers, `/ready` stays 200 (the last good configuration is
//! served) and says `stale since <time>`; `/config` carries the same time in `stale_since`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use plexus_runtime::http::{ApiError, not_found_fallback};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::watch;
use tracing::error;

use crate::discovery::EndpointSet;

/// OpenMetrics text, which Prometheus scrapes natively.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The applied configuration, as the listeners run it.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    /// The sidecar's service id.
    pub service: String,
    /// The app's service id.
    pub destination: String,
    /// `X-Consul-Index` of the applied registration.
    pub revision: u64,
    /// Bound address and local app address (`None` if re-binding failed after a change).
    pub inbound: Option<(SocketAddr, SocketAddr)>,
    /// The outbound listeners.
    pub upstreams: Vec<UpstreamView>,
}

/// One outbound listener as the admin server shows it.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamView {
    /// The upstream service.
    pub destination: String,
    /// The address actually bound.
    pub bind: SocketAddr,
    /// The upstream's latest endpoints.
    pub endpoints: watch::Receiver<Arc<EndpointSet>>,
    /// Endpoints ejected by outlier detection now (of any service its chain names).
    pub ejected: watch::Receiver<Vec<SocketAddr>>,
}

#[derive(Clone)]
struct AdminState {
    registry: Arc<Registry>,
    applied: watch::Receiver<Option<Arc<Snapshot>>>,
    control: plexus_api::client::Client,
}

/// The admin routes over `registry` and the latest applied [`Snapshot`] (`None`: not ready).
pub(crate) fn router(
    registry: Arc<Registry>,
    applied: watch::Receiver<Option<Arc<Snapshot>>>,
    control: plexus_api::client::Client,
) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/stats", get(metrics))
        .route("/config", get(config))
        .fallback(not_found_fallback)
        .with_state(AdminState {
            registry,
            applied,
            control,
        })
}

async fn ready(State(state): State<AdminState>) -> Response {
    if state.applied.borrow().is_some() {
        match crate::staleness::stale_since(&state.control) {
            Some(since) => (StatusCode::OK, format!("ready (stale since {since})")).into_response(),
            None => (StatusCode::OK, "ready").into_response(),
        }
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    match crate::metrics::encode(&state.registry) {
        Ok(text) => ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            error!(%error, "cannot encode metrics");
            ApiError::internal("cannot encode metrics").into_response()
        }
    }
}

#[derive(Debug, Serialize)]
struct ConfigView {
    service: String,
    destination: String,
    revision: u64,
    inbound: Option<InboundView>,
    upstreams: Vec<UpstreamJson>,
    /// When the control plane stopped answering (`null` while it answers).
    stale_since: Option<String>,
}

#[derive(Debug, Serialize)]
struct InboundView {
    bind: SocketAddr,
    local_app: SocketAddr,
}

#[derive(Debug, Serialize)]
struct UpstreamJson {
    destination: String,
    bind: SocketAddr,
    endpoints: Vec<SocketAddr>,
    /// Ejected by outlier detection.
    ejected: Vec<SocketAddr>,
}

async fn config(State(state): State<AdminState>) -> Response {
    let Some(snapshot) = state.applied.borrow().clone() else {
        return ApiError::unavailable("no configuration has been applied yet").into_response();
    };
    let view = ConfigView {
        service: snapshot.service.clone(),
        destination: snapshot.destination.clone(),
        revision: snapshot.revision,
        inbound: snapshot
            .inbound
            .map(|(bind, local_app)| InboundView { bind, local_app }),
        upstreams: snapshot
            .upstreams
            .iter()
            .map(|upstream| UpstreamJson {
                destination: upstream.destination.clone(),
                bind: upstream.bind,
                endpoints: upstream.endpoints.borrow().addrs.clone(),
                ejected: upstream.ejected.borrow().clone(),
            })
            .collect(),
        stale_since: crate::staleness::stale_since(&state.control),
    };
    axum::Json(view).into_response()
}
