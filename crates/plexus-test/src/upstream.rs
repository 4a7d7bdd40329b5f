//! Scripted upstreams that count what they served: a TCP echo, an HTTP status stub and a gRPC
//! health stub. Each binds 127.0.0.1:0 and stops when dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A TCP echo server that counts the connections that sent it data (health-check probes that only
/// connect are not counted).
pub struct TcpEcho {
    /// Where it listens.
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TcpEcho {
    /// Starts an echo server on 127.0.0.1:0.
    pub async fn start() -> Result<Self> {
        Self::start_on("127.0.0.1:0").await
    }

    /// Starts an echo server on `addr`.
    pub async fn start_on(addr: &str) -> Result<Self> {
        Self::serve(TcpListener::bind(addr).await?)
    }

    /// Echoes on an already-bound listener (e.g. one bound inside a test host).
    pub fn serve(listener: TcpListener) -> Result<Self> {
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let counter = counter.clone();
                conns.spawn(async move {
                    let mut buf = [0u8; 4096];
                    let mut first = true;
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if std::mem::take(&mut first) {
                                    counter.fetch_add(1, Ordering::SeqCst);
                                }
                                if stream.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
        });
        Ok(Self {
            addr,
            connections,
            task,
        })
    }

    /// Connections that sent data so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        // Aborting the accept task drops the listener and, with the JoinSet, every connection.
        self.task.abort();
    }
}

/// An HTTP server (HTTP/1.1 and h2c) answering every request with a settable status code and
/// its name (`x-version` header and body), so tests can tell versions apart. Modes: flaky
/// (every n-th request answers 503), slow (each answer waits) and stalling (the body pauses
/// half-way). It records the requests it
/// served, the last `traceparent` it saw, the HTTP version, the path, the authority and the
/// headers of the last request.
pub struct HttpStub {
    /// Where it listens.
    pub addr: SocketAddr,
    status: Arc<AtomicU16>,
    state: Arc<StubState>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct StubState {
    name: String,
    requests: AtomicUsize,
    fail_every: AtomicUsize,
    delay_ms: AtomicU64,
    stall_ms: AtomicU64,
    last: std::sync::Mutex<(Option<String>, String)>,
    last_path: std::sync::Mutex<String>,
    last_authority: std::sync::Mutex<String>,
    last_headers: std::sync::Mutex<Vec<(String, String)>>,
}

impl HttpStub {
    /// Starts the stub answering `status`, named `stub`.
    pub async fn start(status: u16) -> Result<Self> {
        Self::start_with(status, "stub").await
    }

    /// Starts the stub answering 200 with `name` (e.g. `v1`).
    pub async fn start_named(name: &str) -> Result<Self> {
        Self::start_with(200, name).await
    }

    async fn start_with(status: u16, name: &str) -> Result<Self> {
        Self::serve_with(TcpListener::bind("127.0.0.1:0").await?, status, name)
    }

    /// Answers 200 with `name` on an already-bound listener (e.g. one bound inside a test
    /// host).
    pub fn serve(listener: TcpListener, name: &str) -> Result<Self> {
        Self::serve_with(listener, 200, name)
    }

    fn serve_with(listener: TcpListener, status: u16, name: &str) -> Result<Self> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(AtomicU16::new(status));
        let state = Arc::new(StubState {
            name: name.to_owned(),
            ..StubState::default()
        });
        let (current, served) = (shared.clone(), state.clone());
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let (current, state) = (current.clone(), served.clone());
            async move { answer(&current, &state, request).await }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            status: shared,
            state,
            task,
        })
    }

    /// Changes the status code answered from now on.
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Flaky mode: every `n`-th request answers 503 (0: never).
    pub fn fail_every(&self, n: usize) {
        self.state.fail_every.store(n, Ordering::SeqCst);
    }

    /// Slow mode: each answer waits `delay` first.
    pub fn set_delay(&self, delay: std::time::Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Stalling mode: each body sends `<name>-first` at once and `-rest` after `stall`
    /// (zero: a whole body at once).
    pub fn set_body_stall(&self, stall: std::time::Duration) {
        let ms = u64::try_from(stall.as_millis()).unwrap_or(u64::MAX);
        self.state.stall_ms.store(ms, Ordering::SeqCst);
    }

    /// Requests served so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// The `traceparent` of the last request (if it had one).
    pub fn last_traceparent(&self) -> Option<String> {
        self.last().0
    }

    /// The HTTP version of the last request (`HTTP/1.1`, `HTTP/2.0`).
    pub fn last_version(&self) -> String {
        self.last().1
    }

    /// The path and query of the last request (`/a?b=c`).
    pub fn last_path(&self) -> String {
        self.state
            .last_path
            .lock()
            .map(|path| path.clone())
            .unwrap_or_default()
    }

    /// The authority the last request asked for: HTTP/2's `:authority`, HTTP/1.1's `Host`.
    pub fn last_authority(&self) -> String {
        self.state
            .last_authority
            .lock()
            .map(|authority| authority.clone())
            .unwrap_or_default()
    }

    /// The headers of the last request, names in lower case, in the order received.
    pub fn last_headers(&self) -> Vec<(String, String)> {
        self.state
            .last_headers
            .lock()
            .map(|headers| headers.clone())
            .unwrap_or_default()
    }

    fn last(&self) -> (Option<String>, String) {
        self.state
            .last
            .lock()
            .map(|last| last.clone())
            .unwrap_or_default()
    }

    /// The URL of its root.
    pub fn url(&self) -> String {
        format!("http://{}/health", self.addr)
    }
}

async fn answer(
    status: &AtomicU16,
    state: &StubState,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let n = state.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let traceparent = request
        .headers()
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    if let Ok(mut last) = state.last.lock() {
        *last = (traceparent, format!("{:?}", request.version()));
    }
    if let Ok(mut path) = state.last_path.lock() {
        *path = request
            .uri()
            .path_and_query()
            .map(|path| path.as_str().to_owned())
            .unwrap_or_default();
    }
    if let Ok(mut authority) = state.last_authority.lock() {
        *authority = match request.uri().authority() {
            Some(authority) => authority.to_string(),
            None => request
                .headers()
                .get("host")
                .map(|host| String::from_utf8_lossy(host.as_bytes()).into_owned())
                .unwrap_or_default(),
        };
    }
    if let Ok(mut headers) = state.last_headers.lock() {
        *headers = request
            .headers()
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect();
    }
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let every = state.fail_every.load(Ordering::SeqCst);
    let code = if every > 0 && n.is_multiple_of(every) {
        503
    } else {
        status.load(Ordering::SeqCst)
    };
    let code = axum::http::StatusCode::from_u16(code)
        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    let stall = state.stall_ms.load(Ordering::SeqCst);
    if stall > 0 {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(2);
        let first = format!("{}-first", state.name);
        tokio::spawn(async move {
            let _ = tx.send(Ok(first.into())).await;
            tokio::time::sleep(std::time::Duration::from_millis(stall)).await;
            let _ = tx.send(Ok(axum::body::Bytes::from_static(b"-rest"))).await;
        });
        let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        return (code, [("x-version", state.name.clone())], body).into_response();
    }
    (
        code,
        [("x-version", state.name.clone())],
        state.name.clone(),
    )
        .into_response()
}

impl Drop for HttpStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A gRPC server speaking the standard health protocol, with a settable serving state.
pub struct GrpcHealthStub {
    /// Where it listens.
    pub addr: SocketAddr,
    reporter: tonic_health::server::HealthReporter,
    task: JoinHandle<()>,
}

impl GrpcHealthStub {
    /// Starts the stub, serving (status SERVING for the overall server `""`).
    pub async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Ok(Self {
            addr,
            reporter,
            task,
        })
    }

    /// Sets the overall serving state.
    pub async fn set_serving(&self, serving: bool) {
        let status = if serving {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
    }
}

impl Drop for GrpcHealthStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}
