//! Tunnels through the L7 path: HTTP/1.1 `Upgrade` (WebSocket and any other token) and
//! `CONNECT`.
//!
//! ```text
//!  app ──GET + Upgrade: websocket──► outbound ──extended CONNECT :protocol=websocket (RFC 8441),
//!        one stream of the pooled h2──► inbound ──GET + Upgrade: websocket, new HTTP/1.1
//!        connection──► app
//!  app ──CONNECT host:port──► outbound ──CONNECT host:port (RFC 9113 §8.5)──► inbound
//!        ──CONNECT host:port, new HTTP/1.1 connection──► app
//! ```
//!
//! The headers of the upgrade (`Sec-WebSocket-*`, …) travel end to end as ordinary headers, so
//! the app answers the client's handshake itself. When the app agrees (101 for an upgrade, 2xx
//! for `CONNECT`), each sidecar answers its side (inbound: 200 on the stream; outbound: 101 or
//! 200 to the app) and splices the bytes; anything else is passed back as a normal response.
//! A `CONNECT` goes to the destination service's app (which must act on it, like an HTTP
//! proxy would), never to the `host:port` it names: the sidecar is not an open proxy.
//!
//! Tunnels skip the route policy: outbound, the tunnel layer sends them straight to the
//! concrete part of the stack (the destination's endpoints, balanced). An open tunnel is a task
//! of the proxy: at shutdown it may go on for the drain grace period, then it is cut (`kill`),
//! so a WebSocket left open never holds the process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Layer, Service, ServiceExt};
use tracing::debug;

use super::stack::{Answer, AnswerFuture, HttpService};
use super::{Body, HttpError, Reason};

/// What kind of tunnel a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tunnel {
    /// `CONNECT host:port`.
    Connect,
    /// An HTTP/1.1 `Upgrade` to this protocol token (e.g. `websocket`).
    Upgrade(String),
}

impl Tunnel {
    /// The tunnel an app's request asks for: `CONNECT`, or an HTTP/1.1 request with
    /// `Connection: upgrade` and an `Upgrade` token other than `h2c`.
    pub(crate) fn of<B>(request: &Request<B>) -> Option<Self> {
        if request.method() == Method::CONNECT {
            return Some(Self::Connect);
        }
        if request.version() != Version::HTTP_11 {
            return None;
        }
        let asked = request
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
        let token = request
            .headers()
            .get(header::UPGRADE)?
            .to_str()
            .ok()?
            .split(',')
            .next()?
            .trim();
        (asked && !token.is_empty() && !token.eq_ignore_ascii_case("h2c"))
            .then(|| Self::Upgrade(token.to_owned()))
    }

    /// The tunnel a peer sidecar's HTTP/2 request asks for: a `CONNECT`, extended (with
    /// `:protocol`) for an upgrade.
    pub(crate) fn of_h2<B>(request: &Request<B>) -> Option<Self> {
        if request.method() != Method::CONNECT {
            return None;
        }
        Some(match request.extensions().get::<h2::ext::Protocol>() {
            Some(protocol) => Self::Upgrade(protocol.as_str().to_owned()),
            None => Self::Connect,
        })
    }
}

/// The authority a request names: its URI's, else its `Host`.
fn authority<B>(request: &Request<B>) -> Option<String> {
    request
        .uri()
        .authority()
        .map(|authority| authority.as_str().to_owned())
        .or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        })
}

/// The end-to-end headers of a tunnel request or response (hop-by-hop ones, `Host` and
/// `Content-Length` removed: a tunnel has no body).
fn end_to_end(mut headers: HeaderMap) -> HeaderMap {
    super::strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    headers
}

/// Where tunnels run: their tasks, cut when the drain grace period is over.
#[derive(Debug, Clone)]
pub(crate) struct Tunnels {
    tasks: TaskTracker,
    kill: CancellationToken,
}

impl Tunnels {
    /// Tunnels spawned in `tasks`, cut when `kill` fires.
    pub(crate) fn new(tasks: TaskTracker, kill: CancellationToken) -> Self {
        Self { tasks, kill }
    }

    fn splice(&self, a: OnUpgrade, b: Upstream, direction: &'static str) {
        let kill = self.kill.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = splice(a, b, direction) => {}
                () = kill.cancelled() => debug!(direction, "tunnel cut: drain grace period is over"),
            }
        });
    }
}

/// Adds [`Tunneling`]: tunnels go through `concrete` (balance and endpoint only).
#[derive(Clone)]
pub(crate) struct TunnelLayer<C> {
    concrete: C,
    destination: Arc<str>,
    tunnels: Tunnels,
}

impl<C> TunnelLayer<C> {
    /// Tunnels to `destination` through `concrete`, run in `tasks` until done or `kill`.
    pub(crate) fn new(
        concrete: C,
        destination: Arc<str>,
        tasks: TaskTracker,
        kill: CancellationToken,
    ) -> Self {
        Self {
            concrete,
            destination,
            tunnels: Tunnels::new(tasks, kill),
        }
    }
}

impl<S, C: Clone> Layer<S> for TunnelLayer<C> {
    type Service = Tunneling<S, C>;
    fn layer(&self, inner: S) -> Tunneling<S, C> {
        Tunneling {
            inner,
            layer: self.clone(),
        }
    }
}

/// Takes an app's tunnel request (WebSocket, `CONNECT`) off the request path.
#[derive(Clone)]
pub(crate) struct Tunneling<S, C> {
    inner: S,
    layer: TunnelLayer<C>,
}

impl<S: HttpService, C: HttpService> Service<Request<Body>> for Tunneling<S, C> {
    type Response = Response<Body>;
    type Error = HttpError;
    type Future = AnswerFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> AnswerFuture {
        let Some(tunnel) = Tunnel::of(&request) else {
            return self.inner.call(request);
        };
        let layer = self.layer.clone();
        Box::pin(async move {
            outbound(
                request,
                tunnel,
                &layer.destination,
                layer.concrete,
                &layer.tunnels,
            )
            .await
        })
    }
}

/// Outbound: sends the app's tunnel request as a (extended) `CONNECT` on a pooled HTTP/2
/// connection; when the far end agrees, answers the app (101 or 200) and splices the app's
/// connection with the stream.
async fn outbound<C: HttpService>(
    mut request: Request<Body>,
    tunnel: Tunnel,
    destination: &str,
    concrete: C,
    tunnels: &Tunnels,
) -> Answer {
    let downstream = hyper::upgrade::on(&mut request);
    let host = authority(&request);
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .to_owned();
    let (parts, _body) = request.into_parts();
    let mut headers = end_to_end(parts.headers);
    super::ensure_traceparent(&mut headers);
    let mut out = Request::new(super::empty());
    *out.method_mut() = Method::CONNECT;
    *out.version_mut() = Version::HTTP_2;
    *out.headers_mut() = headers;
    match &tunnel {
        Tunnel::Connect => {
            *out.uri_mut() = host
                .as_deref()
                .and_then(|host| Uri::builder().authority(host).build().ok())
                .ok_or(HttpError::new(Reason::BadRequest))?;
        }
        Tunnel::Upgrade(protocol) => {
            let authority = host.as_deref().unwrap_or(destination);
            *out.uri_mut() = Uri::builder()
                .scheme("http")
                .authority(authority)
                .path_and_query(path)
                .build()
                .map_err(|_| HttpError::new(Reason::BadRequest))?;
            out.extensions_mut()
                .insert(h2::ext::Protocol::from(protocol.as_str()));
        }
    }
    let response = concrete.oneshot(out).await?;
    if !response.status().is_success() {
        // Refused (by the far sidecar or the app): an ordinary response.
        return Ok(response);
    }
    let Some(upstream) = response
        .extensions()
        .get::<super::peer::Tunnel>()
        .and_then(super::peer::Tunnel::take)
    else {
        debug!(%destination, "the peer accepted a tunnel without opening its stream");
        return Err(HttpError::new(Reason::UpstreamReset));
    };
    let mut reply = Response::new(super::empty());
    *reply.headers_mut() = end_to_end(response.into_parts().0.headers);
    match &tunnel {
        Tunnel::Connect => *reply.status_mut() = StatusCode::OK,
        Tunnel::Upgrade(protocol) => {
            *reply.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let protocol =
                HeaderValue::from_str(protocol).map_err(|_| HttpError::new(Reason::BadRequest))?;
            let headers = reply.headers_mut();
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol);
        }
    }
    tunnels.splice(downstream, Upstream::Stream(upstream), "outbound");
    Ok(reply)
}

/// Adds [`InboundTunneling`].
#[derive(Debug, Clone)]
pub(crate) struct InboundTunnelLayer {
    app: watch::Receiver<SocketAddr>,
    connect_timeout: Duration,
    tunnels: Tunnels,
}

impl InboundTunnelLayer {
    /// Tunnels to the app at `app`, run in `tasks` until done or `kill`.
    pub(crate) fn new(
        app: watch::Receiver<SocketAddr>,
        connect_timeout: Duration,
        tasks: TaskTracker,
        kill: CancellationToken,
    ) -> Self {
        Self {
            app,
            connect_timeout,
            tunnels: Tunnels::new(tasks, kill),
        }
    }
}

impl<S> Layer<S> for InboundTunnelLayer {
    type Service = InboundTunneling<S>;
    fn layer(&self, inner: S) -> InboundTunneling<S> {
        InboundTunneling {
            inner,
            layer: self.clone(),
        }
    }
}

/// Takes a peer's tunnel request (an extended or plain `CONNECT`) to the app.
#[derive(Debug, Clone)]
pub(crate) struct InboundTunneling<S> {
    inner: S,
    layer: InboundTunnelLayer,
}

impl<S: HttpService> Service<Request<Body>> for InboundTunneling<S> {
    type Response = Response<Body>;
    type Error = HttpError;
    type Future = AnswerFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> AnswerFuture {
        let Some(tunnel) = Tunnel::of_h2(&request) else {
            return self.inner.call(request);
        };
        let layer = self.layer.clone();
        let app = *layer.app.borrow();
        Box::pin(async move {
            inbound(request, tunnel, app, layer.connect_timeout, &layer.tunnels).await
        })
    }
}

/// Inbound: replays a peer's (extended) `CONNECT` to the app on a new HTTP/1.1 connection; when
/// the app agrees (101 / 2xx), answers 200 on the stream and splices the two.
async fn inbound(
    request: Request<Body>,
    tunnel: Tunnel,
    app: SocketAddr,
    connect_timeout: Duration,
    tunnels: &Tunnels,
) -> Answer {
    let Some(peer) = request
        .extensions()
        .get::<super::peer::Accepted>()
        .and_then(super::peer::Accepted::take)
    else {
        debug!(%app, "a tunnel request without its stream");
        return Err(HttpError::new(Reason::BadRequest));
    };
    let host = authority(&request).unwrap_or_else(|| app.to_string());
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .to_owned();
    let (parts, _body) = request.into_parts();
    let mut headers = end_to_end(parts.headers);
    super::ensure_traceparent(&mut headers);
    headers.insert(
        header::HOST,
        HeaderValue::from_str(&host).map_err(|_| HttpError::new(Reason::BadRequest))?,
    );
    let mut out = Request::new(super::empty());
    *out.version_mut() = Version::HTTP_11;
    match &tunnel {
        Tunnel::Connect => {
            *out.method_mut() = Method::CONNECT;
            *out.uri_mut() = Uri::builder()
                .authority(host.as_str())
                .build()
                .map_err(|_| HttpError::new(Reason::BadRequest))?;
        }
        Tunnel::Upgrade(protocol) => {
            *out.uri_mut() = path
                .parse()
                .map_err(|_| HttpError::new(Reason::BadRequest))?;
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(
                header::UPGRADE,
                HeaderValue::from_str(protocol).map_err(|_| HttpError::new(Reason::BadRequest))?,
            );
        }
    }
    *out.headers_mut() = headers;

    let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(app))
        .await
        .map_err(|_| HttpError::new(Reason::UpstreamConnectFailure))?
        .map_err(|error| {
            debug!(%error, %app, "cannot connect to the local app for a tunnel");
            HttpError::new(Reason::UpstreamConnectFailure)
        })?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| HttpError::new(Reason::UpstreamConnectFailure))?;
    let kill = tunnels.kill.clone();
    tunnels.tasks.spawn(async move {
        tokio::select! {
            ended = connection.with_upgrades() => {
                if let Err(error) = ended {
                    debug!(%error, "tunnel connection to the local app ended with an error");
                }
            }
            () = kill.cancelled() => {}
        }
    });
    let mut response = sender.send_request(out).await.map_err(|error| {
        debug!(%error, %app, "tunnel request to the local app failed");
        HttpError::new(Reason::UpstreamReset)
    })?;
    let agreed = match tunnel {
        Tunnel::Connect => response.status().is_success(),
        Tunnel::Upgrade(_) => response.status() == StatusCode::SWITCHING_PROTOCOLS,
    };
    if !agreed {
        if response.status().is_success() {
            // A 2xx would read as "tunnel open" on the HTTP/2 hop; the app ignored the upgrade.
            debug!(%app, status = %response.status(), "the local app did not switch protocols");
            return Err(HttpError::new(Reason::UpstreamReset));
        }
        let (mut parts, body) = response.into_parts();
        super::strip_hop_by_hop(&mut parts.headers);
        return Ok(Response::from_parts(parts, super::incoming(body)));
    }
    let app_side = hyper::upgrade::on(&mut response);
    let mut reply = Response::new(super::empty());
    *reply.headers_mut() = end_to_end(response.into_parts().0.headers);
    tunnels.splice(app_side, Upstream::Accepted(peer), "inbound");
    Ok(reply)
}

/// The other side of a tunnel from an upgraded HTTP/1.1 connection: the open stream of a
/// `CONNECT` to a peer sidecar, or the stream of a peer's `CONNECT`, open once answered.
enum Upstream {
    Stream(super::peer::TunnelIo),
    Accepted(oneshot::Receiver<super::peer::TunnelIo>),
}

/// Copies bytes both ways between an upgraded connection and `b` until both sides are done.
async fn splice(a: OnUpgrade, b: Upstream, direction: &'static str) {
    let upgraded = |result: Result<hyper::upgrade::Upgraded, hyper::Error>| {
        result
            .map(TokioIo::new)
            .inspect_err(|error| debug!(%error, direction, "tunnel upgrade failed"))
            .ok()
    };
    match b {
        Upstream::Accepted(b) => {
            let (a, b) = tokio::join!(a, b);
            let Ok(mut b) = b else {
                debug!(
                    direction,
                    "the tunnel's stream was not opened (answer not sent)"
                );
                return;
            };
            if let Some(mut a) = upgraded(a) {
                copy(&mut a, &mut b, direction).await;
            }
        }
        Upstream::Stream(mut b) => {
            if let Some(mut a) = upgraded(a.await) {
                copy(&mut a, &mut b, direction).await;
            }
        }
    }
}

async fn copy<A, B>(a: &mut A, b: &mut B, direction: &'static str)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    match crate::endpoint::copy::copy_bidirectional(a, b).await {
        Ok((sent, received)) => debug!(direction, sent, received, "tunnel closed"),
        Err(error) => debug!(%error, direction, "tunnel ended with an error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri("/chat");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn tunnels_are_recognised_only_when_asked_for() {
        let ws = request(
            Method::GET,
            &[
                ("connection", "keep-alive, Upgrade"),
                ("upgrade", "websocket"),
            ],
        );
        assert_eq!(Tunnel::of(&ws), Some(Tunnel::Upgrade("websocket".into())));
        // Upgrade without Connection: upgrade, and h2c, are not tunnels.
        let bare = request(Method::GET, &[("upgrade", "websocket")]);
        assert_eq!(Tunnel::of(&bare), None);
        let h2c = request(
            Method::GET,
            &[("connection", "upgrade"), ("upgrade", "h2c")],
        );
        assert_eq!(Tunnel::of(&h2c), None);
        assert_eq!(
            Tunnel::of(&request(Method::CONNECT, &[])),
            Some(Tunnel::Connect)
        );
        assert_eq!(Tunnel::of(&request(Method::GET, &[])), None);

        let mut extended = request(Method::CONNECT, &[]);
        extended
            .extensions_mut()
            .insert(h2::ext::Protocol::from("websocket"));
        assert_eq!(
            Tunnel::of_h2(&extended),
            Some(Tunnel::Upgrade("websocket".into()))
        );
        assert_eq!(
            Tunnel::of_h2(&request(Method::CONNECT, &[])),
            Some(Tunnel::Connect)
        );
        assert_eq!(Tunnel::of_h2(&request(Method::GET, &[])), None);
    }
}
