//! Inbound HTTP: a peer sidecar's HTTP/2 connection (inside mTLS, ALPN `plexus-h2`) is served by
//! hyper; each request goes to the local app through a connection pool in the app's protocol
//! (HTTP/1.1 keep-alive for `http`, h2c for `http2` and `grpc`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::metrics::Finished;
use super::{Body, HttpMetrics, LocalError};
use crate::authorize::Authorizer;
use crate::discovery::Protocol;
use crate::metrics::{Direction, LOCAL_APP};

/// Idle connections to the app are closed after this long.
const APP_POOL_IDLE: Duration = Duration::from_secs(90);

/// The inbound listener's HTTP side: the app's address and a pool of connections to it.
pub(crate) struct Inbound {
    app: watch::Receiver<SocketAddr>,
    http2: bool,
    /// Set when the registration names no protocol: the local service's chain
    /// (`service-defaults` `Protocol`) decides between HTTP/1.1 and h2c for each request.
    chain: Option<super::ChainWatch>,
    metrics: HttpMetrics,
    client: Client<HttpConnector, Body>,
    /// The h2c pool, used when the chain says `http2`/`grpc`.
    h2c: Client<HttpConnector, Body>,
    connect_timeout: Duration,
    /// WebSocket / `CONNECT` tunnels to the app (`l7::upgrade`).
    tunnels: TaskTracker,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("http::Inbound")
            .field("http2", &self.http2)
            .finish()
    }
}

impl Inbound {
    /// Requests to the app at `app` in `protocol` (`tcp` is treated as `http`: a peer sending
    /// HTTP to a service declared `tcp` reaches it as HTTP/1.1). With `chain` (the registration
    /// names no protocol) the local service's chain decides instead, request by request.
    pub(crate) fn new(
        app: watch::Receiver<SocketAddr>,
        protocol: Protocol,
        chain: Option<super::ChainWatch>,
        metrics: HttpMetrics,
        connect_timeout: Duration,
    ) -> Self {
        let http2 = matches!(protocol, Protocol::Http2 | Protocol::Grpc);
        let pool = |http2: bool| {
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(connect_timeout));
            connector.set_nodelay(true);
            Client::builder(TokioExecutor::new())
                .http2_only(http2)
                .timer(TokioTimer::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(APP_POOL_IDLE)
                .http2_max_header_list_size(super::MAX_HEADER_BYTES as u32)
                .build(connector)
        };
        Self {
            app,
            http2,
            chain,
            metrics,
            client: pool(http2),
            h2c: pool(true),
            connect_timeout,
            tunnels: TaskTracker::new(),
        }
    }

    /// Serves a peer's HTTP/2 connection until it ends or `stop` fires (then GOAWAY and let
    /// in-flight requests finish). Connections between sidecars are pooled and long-lived, so
    /// the intentions decide every request (`source` is the peer's service, from its
    /// certificate): a denied one is answered 403 `x-plexus-error: denied`, and an intention
    /// change applies to the next request.
    pub(crate) async fn serve<I>(
        self: Arc<Self>,
        io: I,
        authorize: Option<(Authorizer, String)>,
        stop: CancellationToken,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let authorize = Arc::new(authorize);
        let service = service_fn(move |request| {
            let this = Arc::clone(&self);
            let authorize = Arc::clone(&authorize);
            async move {
                let authorize = authorize.as_ref().as_ref();
                let allowed =
                    authorize.is_none_or(|(authorizer, source)| authorizer.check(source).allowed);
                let peer = authorize.map(|(_, source)| source.clone());
                Ok::<_, Infallible>(this.handle(request, allowed, peer).await)
            }
        });
        let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(super::MAX_CONCURRENT_STREAMS)
            .max_header_list_size(super::MAX_HEADER_BYTES as u32)
            .max_pending_accept_reset_streams(super::MAX_PENDING_ACCEPT_RESET_STREAMS)
            .keep_alive_interval(super::KEEP_ALIVE_INTERVAL)
            .enable_connect_protocol()
            .serve_connection(
                TokioIo::new(super::flood::ControlFrameLimit::new(io)),
                service,
            );
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            _ = stop.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = result {
            debug!(%error, "inbound HTTP/2 connection ended with an error");
        }
    }

    async fn handle(
        &self,
        mut request: Request<Incoming>,
        allowed: bool,
        peer: Option<String>,
    ) -> Response<Body> {
        let started = Instant::now();
        super::trace_hop(request.headers_mut());
        let info = super::RequestInfo::of(&request, peer);
        let grpc = super::is_grpc(&request);
        let outcome = if allowed {
            self.forward(request).await
        } else {
            Err(LocalError::Denied)
        };
        let response = match outcome {
            Ok(response) => response,
            Err(error) => {
                self.metrics
                    .local(Direction::Inbound, LOCAL_APP, error.reason());
                error.response(grpc)
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        let route = "default".to_owned();
        let finished = Finished::new(Direction::Inbound, LOCAL_APP, route, seconds, info);
        super::record(&self.metrics, response, finished)
    }

    async fn forward(&self, request: Request<Incoming>) -> Result<Response<Body>, LocalError> {
        let app = *self.app.borrow();
        if let Some(tunnel) = super::upgrade::Tunnel::of_h2(&request) {
            let request = request.map(BodyExt::boxed);
            let (timeout, tasks) = (self.connect_timeout, &self.tunnels);
            return super::upgrade::inbound(request, tunnel, app, timeout, tasks).await;
        }
        let (mut parts, body) = request.into_parts();
        super::strip_hop_by_hop(&mut parts.headers);
        super::ensure_traceparent(&mut parts.headers);
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |path| path.as_str())
            .to_owned();
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
        parts.uri = Uri::builder()
            .scheme("http")
            .authority(app.to_string())
            .path_and_query(path)
            .build()
            .map_err(|_| LocalError::BadRequest)?;
        let request = Request::from_parts(parts, body.boxed());
        let client = if http2 { &self.h2c } else { &self.client };
        let response = client.request(request).await.map_err(|error| {
            debug!(%error, %app, "request to the local app failed");
            if error.is_connect() {
                LocalError::UpstreamConnectFailure
            } else {
                LocalError::UpstreamReset
            }
        })?;
        let (mut parts, body) = response.into_parts();
        super::strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, body.boxed()))
    }
}
