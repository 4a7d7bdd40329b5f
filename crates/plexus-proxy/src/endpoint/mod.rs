//! Endpoint: dial the chosen endpoint (bounded by a connect timeout, moving on to the next one on
//! failure) and copy bytes both ways until both sides are done, counting them as they flow.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

use plexus_runtime::ErrorChain;

pub(crate) mod copy;

/// Why one endpoint could not be dialed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    /// The endpoint did not accept within the connect timeout.
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout {
        /// Endpoint address.
        addr: SocketAddr,
        /// The timeout.
        timeout: Duration,
    },
    /// The connect failed (refused, unreachable, …).
    #[error("cannot connect to {addr}")]
    Connect {
        /// Endpoint address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Why a connection could not be forwarded anywhere.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The control plane knows no healthy endpoint (or has not answered yet).
    #[error("no endpoints")]
    NoEndpoints,
    /// Every endpoint was tried and none accepted; the last failure is the source.
    #[error("none of {attempts} endpoint(s) accepted the connection")]
    Unreachable {
        /// How many endpoints were tried.
        attempts: usize,
        /// The last failure.
        #[source]
        last: DialError,
    },
}

/// Dials `addr`, giving up after `timeout`.
pub(crate) async fn dial(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, DialError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_elapsed) => Err(DialError::Timeout { addr, timeout }),
        Ok(Err(source)) => Err(DialError::Connect { addr, source }),
        Ok(Ok(stream)) => {
            // Latency matters more than packet count for a proxy; failure here is harmless.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
    }
}

/// Dials `candidates` in order and returns the first connection that succeeds; `outcome` hears
/// of every attempt (endpoint, connected).
pub(crate) async fn dial_first<'a>(
    candidates: impl IntoIterator<Item = &'a SocketAddr>,
    timeout: Duration,
    mut outcome: impl FnMut(&SocketAddr, bool),
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let mut attempts = 0;
    let mut last = None;
    for addr in candidates {
        attempts += 1;
        match dial(*addr, timeout).await {
            Ok(stream) => {
                outcome(addr, true);
                return Ok((stream, *addr));
            }
            Err(error) => {
                outcome(addr, false);
                debug!(error = %ErrorChain(&error), endpoint = %addr, "endpoint connect failed; trying the next");
                last = Some(error);
            }
        }
    }
    match last {
        None => Err(ConnectError::NoEndpoints),
        Some(last) => Err(ConnectError::Unreachable { attempts, last }),
    }
}

/// Byte counters of one connection, from the downstream peer's point of view.
#[derive(Debug, Clone, Default)]
pub(crate) struct ByteCounters {
    /// Bytes written to the downstream peer.
    pub sent: Counter,
    /// Bytes read from the downstream peer.
    pub received: Counter,
}

/// Copies bytes between `downstream` and `upstream` until both directions have ended (half-closes
/// are passed on), holding copy buffers only while bytes wait ([`copy`]). Returns `(received
/// from downstream, sent to downstream)`.
pub(crate) async fn splice<D, U>(
    downstream: D,
    mut upstream: U,
    bytes: ByteCounters,
) -> io::Result<(u64, u64)>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut downstream = Counted {
        inner: downstream,
        bytes,
    };
    copy::copy_bidirectional(&mut downstream, &mut upstream).await
}

/// A stream that adds what it reads and writes to counters as it goes, so metrics of long-lived
/// connections move while they are open.
struct Counted<S> {
    inner: S,
    bytes: ByteCounters,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let read = buf.filled().len().saturating_sub(before);
        self.bytes.received.inc_by(read as u64);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.bytes.sent.inc_by(written as u64);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A refused address: bound, then closed.
    async fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    #[tokio::test]
    async fn dial_first_skips_refused_endpoints() {
        let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        let dead = closed_port().await;
        let timeout = Duration::from_secs(1);
        let mut seen = Vec::new();
        let (_, chosen) = dial_first(&[dead, live_addr], timeout, |a, ok| seen.push((*a, ok)))
            .await
            .unwrap();
        assert_eq!(chosen, live_addr);
        assert_eq!(seen, [(dead, false), (live_addr, true)]);
        let err = dial_first(&[dead, dead], timeout, |_, _| {})
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Unreachable { attempts: 2, .. }));
        assert!(ErrorChain(&err).to_string().contains(&dead.to_string()));
        let err = dial_first(&[], timeout, |_, _| {}).await.unwrap_err();
        assert!(matches!(err, ConnectError::NoEndpoints));
    }

    #[tokio::test]
    async fn splice_copies_both_ways_and_counts_bytes() {
        // upstream: replies "pong:" + whatever it got, then closes.
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = upstream.accept().await.unwrap();
            let mut got = Vec::new();
            socket.read_to_end(&mut got).await.unwrap();
            socket.write_all(b"pong:").await.unwrap();
            socket.write_all(&got).await.unwrap();
        });
        // the proxy's listener
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        let bytes = ByteCounters::default();
        let proxy = tokio::spawn({
            let bytes = bytes.clone();
            async move {
                let (downstream, _) = front.accept().await.unwrap();
                let upstream = dial(upstream_addr, Duration::from_secs(1)).await.unwrap();
                splice(downstream, upstream, bytes).await.unwrap()
            }
        });
        let mut client = TcpStream::connect(front_addr).await.unwrap();
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap(); // half-close reaches the upstream
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"pong:ping");
        assert_eq!(proxy.await.unwrap(), (4, 9));
        assert_eq!(bytes.received.get(), 4);
        assert_eq!(bytes.sent.get(), 9);
    }
}
