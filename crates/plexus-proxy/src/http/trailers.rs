//! The end of a response, as metrics and the access log need it: a gRPC status often comes in
//! the trailers after the body, so a response is recorded when its body ends (or is dropped),
//! not when its headers leave.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};

use super::metrics::GrpcLabel;
use super::{Body, BodyError};

/// Called once when a response is done, with its `grpc-status` (none when none was seen).
type OnEnd = Box<dyn FnOnce(GrpcLabel) + Send + Sync>;

/// The `grpc-status` header's name, parsed once.
pub(crate) const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The `grpc-status` in `headers`, when it is a plausible status code (one or two digits).
pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<u8> {
    headers
        .get(&GRPC_STATUS)
        .map(|value| value.as_bytes())
        .filter(|value| {
            !value.is_empty() && value.len() <= 2 && value.iter().all(u8::is_ascii_digit)
        })
        .map(|value| {
            value
                .iter()
                .fold(0, |code, digit| code * 10 + (digit - b'0'))
        })
}

/// Calls `on_end` now when the status is already known (trailers-only gRPC response, or not
/// gRPC at all), else when the response body ends, with the status from its trailers.
pub(crate) fn on_end(
    response: Response<Body>,
    on_end: impl FnOnce(GrpcLabel) + Send + Sync + 'static,
) -> Response<Body> {
    if let Some(status) = known_now(&response) {
        on_end(status);
        return response;
    }
    response.map(|inner| {
        Observed {
            inner,
            status: None,
            on_end: Some(Box::new(on_end)),
        }
        .boxed()
    })
}

/// The response's gRPC status label when it is known from the headers: a trailers-only gRPC
/// response, or not gRPC at all (no status). `None`: it comes in the trailers.
pub(crate) fn known_now(response: &Response<Body>) -> Option<GrpcLabel> {
    if let Some(status) = grpc_status(response.headers()) {
        return Some(GrpcLabel(Some(status)));
    }
    (!is_grpc_response(response)).then_some(GrpcLabel(None))
}

fn is_grpc_response<B>(response: &Response<B>) -> bool {
    response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"))
}

/// A response body that reports its trailers' `grpc-status` when it ends.
struct Observed {
    inner: Body,
    status: Option<u8>,
    on_end: Option<OnEnd>,
}

impl Observed {
    fn finish(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end(GrpcLabel(self.status.take()));
        }
    }
}

impl hyper::body::Body for Observed {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.status = grpc_status(trailers);
                    this.finish();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http::HeaderValue;

    use super::*;

    fn recorder() -> (Arc<Mutex<Vec<String>>>, OnEnd) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let push = Arc::clone(&seen);
        (
            seen,
            Box::new(move |status: GrpcLabel| {
                let text = status.0.map(|code| code.to_string()).unwrap_or_default();
                push.lock().unwrap().push(text)
            }),
        )
    }

    /// A gRPC response with `data` and, when given, trailers after it.
    fn grpc_response(data: &'static [u8], trailers: Option<HeaderMap>) -> Response<Body> {
        let body = http_body_util::Full::new(Bytes::from_static(data))
            .map_err(|never| match never {})
            .with_trailers(async move { trailers.map(Ok) })
            .boxed();
        let mut response = Response::new(body);
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        response
    }

    #[tokio::test]
    async fn the_status_in_trailers_after_the_body_is_reported_when_the_body_ends() {
        let (seen, record) = recorder();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("5"));
        let response = grpc_response(b"\0\0\0\0\x01x", Some(trailers));
        let response = on_end(response, record);
        assert!(seen.lock().unwrap().is_empty(), "not before the body ends");
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "5");
        assert_eq!(*seen.lock().unwrap(), ["5"]);
    }

    #[tokio::test]
    async fn known_statuses_are_reported_at_once_and_dropped_bodies_once() {
        let (seen, record) = recorder();
        let mut response = Response::new(super::super::empty());
        response
            .headers_mut()
            .insert("grpc-status", HeaderValue::from_static("14"));
        drop(on_end(response, record));
        let (plain, record) = recorder();
        drop(on_end(Response::new(super::super::empty()), record));
        let (dropped, record) = recorder();
        drop(on_end(grpc_response(b"", None), record));
        assert_eq!(*seen.lock().unwrap(), ["14"]);
        assert_eq!(*plain.lock().unwrap(), [""]);
        assert_eq!(*dropped.lock().unwrap(), [""]);
    }
}
