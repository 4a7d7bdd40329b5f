//! The edge of the HTTP stack: serving downstream connections with hyper, and what happens to
//! every request before it enters the stack and after it leaves it.
//!
//! - App connections (outbound listener): HTTP/1.1 keep-alive or h2c, with upgrades (tunnels);
//!   peer connections (inbound listener): HTTP/2 with extended CONNECT. Both behind the
//!   control-frame limit ([`super::flood`]). When `stop` fires, in-flight requests finish and
//!   the connection is closed (HTTP/1: after the current response; HTTP/2: GOAWAY).
//! - Per request: the trace hop, what the access log needs, the stack's answer — an
//!   [`HttpError`] becomes its response here and only here (with `x-plexus-error`, counted by
//!   reason) — and the record in metrics and access log when the response ends.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::header::{self, HeaderValue};
use http::{Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::inbound::Caller;
use super::metrics::{Finished, Label};
use super::stack::{Answer, BoxStack, Inbound, Ingress, Outbound};
use super::timeout::served;
use super::{Body, BodyError, HttpError, HttpMetrics, Origin, Reason, Report};
use crate::authorize::Authorizer;
use crate::metrics::Direction;
use plexus_runtime::shutdown::or_cancelled;

/// The route label of a request no route took.
pub(crate) const DEFAULT_ROUTE: &str = "default";

impl Outbound {
    /// Serves one connection from the app until it ends; when `stop` fires, in-flight requests
    /// finish and the connection is closed (HTTP/1: after the current response; HTTP/2: GOAWAY).
    pub(crate) async fn serve<I>(
        self: Arc<Self>,
        io: I,
        speaks: Speaks,
        source: Option<IpAddr>,
        stop: CancellationToken,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let respond = move |request| respond(Arc::clone(&self), request, source);
        serve_downstream(io, speaks, stop, respond).await;
    }
}

impl Ingress {
    /// Serves one connection from a client outside the mesh (plain, or TLS already
    /// terminated) as [`Outbound::serve`] serves the app's.
    pub(crate) async fn serve<I>(
        self: Arc<Self>,
        io: I,
        speaks: Speaks,
        source: Option<IpAddr>,
        stop: CancellationToken,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let respond = move |request| respond(Arc::clone(&self), request, source);
        serve_downstream(io, speaks, stop, respond).await;
    }
}

/// The stack, metrics and labels a downstream request goes through ([`respond`]).
trait Edge: Send + Sync + 'static {
    fn parts(&self) -> (&BoxStack, &HttpMetrics, &(Label, Label));
}

impl Edge for Outbound {
    fn parts(&self) -> (&BoxStack, &HttpMetrics, &(Label, Label)) {
        (&self.stack, &self.metrics, &self.labels)
    }
}

impl Edge for Ingress {
    fn parts(&self) -> (&BoxStack, &HttpMetrics, &(Label, Label)) {
        (&self.stack, &self.metrics, &self.labels)
    }
}

/// What a downstream connection speaks, when known before hyper reads from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Speaks {
    /// HTTP/1.1 (with upgrades).
    Http1,
    /// HTTP/2 (h2c with prior knowledge, or ALPN `h2`).
    Http2,
    /// Not known: hyper-util reads the first bytes to tell.
    Unknown,
}

/// The HTTP/2 connection preface a client with prior knowledge of h2c sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Speaks {
    /// Looks at a plain connection's first bytes without taking them off the socket (so that
    /// hyper's first read gets the whole request head, in one buffer of its initial size:
    /// hyper-util's own detection takes the first 24 bytes away and hyper then grew its read
    /// buffer to 16 KiB for the rest, kept for the connection's life). `Unknown` when the
    /// bytes so far are only part of the preface, when the client sends nothing within
    /// `wait`, or when `stop` fires: hyper-util's detection then decides, as before.
    pub(crate) async fn peek(tcp: &TcpStream, wait: Duration, stop: &CancellationToken) -> Self {
        let mut first = [0u8; 24];
        let peeked = tokio::select! {
            peeked = tokio::time::timeout(wait, tcp.peek(&mut first)) => peeked,
            _ = stop.cancelled() => return Speaks::Unknown,
        };
        match peeked {
            Ok(Ok(n)) if n > 0 => Self::of_first_bytes(&first[..n]),
            _ => Speaks::Unknown,
        }
    }

    fn of_first_bytes(first: &[u8]) -> Self {
        if first.len() >= H2_PREFACE.len() && first.starts_with(H2_PREFACE) {
            Speaks::Http2
        } else if H2_PREFACE.starts_with(first) {
            Speaks::Unknown
        } else {
            Speaks::Http1
        }
    }

    /// What a TLS client agreed on by ALPN.
    pub(crate) fn of_alpn(alpn: Option<&[u8]>) -> Self {
        match alpn {
            Some(b"h2") => Speaks::Http2,
            Some(b"http/1.1") => Speaks::Http1,
            _ => Speaks::Unknown,
        }
    }
}

/// Serves one downstream connection (HTTP/1.1 keep-alive or h2c, with upgrades) with
/// `respond`, until it ends or `stop` fires (then in-flight requests finish and the connection
/// closes: HTTP/1 after the current response, HTTP/2 with GOAWAY).
async fn serve_downstream<I, F, Fut>(io: I, speaks: Speaks, stop: CancellationToken, respond: F)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let service = service_fn(move |request| {
        // The answer's future is made here, so the block below holds it alone (not `respond`
        // and the request as well): hyper keeps one per connection, moved in per request.
        let answer = respond(request);
        async move { Ok::<_, Infallible>(served(answer.await)) }
    });
    // With upgrades: WebSocket and CONNECT tunnels (`upgrade.rs`).
    let io = TokioIo::new(super::flood::ControlFrameLimit::new(io));
    // HTTP/1.1 is served inline; the other two, rarer from an app, are boxed so that an
    // HTTP/1.1 connection does not carry room for their larger state (~3.5 KiB against ~1.8).
    match speaks {
        Speaks::Http1 => {
            let connection = app_http1().serve_connection(io, service).with_upgrades();
            until_stopped(connection, stop, |c| c.graceful_shutdown()).await;
        }
        Speaks::Http2 => {
            let connection = app_http2().serve_connection(io, service);
            Box::pin(until_stopped(connection, stop, |c| c.graceful_shutdown())).await;
        }
        Speaks::Unknown => {
            Box::pin(async move {
                let builder = app_server();
                let connection = builder.serve_connection_with_upgrades(io, service);
                until_stopped(connection, stop, |c| c.graceful_shutdown()).await;
            })
            .await;
        }
    }
}

/// Drives a downstream connection until it ends; when `stop` fires, `graceful_shutdown` lets
/// in-flight requests finish and it closes. (hyper's connection types share no trait for it.)
async fn until_stopped<C, E>(
    connection: C,
    stop: CancellationToken,
    graceful_shutdown: impl FnOnce(std::pin::Pin<&mut C>),
) where
    C: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(connection);
    let result = match or_cancelled(connection.as_mut(), &stop).await {
        Some(result) => result,
        None => {
            graceful_shutdown(connection.as_mut());
            connection.await
        }
    };
    if let Err(error) = result {
        debug!(%error, "downstream HTTP connection ended with an error");
    }
}

/// One downstream request, through `stack`, to the response it gets.
async fn respond(
    edge: Arc<impl Edge>,
    mut request: Request<Incoming>,
    source: Option<IpAddr>,
) -> Response<Body> {
    let (stack, metrics, labels) = edge.parts();
    let started = Instant::now();
    super::trace_hop(request.headers_mut());
    let info = metrics
        .logs_requests()
        .then(|| super::RequestInfo::of(&request, None));
    let grpc = super::is_grpc(&request);
    let http1 = request.version() < Version::HTTP_2;
    // A request body hyper cannot decode (e.g. an invalid chunk size) must end in 400 and a
    // closed connection, not in an upstream error: remember that it happened. (A client
    // that goes away mid-body lands here too; it gets the same answer, unread.)
    let report = Arc::new(Report::default());
    let mut request = request.map(|body| {
        let report = Arc::clone(&report);
        body.map_err(move |error| {
            debug!(%error, "cannot read the request body");
            report.malformed.store(true, Ordering::SeqCst);
            BodyError::from(error)
        })
        .boxed()
    });
    request.extensions_mut().insert(Origin {
        client: source,
        report: Arc::clone(&report),
    });
    let answer = call(stack, request).await;
    let route = route_of(&report, &labels.1);
    let answer = if report.malformed.load(Ordering::SeqCst) {
        Err(HttpError::new(Reason::BadRequest))
    } else {
        answer
    };
    let response = match answer {
        Ok(response) => response,
        Err(error) => {
            let mut response = local(metrics, &labels.0, &error, Direction::Outbound, grpc);
            if matches!(error.reason(), Reason::BadRequest | Reason::Refused(_)) && http1 {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let upstream = labels.0.clone();
    let finished = Finished::new(Direction::Outbound, upstream, route, seconds, info);
    record(metrics, response, finished)
}

impl Inbound {
    /// Serves a peer's HTTP/2 connection until it ends or `stop` fires (then GOAWAY and let
    /// in-flight requests finish). `caller` is the peer's service (from its certificate) and
    /// the intentions that decide each of its requests (`None`: unit tests of the plain path).
    pub(crate) async fn serve<I>(
        self: Arc<Self>,
        io: I,
        caller: Option<(Authorizer, String)>,
        stop: CancellationToken,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let caller =
            caller.map(|(authorizer, source)| Caller(Arc::new(authorizer.for_source(&source))));
        let respond = move |request| {
            let this = Arc::clone(&self);
            let caller = caller.clone();
            async move { this.respond(request, caller).await }
        };
        let io = super::flood::ControlFrameLimit::new(io);
        if let Err(error) = super::peer::serve(io, respond, &stop).await {
            debug!(%error, "inbound HTTP/2 connection ended with an error");
        }
    }

    /// One request from a peer, through the stack, to the response it gets.
    async fn respond(&self, mut request: Request<Body>, caller: Option<Caller>) -> Response<Body> {
        let started = Instant::now();
        super::trace_hop(request.headers_mut());
        let info = self.metrics.logs_requests().then(|| {
            let peer = caller.as_ref().map(|caller| caller.source().to_owned());
            super::RequestInfo::of(&request, peer)
        });
        let grpc = super::is_grpc(&request);
        if let Some(caller) = caller {
            request.extensions_mut().insert(caller);
        }
        let response = match call(&self.stack, request).await {
            Ok(response) => response,
            Err(error) => local(
                &self.metrics,
                &self.labels.0,
                &error,
                Direction::Inbound,
                grpc,
            ),
        };
        let seconds = started.elapsed().as_secs_f64();
        let (upstream, route) = self.labels.clone();
        let finished = Finished::new(Direction::Inbound, upstream, route, seconds, info);
        record(&self.metrics, response, finished)
    }
}

/// One request through a stack.
async fn call(stack: &BoxStack, request: Request<Body>) -> Answer {
    stack.call(request).await
}

/// The route a request took, for the metrics label (`default`: none).
fn route_of(report: &Report, default: &Label) -> Label {
    report
        .route
        .get()
        .map_or_else(|| default.clone(), |route| Label(Arc::clone(route)))
}

/// The `upstream` and default `route` labels of one direction's requests, made once.
pub(crate) fn labels(upstream: &str) -> (Label, Label) {
    (Label::from(upstream), Label::from(DEFAULT_ROUTE))
}

/// The response to a request the sidecar answers itself (counted by reason).
fn local(
    metrics: &HttpMetrics,
    upstream: &str,
    error: &HttpError,
    direction: Direction,
    grpc: bool,
) -> Response<Body> {
    debug!(%error, blame = ?error.blame(), upstream, "answering locally");
    metrics.local(direction, upstream, error.label());
    error.response(grpc)
}

/// Records `finished` (metrics, access log) with what `response` says, when the response ends:
/// at once, or, for a gRPC response whose status comes in trailers, when its body ends.
fn record(
    metrics: &HttpMetrics,
    response: Response<Body>,
    mut finished: Finished,
) -> Response<Body> {
    finished.status = response.status();
    if finished.request.is_some() {
        finished.error = response
            .headers()
            .get(super::ERROR_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        finished.response_bytes = hyper::body::Body::size_hint(response.body()).exact();
    }
    // Most responses are done with here; only a gRPC status still to come in the trailers needs
    // the metrics kept until the body ends.
    if let Some(grpc_status) = super::trailers::known_now(&response) {
        finished.grpc_status = grpc_status;
        metrics.finished(finished);
        return response;
    }
    let metrics = metrics.clone();
    super::trailers::on_end(response, move |grpc_status| {
        finished.grpc_status = grpc_status;
        metrics.finished(finished);
    })
}

/// The HTTP/1.1 + h2c server for connections from the app whose protocol is not known before
/// reading ([`Speaks::Unknown`]), configured as [`app_http1`] and [`app_http2`].
pub(crate) fn app_server() -> auto::Builder<TokioExecutor> {
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

/// The HTTP/1.1 server for connections from the app, configured strictly.
fn app_http1() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .half_close(false)
        .max_buf_size(super::MAX_HEADER_BYTES)
        // The head's own bound: `max_buf_size` alone lets a head through when hyper's reads
        // happen to bring it in whole.
        .max_header_size(super::MAX_HEADER_BYTES);
    builder
}

/// The h2c server for connections from the app, configured strictly.
fn app_http2() -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(super::MAX_CONCURRENT_STREAMS)
        .max_header_list_size(super::MAX_HEADER_BYTES as u32)
        .max_pending_accept_reset_streams(super::MAX_PENDING_ACCEPT_RESET_STREAMS)
        .keep_alive_interval(super::KEEP_ALIVE_INTERVAL);
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bytes_tell_h2c_from_http1_and_a_partial_preface_is_left_to_hyper_util() {
        assert_eq!(Speaks::of_first_bytes(H2_PREFACE), Speaks::Http2);
        assert_eq!(Speaks::of_first_bytes(b"GET / HTTP/1.1\r\n"), Speaks::Http1);
        assert_eq!(Speaks::of_first_bytes(b"POST /x HTTP/1.1"), Speaks::Http1);
        assert_eq!(
            Speaks::of_first_bytes(b"PRI * HTTP/1.1\r\nHost"),
            Speaks::Http1
        );
        // "P" could begin PUT, POST or the preface; "PRI * HTTP/2" only the preface.
        assert_eq!(Speaks::of_first_bytes(b"P"), Speaks::Unknown);
        assert_eq!(Speaks::of_first_bytes(b"PRI * HTTP/2"), Speaks::Unknown);
        assert_eq!(Speaks::of_alpn(Some(b"h2")), Speaks::Http2);
        assert_eq!(Speaks::of_alpn(Some(b"http/1.1")), Speaks::Http1);
        assert_eq!(Speaks::of_alpn(None), Speaks::Unknown);
    }

    #[tokio::test]
    async fn peeking_leaves_the_bytes_for_hyper_and_a_silent_client_is_unknown() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let stop = CancellationToken::new();
        // Nothing sent yet: `Unknown` once the wait is over.
        assert_eq!(
            Speaks::peek(&server, Duration::from_millis(50), &stop).await,
            Speaks::Unknown
        );
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(
            Speaks::peek(&server, Duration::from_secs(10), &stop).await,
            Speaks::Http1
        );
        let mut read = [0u8; 18];
        server.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"GET / HTTP/1.1\r\n\r\n");
        // A drain in progress does not wait for the first bytes.
        stop.cancel();
        assert_eq!(
            Speaks::peek(&server, Duration::from_secs(10), &stop).await,
            Speaks::Unknown
        );
    }

    /// Serves one connection that sends a request head with `head_bytes` of headers (and
    /// `extra` headers); returns the answer and whether the sidecar closed the connection.
    async fn answer_to_big_head(speaks: Speaks, head_bytes: usize, extra: &str) -> (String, bool) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let ok = |_| async { Response::new(super::super::empty()) };
            serve_downstream(tcp, speaks, CancellationToken::new(), ok).await;
        });
        let mut client = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "GET / HTTP/1.1\r\nHost: web\r\n{extra}X-Big: {}\r\n\r\n",
            "a".repeat(head_bytes)
        );
        client.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                Err(_) => break false,
            }
        };
        server.abort();
        (String::from_utf8_lossy(&answer).into_owned(), closed)
    }

    #[tokio::test]
    async fn a_head_over_the_bound_gets_431_and_a_close_however_the_protocol_was_told() {
        for speaks in [Speaks::Http1, Speaks::Unknown] {
            let (answer, closed) = answer_to_big_head(speaks, 70 * 1024, "").await;
            assert!(answer.starts_with("HTTP/1.1 431"), "{speaks:?}: {answer}");
            assert!(closed, "{speaks:?}");
            let close = "Connection: close\r\n";
            let (answer, _) = answer_to_big_head(speaks, 60 * 1024, close).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{speaks:?}: {answer}");
        }
    }
}
