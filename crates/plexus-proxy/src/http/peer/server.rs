//! The server end: a peer sidecar's HTTP/2 connection to the inbound listener.

use std::future::{Future, poll_fn};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::header::{CONTENT_LENGTH, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{
    Ended, SERVER_SEND_BUFFER, SERVER_WINDOW, StreamBody, TunnelIo, content_length, keep_alive,
    pipe,
};
use crate::http::{
    Body, MAX_CONCURRENT_STREAMS, MAX_HEADER_BYTES, MAX_PENDING_ACCEPT_RESET_STREAMS,
};
use plexus_runtime::ErrorChain;
use plexus_runtime::lock::lock;

/// A peer that sends no HTTP/2 connection preface within this long (its TLS handshake done) is
/// closed: it would otherwise hold a connection and a task for good. As long as the TLS
/// handshake may take.
pub(super) const HANDSHAKE_TIMEOUT: Duration = crate::tls::HANDSHAKE_TIMEOUT;

/// Serves a peer's HTTP/2 connection on `io`: each stream's request through `respond`, in a task
/// of its own, until the connection ends; when `stop` fires, GOAWAY, and the streams in flight
/// finish. A keep-alive ping the peer leaves unanswered ends the connection, and so does no
/// connection preface within [`HANDSHAKE_TIMEOUT`]; `stop` before the preface ends it at once.
pub(crate) async fn serve<I, S, F>(io: I, respond: S, stop: &CancellationToken) -> Result<(), Ended>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Fn(Request<Body>) -> F + Clone + Send + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let handshake = h2::server::Builder::new()
        .initial_window_size(SERVER_WINDOW)
        .initial_connection_window_size(SERVER_WINDOW)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_send_buffer_size(SERVER_SEND_BUFFER)
        .enable_connect_protocol()
        .handshake::<_, Bytes>(io);
    let mut connection = tokio::select! {
        handshaken = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake) => match handshaken {
            Ok(connection) => connection.map_err(Ended::Error)?,
            Err(_) => return Err(Ended::HandshakeTimeout),
        },
        () = stop.cancelled() => return Ok(()),
    };
    let ping_pong = connection.ping_pong();
    let pinging = async move {
        match ping_pong {
            Some(ping_pong) => keep_alive(ping_pong).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(pinging);
    let mut stopping = false;
    loop {
        tokio::select! {
            accepted = connection.accept() => match accepted {
                Some(Ok((request, stream))) => {
                    tokio::spawn(answer(request, stream, respond.clone()));
                }
                Some(Err(error)) => return Err(Ended::Error(error)),
                None => return Ok(()),
            },
            () = stop.cancelled(), if !stopping => {
                stopping = true;
                connection.graceful_shutdown();
            }
            ended = &mut pinging => return Err(ended),
        }
    }
}

/// One stream: its request through `respond`, then the response (and, for an accepted
/// `CONNECT`, the open stream to the tunnel layer). A peer that resets the stream first drops
/// the request's work.
async fn answer<S, F>(request: Request<RecvStream>, mut stream: SendResponse<Bytes>, respond: S)
where
    S: Fn(Request<Body>) -> F,
    F: Future<Output = Response<Body>>,
{
    let (mut parts, recv) = request.into_parts();
    let (body, tunnel) = if parts.method == Method::CONNECT {
        let (opened, opening) = oneshot::channel();
        parts
            .extensions
            .insert(Accepted(Arc::new(Mutex::new(Some(opening)))));
        (crate::http::empty(), Some((recv, opened)))
    } else {
        let length = content_length(&parts.headers);
        (StreamBody::new(recv, length).boxed(), None)
    };
    // Boxed: the stack's future is large, and this task's future is moved as it is spawned.
    let responding = Box::pin(respond(Request::from_parts(parts, body)));
    let response = tokio::select! {
        biased;
        response = responding => response,
        reset = poll_fn(|cx| stream.poll_reset(cx)) => {
            debug!(reason = ?reset.ok(), "the peer reset a stream before its response");
            return;
        }
    };
    // The stack's responses carry no connection-specific header (the app's are removed where
    // they come in), which `send_response` would refuse.
    let (mut parts, body) = response.into_parts();
    let tunnel = tunnel.filter(|_| parts.status.is_success());
    let end = tunnel.is_none() && body.is_end_stream();
    if !end
        && tunnel.is_none()
        && let Some(length) = body.size_hint().exact()
        && !parts.headers.contains_key(CONTENT_LENGTH)
    {
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
    let send = match stream.send_response(Response::from_parts(parts, ()), end) {
        Ok(send) => send,
        Err(error) => {
            debug!(error = %ErrorChain(&error), "response not sent");
            return;
        }
    };
    match tunnel {
        Some((recv, opened)) => {
            let _ = opened.send(TunnelIo::new(send, recv));
        }
        None if !end => pipe(body, send).await,
        None => {}
    }
}

/// A peer's `CONNECT` stream, open both ways once the response (2xx) is sent (request
/// extension; taken once).
#[derive(Clone)]
pub(crate) struct Accepted(Arc<Mutex<Option<oneshot::Receiver<TunnelIo>>>>);

impl Accepted {
    /// The stream, once answered; `None` once taken. The receiver fails when the answer was not
    /// a 2xx (or could not be sent).
    pub(crate) fn take(&self) -> Option<oneshot::Receiver<TunnelIo>> {
        lock(&self.0).take()
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
