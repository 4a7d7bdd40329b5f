//! The client end: requests from the outbound stack to a peer sidecar's inbound listener.

use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use bytes::Bytes;
use h2::SendStream;
use h2::client::SendRequest;
use http::header::{CONTENT_LENGTH, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{
    CLIENT_CONNECTION_WINDOW, CLIENT_SEND_BUFFER, CLIENT_STREAM_WINDOW, Ended, StreamBody, Tunnel,
    content_length, keep_alive, pipe,
};
use crate::http::{Body, MAX_HEADER_BYTES};
use plexus_runtime::shutdown::or_cancelled;

/// Sends requests on one HTTP/2 connection. Clones share it.
#[derive(Clone)]
pub(crate) struct Sender {
    send: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

/// Opens an HTTP/2 connection on `io`: the sender, and the connection's future, which must be
/// run (spawned) for requests to make progress; it ends when the connection does, or when a
/// keep-alive ping goes unanswered.
pub(crate) async fn handshake<I>(
    io: I,
) -> Result<(Sender, impl Future<Output = Result<(), Ended>> + Send), h2::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, mut connection) = h2::client::Builder::new()
        .initial_window_size(CLIENT_STREAM_WINDOW)
        .initial_connection_window_size(CLIENT_CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_send_buffer_size(CLIENT_SEND_BUFFER)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await?;
    let closed = Arc::new(AtomicBool::new(false));
    let ping_pong = connection.ping_pong();
    let flag = Arc::clone(&closed);
    let run = async move {
        let ended = match ping_pong {
            Some(ping_pong) => tokio::select! {
                result = &mut connection => result.map_err(Ended::Error),
                ended = keep_alive(ping_pong) => Err(ended),
            },
            None => connection.await.map_err(Ended::Error),
        };
        flag.store(true, Ordering::Release);
        ended
    };
    Ok((Sender { send, closed }, run))
}

impl Sender {
    /// True once the connection has ended, or a request found it going away (GOAWAY) or broken.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends `request` and awaits its response head. A request body that is not all there at
    /// once is piped by a task in `tasks`, cut when `kill` fires.
    pub(crate) async fn send(
        &self,
        request: Request<Body>,
        tasks: &TaskTracker,
        kill: &CancellationToken,
    ) -> Result<Response<Body>, h2::Error> {
        let mut send = self.send.clone().ready().await.inspect_err(|_| {
            // GOAWAY, or the connection is gone: the pool opens a new one next time.
            self.closed.store(true, Ordering::Release);
        })?;
        exchange(&mut send, request, tasks, kill)
            .await
            .inspect_err(|error| {
                if error.is_go_away() || error.is_io() {
                    self.closed.store(true, Ordering::Release);
                }
            })
    }
}

/// Sends one request on a ready sender and awaits the response head.
async fn exchange(
    send: &mut SendRequest<Bytes>,
    request: Request<Body>,
    tasks: &TaskTracker,
    kill: &CancellationToken,
) -> Result<Response<Body>, h2::Error> {
    let (mut parts, body) = request.into_parts();
    let connect = parts.method == Method::CONNECT;
    let end = !connect && body.is_end_stream();
    if !connect
        && !end
        && let Some(length) = body.size_hint().exact()
        && !parts.headers.contains_key(CONTENT_LENGTH)
    {
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
    let (response, stream) = send.send_request(Request::from_parts(parts, ()), end)?;
    let tunnel = if connect {
        Some(stream)
    } else {
        if !end {
            pipe_or_spawn(body, stream, tasks, kill).await;
        }
        None
    };
    let (mut parts, recv) = response.await?.into_parts();
    let length = content_length(&parts.headers);
    match tunnel {
        Some(send) if parts.status.is_success() => {
            parts.extensions.insert(Tunnel::new(send, recv));
            Ok(Response::from_parts(parts, crate::http::empty()))
        }
        _ => Ok(Response::from_parts(
            parts,
            StreamBody::new(recv, length).boxed(),
        )),
    }
}

/// Pipes `body` into `stream` as far as it goes now; a task in `tasks` does the rest.
async fn pipe_or_spawn(
    body: Body,
    stream: SendStream<Bytes>,
    tasks: &TaskTracker,
    kill: &CancellationToken,
) {
    let mut piping = Box::pin(pipe(body, stream));
    let done = poll_fn(|cx| Poll::Ready(piping.as_mut().poll(cx).is_ready())).await;
    if !done {
        let kill = kill.clone();
        tasks.spawn(async move { or_cancelled(piping, &kill).await });
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
