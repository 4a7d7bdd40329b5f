//! Mirroring (`service-defaults` `Mirror {Service, Percent}`): a copy of the request goes to the
//! mirror service's endpoints, fire and forget. The copy's response is read and thrown away; the
//! primary request is never delayed by the mirror's answer nor failed by its errors.
//!
//! Bounded: at most [`MAX_IN_FLIGHT`] copies per upstream are in flight (more are dropped and
//! counted), each lasts at most [`MIRROR_TIMEOUT`], and only requests whose body is known to be
//! at most [`MAX_BODY`] bytes are copied (the body is buffered once for both).

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Limited};
use hyper::body::Body as _;

use super::{Body, LocalError};

/// Copies in flight per upstream before further copies are dropped.
pub(crate) const MAX_IN_FLIGHT: usize = 64;
/// Longest a copy (request and its response) may take.
pub(crate) const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request body copied.
pub(crate) const MAX_BODY: u64 = 64 * 1024;

/// What [`tee`] decided.
pub(crate) enum Tee {
    /// Not mirrored (the draw said no): the request, untouched.
    Skip(Request<Body>),
    /// Not mirrored because its body may be larger than [`MAX_BODY`].
    TooLarge(Request<Body>),
    /// The request for the primary and its copy for the mirror.
    Copy(Request<Body>, Box<Request<Body>>),
}

/// Splits `request` into the primary and a copy when `draw` (in `[0, 100)`) is below
/// `percent` and its body is small enough; the body is buffered for both.
pub(crate) async fn tee(
    request: Request<Body>,
    percent: f64,
    draw: f64,
) -> Result<Tee, LocalError> {
    if draw >= percent {
        return Ok(Tee::Skip(request));
    }
    if request
        .body()
        .size_hint()
        .upper()
        .is_none_or(|upper| upper > MAX_BODY)
    {
        return Ok(Tee::TooLarge(request));
    }
    let (parts, body) = request.into_parts();
    let limit = usize::try_from(MAX_BODY).unwrap_or(usize::MAX);
    let body: Bytes = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|_| LocalError::BadRequest)?
        .to_bytes();
    Ok(Tee::Copy(
        super::outbound::rebuild(&parts, body.clone()),
        Box::new(super::outbound::rebuild(&parts, body)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: &'static str) -> Request<Body> {
        Request::builder()
            .uri("http://web/x")
            .header("x-a", "1")
            .body(super::super::full(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    async fn text(request: Request<Body>) -> String {
        let bytes = request.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn copies_headers_and_body_only_when_the_draw_is_below_the_percent() {
        assert!(matches!(
            tee(request("b"), 50.0, 50.0).await,
            Ok(Tee::Skip(_))
        ));
        assert!(matches!(
            tee(request("b"), 0.0, 0.0).await,
            Ok(Tee::Skip(_))
        ));
        let Ok(Tee::Copy(primary, copy)) = tee(request("body"), 100.0, 99.9).await else {
            panic!("expected a copy");
        };
        assert_eq!(copy.headers()["x-a"], "1");
        assert_eq!(copy.uri(), primary.uri());
        assert_eq!(
            (text(primary).await, text(*copy).await),
            ("body".into(), "body".into())
        );
    }

    #[tokio::test]
    async fn large_bodies_are_not_copied() {
        let big: &'static str = Box::leak("x".repeat(MAX_BODY as usize + 1).into_boxed_str());
        let Ok(Tee::TooLarge(request)) = tee(request(big), 100.0, 0.0).await else {
            panic!("expected too large");
        };
        assert_eq!(text(request).await.len(), big.len());
    }
}
