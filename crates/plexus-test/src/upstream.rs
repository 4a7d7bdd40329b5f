//! Scripted upstreams that count what they served: a TCP echo, an HTTP status stub and a gRPC
//! health stub. Each binds 127.0.0.1:0 and stops when dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

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
        let listener = TcpListener::bind(addr).await?;
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

/// An HTTP server answering every request with a settable status code.
pub struct HttpStub {
    /// Where it listens.
    pub addr: SocketAddr,
    status: Arc<AtomicU16>,
    task: JoinHandle<()>,
}

impl HttpStub {
    /// Starts the stub answering `status`.
    pub async fn start(status: u16) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(AtomicU16::new(status));
        let current = shared.clone();
        let app = axum::Router::new().fallback(move || {
            let current = current.clone();
            async move {
                let code = current.load(Ordering::SeqCst);
                axum::http::StatusCode::from_u16(code)
                    .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            status: shared,
            task,
        })
    }

    /// Changes the status code answered from now on.
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// The URL of its root.
    pub fn url(&self) -> String {
        format!("http://{}/health", self.addr)
    }
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
