//! The xDS server's connections: plain gRPC from `--grpc-addr` and gRPC over TLS from
//! `--grpc-tls-addr` (Consul's `grpc` and `grpc_tls` ports), merged into one stream for the one
//! gRPC server, so both share the same proxies, watches and status.
//!
//! TLS uses the HTTPS API's [`TlsServer`] (same certificate, renewed in place; each new
//! connection takes the current one). Each handshake runs in its own task within
//! [`plexus_runtime::tls::HANDSHAKE_TIMEOUT`], so a slow client holds up no one. When the
//! listener requires client certificates (`verify_incoming`), a connection that presented none
//! is closed after the handshake.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use plexus_runtime::tls::TlsServer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, warn};

/// Accepted connections waiting for the gRPC server.
const QUEUE: usize = 64;

/// One accepted connection, plain or TLS.
#[derive(Debug)]
pub(crate) enum Conn {
    /// `--grpc-addr`.
    Plain(TcpStream),
    /// `--grpc-tls-addr`, after the handshake.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            Conn::Plain(tcp) => tcp.connect_info(),
            Conn::Tls(tls) => tls.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Conn::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Conn::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Conn::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Conn::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Accepts on the given listeners until `stop`, handing connections to the returned receiver.
pub(crate) fn accept_all(
    plain: Option<TcpListener>,
    tls: Option<(TcpListener, TlsServer)>,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> mpsc::Receiver<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    if let Some(listener) = plain {
        let (tx, stop) = (tx.clone(), stop.clone());
        tasks.spawn(async move {
            while let Some((tcp, _)) = accept(&listener, &stop).await {
                if tx.send(Ok(Conn::Plain(tcp))).await.is_err() {
                    return;
                }
            }
        });
    }
    if let Some((listener, server)) = tls {
        let handshakes = tasks.clone();
        tasks.spawn(async move {
            while let Some((tcp, peer)) = accept(&listener, &stop).await {
                let (tx, server, stop) = (tx.clone(), server.clone(), stop.clone());
                handshakes.spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        conn = handshake(tcp, peer, &server) => if let Some(conn) = conn {
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

async fn handshake(tcp: TcpStream, peer: SocketAddr, server: &TlsServer) -> Option<Conn> {
    match plexus_runtime::tls::accept(tcp, server.current()).await {
        Ok((stream, certificates)) => {
            if server.requires_client_cert() && !certificates.is_present() {
                debug!(%peer, "xDS TLS connection without a client certificate closed (verify_incoming)");
                return None;
            }
            Some(Conn::Tls(Box::new(stream)))
        }
        Err(error) => {
            debug!(%peer, ?error, "xDS TLS connection refused");
            None
        }
    }
}
