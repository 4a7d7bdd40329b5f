//! The web UI at `/ui/` (`/` redirects there), and the two read endpoints it needs beyond
//! Consul's API.
//!
//! - Assets: hand-written HTML, CSS and JavaScript modules (no build step), compiled into the
//!   binary with `include_str!`, served with a strict Content-Security-Policy (`'self'` only: the
//!   page can fetch nothing from elsewhere). Pages are routed by the URL fragment
//!   (`/ui/#/services/web`), so the server only ever serves these few files.
//! - Data: the public HTTP API only (`/v1/...`), with blocking queries (`?index=&wait=`) for live
//!   updates: one request in flight per live view, answered when something changed.
//! - [`summary`]: `GET /v1/mesh/services`, one row per service with health counts (a blocking
//!   query on the catalog).
//! - [`metrics`]: `GET /v1/mesh/topology`, who calls whom with golden metrics read from the
//!   sidecars' `/metrics` (a blocking query on the scrape sequence).
//!
//! ACLs: the assets are public (they hold no data); both endpoints list only the services the
//! token may read (`service:read`; an edge needs both ends), with
//! `X-Consul-Results-Filtered-By-ACLs: true` when something was left out.

pub mod metrics;
pub mod summary;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};
use plexus_runtime::acl::{Authz, filter, mark_filtered};
use plexus_runtime::http::{ApiError, BlockingQuery, indexed_json};

use crate::api::catalog_error;
use crate::catalog::StoreCatalog;
use crate::store::Store;

/// The assets: path under `/ui/`, content type, body.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_str!("assets/index.html"),
    ),
    ("app.js", JS, include_str!("assets/app.js")),
    ("api.js", JS, include_str!("assets/api.js")),
    ("dom.js", JS, include_str!("assets/dom.js")),
    ("services.js", JS, include_str!("assets/services.js")),
    ("kv.js", JS, include_str!("assets/kv.js")),
    ("connect.js", JS, include_str!("assets/connect.js")),
    ("graph.js", JS, include_str!("assets/graph.js")),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("assets/style.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("assets/favicon.svg"),
    ),
];
const JS: &str = "text/javascript; charset=utf-8";

/// Only this origin: scripts, styles, images and API calls; no inline code, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

#[derive(Clone)]
struct UiState {
    catalog: Arc<StoreCatalog>,
    metrics: metrics::MeshMetrics,
}

/// The UI's routes: `/`, `/ui`, `/ui/*`, `/v1/mesh/services`, `/v1/mesh/topology`.
pub fn router(catalog: Arc<StoreCatalog>, store: Arc<dyn Store>) -> Router {
    let metrics = metrics::MeshMetrics::new(Arc::clone(&catalog), store);
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui/", get(|| async { asset("") }))
        .route(
            "/ui/{file}",
            get(|Path(file): Path<String>| async move { asset(&file) }),
        )
        .route("/v1/mesh/services", get(services))
        .route("/v1/mesh/topology", get(topology))
        .with_state(UiState { catalog, metrics })
}

fn asset(path: &str) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(p, _, _)| *p == path) else {
        return ApiError::not_found(format!("no UI file {path:?}")).into_response();
    };
    let mut response = (StatusCode::OK, *body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /v1/mesh/services`: [`summary::ServiceSummary`] rows; blocking on the catalog index.
async fn services(
    State(state): State<UiState>,
    authz: Authz,
    query: BlockingQuery,
) -> Result<Response, ApiError> {
    use plexus_api::Catalog;
    query.block(state.catalog.index_watch()).await;
    let (index, mut rows) = summary::services(&state.catalog)
        .await
        .map_err(catalog_error)?;
    let filtered = filter(&mut rows, |row| authz.can_read_service(&row.name));
    let mut response = indexed_json(index, &rows);
    mark_filtered(&mut response, filtered);
    Ok(response)
}

/// `GET /v1/mesh/topology`: [`metrics::MeshView`]; blocking on the scrape sequence.
async fn topology(State(state): State<UiState>, authz: Authz, query: BlockingQuery) -> Response {
    let view = state.metrics.watch().await;
    query.block_until(view.clone(), |v| v.index).await;
    let latest = Arc::clone(&view.borrow());
    if authz.can_read_all(plexus_api::acl::Resource::Service) {
        return indexed_json(latest.index, &*latest);
    }
    let mut visible = (*latest).clone();
    let before = visible.services.len();
    visible
        .services
        .retain(|name, _| authz.can_read_service(name));
    let mut filtered = visible.services.len() != before;
    filtered |= filter(&mut visible.edges, |e| {
        authz.can_read_service(&e.source) && authz.can_read_service(&e.destination)
    });
    filtered |= filter(&mut visible.sidecars, |s| {
        authz.can_read_service(&s.service)
    });
    let mut response = indexed_json(visible.index, &visible);
    mark_filtered(&mut response, filtered);
    response
}

#[cfg(test)]
mod tests;
