//! Normalize: the app's request made fit for HTTP/2 between sidecars — connection-specific
//! headers removed, a `traceparent` ensured, the host moved into an absolute URI
//! (`:authority`; the destination's name stands in for a missing or unusable one).

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header;
use http::{Request, Response, Uri, Version};
use tower::{Layer, Service};

use super::stack::{AnswerFuture, HttpService, fail};
use super::{Body, HttpError, Reason};

/// The request in HTTP/2 form for `destination`.
pub(crate) fn prepare(
    request: Request<Body>,
    destination: &str,
) -> Result<Request<Body>, HttpError> {
    let (mut parts, body) = request.into_parts();
    super::strip_hop_by_hop(&mut parts.headers);
    super::ensure_traceparent(&mut parts.headers);
    // HTTP/2 carries the host in :authority.
    let host = parts
        .uri
        .authority()
        .map(|authority| authority.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        });
    parts.headers.remove(header::HOST);
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .to_owned();
    parts.uri = absolute(host.as_deref(), destination, &path)?;
    parts.version = Version::HTTP_2;
    Ok(Request::from_parts(parts, body))
}

/// `http://<host><path>`; the destination name stands in for a missing or unusable host.
fn absolute(host: Option<&str>, destination: &str, path: &str) -> Result<Uri, HttpError> {
    let build = |authority: &str| {
        Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(path)
            .build()
    };
    host.and_then(|host| build(host).ok())
        .map_or_else(|| build(destination), Ok)
        .map_err(|_| HttpError::new(Reason::BadRequest))
}

/// Adds [`Normalize`].
#[derive(Debug, Clone)]
pub(crate) struct NormalizeLayer {
    destination: Arc<str>,
}

impl NormalizeLayer {
    /// Requests to `destination`.
    pub(crate) fn new(destination: Arc<str>) -> Self {
        Self { destination }
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
    destination: Arc<str>,
}

impl<S: HttpService> Service<Request<Body>> for Normalize<S> {
    type Response = Response<Body>;
    type Error = HttpError;
    type Future = AnswerFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> AnswerFuture {
        match prepare(request, &self.destination) {
            Ok(request) => self.inner.call(request),
            Err(error) => fail(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "web",
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
        let prepared = prepare(request("/x", &[]), "web").unwrap();
        assert_eq!(prepared.uri(), "http://web/x");
        let prepared = prepare(request("/x", &[("host", "bad host")]), "web").unwrap();
        assert_eq!(prepared.uri(), "http://web/x");
        let absolute = prepare(request("http://other:1/y", &[]), "web").unwrap();
        assert_eq!(absolute.uri(), "http://other:1/y");
    }
}
