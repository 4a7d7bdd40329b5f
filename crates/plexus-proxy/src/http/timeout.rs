//! Timeouts of a route.
//!
//! - `RequestTimeout`: the whole request up to the response headers, retries and their backoff
//!   included (504 `timeout`). The deadline is also handed down ([`Deadline`]): an attempt still
//!   awaiting its endpoint when it passes blames that endpoint (a 504 to outlier detection).
//! - `IdleTimeout`: the longest time without activity on a request. Before the response,
//!   waiting for its headers counts as inactivity (504 `timeout`); after, the response body is
//!   cut (the stream is reset / the HTTP/1 connection closed, so the app sees an incomplete
//!   response, never a silently truncated one) when no frame arrives from upstream for that
//!   long. A client reading slowly does not count: only a body that has nothing to give is idle.
//!
//! Time is tokio's clock, so paused-time tests drive both.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use super::stack::{Answer, AnswerFuture, HttpService};
use super::{Body, HttpError, Reason};

/// A route's timeouts (set by the route layer when it has one).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Timeouts {
    /// `RequestTimeout`.
    pub request: Option<Duration>,
    /// `IdleTimeout`.
    pub idle: Option<Duration>,
}

/// When the request's time is up (set by this layer, read by the endpoint attempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadline(pub Instant);

/// Adds [`Timeout`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TimeoutLayer;

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout { inner }
    }
}

/// Holds a request with [`Timeouts`] to them.
#[derive(Debug, Clone)]
pub(crate) struct Timeout<S> {
    inner: S,
}

impl<S: HttpService> Service<Request<Body>> for Timeout<S> {
    type Response = Response<Body>;
    type Error = HttpError;
    type Future = AnswerFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> AnswerFuture {
        let Some(timeouts) = request.extensions_mut().remove::<Timeouts>() else {
            return self.inner.call(request);
        };
        let deadline = timeouts.request.map(|timeout| Instant::now() + timeout);
        if let Some(deadline) = deadline {
            request.extensions_mut().insert(Deadline(deadline));
        }
        let work = headers_within(timeouts.idle, self.inner.call(request));
        Box::pin(async move {
            match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, work)
                    .await
                    .unwrap_or(Err(HttpError::new(Reason::Timeout))),
                None => work.await,
            }
        })
    }
}

/// Errors a body served to the app may end with.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body as served to the app: as it came, or cut when idle (which adds an error
/// hyper cannot make). An enum, not one more box per response.
pub(crate) enum ServedBody {
    /// No idle timeout.
    Plain(Body),
    /// Cut after the route's idle timeout without a frame.
    Idle(IdleBody),
}

impl HttpBody for ServedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Plain(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(BoxError::from))),
            Self::Idle(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Plain(body) => body.is_end_stream(),
            Self::Idle(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Plain(body) => body.size_hint(),
            Self::Idle(body) => body.size_hint(),
        }
    }
}

/// Marks a response whose body is cut after this long without a frame.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdleTimeout(pub Duration);

/// The error a cut body ends with.
#[derive(Debug, thiserror::Error)]
#[error("no response data from upstream for {0:?} (route idle timeout)")]
pub(crate) struct Idle(Duration);

/// `work` (an exchange up to the response headers), ended with `Timeout` after `idle`.
pub(crate) async fn headers_within<F>(idle: Option<Duration>, work: F) -> Answer
where
    F: Future<Output = Answer>,
{
    let Some(idle) = idle else {
        return work.await;
    };
    let mut response = tokio::time::timeout(idle, work)
        .await
        .unwrap_or(Err(HttpError::new(Reason::Timeout)))?;
    response.extensions_mut().insert(IdleTimeout(idle));
    Ok(response)
}

/// The response as served to the app: its body cut when idle if it was marked so.
pub(crate) fn served(response: Response<Body>) -> Response<ServedBody> {
    let idle = response.extensions().get::<IdleTimeout>().copied();
    response.map(|body| match idle {
        Some(IdleTimeout(idle)) => ServedBody::Idle(IdleBody::new(body, idle)),
        None => ServedBody::Plain(body),
    })
}

/// A body that fails with [`Idle`] when its inner body has had nothing for `idle`.
pub(crate) struct IdleBody {
    inner: Body,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
}

impl IdleBody {
    fn new(inner: Body, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl HttpBody for IdleBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = Instant::now() + this.idle;
                this.timer.as_mut().reset(next);
                Poll::Ready(frame.map(|frame| frame.map_err(BoxError::from)))
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    tracing::debug!(idle = ?this.idle, "response body idle; cutting it");
                    Poll::Ready(Some(Err(Box::new(Idle(this.idle)))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::http::BodyError;

    /// "first" at once, then "rest" after 10 s.
    struct Stalling {
        sent: u8,
        stall: Pin<Box<Sleep>>,
    }

    impl HttpBody for Stalling {
        type Data = Bytes;
        type Error = BodyError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
            match self.sent {
                0 => {
                    self.sent = 1;
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"first")))))
                }
                1 => match self.stall.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.sent = 2;
                        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"rest")))))
                    }
                    Poll::Pending => Poll::Pending,
                },
                _ => Poll::Ready(None),
            }
        }
    }

    fn stalling() -> Body {
        Stalling {
            sent: 0,
            stall: Box::pin(tokio::time::sleep(Duration::from_secs(10))),
        }
        .boxed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_cut_after_the_idle_time_and_a_lively_one_is_not() {
        let response = Response::new(stalling());
        let mut response = response;
        response
            .extensions_mut()
            .insert(IdleTimeout(Duration::from_secs(1)));
        let mut body = served(response).into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"first"));
        let cut = body.frame().await.unwrap();
        assert!(cut.unwrap_err().to_string().contains("idle timeout"));

        // Without the mark the same body waits for the rest.
        let mut body = served(Response::new(stalling())).into_body();
        let _ = body.frame().await.unwrap().unwrap();
        let rest = body.frame().await.unwrap().unwrap();
        assert_eq!(rest.into_data().unwrap(), Bytes::from_static(b"rest"));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_headers_counts_as_idle() {
        let slow = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(Response::new(super::super::empty()))
        };
        assert_eq!(
            headers_within(Some(Duration::from_secs(1)), slow)
                .await
                .unwrap_err()
                .reason(),
            Reason::Timeout
        );
        let quick = async { Ok(Response::new(super::super::empty())) };
        let response = headers_within(Some(Duration::from_secs(1)), quick)
            .await
            .unwrap();
        assert!(response.extensions().get::<IdleTimeout>().is_some());
    }
}
