//! `/v1/connect/ca/*` and `/v1/agent/connect/ca/leaf/{service}`.
//!
//! - `GET /v1/connect/ca/roots` (blocking query; also at `/v1/agent/connect/ca/roots`): the
//!   trusted roots, Consul's shape; `?pem=true` answers the PEM bundle instead.
//! - `GET /v1/connect/ca/configuration`, `PUT` it: leaf TTL; `"RotateRoot": true` rotates.
//! - `POST /v1/connect/ca/rotate`: rotates (what `plexus connect ca rotate` calls).
//! - `POST /v1/connect/ca/sign`: a sidecar's CSR, signed for its destination service.
//! - `GET /v1/agent/connect/ca/leaf/{service}`: key + leaf, for Consul-compatible clients; a
//!   blocking query (`?index=` waits for the next leaf: renewal time or a root rotation).
//! - `GET /v1/connect/ca/metrics`: the CA's counters, Prometheus text.
//!
//! ACLs: the roots are public; reading the configuration or the metrics needs `operator:read`,
//! changing it or rotating `operator:write`; a leaf or a CSR signed for service S needs
//! `service:write` on S (for a CSR, S is the destination of the proxy named).

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use plexus_api::GoDuration;
use plexus_api::connect::{CaConfiguration, SignRequest};
use plexus_runtime::acl::Authz;
use plexus_runtime::http::{ApiError, BlockingQuery, JsonBody, QueryParams, indexed_json};
use tracing::{info, warn};

use super::{CaError, CertificateAuthority};
use crate::api::{ErrorChain, path_error};

/// The CA routes.
pub fn router(ca: Arc<CertificateAuthority>) -> Router {
    Router::new()
        .route("/v1/connect/ca/roots", get(roots))
        .route("/v1/agent/connect/ca/roots", get(roots))
        .route(
            "/v1/connect/ca/configuration",
            get(configuration).put(set_configuration),
        )
        .route("/v1/connect/ca/rotate", post(rotate))
        .route("/v1/connect/ca/sign", post(sign))
        .route("/v1/agent/connect/ca/leaf/{service}", get(leaf))
        .route("/v1/connect/ca/metrics", get(metrics))
        .with_state(ca)
}

/// Like [`ca_error`], for signing requests: also counts the refusal by reason.
fn sign_error(ca: &CertificateAuthority, error: CaError) -> Response {
    let reason = match &error {
        CaError::Refused(refusal) => Some(refusal.reason()),
        CaError::RateLimited { .. } => Some("rate_limited"),
        CaError::BadRequest { .. } => Some("bad_request"),
        CaError::NotFound(_) => Some("not_found"),
        _ => None,
    };
    if let Some(reason) = reason {
        ca.metrics().refused(reason);
    }
    ca_error(ca, error)
}

/// Maps a CA failure to its response; refusals are logged (they are attacks or bugs).
pub(super) fn ca_error(_ca: &CertificateAuthority, error: CaError) -> Response {
    match error {
        CaError::BadRequest { message, field } => {
            info!(%message, field, "CA request refused");
            ApiError::invalid_field(field, message).into_response()
        }
        CaError::Refused(refusal) => {
            warn!(reason = refusal.reason(), %refusal, "CSR refused");
            let status = match refusal {
                super::policy::Refusal::NotEntitled { .. } => StatusCode::FORBIDDEN,
                _ => StatusCode::BAD_REQUEST,
            };
            let code = if status == StatusCode::FORBIDDEN {
                "forbidden"
            } else {
                "bad_request"
            };
            ApiError::new(status, code, refusal.to_string())
                .with_field("CSR")
                .into_response()
        }
        CaError::NotFound(message) => ApiError::not_found(message).into_response(),
        CaError::RateLimited {
            caller,
            retry_after,
        } => {
            warn!(%caller, ?retry_after, "signing request rate limited");
            let mut response = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many signing requests from {caller}; retry later"),
            )
            .into_response();
            let secs = retry_after.as_secs().max(1);
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
            response
        }
        CaError::Contended => ApiError::conflict(error.to_string()).into_response(),
        CaError::AwaitingPrimary(_) => ApiError::unavailable(error.to_string()).into_response(),
        other => {
            warn!(error = %ErrorChain(&other), "CA operation failed");
            ApiError::internal("the CA is unavailable").into_response()
        }
    }
}

async fn roots(
    State(ca): State<Arc<CertificateAuthority>>,
    query: BlockingQuery,
    params: QueryParams,
) -> Response {
    if query.index.is_some_and(|index| index > 0) {
        query.block(ca.changes().await).await;
    }
    if let Err(error) = ca.ready_for_clients().await {
        return ca_error(&ca, error);
    }
    match ca.roots().await {
        Ok(roots) if params.flag("pem") => {
            let bundle: String = roots
                .value
                .roots
                .iter()
                .map(|r| r.root_cert.as_str())
                .collect();
            let mut response = bundle.into_response();
            response.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/pem-certificate-chain"),
            );
            response
        }
        Ok(roots) => indexed_json(roots.index, &roots.value),
        Err(error) => ca_error(&ca, error),
    }
}

async fn configuration(State(ca): State<Arc<CertificateAuthority>>, authz: Authz) -> Response {
    if let Err(denied) = authz.require_operator_read() {
        return ApiError::from(denied).into_response();
    }
    match ca.configuration().await {
        Ok(config) => indexed_json(config.modify_index, &config),
        Err(error) => ca_error(&ca, error),
    }
}

async fn set_configuration(
    State(ca): State<Arc<CertificateAuthority>>,
    authz: Authz,
    body: Result<JsonBody<CaConfiguration>, ApiError>,
) -> Response {
    if let Err(denied) = authz.require_operator_write() {
        return ApiError::from(denied).into_response();
    }
    let JsonBody(config) = match body {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    if !matches!(config.provider.as_str(), "plexus" | "consul") {
        return ApiError::invalid_field(
            "Provider",
            format!(
                "only the built-in CA is supported (\"plexus\" or \"consul\"), not {:?}",
                config.provider
            ),
        )
        .into_response();
    }
    if config
        .config
        .private_key
        .as_deref()
        .is_some_and(|k| !k.is_empty())
    {
        return ApiError::invalid_field(
            "Config.PrivateKey",
            "root keys are generated by the CA and cannot be supplied",
        )
        .into_response();
    }
    if let Some(ttl) = &config.config.leaf_cert_ttl {
        let ttl = match GoDuration::parse(ttl) {
            Ok(ttl) => ttl.get(),
            Err(error) => {
                return ApiError::invalid_field("Config.LeafCertTTL", error.to_string())
                    .into_response();
            }
        };
        if let Err(error) = ca.set_leaf_ttl(ttl).await {
            return ca_error(&ca, error);
        }
    }
    if config.config.rotate_root
        && let Err(error) = ca.rotate().await
    {
        return ca_error(&ca, error);
    }
    axum::Json(true).into_response()
}

async fn rotate(State(ca): State<Arc<CertificateAuthority>>, authz: Authz) -> Response {
    if let Err(denied) = authz.require_operator_write() {
        return ApiError::from(denied).into_response();
    }
    match ca.rotate().await {
        Ok(_) => match ca.roots().await {
            Ok(roots) => indexed_json(roots.index, &roots.value),
            Err(error) => ca_error(&ca, error),
        },
        Err(error) => ca_error(&ca, error),
    }
}

async fn sign(
    State(ca): State<Arc<CertificateAuthority>>,
    authz: Authz,
    body: Result<JsonBody<SignRequest>, ApiError>,
) -> Response {
    let JsonBody(request) = match body {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    let service = match ca.entitlement(&request.proxy_id, &request.csr).await {
        Ok(entitlement) => entitlement.service,
        Err(error) => return sign_error(&ca, error),
    };
    if let Err(denied) = authz.require_service_write(&service) {
        warn!(proxy_id = %request.proxy_id, %service, accessor_id = %denied.accessor_id, "CSR refused: the token may not write the service");
        ca.metrics().refused("permission_denied");
        return ApiError::from(denied).into_response();
    }
    let ttl = match request.ttl.as_deref().map(GoDuration::parse).transpose() {
        Ok(ttl) => ttl.map(GoDuration::get),
        Err(error) => {
            ca.metrics().refused("bad_request");
            return ApiError::invalid_field("TTL", error.to_string()).into_response();
        }
    };
    match ca.sign(&request.proxy_id, &request.csr, ttl).await {
        Ok(cert) => indexed_json(cert.index, &cert.value),
        Err(error) => sign_error(&ca, error),
    }
}

async fn metrics(State(ca): State<Arc<CertificateAuthority>>, authz: Authz) -> Response {
    if let Err(denied) = authz.require_operator_read() {
        return ApiError::from(denied).into_response();
    }
    let mut response = ca.metrics().encode().into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

async fn leaf(
    State(ca): State<Arc<CertificateAuthority>>,
    authz: Authz,
    service: Result<Path<String>, PathRejection>,
    query: BlockingQuery,
) -> Response {
    let Path(service) = match service.map_err(path_error) {
        Ok(service) => service,
        Err(error) => return error.into_response(),
    };
    if let Err(denied) = authz.require_service_write(&service) {
        warn!(%service, accessor_id = %denied.accessor_id, "leaf refused: the token may not write the service");
        ca.metrics().refused("permission_denied");
        return ApiError::from(denied).into_response();
    }
    let deadline = tokio::time::Instant::now() + query.wait;
    let mut revisions = ca.revision_watch();
    loop {
        let cert = match ca.cached_leaf(&service).await {
            Ok(cert) => cert,
            Err(error) => return sign_error(&ca, error),
        };
        let waiting = query.index.is_some_and(|i| i > 0 && cert.index <= i);
        if !waiting || tokio::time::Instant::now() >= deadline {
            return indexed_json(cert.index, &cert.value);
        }
        // Wait for the renewal time, a CA change (root rotation), the wait's end or shutdown.
        let renew_in = std::time::Duration::from_secs(
            (super::renew_time(&cert.value) - super::x509::unix_now() as i64).max(1) as u64,
        );
        let wake = (tokio::time::Instant::now() + renew_in).min(deadline);
        let shutdown = query.shutdown.clone().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            changed = revisions.changed() => if changed.is_err() { return indexed_json(cert.index, &cert.value) },
            _ = shutdown.cancelled() => return indexed_json(cert.index, &cert.value),
        }
    }
}
