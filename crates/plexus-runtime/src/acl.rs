//! The ACL edge: every request's token is resolved once, before any handler runs, into a
//! [`plexus_api::acl::Authorizer`] that handlers take with the [`Authz`] extractor.
//!
//! ```text
//!  request ─► layer(): token from X-Consul-Token | Authorization: Bearer | ?token=
//!          ─► Resolve::resolve (control plane: its store; remote agent: a server, cached)
//!          ─► Authorizer in the request's extensions ─► handler(Authz(authz), ..)
//!                                                      authz.require_service_write(name)?
//! ```
//!
//! An unknown, expired or deleted token is refused here with 403 `ACL not found`; a handler is
//! never reached without an authorizer ([`Authz`] fails closed with 500 if the layer is missing).
//! With ACLs disabled the resolver hands out [`Authorizer::allow_all`].

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, StatusCode};
use plexus_api::acl::{Authorizer, Denied, FILTERED_HEADER, SecretId, TOKEN_HEADER};

use crate::http::ApiError;

/// Why a token could not be turned into an authorizer.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// No such token: never created, deleted, or expired (403 `ACL not found`).
    #[error("ACL not found")]
    NotFound,
    /// The token store (or the server, for an agent) could not be asked (503).
    #[error("cannot resolve the token: {0}")]
    Unavailable(String),
}

impl From<ResolveError> for ApiError {
    fn from(error: ResolveError) -> Self {
        match error {
            ResolveError::NotFound => {
                ApiError::new(StatusCode::FORBIDDEN, "acl_not_found", "ACL not found")
            }
            ResolveError::Unavailable(cause) => {
                tracing::warn!(%cause, "token resolution failed");
                ApiError::unavailable("cannot resolve the request's token; retry later")
            }
        }
    }
}

impl From<Denied> for ApiError {
    fn from(denied: Denied) -> Self {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            denied.to_string(),
        )
    }
}

/// Turns the token a request carried (`None`: no token, i.e. anonymous) into an authorizer.
#[async_trait::async_trait]
pub trait Resolve: Send + Sync + 'static {
    /// Resolves `token`.
    async fn resolve(&self, token: Option<&SecretId>) -> Result<Authorizer, ResolveError>;
}

/// ACLs disabled: every request gets [`Authorizer::allow_all`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

#[async_trait::async_trait]
impl Resolve for AllowAll {
    async fn resolve(&self, _token: Option<&SecretId>) -> Result<Authorizer, ResolveError> {
        Ok(Authorizer::allow_all())
    }
}

/// A shareable resolver (defaults to [`AllowAll`]).
#[derive(Clone)]
pub struct Resolver(pub Arc<dyn Resolve>);

impl Default for Resolver {
    fn default() -> Self {
        Resolver(Arc::new(AllowAll))
    }
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

/// The token a request carries: `X-Consul-Token`, else `Authorization: Bearer …`, else
/// `?token=`. Empty values count as none.
pub fn token_of(headers: &HeaderMap, query: Option<&str>) -> Option<SecretId> {
    let header = headers
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    if let Some(token) = header {
        return Some(SecretId::new(token));
    }
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|v| !v.is_empty());
    if let Some(token) = bearer {
        return Some(SecretId::new(token));
    }
    let params = crate::http::QueryParams::parse(query.unwrap_or(""));
    params
        .get("token")
        .filter(|v| !v.is_empty())
        .map(SecretId::new)
}

/// Puts the edge in front of every route of `router`: each request's token is resolved once and
/// its [`Authorizer`] stored for [`Authz`].
pub fn layer(router: Router, resolver: Resolver) -> Router {
    router.layer(axum::middleware::from_fn_with_state(resolver, edge))
}

async fn edge(State(resolver): State<Resolver>, mut request: Request, next: Next) -> Response {
    let token = token_of(request.headers(), request.uri().query());
    match resolver.0.resolve(token.as_ref()).await {
        Ok(authz) => {
            request.extensions_mut().insert(authz);
            next.run(request).await
        }
        Err(error) => {
            tracing::debug!(path = %request.uri().path(), %error, "request refused at the ACL edge");
            ApiError::from(error).into_response()
        }
    }
}

/// The request's authorizer, as resolved at the edge.
#[derive(Debug, Clone)]
pub struct Authz(pub Authorizer);

impl std::ops::Deref for Authz {
    type Target = Authorizer;

    fn deref(&self) -> &Authorizer {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Authz {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Authorizer>() {
            Some(authz) => Ok(Authz(authz.clone())),
            None => {
                tracing::error!(path = %parts.uri.path(), "a handler was reached without the ACL edge");
                Err(ApiError::internal("request was not authorized"))
            }
        }
    }
}

/// Marks a read answer as filtered (`X-Consul-Results-Filtered-By-ACLs: true`) when `filtered`.
pub fn mark_filtered(response: &mut Response, filtered: bool) {
    if filtered {
        response
            .headers_mut()
            .insert(FILTERED_HEADER, HeaderValue::from_static("true"));
    }
}

/// Keeps the items of `items` the request may see; returns whether any were left out.
pub fn filter<T>(items: &mut Vec<T>, visible: impl Fn(&T) -> bool) -> bool {
    let before = items.len();
    items.retain(|item| visible(item));
    items.len() != before
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comes_from_header_bearer_or_query() {
        let mut headers = HeaderMap::new();
        assert!(token_of(&headers, None).is_none());
        assert!(token_of(&headers, Some("token=q1")).unwrap().matches("q1"));
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer b1"),
        );
        assert!(token_of(&headers, Some("token=q1")).unwrap().matches("b1"));
        headers.insert(TOKEN_HEADER, HeaderValue::from_static("h1"));
        assert!(token_of(&headers, Some("token=q1")).unwrap().matches("h1"));
        let mut empty = HeaderMap::new();
        empty.insert(TOKEN_HEADER, HeaderValue::from_static(""));
        assert!(token_of(&empty, Some("token=")).is_none());
    }

    #[test]
    fn refusals_are_403_with_consul_messages() {
        let api = ApiError::from(ResolveError::NotFound);
        assert_eq!(api.status, StatusCode::FORBIDDEN);
        assert_eq!(api.body.error.message, "ACL not found");
        let denied = Authorizer::from_rules("a-1", &[], plexus_api::acl::DefaultPolicy::Deny)
            .require_service_write("web")
            .unwrap_err();
        let api = ApiError::from(denied);
        assert_eq!(api.status, StatusCode::FORBIDDEN);
        assert!(
            api.body
                .error
                .message
                .contains("'service:write' on \"web\"")
        );
    }
}
