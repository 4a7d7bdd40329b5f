//! Outbound HTTP: the app's connections (HTTP/1.1 keep-alive or h2c) are served by hyper; each
//! request is balanced over the upstream's endpoints and sent over one pooled HTTP/2 connection
//! per endpoint, inside mTLS (ALPN `plexus-h2`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::header;
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::metrics::Finished;
use super::{Body, HttpMetrics, LocalError};
use crate::balance::RoundRobin;
use crate::discovery::EndpointSet;
use crate::endpoint;
use crate::error::Report;
use crate::metrics::Direction;
use crate::tls;

/// The route label until routes exist.
const DEFAULT_ROUTE: &str = "default";

type Slot = Arc<tokio::sync::Mutex<Option<SendRequest<Body>>>>;

/// One outbound HTTP listener's shared state: endpoints, balancer, connection pool.
pub(crate) struct Outbound {
    destination: String,
    endpoints: watch::Receiver<Arc<EndpointSet>>,
    picker: RoundRobin,
    tls: Option<tls::Outbound>,
    metrics: HttpMetrics,
    connect_timeout: Duration,
    tasks: TaskTracker,
    kill: CancellationToken,
    /// One HTTP/2 connection per endpoint; the slot's lock is held while opening it, so
    /// concurrent first requests share one connection.
    pool: Mutex<HashMap<SocketAddr, Slot>>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("http::Outbound")
            .field("destination", &self.destination)
            .finish()
    }
}

/// What an [`Outbound`] is built from.
pub(crate) struct OutboundParts {
    /// The upstream service.
    pub destination: String,
    /// Its endpoints (the sidecars in front of its healthy instances).
    pub endpoints: watch::Receiver<Arc<EndpointSet>>,
    /// mTLS with ALPN `plexus-h2` (unit tests use plain h2c: `None`).
    pub tls: Option<tls::Outbound>,
    /// Metrics.
    pub metrics: HttpMetrics,
    /// Longest wait for an endpoint to accept a connection.
    pub connect_timeout: Duration,
    /// Pooled connections' tasks.
    pub tasks: TaskTracker,
    /// Cuts pooled connections when the drain grace period is over.
    pub kill: CancellationToken,
}

impl Outbound {
    /// A listener's state with an empty pool.
    pub(crate) fn new(parts: OutboundParts) -> Self {
        Self {
            destination: parts.destination,
            endpoints: parts.endpoints,
            picker: RoundRobin::default(),
            tls: parts.tls,
            metrics: parts.metrics,
            connect_timeout: parts.connect_timeout,
            tasks: parts.tasks,
            kill: parts.kill,
            pool: Mutex::new(HashMap::new()),
        }
    }

    /// Serves one connection from the app until it ends; when `stop` fires, in-flight requests
    /// finish and the connection is closed (HTTP/1: after the current response; HTTP/2: GOAWAY).
    pub(crate) async fn serve(self: Arc<Self>, stream: TcpStream, stop: CancellationToken) {
        let service = service_fn(move |request| {
            let this = Arc::clone(&self);
            async move { Ok::<_, Infallible>(this.handle(request).await) }
        });
        let builder = server_builder();
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            _ = stop.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = result {
            debug!(error = %error, "downstream HTTP connection ended with an error");
        }
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let grpc = super::is_grpc(&request);
        let response = match self.forward(request).await {
            Ok(response) => response,
            Err(error) => {
                self.metrics
                    .local(Direction::Outbound, &self.destination, error.reason());
                error.response(grpc)
            }
        };
        self.metrics.finished(Finished {
            direction: Direction::Outbound,
            upstream: &self.destination,
            route: DEFAULT_ROUTE,
            status: response.status(),
            grpc_status: super::grpc_status_label(&response),
            seconds: started.elapsed().as_secs_f64(),
        });
        response
    }

    async fn forward(&self, request: Request<Incoming>) -> Result<Response<Body>, LocalError> {
        let (mut parts, body) = request.into_parts();
        super::strip_hop_by_hop(&mut parts.headers);
        super::ensure_traceparent(&mut parts.headers);
        // HTTP/2 carries the host in :authority.
        let host = parts
            .uri
            .authority()
            .map(|authority| authority.as_str().to_owned())
            .or_else(|| {
                parts
                    .headers
                    .get(header::HOST)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned)
            });
        parts.headers.remove(header::HOST);
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |path| path.as_str())
            .to_owned();
        parts.uri = absolute(host.as_deref(), &self.destination, &path)?;
        parts.version = Version::HTTP_2;
        let request = Request::from_parts(parts, body.boxed());

        let mut sender = self.sender().await?;
        let response = sender.send_request(request).await.map_err(|error| {
            debug!(%error, upstream = %self.destination, "upstream request failed");
            LocalError::UpstreamReset
        })?;
        let (mut parts, body) = response.into_parts();
        super::strip_hop_by_hop(&mut parts.headers);
        parts.version = Version::HTTP_11;
        Ok(Response::from_parts(parts, body.boxed()))
    }

    /// A ready HTTP/2 connection to the next endpoint in turn (opened if needed; endpoints that
    /// refuse are skipped).
    async fn sender(&self) -> Result<SendRequest<Body>, LocalError> {
        let mut endpoints = self.endpoints.clone();
        // Right after start-up the control plane's first answer may still be on its way.
        let _ = tokio::time::timeout(
            self.connect_timeout,
            endpoints.wait_for(|set| set.is_resolved()),
        )
        .await;
        let set = Arc::clone(&endpoints.borrow());
        if set.addrs.is_empty() {
            return Err(LocalError::NoHealthyEndpoints);
        }
        for addr in self.picker.order(&set.addrs) {
            let slot = self.slot(*addr);
            let mut pooled = slot.lock().await;
            if let Some(sender) = pooled.as_ref().filter(|sender| !sender.is_closed()) {
                return Ok(sender.clone());
            }
            *pooled = None;
            match self.open(*addr).await {
                Ok(sender) => {
                    *pooled = Some(sender.clone());
                    return Ok(sender);
                }
                Err(error) => {
                    warn!(error = %error, endpoint = %addr, upstream = %self.destination, "cannot open an HTTP/2 connection; trying the next endpoint");
                }
            }
        }
        Err(LocalError::UpstreamConnectFailure)
    }

    fn slot(&self, addr: SocketAddr) -> Slot {
        let mut pool = self
            .pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Endpoints that left the set are dropped from the pool (their connections close
        // once their last request ends).
        let live = self.endpoints.borrow();
        pool.retain(|addr, _| live.addrs.contains(addr));
        Arc::clone(pool.entry(addr).or_default())
    }

    async fn open(&self, addr: SocketAddr) -> Result<SendRequest<Body>, String> {
        let stream = endpoint::dial(addr, self.connect_timeout)
            .await
            .map_err(|error| Report(&error).to_string())?;
        let sender = match &self.tls {
            Some(tls) => {
                let stream = tls
                    .connect(stream, addr)
                    .await
                    .map_err(|error| format!("TLS: {error}"))?;
                self.handshake(stream).await
            }
            None => self.handshake(stream).await,
        }
        .map_err(|error| format!("HTTP/2 handshake: {error}"))?;
        self.metrics
            .connection_opened(Direction::Outbound, &self.destination);
        debug!(endpoint = %addr, upstream = %self.destination, "opened a pooled HTTP/2 connection");
        Ok(sender)
    }

    async fn handshake<I>(&self, io: I) -> Result<SendRequest<Body>, hyper::Error>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(super::KEEP_ALIVE_INTERVAL)
            .max_header_list_size(super::MAX_HEADER_BYTES as u32)
            .handshake(TokioIo::new(io))
            .await?;
        let kill = self.kill.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                ended = connection => {
                    if let Err(error) = ended {
                        debug!(%error, "pooled HTTP/2 connection ended with an error");
                    }
                }
                _ = kill.cancelled() => {}
            }
        });
        Ok(sender)
    }
}

/// `http://<host><path>`; the destination name stands in for a missing or unusable host.
fn absolute(host: Option<&str>, destination: &str, path: &str) -> Result<Uri, LocalError> {
    let build = |authority: &str| {
        Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(path)
            .build()
    };
    host.and_then(|host| build(host).ok())
        .map_or_else(|| build(destination), Ok)
        .map_err(|_| LocalError::BadRequest)
}

/// The HTTP/1.1 + h2c server for connections from the app, configured strictly.
pub(crate) fn server_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .half_close(false)
        .max_buf_size(super::MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(super::MAX_CONCURRENT_STREAMS)
        .max_header_list_size(super::MAX_HEADER_BYTES as u32)
        .max_pending_accept_reset_streams(super::MAX_PENDING_ACCEPT_RESET_STREAMS)
        .keep_alive_interval(super::KEEP_ALIVE_INTERVAL);
    builder
}
