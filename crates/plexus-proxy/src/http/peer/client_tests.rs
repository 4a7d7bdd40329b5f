//! The HTTP/2 client against the `h2` crate's server, over an in-memory pipe.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::header::HeaderValue;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::super::tests::read_all;
use super::super::{CLIENT_STREAM_WINDOW, PING_TIMEOUT};
use super::*;
use crate::http::{BodyError, KEEP_ALIVE_INTERVAL};

/// A client connection to `serve`, which gets each request and its responder.
async fn connected<F, Fut>(serve: F) -> Sender
where
    F: Fn(Request<RecvStream>, SendResponse<Bytes>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (client, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let mut connection = h2::server::handshake(server).await.unwrap();
        while let Some(Ok((request, respond))) = connection.accept().await {
            tokio::spawn(serve(request, respond));
        }
    });
    let (sender, run) = handshake(client).await.unwrap();
    tokio::spawn(run);
    sender
}

fn get(path: &str) -> Request<Body> {
    let mut request = Request::new(crate::http::empty());
    *request.uri_mut() = format!("http://web{path}").parse().unwrap();
    request
}

/// A body fed through a channel: the test decides when each frame is there.
struct Fed(mpsc::Receiver<Frame<Bytes>>);

impl hyper::body::Body for Fed {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.0.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

fn tasks() -> (TaskTracker, CancellationToken) {
    (TaskTracker::new(), CancellationToken::new())
}

#[tokio::test]
async fn a_response_larger_than_the_window_is_read_whole_with_its_trailers() {
    const SIZE: usize = 3 * CLIENT_STREAM_WINDOW as usize;
    let sender = connected(|request, mut respond| async move {
        assert_eq!(request.uri().path(), "/big");
        let response = Response::builder()
            .header("content-length", SIZE.to_string())
            .body(())
            .unwrap();
        let mut stream = respond.send_response(response, false).unwrap();
        let mut left = SIZE;
        while left > 0 {
            let n = left.min(64 * 1024);
            stream.reserve_capacity(n);
            let capacity = poll_fn(|cx| stream.poll_capacity(cx))
                .await
                .unwrap()
                .unwrap();
            let n = n.min(capacity);
            stream.send_data(Bytes::from(vec![7u8; n]), false).unwrap();
            left -= n;
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        stream.send_trailers(trailers).unwrap();
    })
    .await;
    let (tasks, kill) = tasks();
    let response = sender.send(get("/big"), &tasks, &kill).await.unwrap();
    assert_eq!(response.body().size_hint().exact(), Some(SIZE as u64));
    // Without the window given back as the body is read, the peer stalls after the first 2 MiB.
    let collected = tokio::time::timeout(Duration::from_secs(30), response.into_body().collect())
        .await
        .expect("the whole body within the deadline")
        .unwrap();
    let trailers = collected.trailers().cloned().unwrap();
    assert_eq!(trailers["grpc-status"], "0");
    let body = collected.to_bytes();
    assert_eq!(body.len(), SIZE);
    assert!(body.iter().all(|&b| b == 7));
}

#[tokio::test]
async fn a_body_that_arrives_later_is_piped_by_a_task_with_its_trailers() {
    const SIZE: usize = 200 * 1024; // over the peer's default 64 KiB window
    let (seen_tx, mut seen) = mpsc::channel(1);
    let sender = connected(move |request, mut respond| {
        let seen_tx = seen_tx.clone();
        async move {
            let length = request.headers().get("content-length").cloned();
            let (data, trailers) = read_all(request.into_body()).await;
            seen_tx.send((data, trailers, length)).await.unwrap();
            let response = Response::new(());
            respond.send_response(response, true).unwrap();
        }
    })
    .await;
    let (feed, fed) = mpsc::channel(4);
    let mut request = Request::new(Fed(fed).boxed());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = "http://web/upload".parse().unwrap();
    let (tasks, kill) = tasks();
    let sending = {
        let sender = sender.clone();
        let (tasks, kill) = (tasks.clone(), kill.clone());
        tokio::spawn(async move { sender.send(request, &tasks, &kill).await })
    };
    feed.send(Frame::data(Bytes::from(vec![1u8; SIZE])))
        .await
        .unwrap();
    feed.send(Frame::data(Bytes::from_static(b"end")))
        .await
        .unwrap();
    let mut trailers = HeaderMap::new();
    trailers.insert("x-sum", HeaderValue::from_static("42"));
    feed.send(Frame::trailers(trailers)).await.unwrap();
    let (data, trailers, length) = seen.recv().await.unwrap();
    assert_eq!(data.len(), SIZE + 3);
    assert!(data.ends_with(b"end"));
    assert_eq!(trailers.unwrap()["x-sum"], "42");
    assert_eq!(length, None, "a streamed body has no length to announce");
    let response = sending.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    tasks.close();
    tasks.wait().await;
}

#[tokio::test]
async fn a_body_there_at_once_is_sent_in_place_and_announces_its_length() {
    let sender = connected(|request, mut respond| async move {
        let length = request.headers()["content-length"].clone();
        let (data, _) = read_all(request.into_body()).await;
        let response = Response::builder()
            .header("x-length", length)
            .header("x-read", data.len().to_string())
            .body(())
            .unwrap();
        respond.send_response(response, true).unwrap();
    })
    .await;
    let mut request = Request::new(crate::http::full(vec![3u8; 10_000]));
    *request.method_mut() = Method::PUT;
    *request.uri_mut() = "http://web/put".parse().unwrap();
    let (tasks, kill) = tasks();
    let response = sender.send(request, &tasks, &kill).await.unwrap();
    assert_eq!(response.headers()["x-length"], "10000");
    assert_eq!(response.headers()["x-read"], "10000");
    assert!(response.body().is_end_stream());
    assert!(
        tasks.is_empty(),
        "a body within the window is sent in place"
    );
}

#[tokio::test]
async fn a_failing_request_body_resets_its_stream() {
    let (seen_tx, mut seen) = mpsc::channel(1);
    let sender = connected(move |request, _respond| {
        let seen_tx = seen_tx.clone();
        async move {
            let mut body = request.into_body();
            let mut outcome = Ok(());
            while let Some(chunk) = body.data().await {
                if let Err(error) = chunk {
                    outcome = Err(error.reason());
                    break;
                }
            }
            seen_tx.send(outcome).await.unwrap();
        }
    })
    .await;
    struct Failing;
    impl hyper::body::Body for Failing {
        type Data = Bytes;
        type Error = BodyError;
        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
            Poll::Ready(Some(Err(io::Error::other("the client went away").into())))
        }
    }
    let mut request = Request::new(Failing.boxed());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = "http://web/".parse().unwrap();
    let (tasks, kill) = tasks();
    let sending = {
        let sender = sender.clone();
        tokio::spawn(async move { sender.send(request, &tasks, &kill).await })
    };
    assert_eq!(
        seen.recv().await.unwrap(),
        Err(Some(Reason::INTERNAL_ERROR))
    );
    assert!(
        sending.await.unwrap().is_err(),
        "no response on a reset stream"
    );
    assert!(
        !sender.is_closed(),
        "one stream's reset leaves the connection open"
    );
}

#[tokio::test]
async fn an_accepted_connect_is_a_byte_stream_both_ways() {
    let sender = connected(|request, mut respond| async move {
        assert_eq!(request.method(), Method::CONNECT);
        let mut recv = request.into_body();
        let mut send = respond.send_response(Response::new(()), false).unwrap();
        // Echo, upper-cased, until the client ends its side; then end ours.
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.unwrap();
            recv.flow_control().release_capacity(chunk.len()).unwrap();
            send.send_data(Bytes::from(chunk.to_ascii_uppercase()), false)
                .unwrap();
        }
        send.send_data(Bytes::new(), true).unwrap();
    })
    .await;
    let mut request = Request::new(crate::http::empty());
    *request.method_mut() = Method::CONNECT;
    *request.uri_mut() = "db:5432".parse().unwrap();
    let (tasks, kill) = tasks();
    let response = sender.send(request, &tasks, &kill).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let tunnel = response.extensions().get::<Tunnel>().unwrap();
    let mut io = tunnel.take().unwrap();
    assert!(tunnel.take().is_none(), "taken once");
    io.write_all(b"hello").await.unwrap();
    let mut echoed = [0u8; 5];
    io.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"HELLO");
    io.shutdown().await.unwrap();
    let mut rest = Vec::new();
    io.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "the peer ended its side after ours");
}

#[tokio::test]
async fn a_refused_connect_is_an_ordinary_response() {
    let sender = connected(|_request, mut respond| async move {
        let response = Response::builder().status(403).body(()).unwrap();
        let mut stream = respond.send_response(response, false).unwrap();
        stream
            .send_data(Bytes::from_static(b"denied"), true)
            .unwrap();
    })
    .await;
    let mut request = Request::new(crate::http::empty());
    *request.method_mut() = Method::CONNECT;
    *request.uri_mut() = "db:5432".parse().unwrap();
    let (tasks, kill) = tasks();
    let response = sender.send(request, &tasks, &kill).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(response.extensions().get::<Tunnel>().is_none());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"denied");
}

#[tokio::test]
async fn a_peer_that_goes_away_closes_the_sender() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let serving = tokio::spawn(async move {
        let mut connection = h2::server::handshake(server).await.unwrap();
        let (_request, mut respond) = connection.accept().await.unwrap().unwrap();
        respond.send_response(Response::new(()), true).unwrap();
        // Serve until the response is out, then drop the connection (and the pipe).
        poll_fn(|cx| connection.poll_closed(cx)).await.ok();
    });
    let (sender, run) = handshake(client).await.unwrap();
    let ended = tokio::spawn(run);
    let (tasks, kill) = tasks();
    let response = sender.send(get("/"), &tasks, &kill).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    serving.abort();
    ended.await.unwrap().ok();
    assert!(sender.is_closed());
    assert!(sender.send(get("/"), &tasks, &kill).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_keep_alive_ping_ends_the_connection() {
    let (client, mut server) = tokio::io::duplex(1024 * 1024);
    let (sender, run) = handshake(client).await.unwrap();
    let ended = tokio::spawn(run);
    // The peer reads what it is sent and never answers: no SETTINGS, no PONG.
    let draining = tokio::spawn(async move {
        let mut sink = [0u8; 4096];
        while matches!(server.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    let started = tokio::time::Instant::now();
    let ended = ended.await.unwrap();
    assert!(matches!(ended, Err(Ended::PingTimeout)), "{ended:?}");
    assert!(started.elapsed() >= KEEP_ALIVE_INTERVAL + PING_TIMEOUT - Duration::from_millis(1));
    assert!(sender.is_closed());
    draining.abort();
}
