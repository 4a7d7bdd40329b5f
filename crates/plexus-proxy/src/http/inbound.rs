//! Inbound: requests from peer sidecars (HTTP/2 inside mTLS, ALPN `plexus-h2`) to the local
//! app. Connections between sidecars are pooled and long-lived, so the intentions decide every
//! request (the authorize layer: 403 `denied`; an intention change applies to the next request),
//! and each request goes to the app through a connection pool in the app's protocol
//! (HTTP/1.1 keep-alive for `http`, h2c for `http2` and `grpc`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::{self, Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use tokio::sync::watch;
use tower::{Layer, Service};
use tracing::debug;

use super::app_pool::{AppError, H2cPool, Http1Pool};
use super::stack::{AnswerFuture, HttpService, fail};
use super::{Body, HttpError, Reason};
use crate::discovery::{ChainWatch, Protocol};

/// The calling service of a request and the intentions that decide it (set by the edge for
/// every request of a connection whose peer proved its identity; one per connection, so a
/// decision is made once per intentions change and then only counted).
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub Arc<crate::authorize::Caller>);

impl Caller {
    /// The calling service.
    pub(crate) fn source(&self) -> &str {
        self.0.source()
    }
}

/// Adds [`Authorize`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AuthorizeLayer;

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;
    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize { inner }
    }
}

/// Refuses a request whose [`Caller`] the intentions deny (403 `denied`); under an L7 intention
/// the request goes on with its path in normal form.
#[derive(Debug, Clone)]
pub(crate) struct Authorize<S> {
    inner: S,
}

impl<S: HttpService> Service<Request<Body>> for Authorize<S> {
    type Response = Response<Body>;
    type Error = HttpError;
    type Future = AnswerFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> AnswerFuture {
        let caller = request.extensions().get::<Caller>().cloned();
        let allowed = caller.is_none_or(|Caller(caller)| caller.allows(&mut request));
        if allowed {
            self.inner.call(request)
        } else {
            fail(HttpError::new(Reason::Denied))
        }
    }
}

/// The end of the inbound stack: the local app, over a connection pool in its protocol.
#[derive(Clone)]
pub(crate) struct AppClient {
    inner: Arc<App>,
}

struct App {
    app: watch::Receiver<SocketAddr>,
    http2: bool,
    /// Set when the registration names no protocol: the local service's chain
    /// (`service-defaults` `Protocol`) decides between HTTP/1.1 and h2c for each request.
    chain: Option<ChainWatch>,
    http1: Arc<Http1Pool>,
    /// The h2c connection, used when the protocol or the chain says `http2`/`grpc`.
    h2c: H2cPool,
    /// The app's address as a URI authority.
    authority: std::sync::Mutex<Option<(SocketAddr, Authority)>>,
}

impl AppClient {
    /// Requests to the app at `app` in `protocol` (`tcp` is treated as `http`: a peer sending
    /// HTTP to a service declared `tcp` reaches it as HTTP/1.1). With `chain` (the registration
    /// names no protocol) the local service's chain decides instead, request by request.
    pub(crate) fn new(
        app: watch::Receiver<SocketAddr>,
        protocol: Protocol,
        chain: Option<ChainWatch>,
        connect_timeout: Duration,
    ) -> Self {
        let http2 = matches!(protocol, Protocol::Http2 | Protocol::Grpc);
        Self {
            inner: Arc::new(App {
                app,
                http2,
                chain,
                http1: Http1Pool::new(connect_timeout, super::app_pool::IDLE),
                h2c: H2cPool::new(connect_timeout, super::MAX_HEADER_BYTES as u32),
                authority: std::sync::Mutex::new(None),
            }),
        }
    }
}

impl Service<Request<Body>> for AppClient {
    type Response = Response<Body>;
    type Error = HttpError;
    type Future = AnswerFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> AnswerFuture {
        let app = Arc::clone(&self.inner);
        Box::pin(async move { app.forward(request).await })
    }
}

impl App {
    /// `app` as a URI authority, formatted once per address.
    fn authority(&self, app: SocketAddr) -> Result<Authority, HttpError> {
        let mut known = plexus_runtime::lock::lock(&self.authority);
        if let Some((addr, authority)) = &*known
            && *addr == app
        {
            return Ok(authority.clone());
        }
        let authority =
            Authority::try_from(app.to_string()).map_err(|_| HttpError::new(Reason::BadRequest))?;
        *known = Some((app, authority.clone()));
        Ok(authority)
    }

    async fn forward(&self, request: Request<Body>) -> Result<Response<Body>, HttpError> {
        let app = *self.app.borrow();
        let (mut parts, body) = request.into_parts();
        super::strip_hop_by_hop(&mut parts.headers);
        super::ensure_traceparent(&mut parts.headers);
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let http2 = match &self.chain {
            Some(chain) => super::chain_is_http2(chain),
            None => self.http2,
        };
        if http2 {
            parts.version = Version::HTTP_2;
        } else {
            // HTTP/1.1: the caller's :authority becomes Host again.
            if let Some(authority) = parts.uri.authority()
                && let Ok(host) = HeaderValue::from_str(authority.as_str())
            {
                parts.headers.insert(header::HOST, host);
            }
            parts.version = Version::HTTP_11;
        }
        let mut uri = uri::Parts::default();
        if http2 {
            // h2 sends `:scheme` and `:authority` from an absolute URI: the caller's authority,
            // as an HTTP/1.1 app gets it as Host (the app's address when the caller sent none).
            uri.scheme = Some(Scheme::HTTP);
            uri.authority = match parts.uri.authority() {
                Some(authority) => Some(authority.clone()),
                None => Some(self.authority(app)?),
            };
        } else if !parts.headers.contains_key(header::HOST) {
            let authority = self.authority(app)?;
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                parts.headers.insert(header::HOST, host);
            }
        }
        uri.path_and_query = Some(path);
        parts.uri = Uri::from_parts(uri).map_err(|_| HttpError::new(Reason::BadRequest))?;
        let request = Request::from_parts(parts, body);
        let sent = if http2 {
            self.h2c.send(app, request).await
        } else {
            self.http1.send(app, request).await
        };
        let response = sent.map_err(|error| {
            debug!(%error, %app, "request to the local app failed");
            HttpError::new(match error {
                AppError::Connect(_) => Reason::UpstreamConnectFailure,
                AppError::Reset(_) => Reason::UpstreamReset,
            })
        })?;
        let (mut parts, body) = response.into_parts();
        super::strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, body))
    }
}

#[cfg(test)]
#[path = "inbound_tests.rs"]
mod tests;
