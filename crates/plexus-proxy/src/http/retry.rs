//! Retry: `NumRetries` more attempts on the outcomes `RetryOn` / `RetryOnStatusCodes` name, with
//! full-jitter backoff, within the route's retry budget.
//!
//! The decisions are pure: [`should_retry`] (which outcomes may be retried), [`backoff`] (the
//! delay before retry `n`, from a random draw) and [`RetryBudget`] (counting only: retries in
//! flight ≤ `max(MinRetryConcurrency, Percent × live requests)`). The layer applies them: the
//! request body is buffered (up to [`MAX_RETRY_BODY`]) only when the route retries; each attempt
//! tells the balance layer which endpoints earlier ones went to ([`Tried`]); a retry the budget
//! refuses is counted and the last answer goes back to the client.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use plexus_api::config_entry::chain::{RetryOn, RetryPolicy};
use tower::{Layer, Service};

use super::balance::Tried;
use super::endpoint::Served;
use super::metrics::Observe;
use super::stack::{Answer, AnswerFuture, HttpService, take};
use super::{Body, HttpError, Reason};
use plexus_runtime::lock::lock;

/// Largest request body buffered so that it can be retried.
pub const MAX_RETRY_BODY: usize = 1024 * 1024;

/// What one attempt at an upstream produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The connection could not be made (refused, unreachable, connect timeout).
    ConnectFailure,
    /// The connection was reset or closed before a response.
    Reset,
    /// The stream was refused unprocessed (HTTP/2 REFUSED_STREAM, or above a GOAWAY's last
    /// stream): a reset that is safe to retry.
    RefusedStream,
    /// A response arrived: its HTTP status, and the gRPC status when it is a gRPC response
    /// (`grpc-status` header or trailer).
    Response {
        /// HTTP status.
        status: u16,
        /// gRPC status code.
        grpc_status: Option<u32>,
    },
}

impl Outcome {
    /// A 5xx response or a connection-level failure (what outlier detection counts as a 5xx).
    pub fn is_5xx(self) -> bool {
        match self {
            Self::Response { status, .. } => status >= 500,
            _ => true,
        }
    }

    /// 502/503/504 or a connection-level failure.
    pub fn is_gateway_error(self) -> bool {
        match self {
            Self::Response { status, .. } => matches!(status, 502..=504),
            _ => true,
        }
    }
}

/// Whether `outcome` may be retried under `policy` (attempt counts and the budget are the
/// caller's to check).
pub fn should_retry(policy: &RetryPolicy, outcome: Outcome) -> bool {
    if let Outcome::Response { status, .. } = outcome
        && policy.status_codes.contains(&status)
    {
        return true;
    }
    policy.retry_on.iter().any(|cond| matches(*cond, outcome))
}

fn matches(cond: RetryOn, outcome: Outcome) -> bool {
    use Outcome::*;
    match (cond, outcome) {
        (RetryOn::ConnectFailure, ConnectFailure) => true,
        (RetryOn::Reset, Reset | RefusedStream) => true,
        (RetryOn::RefusedStream, RefusedStream) => true,
        (RetryOn::Status5xx, ConnectFailure | Reset | RefusedStream) => true,
        (RetryOn::Status5xx, Response { status, .. }) => status >= 500,
        (RetryOn::GatewayError, ConnectFailure | Reset | RefusedStream) => true,
        (RetryOn::GatewayError, Response { status, .. }) => matches!(status, 502..=504),
        (RetryOn::Retriable4xx, Response { status, .. }) => status == 409,
        (c, Response { grpc_status, .. }) => match (c.grpc_code(), grpc_status) {
            (Some(want), Some(got)) => want == got,
            _ => false,
        },
        _ => false,
    }
}

/// Delay before retry number `retry` (0 for the first retry): full jitter over
/// `min(max, base × 2^retry)`, scaled by `draw` in `[0, 1)`.
pub fn backoff(base: Duration, max: Duration, retry: u32, draw: f64) -> Duration {
    plexus_runtime::backoff::exponential(base, max, retry).mul_f64(draw.clamp(0.0, 1.0))
}

/// Caps retries in flight at `max(min_concurrency, percent/100 × active requests)`.
///
/// Counting only: call [`RetryBudget::request_started`]/[`RetryBudget::request_finished`]
/// around every request and [`RetryBudget::try_start_retry`]/[`RetryBudget::retry_finished`]
/// around every retry. Wrap it in a mutex to share.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    percent: f64,
    min_concurrency: u32,
    active_requests: u32,
    active_retries: u32,
}

impl RetryBudget {
    /// A budget allowing `percent` % of active requests as concurrent retries, and at least
    /// `min_concurrency`.
    pub fn new(percent: f64, min_concurrency: u32) -> Self {
        Self {
            percent: percent.clamp(0.0, 100.0),
            min_concurrency,
            active_requests: 0,
            active_retries: 0,
        }
    }

    /// Retries allowed in flight right now.
    pub fn limit(&self) -> u32 {
        let share = (self.percent / 100.0 * f64::from(self.active_requests)).floor() as u32;
        share.max(self.min_concurrency)
    }

    /// A request began.
    pub fn request_started(&mut self) {
        self.active_requests = self.active_requests.saturating_add(1);
    }

    /// A request ended.
    pub fn request_finished(&mut self) {
        self.active_requests = self.active_requests.saturating_sub(1);
    }

    /// Takes a retry slot if the budget has one; `false` means "budget exhausted, do not retry".
    pub fn try_start_retry(&mut self) -> bool {
        if self.active_retries < self.limit() {
            self.active_retries += 1;
            true
        } else {
            false
        }
    }

    /// A retry ended (whatever its result).
    pub fn retry_finished(&mut self) {
        self.active_retries = self.active_retries.saturating_sub(1);
    }

    /// Retries in flight.
    #[cfg(test)]
    pub fn active_retries(&self) -> u32 {
        self.active_retries
    }
}

/// A route's retry policy and budget (set by the route layer for routes with `NumRetries > 0`).
#[derive(Debug, Clone)]
pub(crate) struct Retry {
    /// What may be retried, how often, with which backoff.
    pub policy: Arc<RetryPolicy>,
    /// The route's budget, shared by its requests.
    pub budget: Arc<Mutex<RetryBudget>>,
}

/// Adds [`Retries`].
#[derive(Debug, Clone)]
pub(crate) struct RetryLayer {
    observe: Observe,
}

impl RetryLayer {
    /// Retries counted in `observe`'s metrics.
    pub(crate) fn new(observe: Observe) -> Self {
        Self { observe }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retries<S>;
    fn layer(&self, inner: S) -> Retries<S> {
        Retries {
            inner,
            observe: self.observe.clone(),
        }
    }
}

/// Sends a request with a [`Retry`] again while its policy, attempts and budget allow.
#[derive(Debug, Clone)]
pub(crate) struct Retries<S> {
    inner: S,
    observe: Observe,
}

impl<S: HttpService> Service<Request<Body>> for Retries<S> {
    type Response = Response<Body>;
    type Error = HttpError;
    type Future = AnswerFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> AnswerFuture {
        let Some(retry) = request.extensions_mut().remove::<Retry>() else {
            return self.inner.call(request);
        };
        let inner = take(&mut self.inner);
        let observe = self.observe.clone();
        Box::pin(retrying(inner, request, retry, observe))
    }
}

/// The attempts of one request.
async fn retrying<S: HttpService>(
    mut inner: S,
    request: Request<Body>,
    retry: Retry,
    observe: Observe,
) -> Answer {
    let (parts, body) = request.into_parts();
    let body = Limited::new(body, MAX_RETRY_BODY)
        .collect()
        .await
        .map_err(|_| HttpError::new(Reason::BadRequest))?
        .to_bytes();
    let budget = &*retry.budget;
    let policy = &*retry.policy;
    let _live = BudgetRequest::start(budget);
    let mut tried = Tried::default();
    let mut retrying: Option<BudgetRetry<'_>> = None;
    let mut attempt = 0;
    loop {
        let mut request = rebuild(&parts, body.clone());
        // Always (empty at first): it also asks the endpoint to say where the answer came from.
        request.extensions_mut().insert(tried.clone());
        std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
        let result = inner.call(request).await;
        drop(retrying.take());
        let (outcome, endpoint) = match &result {
            Ok(response) => (
                Outcome::Response {
                    status: response.status().as_u16(),
                    grpc_status: response
                        .headers()
                        .get(&super::trailers::GRPC_STATUS)
                        .and_then(|value| value.to_str().ok())
                        .and_then(|value| value.parse().ok()),
                },
                response.extensions().get::<Served>().map(|s| s.0),
            ),
            Err(error) if error.retryable() => (
                match error.reason() {
                    Reason::UpstreamReset => Outcome::Reset,
                    Reason::UpstreamRefusedStream => Outcome::RefusedStream,
                    _ => Outcome::ConnectFailure,
                },
                error.endpoint(),
            ),
            Err(_) => return result,
        };
        if let Some(endpoint) = endpoint {
            tried.0.push(endpoint);
        }
        if attempt >= policy.num_retries || !should_retry(policy, outcome) {
            return result;
        }
        let Some(started) = BudgetRetry::start(budget) else {
            observe.budget_exhausted();
            return result;
        };
        retrying = Some(started);
        observe.retry();
        let pause = backoff(
            policy.backoff_base.0,
            policy.backoff_max.0,
            attempt,
            rand::random::<f64>(),
        );
        tokio::time::sleep(pause).await;
        attempt += 1;
    }
}

/// A copy of a buffered request for one more attempt (extensions included: what the layers
/// above programmed holds for every attempt).
pub(crate) fn rebuild(parts: &http::request::Parts, body: Bytes) -> Request<Body> {
    let mut request = Request::new(super::full(body));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    *request.extensions_mut() = parts.extensions.clone();
    request
}

/// A request counted as live in the retry budget while it runs.
struct BudgetRequest<'a>(&'a Mutex<RetryBudget>);

impl<'a> BudgetRequest<'a> {
    fn start(budget: &'a Mutex<RetryBudget>) -> Self {
        lock(budget).request_started();
        Self(budget)
    }
}

impl Drop for BudgetRequest<'_> {
    fn drop(&mut self) {
        lock(self.0).request_finished();
    }
}

/// A retry counted in flight in the retry budget while it runs.
struct BudgetRetry<'a>(&'a Mutex<RetryBudget>);

impl<'a> BudgetRetry<'a> {
    fn start(budget: &'a Mutex<RetryBudget>) -> Option<Self> {
        // The guard is released before a `Self` exists: dropping one locks the budget again.
        let started = lock(budget).try_start_retry();
        started.then(|| Self(budget))
    }
}

impl Drop for BudgetRetry<'_> {
    fn drop(&mut self) {
        lock(self.0).retry_finished();
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn policy(retry_on: &[RetryOn], codes: &[u16]) -> RetryPolicy {
        RetryPolicy {
            num_retries: 2,
            retry_on: retry_on.to_vec(),
            status_codes: codes.to_vec(),
            ..RetryPolicy::default()
        }
    }

    fn resp(status: u16) -> Outcome {
        Outcome::Response {
            status,
            grpc_status: None,
        }
    }

    #[test]
    fn classification_follows_the_conditions() {
        let p = policy(&[RetryOn::ConnectFailure], &[]);
        assert!(should_retry(&p, Outcome::ConnectFailure));
        assert!(!should_retry(&p, Outcome::Reset));
        assert!(!should_retry(&p, resp(503)));
        let p = policy(&[RetryOn::Status5xx], &[]);
        assert!(should_retry(&p, resp(500)) && should_retry(&p, Outcome::Reset));
        assert!(!should_retry(&p, resp(404)) && !should_retry(&p, resp(200)));
        let p = policy(&[RetryOn::GatewayError], &[429]);
        assert!(should_retry(&p, resp(503)) && !should_retry(&p, resp(500)));
        assert!(should_retry(&p, resp(429)));
        let p = policy(&[RetryOn::GrpcUnavailable], &[]);
        let grpc = |code| Outcome::Response {
            status: 200,
            grpc_status: Some(code),
        };
        assert!(should_retry(&p, grpc(14)) && !should_retry(&p, grpc(13)));
        assert!(!should_retry(&policy(&[], &[]), resp(503)));
        // A refused stream is a reset that is known to be safe: `refused-stream` retries it
        // and no other reset; `reset`, `5xx` and `gateway-error` retry it as any reset.
        let p = policy(&[RetryOn::RefusedStream], &[]);
        assert!(should_retry(&p, Outcome::RefusedStream) && !should_retry(&p, Outcome::Reset));
        for cond in [RetryOn::Reset, RetryOn::Status5xx, RetryOn::GatewayError] {
            assert!(should_retry(&policy(&[cond], &[]), Outcome::RefusedStream));
        }
        assert!(!should_retry(
            &policy(&[RetryOn::ConnectFailure], &[]),
            Outcome::RefusedStream
        ));
    }

    #[test]
    fn budget_admits_exactly_its_share() {
        let mut b = RetryBudget::new(50.0, 0);
        assert!(!b.try_start_retry());
        for _ in 0..10 {
            b.request_started();
        }
        let admitted = (0..20).filter(|_| b.try_start_retry()).count();
        assert_eq!(admitted, 5);
        b.retry_finished();
        assert!(b.try_start_retry());
        let mut floor = RetryBudget::new(0.0, 3);
        assert_eq!((0..10).filter(|_| floor.try_start_retry()).count(), 3);
    }

    proptest! {
        #[test]
        fn backoff_stays_within_jittered_cap(base_ms in 1u64..1000, max_ms in 1u64..10_000, retry in 0u32..64, draw in 0.0f64..1.0) {
            let base = Duration::from_millis(base_ms);
            let max = Duration::from_millis(max_ms);
            let d = backoff(base, max, retry, draw);
            prop_assert!(d <= max);
            let cap = base.saturating_mul(1u32 << retry.min(20)).min(max);
            prop_assert!(d <= cap);
        }

        #[test]
        fn budget_never_allows_more_than_ratio_times_active_plus_min(
            percent in 0.0f64..100.0, min in 0u32..5,
            ops in proptest::collection::vec(0u8..4, 0..300),
        ) {
            let mut b = RetryBudget::new(percent, min);
            let mut active = 0u32;
            let mut retries = 0u32;
            for op in ops {
                match op {
                    0 => { b.request_started(); active += 1; }
                    1 if active > 0 => { b.request_finished(); active -= 1; }
                    2 if b.try_start_retry() => {
                        retries += 1;
                        let bound = percent / 100.0 * f64::from(active) + f64::from(min);
                        prop_assert!(f64::from(retries) <= bound + 1e-9, "{} retries, {} active", retries, active);
                    }
                    3 if retries > 0 => { b.retry_finished(); retries -= 1; }
                    _ => {}
                }
                prop_assert_eq!(b.active_retries(), retries);
            }
        }
    }
}
