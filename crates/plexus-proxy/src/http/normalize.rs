//! Normalize: the app's request made fit for HTTP/2 between sidecars — connection-specific
//! headers removed, a `traceparent` ensured, the host moved into an absolute URI
//! (`:authority`; the destination's name stands in for a missing or unusable one).

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header;
use http::uri::{self, Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use tower::{Layer, Service};

use super::stack::{AnswerFuture, HttpService, fail};
use super::{Body, HttpError, Reason};

/// The request in HTTP/2 form for `destination` (its name as an authority; `None`: not a
/// usable one). Nothing is formatted: the authority and path are the request's own, shared.
pub(crate) fn prepare(
    request: Request<Body>,
    destination: Option<&Authority>,
) -> Result<Request<Body>, HttpError> {
    let (mut parts, body) = request.into_parts();
    super::strip_hop_by_hop(&mut parts.headers);
    super::ensure_traceparent(&mut parts.headers);
    // HTTP/2 carries the host in :authority.
    let host = match parts.uri.authority() {
        Some(authority) => Some(authority.clone()),
        None => parts
            .headers
            .get(header::HOST)
            .and_then(|value| Authority::try_from(value.as_bytes()).ok()),
    };
    parts.headers.remove(header::HOST);
    let authority = host
        .or_else(|| destination.cloned())
        .ok_or(HttpError::new(Reason::BadRequest))?;
    let mut uri = uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(authority);
    uri.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    parts.uri = Uri::from_parts(uri).map_err(|_| HttpError::new(Reason::BadRequest))?;
    parts.version = Version::HTTP_2;
    Ok(Request::from_parts(parts, body))
}

/// Adds [`Normalize`].
#[derive(Debug, Clone)]
pub(crate) struct NormalizeLayer {
    destination: Arc<Option<Authority>>,
}

impl NormalizeLayer {
    /// Requests to `destination`.
    pub(crate) fn new(destination: &str) -> Self {
        Self {
            destination: Arc::new(Authority::try_from(destination).ok()),
        }
    }
}

impl<S> Layer<S> for NormalizeLayer {
    type Service = Normalize<S>;
    fn layer(&self, inner: S) -> Normalize<S> {
        Normalize {
            inner,
            destination: Arc::clone(&self.destination),
        }
    }
}

/// Puts each request in HTTP/2 form ([`prepare`]); 400 when it cannot be.
#[derive(Debug, Clone)]
pub(crate) struct Normalize<S> {
    inner: S,
    destination: Arc<Option<Authority>>,
}

impl<S: HttpService> Service<Request<Body>> for Normalize<S> {
    type Response = Response<Body>;
    type Error = HttpError;
    type Future = AnswerFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> AnswerFuture {
        match prepare(request, self.destination.as_ref().as_ref()) {
            Ok(request) => self.inner.call(request),
            Err(error) => fail(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> Option<&'static Authority> {
        static WEB: std::sync::OnceLock<Authority> = std::sync::OnceLock::new();
        Some(WEB.get_or_init(|| Authority::from_static("web")))
    }

    fn request(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
        let mut builder = Request::builder().uri(uri).version(Version::HTTP_11);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(super::super::empty()).unwrap()
    }

    #[test]
    fn the_host_moves_into_the_uri_and_hop_headers_go() {
        let prepared = prepare(
            request(
                "/a?b=1",
                &[
                    ("host", "web.local:8080"),
                    ("connection", "close"),
                    ("x-a", "1"),
                ],
            ),
            web(),
        )
        .unwrap();
        assert_eq!(prepared.uri(), "http://web.local:8080/a?b=1");
        assert_eq!(prepared.version(), Version::HTTP_2);
        assert!(prepared.headers().get("host").is_none());
        assert!(prepared.headers().get("connection").is_none());
        assert_eq!(prepared.headers()["x-a"], "1");
        assert!(prepared.headers().contains_key(super::super::TRACEPARENT));
    }

    #[test]
    fn the_destination_stands_in_for_a_missing_or_unusable_host() {
        let prepared = prepare(request("/x", &[]), web()).unwrap();
        assert_eq!(prepared.uri(), "http://web/x");
        let prepared = prepare(request("/x", &[("host", "bad host")]), web()).unwrap();
        assert_eq!(prepared.uri(), "http://web/x");
        let absolute = prepare(request("http://other:1/y", &[]), web()).unwrap();
        assert_eq!(absolute.uri(), "http://other:1/y");
        let nowhere = prepare(request("/x", &[]), None).unwrap_err();
        assert_eq!(nowhere.reason(), Reason::BadRequest);
    }
}
