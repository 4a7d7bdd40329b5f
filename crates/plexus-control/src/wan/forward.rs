//! `?dc=`: a request naming another datacenter is relayed to one of its servers, with the
//! caller's token (that datacenter's servers check it: tokens are per datacenter), and its
//! answer comes back as it is, status and headers (`X-Consul-Index`, …) included.
//!
//! Forwarded: every method on `/v1/catalog/*` (but `/v1/catalog/datacenters`), `/v1/health/*`,
//! `/v1/kv/*`, `/v1/config*`, `/v1/connect/intentions*` and `/v1/internal/mesh-gateways`. An empty `dc`, or this server's own,
//! is served here. Answers of this layer's own:
//!
//! | case | status | code |
//! | --- | --- | --- |
//! | `dc` not a datacenter name | 400 | `invalid_field` (field `dc`) |
//! | a datacenter no server knows of | 500 | `no_path_to_datacenter`: "No path to datacenter …" (Consul's text) |
//! | none of its servers answers | 503 | `datacenter_unreachable`, naming the datacenter and the server tried |
//! | its answer broke off | 502 | `datacenter_unreachable` |

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use plexus_runtime::http::{ApiError, MAX_BODY_BYTES, QueryParams};

use super::{Shared, valid_name};

/// Puts `?dc=` forwarding in front of `router`.
pub fn layer(router: axum::Router, federation: Shared) -> axum::Router {
    router.layer(axum::middleware::from_fn_with_state(federation, forward))
}

/// Whether requests to `path` are relayed when they name another datacenter.
pub fn forwarded_path(path: &str) -> bool {
    if path == "/v1/catalog/datacenters" {
        return false;
    }
    [
        "/v1/catalog/",
        "/v1/health/",
        "/v1/kv/",
        "/v1/connect/intentions",
    ]
    .iter()
    .any(|prefix| path.starts_with(prefix))
        || path == "/v1/config"
        || path == super::gateways::PATH
        || path.starts_with("/v1/config/")
}

async fn forward(State(federation): State<Shared>, request: Request, next: Next) -> Response {
    let params = QueryParams::parse(request.uri().query().unwrap_or(""));
    let dc = match params.get("dc") {
        Some(dc) if !dc.is_empty() && dc != federation.own() => dc.to_owned(),
        _ => return next.run(request).await,
    };
    if !forwarded_path(request.uri().path()) {
        return next.run(request).await;
    }
    if !valid_name(&dc) {
        return ApiError::invalid_field(
            "dc",
            format!(
                "{dc:?} is not a datacenter name: expected 1 to 128 letters, digits, '-' and '_'"
            ),
        )
        .into_response();
    }
    let client = match federation.client_for(&dc) {
        Some(Ok(client)) => client,
        Some(Err(error)) => {
            tracing::warn!(datacenter = %dc, %error, "cannot address a datacenter's servers");
            return unreachable(&dc, &error.to_string());
        }
        None => {
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "no_path_to_datacenter",
                format!(
                    "No path to datacenter {dc:?}: no server of it is known (known: {})",
                    federation.datacenters().join(", ")
                ),
            )
            .with_field("dc")
            .into_response();
        }
    };
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let method = request.method().clone();
    let content_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // The caller's header or bearer token goes on; a `?token=` stays in the path.
    let token = plexus_runtime::acl::token_of(request.headers(), None);
    let body = match axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("a request forwarded to another datacenter carries at most {MAX_BODY_BYTES} bytes"),
            )
            .into_response();
        }
    };
    let Ok(method) = reqwest::Method::from_bytes(method.as_str().as_bytes()) else {
        return ApiError::bad_request("unsupported method").into_response();
    };
    let answer = match client
        .forward(
            method,
            &path,
            content_type.as_deref(),
            body.to_vec(),
            token.as_ref(),
        )
        .await
    {
        Ok(answer) => answer,
        Err(error) => {
            tracing::warn!(datacenter = %dc, error = %plexus_runtime::ErrorChain(&error), "no server of a datacenter answered a forwarded request");
            return unreachable(&dc, &error.to_string());
        }
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers = http::HeaderMap::with_capacity(answer.headers().len());
    for (name, value) in answer.headers() {
        if !plexus_runtime::http::NOT_RELAYED.contains(&name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    let bytes = match answer.bytes().await {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::warn!(datacenter = %dc, %error, "a datacenter's answer broke off");
            return ApiError::new(
                StatusCode::BAD_GATEWAY,
                "datacenter_unreachable",
                format!("the answer of datacenter {dc:?} broke off"),
            )
            .into_response();
        }
    };
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// 503: the datacenter is known but none of its servers answered (Consul: "Remote DC has no
/// server currently reachable").
fn unreachable(dc: &str, why: &str) -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "datacenter_unreachable",
        format!("Remote DC has no server currently reachable: datacenter {dc:?}: {why}"),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_of_the_catalog_health_kv_config_and_intentions_are_forwarded() {
        for path in [
            "/v1/catalog/services",
            "/v1/catalog/service/web",
            "/v1/health/service/web",
            "/v1/kv/a/b",
            "/v1/config/service-defaults/web",
            "/v1/config",
            "/v1/connect/intentions",
            "/v1/connect/intentions/match",
        ] {
            assert!(forwarded_path(path), "{path}");
        }
        for path in [
            "/v1/catalog/datacenters",
            "/v1/agent/services",
            "/v1/status/leader",
            "/v1/configuration",
            "/v1/internal/wan/exchange",
        ] {
            assert!(!forwarded_path(path), "{path}");
        }
    }
}
