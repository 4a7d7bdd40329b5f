//! Mirroring (`service-defaults` `Mirror {Service, Percent}`): a copy of the request goes to the
//! mirror service's endpoints, fire and forget. The copy's response is read and thrown away; the
//! primary request is never delayed by the mirror's answer nor failed by its errors.
//!
//! Bounded: at most [`MAX_IN_FLIGHT`] copies per upstream are in flight (more are dropped and
//! counted), each lasts at most [`MIRROR_TIMEOUT`], and only requests whose body is known to be
//! at most [`MAX_BODY`] bytes are copied (the body is buffered once for both).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Body as _;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tower::{Layer, Service, ServiceExt};
use tracing::debug;

use super::balance::Selected;
use super::metrics::Observe;
use super::retry::rebuild;
use super::stack::{AnswerFuture, HttpService, take};
use super::{Body, HttpError, Reason};

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
pub(crate) async fn tee(request: Request<Body>, percent: f64, draw: f64) -> Result<Tee, HttpError> {
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
        .map_err(|_| HttpError::new(Reason::BadRequest))?
        .to_bytes();
    Ok(Tee::Copy(
        rebuild(&parts, body.clone()),
        Box::new(rebuild(&parts, body)),
    ))
}

/// The upstream's mirror (set by the route layer when the policy has one).
#[derive(Debug, Clone)]
pub(crate) struct Mirror {
    /// The share of requests copied, 0–100.
    pub percent: f64,
    /// Where copies go: the mirror service, unfiltered.
    pub to: Selected,
}

/// Adds [`Mirroring`]; copies are sent through `concrete` (balance and endpoint only).
#[derive(Clone)]
pub(crate) struct MirrorLayer<C> {
    concrete: C,
    observe: Observe,
    tasks: TaskTracker,
    in_flight: Arc<Semaphore>,
}

impl<C> MirrorLayer<C> {
    /// Copies sent through `concrete` as tasks in `tasks`, counted in `observe`.
    pub(crate) fn new(concrete: C, observe: Observe, tasks: TaskTracker) -> Self {
        Self {
            concrete,
            observe,
            tasks,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }
}

impl<S, C: Clone> Layer<S> for MirrorLayer<C> {
    type Service = Mirroring<S, C>;
    fn layer(&self, inner: S) -> Mirroring<S, C> {
        Mirroring {
            inner,
            copies: self.clone(),
        }
    }
}

/// Copies a share of the requests with a [`Mirror`] to the mirror service.
#[derive(Clone)]
pub(crate) struct Mirroring<S, C> {
    inner: S,
    copies: MirrorLayer<C>,
}

impl<S: HttpService, C: HttpService> Service<Request<Body>> for Mirroring<S, C> {
    type Response = Response<Body>;
    type Error = HttpError;
    type Future = AnswerFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> AnswerFuture {
        let Some(mirror) = request.extensions_mut().remove::<Mirror>() else {
            return self.inner.call(request);
        };
        let mut inner = take(&mut self.inner);
        let copies = self.copies.clone();
        Box::pin(async move {
            let request = match tee(request, mirror.percent, rand::random::<f64>() * 100.0).await? {
                Tee::Skip(request) => request,
                Tee::TooLarge(request) => {
                    copies.observe.mirrored("dropped");
                    request
                }
                Tee::Copy(request, copy) => {
                    copies.send(*copy, mirror.to);
                    request
                }
            };
            inner.call(request).await
        })
    }
}

impl<C: HttpService> MirrorLayer<C> {
    /// Sends `copy` to `to` in the background, unless [`MAX_IN_FLIGHT`] copies are already in
    /// flight; its response is drained and dropped.
    fn send(&self, mut copy: Request<Body>, to: Selected) {
        let Ok(permit) = Arc::clone(&self.in_flight).try_acquire_owned() else {
            self.observe.mirrored("dropped");
            return;
        };
        self.observe.mirrored("sent");
        let service = to.target.service.clone();
        copy.extensions_mut().insert(to);
        let concrete = self.concrete.clone();
        self.tasks.spawn(async move {
            let _permit = permit;
            let work = async {
                match concrete.oneshot(copy).await {
                    Ok(response) => {
                        let _ = response.into_body().collect().await;
                    }
                    Err(error) => {
                        debug!(mirror = %service, reason = error.label(), "mirrored request failed");
                    }
                }
            };
            let _ = tokio::time::timeout(MIRROR_TIMEOUT, work).await;
        });
    }
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
