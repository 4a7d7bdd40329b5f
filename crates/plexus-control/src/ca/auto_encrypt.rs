//! `POST /v1/internal/auto-encrypt/sign`: an agent's CSR for its own TLS certificate (Consul's
//! `AutoEncrypt.Sign`), when the server allows it (`auto_encrypt { allow_tls = true }`).
//!
//! Under `verify_incoming` this is the one path a client without a certificate may call (it has
//! none yet); what authorizes it is the agent's token, through
//! [`authorize_auto_encrypt_sign`] (`node:write` on the node).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use plexus_api::acl::Authorizer;
use plexus_api::auto_encrypt::{SIGN_PATH, SignRequest, SignResponse};
use plexus_runtime::acl::Authz;
use plexus_runtime::http::{ApiError, JsonBody, indexed_json};
use tracing::warn;

use super::tls_certs::server_name;
use super::{CaError, CertificateAuthority};
use crate::api::ErrorChain;

/// A server's `auto_encrypt` settings.
#[derive(Debug, Clone)]
pub struct AutoEncrypt {
    /// Whether agents may have their certificates signed (`auto_encrypt.allow_tls`).
    pub allow_tls: bool,
    /// The domain of server names (`server.<dc>.<domain>`; Consul's default `consul`).
    pub domain: String,
}

impl Default for AutoEncrypt {
    fn default() -> Self {
        Self {
            allow_tls: false,
            domain: "consul".to_owned(),
        }
    }
}

#[derive(Clone)]
struct AutoEncryptState {
    ca: Arc<CertificateAuthority>,
    settings: AutoEncrypt,
}

/// The signing route.
pub fn router(ca: Arc<CertificateAuthority>, settings: AutoEncrypt) -> Router {
    Router::new()
        .route(SIGN_PATH, post(sign))
        .with_state(AutoEncryptState { ca, settings })
}

/// Whether the caller may have a certificate for `node`: its token must grant `node:write` on
/// that node (403 naming the permission otherwise; with ACLs disabled everyone may).
pub fn authorize_auto_encrypt_sign(authz: &Authorizer, node: &str) -> Result<(), ApiError> {
    authz.require_node_write(node).map_err(ApiError::from)
}

async fn sign(
    State(state): State<AutoEncryptState>,
    authz: Authz,
    body: Result<JsonBody<SignRequest>, ApiError>,
) -> Response {
    if !state.settings.allow_tls {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "auto_encrypt_disabled",
            "this server does not sign agent certificates: start it with auto_encrypt { allow_tls = true } (--auto-encrypt-allow-tls)",
        )
        .into_response();
    }
    let JsonBody(request) = match body {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    if let Err(refused) = authorize_auto_encrypt_sign(&authz, &request.node) {
        return refused.into_response();
    }
    let ca = &state.ca;
    let datacenter = ca.datacenter().to_owned();
    if !request.datacenter.is_empty() && request.datacenter != datacenter {
        return ApiError::invalid_field(
            "Datacenter",
            format!(
                "this server signs for datacenter {datacenter:?}, not {:?}",
                request.datacenter
            ),
        )
        .into_response();
    }
    let issued = match ca
        .sign_agent(&request.node, &request.csr, &state.settings.domain)
        .await
    {
        Ok(issued) => issued,
        Err(error) => return refusal(ca, error),
    };
    let roots = match ca.roots().await {
        Ok(roots) => roots.value,
        Err(error) => return refusal(ca, error),
    };
    indexed_json(
        issued.index,
        &SignResponse {
            issued_cert: issued.value,
            roots,
            verify_server_hostname: true,
            server_name: server_name(&datacenter, &state.settings.domain),
        },
    )
}

fn refusal(ca: &CertificateAuthority, error: CaError) -> Response {
    match error {
        CaError::Agent(refusal) => {
            ca.metrics().refused("agent_csr");
            warn!(%refusal, "agent CSR refused");
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", refusal.to_string())
                .with_field("CSR")
                .into_response()
        }
        CaError::BadRequest { message, field } => {
            ca.metrics().refused("bad_request");
            ApiError::invalid_field(field, message).into_response()
        }
        CaError::RateLimited { caller, .. } => {
            ca.metrics().refused("rate_limited");
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many signing requests from {caller}; retry later"),
            )
            .into_response()
        }
        other => {
            warn!(error = %ErrorChain(&other), "signing an agent certificate failed");
            ApiError::internal("the CA is unavailable").into_response()
        }
    }
}
