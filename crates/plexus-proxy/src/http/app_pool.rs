//! The inbound sidecar's connections to its local app: HTTP/1.1 keep-alive connections in a
//! pool, or one multiplexed h2c connection. A terminating gateway pools its HTTP/1.1 connections
//! to a linked service the same way, each opened by its own [`Dial`] (TCP, then TLS).
//!
//! An HTTP/1.1 connection goes back to the pool when its response's body ends (no task per
//! request waits for it), and the most recently used is taken first, so a steady load keeps
//! using the same few warm connections while the rest age out after [`IDLE`]. A pooled
//! connection that the app closed while it was idle (Node.js does after 5 s, nginx after 75 s)
//! is skipped; one it closed just as a request went out is replaced by a new connection and the
//! request sent again, which is safe because hyper hands back only a request it did not write.
//! Connections to an address the app no longer has age out with the idle ones.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::{Body, BodyError};
use plexus_runtime::ErrorChain;
use plexus_runtime::lock::lock;

/// Idle connections to the app are closed after this long.
pub(crate) const IDLE: Duration = Duration::from_secs(90);

/// Why a request did not reach the app, or got no response from it.
#[derive(Debug)]
pub(crate) enum AppError {
    /// No connection could be opened (refused, or no answer within the connect timeout).
    Connect(String),
    /// The connection failed while the request was sent or its response awaited.
    Reset(hyper::Error),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(error) => write!(f, "connect: {error}"),
            Self::Reset(error) => write!(f, "{}", ErrorChain(error)),
        }
    }
}

/// Opens the byte stream of a new pooled connection.
pub(crate) trait Dial: Send + Sync + 'static {
    /// The stream.
    type Io: AsyncRead + AsyncWrite + Send + Unpin + 'static;
    /// A stream to `addr`, or why there is none.
    fn dial(&self, addr: SocketAddr) -> impl Future<Output = Result<Self::Io, String>> + Send;
}

/// Plain TCP, bounded by a connect timeout (the local app).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tcp(pub Duration);

impl Dial for Tcp {
    type Io = TcpStream;

    async fn dial(&self, addr: SocketAddr) -> Result<TcpStream, String> {
        crate::endpoint::dial(addr, self.0)
            .await
            .map_err(|error| ErrorChain(&error).to_string())
    }
}

/// HTTP/1.1 keep-alive connections to the app (or to whatever `D` dials).
pub(crate) struct Http1Pool<D: Dial = Tcp> {
    idle: Mutex<VecDeque<Idle>>,
    dial: D,
    idle_timeout: Duration,
    /// Whether the task closing connections idle past `idle_timeout` runs (started with the
    /// first connection, so that building a pool needs no runtime).
    reaping: std::sync::atomic::AtomicBool,
}

struct Idle {
    sender: http1::SendRequest<Body>,
    app: SocketAddr,
    since: Instant,
}

impl Http1Pool<Tcp> {
    /// Plain TCP connections, opened within `connect_timeout`.
    pub(crate) fn new(connect_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        Self::with_dial(Tcp(connect_timeout), idle_timeout)
    }
}

impl<D: Dial> Http1Pool<D> {
    /// Connections opened by `dial`.
    pub(crate) fn with_dial(dial: D, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(VecDeque::new()),
            dial,
            idle_timeout,
            reaping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Sends `request` (origin-form URI, `Host` set) to the app at `app`.
    pub(crate) async fn send(
        self: &Arc<Self>,
        app: SocketAddr,
        request: Request<Body>,
    ) -> Result<Response<Body>, AppError> {
        let sender = match self.checkout(app).await {
            Some(sender) => (sender, true),
            None => (self.connect(app).await?, false),
        };
        self.exchange(app, sender, request).await
    }

    /// Sends `request` to the first of `order` that has an idle connection or takes a new one:
    /// the response and the address it came from.
    pub(crate) async fn send_first(
        self: &Arc<Self>,
        order: impl IntoIterator<Item = SocketAddr>,
        request: Request<Body>,
    ) -> Result<(Response<Body>, SocketAddr), AppError> {
        let mut failed = None;
        for addr in order {
            let sender = match self.checkout(addr).await {
                Some(sender) => (sender, true),
                None => match self.connect(addr).await {
                    Ok(sender) => (sender, false),
                    Err(error) => {
                        debug!(%addr, %error, "cannot connect; trying the next address");
                        failed = Some(error);
                        continue;
                    }
                },
            };
            return Ok((self.exchange(addr, sender, request).await?, addr));
        }
        Err(failed.unwrap_or_else(|| AppError::Connect("no address to connect to".to_owned())))
    }

    /// Sends `request` on `sender` (`pooled`: taken idle from the pool), on a new connection to
    /// `app` when a pooled one closed before it was written.
    async fn exchange(
        self: &Arc<Self>,
        app: SocketAddr,
        (mut sender, mut pooled): (http1::SendRequest<Body>, bool),
        mut request: Request<Body>,
    ) -> Result<Response<Body>, AppError> {
        loop {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.give_back_after(response, sender, app)),
                Err(mut error) => match error.take_message() {
                    // Not written: the pooled connection closed under it; a new one next.
                    Some(unsent) if pooled => {
                        debug!(%app, error = %ErrorChain(error.error()), "pooled connection to the app closed; retrying on a new one");
                        request = unsent;
                        (sender, pooled) = match self.checkout(app).await {
                            Some(sender) => (sender, true),
                            None => (self.connect(app).await?, false),
                        };
                    }
                    _ => return Err(AppError::Reset(error.into_error())),
                },
            }
        }
    }

    /// The most recently used idle connection to `app` that takes a request.
    async fn checkout(&self, app: SocketAddr) -> Option<http1::SendRequest<Body>> {
        loop {
            let idle = {
                let mut pool = lock(&self.idle);
                let now = Instant::now();
                while pool
                    .front()
                    .is_some_and(|c| now.duration_since(c.since) >= self.idle_timeout)
                {
                    pool.pop_front();
                }
                // Connections to other addresses stay (a gateway's pool holds each instance's);
                // one to an address no longer used ages out.
                let newest = pool.iter().rposition(|c| c.app == app)?;
                pool.remove(newest)?
            };
            if idle.sender.is_closed() {
                continue;
            }
            let mut sender = idle.sender;
            // Returned as its response body ended, it is ready once its connection has read
            // that far, or closed if the app said `Connection: close`.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn connect(
        self: &Arc<Self>,
        app: SocketAddr,
    ) -> Result<http1::SendRequest<Body>, AppError> {
        let stream = self.dial.dial(app).await.map_err(AppError::Connect)?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|error| AppError::Connect(ErrorChain(&error).to_string()))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%app, error = %ErrorChain(&error), "connection to the app ended");
            }
        });
        if !self
            .reaping
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tokio::spawn(reap(Arc::downgrade(self)));
        }
        Ok(sender)
    }

    /// `response`, whose connection goes back to the pool when its body ends.
    fn give_back_after(
        self: &Arc<Self>,
        response: Response<Incoming>,
        sender: http1::SendRequest<Body>,
        app: SocketAddr,
    ) -> Response<Body> {
        if hyper::body::Body::is_end_stream(response.body()) {
            self.put(sender, app);
            return response.map(super::incoming);
        }
        let back = Some((sender, app, Arc::downgrade(self)));
        response.map(|inner| Pooled { inner, back }.boxed())
    }

    fn put(&self, sender: http1::SendRequest<Body>, app: SocketAddr) {
        lock(&self.idle).push_back(Idle {
            sender,
            app,
            since: Instant::now(),
        });
    }

    /// Closes the connections idle for longer than the idle timeout.
    fn expire(&self) {
        let now = Instant::now();
        lock(&self.idle)
            .retain(|c| now.duration_since(c.since) < self.idle_timeout && !c.sender.is_closed());
    }
}

/// Closes idle connections past their time while the pool exists.
async fn reap<D: Dial>(pool: Weak<Http1Pool<D>>) {
    loop {
        let Some(every) = pool.upgrade().map(|p| p.idle_timeout / 3) else {
            return;
        };
        tokio::time::sleep(every).await;
        match pool.upgrade() {
            Some(pool) => pool.expire(),
            None => return,
        }
    }
}

/// A response body whose connection goes back to the pool when it ends (dropped unfinished or
/// failed, the connection is closed instead).
struct Pooled<D: Dial> {
    inner: Incoming,
    back: Option<(http1::SendRequest<Body>, SocketAddr, Weak<Http1Pool<D>>)>,
}

impl<D: Dial> Pooled<D> {
    fn give_back(&mut self) {
        if let Some((sender, app, pool)) = self.back.take()
            && let Some(pool) = pool.upgrade()
        {
            pool.put(sender, app);
        }
    }
}

impl<D: Dial> hyper::body::Body for Pooled<D> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            None => self.give_back(),
            Some(Err(_)) => self.back = None,
            Some(Ok(_)) if hyper::body::Body::is_end_stream(&self.inner) => self.give_back(),
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame.map(|frame| frame.map_err(BodyError::from)))
    }

    fn is_end_stream(&self) -> bool {
        hyper::body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> SizeHint {
        hyper::body::Body::size_hint(&self.inner)
    }
}

/// One multiplexed h2c connection to the app, opened on the first request and again after it
/// closes.
pub(crate) struct H2cPool {
    current: Mutex<Option<(SocketAddr, http2::SendRequest<Body>)>>,
    /// Held while a connection is opened, so that concurrent first requests share it.
    connecting: tokio::sync::Mutex<()>,
    connect_timeout: Duration,
    max_header_list_size: u32,
}

impl H2cPool {
    pub(crate) fn new(connect_timeout: Duration, max_header_list_size: u32) -> Self {
        Self {
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            connect_timeout,
            max_header_list_size,
        }
    }

    /// Sends `request` (absolute URI: h2 needs `:scheme` and `:authority`) to the app at `app`.
    pub(crate) async fn send(
        &self,
        app: SocketAddr,
        mut request: Request<Body>,
    ) -> Result<Response<Body>, AppError> {
        let mut retried = false;
        loop {
            let mut sender = self.sender(app).await?;
            let sent = match sender.ready().await {
                Ok(()) => sender.try_send_request(request).await,
                Err(error) => return Err(AppError::Reset(error)),
            };
            match sent {
                Ok(response) => return Ok(response.map(super::incoming)),
                Err(mut error) => match error.take_message() {
                    // The connection went away (GOAWAY) before this stream opened.
                    Some(unsent) if !retried => {
                        retried = true;
                        request = unsent;
                    }
                    _ => return Err(AppError::Reset(error.into_error())),
                },
            }
        }
    }

    fn open(&self, app: SocketAddr) -> Option<http2::SendRequest<Body>> {
        match &*lock(&self.current) {
            Some((addr, sender)) if *addr == app && !sender.is_closed() => Some(sender.clone()),
            _ => None,
        }
    }

    async fn sender(&self, app: SocketAddr) -> Result<http2::SendRequest<Body>, AppError> {
        if let Some(sender) = self.open(app) {
            return Ok(sender);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(sender) = self.open(app) {
            return Ok(sender);
        }
        let stream = crate::endpoint::dial(app, self.connect_timeout)
            .await
            .map_err(|error| AppError::Connect(ErrorChain(&error).to_string()))?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(self.max_header_list_size)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|error| AppError::Connect(ErrorChain(&error).to_string()))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%app, error = %ErrorChain(&error), "h2c connection to the app ended");
            }
        });
        *lock(&self.current) = Some((app, sender.clone()));
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::server::conn::auto;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// An HTTP/1.1 and h2c app answering `hello`; counts the connections it accepted.
    async fn app() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(|_request: Request<Incoming>| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    fn get(uri: &str) -> Request<Body> {
        Request::builder()
            .uri(uri)
            .header(http::header::HOST, "app")
            .body(
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .unwrap()
    }

    async fn text(response: Response<Body>) -> String {
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection_and_concurrent_ones_open_more() {
        let (addr, accepted) = app().await;
        let pool = Http1Pool::new(Duration::from_secs(5), IDLE);
        for _ in 0..20 {
            let response = pool.send(addr, get("/")).await.unwrap();
            assert_eq!(text(response).await, "hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // Two responses held open at once need two connections; both are pooled after.
        let a = pool.send(addr, get("/")).await.unwrap();
        let b = pool.send(addr, get("/")).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(text(a).await + &text(b).await, "hellohello");
        for _ in 0..10 {
            text(pool.send(addr, get("/")).await.unwrap()).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_unfinished_body_does_not_return_its_connection() {
        let (addr, accepted) = app().await;
        let pool = Http1Pool::new(Duration::from_secs(5), IDLE);
        drop(pool.send(addr, get("/")).await.unwrap());
        text(pool.send(addr, get("/")).await.unwrap()).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// An app that answers one request per connection with a keep-alive response and then
    /// closes the connection without saying so: every pooled connection is dead when reused.
    async fn closing_app() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn a_connection_the_app_closed_is_replaced_and_the_request_answered() {
        let (addr, accepted) = closing_app().await;
        let pool = Http1Pool::new(Duration::from_secs(5), IDLE);
        for _ in 0..10 {
            let response = pool.send(addr, get("/")).await.unwrap();
            assert_eq!(text(response).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 10);
    }

    #[tokio::test]
    async fn a_new_app_address_gets_new_connections_and_the_others_keep_theirs() {
        let (first, first_accepted) = app().await;
        let (second, second_accepted) = app().await;
        let pool = Http1Pool::new(Duration::from_secs(5), IDLE);
        text(pool.send(first, get("/")).await.unwrap()).await;
        text(pool.send(second, get("/")).await.unwrap()).await;
        text(pool.send(second, get("/")).await.unwrap()).await;
        text(pool.send(first, get("/")).await.unwrap()).await;
        assert_eq!(first_accepted.load(Ordering::SeqCst), 1);
        assert_eq!(second_accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error_naming_the_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let pool = Http1Pool::new(Duration::from_secs(5), IDLE);
        match pool.send(addr, get("/")).await {
            Err(AppError::Connect(error)) => assert!(error.contains(&addr.to_string()), "{error}"),
            other => panic!("expected a connect error, got {other:?}"),
        }
        let h2c = H2cPool::new(Duration::from_secs(5), 65536);
        assert!(matches!(
            h2c.send(addr, get(&format!("http://{addr}/"))).await,
            Err(AppError::Connect(_))
        ));
    }

    #[tokio::test]
    async fn the_first_address_that_takes_a_connection_answers_and_keeps_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let down = listener.local_addr().unwrap();
        drop(listener);
        let (up, accepted) = app().await;
        let pool = Http1Pool::new(Duration::from_secs(5), IDLE);
        for _ in 0..3 {
            let (response, from) = pool.send_first([down, up], get("/")).await.unwrap();
            assert_eq!((text(response).await.as_str(), from), ("hello", up));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        match pool.send_first([down], get("/")).await {
            Err(AppError::Connect(error)) => assert!(error.contains(&down.to_string()), "{error}"),
            other => panic!("expected a connect error, got {other:?}"),
        }
        assert!(matches!(
            pool.send_first([], get("/")).await,
            Err(AppError::Connect(_))
        ));
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let (addr, accepted) = app().await;
        let pool = Http1Pool::new(Duration::from_secs(5), Duration::from_millis(300));
        text(pool.send(addr, get("/")).await.unwrap()).await;
        assert_eq!(lock(&pool.idle).len(), 1);
        // The reaper (every third of the idle timeout) closes it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !lock(&pool.idle).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "an idle connection outlived its timeout"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        text(pool.send(addr, get("/")).await.unwrap()).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn h2c_requests_share_one_connection() {
        let (addr, accepted) = app().await;
        let pool = Arc::new(H2cPool::new(Duration::from_secs(5), 65536));
        let mut requests = Vec::new();
        for _ in 0..10 {
            let pool = Arc::clone(&pool);
            requests.push(tokio::spawn(async move {
                text(
                    pool.send(addr, get(&format!("http://{addr}/")))
                        .await
                        .unwrap(),
                )
                .await
            }));
        }
        for request in requests {
            assert_eq!(request.await.unwrap(), "hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }
}
