//! The xDS server's connections: plain gRPC from `--grpc-addr` and gRPC over TLS from
//! `--grpc-tls-addr` (Consul's `grpc` and `grpc_tls` ports), merged into one stream for the one
//! gRPC server, so both share the same proxies, watches and status.
//!
//! TLS uses the HTTPS API's [`TlsServer`] (same certificate, renewed in place; each new
//! connection takes the current one). Each handshake runs in its own task within
//! [`plexus_runtime::tls::HANDSHAKE_TIMEOUT`], so a slow client holds up no one. When the
//! listener requires client certificates (`verify_incoming`), a connection that presented none
//! is closed after the handshake.
//!
//! Both listeners share one [`Admission`] with the HTTP API's bounds (`--http-max-conns`,
//! `--http-max-conns-per-client`): past them a connection is closed as soon as it is accepted
//! (a gRPC client cannot read an HTTP answer; it sees the connection closed and retries). A
//! connection that has not sent its first bytes (the HTTP/2 preface) within the header timeout
//! (`--http-header-timeout`) is closed; after that, xDS streams live as long as the client keeps
//! them (HTTP/2 keep-alive pings find dead peers).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use plexus_runtime::connections::{Admission, ConnLimits, Permit};
use plexus_runtime::tls::TlsServer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Sleep;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, warn};

/// Accepted connections waiting for the gRPC server.
const QUEUE: usize = 64;

/// One accepted connection's stream, plain or TLS.
#[derive(Debug)]
pub(crate) enum Stream {
    /// `--grpc-addr`.
    Plain(TcpStream),
    /// `--grpc-tls-addr`, after the handshake.
    Tls(Box<TlsStream<TcpStream>>),
}

/// One admitted connection: its stream, its place among the bounds, and until its first bytes
/// arrive, the deadline for them.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: Stream,
    _permit: Permit,
    first_bytes: Option<Pin<Box<Sleep>>>,
}

impl Conn {
    fn new(stream: Stream, permit: Permit, header_timeout: Duration) -> Self {
        Self {
            stream,
            _permit: permit,
            first_bytes: Some(Box::pin(tokio::time::sleep(header_timeout))),
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match &self.stream {
            Stream::Plain(tcp) => tcp.connect_info(),
            Stream::Tls(tls) => tls.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = match &mut this.stream {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        };
        if let Some(deadline) = this.first_bytes.as_mut() {
            match &polled {
                Poll::Ready(Ok(())) if buf.filled().len() > before => this.first_bytes = None,
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no HTTP/2 preface within the header timeout",
                    )));
                }
                _ => {}
            }
        }
        polled
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Takes a place for a connection from `peer`; `None` (the connection is dropped, closing it)
/// past the bounds.
fn admit(admission: &Admission, tcp: TcpStream, peer: SocketAddr) -> Option<(TcpStream, Permit)> {
    match admission.admit(peer.ip()) {
        Ok(permit) => Some((tcp, permit)),
        Err(refusal) => {
            debug!(%peer, reason = %refusal.message(), "xDS connection refused");
            None
        }
    }
}

/// Accepts on the given listeners until `stop`, handing connections to the returned receiver.
pub(crate) fn accept_all(
    plain: Option<TcpListener>,
    tls: Option<(TcpListener, TlsServer)>,
    limits: ConnLimits,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> mpsc::Receiver<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let admission = Arc::new(Admission::new(limits));
    let header_timeout = limits.header_read_timeout;
    if let Some(listener) = plain {
        let (tx, stop, admission) = (tx.clone(), stop.clone(), Arc::clone(&admission));
        tasks.spawn(async move {
            while let Some((tcp, peer)) = accept(&listener, &stop).await {
                let Some((tcp, permit)) = admit(&admission, tcp, peer) else {
                    continue;
                };
                let conn = Conn::new(Stream::Plain(tcp), permit, header_timeout);
                if tx.send(Ok(conn)).await.is_err() {
                    return;
                }
            }
        });
    }
    if let Some((listener, server)) = tls {
        let handshakes = tasks.clone();
        tasks.spawn(async move {
            while let Some((tcp, peer)) = accept(&listener, &stop).await {
                let Some((tcp, permit)) = admit(&admission, tcp, peer) else {
                    continue;
                };
                let (tx, server, stop) = (tx.clone(), server.clone(), stop.clone());
                handshakes.spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        stream = handshake(tcp, peer, &server) => if let Some(stream) = stream {
                            let conn = Conn::new(stream, permit, header_timeout);
                            let _ = tx.send(Ok(conn)).await;
                        },
                    }
                });
            }
        });
    }
    rx
}

async fn accept(
    listener: &TcpListener,
    stop: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => return Some(accepted),
                Err(error) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    warn!(%error, "accepting an xDS connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

async fn handshake(tcp: TcpStream, peer: SocketAddr, server: &TlsServer) -> Option<Stream> {
    match plexus_runtime::tls::accept(tcp, server.current()).await {
        Ok((stream, certificates)) => {
            if server.requires_client_cert() && !certificates.is_present() {
                debug!(%peer, "xDS TLS connection without a client certificate closed (verify_incoming)");
                return None;
            }
            Some(Stream::Tls(Box::new(stream)))
        }
        Err(error) => {
            debug!(%peer, ?error, "xDS TLS connection refused");
            None
        }
    }
}
