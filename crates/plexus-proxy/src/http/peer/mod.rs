//! HTTP/2 between sidecars (and gateways), on the `h2` crate: the pooled client connection of the
//! outbound stack ([`client`]) and the inbound listener's server ([`server`]).
//!
//! hyper's HTTP/2 client passes every request through a channel to the connection's task and
//! spawns a task per request to await the response and hand it back; its server wraps every
//! stream in a future of its own; both record every frame for their keep-alive. Here a request
//! is sent, and its response awaited, by the request's own task; the server runs each stream's
//! request and response in one task; a body is piped where it is sent (the client spawns a task
//! only for a body that is not all there yet); keep-alive is one ping from the connection's
//! task every [`KEEP_ALIVE_INTERVAL`].
//!
//! A `CONNECT` (plain, or extended with `:protocol`) keeps its stream open both ways once
//! answered 2xx: the client hands it to the tunnel layer as a [`Tunnel`] (response extension),
//! the server as an [`Accepted`] (request extension), and the tunnel layer splices it.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;

use super::{Body, BodyError, KEEP_ALIVE_INTERVAL};
use plexus_runtime::ErrorChain;
use plexus_runtime::lock::lock;

mod client;
mod server;

pub(crate) use client::{Sender, handshake};
pub(crate) use server::{Accepted, serve};

// Flow-control windows and send buffers: hyper's defaults, which the sidecars used before.
/// Bytes the inbound sidecar may send on the connection before the client reads them.
const CLIENT_CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
/// Bytes the inbound sidecar may send on one stream before the client reads them.
const CLIENT_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// Bytes the client buffers per stream for sending before the body is read further.
const CLIENT_SEND_BUFFER: usize = 1024 * 1024;
/// Bytes a client may send on the connection, and on one stream, before the server reads them.
const SERVER_WINDOW: u32 = 1024 * 1024;
/// Bytes the server buffers per stream for sending before the body is read further.
const SERVER_SEND_BUFFER: usize = 400 * 1024;
/// A keep-alive ping unanswered this long closes the connection.
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a connection ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The connection failed (I/O, a protocol error, a GOAWAY with an error).
    Error(h2::Error),
    /// The peer did not answer a keep-alive ping within [`PING_TIMEOUT`].
    PingTimeout,
    /// The peer sent no HTTP/2 connection preface within [`server::HANDSHAKE_TIMEOUT`].
    HandshakeTimeout,
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Error(error) => write!(f, "{}", ErrorChain(error)),
            Self::PingTimeout => write!(f, "no answer to a keep-alive ping in {PING_TIMEOUT:?}"),
            Self::HandshakeTimeout => write!(
                f,
                "no HTTP/2 connection preface in {:?}",
                server::HANDSHAKE_TIMEOUT
            ),
        }
    }
}

/// Pings the peer every [`KEEP_ALIVE_INTERVAL`]; returns when a ping goes unanswered. A ping that
/// cannot be sent (the connection is closing) ends the pinging, not the connection.
async fn keep_alive(mut ping_pong: h2::PingPong) -> Ended {
    let start = tokio::time::Instant::now() + KEEP_ALIVE_INTERVAL;
    let mut every = tokio::time::interval_at(start, KEEP_ALIVE_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match tokio::time::timeout(PING_TIMEOUT, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(error)) => {
                debug!(error = %ErrorChain(&error), "keep-alive ping not sent");
                return std::future::pending().await;
            }
            Err(_) => return Ended::PingTimeout,
        }
    }
}

/// The `content-length` of a request or response, when it has exactly one valid one.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    value.to_str().ok()?.parse().ok()
}

/// Sends `body` on `stream`: data within the peer's flow-control window, then trailers or the
/// end of the stream. A body that fails resets the stream; a peer that resets it stops the
/// reading.
async fn pipe(mut body: Body, mut stream: SendStream<Bytes>) {
    loop {
        let frame = tokio::select! {
            biased;
            reset = poll_fn(|cx| stream.poll_reset(cx)) => {
                debug!(reason = ?reset.ok(), "the peer reset the stream; its body is not read further");
                return;
            }
            frame = body.frame() => frame,
        };
        let frame = match frame {
            None => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(error)) => {
                debug!(error = %ErrorChain(&error), "body failed; resetting its stream");
                stream.send_reset(Reason::INTERNAL_ERROR);
                return;
            }
            Some(Ok(frame)) => frame,
        };
        match frame.into_data() {
            Ok(data) => {
                let last = body.is_end_stream();
                if let Err(error) = send_data(&mut stream, data, last).await {
                    debug!(error = %ErrorChain(&error), "body not sent");
                    return;
                }
                if last {
                    return;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = stream.send_trailers(trailers);
                    return;
                }
            }
        }
    }
}

/// Sends `data` as the peer's window allows, ending the stream after it when `last`.
async fn send_data(
    stream: &mut SendStream<Bytes>,
    mut data: Bytes,
    last: bool,
) -> Result<(), h2::Error> {
    if data.is_empty() {
        if last {
            stream.send_data(data, true)?;
        }
        return Ok(());
    }
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let capacity = match poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(capacity) => capacity?,
            None => return Err(h2::Error::from(Reason::STREAM_CLOSED)),
        };
        if capacity == 0 {
            continue;
        }
        let chunk = data.split_to(capacity.min(data.len()));
        stream.send_data(chunk, last && data.is_empty())?;
    }
    Ok(())
}

/// A body read from its stream (a response at the client, a request at the server), giving the
/// window back as it is read.
struct StreamBody {
    recv: RecvStream,
    data_done: bool,
    /// What `content-length` says is left.
    remaining: Option<u64>,
}

impl StreamBody {
    fn new(recv: RecvStream, length: Option<u64>) -> Self {
        Self {
            recv,
            data_done: false,
            remaining: length,
        }
    }
}

impl hyper::body::Body for StreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if let Some(remaining) = &mut self.remaining {
                        *remaining = remaining.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                // RST_STREAM with NO_ERROR: an early end, not a failure
                // (RFC 9113 §8.1).
                Some(Err(error)) if error.reason() == Some(Reason::NO_ERROR) => {
                    return Poll::Ready(None);
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error.into()))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(error.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.remaining
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// The open stream of an accepted `CONNECT` (response extension; taken once).
#[derive(Clone)]
pub(crate) struct Tunnel(Arc<Mutex<Option<TunnelIo>>>);

impl Tunnel {
    fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self(Arc::new(Mutex::new(Some(TunnelIo::new(send, recv)))))
    }

    /// The stream as a byte stream; `None` once taken.
    pub(crate) fn take(&self) -> Option<TunnelIo> {
        lock(&self.0).take()
    }
}

/// An HTTP/2 stream as a byte stream: DATA frames both ways; shutting down writes ends the
/// stream.
pub(crate) struct TunnelIo {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received and not yet read.
    read: Bytes,
}

impl TunnelIo {
    fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            read: Bytes::new(),
        }
    }
}

impl AsyncRead for TunnelIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.read.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.read = data;
                }
                Some(Err(error)) => {
                    return Poll::Ready(match error.reason() {
                        Some(Reason::NO_ERROR | Reason::CANCEL) => Ok(()),
                        _ => Err(stream_error(error)),
                    });
                }
            }
        }
        let n = self.read.len().min(buf.remaining());
        buf.put_slice(&self.read[..n]);
        self.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TunnelIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(buf.len());
        let capacity = loop {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(capacity)) => break capacity,
                Some(Err(error)) => return Poll::Ready(Err(stream_error(error))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        };
        let n = capacity.min(buf.len());
        self.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(stream_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(
            self.send
                .send_data(Bytes::new(), true)
                .map_err(stream_error),
        )
    }
}

fn stream_error(error: h2::Error) -> io::Error {
    if error.is_io() {
        error
            .into_io()
            .unwrap_or_else(|| io::ErrorKind::Other.into())
    } else {
        io::Error::other(error)
    }
}

#[cfg(test)]
mod tests {
    use h2::RecvStream;
    use http::HeaderMap;

    /// Reads what a peer sent on a stream to its end, giving the window back: data and trailers.
    pub(super) async fn read_all(mut body: RecvStream) -> (Vec<u8>, Option<HeaderMap>) {
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            body.flow_control().release_capacity(chunk.len()).unwrap();
            data.extend_from_slice(&chunk);
        }
        (data, body.trailers().await.unwrap())
    }
}
