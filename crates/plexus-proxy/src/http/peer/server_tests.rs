//! The HTTP/2 server against the `h2` crate's client, over an in-memory pipe.

use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::Reason;
use h2::client::SendRequest;
use http::header::HeaderValue;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::super::tests::read_all;
use super::*;

/// A client connection to [`serve`] with `respond`; the server's task and its stop token.
async fn connected<S, F>(
    respond: S,
) -> (
    SendRequest<Bytes>,
    JoinHandle<Result<(), Ended>>,
    CancellationToken,
)
where
    S: Fn(Request<Body>) -> F + Clone + Send + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let (client, server) = tokio::io::duplex(256 * 1024);
    let stop = CancellationToken::new();
    let serving = {
        let stop = stop.clone();
        tokio::spawn(async move { serve(server, respond, &stop).await })
    };
    let (send, connection) = h2::client::handshake(client).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    (send, serving, stop)
}

fn request(method: Method, uri: &str) -> Request<()> {
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri.parse().unwrap();
    request
}

#[tokio::test]
async fn a_request_and_its_response_cross_whole_with_trailers_and_a_length() {
    let (send, _serving, _stop) = connected(|request: Request<Body>| async move {
        let collected = request.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        let data = collected.to_bytes();
        let mut response = Response::new(crate::http::full(data.to_ascii_uppercase()));
        response
            .headers_mut()
            .insert("x-sum", trailers["x-sum"].clone());
        response
    })
    .await;
    let mut send = send.ready().await.unwrap();
    let (response, mut body) = send
        .send_request(request(Method::POST, "http://web/echo"), false)
        .unwrap();
    body.send_data(Bytes::from_static(b"hello "), false)
        .unwrap();
    body.send_data(Bytes::from_static(b"world"), false).unwrap();
    let mut trailers = HeaderMap::new();
    trailers.insert("x-sum", HeaderValue::from_static("11"));
    body.send_trailers(trailers).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-sum"], "11");
    assert_eq!(response.headers()["content-length"], "11");
    let (data, _) = read_all(response.into_body()).await;
    assert_eq!(data, b"HELLO WORLD");
}

#[tokio::test]
async fn a_request_larger_than_the_window_is_read_whole() {
    const SIZE: usize = 3 * SERVER_WINDOW as usize;
    let (send, _serving, _stop) = connected(|request: Request<Body>| async move {
        assert_eq!(request.body().size_hint().exact(), Some(SIZE as u64));
        let data = request.into_body().collect().await.unwrap().to_bytes();
        assert!(data.iter().all(|&b| b == 9));
        Response::new(crate::http::full(data.len().to_string()))
    })
    .await;
    let mut send = send.ready().await.unwrap();
    let mut post = request(Method::POST, "http://web/big");
    post.headers_mut()
        .insert("content-length", HeaderValue::from(SIZE));
    let (response, mut body) = send.send_request(post, false).unwrap();
    let mut left = SIZE;
    while left > 0 {
        body.reserve_capacity(left.min(64 * 1024));
        let capacity = poll_fn(|cx| body.poll_capacity(cx)).await.unwrap().unwrap();
        let n = left.min(capacity);
        left -= n;
        body.send_data(Bytes::from(vec![9u8; n]), left == 0)
            .unwrap();
    }
    // Without the window given back as the body is read, the client stalls after 1 MiB.
    let response = tokio::time::timeout(Duration::from_secs(30), response)
        .await
        .expect("answered within the deadline")
        .unwrap();
    let (data, _) = read_all(response.into_body()).await;
    assert_eq!(data, SIZE.to_string().as_bytes());
}

#[tokio::test]
async fn a_stream_the_peer_resets_drops_its_request_work() {
    struct Dropped(Arc<Notify>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.notify_one();
        }
    }
    let dropped = Arc::new(Notify::new());
    let (started_tx, mut started) = mpsc::channel(1);
    let signal = Arc::clone(&dropped);
    let (send, _serving, _stop) = connected(move |_request: Request<Body>| {
        let guard = Dropped(Arc::clone(&signal));
        let started_tx = started_tx.clone();
        async move {
            let _guard = guard;
            started_tx.send(()).await.unwrap();
            std::future::pending::<Response<Body>>().await
        }
    })
    .await;
    let mut send = send.ready().await.unwrap();
    let (response, mut body) = send
        .send_request(request(Method::GET, "http://web/slow"), false)
        .unwrap();
    started.recv().await.unwrap();
    body.send_reset(Reason::CANCEL);
    drop(response);
    tokio::time::timeout(Duration::from_secs(30), dropped.notified())
        .await
        .expect("the request's work dropped after the reset");
}

#[tokio::test]
async fn stopping_sends_goaway_and_lets_the_stream_in_flight_finish() {
    let (release_tx, release) = tokio::sync::watch::channel(false);
    let (started_tx, mut started) = mpsc::channel(1);
    let (send, serving, stop) = connected(move |_request: Request<Body>| {
        let mut release = release.clone();
        let started_tx = started_tx.clone();
        async move {
            started_tx.send(()).await.unwrap();
            release.wait_for(|go| *go).await.unwrap();
            Response::new(crate::http::full("finished"))
        }
    })
    .await;
    let mut ready = send.clone().ready().await.unwrap();
    let (response, _body) = ready
        .send_request(request(Method::GET, "http://web/"), true)
        .unwrap();
    started.recv().await.unwrap();
    stop.cancel();
    // The GOAWAY reaches the client: it refuses new streams, and the one in flight goes on.
    let refused = async {
        loop {
            match send.clone().ready().await {
                Err(_) => return,
                Ok(mut send) => {
                    match send.send_request(request(Method::GET, "http://web/"), true) {
                        Err(_) => return,
                        Ok((response, _)) => {
                            if response.await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), refused)
        .await
        .expect("new streams refused after GOAWAY");
    release_tx.send(true).unwrap();
    let (data, _) = read_all(response.await.unwrap().into_body()).await;
    assert_eq!(data, b"finished");
    assert!(
        serving.await.unwrap().is_ok(),
        "the connection closed cleanly"
    );
}

#[tokio::test]
async fn an_accepted_connect_hands_its_stream_to_the_tunnel_once_answered() {
    let (opened_tx, mut opened) = mpsc::channel(1);
    let (send, _serving, _stop) = connected(move |request: Request<Body>| {
        let opened_tx = opened_tx.clone();
        async move {
            assert_eq!(request.method(), Method::CONNECT);
            let accepted = request.extensions().get::<Accepted>().unwrap();
            let stream = accepted.take().unwrap();
            assert!(accepted.take().is_none(), "taken once");
            opened_tx.send(stream).await.unwrap();
            Response::new(crate::http::empty())
        }
    })
    .await;
    let mut send = send.ready().await.unwrap();
    let (response, mut up) = send
        .send_request(request(Method::CONNECT, "db:5432"), false)
        .unwrap();
    let mut io = opened.recv().await.unwrap().await.unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut down = response.into_body();
    up.send_data(Bytes::from_static(b"ping"), false).unwrap();
    let mut got = [0u8; 4];
    io.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping");
    io.write_all(b"pong").await.unwrap();
    let chunk = down.data().await.unwrap().unwrap();
    assert_eq!(&chunk[..], b"pong");
    io.shutdown().await.unwrap();
    // The end arrives as an empty DATA frame that ends the stream.
    let (rest, _) = read_all(down).await;
    assert!(rest.is_empty(), "the tunnel's end ends the stream");
}

#[tokio::test]
async fn a_refused_connect_opens_no_stream() {
    let (opened_tx, mut opened) = mpsc::channel(1);
    let (send, _serving, _stop) = connected(move |request: Request<Body>| {
        let opened_tx = opened_tx.clone();
        async move {
            let stream = request.extensions().get::<Accepted>().unwrap().take();
            opened_tx.send(stream.unwrap()).await.unwrap();
            let mut response = Response::new(crate::http::full("no"));
            *response.status_mut() = StatusCode::FORBIDDEN;
            response
        }
    })
    .await;
    let mut send = send.ready().await.unwrap();
    let (response, _up) = send
        .send_request(request(Method::CONNECT, "db:5432"), false)
        .unwrap();
    let stream = opened.recv().await.unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(stream.await.is_err(), "no tunnel after a refusal");
    let (data, _) = read_all(response.into_body()).await;
    assert_eq!(data, b"no");
}

/// A responder for connections that never get as far as a request.
async fn unreachable_respond(_: Request<Body>) -> Response<Body> {
    unreachable!("no request on a connection without a preface")
}

#[tokio::test(start_paused = true)]
async fn a_peer_without_a_preface_is_closed_after_the_handshake_timeout() {
    // Connected (TLS done, in the sidecar), then silent: no HTTP/2 preface.
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let stop = CancellationToken::new();
    let started = tokio::time::Instant::now();
    let serving = tokio::spawn(async move { serve(server, unreachable_respond, &stop).await });
    // Bounded, so that a server waiting for good fails the test instead of hanging it.
    let ended = tokio::time::timeout(HANDSHAKE_TIMEOUT * 2, serving)
        .await
        .expect("the connection is still open after twice the handshake timeout")
        .unwrap();
    assert!(matches!(ended, Err(Ended::HandshakeTimeout)), "{ended:?}");
    assert_eq!(started.elapsed(), HANDSHAKE_TIMEOUT);
    // The server's end is dropped: the peer reads the server's SETTINGS, then the close.
    let mut sent = Vec::new();
    client.read_to_end(&mut sent).await.unwrap();
    assert!(!sent.is_empty(), "the server spoke first (SETTINGS)");
}

#[tokio::test(start_paused = true)]
async fn stop_before_the_preface_ends_the_connection_at_once() {
    let (_client, server) = tokio::io::duplex(64 * 1024);
    let stop = CancellationToken::new();
    let serving = {
        let stop = stop.clone();
        tokio::spawn(async move { serve(server, unreachable_respond, &stop).await })
    };
    let started = tokio::time::Instant::now();
    stop.cancel();
    let ended = tokio::time::timeout(HANDSHAKE_TIMEOUT * 2, serving)
        .await
        .expect("the connection is still open after twice the handshake timeout")
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    assert!(started.elapsed() < HANDSHAKE_TIMEOUT);
}
